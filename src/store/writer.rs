//! The writer thread: group commit.
//!
//! It takes every request queued since its last commit, applies them in one write transaction,
//! commits with `Durability::Immediate`, and only then answers them. A storage failure fails the
//! whole batch (nothing in it is acknowledged) and reopens the database; a request whose own
//! content fails (a corrupt record it touched, a value too large) is failed alone by retrying
//! the batch one request per transaction.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, mpsc};

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

pub(super) struct Request {
    pub ops: Vec<Op>,
    pub reply: oneshot::Sender<Result<Vec<OpResult>, StoreError>>,
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
    loop {
        let first = match carry.take() {
            Some(request) => request,
            None => match rx.recv() {
                Ok(request) => request,
                Err(_) => break,
            },
        };
        let mut bytes = first.body_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS {
            let Ok(request) = rx.try_recv() else { break };
            let more = request.body_bytes();
            if bytes + more > MAX_BATCH_BYTES {
                carry = Some(request);
                break;
            }
            bytes += more;
            batch.push(request);
        }

        let ops: Vec<&[Op]> = batch.iter().map(|r| r.ops.as_slice()).collect();
        let results = shared.process(&ops);
        for (request, result) in batch.into_iter().zip(results) {
            // The caller may have given up waiting; the write stands anyway.
            let _ = request.reply.send(result);
        }
    }
    debug!("store writer stopped");
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
