//! Delivery status notifications: the bounce (or delay warning) xmta sends
//! to a sender when it cannot deliver their message.
//!
//! [`build_dsn`] writes an RFC 3464 report, a `multipart/report;
//! report-type=delivery-status` message (RFC 6522) of three parts: a
//! plain-language explanation for the person who sent the mail, the
//! machine-readable `message/delivery-status` (so mail clients and mailing
//! list software can tell which recipient failed and why), and the original
//! message's header block as `text/rfc822-headers`. The original body is
//! never returned: it may be large, and echoing it back would turn xmta into
//! a reflector for spam sent with a forged sender.
//!
//! The module stands alone: it takes addresses and domains as plain strings.
//! Some decisions:
//!
//! * Failures reported over XMPP have the diagnostic type `X-XMPP`
//!   ([`DIAGNOSTIC_TYPE_XMPP`]), e.g. `Diagnostic-Code: X-XMPP;
//!   item-not-found`. A [`FailedRecipient::diagnostic`] that already starts
//!   with `smtp;` or an `X-...;` type is used as it is; any other text gets
//!   the `X-XMPP; ` prefix.
//! * The delivery-status part is 7-bit ASCII, as RFC 3464 §2.1 requires. A
//!   non-ASCII recipient is written `utf-8; ...` in the `utf-8-addr-xtext`
//!   form of RFC 6533 §3 (`\x{F6}` for `ö`); non-ASCII diagnostic text is
//!   written the same way. The human-readable part is UTF-8 and shows them
//!   as they are.
//! * `original_mail_id` is reported in an extension field,
//!   `X-Xmta-Mail-ID:` (RFC 3464 §3), and as "Mail ID" in the text, so a
//!   user can quote it to their administrator.
//! * A status that is not an RFC 3463 code (`class.subject.detail`) becomes
//!   `5.0.0` in a failure report and `4.0.0` in a delay warning.
//! * The caller must not build a DSN for a message whose envelope sender is
//!   the null path `<>` (RFC 5321 §6.1, RFC 3464 §4): bounces are never
//!   bounced.

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};

/// The diagnostic type xmta uses for failures reported over XMPP.
pub const DIAGNOSTIC_TYPE_XMPP: &str = "X-XMPP";

/// The original header block is cut (at a field boundary) beyond this size.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Longest diagnostic text kept, in characters.
const MAX_DIAGNOSTIC: usize = 1000;
/// Longest address or domain kept in a report, in characters.
const MAX_NAME: usize = 300;
/// Longest original subject quoted in the explanation, in characters.
const MAX_SUBJECT: usize = 200;

/// One recipient the report is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The recipient's address, as it was given in the envelope.
    pub address: String,
    /// The RFC 3463 enhanced status code, e.g. `5.1.1`.
    pub status: String,
    /// What the failing side said, with its diagnostic type first:
    /// `smtp; 550 5.1.1 No such user` or `X-XMPP; item-not-found`. Text
    /// without a type is taken as `X-XMPP`. Empty when there is nothing to say.
    pub diagnostic: String,
    /// The receiving domain whose server reported the failure, if one did.
    pub remote_mta: Option<String>,
}

impl FailedRecipient {
    /// A recipient whose failure was reported over XMPP: the diagnostic
    /// becomes `X-XMPP; <text>`.
    pub fn xmpp(
        address: impl Into<String>,
        status: impl Into<String>,
        text: &str,
        remote_mta: Option<String>,
    ) -> FailedRecipient {
        FailedRecipient {
            address: address.into(),
            status: status.into(),
            diagnostic: format!("{DIAGNOSTIC_TYPE_XMPP}; {text}"),
            remote_mta,
        }
    }
}

/// Everything [`build_dsn`] needs.
#[derive(Clone, Copy, Debug)]
pub struct DsnRequest<'a> {
    /// The local domain generating the report (A-label form).
    pub reporting_domain: &'a str,
    /// The original envelope sender: the report's recipient.
    pub original_sender: &'a str,
    /// xmta's identifier for the original message, quoted in the report.
    pub original_mail_id: &'a str,
    /// When xmta accepted the original message, unix seconds.
    pub arrival_date: i64,
    /// The recipients the report is about.
    pub failed: &'a [FailedRecipient],
    /// `false`: a failure report (`Action: failed`); `true`: a warning that
    /// delivery is delayed and still being retried (`Action: delayed`).
    pub delayed: bool,
    /// The original message; only its header block is used.
    pub original_message: &'a [u8],
    /// The current time, unix seconds.
    pub now: i64,
}

