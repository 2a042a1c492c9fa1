//! Accepting a message from a local submitter (`xmta send`, later SMTP submission and LMTP):
//! check it, then store local recipients' copies and queue the rest in ONE durable
//! transaction. Only after that commit is the submitter told "accepted".

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
    if !local.is_empty() {
        ops.push(Op::Deliver(LocalDelivery {
            dedupe: None,
            recipients: local.clone(),
            folder: "INBOX".into(),
            message: message.clone().into(),
            internal_date: now,
            flags: Vec::new(),
        }));
    }
    let queue_id = if remote.is_empty() {
        None
    } else {
        let id = crate::new_mail_id();
        ops.push(Op::Enqueue(NewQueueItem {
            id: id.clone(),
            origin: from.domain().to_string(),
            sender: from.to_string(),
            recipients: remote.clone(),
            created: now,
            next_attempt: now,
            expires: now + cfg.delivery.expire_secs as i64,
            message: message.into(),
        }));
        Some(id)
    };
    let results = store
        .apply(ops)
        .await
        .map_err(|e| SubmitError::Store(e.to_string()))?;
    for r in results {
        if let OpResult::Delivered(outcomes) = r {
            for (addr, o) in outcomes {
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

/// Adds Date and Message-ID when the submitter left them out (RFC 6409 §8), as sendmail does.
fn complete_headers(message: Vec<u8>, domain: &str, now: i64) -> Result<Vec<u8>, SubmitError> {
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
