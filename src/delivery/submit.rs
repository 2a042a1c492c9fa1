//! Accepting a message from a local submitter (`xmta send`, later SMTP submission and LMTP):
//! check it, then store local recipients' copies and queue the rest in ONE durable
//! transaction. Only after that commit is the submitter told "accepted".
//!
//! With `[delivery] local = "lmtp:..."` the local copies go to that LMTP server first
//! (see [`super::local`]); what it did not take is either answered per recipient (LMTP) or
//! queued in the same transaction as the remote recipients, for the queue runner to retry
//! or bounce.

use crate::addr::MailAddress;
use crate::config::Config;
use crate::store::{LocalDelivery, NewQueueItem, Op, OpResult, RcptOutcome, Store};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("bad sender address '{0}': {1}")]
    BadSender(String, String),
    #[error("sender {0} is not in a domain this server serves ({1})")]
    ForeignSender(String, String),
    #[error("bad recipient address '{0}': {1}")]
    BadRecipient(String, String),
    #[error("no such local user: {0}")]
    UnknownLocal(String),
    #[error("no recipients")]
    NoRecipients,
    #[error("too many recipients ({0}; the limit is {1})")]
    TooManyRecipients(usize, usize),
    #[error("message of {0} bytes is larger than the limit of {1} (delivery.max_message_bytes)")]
    TooLarge(usize, usize),
    #[error("message is not RFC 5322 (no header/body structure)")]
    NotAMessage,
    #[error("store: {0}")]
    Store(String),
}

/// What was done with an accepted message.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Accepted {
    pub queue_id: Option<String>,
    pub local: Vec<String>,
    pub remote: Vec<String>,
}

/// Checks and durably accepts a message. Returns the queue id when something was queued
/// (the caller schedules it).
pub async fn submit(
    cfg: &Config,
    store: &Store,
    sender: &str,
    rcpts: &[String],
    message: Vec<u8>,
) -> Result<Accepted, SubmitError> {
    let from = MailAddress::parse(sender)
        .map_err(|e| SubmitError::BadSender(sender.into(), e.to_string()))?;
    if !cfg.is_local_domain(from.domain()) {
        return Err(SubmitError::ForeignSender(
            sender.into(),
            cfg.server.domains.join(", "),
        ));
    }
    if rcpts.is_empty() {
        return Err(SubmitError::NoRecipients);
    }
    if rcpts.len() > cfg.delivery.max_recipients {
        return Err(SubmitError::TooManyRecipients(
            rcpts.len(),
            cfg.delivery.max_recipients,
        ));
    }
    if message.len() > cfg.delivery.max_message_bytes {
        return Err(SubmitError::TooLarge(
            message.len(),
            cfg.delivery.max_message_bytes,
        ));
    }
    let mut local = Vec::new();
    let mut remote = Vec::new();
    for r in rcpts {
        let a = MailAddress::parse(r)
            .map_err(|e| SubmitError::BadRecipient(r.clone(), e.to_string()))?;
        if cfg.is_local_domain(a.domain()) {
            let c = a.canonical();
            match store.user(&c) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(SubmitError::UnknownLocal(c)),
                Err(e) => return Err(SubmitError::Store(e.to_string())),
            }
            if !local.contains(&c) {
                local.push(c);
            }
        } else {
            let s = a.to_string();
            if !remote.contains(&s) {
                remote.push(s);
            }
        }
    }
    let now = crate::now();
    let message = complete_headers(message, from.domain(), now)?;
    let mut ops = Vec::new();
    let mut queued = remote.clone();
    if !local.is_empty() {
        let d = LocalDelivery {
            dedupe: None,
            recipients: local.clone(),
            folder: "INBOX".into(),
            message: message.clone().into(),
            internal_date: now,
            flags: Vec::new(),
        };
        if super::local::is_external(cfg) {
            // Handed to the LMTP server now; what it did not take is queued and retried
            // (or bounced) by the queue runner like any other recipient.
            queued.extend(not_taken(
                super::local::deliver(cfg, store, &from.to_string(), d).await,
            ));
        } else {
            ops.push(Op::Deliver(d));
        }
    }
    let queue_id = if queued.is_empty() {
        None
    } else {
        let id = crate::new_mail_id();
        ops.push(Op::Enqueue(NewQueueItem {
            id: id.clone(),
            origin: from.domain().to_string(),
            sender: from.to_string(),
            recipients: queued,
            created: now,
            next_attempt: now,
            expires: now + cfg.delivery.expire_secs as i64,
            message: message.into(),
        }));
        Some(id)
    };
    let results = if ops.is_empty() {
        Vec::new()
    } else {
        store
            .apply(ops)
            .await
            .map_err(|e| SubmitError::Store(e.to_string()))?
    };
    crate::metrics::accepted(crate::metrics::Path::Local);
    for r in results {
        if let OpResult::Delivered(outcomes) = r {
            for (addr, o) in outcomes {
                crate::metrics::delivered_if_stored(&o);
                if matches!(o, RcptOutcome::NoSuchUser) {
                    // Deleted between the check and the commit; the rest is stored.
                    tracing::warn!(%addr, "local recipient vanished during submission");
                }
            }
        }
    }
    Ok(Accepted {
        queue_id,
        local,
        remote,
    })
}

