//! The queue runner and the XMPP courier.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minidom::Element;
use rand::Rng;
use tokio::sync::{Notify, Semaphore, oneshot};
use tracing::{debug, info, warn};

use super::dsn::{self, DsnRequest, FailedRecipient};
use crate::addr::MailAddress;
use crate::config::{Config, PlainXmpp};
use crate::live::Live;
use crate::mta::payload::{
    self, Envelope, MailError, OutgoingMail, RcptStatus as ReceiptStatus, Receipt,
};
use crate::s2s::{OutboundConn, S2s, S2sError};
use crate::store::{LocalDelivery, NewQueueItem, Op, QueueItem, RcptStatus, Store, StoreError};
use crate::xml::ns;
use crate::xml::writer::escape_attr;

/// How long a discovery answer is trusted (XEP-MTA §5.1).
const DISCO_TTL: Duration = Duration::from_secs(3600);
/// How long to wait for a discovery answer before deferring.
const DISCO_TIMEOUT: Duration = Duration::from_secs(30);

/// What came back from a receiving server for one mail.
#[derive(Debug)]
pub enum PeerAnswer {
    Receipt(Receipt),
    Error(MailError),
}

/// Per-recipient result of one attempt.
#[derive(Debug, Clone)]
enum Attempt {
    Delivered,
    Failed {
        status: String,
        diagnostic: String,
    },
    /// Failed as reported by a relay that is not the recipient's domain (the smarthost):
    /// the DSN's Remote-MTA names it.
    FailedAt {
        status: String,
        diagnostic: String,
        remote: String,
    },
    Deferred(String),
}

type Key = (String, String);

pub struct Delivery {
    /// The config in force (SIGHUP swaps it), read at each use.
    cfg: Live,
    store: Store,
    s2s: Arc<S2s>,
    /// (remote domain, mail id) -> the attempt waiting for that domain's receipt.
    waiters: Mutex<HashMap<Key, oneshot::Sender<PeerAnswer>>>,
    /// Stanza-id prefix of each transmission -> its (remote domain, mail id), to match
    /// errors from servers that do not echo `<mail/>`.
    transmissions: Mutex<HashMap<String, Key>>,
    /// Transmission id of plain-XMPP deliveries -> the errors that came back for them.
    legacy_errors: Mutex<HashMap<String, Vec<(usize, MailError)>>>,
    /// (remote domain, iq id) -> a discovery query waiting for its answer.
    iq_waiters: Mutex<HashMap<Key, oneshot::Sender<Element>>>,
    /// Remote domain -> (speaks urn:xmpp:mta:0, when learnt).
    disco: Mutex<HashMap<String, (bool, Instant)>>,
    /// (due time, queue id) of every queued item not being attempted right now.
    schedule: Mutex<BTreeSet<(i64, String)>>,
    inflight: Mutex<HashSet<String>>,
    wake: Notify,
    /// `delivery.concurrency`: one permit per attempt.
    slots: Arc<Semaphore>,
    /// `delivery.max_inflight_bytes`, in KiB: an attempt holds its message's size.
    bytes: Arc<Semaphore>,
    /// The permits of `bytes`.
    bytes_total: u32,
    /// A handle on itself for tasks started from `&self` callbacks.
    me: std::sync::OnceLock<std::sync::Weak<Delivery>>,
    /// Which domains take mail over XMPP (smarthost decision, Postfix socketmap).
    router: Option<super::route::Router>,
}

