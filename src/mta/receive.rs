//! The receiving side of mail over XMPP: authenticated stanzas from `s2s` become stored
//! mail, receipts, answers to discovery, or errors.
//!
//! A mail is stored only when complete (all chunks, size and SHA-256 matching), in one
//! durable transaction together with its duplicate-suppression records; only then is the
//! receipt sent (XEP-MTA §6, §7).

use std::collections::HashMap;
use std::sync::Arc;

use minidom::Element;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::payload::{
    Envelope, MailChunk, MailError, RcptReceipt, RcptStatus, Receipt, sha256_hex,
};
use crate::addr::MailAddress;
use crate::s2s::InboundEvent;
use crate::server::Core;
use crate::store::{DedupeKey, LocalDelivery, Op, OpResult, RcptOutcome};
use crate::xml::ns;
use crate::xml::writer::escape_attr;

/// Most partially received (chunked) mails kept per stream.
const MAX_PARTIAL_PER_STREAM: usize = 8;
/// A partial mail with no new chunk for this long is dropped (XEP-MTA §8.4).
const PARTIAL_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

struct Partial {
    envelope: Envelope,
    size: u64,
    sha256: String,
    chunks: u32,
    next: u32,
    data: Vec<u8>,
    last: std::time::Instant,
    tls: bool,
}

/// Consumes inbound events until the channel closes.
pub async fn run(core: Arc<Core>, mut rx: mpsc::Receiver<InboundEvent>) {
    let mut partial: HashMap<(u64, String, String), Partial> = HashMap::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            InboundEvent::StreamClosed { stream } => {
                let before = partial.len();
                partial.retain(|k, _| k.0 != stream);
                if partial.len() != before {
                    info!(
                        stream,
                        dropped = before - partial.len(),
                        "stream closed with partial mail; sender will retry"
                    );
                }
            }
            InboundEvent::Stanza {
                stream,
                from_domain,
                to_domain,
                tls,
                element,
            } => {
                partial.retain(|_, p| p.last.elapsed() < PARTIAL_IDLE);
                stanza(
                    &core,
                    &mut partial,
                    stream,
                    &Origin {
                        from_domain,
                        to_domain,
                        tls,
                    },
                    element,
                );
            }
        }
    }
}

/// Where a stanza came from: the authenticated pair and how.
struct Origin {
    from_domain: String,
    to_domain: String,
    tls: bool,
}

fn reply(core: &Arc<Core>, local: &str, remote: &str, stanza: String) {
    let core = core.clone();
    let (local, remote) = (local.to_string(), remote.to_string());
    tokio::spawn(async move {
        if let Err(e) = core.s2s.send(&local, &remote, stanza).await {
            warn!(%remote, error = %e, "could not send reply");
        }
    });
}

