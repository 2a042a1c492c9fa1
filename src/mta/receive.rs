//! The receiving side of mail over XMPP: authenticated stanzas from `s2s` become stored
//! mail, receipts, answers to discovery, or errors.
//!
//! A mail is stored only when complete (all chunks, size and SHA-256 matching), in one
//! durable transaction together with its duplicate-suppression records; only then is the
//! receipt sent (XEP-MTA §9, §10).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use minidom::Element;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::payload::{
    Envelope, MailChunk, MailError, RcptReceipt, RcptStatus, Receipt, sha256_hex,
};
use super::rate::PeerBuckets;
use crate::addr::MailAddress;
use crate::registry::RegistryMark;
use crate::s2s::InboundEvent;
use crate::server::Core;
use crate::store::{DedupeKey, LocalDelivery, NewQueueItem, Op};
use crate::xml::ns;
use crate::xml::writer::escape_attr;

/// Most partially received (chunked) mails kept per stream (XEP-MTA §8.4).
const MAX_PARTIAL_PER_STREAM: usize = 8;
/// A partial mail with no new chunk for this long is dropped (XEP-MTA §8.4).
const PARTIAL_IDLE: Duration = Duration::from_secs(300);
/// Octets buffered for partial mails across all streams; beyond it chunk 0 is refused
/// with resource-constraint and the sender retries later.
const PARTIAL_BUDGET: u64 = 512 * 1024 * 1024;

/// One chunked mail being received, keyed by (stream, sending domain, receiving domain,
/// mail id).
struct Partial {
    envelope: Envelope,
    size: u64,
    sha256: String,
    chunks: u32,
    next: u32,
    stanza_from: String,
    stanza_to: String,
    data: Vec<u8>,
    last: Instant,
    auth: &'static str,
    registry: RegistryMark,
}

type PartialKey = (u64, String, String, String);

#[derive(Default)]
struct Partials {
    map: HashMap<PartialKey, Partial>,
    /// Declared sizes of all partial mails (what they may grow to).
    reserved: u64,
}

impl Partials {
    fn remove(&mut self, key: &PartialKey) -> Option<Partial> {
        let p = self.map.remove(key)?;
        self.reserved -= p.size;
        Some(p)
    }

    fn retain(&mut self, mut keep: impl FnMut(&PartialKey, &Partial) -> bool) -> usize {
        let before = self.map.len();
        let mut freed = 0;
        self.map.retain(|k, p| {
            let k2 = keep(k, p);
            if !k2 {
                freed += p.size;
            }
            k2
        });
        self.reserved -= freed;
        before - self.map.len()
    }
}

/// A refusal of a whole mail: the stanza error of XEP-MTA §12.2.
struct Refusal {
    etype: &'static str,
    condition: &'static str,
    app: Option<&'static str>,
    max: Option<u64>,
    text: String,
}

fn bad_request(text: impl Into<String>) -> Refusal {
    Refusal {
        etype: "modify",
        condition: "bad-request",
        app: None,
        max: None,
        text: text.into(),
    }
}

fn resource_constraint(text: impl Into<String>) -> Refusal {
    Refusal {
        etype: "wait",
        condition: "resource-constraint",
        app: None,
        max: None,
        text: text.into(),
    }
}

/// Where a stanza came from: the authenticated pair and how.
struct Origin {
    from_domain: String,
    to_domain: String,
    /// How the sending domain was authenticated (for the trace headers).
    auth: &'static str,
    /// The registry's answer about the sending domain.
    registry: RegistryMark,
}

/// Per-peer rate limits (`[s2s] peer_messages_*`, `peer_bytes_*`).
struct Limits {
    messages: PeerBuckets,
    bytes: PeerBuckets,
}