/// The permits (KiB, at least one) of `max_inflight_bytes` a message of `size` octets
/// holds while it is being delivered; all of them for one larger than the whole budget.
fn inflight_kib(size: u64, total: u32) -> u32 {
    u32::try_from(size.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .clamp(1, total)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Delivery {
    pub fn new(cfg: Live, store: Store, s2s: Arc<S2s>) -> Arc<Delivery> {
        let slots = Arc::new(Semaphore::new(cfg.get().delivery.concurrency));
        let bytes_total = u32::try_from(cfg.get().delivery.max_inflight_bytes >> 10)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32)
            .max(1);
        let cfg_for_router = cfg.clone();
        let d = Arc::new(Delivery {
            cfg,
            store,
            s2s,
            waiters: Mutex::new(HashMap::new()),
            transmissions: Mutex::new(HashMap::new()),
            iq_waiters: Mutex::new(HashMap::new()),
            legacy_errors: Mutex::new(HashMap::new()),
            disco: Mutex::new(HashMap::new()),
            schedule: Mutex::new(BTreeSet::new()),
            inflight: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            slots,
            bytes: Arc::new(Semaphore::new(bytes_total as usize)),
            bytes_total,
            me: std::sync::OnceLock::new(),
            router: match super::route::Router::new(&cfg_for_router) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(error = %e, "no resolver for XMPP reachability; smarthost and socketmap answers defer");
                    None
                }
            },
        });
        let _ = d.me.set(Arc::downgrade(&d));
        d
    }

    /// Whether `domain` takes mail over XMPP (see [`super::route`]); `Err` when unknown now.
    pub async fn takes_xmpp(&self, domain: &str) -> Result<bool, String> {
        match &self.router {
            Some(r) => r.takes_xmpp(domain).await,
            None => Err("no DNS resolver".into()),
        }
    }

    /// Whether `domain` takes *mail* over XMPP (see [`super::route`]): a local domain, or
    /// one with an XMPP server (route or SRV) that announces urn:xmpp:mta:0 in disco#info
    /// (cached for an hour, shared with deliveries). `Ok(None)`: it has an XMPP server but
    /// discovery gave no answer within `wait` (unreachable now). `Err`: DNS failed.
    pub async fn takes_mail_over_xmpp(
        &self,
        domain: &str,
        wait: Duration,
    ) -> Result<Option<bool>, String> {
        if self.cfg.get().is_local_domain(domain) {
            return Ok(Some(true));
        }
        if !self.takes_xmpp(domain).await? {
            return Ok(Some(false));
        }
        if let Some((yes, at)) = lock(&self.disco).get(domain)
            && at.elapsed() < DISCO_TTL
        {
            return Ok(Some(*yes));
        }
        let Some(origin) = self.cfg.get().server.domains.first().cloned() else {
            return Ok(None);
        };
        let probe = async {
            let conn = self
                .s2s
                .stream(&origin, domain)
                .await
                .map_err(|e| e.to_string())?;
            self.speaks_mta(&origin, domain, &conn).await
        };
        match tokio::time::timeout(wait, probe).await {
            Ok(Ok(yes)) => Ok(Some(yes)),
            Ok(Err(e)) => {
                debug!(domain, error = %e, "service discovery failed");
                Ok(None)
            }
            Err(_) => {
                debug!(domain, "service discovery timed out");
                Ok(None)
            }
        }
    }

    /// Makes every scheduled item due now (`xmta queue flush`, like Postfix's
    /// `postqueue -f`): after a peer comes back, its mail need not wait out the backoff.
    /// Only the in-memory schedule changes; an item keeps its stored next attempt (used
    /// after a restart) until this attempt records a new one. Returns how many were due
    /// later and are now due.
    pub fn flush(&self) -> usize {
        let now = crate::now();
        let moved = {
            let mut sched = lock(&self.schedule);
            let later: Vec<(i64, String)> =
                sched.iter().filter(|(at, _)| *at > now).cloned().collect();
            for e in &later {
                sched.remove(e);
                sched.insert((now, e.1.clone()));
            }
            later.len()
        };
        self.wake.notify_one();
        moved
    }

    /// Puts an item (already durable in the store) on the schedule.
    pub fn schedule(&self, id: &str, at: i64) {
        lock(&self.schedule).insert((at, id.to_string()));
        self.wake.notify_one();
    }

    /// A receipt from `domain`: hand it to the attempt waiting for it, or apply it to the
    /// queue if that attempt already gave up waiting.
    pub fn on_receipt(&self, domain: &str, receipt: Receipt) {
        let key = (domain.to_string(), receipt.id.clone());
        match lock(&self.waiters).remove(&key) {
            Some(tx) => {
                let _ = tx.send(PeerAnswer::Receipt(receipt));
            }
            None => self.late_receipt(domain, receipt),
        }
    }

    /// A stanza error from `domain` answering one of our mail stanzas.
    pub fn on_error(&self, domain: &str, stanza_id: &str, mut err: MailError) {
        if err.mail_id.is_empty() {
            let prefix = stanza_id
                .rsplit_once('-')
                .map(|(p, _)| p)
                .unwrap_or(stanza_id);
            match lock(&self.transmissions).get(prefix) {
                Some((d, id)) if d == domain => err.mail_id = id.clone(),
                _ => {
                    debug!(domain, stanza_id, "error for no transmission of ours");
                    return;
                }
            }
        }
        let key = (domain.to_string(), err.mail_id.clone());
        match lock(&self.waiters).remove(&key) {
            Some(tx) => {
                let _ = tx.send(PeerAnswer::Error(err));
            }
            None => debug!(domain, id = %err.mail_id, "mail error for no waiting delivery"),
        }
    }

    /// An iq result or error from `domain` (answers to our discovery queries).
    pub fn on_iq(&self, domain: &str, el: &Element) {
        let key = (
            domain.to_string(),
            el.attr("id").unwrap_or_default().to_string(),
        );
        if let Some(tx) = lock(&self.iq_waiters).remove(&key) {
            let _ = tx.send(el.clone());
        }
    }

    /// Whether `domain` takes mail over XMPP (XEP-MTA §5.1): disco#info on its domain
    /// JID, cached. `Err` means no answer (connectivity): defer, cache nothing.
    async fn speaks_mta(
        &self,
        origin: &str,
        domain: &str,
        conn: &OutboundConn,
    ) -> Result<bool, String> {
        if let Some((yes, at)) = lock(&self.disco).get(domain)
            && at.elapsed() < DISCO_TTL
        {
            return Ok(*yes);
        }
        let id = format!("disco-{}", crate::new_mail_id());
        let (tx, rx) = oneshot::channel();
        lock(&self.iq_waiters).insert((domain.to_string(), id.clone()), tx);
        let q = format!(
            "<iq type='get' from='{}' to='{}' id='{id}'><query xmlns='{}'/></iq>",
            escape_attr(origin),
            escape_attr(domain),
            ns::DISCO_INFO
        );
        let sent = conn.send(q).await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(DISCO_TIMEOUT, rx).await,
            Err(e) => {
                lock(&self.iq_waiters).remove(&(domain.to_string(), id));
                return Err(e.to_string());
            }
        };
        lock(&self.iq_waiters).remove(&(domain.to_string(), id));
        let el = match answer {
            Ok(Ok(el)) => el,
            _ => return Err(format!("no answer to service discovery from {domain}")),
        };
        let yes = el.attr("type") == Some("result")
            && el
                .get_child("query", ns::DISCO_INFO)
                .map(|q| {
                    q.children()
                        .any(|f| f.is("feature", ns::DISCO_INFO) && f.attr("var") == Some(ns::MTA))
                })
                .unwrap_or(false);
        info!(domain, mail_over_xmpp = yes, "service discovery");
        if yes {
            let op = crate::known_domains::learn(domain, crate::known_domains::Evidence::Disco);
            crate::known_domains::remember(&self.store, op).await;
        }
        lock(&self.disco).insert(domain.to_string(), (yes, Instant::now()));
        Ok(yes)
    }

    fn forget_disco(&self, domain: &str) {
        lock(&self.disco).remove(domain);
    }

    /// A receipt that arrived after its attempt stopped waiting (XEP-MTA §10.3): apply it
    /// to the recipients still pending, so they are not sent again.
    fn late_receipt(&self, domain: &str, receipt: Receipt) {
        let item_id = receipt.id.split('.').next().unwrap_or_default().to_string();
        if lock(&self.inflight).contains(&item_id) {
            debug!(domain, id = %receipt.id, "late receipt while a new attempt runs; it gets its own");
            return;
        }
        let Some(me) = self.me.get().and_then(|w| w.upgrade()) else {
            return;
        };
        let domain = domain.to_string();
        tokio::spawn(async move {
            let Ok(Some(item)) = me.store.queue_item(&item_id) else {
                debug!(%domain, id = %receipt.id, "receipt for no queued mail (already done)");
                return;
            };
            if !lock(&me.inflight).insert(item_id.clone()) {
                return;
            }
            let mut results = HashMap::new();
            for r in &receipt.rcpts {
                let Some(q) = item.recipients.iter().find(|q| q.address == r.to) else {
                    continue;
                };
                let in_domain = MailAddress::parse(&q.address)
                    .map(|a| a.domain() == domain)
                    .unwrap_or(false);
                if !in_domain || !matches!(q.status, RcptStatus::Pending) {
                    continue;
                }
                match r.status {
                    ReceiptStatus::Stored { .. } => {
                        results.insert(q.address.clone(), Attempt::Delivered);
                    }
                    ReceiptStatus::Failed => {
                        results.insert(q.address.clone(), receipt_failure(r));
                    }
                    ReceiptStatus::Deferred => {}
                }
            }
            if !results.is_empty() {
                info!(%domain, id = %receipt.id, recipients = results.len(), "late receipt applied");
                let body = me
                    .store
                    .queue_body(&item_id)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let mut item = item;
                lock(&me.schedule).remove(&(item.next_attempt, item_id.clone()));
                // Recording counts an attempt; a late receipt is not one.
                item.attempts = item.attempts.saturating_sub(1);
                me.record(item, &body, results, true).await;
            }
            lock(&me.inflight).remove(&item_id);
        });
    }

    /// Loads the queue and runs attempts as they fall due, forever.
    pub async fn run(self: Arc<Self>) {
        match self.store.queue() {
            Ok(items) => {
                let n = items.len();
                for it in items {
                    self.schedule
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((it.next_attempt, it.id));
                }
                if n > 0 {
                    info!(items = n, "queue loaded");
                }
            }
            Err(e) => warn!(error = %e, "could not load the queue"),
        }
        let mut next_prune = 0i64;
        loop {
            let now = crate::now();
            if now >= next_prune {
                next_prune = now + 3600;
                self.prune_dedupe(now);
            }
            let (due, next_at) = {
                let mut sched = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
                let mut due = Vec::new();
                while let Some(first) = sched.first().cloned() {
                    if first.0 > now {
                        break;
                    }
                    sched.remove(&first);
                    due.push(first.1);
                }
                (due, sched.first().map(|f| f.0))
            };
            for id in due {
                let inserted = self
                    .inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone());
                if !inserted {
                    continue;
                }
                let permit = match self.slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                };
                let me = self.clone();
                tokio::spawn(async move {
                    me.attempt(&id).await;
                    me.inflight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    drop(permit);
                });
            }
            let sleep = match next_at {
                Some(t) => Duration::from_millis(
                    ((t - crate::now()).max(0) as u64 * 1000).clamp(10, 60_000),
                ),
                None => Duration::from_secs(60),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Forgets duplicate-suppression records older than `delivery.dedupe_days`
    /// (XEP-MTA §11.3: longer than any sender retries).
    fn prune_dedupe(&self, now: i64) {
        let older_than = now - self.cfg.get().delivery.dedupe_days as i64 * 86_400;
        let store = self.store.clone();
        tokio::spawn(async move {
            match store.apply(vec![Op::PruneDedupe { older_than }]).await {
                Ok(r) => {
                    if let Some(crate::store::OpResult::Pruned(n)) = r.first()
                        && *n > 0
                    {
                        info!(records = n, "pruned old duplicate-suppression records");
                    }
                }
                Err(e) => warn!(error = %e, "could not prune duplicate-suppression records"),
            }
        });
    }

    fn backoff(&self, attempts: u32) -> i64 {
        let base = self.cfg.get().delivery.retry_initial_secs as f64
            * 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.cfg.get().delivery.retry_max_secs as f64);
        // XEP-MTA §11.2: a random factor in [0.8, 1.0] spreads retries of many mails.
        let jitter: f64 = rand::rng().random_range(0.8..=1.0);
        ((capped * jitter).round() as i64).max(1)
    }

    async fn attempt(self: &Arc<Self>, id: &str) {
        let read_failed = |e: StoreError| {
            warn!(id, error = %e, "cannot read queue item; retrying later");
            self.schedule(
                id,
                crate::now() + self.cfg.get().delivery.retry_initial_secs as i64,
            );
        };
        // The message's share of `max_inflight_bytes` first, then its body: held until the
        // outcome is recorded, so big mails wait here instead of piling up in memory.
        let (item, body_ref) = match self.store.queue_entry(id) {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => return read_failed(e),
        };
        let Ok(_bytes) = self
            .bytes
            .clone()
            .acquire_many_owned(inflight_kib(body_ref.size, self.bytes_total))
            .await
        else {
            return;
        };
        let body = match self.store.queued_body(id, body_ref) {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(e) => return read_failed(e),
        };
        let now = crate::now();
        let pending: Vec<String> = item
            .recipients
            .iter()
            .filter(|r| matches!(r.status, RcptStatus::Pending))
            .map(|r| r.address.clone())
            .collect();
        let mut results: HashMap<String, Attempt> = HashMap::new();
        // Every recipient went to an xmta over XMPP (which remembers what it stored).
        let mut xmpp_only = false;
        if now >= item.expires {
            for r in &pending {
                let last = item
                    .recipients
                    .iter()
                    .find(|x| &x.address == r)
                    .and_then(|x| x.last_error.clone())
                    .unwrap_or_else(|| "no answer".into());
                results.insert(
                    r.clone(),
                    Attempt::Failed {
                        status: "5.4.7".into(),
                        diagnostic: format!("x-xmta; delivery time expired; last error: {last}"),
                    },
                );
            }
        } else {
            // One mail per (domain, batch of at most 100 recipients); a batch is fixed by
            // the recipients' positions in the item, so its mail id stays the same on every
            // retry and the receiver's duplicate memory recognises it (XEP-MTA §7.1, §11.3).
            let mut batches: HashMap<(String, usize), Vec<String>> = HashMap::new();
            let mut local_rcpts = Vec::new();
            let mut legacy_rcpts = Vec::new();
            let mut reach: HashMap<String, Result<bool, String>> = HashMap::new();
            for r in &pending {
                let domain = MailAddress::parse(r)
                    .map(|a| a.domain().to_string())
                    .unwrap_or_default();
                // Local recipients are queued when the local LMTP server did not take them
                // at once, and for DSNs when local mail goes to such a server.
                if self.cfg.get().is_local_domain(&domain) {
                    local_rcpts.push(r.clone());
                    continue;
                }
                // Legacy domains go to the smarthost in one transaction (see route.rs);
                // so do plain XMPP domains unless `[gateway] plain_xmpp = "xmpp-body"`.
                if self.cfg.get().smtp.smarthost.is_some() {
                    if !reach.contains_key(&domain) {
                        let v = if self.cfg.get().gateway.plain_xmpp == PlainXmpp::Smarthost {
                            match self.takes_mail_over_xmpp(&domain, DISCO_TIMEOUT).await {
                                Ok(Some(v)) => Ok(v),
                                // Unreachable now: the XMPP attempt below defers it.
                                Ok(None) => Ok(true),
                                Err(e) => Err(e),
                            }
                        } else {
                            self.takes_xmpp(&domain).await
                        };
                        reach.insert(domain.clone(), v);
                    }
                    match reach.get(&domain) {
                        Some(Ok(false)) => {
                            legacy_rcpts.push(r.clone());
                            continue;
                        }
                        Some(Err(e)) => {
                            results.insert(
                                r.clone(),
                                Attempt::Deferred(format!(
                                    "cannot tell how to reach {domain}: {e}"
                                )),
                            );
                            continue;
                        }
                        _ => {}
                    }
                }
                let pos = item
                    .recipients
                    .iter()
                    .position(|x| &x.address == r)
                    .unwrap_or(0);
                batches
                    .entry((domain, pos / payload::MAX_RCPTS))
                    .or_default()
                    .push(r.clone());
            }
            xmpp_only = local_rcpts.is_empty() && legacy_rcpts.is_empty();
            let origin = origin_domain(&self.cfg.get(), &item);
            let mut tasks = Vec::new();
            for ((domain, batch), rcpts) in batches {
                let me = self.clone();
                let item = item.clone();
                let body = body.clone();
                let origin = origin.clone();
                let mail_id = if batch == 0 {
                    item.id.clone()
                } else {
                    format!("{}.{batch}", item.id)
                };
                tasks.push(tokio::spawn(async move {
                    let r = me
                        .to_domain(&origin, &domain, &mail_id, &item, &rcpts, &body)
                        .await;
                    (rcpts, r)
                }));
            }
            if !local_rcpts.is_empty() {
                let me = self.clone();
                let item = item.clone();
                let body = body.clone();
                tasks.push(tokio::spawn(async move {
                    let r = me.to_local(&item, &local_rcpts, &body).await;
                    (local_rcpts, r)
                }));
            }
            if !legacy_rcpts.is_empty() {
                let me = self.clone();
                let item = item.clone();
                let body = body.clone();
                tasks.push(tokio::spawn(async move {
                    let r = me.to_smarthost(&item, &legacy_rcpts, &body).await;
                    (legacy_rcpts, r)
                }));
            }
            for t in tasks {
                if let Ok((_, r)) = t.await {
                    results.extend(r);
                }
            }
        }
        self.record(item, &body, results, xmpp_only).await;
    }

    /// Queued local recipients: through the local-delivery seam (store or LMTP server).
    async fn to_local(
        &self,
        item: &QueueItem,
        rcpts: &[String],
        body: &[u8],
    ) -> HashMap<String, Attempt> {
        let d = LocalDelivery {
            dedupe: None,
            recipients: rcpts.to_vec(),
            folder: crate::store::INBOX.into(),
            message: bytes::Bytes::copy_from_slice(body),
            internal_date: crate::now(),
            flags: Vec::new(),
        };
        use super::local::LocalOutcome;
        super::local::deliver(&self.cfg.get(), &self.store, &item.sender, d)
            .await
            .into_iter()
            .map(|(a, o)| {
                let at = match o {
                    LocalOutcome::Stored | LocalOutcome::Duplicate => Attempt::Delivered,
                    LocalOutcome::Failed(r) => Attempt::Failed {
                        status: r.status(),
                        diagnostic: r.diagnostic(),
                    },
                    LocalOutcome::Deferred(r) => Attempt::Deferred(format!("local delivery: {r}")),
                };
                (a, at)
            })
            .collect()
    }

    /// Recipients in legacy domains: one SMTP transaction with `[smtp] smarthost`, each
    /// recipient with its own answer (5xx: bounced; 4xx or no answer: retried).
    async fn to_smarthost(
        &self,
        item: &QueueItem,
        rcpts: &[String],
        body: &[u8],
    ) -> HashMap<String, Attempt> {
        let all = |a: Attempt| {
            rcpts
                .iter()
                .map(|r| (r.clone(), a.clone()))
                .collect::<HashMap<_, _>>()
        };
        let Some((host, port)) = self
            .cfg
            .get()
            .smtp
            .smarthost
            .as_deref()
            .and_then(crate::s2s::resolve::parse_host_port)
        else {
            return all(Attempt::Deferred("no smarthost configured".into()));
        };
        let ep = super::smtp_client::Endpoint {
            host: host.clone(),
            port,
            lmtp: false,
            tls: self.cfg.get().smtp.smarthost_tls,
            allow_invalid_certs: self.cfg.get().smtp.smarthost_allow_invalid_certs,
            timeout: Duration::from_secs(self.cfg.get().smtp.smarthost_timeout_secs),
            helo: self.cfg.get().smtp_hostname().to_string(),
        };
        let body = with_trace(body, &ep.helo, &item.id, rcpts, crate::now());
        match super::smtp_client::transaction(&ep, &item.sender, rcpts, &body).await {
            Ok(replies) => {
                info!(id = %item.id, smarthost = %format!("{host}:{port}"), recipients = rcpts.len(), "smarthost transaction");
                replies
                    .into_iter()
                    .map(|(a, r)| {
                        let at = if r.is_ok() {
                            Attempt::Delivered
                        } else if r.is_permanent() {
                            Attempt::FailedAt {
                                status: r.status(),
                                diagnostic: r.diagnostic(),
                                remote: host.clone(),
                            }
                        } else {
                            Attempt::Deferred(format!("smarthost {host}:{port}: {r}"))
                        };
                        (a, at)
                    })
                    .collect()
            }
            Err(e) => {
                info!(id = %item.id, error = %e, "smarthost delivery deferred");
                all(Attempt::Deferred(format!("smarthost {host}:{port}: {e}")))
            }
        }
    }

    /// One attempt at the recipients of one domain over XMPP.
    async fn to_domain(
        &self,
        origin: &str,
        domain: &str,
        mail_id: &str,
        item: &QueueItem,
        rcpts: &[String],
        body: &[u8],
    ) -> HashMap<String, Attempt> {
        let all = |a: Attempt| {
            rcpts
                .iter()
                .map(|r| (r.clone(), a.clone()))
                .collect::<HashMap<_, _>>()
        };
        let conn = match self.s2s.stream(origin, domain).await {
            Ok(c) => c,
            Err(S2sError::Resolve(crate::s2s::resolve::ResolveError::NotFound(d)))
            | Err(S2sError::Resolve(crate::s2s::resolve::ResolveError::Refused(d))) => {
                return all(Attempt::Failed {
                    status: "5.1.2".into(),
                    diagnostic: format!(
                        "x-xmta; {d} has no XMPP server (no SRV or address record)"
                    ),
                });
            }
            Err(e) => {
                info!(id = %item.id, domain, error = %e, "delivery deferred");
                return all(Attempt::Deferred(e.to_string()));
            }
        };
        let stanza_from = if item.sender.is_empty() {
            origin.to_string()
        } else {
            MailAddress::parse(&item.sender)
                .map(|a| a.jid_or_domain())
                .unwrap_or_else(|_| origin.to_string())
        };
        match self.speaks_mta(origin, domain, &conn).await {
            Ok(true) => {}
            Ok(false) => {
                return self
                    .legacy(origin, &conn, &stanza_from, item, rcpts, body)
                    .await;
            }
            Err(e) => return all(Attempt::Deferred(e)),
        }
        let envelope = Envelope {
            mail_from: item.sender.clone(),
            rcpt_to: rcpts.to_vec(),
        };
        let stanza_to = if rcpts.len() == 1 {
            MailAddress::parse(&rcpts[0])
                .map(|a| a.jid_or_domain())
                .unwrap_or_else(|_| domain.to_string())
        } else {
            domain.to_string()
        };
        let transmission = crate::new_mail_id();
        let mail = OutgoingMail {
            stanza_from: &stanza_from,
            stanza_to: &stanza_to,
            mail_id,
            transmission: &transmission,
            envelope: &envelope,
            message: body,
            // The domain announced urn:xmpp:mta:0 (above), so nobody would read a body
            // fallback: it is left out (XEP-MTA §7.5); it would double a small mail's stanza
            // and cost a MIME parse here and an XML parse there.
            body: None,
        };
        let stanzas = match payload::mail_stanzas(&mail, conn.max_stanza_bytes) {
            Ok(s) => s,
            Err(e) => return all(Attempt::Deferred(format!("451 4.3.4 {e}"))),
        };
        // At most a receiver's worth of chunked mails in flight per stream (§8.4).
        let _permit = if stanzas.len() > 1 {
            match conn.chunked.clone().acquire_owned().await {
                Ok(p) => Some(p),
                Err(_) => return all(Attempt::Deferred("stream closed".into())),
            }
        } else {
            None
        };
        let (tx, rx) = oneshot::channel();
        let key = (domain.to_string(), mail_id.to_string());
        lock(&self.waiters).insert(key.clone(), tx);
        lock(&self.transmissions).insert(transmission.clone(), key.clone());
        let n = stanzas.len();
        let mut sent = Ok(());
        for s in stanzas {
            sent = conn.send(s).await;
            if sent.is_err() {
                break;
            }
        }
        // §11.1: the receipt timer starts once the last stanza is on the wire.
        if sent.is_ok() {
            sent = conn.flushed().await;
        }
        let answer = match sent {
            Err(e) => Err(e.to_string()),
            Ok(()) => {
                debug!(id = %mail_id, domain, stanzas = n, "mail sent, waiting for receipt");
                let wait = Duration::from_secs(self.cfg.get().delivery.receipt_timeout_secs);
                // A stream that ends first (a stream error such as policy-violation, a cut
                // connection) defers at once rather than at the timeout; a receipt that
                // still comes over the peer's own stream is applied as a late one.
                tokio::select! {
                    biased;
                    a = tokio::time::timeout(wait, rx) => match a {
                        Ok(Ok(a)) => Ok(a),
                        _ => Err(format!("no receipt from {domain} in time")),
                    },
                    () = conn.closed() => {
                        Err(format!("the stream to {domain} closed before the receipt"))
                    }
                }
            }
        };
        lock(&self.waiters).remove(&key);
        lock(&self.transmissions).remove(&transmission);
        match answer {
            Ok(PeerAnswer::Receipt(r)) => {
                let mut out = HashMap::new();
                for rc in rcpts {
                    // §10.3: matched by the exact address string of the envelope.
                    let a = match r.rcpts.iter().find(|x| x.to == *rc) {
                        Some(x) => match x.status {
                            ReceiptStatus::Stored { .. } => Attempt::Delivered,
                            ReceiptStatus::Failed => receipt_failure(x),
                            ReceiptStatus::Deferred => Attempt::Deferred(format!(
                                "{domain} deferred: {} {} {}",
                                x.code.clone().unwrap_or_default(),
                                x.enhanced.clone().unwrap_or_default(),
                                x.text.clone().unwrap_or_default()
                            )),
                        },
                        None => Attempt::Deferred(format!(
                            "{domain}'s receipt did not name this recipient"
                        )),
                    };
                    out.insert(rc.clone(), a);
                }
                info!(id = %mail_id, domain, "receipt received");
                out
            }
            Ok(PeerAnswer::Error(e)) => {
                let text = format!(
                    "{} ({}{}) {}",
                    e.condition,
                    e.error_type,
                    e.app_condition
                        .as_deref()
                        .map(|a| format!(", {a}"))
                        .unwrap_or_default(),
                    e.text.clone().unwrap_or_default()
                );
                if matches!(
                    e.condition.as_str(),
                    "service-unavailable" | "feature-not-implemented"
                ) {
                    // The domain stopped taking mail over XMPP: ask again next time (§12.4).
                    self.forget_disco(domain);
                }
                if e.is_temporary() {
                    all(Attempt::Deferred(format!("{domain}: {text}")))
                } else {
                    let status = match (e.condition.as_str(), e.app_condition.as_deref()) {
                        (_, Some("message-too-large")) => "5.3.4",
                        (_, Some("sender-mismatch")) => "5.7.1",
                        ("policy-violation", _) => "5.7.1",
                        ("bad-request", _) => "5.5.2",
                        _ => "5.0.0",
                    };
                    all(Attempt::Failed {
                        status: status.into(),
                        diagnostic: format!("x-xmpp; {text}"),
                    })
                }
            }
            Err(why) => all(Attempt::Deferred(why)),
        }
    }

    /// Delivery to a plain XMPP domain (XEP-MTA §5.3): the readable body only, one
    /// message per recipient JID. No receipt (not registered mail), but not blind either:
    /// an XMPP server handles a stream's stanzas in order, so once it answers a ping sent
    /// after the messages it has taken them (stored or delivered), and any error it
    /// raised for one of them has arrived first. Without that answer they are resent.
    async fn legacy(
        &self,
        origin: &str,
        conn: &OutboundConn,
        stanza_from: &str,
        item: &QueueItem,
        rcpts: &[String],
        body: &[u8],
    ) -> HashMap<String, Attempt> {
        let text = payload::fallback_body(body);
        let subject = mail_parser::MessageParser::default()
            .parse_headers(body)
            .and_then(|m| m.subject().map(str::to_string))
            .unwrap_or_default();
        let domain = conn.remote.clone();
        let transmission = crate::new_mail_id();
        lock(&self.legacy_errors).insert(transmission.clone(), Vec::new());
        let mut out = HashMap::new();
        let mut sent = Vec::new();
        let mut failure = None;
        for (i, rc) in rcpts.iter().enumerate() {
            // A plain XMPP domain has only JIDs: a mailbox without a JID form cannot exist there.
            let to = match MailAddress::parse(rc).ok().and_then(|a| a.to_jid()) {
                Some(jid) => jid,
                None => {
                    out.insert(
                        rc.clone(),
                        Attempt::Failed {
                            status: "5.1.3".into(),
                            diagnostic: "x-xmta; this address has no XMPP (JID) form".into(),
                        },
                    );
                    continue;
                }
            };
            let stanza = format!(
                "<message type='normal' from='{}' to='{}' id='{transmission}-{i}'><subject>{}</subject><body>{}</body></message>",
                escape_attr(stanza_from),
                escape_attr(&to),
                escape_attr(&subject),
                escape_attr(&text)
            );
            if let Err(e) = conn.send(stanza).await {
                failure = Some(e.to_string());
                break;
            }
            sent.push((i, rc.clone()));
        }
        let barrier = match failure {
            Some(e) => Err(e),
            None => self.ping_barrier(origin, &domain, conn).await,
        };
        let errors = lock(&self.legacy_errors)
            .remove(&transmission)
            .unwrap_or_default();
        for (i, rc) in sent {
            let err = errors.iter().find(|(k, _)| *k == i).map(|(_, e)| e);
            let a = match (&barrier, err) {
                (_, Some(e)) if !e.is_temporary() => Attempt::Failed {
                    status: if e.condition == "service-unavailable"
                        || e.condition == "item-not-found"
                    {
                        "5.1.1".into()
                    } else {
                        "5.0.0".into()
                    },
                    diagnostic: format!(
                        "x-xmpp; {} ({}) {}",
                        e.condition,
                        e.error_type,
                        e.text.clone().unwrap_or_default()
                    ),
                },
                (_, Some(e)) => Attempt::Deferred(format!("{domain}: {}", e.condition)),
                (Ok(()), None) => Attempt::Delivered,
                (Err(why), None) => Attempt::Deferred(why.clone()),
            };
            out.insert(rc, a);
        }
        if barrier.is_ok() {
            info!(id = %item.id, remote = %domain, recipients = rcpts.len(), "delivered as plain XMPP messages (the domain does not announce urn:xmpp:mta:0)");
        }
        out
    }

    /// Sends an XEP-0199 ping to `domain` and waits for any answer (result or error).
    async fn ping_barrier(
        &self,
        origin: &str,
        domain: &str,
        conn: &OutboundConn,
    ) -> Result<(), String> {
        let id = format!("ack-{}", crate::new_mail_id());
        let (tx, rx) = oneshot::channel();
        let key = (domain.to_string(), id.clone());
        lock(&self.iq_waiters).insert(key.clone(), tx);
        let ping = format!(
            "<iq type='get' from='{}' to='{}' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>",
            escape_attr(origin),
            escape_attr(domain)
        );
        let r = match conn.send(ping).await {
            Err(e) => Err(e.to_string()),
            Ok(()) => match tokio::time::timeout(
                Duration::from_secs(self.cfg.get().delivery.receipt_timeout_secs),
                rx,
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                _ => Err(format!(
                    "{domain} did not confirm the messages in time; they will be sent again"
                )),
            },
        };
        lock(&self.iq_waiters).remove(&key);
        r
    }

    /// Writes the outcome of an attempt (and any bounce) in one transaction.
    /// `xmpp_only`: every recipient of this attempt went over XMPP, so a delivered item may
    /// be removed lazily (see below).
    async fn record(
        &self,
        mut item: QueueItem,
        body: &[u8],
        results: HashMap<String, Attempt>,
        xmpp_only: bool,
    ) {
        let now = crate::now();
        let mut newly_failed = Vec::new();
        let mut deferred_any = false;
        for r in item.recipients.iter_mut() {
            match results.get(&r.address) {
                Some(Attempt::Delivered) => r.status = RcptStatus::Delivered { at: now },
                Some(
                    a @ (Attempt::Failed { status, diagnostic }
                    | Attempt::FailedAt {
                        status, diagnostic, ..
                    }),
                ) => {
                    r.status = RcptStatus::Failed {
                        code: status.clone(),
                        text: diagnostic.clone(),
                    };
                    let remote_mta = match a {
                        Attempt::FailedAt { remote, .. } => Some(remote.clone()),
                        _ => MailAddress::parse(&r.address)
                            .ok()
                            .map(|a| a.domain().to_string()),
                    };
                    newly_failed.push(FailedRecipient {
                        address: r.address.clone(),
                        status: status.clone(),
                        diagnostic: diagnostic.clone(),
                        remote_mta,
                    });
                }
                Some(Attempt::Deferred(why)) => {
                    r.last_error = Some(why.clone());
                    deferred_any = true;
                }
                None => {
                    if matches!(r.status, RcptStatus::Pending) {
                        deferred_any = true;
                    }
                }
            }
        }
        let (delivered_n, deferred_n) = crate::metrics::count_attempts(results.values().map(|a| {
            (
                matches!(a, Attempt::Delivered),
                matches!(a, Attempt::Deferred(_)),
            )
        }));
        item.attempts += 1;
        let mut ops = Vec::new();
        if !newly_failed.is_empty() && !item.sender.is_empty() {
            ops.extend(self.bounce_ops(&item, body, &newly_failed, now));
        }
        let done = !item
            .recipients
            .iter()
            .any(|r| matches!(r.status, RcptStatus::Pending));
        let next = now + self.backoff(item.attempts);
        if done {
            ops.push(Op::RemoveQueue {
                id: item.id.clone(),
            });
        } else {
            item.next_attempt = next;
            ops.push(Op::UpdateQueue(item.clone()));
        }
        let bounce_ids: Vec<String> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Enqueue(n) => Some(n.id.clone()),
                _ => None,
            })
            .collect();
        // A delivered item's removal alone need not be durable before we go on: lost in a
        // crash, the mail is sent again and the receiver's duplicate memory answers it
        // (XEP-MTA §11.3). It rides with a later commit (see `store::writer`). Not so for
        // the smarthost (SMTP has no such memory) or local delivery.
        let applied = if done && xmpp_only && ops.len() == 1 {
            self.store.apply_lazily(ops).map(|()| Vec::new())
        } else {
            self.store.apply(ops).await
        };
        match applied {
            Ok(_) => {
                crate::metrics::s2s_attempt(delivered_n, newly_failed.len(), deferred_n);
                for b in bounce_ids {
                    self.schedule(&b, now);
                }
                if done {
                    info!(id = %item.id, attempts = item.attempts, "queue item done");
                } else if deferred_any {
                    self.schedule(&item.id, next);
                    info!(id = %item.id, attempts = item.attempts, retry_in = next - now, "delivery deferred");
                }
            }
            Err(e) => {
                warn!(id = %item.id, error = %e, "could not record delivery outcome; will retry");
                self.schedule(
                    &item.id,
                    now + self.cfg.get().delivery.retry_initial_secs as i64,
                );
            }
        }
    }

    /// The DSN for `failed`: into the sender's mailbox when local, else queued (null sender).
    fn bounce_ops(
        &self,
        item: &QueueItem,
        body: &[u8],
        failed: &[FailedRecipient],
        now: i64,
    ) -> Vec<Op> {
        let origin = origin_domain(&self.cfg.get(), item);
        let Ok(mut sender) = MailAddress::parse(&item.sender) else {
            return Vec::new();
        };
        // Relayed mail went out with an SRS0 sender of ours: the DSN goes to the original
        // sender it stands for (a forged or expired one cannot occur here, we made it; if
        // the key changed, the bounce is dropped with a log line rather than looping).
        if self.cfg.get().is_local_domain(sender.domain()) {
            match crate::srs::reverse_rcpt(&self.cfg.get(), &self.store, &sender) {
                Some(Ok(orig)) => match MailAddress::parse(&orig) {
                    Ok(o) => sender = o,
                    Err(_) => return Vec::new(),
                },
                Some(Err(e)) => {
                    warn!(id = %item.id, sender = %item.sender, error = %e, "cannot reverse the SRS sender of a failed mail; no DSN");
                    return Vec::new();
                }
                None => {}
            }
        }
        let original_sender = sender.to_string();
        let dsn = dsn::build_dsn(&DsnRequest {
            reporting_domain: &origin,
            original_sender: &original_sender,
            original_mail_id: &item.id,
            arrival_date: item.created,
            failed,
            delayed: false,
            original_message: body,
            now,
        });
        if self.cfg.get().is_local_domain(sender.domain())
            && !super::local::is_external(&self.cfg.get())
        {
            vec![Op::Deliver(LocalDelivery {
                dedupe: None,
                recipients: vec![sender.canonical()],
                folder: "INBOX".into(),
                message: dsn.into(),
                internal_date: now,
                flags: Vec::new(),
            })]
        } else {
            vec![Op::Enqueue(NewQueueItem {
                id: crate::new_mail_id(),
                origin: origin.clone(),
                sender: String::new(),
                recipients: vec![if self.cfg.get().is_local_domain(sender.domain()) {
                    sender.canonical()
                } else {
                    original_sender
                }],
                created: now,
                next_attempt: now,
                expires: now + self.cfg.get().delivery.expire_secs as i64,
                message: dsn.into(),
            })]
        }
    }
}