fn stanza(
    core: &Arc<Core>,
    partial: &mut HashMap<(u64, String, String), Partial>,
    stream: u64,
    origin: &Origin,
    el: Element,
) {
    let (from_domain, to_domain) = (&origin.from_domain, &origin.to_domain);
    match el.name() {
        "message" => {
            let kind = el.attr("type").unwrap_or("normal");
            if kind == "error" {
                if let Some(err) = MailError::parse(&el) {
                    core.delivery.on_error(from_domain, err);
                } else {
                    debug!(%from_domain, "error stanza without mail reference ignored");
                }
                return;
            }
            if let Some(mail) = el.get_child("mail", ns::MTA) {
                let id = mail.attr("id").unwrap_or("");
                if kind != "normal" {
                    mail_error(
                        core,
                        &el,
                        to_domain,
                        from_domain,
                        id,
                        "modify",
                        "bad-request",
                        None,
                        format!("a mail stanza must have type 'normal', not '{kind}'"),
                    );
                } else if el.children().filter(|c| c.is("mail", ns::MTA)).count() > 1
                    || el.get_child("receipt", ns::MTA).is_some()
                {
                    mail_error(
                        core,
                        &el,
                        to_domain,
                        from_domain,
                        id,
                        "modify",
                        "bad-request",
                        None,
                        "a mail stanza carries exactly one <mail/> and no <receipt/>".into(),
                    );
                } else {
                    mail_chunk(core, partial, stream, origin, &el, mail);
                }
                return;
            }
            if let Some(r) = el.get_child("receipt", ns::MTA) {
                match Receipt::parse(r) {
                    Ok(receipt) => core.delivery.on_receipt(from_domain, receipt),
                    Err(e) => warn!(%from_domain, error = %e, "malformed receipt ignored"),
                }
                return;
            }
            if kind == "headline" {
                return;
            }
            // A chat message to a mail address: say so instead of dropping it (XEP-MTA §13.1).
            let err = stanza_error(
                &el,
                "cancel",
                "service-unavailable",
                "This address receives e-mail only (urn:xmpp:mta:0); chat messages are not delivered.",
            );
            reply(core, to_domain, from_domain, err);
        }
        "iq" => {
            let kind = el.attr("type").unwrap_or("");
            if kind == "result" || kind == "error" {
                return;
            }
            let to_is_domain = el.attr("to").map(|t| !t.contains('@')).unwrap_or(false);
            if kind == "get" && to_is_domain && el.get_child("query", ns::DISCO_INFO).is_some() {
                let id = escape_attr(el.attr("id").unwrap_or(""));
                let answer = format!(
                    "<iq type='result' from='{}' to='{}' id='{id}'><query xmlns='{}'><identity category='server' type='im' name='xmta'/><feature var='{}'/><feature var='{}'/></query></iq>",
                    escape_attr(el.attr("to").unwrap_or(to_domain)),
                    escape_attr(el.attr("from").unwrap_or(from_domain)),
                    ns::DISCO_INFO,
                    ns::DISCO_INFO,
                    ns::MTA
                );
                reply(core, to_domain, from_domain, answer);
                return;
            }
            if kind == "get" && to_is_domain && el.get_child("ping", "urn:xmpp:ping").is_some() {
                let answer = format!(
                    "<iq type='result' from='{}' to='{}' id='{}'/>",
                    escape_attr(el.attr("to").unwrap_or(to_domain)),
                    escape_attr(el.attr("from").unwrap_or(from_domain)),
                    escape_attr(el.attr("id").unwrap_or(""))
                );
                reply(core, to_domain, from_domain, answer);
                return;
            }
            let err = stanza_error(&el, "cancel", "service-unavailable", "not supported here");
            reply(core, to_domain, from_domain, err);
        }
        "presence" => {
            if matches!(el.attr("type"), Some("subscribe") | Some("probe")) {
                let answer = format!(
                    "<presence type='unsubscribed' from='{}' to='{}'/>",
                    escape_attr(el.attr("to").unwrap_or(to_domain)),
                    escape_attr(el.attr("from").unwrap_or(from_domain))
                );
                reply(core, to_domain, from_domain, answer);
            }
        }
        _ => {}
    }
}

/// A generic stanza error answering `el` (same name, swapped addresses, same id).
fn stanza_error(el: &Element, etype: &str, condition: &str, text: &str) -> String {
    let mut s = format!(
        "<{} type='error' from='{}' to='{}'",
        el.name(),
        escape_attr(el.attr("to").unwrap_or("")),
        escape_attr(el.attr("from").unwrap_or(""))
    );
    if let Some(id) = el.attr("id") {
        s.push_str(&format!(" id='{}'", escape_attr(id)));
    }
    s.push_str(&format!(
        "><error type='{etype}'><{condition} xmlns='{}'/><text xmlns='{}' xml:lang='en'>{}</text></error></{}>",
        ns::STANZA_ERRORS,
        ns::STANZA_ERRORS,
        escape_attr(text),
        el.name()
    ));
    s
}

