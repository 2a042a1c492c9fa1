//! The writer thread: group commit.
//!
//! It takes every request queued since its last commit, applies them in one write transaction,
//! commits with `Durability::Immediate`, and only then answers them. A storage failure fails the
//! whole batch (nothing in it is acknowledged) and reopens the database; a request whose own
//! content fails (a corrupt record it touched, a value too large) is failed alone by retrying
//! the batch one request per transaction.
//!
//! Lazy requests ([`super::Store::apply_lazily`], used for dequeuing delivered mail, whose
//! loss in a crash only causes a re-send the receiver recognises) are not answered and get
//! no commit of their own. They wait in a buffer the handles share with this thread
//! ([`Lazy`]), so holding one costs no wake-up of this thread (only the first of a run and
//! the [`LAZY_MAX`]th send it a tick). They go with the first commit that is due anyway once
//! they are [`LAZY_MAX_AGE`] old or [`LAZY_MAX`] are held, with an empty request (a flush,
//! as at shutdown), or in a commit of their own when no request and no further lazy one
//! came for [`LAZY_LINGER`]. The commits that acknowledge mail stay small.
//!
//! Requests that can wait ([`super::Store::apply_soon`]: mail from s2s peers, which pipeline)
//! let their batch wait for more until the oldest of them is [`SOON_DELAY`] old, unless a
//! request that cannot wait (an SMTP client waiting for its 250) joins it. Under load the
//! batch has waited that long already and nothing changes; at moderate rates one commit
//! (two fsyncs) serves several mails instead of one or two.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::apply::Tables;
use super::tables;
use super::{Op, OpResult, Shared, StoreError};

/// At most this many requests share one commit.
pub const MAX_BATCH_REQUESTS: usize = 256;
/// A batch takes no further request once its message bodies reach this size (a single larger
/// request is still taken, alone).
pub const MAX_BATCH_BYTES: usize = 64 << 20;

/// Held lazy requests are committed after this long without another request.
pub const LAZY_LINGER: Duration = Duration::from_millis(20);
/// ... and at the latest when the oldest is this old.
pub const LAZY_MAX_AGE: Duration = Duration::from_millis(500);
/// ... or when this many are held.
pub const LAZY_MAX: usize = 1024;

/// How long a request that can wait ([`super::Store::apply_soon`]) may wait, from when it
/// was made, for others to share its commit.
pub const SOON_DELAY: Duration = Duration::from_millis(3);

pub(super) struct Request {
    pub ops: Vec<Op>,
    pub reply: oneshot::Sender<Result<Vec<OpResult>, StoreError>>,
    /// A tick: lazy requests were held (its `ops` are empty; see the module doc).
    pub lazy: bool,
    /// Until when a request that can wait lets its batch wait for more; `None`: it cannot.
    pub until: Option<Instant>,
}

/// Lazy requests held for a later commit, oldest first.
#[derive(Default)]
pub(super) struct Lazy {
    held: Vec<Vec<Op>>,
    since: Option<Instant>,
}

impl Shared {
    /// Holds `ops` for a later commit; returns how many requests are held now.
    pub(super) fn hold_lazily(&self, ops: Vec<Op>) -> usize {
        let mut lazy = self.lazy.lock().unwrap_or_else(PoisonError::into_inner);
        if lazy.held.is_empty() {
            lazy.since = Some(Instant::now());
        }
        lazy.held.push(ops);
        lazy.held.len()
    }

    /// How many are held and how long the oldest has waited.
    fn lazy_state(&self) -> (usize, Duration) {
        let lazy = self.lazy.lock().unwrap_or_else(PoisonError::into_inner);
        let age = lazy.since.map(|t| t.elapsed()).unwrap_or_default();
        (lazy.held.len(), age)
    }

    fn take_lazy(&self) -> Vec<Vec<Op>> {
        let mut lazy = self.lazy.lock().unwrap_or_else(PoisonError::into_inner);
        lazy.since = None;
        std::mem::take(&mut lazy.held)
    }
}

impl Request {
    fn body_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Deliver(d) => d.message.len(),
                Op::Enqueue(item) => item.message.len(),
                Op::PutSecret { value, .. } => value.len(),
                _ => 0,
            })
            .sum()
    }
}

enum Failure {
    /// The storage failed: every request of the batch fails.
    Batch(StoreError),
    /// Request `.0` failed on its own content.
    Request(usize, StoreError),
}