/// The message as relayed to the smarthost: with a Received field of ours on top when it
/// has none at all (mail from `xmta send`, forwarded bounces; RFC 5321 §4.4). Mail that
/// came in over SMTP, LMTP or XMPP already carries the one xmta added on receipt.
fn with_trace<'a>(
    body: &'a [u8],
    host: &str,
    id: &str,
    rcpts: &[String],
    now: i64,
) -> std::borrow::Cow<'a, [u8]> {
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.len() > 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            return std::borrow::Cow::Borrowed(body);
        }
    }
    let for_clause = match rcpts {
        [one] => format!("\r\n for <{one}>"),
        _ => String::new(),
    };
    let mut out = format!(
        "Received: by {host} (xmta) id {id}{for_clause};\r\n {}\r\n",
        crate::rfc5322_date(now)
    )
    .into_bytes();
    out.extend_from_slice(body);
    std::borrow::Cow::Owned(out)
}

/// A `failed` recipient of a receipt as a permanent failure with its SMTP-style codes.
fn receipt_failure(x: &payload::RcptReceipt) -> Attempt {
    Attempt::Failed {
        status: x.enhanced.clone().unwrap_or_else(|| "5.0.0".into()),
        diagnostic: format!(
            "smtp; {} {} {}",
            x.code.clone().unwrap_or_else(|| "550".into()),
            x.enhanced.clone().unwrap_or_default(),
            x.text.clone().unwrap_or_default()
        ),
    }
}

/// The local domain a queue item is sent from (its sender's domain, or for bounces the
/// domain that generated them).
fn origin_domain(cfg: &Config, item: &QueueItem) -> String {
    if !item.origin.is_empty() {
        return item.origin.clone();
    }
    MailAddress::parse(&item.sender)
        .map(|a| a.domain().to_string())
        .unwrap_or_else(|_| cfg.server.domains[0].clone())
}

#[cfg(test)]
mod tests {
    use super::inflight_kib;

    #[test]
    fn inflight_share_is_the_size_in_kib_within_the_budget() {
        let total = 256 * 1024;
        assert_eq!(
            inflight_kib(0, total),
            1,
            "an empty message still holds a permit"
        );
        assert_eq!(inflight_kib(1, total), 1);
        assert_eq!(inflight_kib(1024, total), 1);
        assert_eq!(inflight_kib(1025, total), 2);
        assert_eq!(inflight_kib(4096, total), 4);
        assert_eq!(inflight_kib(50 << 20, total), 50 * 1024);
        // Larger than the whole budget: it takes all of it and so goes alone.
        assert_eq!(inflight_kib(1 << 40, total), total);
    }
}