#[allow(clippy::too_many_arguments)]
fn mail_error(
    core: &Arc<Core>,
    el: &Element,
    local: &str,
    remote: &str,
    mail_id: &str,
    etype: &str,
    condition: &str,
    app: Option<&str>,
    text: String,
) {
    info!(%remote, mail_id, condition, %text, "refusing mail");
    let err = MailError {
        mail_id: mail_id.to_string(),
        error_type: etype.to_string(),
        condition: condition.to_string(),
        app_condition: app.map(str::to_string),
        text: Some(text),
    };
    let stanza = err.to_stanza(
        el.attr("to").unwrap_or(local),
        el.attr("from").unwrap_or(remote),
        el.attr("id"),
    );
    reply(core, local, remote, stanza);
}

#[allow(clippy::too_many_arguments)]
fn mail_chunk(
    core: &Arc<Core>,
    partial: &mut HashMap<(u64, String, String), Partial>,
    stream: u64,
    origin: &Origin,
    el: &Element,
    mail: &Element,
) {
    let (from_domain, to_domain) = (origin.from_domain.as_str(), origin.to_domain.as_str());
    let id_attr = mail.attr("id").unwrap_or("").to_string();
    let chunk = match MailChunk::parse(mail) {
        Ok(c) => c,
        Err(e) => {
            mail_error(
                core,
                el,
                to_domain,
                from_domain,
                &id_attr,
                "modify",
                "bad-request",
                None,
                e.to_string(),
            );
            return;
        }
    };
    let max = core.cfg.delivery.max_message_bytes as u64;
    let key = (stream, from_domain.to_string(), chunk.id.clone());
    if chunk.chunk == 0 {
        let Some(env) = chunk.envelope.clone() else {
            return;
        };
        if partial.remove(&key).is_some() {
            mail_error(
                core,
                el,
                to_domain,
                from_domain,
                &chunk.id,
                "modify",
                "bad-request",
                None,
                "chunk 0 again while the mail is being received".into(),
            );
            return;
        }
        if chunk.size > max {
            let err = MailError {
                mail_id: chunk.id.clone(),
                error_type: "modify".into(),
                condition: "policy-violation".into(),
                app_condition: None,
                text: Some(format!(
                    "message of {} bytes is larger than the {max} this server accepts",
                    chunk.size
                )),
            };
            let mut s = err.to_stanza(
                el.attr("to").unwrap_or(to_domain),
                el.attr("from").unwrap_or(from_domain),
                el.attr("id"),
            );
            s = s.replacen(
                "</error>",
                &format!(
                    "<message-too-large xmlns='{}' max='{max}'/></error>",
                    ns::MTA
                ),
                1,
            );
            reply(core, to_domain, from_domain, s);
            return;
        }
        // The envelope sender must belong to the domain the stream authenticated.
        let sender_ok = if env.mail_from.is_empty() {
            true
        } else {
            MailAddress::parse(&env.mail_from)
                .map(|a| a.domain() == from_domain)
                .unwrap_or(false)
        };
        if !sender_ok {
            mail_error(
                core,
                el,
                to_domain,
                from_domain,
                &chunk.id,
                "auth",
                "forbidden",
                Some("sender-mismatch"),
                format!(
                    "envelope sender '{}' is not in {from_domain}, the domain this stream authenticated",
                    env.mail_from
                ),
            );
            return;
        }
        for r in &env.rcpt_to {
            let ok = MailAddress::parse(r)
                .map(|a| a.domain() == to_domain)
                .unwrap_or(false);
            if !ok {
                mail_error(
                    core,
                    el,
                    to_domain,
                    from_domain,
                    &chunk.id,
                    "modify",
                    "bad-request",
                    None,
                    format!("recipient '{r}' is not in {to_domain}"),
                );
                return;
            }
        }
        if chunk.chunks == 1 {
            if chunk.data.len() as u64 != chunk.size || sha256_hex(&chunk.data) != chunk.sha256 {
                mail_error(
                    core,
                    el,
                    to_domain,
                    from_domain,
                    &chunk.id,
                    "modify",
                    "bad-request",
                    None,
                    "size or sha256 does not match the data".into(),
                );
                return;
            }
            deliver(core.clone(), origin, chunk.id, env, chunk.data);
            return;
        }
        if partial.keys().filter(|k| k.0 == stream).count() >= MAX_PARTIAL_PER_STREAM {
            mail_error(
                core,
                el,
                to_domain,
                from_domain,
                &chunk.id,
                "wait",
                "resource-constraint",
                None,
                "too many chunked mails in progress on this stream".into(),
            );
            return;
        }
        let mut data = Vec::with_capacity(chunk.size as usize);
        data.extend_from_slice(&chunk.data);
        partial.insert(
            key,
            Partial {
                envelope: env,
                size: chunk.size,
                sha256: chunk.sha256,
                chunks: chunk.chunks,
                next: 1,
                data,
                last: std::time::Instant::now(),
                tls: origin.tls,
            },
        );
        return;
    }
    let Some(p) = partial.get_mut(&key) else {
        mail_error(
            core,
            el,
            to_domain,
            from_domain,
            &chunk.id,
            "modify",
            "bad-request",
            None,
            format!("chunk {} without chunk 0", chunk.chunk),
        );
        return;
    };
    if chunk.chunk != p.next
        || chunk.chunks != p.chunks
        || chunk.size != p.size
        || chunk.sha256 != p.sha256
    {
        partial.remove(&key);
        mail_error(
            core,
            el,
            to_domain,
            from_domain,
            &chunk.id,
            "modify",
            "bad-request",
            None,
            "chunk out of sequence".into(),
        );
        return;
    }
    if p.data.len() as u64 + chunk.data.len() as u64 > p.size {
        partial.remove(&key);
        mail_error(
            core,
            el,
            to_domain,
            from_domain,
            &chunk.id,
            "modify",
            "bad-request",
            None,
            "chunks exceed the declared size".into(),
        );
        return;
    }
    p.data.extend_from_slice(&chunk.data);
    p.next += 1;
    p.last = std::time::Instant::now();
    if p.next < p.chunks {
        return;
    }
    let Some(p) = partial.remove(&key) else {
        return;
    };
    if p.data.len() as u64 != p.size || sha256_hex(&p.data) != p.sha256 {
        mail_error(
            core,
            el,
            to_domain,
            from_domain,
            &chunk.id,
            "modify",
            "bad-request",
            None,
            "size or sha256 does not match the data".into(),
        );
        return;
    }
    let origin = Origin {
        from_domain: from_domain.to_string(),
        to_domain: to_domain.to_string(),
        tls: p.tls,
    };
    deliver(core.clone(), &origin, chunk.id, p.envelope, p.data);
}