/// A message received over SMTP or LMTP whose recipients the session already checked
/// (see [`route_rcpt`]).
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Reverse-path; "" is the null sender.
    pub sender: String,
    /// Canonical addresses of local users.
    pub local: Vec<String>,
    /// Recipients in other domains, to be queued for XMPP delivery.
    pub remote: Vec<String>,
    /// The message as received (without the Received header).
    pub message: Vec<u8>,
    /// The trace header to prepend, ending in CRLF.
    pub received_header: String,
}

/// Where a recipient goes, decided at RCPT time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A local user (canonical address).
    Local(String),
    /// Another domain: queued for XMPP delivery.
    Remote(String),
}

/// Why a recipient is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RcptRefusal {
    #[error("bad recipient address: {0}")]
    Bad(String),
    #[error("no such user here")]
    UnknownLocal,
    #[error("relaying denied")]
    RelayDenied,
    #[error("foreign senders cannot be relayed over XMPP (gateway.srs is off)")]
    ForeignSender,
    #[error("temporary store error: {0}")]
    Store(String),
}

/// Decides a recipient's route. `relay` says whether the client may send to other domains.
/// Mail to other domains goes out over XMPP from a local domain, and the receiver checks
/// that the envelope sender's domain is the authenticated sending domain; so mail with a
/// foreign sender is queued with an SRS0 sender of ours (`[gateway] srs`), and refused when
/// SRS is off. A recipient that is one of our SRS0 addresses (a bounce coming back) routes
/// to the original sender; a forged or expired one is refused like an unknown user.
pub fn route_rcpt(
    cfg: &Config,
    store: &Store,
    sender: &str,
    rcpt: &str,
    relay: bool,
) -> Result<Route, RcptRefusal> {
    let a = MailAddress::parse(rcpt).map_err(|e| RcptRefusal::Bad(e.to_string()))?;
    if cfg.is_local_domain(a.domain()) {
        // A bounce to one of our SRS addresses goes on to the original sender.
        match crate::srs::reverse_rcpt(cfg, store, &a) {
            Some(Ok(orig)) => {
                return match MailAddress::parse(&orig) {
                    Ok(o) if !cfg.is_local_domain(o.domain()) => Ok(Route::Remote(orig)),
                    _ => Err(RcptRefusal::UnknownLocal),
                };
            }
            Some(Err(e)) => {
                tracing::info!(rcpt, error = %e, "invalid SRS address refused");
                return Err(RcptRefusal::UnknownLocal);
            }
            None => {}
        }
        let c = a.canonical();
        return match store.user(&c) {
            Ok(Some(_)) => Ok(Route::Local(c)),
            Ok(None) => Err(RcptRefusal::UnknownLocal),
            Err(e) => Err(RcptRefusal::Store(e.to_string())),
        };
    }
    if !relay {
        return Err(RcptRefusal::RelayDenied);
    }
    // A foreign sender goes out as an SRS0 address of ours (`crate::srs`), if it can.
    if crate::srs::outbound_sender(cfg, store, sender).is_none() {
        return Err(RcptRefusal::ForeignSender);
    }
    Ok(Route::Remote(a.to_string()))
}