/// Builds the complete report message, ready to queue for
/// `req.original_sender`: RFC 5322 bytes with CRLF line endings.
pub fn build_dsn(req: &DsnRequest<'_>) -> Vec<u8> {
    let reporting = dns_name(req.reporting_domain);
    let headers = header_block(req.original_message);
    let subject = original_subject(&headers);

    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new(
                "text/plain",
                human_text(req, &reporting, subject.as_deref()),
            ),
            leaf(
                "message/delivery-status",
                BodyPart::Text(delivery_status(req, &reporting).into()),
            )
            .transfer_encoding("7bit"),
            headers_part(headers),
        ],
    );

    let title = if req.delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Undelivered Mail Returned to Sender"
    };
    let message_id = format!(
        "{}.{:032x}@{reporting}",
        req.now.max(0),
        rand::random::<u128>()
    );
    let mut out = Vec::new();
    MessageBuilder::new()
        .from(Address::new_address(
            Some("Mail Delivery System"),
            format!("MAILER-DAEMON@{reporting}"),
        ))
        .to(Address::new_address(
            None::<&str>,
            clip(&strip_controls(req.original_sender), MAX_NAME),
        ))
        .subject(title)
        .date(Date::new(req.now))
        .message_id(message_id)
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(report)
        .serialize(&mut out);
    out
}

/// A leaf part with exactly one header, its Content-Type (so no charset
/// parameter is added to types that take none).
fn leaf(content_type: &'static str, contents: BodyPart<'static>) -> MimePart<'static> {
    MimePart {
        headers: vec![("Content-Type".into(), ContentType::new(content_type).into())],
        contents,
    }
}

/// The third part: the original header block, as 7-bit text when it is
/// clean ASCII, otherwise left to mail-builder to encode.
fn headers_part(block: Vec<u8>) -> MimePart<'static> {
    let clean = block.is_ascii() && block.split(|&b| b == b'\n').all(|line| line.len() <= 998);
    match String::from_utf8(block) {
        Ok(text) if clean => {
            leaf("text/rfc822-headers", BodyPart::Text(text.into())).transfer_encoding("7bit")
        }
        Ok(text) => MimePart::new(
            ContentType::new("text/rfc822-headers").attribute("charset", "utf-8"),
            text,
        ),
        Err(e) => leaf(
            "text/rfc822-headers",
            BodyPart::Binary(e.into_bytes().into()),
        ),
    }
}

/// The original message's header block with CRLF line endings: the header
/// fields up to the first empty line, or up to the first line that is not a
/// header field (a message without the empty line must not leak its body).
/// A leading mbox `From ` line is skipped, control characters other than
/// TAB become spaces, and the block is cut at a field boundary beyond
/// [`MAX_HEADER_BLOCK`].
fn header_block(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut field_start = 0;
    let mut in_field = false;
    let mut first = true;
    let mut rest = message;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let is_first = std::mem::replace(&mut first, false);
        match line.first() {
            None => break,
            Some(b' ' | b'\t') if in_field => {}
            Some(_) if is_field_line(line) => {
                in_field = true;
                field_start = out.len();
            }
            Some(_) if is_first && line.starts_with(b"From ") => continue,
            Some(_) => break,
        }
        if out.len() + line.len() + 2 > MAX_HEADER_BLOCK {
            out.truncate(field_start);
            break;
        }
        // A stray CR, NUL or other control (TAB aside) is no part of a valid
        // header and would break the part's line structure.
        out.extend(line.iter().map(|&b| match b {
            b'\t' => b'\t',
            0..=31 => b' ',
            _ => b,
        }));
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Whether `line` starts a header field: a name of printable ASCII other
/// than `:`, then `:` (RFC 5322 §3.6.8).
fn is_field_line(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(0) | None => false,
        Some(colon) => line[..colon].iter().all(|&b| (33..=126).contains(&b)),
    }
}

/// The original Subject, decoded, for the explanation.
fn original_subject(headers: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(headers)?;
    let subject = strip_controls(parsed.subject()?);
    let subject = subject.trim();
    (!subject.is_empty()).then(|| clip(subject, MAX_SUBJECT))
}