/// Stores a complete mail for its local recipients and sends the receipt.
fn deliver(core: Arc<Core>, origin: &Origin, mail_id: String, env: Envelope, data: Vec<u8>) {
    let (from_domain, to_domain) = (origin.from_domain.clone(), origin.to_domain.clone());
    let method = if origin.tls {
        "dialback; TLS"
    } else {
        "dialback"
    };
    tokio::spawn(async move {
        let now = crate::now();
        let trace = trace_headers(
            &from_domain,
            &to_domain,
            method,
            &mail_id,
            &env.rcpt_to,
            now,
        );
        let mut message = Vec::with_capacity(trace.len() + data.len());
        message.extend_from_slice(trace.as_bytes());
        message.extend_from_slice(&data);
        let mut receipts: Vec<RcptReceipt> = Vec::new();
        let mut known = Vec::new();
        let mut canon_of: Vec<(String, String)> = Vec::new();
        for r in &env.rcpt_to {
            match MailAddress::parse(r) {
                Ok(a) => {
                    let c = a.canonical();
                    match core.store.user(&c) {
                        Ok(Some(_)) => {
                            known.push(c.clone());
                            canon_of.push((r.clone(), c));
                        }
                        Ok(None) => receipts.push(failed(r, "550", "5.1.1", "No such user here")),
                        Err(e) => {
                            receipts.push(deferred(r, &format!("mailbox store unavailable: {e}")))
                        }
                    }
                }
                Err(e) => receipts.push(failed(r, "553", "5.1.3", &format!("bad address: {e}"))),
            }
        }
        if !known.is_empty() {
            let op = Op::Deliver(LocalDelivery {
                dedupe: Some(DedupeKey {
                    domain: from_domain.clone(),
                    mail_id: mail_id.clone(),
                }),
                recipients: known,
                folder: "INBOX".into(),
                message: message.into(),
                internal_date: now,
                flags: Vec::new(),
            });
            match core.store.apply(vec![op]).await {
                Ok(results) => {
                    let outcomes = match results.into_iter().next() {
                        Some(OpResult::Delivered(o)) => o,
                        _ => Vec::new(),
                    };
                    for (orig, canon) in &canon_of {
                        let outcome = outcomes.iter().find(|(a, _)| a == canon).map(|(_, o)| o);
                        receipts.push(match outcome {
                            Some(RcptOutcome::Stored { .. }) => stored(orig, false),
                            Some(RcptOutcome::Duplicate) => stored(orig, true),
                            Some(RcptOutcome::NoSuchUser) | Some(RcptOutcome::NoSuchFolder) => {
                                failed(orig, "550", "5.1.1", "No such user here")
                            }
                            None => deferred(orig, "internal: no outcome"),
                        });
                    }
                    info!(%from_domain, %mail_id, size = data.len(), recipients = outcomes.len(), "mail stored");
                }
                Err(e) => {
                    warn!(%from_domain, %mail_id, error = %e, "could not store mail; deferring");
                    for (orig, _) in &canon_of {
                        receipts.push(deferred(orig, "mailbox store temporarily unavailable"));
                    }
                }
            }
        }
        // Keep the receipt in envelope order.
        receipts.sort_by_key(|r| {
            env.rcpt_to
                .iter()
                .position(|x| *x == r.to)
                .unwrap_or(usize::MAX)
        });
        let receipt = Receipt {
            id: mail_id.clone(),
            rcpts: receipts,
        };
        let stanza = receipt.to_stanza(&to_domain, &from_domain);
        if let Err(e) = core.s2s.send(&to_domain, &from_domain, stanza).await {
            warn!(%from_domain, %mail_id, error = %e, "could not send receipt; the sender will retry and get it then");
        }
    });
}