/// The outcome of [`accept`]: the queue id when something was queued (already scheduled
/// when a delivery handle was given), and the local recipients that could not be stored.
#[derive(Debug, Clone, Default)]
pub struct InboundResult {
    pub queue_id: Option<String>,
    pub failed_local: Vec<String>,
    /// With an external LMTP server for local mail and per-recipient answers: the reply
    /// line (CRLF-terminated) for each local recipient it did not take.
    pub local_replies: Vec<(String, String)>,
}

impl InboundResult {
    /// The reply line for local recipient `a` when it was not taken.
    pub fn local_reply(&self, a: &str) -> Option<String> {
        self.local_replies
            .iter()
            .find(|(x, _)| x == a)
            .map(|(_, r)| r.clone())
    }
}

/// The recipients an external delivery did not take.
fn not_taken(outcomes: Vec<(String, super::local::LocalOutcome)>) -> Vec<String> {
    use super::local::LocalOutcome;
    outcomes
        .into_iter()
        .filter(|(_, o)| !matches!(o, LocalOutcome::Stored | LocalOutcome::Duplicate))
        .map(|(a, _)| a)
        .collect()
}

/// Stores local copies and queues the rest of an inbound message in ONE `store.apply`; the
/// caller answers 250 only when this returns `Ok`.
pub async fn accept(
    cfg: &Config,
    store: &Store,
    delivery: Option<&std::sync::Arc<crate::delivery::Delivery>>,
    inbound: Inbound,
) -> Result<InboundResult, SubmitError> {
    accept_with(cfg, store, delivery, inbound, false).await
}

/// [`accept`], saying whether the caller answers each recipient on its own (LMTP). With an
/// external LMTP server for local mail (`[delivery] local`), local copies are handed to it
/// first: with per-recipient answers, what it refused is reported in `local_replies`
/// (its 4xx/5xx, for the client to retry or bounce); with one answer (SMTP), what it did
/// not take is queued and retried or bounced by the queue runner.
pub async fn accept_with(
    cfg: &Config,
    store: &Store,
    delivery: Option<&std::sync::Arc<crate::delivery::Delivery>>,
    inbound: Inbound,
    per_recipient: bool,
) -> Result<InboundResult, SubmitError> {
    if inbound.local.is_empty() && inbound.remote.is_empty() {
        return Err(SubmitError::NoRecipients);
    }
    let total = inbound.received_header.len() + inbound.message.len();
    if total > cfg.delivery.max_message_bytes {
        return Err(SubmitError::TooLarge(total, cfg.delivery.max_message_bytes));
    }
    let now = crate::now();
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(inbound.received_header.as_bytes());
    message.extend_from_slice(&inbound.message);
    let message = bytes::Bytes::from(message);
    let mut ops = Vec::new();
    let mut queued = inbound.remote.clone();
    let mut local_replies = Vec::new();
    if !inbound.local.is_empty() {
        let d = LocalDelivery {
            dedupe: None,
            recipients: inbound.local.clone(),
            folder: crate::store::INBOX.into(),
            message: message.clone(),
            internal_date: now,
            flags: Vec::new(),
        };
        if super::local::is_external(cfg) {
            let outcomes = super::local::deliver(cfg, store, &inbound.sender, d).await;
            if per_recipient {
                use super::local::LocalOutcome;
                for (a, o) in outcomes {
                    if let LocalOutcome::Failed(r) | LocalOutcome::Deferred(r) = o {
                        let line = format!(
                            "{} {} <{a}> {}\r\n",
                            r.code,
                            r.status(),
                            if r.text.is_empty() {
                                "refused"
                            } else {
                                &r.text
                            }
                        );
                        local_replies.push((a, line));
                    }
                }
            } else {
                queued.extend(not_taken(outcomes));
            }
        } else {
            ops.push(Op::Deliver(d));
        }
    }
    let queue_id = if queued.is_empty() {
        None
    } else {
        // Foreign senders go out rewritten (SRS0 in a local domain, see `crate::srs`).
        let sender = crate::srs::outbound_sender(cfg, store, &inbound.sender).ok_or_else(|| {
            SubmitError::ForeignSender(inbound.sender.clone(), cfg.server.domains.join(", "))
        })?;
        let origin = MailAddress::parse(&sender)
            .ok()
            .map(|a| a.domain().to_string())
            .filter(|d| cfg.is_local_domain(d))
            .or_else(|| cfg.server.domains.first().cloned())
            .ok_or_else(|| SubmitError::Store("no local domain configured".into()))?;
        let id = crate::new_mail_id();
        ops.push(Op::Enqueue(NewQueueItem {
            id: id.clone(),
            origin,
            sender,
            recipients: queued,
            created: now,
            next_attempt: now,
            expires: now + cfg.delivery.expire_secs as i64,
            message,
        }));
        Some(id)
    };
    let results = if ops.is_empty() {
        Vec::new()
    } else {
        store
            .apply(ops)
            .await
            .map_err(|e| SubmitError::Store(e.to_string()))?
    };
    let mut failed_local = Vec::new();
    for r in results {
        if let OpResult::Delivered(outcomes) = r {
            for (addr, o) in outcomes {
                crate::metrics::delivered_if_stored(&o);
                if !matches!(o, RcptOutcome::Stored { .. } | RcptOutcome::Duplicate) {
                    tracing::warn!(%addr, ?o, "local recipient not stored");
                    failed_local.push(addr);
                }
            }
        }
    }
    if let (Some(id), Some(d)) = (&queue_id, delivery) {
        d.schedule(id, now);
    }
    Ok(InboundResult {
        queue_id,
        failed_local,
        local_replies,
    })
}