/// The `message/delivery-status` body (RFC 3464 §2.2, §2.3): ASCII, CRLF.
fn delivery_status(req: &DsnRequest<'_>, reporting: &str) -> String {
    let mut out = String::new();
    push_field(&mut out, "Reporting-MTA", &format!("dns; {reporting}"));
    let mail_id = xtext(&strip_controls(req.original_mail_id), MAX_NAME);
    if !mail_id.is_empty() {
        push_field(&mut out, "X-Xmta-Mail-ID", &mail_id);
    }
    push_field(
        &mut out,
        "Arrival-Date",
        &Date::new(req.arrival_date).to_rfc822(),
    );
    for rcpt in req.failed {
        out.push_str("\r\n");
        push_field(&mut out, "Final-Recipient", &typed_address(&rcpt.address));
        push_field(
            &mut out,
            "Action",
            if req.delayed { "delayed" } else { "failed" },
        );
        push_field(&mut out, "Status", &status_code(&rcpt.status, req.delayed));
        if let Some(remote) = rcpt.remote_mta.as_deref().filter(|r| !r.trim().is_empty()) {
            push_field(
                &mut out,
                "Remote-MTA",
                &format!("dns; {}", dns_name(remote)),
            );
        }
        if let Some((kind, text)) = diagnostic(&rcpt.diagnostic) {
            push_field(
                &mut out,
                "Diagnostic-Code",
                &format!("{kind}; {}", xtext_text(&text)),
            );
        }
        push_field(
            &mut out,
            "Last-Attempt-Date",
            &Date::new(req.now).to_rfc822(),
        );
    }
    out
}

/// Writes `Name: value` CRLF, folded at spaces so lines stay within 78
/// characters where the words allow, and never beyond 998.
fn push_field(out: &mut String, name: &str, value: &str) {
    const FOLD_AT: usize = 78;
    const HARD_LIMIT: usize = 900;
    let mut line = format!("{name}:");
    let mut has_word = false;
    let words = value.split(' ').filter(|w| !w.is_empty());
    // Words are ASCII by now; a word too long for any line is split.
    let pieces = words.flat_map(|w| {
        w.as_bytes()
            .chunks(HARD_LIMIT)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
    });
    for word in pieces {
        if has_word && line.len() + 1 + word.len() > FOLD_AT {
            out.push_str(&line);
            out.push_str("\r\n");
            line.clear();
        }
        line.push(' ');
        line.push_str(&word);
        has_word = true;
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

/// `rfc822; addr` for an ASCII address, else `utf-8; ` and the RFC 6533
/// utf-8-addr-xtext form.
fn typed_address(address: &str) -> String {
    let address = clip(strip_controls(address).trim(), MAX_NAME);
    if address.is_ascii() {
        format!("rfc822; {address}")
    } else {
        format!("utf-8; {}", xtext(&address, MAX_NAME * 10))
    }
}

/// RFC 6533 utf-8-addr-xtext: printable ASCII other than `+`, `=`, `\` and
/// space as it is; everything else as `\x{HEX}`.
fn xtext(s: &str, max: usize) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if out.len() >= max {
            break;
        }
        if ch.is_ascii_graphic() && !matches!(ch, '+' | '=' | '\\') {
            out.push(ch);
        } else {
            out.push_str(&format!("\\x{{{:02X}}}", u32::from(ch)));
        }
    }
    out
}

/// Free text made ASCII: non-ASCII characters as `\x{HEX}`, the rest as it is.
fn xtext_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(ch)));
        }
    }
    out
}

/// Splits a diagnostic into its type and text; `None` when there is no text.
fn diagnostic(raw: &str) -> Option<(String, String)> {
    let clean = clip(strip_controls(raw).trim(), MAX_DIAGNOSTIC);
    if let Some((kind, text)) = clean.split_once(';') {
        let kind = kind.trim();
        if is_diagnostic_type(kind) {
            let text = text.trim();
            return (!text.is_empty()).then(|| (kind.to_owned(), text.to_owned()));
        }
    }
    (!clean.is_empty()).then(|| (DIAGNOSTIC_TYPE_XMPP.to_owned(), clean))
}