/// The Authentication-Results and Received fields prepended to the stored copy
/// (XEP-MTA §9.4). One copy serves all recipients, so `for` names the recipient only
/// when there is exactly one.
fn trace_headers(
    from: &str,
    to: &str,
    method: &str,
    mail_id: &str,
    rcpts: &[String],
    now: i64,
) -> String {
    let for_clause = match rcpts {
        [one] => format!(" for <{one}>"),
        _ => String::new(),
    };
    format!(
        "Authentication-Results: {to}; x-xmpp=pass ({method})\r\n smtp.mailfrom={from}\r\nReceived: from {from} ({method}) by {to} with XMPP\r\n id {mail_id}{for_clause};\r\n {}\r\n",
        crate::rfc5322_date(now)
    )
}

fn stored(to: &str, duplicate: bool) -> RcptReceipt {
    RcptReceipt {
        to: to.to_string(),
        status: RcptStatus::Stored { duplicate },
        code: None,
        enhanced: None,
        text: None,
    }
}

fn failed(to: &str, code: &str, enhanced: &str, text: &str) -> RcptReceipt {
    RcptReceipt {
        to: to.to_string(),
        status: RcptStatus::Failed,
        code: Some(code.into()),
        enhanced: Some(enhanced.into()),
        text: Some(text.into()),
    }
}

fn deferred(to: &str, text: &str) -> RcptReceipt {
    RcptReceipt {
        to: to.to_string(),
        status: RcptStatus::Deferred,
        code: Some("451".into()),
        enhanced: Some("4.3.0".into()),
        text: Some(text.into()),
    }
}