/// Adds Date and Message-ID when the submitter left them out (RFC 6409 §8), as sendmail does.
pub fn complete_headers(message: Vec<u8>, domain: &str, now: i64) -> Result<Vec<u8>, SubmitError> {
    let end = find_header_end(&message).ok_or(SubmitError::NotAMessage)?;
    let head = &message[..end];
    let has = |name: &str| {
        head.split(|&b| b == b'\n').any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && line[name.len()] == b':'
        })
    };
    let mut extra = String::new();
    if !has("date") {
        extra.push_str(&format!("Date: {}\r\n", crate::rfc5322_date(now)));
    }
    if !has("message-id") {
        extra.push_str(&format!(
            "Message-ID: <{}@{domain}>\r\n",
            crate::new_mail_id()
        ));
    }
    if extra.is_empty() {
        return Ok(message);
    }
    let mut out = Vec::with_capacity(message.len() + extra.len());
    out.extend_from_slice(&message[..end]);
    out.extend_from_slice(extra.as_bytes());
    out.extend_from_slice(&message[end..]);
    Ok(out)
}

/// Offset of the blank line ending the header block (or the end, for a header-only message).
fn find_header_end(m: &[u8]) -> Option<usize> {
    if m.is_empty() {
        return None;
    }
    let mut i = 0;
    while i < m.len() {
        let line_end = m[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| i + p + 1)
            .unwrap_or(m.len());
        let line = &m[i..line_end];
        if line == b"\r\n" || line == b"\n" {
            return Some(i);
        }
        if i == 0 && !line.contains(&b':') {
            return None;
        }
        i = line_end;
    }
    Some(m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_missing_headers_before_the_body() {
        let m = complete_headers(b"Subject: x\r\n\r\nbody\r\n".to_vec(), "a.test", 0).unwrap();
        let s = String::from_utf8(m).unwrap();
        assert!(s.starts_with("Subject: x\r\nDate: "), "{s}");
        assert!(s.contains("Message-ID: <"), "{s}");
        assert!(s.ends_with("\r\n\r\nbody\r\n"), "{s}");
        let kept = complete_headers(
            b"Date: x\r\nMessage-ID: <a@b>\r\n\r\nb".to_vec(),
            "a.test",
            0,
        )
        .unwrap();
        assert_eq!(kept, b"Date: x\r\nMessage-ID: <a@b>\r\n\r\nb");
        assert!(complete_headers(b"no header here\r\n\r\n".to_vec(), "a", 0).is_err());
    }
}
