//! The elements of the mail-over-XMPP protocol (xep-drafts/xep-xmta-mail.xml, namespace
//! `urn:xmpp:mta:0`): the `<mail/>` payload with its envelope and data, chunking, and the
//! `<receipt/>` a receiving server sends once the mail is durable. Parsed once at the edge
//! into these types; nothing else in xmta looks at the raw elements.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use minidom::Element;
use sha2::{Digest, Sha256};

use crate::xml::ns;
use crate::xml::writer::escape_attr;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

fn perr(s: impl Into<String>) -> PayloadError {
    PayloadError(s.into())
}

/// The SMTP-style envelope: who the mail is from and for whom this stanza carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path; empty for the null sender (bounces).
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
}

/// One `<mail/>` element: a whole message, or one chunk of it.
#[derive(Debug, Clone)]
pub struct MailChunk {
    pub id: String,
    pub size: u64,
    pub sha256: String,
    pub chunk: u32,
    pub chunks: u32,
    /// Present in chunk 0 only.
    pub envelope: Option<Envelope>,
    pub data: Vec<u8>,
}

/// Largest number of recipients one mail stanza may carry.
pub const MAX_RCPTS: usize = 100;
/// Largest number of chunks accepted for one mail.
pub const MAX_CHUNKS: u32 = 100_000;