/// Whether `kind` is a diagnostic type: `smtp` or an `X-` extension.
fn is_diagnostic_type(kind: &str) -> bool {
    if kind.eq_ignore_ascii_case("smtp") {
        return true;
    }
    let extension =
        kind.len() > 2 && kind.is_char_boundary(2) && kind[..2].eq_ignore_ascii_case("x-");
    extension && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The three numbers of an RFC 3463 code, `class.subject.detail`.
fn parse_status(status: &str) -> Option<(u16, u16, u16)> {
    let mut parts = status.trim().split('.');
    let mut number = || -> Option<u16> {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (class, subject, detail) = (number()?, number()?, number()?);
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some((class, subject, detail))
}

/// The status to report: the given code when it is one, else a generic one.
fn status_code(status: &str, delayed: bool) -> String {
    match parse_status(status) {
        Some((class, subject, detail)) => format!("{class}.{subject}.{detail}"),
        None if delayed => "4.0.0".into(),
        None => "5.0.0".into(),
    }
}

/// Why delivery to `rcpt` failed, as a clause a user understands.
fn reason(rcpt: &FailedRecipient, delayed: bool) -> String {
    let server = rcpt
        .remote_mta
        .as_deref()
        .map(|r| clip(strip_controls(r).trim(), MAX_NAME))
        .filter(|r| !r.is_empty())
        .map(|r| format!("the receiving server {r}"));
    let says = |what: &str| match &server {
        Some(server) => format!("{server} says {what}"),
        None => what.to_owned(),
    };
    let domain = rcpt
        .address
        .rsplit_once('@')
        .map(|(_, d)| clip(strip_controls(d).trim(), MAX_NAME))
        .unwrap_or_default();
    let (_, subject, detail) =
        parse_status(&status_code(&rcpt.status, delayed)).unwrap_or((5, 0, 0));
    match (subject, detail) {
        (1, 1) => says("there is no such user"),
        (1, 2) => format!("the domain {domain} does not exist or does not receive mail"),
        (1, 10) => format!("the domain {domain} does not accept mail"),
        (1, 6) => says("the mailbox has moved"),
        (1, _) => says("the address is not valid"),
        (2, 1) => says("the mailbox is disabled and does not accept messages"),
        (2, 2) => says("the mailbox is full"),
        (2, 3) | (3, 4) => says("the message is too large"),
        (2, _) => says("there is a problem with the mailbox"),
        (3, _) => match &server {
            Some(server) => format!("{server} reports a problem with its mail system"),
            None => "the mail system has a problem".into(),
        },
        (4, 7) => "it could not be delivered in time, so the mail system gave up".into(),
        (4, 1 | 2) => match &server {
            Some(server) => format!("{server} could not be reached"),
            None => format!("the mail server for {domain} could not be reached"),
        },
        (4, 4) => format!("no way to reach the mail server for {domain} was found"),
        (4, _) => "there was a network or routing problem".into(),
        (5, _) => "the sending and receiving servers could not agree on how to transfer it".into(),
        (6, _) => says("it cannot accept the message's content or format"),
        (7, 1) => says("it refuses to accept this message"),
        (7, _) => says("the message was refused for security or policy reasons"),
        _ => match &server {
            Some(server) => format!("{server} reported an error"),
            None => "an error occurred".into(),
        },
    }
}

/// The first part: what happened, in plain words, CRLF line endings.
fn human_text(req: &DsnRequest<'_>, reporting: &str, subject: Option<&str>) -> String {
    let mut paragraphs = vec![format!("This is the mail delivery system at {reporting}.")];
    if req.delayed {
        paragraphs
            .push("This is only a warning: you do not need to send your message again.".into());
    } else {
        paragraphs.push(
            "I'm sorry to tell you that your message could not be delivered to the \
             recipients below. The mail system has given up trying."
                .into(),
        );
    }
    let mut out = String::new();
    for p in &paragraphs {
        push_wrapped(&mut out, p, "");
        out.push_str("\r\n");
    }
    for rcpt in req.failed {
        let address = clip(strip_controls(&rcpt.address).trim(), MAX_NAME);
        let what = if req.delayed {
            format!("Your message to {address} has not been delivered yet")
        } else {
            format!("Your message to {address} could not be delivered")
        };
        push_wrapped(
            &mut out,
            &format!("{what}: {}.", reason(rcpt, req.delayed)),
            "",
        );
        match diagnostic(&rcpt.diagnostic) {
            Some((_, text)) => push_wrapped(&mut out, &format!("Details: {text}"), "    "),
            None => push_wrapped(
                &mut out,
                &format!("Status: {}", status_code(&rcpt.status, req.delayed)),
                "    ",
            ),
        }
        out.push_str("\r\n");
    }
    if req.delayed {
        push_wrapped(
            &mut out,
            "The mail system will keep trying to deliver it, and will tell you if it \
             has to give up.",
            "",
        );
        out.push_str("\r\n");
    }
    out.push_str("Your message:\r\n");
    if let Some(subject) = subject {
        push_wrapped(&mut out, &format!("Subject: {subject}"), "    ");
    }
    push_wrapped(
        &mut out,
        &format!("Received: {}", Date::new(req.arrival_date).to_rfc822()),
        "    ",
    );
    let mail_id = clip(strip_controls(req.original_mail_id).trim(), MAX_NAME);
    if !mail_id.is_empty() {
        push_wrapped(&mut out, &format!("Mail ID: {mail_id}"), "    ");
    }
    out.push_str("\r\n");
    push_wrapped(
        &mut out,
        "The headers of your message are attached; its text is not included.",
        "",
    );
    out
}

/// Appends `text` word-wrapped at 72 columns, each line starting with
/// `indent`, CRLF line endings.
fn push_wrapped(out: &mut String, text: &str, indent: &str) {
    const WIDTH: usize = 72;
    let mut line = String::from(indent);
    let mut has_word = false;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if has_word && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(&line);
            out.push_str("\r\n");
            line = String::from(indent);
            has_word = false;
        }
        if has_word {
            line.push(' ');
        }
        line.push_str(word);
        has_word = true;
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

/// A domain for a `dns;` field: the A-label form when IDNA can give one,
/// else the xtext form, so the field stays ASCII.
fn dns_name(domain: &str) -> String {
    let domain = strip_controls(domain);
    let domain = domain.trim();
    if domain.is_ascii() {
        return clip(&domain.replace(' ', ""), MAX_NAME);
    }
    match idna::domain_to_ascii(domain) {
        Ok(ascii) => clip(&ascii, MAX_NAME),
        Err(_) => xtext(domain, MAX_NAME),
    }
}

/// `s` with every control character (CR and LF included) made a space.
fn strip_controls(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `s` cut to at most `max` characters.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => s[..at].to_owned(),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders, PartType};

    const ORIGINAL: &[u8] = b"From: Alice <alice@a.example>\r\n\
        To: nobody@b.example\r\n\
        Subject: Lunch on Friday?\r\n\
        Message-ID: <orig-1@a.example>\r\n\
        Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\
        \r\n\
        SECRET BODY TEXT that must not come back.\r\n";

    fn request<'a>(
        failed: &'a [FailedRecipient],
        original: &'a [u8],
        delayed: bool,
    ) -> DsnRequest<'a> {
        DsnRequest {
            reporting_domain: "a.example",
            original_sender: "alice@a.example",
            original_mail_id: "m-42",
            arrival_date: 1_704_103_200,
            failed,
            delayed,
            original_message: original,
            now: 1_704_106_800,
        }
    }

    fn nobody() -> FailedRecipient {
        FailedRecipient {
            address: "nobody@b.example".into(),
            status: "5.1.1".into(),
            diagnostic: "smtp; 550 5.1.1 No such user".into(),
            remote_mta: Some("b.example".into()),
        }
    }

    /// The three parts of a DSN: (text, delivery-status, headers), decoded.
    fn parts(dsn: &[u8]) -> (String, String, String) {
        let msg = MessageParser::new().parse(dsn).expect("DSN parses");
        let root = msg.root_part();
        let ct = root.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let PartType::Multipart(children) = &root.body else {
            panic!("not multipart: {:?}", root.body);
        };
        assert_eq!(children.len(), 3);
        let mut bodies = Vec::new();
        for (id, expected) in children.iter().zip([
            ("text", "plain"),
            ("message", "delivery-status"),
            ("text", "rfc822-headers"),
        ]) {
            let part = &msg.parts[*id as usize];
            let ct = part.content_type().expect("part content type");
            assert_eq!((ct.ctype(), ct.subtype()), (expected.0, Some(expected.1)));
            let body = match &part.body {
                PartType::Text(t) => t.to_string(),
                PartType::Binary(b) | PartType::InlineBinary(b) => {
                    String::from_utf8(b.to_vec()).expect("UTF-8 part")
                }
                other => panic!("unexpected part body {other:?}"),
            };
            bodies.push(body);
        }
        let headers = bodies.pop().unwrap_or_default();
        let status = bodies.pop().unwrap_or_default();
        let text = bodies.pop().unwrap_or_default();
        (text, status, headers)
    }

    /// The delivery-status groups, unfolded: per-message fields first.
    fn groups(status: &str) -> Vec<Vec<(String, String)>> {
        let unfolded = status.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded
            .split("\r\n\r\n")
            .map(|group| {
                group
                    .split("\r\n")
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once(':').expect("field line");
                        (k.to_owned(), v.trim().to_owned())
                    })
                    .collect()
            })
            .collect()
    }

    fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
        group
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn assert_crlf(dsn: &[u8]) {
        for (i, &b) in dsn.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && dsn[i - 1] == b'\r', "bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(dsn.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
        }
        for line in dsn.split(|&b| b == b'\n') {
            assert!(line.len() <= 1000, "line of {} octets", line.len());
        }
    }

    #[test]
    fn failure_report_has_the_rfc3464_shape() {
        let failed = [nobody()];
        let dsn = build_dsn(&request(&failed, ORIGINAL, false));
        assert_crlf(&dsn);
        let msg = MessageParser::new().parse(&dsn[..]).expect("parses");
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        let from = msg.from().and_then(|a| a.first()).expect("From");
        assert_eq!(from.address(), Some("MAILER-DAEMON@a.example"));
        assert_eq!(from.name(), Some("Mail Delivery System"));
        let to = msg.to().and_then(|a| a.first()).expect("To");
        assert_eq!(to.address(), Some("alice@a.example"));
        assert_eq!(
            msg.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert_eq!(msg.header_raw("MIME-Version").map(str::trim), Some("1.0"));
        let id = msg.message_id().expect("Message-ID");
        assert!(id.ends_with("@a.example"), "{id}");
        assert_eq!(msg.date().map(|d| d.to_timestamp()), Some(1_704_106_800));

        let (text, status, headers) = parts(&dsn);
        assert!(
            text.replace("\r\n", " ").contains(
                "Your message to nobody@b.example could not be delivered: the receiving \
                 server b.example says there is no such user."
            ),
            "{text}"
        );
        assert!(text.contains("Details: 550 5.1.1 No such user"), "{text}");
        assert!(text.contains("Subject: Lunch on Friday?"), "{text}");

        let groups = groups(&status);
        assert_eq!(groups.len(), 2, "{status}");
        assert_eq!(field(&groups[0], "Reporting-MTA"), Some("dns; a.example"));
        assert_eq!(
            field(&groups[0], "Arrival-Date"),
            Some("Mon, 1 Jan 2024 10:00:00 +0000")
        );
        let rcpt = &groups[1];
        assert_eq!(
            field(rcpt, "Final-Recipient"),
            Some("rfc822; nobody@b.example")
        );
        assert_eq!(field(rcpt, "Action"), Some("failed"));
        assert_eq!(field(rcpt, "Status"), Some("5.1.1"));
        assert_eq!(field(rcpt, "Remote-MTA"), Some("dns; b.example"));
        assert_eq!(
            field(rcpt, "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 No such user")
        );
        assert!(status.is_ascii());

        assert!(
            headers.contains("Subject: Lunch on Friday?\r\n"),
            "{headers}"
        );
        assert!(
            headers.contains("Message-ID: <orig-1@a.example>\r\n"),
            "{headers}"
        );
        let haystack = String::from_utf8_lossy(&dsn);
        assert!(!haystack.contains("SECRET BODY"), "{haystack}");
        assert!(!text.contains("SECRET") && !headers.contains("SECRET"));
    }

    #[test]
    fn delay_warning_and_several_recipients() {
        let failed = [
            FailedRecipient::xmpp(
                "bob@c.example",
                "4.4.1",
                "remote-server-timeout",
                Some("c.example".into()),
            ),
            FailedRecipient {
                address: "carol@d.example".into(),
                status: "4.2.2".into(),
                diagnostic: String::new(),
                remote_mta: None,
            },
        ];
        let dsn = build_dsn(&request(&failed, ORIGINAL, true));
        assert_crlf(&dsn);
        let msg = MessageParser::new().parse(&dsn[..]).expect("parses");
        assert_eq!(msg.subject(), Some("Delayed Mail (still being retried)"));
        let (text, status, _) = parts(&dsn);
        let flat = text.replace("\r\n", " ");
        assert!(flat.contains("only a warning"), "{text}");
        assert!(
            flat.contains("Your message to bob@c.example has not been delivered yet: the receiving server c.example could not be reached."),
            "{text}"
        );
        assert!(
            flat.contains(
                "Your message to carol@d.example has not been delivered yet: the mailbox is full."
            ),
            "{text}"
        );
        let groups = groups(&status);
        assert_eq!(groups.len(), 3, "{status}");
        assert_eq!(
            field(&groups[1], "Final-Recipient"),
            Some("rfc822; bob@c.example")
        );
        assert_eq!(field(&groups[1], "Action"), Some("delayed"));
        assert_eq!(field(&groups[1], "Status"), Some("4.4.1"));
        assert_eq!(
            field(&groups[1], "Diagnostic-Code"),
            Some("X-XMPP; remote-server-timeout")
        );
        assert_eq!(
            field(&groups[2], "Final-Recipient"),
            Some("rfc822; carol@d.example")
        );
        assert_eq!(field(&groups[2], "Action"), Some("delayed"));
        assert_eq!(field(&groups[2], "Status"), Some("4.2.2"));
        assert_eq!(field(&groups[2], "Remote-MTA"), None);
        assert_eq!(field(&groups[2], "Diagnostic-Code"), None);
    }

    #[test]
    fn non_ascii_recipients_and_subjects() {
        let original = "From: Jörg <jörg@bücher.example>\r\n\
            To: björn@xn--bcher-kva.example\r\n\
            Subject: Grüße aus Köln — 你好\r\n\
            \r\n\
            Geheimer Körper.\r\n"
            .as_bytes();
        let failed = [FailedRecipient::xmpp(
            "björn@xn--bcher-kva.example",
            "5.1.1",
            "Benutzer unbekannt: björn",
            Some("bücher.example".into()),
        )];
        let mut req = request(&failed, original, false);
        req.original_sender = "jörg@xn--bcher-kva.example";
        req.reporting_domain = "xn--bcher-kva.example";
        let dsn = build_dsn(&req);
        assert_crlf(&dsn);
        let msg = MessageParser::new().parse(&dsn[..]).expect("parses");
        let to = msg.to().and_then(|a| a.first()).expect("To");
        assert_eq!(to.address(), Some("jörg@xn--bcher-kva.example"));
        let (text, status, headers) = parts(&dsn);
        assert!(text.contains("björn@xn--bcher-kva.example"), "{text}");
        assert!(text.contains("Grüße aus Köln — 你好"), "{text}");
        assert!(text.contains("Benutzer unbekannt: björn"), "{text}");
        assert!(status.is_ascii(), "{status}");
        let groups = groups(&status);
        assert_eq!(
            field(&groups[1], "Final-Recipient"),
            Some("utf-8; bj\\x{F6}rn@xn--bcher-kva.example")
        );
        assert_eq!(
            field(&groups[1], "Remote-MTA"),
            Some("dns; xn--bcher-kva.example")
        );
        assert_eq!(
            field(&groups[1], "Diagnostic-Code"),
            Some("X-XMPP; Benutzer unbekannt: bj\\x{F6}rn")
        );
        assert!(
            headers.contains("Subject: Grüße aus Köln — 你好\r\n"),
            "{headers}"
        );
        assert!(!headers.contains("Geheimer") && !text.contains("Geheimer"));
        assert!(!String::from_utf8_lossy(&dsn).contains("Geheimer"));
    }

    #[test]
    fn header_block_extraction() {
        // LF line endings, a folded field, an mbox line.
        let lf = b"From alice@a.example Mon Jan  1 10:00:00 2024\nSubject: a\n  folded\nX-A: b\n\nbody\n";
        assert_eq!(header_block(lf), b"Subject: a\r\n  folded\r\nX-A: b\r\n");
        // No empty line: stops at the first line that is no header field.
        let bare = b"Subject: x\r\nthis is body text\r\nX-Not: header\r\n";
        assert_eq!(header_block(bare), b"Subject: x\r\n");
        // Headers only, no final newline.
        assert_eq!(header_block(b"Subject: x"), b"Subject: x\r\n");
        // No headers at all.
        assert_eq!(header_block(b"just a body\r\n"), b"");
        assert_eq!(header_block(b""), b"");
        assert_eq!(header_block(b" continuation first\r\n"), b"");
        // Too big: cut at a field boundary.
        let mut big = b"Subject: s\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_HEADER_BLOCK));
        big.extend_from_slice(b"\r\n\r\nbody");
        assert_eq!(header_block(&big), b"Subject: s\r\n");
    }

    #[test]
    fn odd_originals_still_make_a_valid_dsn() {
        let failed = [nobody()];
        for original in [
            &b""[..],
            b"no headers at all, only text\r\n",
            b"Subject: \xff\xfe invalid UTF-8\r\n\r\nbody\r\n",
            b"Subject: bare\rcr\r\n\r\nSECRET\r\n",
            b"Subject: long\r\nX-Long: ".as_slice(),
        ] {
            let dsn = build_dsn(&request(&failed, original, false));
            assert_crlf(&dsn);
            let (_, status, headers) = parts(&dsn);
            assert_eq!(groups(&status).len(), 2);
            assert!(!headers.contains("SECRET"));
        }
        let mut long = b"Subject: long line\r\nX-Long: ".to_vec();
        long.extend(std::iter::repeat_n(b'y', 3000));
        long.extend_from_slice(b"\r\n\r\nSECRET\r\n");
        let dsn = build_dsn(&request(&failed, &long, false));
        assert_crlf(&dsn);
        let (_, _, headers) = parts(&dsn);
        assert!(headers.contains(&"y".repeat(3000)));
        assert!(!headers.contains("SECRET"));
    }

    #[test]
    fn hostile_fields_cannot_inject_lines() {
        let failed = [FailedRecipient {
            address: "evil@b.example\r\nAction: delivered".into(),
            status: "not a status".into(),
            diagnostic: format!("smtp; 550 {}\r\nStatus: 2.0.0", "word ".repeat(300)),
            remote_mta: Some("b.example\r\nX-Injected: 1".into()),
        }];
        let mut req = request(&failed, ORIGINAL, false);
        req.original_sender = "alice@a.example\r\nBcc: victim@c.example";
        req.original_mail_id = "id\r\nX-Injected: 2";
        let dsn = build_dsn(&req);
        assert_crlf(&dsn);
        let msg = MessageParser::new().parse(&dsn[..]).expect("parses");
        assert!(msg.bcc().is_none());
        let (_, status, _) = parts(&dsn);
        let groups = groups(&status);
        assert_eq!(groups.len(), 2, "{status}");
        let rcpt = &groups[1];
        assert_eq!(field(rcpt, "Action"), Some("failed"));
        assert_eq!(field(rcpt, "Status"), Some("5.0.0"));
        assert!(!status.contains("\r\nX-Injected") && !status.contains("\r\nStatus: 2.0.0"));
        assert_eq!(rcpt.iter().filter(|(k, _)| k == "Status").count(), 1);
        for line in status.split("\r\n") {
            assert!(line.len() <= 78 || !line.contains(' '), "{line:?}");
        }
    }

    #[test]
    fn status_codes_and_diagnostic_types() {
        assert_eq!(parse_status("5.1.1"), Some((5, 1, 1)));
        assert_eq!(parse_status("4.4.7"), Some((4, 4, 7)));
        assert_eq!(parse_status("5.1.10"), Some((5, 1, 10)));
        assert_eq!(parse_status("2.0.0"), Some((2, 0, 0)));
        for bad in [
            "", "5", "5.1", "5.1.1.1", "3.1.1", "5.1000.1", "5.a.1", "5..1", " 5.1.x",
        ] {
            assert_eq!(parse_status(bad), None, "{bad:?}");
        }
        assert_eq!(status_code("junk", false), "5.0.0");
        assert_eq!(status_code("junk", true), "4.0.0");
        assert_eq!(
            diagnostic("smtp; 550 no"),
            Some(("smtp".into(), "550 no".into()))
        );
        assert_eq!(
            diagnostic("X-XMPP; item-not-found"),
            Some(("X-XMPP".into(), "item-not-found".into()))
        );
        assert_eq!(
            diagnostic("Recipient refused; sorry"),
            Some(("X-XMPP".into(), "Recipient refused; sorry".into()))
        );
        assert_eq!(diagnostic("  "), None);
        assert_eq!(diagnostic("smtp;"), None);
    }
}