/// Runs until every `Store` handle is gone (the channel closes).
pub(super) fn run(shared: &Shared, rx: mpsc::Receiver<Request>) {
    let mut carry: Option<Request> = None;
    // How many lazy requests were held when the linger last ran out: more now means they
    // are still coming (a busy moment), so they wait for a commit due anyway.
    let mut seen = 0;
    loop {
        let first = match carry.take() {
            Some(request) => request,
            None => {
                let (held, age) = shared.lazy_state();
                if held == 0 {
                    seen = 0;
                    match rx.recv() {
                        Ok(request) => request,
                        Err(_) => break,
                    }
                } else {
                    let wait = LAZY_LINGER.min(LAZY_MAX_AGE.saturating_sub(age));
                    match rx.recv_timeout(wait) {
                        Ok(request) => request,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            let (held, age) = shared.lazy_state();
                            if held > seen && held < LAZY_MAX && age < LAZY_MAX_AGE {
                                seen = held;
                            } else {
                                seen = 0;
                                commit_lazy(shared, shared.take_lazy());
                            }
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
        };
        let mut bytes = first.body_bytes();
        // Until when the batch may wait for more: set while every request in it can wait
        // (ticks do not count either way).
        let mut until = first.until;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS {
            let next = match until {
                None => rx.try_recv().ok(),
                Some(t) => rx
                    .recv_timeout(t.saturating_duration_since(Instant::now()))
                    .ok(),
            };
            let Some(request) = next else { break };
            let more = request.body_bytes();
            if bytes + more > MAX_BATCH_BYTES {
                carry = Some(request);
                break;
            }
            if !request.lazy {
                until = until.zip(request.until).map(|(a, b)| a.min(b));
            }
            bytes += more;
            batch.push(request);
        }
        // Ticks only woke us.
        batch.retain(|r| !r.lazy);
        let (held, age) = shared.lazy_state();
        let flush = batch.iter().any(|r| r.ops.is_empty())
            || held >= LAZY_MAX
            || (held > 0 && age >= LAZY_MAX_AGE);
        let lazy = if flush && held > 0 {
            seen = 0;
            shared.take_lazy()
        } else {
            Vec::new()
        };
        if batch.is_empty() {
            commit_lazy(shared, lazy);
            continue;
        }
        commit_answering(shared, lazy, batch);
    }
    commit_lazy(shared, shared.take_lazy());
    debug!("store writer stopped");
}

/// Commits `batch` (after the held `lazy` requests, which are older) and answers it.
fn commit_answering(shared: &Shared, lazy: Vec<Vec<Op>>, batch: Vec<Request>) {
    let ops: Vec<&[Op]> = lazy
        .iter()
        .map(Vec::as_slice)
        .chain(batch.iter().map(|r| r.ops.as_slice()))
        .collect();
    let mut results = shared.process(&ops);
    let answers = results.split_off(lazy.len());
    warn_lazy_failures(&results);
    for (request, result) in batch.into_iter().zip(answers) {
        // The caller may have given up waiting; the write stands.
        let _ = request.reply.send(result);
    }
}

/// Commits held lazy requests on their own; a failure is logged (their items are sent
/// again after a restart and recognised by the receiver).
fn commit_lazy(shared: &Shared, held: Vec<Vec<Op>>) {
    if held.is_empty() {
        return;
    }
    let ops: Vec<&[Op]> = held.iter().map(Vec::as_slice).collect();
    warn_lazy_failures(&shared.process(&ops));
}

fn warn_lazy_failures(results: &[Result<Vec<OpResult>, StoreError>]) {
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        warn!(
            failed,
            of = results.len(),
            "removing delivered mail from the queue failed; it stays queued and is sent again, \
             and the receiver recognises it as a duplicate"
        );
    }
}

impl Shared {
    fn process(&self, batch: &[&[Op]]) -> Vec<Result<Vec<OpResult>, StoreError>> {
        match self.attempt(batch) {
            Ok(results) => results.into_iter().map(Ok).collect(),
            Err(Failure::Batch(e)) => vec![Err(e); batch.len()],
            Err(Failure::Request(index, e)) => {
                warn!(
                    error = %e,
                    index,
                    size = batch.len(),
                    "a store request failed; retrying its batch one by one"
                );
                batch
                    .iter()
                    .map(|ops| match self.attempt(std::slice::from_ref(ops)) {
                        Ok(mut results) => results
                            .pop()
                            .ok_or_else(|| StoreError::Internal("missing result".into())),
                        Err(Failure::Batch(e) | Failure::Request(_, e)) => Err(e),
                    })
                    .collect()
            }
        }
    }

    /// One transaction for `batch`. After a storage failure (or a panic inside redb) the
    /// database is reopened, since redb fails every later operation on the old handle.
    fn attempt(&self, batch: &[&[Op]]) -> Result<Vec<Vec<OpResult>>, Failure> {
        let result = catch_unwind(AssertUnwindSafe(|| self.commit(batch))).unwrap_or_else(|_| {
            Err(Failure::Batch(StoreError::Internal(
                "the store writer panicked".into(),
            )))
        });
        if let Err(Failure::Batch(e)) = &result {
            error!(
                error = %e,
                requests = batch.len(),
                "store commit failed; reopening the database"
            );
            self.reopen_db();
        }
        result
    }

    fn commit(&self, batch: &[&[Op]]) -> Result<Vec<Vec<OpResult>>, Failure> {
        let needs_open = self
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        if needs_open {
            self.reopen_db();
        }
        let slot = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = slot.as_ref() else {
            return Err(Failure::Batch(StoreError::Io(
                "the store could not be reopened after an error".into(),
            )));
        };

        let mut txn = db.begin_write().map_err(|e| Failure::Batch(e.into()))?;
        tables::configure(&mut txn).map_err(Failure::Batch)?;
        let (results, touched) = {
            let mut tables = Tables::open(&txn).map_err(Failure::Batch)?;
            let mut results = Vec::with_capacity(batch.len());
            for (index, ops) in batch.iter().enumerate() {
                match tables.apply_request(ops) {
                    Ok(r) => results.push(r),
                    // Dropping the transaction aborts it.
                    Err(e) if e.is_request_local() => return Err(Failure::Request(index, e)),
                    Err(e) => return Err(Failure::Batch(e)),
                }
            }
            (results, std::mem::take(&mut tables.touched))
        };
        crate::metrics::time_store_flush(|| txn.commit()).map_err(|e| Failure::Batch(e.into()))?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        for (address, folder) in touched {
            // No listener is not an error.
            let _ = self.changes.send(super::MailboxChange { address, folder });
        }
        Ok(results)
    }

    /// Closes the database (if open) and opens it again. On failure the slot stays empty and
    /// the next batch tries again.
    fn reopen_db(&self) {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = slot.take()
            && let Err(e) = old.close()
        {
            debug!(error = %e, "closing the failed store handle");
        }
        match (self.reopen)() {
            Ok(db) => {
                info!("store reopened");
                *slot = Some(db);
            }
            Err(e) => error!(error = %e, "reopening the store failed"),
        }
    }
}
