//! The one seam for local delivery: a message for local users goes into the built-in
//! store, or (with `[delivery] local = "lmtp:HOST:PORT"`) to an existing IMAP server's
//! LMTP listener such as Dovecot's. Either way each recipient has its own outcome, and
//! "stored" means the store committed it or the LMTP server answered 2xx for it, so the
//! callers (s2s receipts, SMTP/LMTP replies, `xmta send`, the queue runner) acknowledge
//! only what is really held.
//!
//! With LMTP, duplicate suppression of s2s retries (XEP-MTA §11.3) still uses the store's
//! dedupe records: checked before the hand-over, written for what the server took.

use std::time::Duration;

use crate::config::{Config, LocalTarget, SmarthostTls};
use crate::store::{LocalDelivery, Op, OpResult, RcptOutcome, Store};

use super::smtp_client::{self, Endpoint, Reply};

/// What happened to one local recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOutcome {
    Stored,
    /// Already stored under the same dedupe key (built-in store only).
    Duplicate,
    /// Refused for good (no such user, policy).
    Failed(Reply),
    /// Not stored now; may be tried again.
    Deferred(Reply),
}

/// Whether local mail goes to an external LMTP server.
pub fn is_external(cfg: &Config) -> bool {
    !matches!(cfg.local_target(), LocalTarget::Store)
}

/// Delivers `d` to its recipients; one outcome per recipient, in order. `sender` is the
/// envelope sender ("" for the null sender), used as LMTP's MAIL FROM.
pub async fn deliver(
    cfg: &Config,
    store: &Store,
    sender: &str,
    d: LocalDelivery,
) -> Vec<(String, LocalOutcome)> {
    match cfg.local_target() {
        LocalTarget::Store => into_store(store, d).await,
        LocalTarget::Lmtp(host, port) => into_lmtp(cfg, store, host, port, sender, d).await,
    }
}

/// Hands `d` to the LMTP server. Duplicate suppression (XEP-MTA §11.3) for s2s mail:
/// recipients that already got this mail id are not handed over again, and those the server
/// takes now are recorded before the caller acknowledges them. Outcomes are looked up by
/// address; their order is not the request's.
async fn into_lmtp(
    cfg: &Config,
    store: &Store,
    host: String,
    port: u16,
    sender: &str,
    mut d: LocalDelivery,
) -> Vec<(String, LocalOutcome)> {
    let mut out = Vec::new();
    if let Some(key) = &d.dedupe {
        d.recipients.retain(|r| match store.is_duplicate(key, r) {
            Ok(true) => {
                out.push((r.clone(), LocalOutcome::Duplicate));
                false
            }
            _ => true,
        });
    }
    if d.recipients.is_empty() {
        return out;
    }
    let ep = Endpoint {
        host,
        port,
        lmtp: true,
        tls: SmarthostTls::Off,
        allow_invalid_certs: false,
        timeout: Duration::from_secs(cfg.delivery.local_timeout_secs),
        helo: cfg.smtp_hostname().to_string(),
    };
    let answered: Vec<(String, LocalOutcome)> =
        match smtp_client::transaction(&ep, sender, &d.recipients, &d.message).await {
            Ok(replies) => replies
                .into_iter()
                .map(|(a, r)| {
                    let o = if r.is_ok() {
                        LocalOutcome::Stored
                    } else if r.is_permanent() {
                        LocalOutcome::Failed(r)
                    } else {
                        LocalOutcome::Deferred(r)
                    };
                    (a, o)
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "local LMTP delivery failed");
                let r = Reply::local_temp(format!("local mailbox server: {e}"));
                d.recipients
                    .iter()
                    .map(|a| (a.clone(), LocalOutcome::Deferred(r.clone())))
                    .collect()
            }
        };
    if let Some(key) = d.dedupe.clone() {
        let stored: Vec<String> = answered
            .iter()
            .filter(|(_, o)| *o == LocalOutcome::Stored)
            .map(|(a, _)| a.clone())
            .collect();
        if !stored.is_empty() {
            let op = Op::RecordDedupe {
                key,
                recipients: stored,
                at: d.internal_date,
            };
            if let Err(e) = store.apply(vec![op]).await {
                tracing::warn!(error = %e, "could not record delivered mail ids; a retry may be delivered twice");
            }
        }
    }
    out.extend(answered);
    out
}

async fn into_store(store: &Store, d: LocalDelivery) -> Vec<(String, LocalOutcome)> {
    let rcpts = d.recipients.clone();
    // Mail from an s2s peer (the only deliveries with a duplicate key, XEP-MTA §11.3) may
    // wait a moment to share a commit: its sender keeps a window of mails awaiting
    // receipts, so the latency of one mail does not slow it down.
    let from_peer = d.dedupe.is_some();
    let op = vec![Op::Deliver(d)];
    let applied = if from_peer {
        store.apply_soon(op).await
    } else {
        store.apply(op).await
    };
    match applied {
        Ok(results) => {
            let outcomes = match results.into_iter().next() {
                Some(OpResult::Delivered(o)) => o,
                _ => Vec::new(),
            };
            rcpts
                .iter()
                .map(|a| {
                    let o = match outcomes.iter().find(|(x, _)| x == a).map(|(_, o)| o) {
                        Some(RcptOutcome::Stored { .. }) => LocalOutcome::Stored,
                        Some(RcptOutcome::Duplicate) => LocalOutcome::Duplicate,
                        Some(RcptOutcome::NoSuchUser) | Some(RcptOutcome::NoSuchFolder) => {
                            LocalOutcome::Failed(Reply {
                                code: 550,
                                enhanced: Some("5.1.1".into()),
                                text: "No such user here".into(),
                            })
                        }
                        None => LocalOutcome::Deferred(Reply::local_temp("internal: no outcome")),
                    };
                    (a.clone(), o)
                })
                .collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not store local mail");
            let r = Reply {
                code: 451,
                enhanced: Some("4.3.0".into()),
                text: "Mailbox store temporarily unavailable".into(),
            };
            rcpts
                .into_iter()
                .map(|a| (a, LocalOutcome::Deferred(r.clone())))
                .collect()
        }
    }
}