/// Consumes inbound events until the channel closes.
pub async fn run(core: Arc<Core>, mut rx: mpsc::Receiver<InboundEvent>) {
    let mut partials = Partials::default();
    let mut limits = {
        let c = core.cfg.get();
        let s = &c.s2s;
        Limits {
            messages: PeerBuckets::new(s.peer_messages_per_minute, s.peer_messages_burst),
            bytes: PeerBuckets::new(s.peer_bytes_per_minute, s.peer_bytes_burst),
        }
    };
    while let Some(ev) = rx.recv().await {
        match ev {
            InboundEvent::StreamClosed { stream } => {
                let dropped = partials.retain(|k, _| k.0 != stream);
                if dropped > 0 {
                    info!(
                        stream,
                        dropped, "stream closed with partial mail; the sender will retry"
                    );
                }
            }
            InboundEvent::Stanza {
                stream,
                from_domain,
                to_domain,
                auth,
                registry,
                element,
            } => {
                partials.retain(|_, p| p.last.elapsed() < PARTIAL_IDLE);
                // The limits in force (a SIGHUP may have changed them).
                let c = core.cfg.get();
                let s = &c.s2s;
                limits
                    .messages
                    .set_limits(s.peer_messages_per_minute, s.peer_messages_burst);
                limits
                    .bytes
                    .set_limits(s.peer_bytes_per_minute, s.peer_bytes_burst);
                let origin = Origin {
                    from_domain,
                    to_domain,
                    auth,
                    registry,
                };
                stanza(&core, &mut partials, &mut limits, stream, &origin, element);
            }
        }
    }
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

/// The bare form of a JID (no resource).
fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

fn stanza(
    core: &Arc<Core>,
    partials: &mut Partials,
    limits: &mut Limits,
    stream: u64,
    origin: &Origin,
    el: Element,
) {
    let (from_domain, to_domain) = (origin.from_domain.as_str(), origin.to_domain.as_str());
    let to_is_domain = el
        .attr("to")
        .map(|t| !t.contains(['@', '/']))
        .unwrap_or(false);
    match el.name() {
        "message" => {
            let kind = el.attr("type").unwrap_or("normal");
            if kind == "error" {
                match MailError::parse(&el) {
                    Some(err) => {
                        core.delivery
                            .on_error(from_domain, el.attr("id").unwrap_or(""), err)
                    }
                    None => debug!(%from_domain, "error stanza without an error element ignored"),
                }
                return;
            }
            if let Some(mail) = el.get_child("mail", ns::MTA) {
                let id = mail.attr("id").unwrap_or("").to_string();
                let refusal = if kind != "normal" {
                    Some(bad_request(format!(
                        "a mail stanza must have type 'normal', not '{kind}'"
                    )))
                } else if el.children().filter(|c| c.is("mail", ns::MTA)).count() > 1
                    || el.get_child("receipt", ns::MTA).is_some()
                {
                    Some(bad_request(
                        "a mail stanza carries exactly one <mail/> and no <receipt/>",
                    ))
                } else {
                    mail_chunk(core, partials, limits, stream, origin, &el, mail).err()
                };
                if let Some(r) = refusal {
                    // XEP-MTA §8.4: any error discards the partial mail it belongs to.
                    partials.remove(&(
                        stream,
                        from_domain.to_string(),
                        to_domain.to_string(),
                        id.clone(),
                    ));
                    refuse(core, &el, origin, &id, r);
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
                core.delivery.on_iq(from_domain, &el);
                return;
            }
            let node = el
                .get_child("query", ns::DISCO_INFO)
                .and_then(|q| q.attr("node"));
            if kind == "get"
                && to_is_domain
                && el.get_child("query", ns::DISCO_INFO).is_some()
                && node.is_none()
            {
                let answer = format!(
                    "<iq type='result' from='{}' to='{}' id='{}'><query xmlns='{}'><identity category='server' type='im' name='xmta'/><feature var='{}'/><feature var='urn:xmpp:ping'/><feature var='{}'/></query></iq>",
                    escape_attr(el.attr("to").unwrap_or(to_domain)),
                    escape_attr(el.attr("from").unwrap_or(from_domain)),
                    escape_attr(el.attr("id").unwrap_or("")),
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
            let (etype, cond) = if node.is_some() {
                ("cancel", "item-not-found")
            } else {
                ("cancel", "service-unavailable")
            };
            let err = stanza_error(&el, etype, cond, "not supported here");
            reply(core, to_domain, from_domain, err);
        }
        "presence" => {
            let user_to = el.attr("to").map(|t| t.contains('@')).unwrap_or(false);
            if user_to && matches!(el.attr("type"), Some("subscribe") | Some("probe")) {
                let answer = format!(
                    "<presence type='unsubscribed' from='{}' to='{}'/>",
                    escape_attr(bare(el.attr("to").unwrap_or(to_domain))),
                    escape_attr(bare(el.attr("from").unwrap_or(from_domain)))
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

fn refuse(core: &Arc<Core>, el: &Element, origin: &Origin, mail_id: &str, r: Refusal) {
    info!(remote = %origin.from_domain, mail_id, condition = r.condition, text = %r.text, "refusing mail");
    let err = MailError {
        mail_id: mail_id.to_string(),
        error_type: r.etype.to_string(),
        condition: r.condition.to_string(),
        app_condition: r.app.map(str::to_string),
        max: r.max,
        text: Some(r.text),
    };
    let stanza = err.to_stanza(
        el.attr("to").unwrap_or(&origin.to_domain),
        el.attr("from").unwrap_or(&origin.from_domain),
        el.attr("id"),
    );
    reply(core, &origin.to_domain, &origin.from_domain, stanza);
}

/// Checks chunk 0 (or an unchunked mail) in the order of XEP-MTA §9.1.
fn check_first(core: &Core, origin: &Origin, env: &Envelope, size: u64) -> Result<(), Refusal> {
    // 2. Syntax: every address parses, every recipient is in the stream's 'to' domain.
    let sender = if env.mail_from.is_empty() {
        None
    } else {
        Some(
            MailAddress::parse(&env.mail_from)
                .map_err(|e| bad_request(format!("mail-from '{}': {e}", env.mail_from)))?,
        )
    };
    for r in &env.rcpt_to {
        let a = MailAddress::parse(r).map_err(|e| bad_request(format!("rcpt-to '{r}': {e}")))?;
        if a.domain() != origin.to_domain {
            return Err(bad_request(format!(
                "recipient '{r}' is not in {}",
                origin.to_domain
            )));
        }
    }
    // 3. The envelope sender belongs to the domain the stream authenticated (§4.2).
    if let Some(s) = sender
        && s.domain() != origin.from_domain
    {
        return Err(Refusal {
            etype: "auth",
            condition: "forbidden",
            app: Some("sender-mismatch"),
            max: None,
            text: format!(
                "envelope sender '{}' is not in {}, the domain this stream authenticated",
                env.mail_from, origin.from_domain
            ),
        });
    }
    // 4. Size.
    let max = core.cfg.get().delivery.max_message_bytes as u64;
    if size > max {
        return Err(Refusal {
            etype: "modify",
            condition: "policy-violation",
            app: Some("message-too-large"),
            max: Some(max),
            text: format!("message of {size} bytes is larger than the {max} this server accepts"),
        });
    }
    Ok(())
}

/// After the envelope checks of chunk 0: the registry (a failed lookup defers, XEP-MTA
/// §22.4) and the sending domain's rate limits, each a `wait` error the sender retries.
fn admit(limits: &mut Limits, origin: &Origin, size: u64) -> Result<(), Refusal> {
    if let RegistryMark::Deferred(why) = &origin.registry {
        return Err(Refusal {
            etype: "wait",
            condition: "resource-constraint",
            app: None,
            max: None,
            text: format!("{why}; try again later"),
        });
    }
    let now = Instant::now();
    let peer = origin.from_domain.as_str();
    if !limits.messages.available(peer, 1, now) {
        let wait = limits.messages.wait_secs(peer, 1);
        warn!(
            peer,
            limit = limits.messages.per_minute(),
            "peer message rate limit hit"
        );
        return Err(resource_constraint(format!(
            "rate limit: {peer} may send {} mails a minute here (s2s.peer_messages_per_minute); try again in {wait} s",
            limits.messages.per_minute()
        )));
    }
    if !limits.bytes.available(peer, size, now) {
        let wait = limits.bytes.wait_secs(peer, size);
        warn!(
            peer,
            limit = limits.bytes.per_minute(),
            "peer byte rate limit hit"
        );
        return Err(resource_constraint(format!(
            "rate limit: {peer} may send {} octets a minute here (s2s.peer_bytes_per_minute); try again in {wait} s",
            limits.bytes.per_minute()
        )));
    }
    // Both have room: take from both (a refusal by one costs nothing from the other).
    limits.messages.take(peer, 1, now);
    limits.bytes.take(peer, size, now);
    Ok(())
}

fn mail_chunk(
    core: &Arc<Core>,
    partials: &mut Partials,
    limits: &mut Limits,
    stream: u64,
    origin: &Origin,
    el: &Element,
    mail: &Element,
) -> Result<(), Refusal> {
    let chunk = MailChunk::parse(mail).map_err(|e| bad_request(e.to_string()))?;
    let stanza_from = el.attr("from").unwrap_or_default().to_string();
    let stanza_to = el.attr("to").unwrap_or_default().to_string();
    let key = (
        stream,
        origin.from_domain.clone(),
        origin.to_domain.clone(),
        chunk.id.clone(),
    );
    if chunk.chunk == 0 {
        let Some(env) = chunk.envelope.clone() else {
            return Err(bad_request("chunk 0 without an envelope"));
        };
        if partials.map.contains_key(&key) {
            return Err(bad_request(
                "chunk 0 again while the mail is being received",
            ));
        }
        check_first(core, origin, &env, chunk.size)?;
        admit(limits, origin, chunk.size)?;
        if chunk.data.len() as u64 > chunk.size {
            return Err(bad_request("more data than the declared size"));
        }
        if chunk.chunks == 1 {
            if chunk.data.len() as u64 != chunk.size || sha256_hex(&chunk.data) != chunk.sha256 {
                return Err(bad_request("size or sha256 does not match the data"));
            }
            deliver(core.clone(), origin, chunk.id, env, chunk.data);
            return Ok(());
        }
        // 6. Resources.
        if partials.map.keys().filter(|k| k.0 == stream).count() >= MAX_PARTIAL_PER_STREAM {
            return Err(resource_constraint(
                "too many chunked mails in progress on this stream",
            ));
        }
        if partials.reserved + chunk.size > PARTIAL_BUDGET {
            return Err(resource_constraint(
                "too much chunked mail in progress; try again later",
            ));
        }
        // Grow with the data actually received, not with the size the peer announced.
        let mut data = Vec::with_capacity(chunk.data.len() * 2);
        data.extend_from_slice(&chunk.data);
        partials.reserved += chunk.size;
        partials.map.insert(
            key,
            Partial {
                envelope: env,
                size: chunk.size,
                sha256: chunk.sha256,
                chunks: chunk.chunks,
                next: 1,
                stanza_from,
                stanza_to,
                data,
                last: Instant::now(),
                auth: origin.auth,
                registry: origin.registry.clone(),
            },
        );
        return Ok(());
    }
    let Some(p) = partials.map.get_mut(&key) else {
        return Err(bad_request(format!(
            "chunk {} without chunk 0",
            chunk.chunk
        )));
    };
    if chunk.chunk != p.next
        || chunk.chunks != p.chunks
        || chunk.size != p.size
        || chunk.sha256 != p.sha256
        || stanza_from != p.stanza_from
        || stanza_to != p.stanza_to
    {
        return Err(bad_request("chunk out of sequence"));
    }
    if p.data.len() as u64 + chunk.data.len() as u64 > p.size {
        return Err(bad_request("chunks exceed the declared size"));
    }
    p.data.extend_from_slice(&chunk.data);
    p.next += 1;
    p.last = Instant::now();
    if p.next < p.chunks {
        return Ok(());
    }
    let Some(p) = partials.remove(&key) else {
        return Ok(());
    };
    // 7. Integrity of the assembled message.
    if p.data.len() as u64 != p.size || sha256_hex(&p.data) != p.sha256 {
        return Err(bad_request("size or sha256 does not match the data"));
    }
    let origin = Origin {
        from_domain: origin.from_domain.clone(),
        to_domain: origin.to_domain.clone(),
        auth: p.auth,
        registry: p.registry,
    };
    deliver(core.clone(), &origin, chunk.id, p.envelope, p.data);
    Ok(())
}

/// Stores a complete mail for its local recipients and sends the receipt.
fn deliver(core: Arc<Core>, origin: &Origin, mail_id: String, env: Envelope, data: Vec<u8>) {
    let (from_domain, to_domain) = (origin.from_domain.clone(), origin.to_domain.clone());
    let learnt = crate::known_domains::learn(&from_domain, crate::known_domains::Evidence::S2sMail);
    let method = origin.auth;
    let registry = match &origin.registry {
        RegistryMark::Tag(t) => Some(t.clone()),
        _ => None,
    };
    tokio::spawn(async move {
        // Remembered before the mail is acknowledged (downgrade protection survives a
        // restart from the first mail on).
        crate::known_domains::remember(&core.store, learnt).await;
        let now = crate::now();
        let trace = trace_headers(
            &from_domain,
            &to_domain,
            method,
            registry.as_deref(),
            &mail_id,
            &env.rcpt_to,
            now,
        );
        let mut message = Vec::with_capacity(trace.len() + data.len());
        message.extend_from_slice(trace.as_bytes());
        message.extend_from_slice(&data);
        let size = data.len();
        drop(data);
        // Shared, not copied, by the delivery and an SRS forward.
        let message = bytes::Bytes::from(message);
        let mut receipts: Vec<RcptReceipt> = Vec::new();
        let mut known = Vec::new();
        let mut canon_of: Vec<(String, String)> = Vec::new();
        // (envelope recipient, original sender) for bounces to our SRS0 addresses.
        let mut forwards: Vec<(String, String)> = Vec::new();
        for r in &env.rcpt_to {
            match MailAddress::parse(r) {
                Ok(a) if crate::srs::is_srs(a.local()) => {
                    match crate::srs::reverse_rcpt(&core.cfg.get(), &core.store, &a) {
                        Some(Ok(orig)) => forwards.push((r.clone(), orig)),
                        _ => {
                            info!(%from_domain, rcpt = %r, "invalid SRS address refused");
                            receipts.push(failed(r, "550", "5.1.1", "Invalid SRS address"))
                        }
                    }
                }
                Ok(a) => {
                    let c = a.canonical();
                    match core.store.user(&c) {
                        Ok(Some(_)) => {
                            known.push(c.clone());
                            canon_of.push((r.clone(), c));
                        }
                        Ok(None) => receipts.push(failed(r, "550", "5.1.1", "No such user here")),
                        Err(e) => {
                            warn!(error = %e, "mailbox store unavailable");
                            receipts.push(deferred(r, "Mailbox store temporarily unavailable"))
                        }
                    }
                }
                Err(_) => receipts.push(failed(r, "553", "5.1.3", "Bad recipient address")),
            }
        }
        if !known.is_empty() {
            let d = LocalDelivery {
                dedupe: Some(DedupeKey {
                    domain: from_domain.clone(),
                    mail_id: mail_id.clone(),
                }),
                recipients: known,
                folder: "INBOX".into(),
                message: message.clone(),
                internal_date: now,
                flags: Vec::new(),
            };
            // The local-delivery seam: the built-in store, or the configured LMTP server.
            let n = d.recipients.len();
            let outcomes =
                crate::delivery::local::deliver(&core.cfg.get(), &core.store, &env.mail_from, d)
                    .await;
            use crate::delivery::local::LocalOutcome;
            for (orig, canon) in &canon_of {
                let outcome = outcomes.iter().find(|(a, _)| a == canon).map(|(_, o)| o);
                receipts.push(match outcome {
                    Some(LocalOutcome::Stored) => stored(orig, false),
                    Some(LocalOutcome::Duplicate) => stored(orig, true),
                    Some(LocalOutcome::Failed(r)) => failed(
                        orig,
                        &r.code.to_string(),
                        &r.enhanced.clone().unwrap_or_else(|| "5.0.0".into()),
                        &r.text,
                    ),
                    Some(LocalOutcome::Deferred(r)) => deferred(orig, &r.text),
                    None => deferred(orig, "internal: no outcome"),
                });
            }
            crate::metrics::s2s_stored(
                outcomes
                    .iter()
                    .filter(|(_, o)| matches!(o, LocalOutcome::Stored))
                    .count(),
            );
            info!(%from_domain, %mail_id, sender = %env.mail_from, size, recipients = n, "mail stored");
        }
        if !forwards.is_empty() {
            receipts.extend(
                forward_srs(
                    &core,
                    &from_domain,
                    &to_domain,
                    &env,
                    &forwards,
                    &message,
                    now,
                )
                .await,
            );
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

/// Queues a mail to our SRS0 addresses (a bounce of relayed mail) for the original senders
/// in one durable transaction, and answers each such recipient: stored once queued.
async fn forward_srs(
    core: &Arc<Core>,
    from_domain: &str,
    to_domain: &str,
    env: &Envelope,
    forwards: &[(String, String)],
    message: &[u8],
    now: i64,
) -> Vec<RcptReceipt> {
    // A non-null sender of ours is kept; a foreign one is rewritten in turn.
    let Some(sender) = crate::srs::outbound_sender(&core.cfg.get(), &core.store, &env.mail_from)
    else {
        return forwards
            .iter()
            .map(|(r, _)| failed(r, "550", "5.7.1", "Cannot forward for this sender"))
            .collect();
    };
    let mut rcpts: Vec<String> = Vec::new();
    for (_, o) in forwards {
        if !rcpts.contains(o) {
            rcpts.push(o.clone());
        }
    }
    let id = crate::new_mail_id();
    let op = Op::Enqueue(NewQueueItem {
        id: id.clone(),
        origin: to_domain.to_string(),
        sender,
        recipients: rcpts,
        created: now,
        next_attempt: now,
        expires: now + core.cfg.get().delivery.expire_secs as i64,
        message: bytes::Bytes::copy_from_slice(message),
    });
    match core.store.apply(vec![op]).await {
        Ok(_) => {
            core.delivery.schedule(&id, now);
            info!(%from_domain, queue_id = %id, recipients = forwards.len(), "mail to SRS addresses queued for the original senders");
            forwards.iter().map(|(r, _)| stored(r, false)).collect()
        }
        Err(e) => {
            warn!(error = %e, "could not queue an SRS forward");
            forwards
                .iter()
                .map(|(r, _)| deferred(r, "Queue temporarily unavailable"))
                .collect()
        }
    }
}

/// The Authentication-Results and Received fields prepended to the stored copy
/// (XEP-MTA §9.4). One copy serves all recipients, so `for` names the recipient only
/// when there is exactly one.
fn trace_headers(
    from: &str,
    to: &str,
    method: &str,
    registry: Option<&str>,
    mail_id: &str,
    rcpts: &[String],
    now: i64,
) -> String {
    let for_clause = match rcpts {
        [one] => format!(" for <{one}>"),
        _ => String::new(),
    };
    let registry = registry.map(|r| format!(";\r\n {r}")).unwrap_or_default();
    format!(
        "Authentication-Results: {to}; x-xmpp=pass ({method})\r\n smtp.mailfrom={from}{registry}\r\nReceived: from {from} ({method}) by {to} with XMPP\r\n id {mail_id}{for_clause};\r\n {}\r\n",
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