pub fn valid_mail_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl MailChunk {
    /// Parses `<mail xmlns='urn:xmpp:mta:0'>`.
    pub fn parse(el: &Element) -> Result<MailChunk, PayloadError> {
        if !el.is("mail", ns::MTA) {
            return Err(perr("not a <mail/> element"));
        }
        let id = el
            .attr("id")
            .ok_or_else(|| perr("<mail/> without 'id'"))?
            .to_string();
        if !valid_mail_id(&id) {
            return Err(perr(
                "mail 'id' must be 1-128 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let size: u64 = el
            .attr("size")
            .and_then(|s| s.parse().ok())
            .filter(|&n| n >= 1)
            .ok_or_else(|| perr("<mail/> without a positive numeric 'size'"))?;
        let sha256 = el
            .attr("sha256")
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| perr("<mail/> without a 64-digit hex 'sha256'"))?
            .to_ascii_lowercase();
        let (chunk, chunks) = match (el.attr("chunk"), el.attr("chunks")) {
            (None, None) => (0, 1),
            (Some(c), Some(n)) => {
                let c: u32 = c.parse().map_err(|_| perr("bad 'chunk'"))?;
                let n: u32 = n.parse().map_err(|_| perr("bad 'chunks'"))?;
                if n == 0 || n > MAX_CHUNKS || c >= n {
                    return Err(perr("'chunk' must be below 'chunks'"));
                }
                (c, n)
            }
            _ => return Err(perr("'chunk' and 'chunks' go together")),
        };
        if let Some(env) = el.get_child("envelope", ns::MTA)
            && env
                .children()
                .filter(|c| c.is("mail-from", ns::MTA))
                .count()
                > 1
        {
            return Err(perr("more than one <mail-from/>"));
        }
        for name in ["envelope", "data"] {
            if el.children().filter(|c| c.is(name, ns::MTA)).count() > 1 {
                return Err(perr(format!("more than one <{name}/>")));
            }
        }
        let envelope = match el.get_child("envelope", ns::MTA) {
            None => None,
            Some(env) => {
                let mail_from = env
                    .get_child("mail-from", ns::MTA)
                    .ok_or_else(|| perr("<envelope/> without <mail-from/>"))?
                    .text()
                    .trim()
                    .to_string();
                let rcpt_to: Vec<String> = env
                    .children()
                    .filter(|c| c.is("rcpt-to", ns::MTA))
                    .map(|c| c.text().trim().to_string())
                    .collect();
                if rcpt_to.is_empty() || rcpt_to.len() > MAX_RCPTS {
                    return Err(perr(format!(
                        "an envelope needs 1 to {MAX_RCPTS} <rcpt-to/>"
                    )));
                }
                for (i, r) in rcpt_to.iter().enumerate() {
                    if rcpt_to[..i].contains(r) {
                        return Err(perr(format!("<rcpt-to/> {r} appears twice")));
                    }
                }
                Some(Envelope { mail_from, rcpt_to })
            }
        };
        if chunk == 0 && envelope.is_none() {
            return Err(perr("the first (or only) chunk must carry the <envelope/>"));
        }
        if chunk > 0 && envelope.is_some() {
            return Err(perr("only chunk 0 carries the <envelope/>"));
        }
        let data_el = el
            .get_child("data", ns::MTA)
            .ok_or_else(|| perr("<mail/> without <data/>"))?;
        let data = decode_data(data_el)?;
        if data.len() as u64 > size {
            return Err(perr("<data/> holds more than the declared 'size'"));
        }
        Ok(MailChunk {
            id,
            size,
            sha256,
            chunk,
            chunks,
            envelope,
            data,
        })
    }
}

/// The octets of a `<data/>` element (§7.4): base64 that may be broken by whitespace. The
/// text is decoded where it lies when it is one piece without whitespace (what senders
/// produce), so a large mail is not copied once more or scanned character by character.
fn decode_data(data_el: &Element) -> Result<Vec<u8>, PayloadError> {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let mut texts = data_el.texts();
    let first = texts.next().unwrap_or_default();
    let decoded = match texts.next() {
        None if !first.as_bytes().iter().any(is_space) => {
            if first.is_empty() {
                return Err(perr("empty <data/>"));
            }
            B64.decode(first.as_bytes())
        }
        second => {
            let mut clean = Vec::with_capacity(first.len());
            for t in std::iter::once(first).chain(second).chain(texts) {
                clean.extend(t.as_bytes().iter().filter(|b| !is_space(b)));
            }
            if clean.is_empty() {
                return Err(perr("empty <data/>"));
            }
            B64.decode(&clean)
        }
    };
    decoded.map_err(|e| perr(format!("<data/> is not base64: {e}")))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Why a mail cannot be put into stanzas that fit the peer's limit.
#[derive(Debug, thiserror::Error)]
#[error("the envelope alone does not fit into the peer's stanza limit of {0} bytes")]
pub struct ChunkError(pub usize);

/// What the sender needs to build the stanzas of one mail for one recipient domain.
pub struct OutgoingMail<'a> {
    pub stanza_from: &'a str,
    pub stanza_to: &'a str,
    pub mail_id: &'a str,
    /// Prefix of the stanza ids, unique per transmission, so that an error from a server
    /// that does not echo `<mail/>` can still be matched (XEP-MTA §7.1, §12.4).
    pub transmission: &'a str,
    pub envelope: &'a Envelope,
    pub message: &'a [u8],
    /// Human-readable fallback for clients that do not know the protocol.
    pub body: Option<String>,
}

fn stanza_head(
    mail: &OutgoingMail<'_>,
    digest: &str,
    chunking: Option<(usize, usize)>,
    envelope: bool,
) -> String {
    let k = chunking.map(|c| c.0).unwrap_or(0);
    let mut s = format!(
        "<message from='{}' to='{}' id='{}-{k}' type='normal'><mail xmlns='{}' id='{}' size='{}' sha256='{digest}'",
        escape_attr(mail.stanza_from),
        escape_attr(mail.stanza_to),
        escape_attr(mail.transmission),
        ns::MTA,
        escape_attr(mail.mail_id),
        mail.message.len(),
    );
    if let Some((k, n)) = chunking {
        s.push_str(&format!(" chunk='{k}' chunks='{n}'"));
    }
    s.push('>');
    if envelope {
        s.push_str("<envelope><mail-from>");
        s.push_str(&escape_attr(&mail.envelope.mail_from));
        s.push_str("</mail-from>");
        for r in &mail.envelope.rcpt_to {
            s.push_str("<rcpt-to>");
            s.push_str(&escape_attr(r));
            s.push_str("</rcpt-to>");
        }
        s.push_str("</envelope>");
    }
    s.push_str("<data>");
    s
}

fn stanza_tail(body: Option<&str>) -> String {
    let mut s = String::from("</data></mail>");
    if let Some(b) = body {
        s.push_str("<body>");
        s.push_str(&escape_attr(b));
        s.push_str("</body>");
    }
    s.push_str("</message>");
    s
}

/// The serialized `<message/>` stanzas carrying `mail`, chunked per XEP-MTA §8.2 so that
/// each fits `max_stanza` (the peer's limit in force).
pub fn mail_stanzas(mail: &OutgoingMail<'_>, max_stanza: usize) -> Result<Vec<String>, ChunkError> {
    let size = mail.message.len();
    let digest = sha256_hex(mail.message);
    let b64_len = size.div_ceil(3) * 4;
    let mut body = mail.body.as_deref();
    loop {
        let head = stanza_head(mail, &digest, None, true);
        let tail = stanza_tail(body);
        // §8.1: unchunked if it fits with a 4096-octet margin.
        if head.len() + b64_len + tail.len() + 4096 <= max_stanza {
            let mut s = String::with_capacity(head.len() + b64_len + tail.len());
            s.push_str(&head);
            B64.encode_string(mail.message, &mut s);
            s.push_str(&tail);
            return Ok(vec![s]);
        }
        // §8.2: H, R, C, N.
        let h = head.len() + tail.len();
        let r = (h + 1024).max(4096);
        let c = 3 * (max_stanza.saturating_sub(r) / 4);
        if c < 3072 {
            if body.is_some() {
                body = None;
                continue;
            }
            return Err(ChunkError(max_stanza));
        }
        let n = size.div_ceil(c);
        let mut out = Vec::with_capacity(n);
        for (k, piece) in mail.message.chunks(c).enumerate() {
            let first = k == 0;
            let mut s = stanza_head(mail, &digest, Some((k, n)), first);
            B64.encode_string(piece, &mut s);
            s.push_str(&stanza_tail(if first { body } else { None }));
            out.push(s);
        }
        return Ok(out);
    }
}

/// Per-recipient status in a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptStatus {
    Stored { duplicate: bool },
    Failed,
    Deferred,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptReceipt {
    pub to: String,
    pub status: RcptStatus,
    /// RFC 5321 reply code and RFC 3463 enhanced code (failed and deferred).
    pub code: Option<String>,
    pub enhanced: Option<String>,
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub id: String,
    pub rcpts: Vec<RcptReceipt>,
}

impl Receipt {
    pub fn parse(el: &Element) -> Result<Receipt, PayloadError> {
        if !el.is("receipt", ns::MTA) {
            return Err(perr("not a <receipt/>"));
        }
        let id = el
            .attr("id")
            .ok_or_else(|| perr("<receipt/> without 'id'"))?
            .to_string();
        let mut rcpts = Vec::new();
        for r in el.children().filter(|c| c.is("rcpt", ns::MTA)) {
            let to = r
                .attr("to")
                .ok_or_else(|| perr("<rcpt/> without 'to'"))?
                .to_string();
            let status = match r.attr("status") {
                Some("stored") => RcptStatus::Stored {
                    duplicate: r.attr("duplicate") == Some("true"),
                },
                Some("failed") => RcptStatus::Failed,
                Some("deferred") => RcptStatus::Deferred,
                other => return Err(perr(format!("<rcpt/> status {other:?}"))),
            };
            let text = r.text();
            rcpts.push(RcptReceipt {
                to,
                status,
                code: r.attr("code").map(str::to_string),
                enhanced: r.attr("enhanced").map(str::to_string),
                text: if text.trim().is_empty() {
                    None
                } else {
                    Some(text.trim().to_string())
                },
            });
        }
        Ok(Receipt { id, rcpts })
    }

    /// The receipt stanza from `from` (receiving domain) to `to` (sending domain).
    pub fn to_stanza(&self, from: &str, to: &str) -> String {
        let mut s = format!(
            "<message from='{}' to='{}' id='r-{}' type='normal'><receipt xmlns='{}' id='{}'>",
            escape_attr(from),
            escape_attr(to),
            escape_attr(&self.id),
            ns::MTA,
            escape_attr(&self.id)
        );
        for r in &self.rcpts {
            let status = match r.status {
                RcptStatus::Stored { .. } => "stored",
                RcptStatus::Failed => "failed",
                RcptStatus::Deferred => "deferred",
            };
            s.push_str(&format!(
                "<rcpt to='{}' status='{status}'",
                escape_attr(&r.to)
            ));
            if let RcptStatus::Stored { duplicate: true } = r.status {
                s.push_str(" duplicate='true'");
            }
            if let Some(c) = &r.code {
                s.push_str(&format!(" code='{}'", escape_attr(c)));
            }
            if let Some(c) = &r.enhanced {
                s.push_str(&format!(" enhanced='{}'", escape_attr(c)));
            }
            match &r.text {
                Some(t) => s.push_str(&format!(">{}</rcpt>", escape_attr(t))),
                None => s.push_str("/>"),
            }
        }
        s.push_str("</receipt></message>");
        s
    }
}

/// A stanza error answering a mail stanza (XEP-MTA §12.2): the whole mail is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailError {
    pub mail_id: String,
    /// `cancel`, `auth`, `modify` (permanent) or `wait` (retry).
    pub error_type: String,
    pub condition: String,
    /// Application condition in urn:xmpp:mta:0, e.g. `sender-mismatch`.
    pub app_condition: Option<String>,
    /// The `max` of `<message-too-large/>`.
    pub max: Option<u64>,
    pub text: Option<String>,
}

impl MailError {
    /// XEP-MTA §12.4: `wait`, `continue` or no valid type means retry, and so do a missing
    /// protocol at the peer and the peer's own routing failures; the rest is permanent.
    pub fn is_temporary(&self) -> bool {
        !matches!(self.error_type.as_str(), "cancel" | "auth" | "modify")
            || matches!(
                self.condition.as_str(),
                "service-unavailable"
                    | "feature-not-implemented"
                    | "remote-server-not-found"
                    | "remote-server-timeout"
            )
    }

    /// From a `<message type='error'>`. The mail id comes from the echoed `<mail id=..>`
    /// when present (empty otherwise: the caller correlates by stanza id).
    pub fn parse(stanza: &Element) -> Option<MailError> {
        let mail_id = stanza
            .get_child("mail", ns::MTA)
            .and_then(|m| m.attr("id"))
            .unwrap_or_default()
            .to_string();
        let err = stanza.get_child("error", ns::SERVER)?;
        let error_type = err.attr("type").unwrap_or_default().to_string();
        let condition = err
            .children()
            .find(|c| c.ns() == ns::STANZA_ERRORS && c.name() != "text")
            .map(|c| c.name().to_string())
            .unwrap_or_else(|| "undefined-condition".into());
        let app = err.children().find(|c| c.ns() == ns::MTA);
        let app_condition = app.map(|c| c.name().to_string());
        let max = app.and_then(|c| c.attr("max")).and_then(|m| m.parse().ok());
        let text = err.get_child("text", ns::STANZA_ERRORS).map(|t| t.text());
        Some(MailError {
            mail_id,
            error_type,
            condition,
            app_condition,
            max,
            text,
        })
    }

    pub fn to_stanza(&self, from: &str, to: &str, stanza_id: Option<&str>) -> String {
        let mut s = format!(
            "<message type='error' from='{}' to='{}'",
            escape_attr(from),
            escape_attr(to)
        );
        if let Some(id) = stanza_id {
            s.push_str(&format!(" id='{}'", escape_attr(id)));
        }
        s.push_str(&format!(
            "><mail xmlns='{}' id='{}'/><error type='{}'><{} xmlns='{}'/>",
            ns::MTA,
            escape_attr(&self.mail_id),
            escape_attr(&self.error_type),
            self.condition,
            ns::STANZA_ERRORS
        ));
        if let Some(app) = &self.app_condition {
            s.push_str(&format!("<{app} xmlns='{}'/>", ns::MTA));
        }
        if let Some(t) = &self.text {
            s.push_str(&format!(
                "<text xmlns='{}' xml:lang='en'>{}</text>",
                ns::STANZA_ERRORS,
                escape_attr(t)
            ));
        }
        s.push_str("</error></message>");
        s
    }
}

/// A readable summary for clients that show only `<body/>` (XEP-MTA §7.5): "From:",
/// "Subject:", an empty line and the start of the first text part, at most 4000
/// characters, ending with "[…]" when cut.
pub fn fallback_body(message: &[u8]) -> String {
    const MAX: usize = 4000;
    let parsed = mail_parser::MessageParser::default().parse(message);
    let mut s = String::new();
    if let Some(m) = &parsed {
        let from = m
            .from()
            .and_then(|a| a.first())
            .map(|a| match (a.name(), a.address()) {
                (Some(n), Some(addr)) => format!("{n} <{addr}>"),
                (None, Some(addr)) => addr.to_string(),
                (Some(n), None) => n.to_string(),
                (None, None) => String::new(),
            })
            .unwrap_or_default();
        s.push_str(&format!(
            "From: {from}\nSubject: {}\n\n",
            m.subject().unwrap_or_default()
        ));
        if let Some(text) = m.body_text(0) {
            s.push_str(&text.replace("\r\n", "\n"));
        }
    }
    let clean: String = s
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect();
    if clean.chars().count() <= MAX {
        return clean;
    }
    let mut cut: String = clean.chars().take(MAX - 4).collect();
    cut.push_str("\n[…]");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_stanza(s: &str) -> Element {
        let wrapped = s.replacen("<message ", "<message xmlns='jabber:server' ", 1);
        wrapped.parse().expect("stanza parses")
    }

    #[test]
    fn single_stanza_roundtrip() {
        let env = Envelope {
            mail_from: "alice@a.test".into(),
            rcpt_to: vec!["bob@b.test".into()],
        };
        let msg = b"Subject: hi\r\n\r\nhello <&>\r\n";
        let m = OutgoingMail {
            stanza_from: "alice@a.test",
            stanza_to: "bob@b.test",
            mail_id: "m1",
            transmission: "t1",
            envelope: &env,
            message: msg,
            body: Some(fallback_body(msg)),
        };
        let st = mail_stanzas(&m, 524_288).unwrap();
        assert_eq!(st.len(), 1);
        let el = parse_stanza(&st[0]);
        let chunk = MailChunk::parse(el.get_child("mail", ns::MTA).unwrap()).unwrap();
        assert_eq!(chunk.data, msg);
        assert_eq!(chunk.envelope.unwrap(), env);
        assert_eq!(chunk.sha256, sha256_hex(msg));
        assert!(
            el.get_child("body", ns::SERVER)
                .unwrap()
                .text()
                .contains("Subject: hi")
        );
    }

    #[test]
    fn data_whitespace_and_split_text() {
        let head = "<mail xmlns='urn:xmpp:mta:0' id='m1' size='11' sha256='{}'><envelope><mail-from>a@a.test</mail-from><rcpt-to>b@b.test</rcpt-to></envelope>";
        let head = head.replace("{}", &sha256_hex(b"hello world"));
        let parse = |data: &str| -> Result<Vec<u8>, PayloadError> {
            let el: Element = format!("{head}<data>{data}</data></mail>").parse().unwrap();
            MailChunk::parse(&el).map(|c| c.data)
        };
        assert_eq!(parse("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(parse(" aGVs\r\nbG8g\td29y bGQ=\n").unwrap(), b"hello world");
        for bad in ["", " \r\n ", "aGVsbG8*d29ybGQ=", "aGVsbG8gd29ybGQ"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        // Text in several nodes (as around a comment-free child element) is one base64 text.
        let mut el: Element = format!("{head}<data>aGVsbG8g</data></mail>")
            .parse()
            .unwrap();
        let data = el.get_child_mut("data", ns::MTA).unwrap();
        data.append_child(Element::bare("x", ns::MTA));
        data.append_text_node("d29y bGQ=");
        assert_eq!(MailChunk::parse(&el).unwrap().data, b"hello world");
    }

    #[test]
    fn chunks_fit_and_reassemble() {
        let env = Envelope {
            mail_from: "".into(),
            rcpt_to: vec!["bob@b.test".into(), "carol@b.test".into()],
        };
        let msg: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let m = OutgoingMail {
            stanza_from: "a.test",
            stanza_to: "b.test",
            mail_id: "big",
            transmission: "t2",
            envelope: &env,
            message: &msg,
            body: None,
        };
        let max = 65_536;
        let st = mail_stanzas(&m, max).unwrap();
        assert!(st.len() > 1);
        let mut out = Vec::new();
        for (k, s) in st.iter().enumerate() {
            assert!(s.len() <= max, "stanza {k} is {} bytes", s.len());
            let c = MailChunk::parse(parse_stanza(s).get_child("mail", ns::MTA).unwrap()).unwrap();
            assert_eq!(c.chunk as usize, k);
            assert_eq!(c.chunks as usize, st.len());
            assert_eq!(c.envelope.is_some(), k == 0);
            out.extend(c.data);
        }
        assert_eq!(out, msg);
    }

    #[test]
    fn receipt_roundtrip() {
        let r = Receipt {
            id: "m1".into(),
            rcpts: vec![
                RcptReceipt {
                    to: "bob@b.test".into(),
                    status: RcptStatus::Stored { duplicate: true },
                    code: None,
                    enhanced: None,
                    text: None,
                },
                RcptReceipt {
                    to: "x@b.test".into(),
                    status: RcptStatus::Failed,
                    code: Some("550".into()),
                    enhanced: Some("5.1.1".into()),
                    text: Some("No such user".into()),
                },
            ],
        };
        let el = parse_stanza(&r.to_stanza("b.test", "a.test"));
        assert_eq!(
            Receipt::parse(el.get_child("receipt", ns::MTA).unwrap()).unwrap(),
            r
        );
    }

    #[test]
    fn bad_mail_elements() {
        for bad in [
            "<mail xmlns='urn:xmpp:mta:0' size='1' sha256='00'><data>AA==</data></mail>",
            "<mail xmlns='urn:xmpp:mta:0' id='a b' size='1' sha256='0000000000000000000000000000000000000000000000000000000000000000'><data/></mail>",
            "<mail xmlns='urn:xmpp:mta:0' id='a' size='1' sha256='0000000000000000000000000000000000000000000000000000000000000000'><data>AA==</data></mail>",
            "<mail xmlns='urn:xmpp:mta:0' id='a' size='1' sha256='0000000000000000000000000000000000000000000000000000000000000000'><envelope><mail-from/><rcpt-to>b@b</rcpt-to></envelope><data>!!</data></mail>",
            "<mail xmlns='urn:xmpp:mta:0' id='a' size='1' chunk='2' chunks='2' sha256='0000000000000000000000000000000000000000000000000000000000000000'><data>AA==</data></mail>",
        ] {
            let el: Element = bad.parse().unwrap();
            assert!(MailChunk::parse(&el).is_err(), "{bad}");
        }
    }
}
