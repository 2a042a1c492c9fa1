//! FETCH data items: ENVELOPE, BODY/BODYSTRUCTURE, BODY[section]<partial> and the rest,
//! rendered from the stored bytes. mail-parser gives the MIME tree (part offsets, content
//! headers, addresses); section bytes are cut from the stored message itself, so that
//! `BODY[]` is exactly what the store holds.

use std::borrow::Cow;

use imap_codec::imap_types::fetch::{MessageDataItemName, Part, Section};
use mail_parser::{Address, Message, MessageParser, MessagePart, MimeHeaders, PartType};

use crate::store::MessageMeta;

/// Appends an IMAP string: quoted when it is short printable ASCII (with `"` and `\`
/// escaped), a literal otherwise (CR, LF, 8-bit). NUL can be in neither (RFC 3501 CHAR8 is
/// %x01-ff), so it is dropped: these strings are header-derived values, not message bytes.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let owned: Vec<u8>;
    let s = if s.contains(&0) {
        owned = s.iter().copied().filter(|&b| b != 0).collect();
        &owned[..]
    } else {
        s
    };
    let quotable = s.len() < 1024 && s.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\t');
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// Appends an IMAP4rev1 literal. Its octets are CHAR8 (%x01-ff, RFC 3501 §4.3), so a NUL in
/// the stored message is sent as 0x80, as Dovecot does: the length (RFC822.SIZE, partial
/// ranges) stays the same and the client still gets valid IMAP. The stored bytes are not
/// changed.
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    let start = out.len();
    out.extend_from_slice(s);
    for b in &mut out[start..] {
        if *b == 0 {
            *b = 0x80;
        }
    }
}

fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// The flags as an IMAP list.
pub fn flag_list(flags: &[String]) -> String {
    format!("({})", flags.join(" "))
}

/// INTERNALDATE: `"01-Dec-2026 10:00:00 +0000"`.
pub fn internal_date(secs: i64) -> String {
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(d) => d.format("\"%d-%b-%Y %H:%M:%S +0000\"").to_string(),
        None => "\"01-Jan-1970 00:00:00 +0000\"".into(),
    }
}

/// Whether fetching `item` needs the message bytes.
pub fn needs_body(item: &MessageDataItemName<'_>) -> bool {
    !matches!(
        item,
        MessageDataItemName::Flags
            | MessageDataItemName::InternalDate
            | MessageDataItemName::Rfc822Size
            | MessageDataItemName::Uid
            | MessageDataItemName::ModSeq
    )
}

/// Whether fetching `item` sets \Seen (RFC 3501 §6.4.5).
pub fn sets_seen(item: &MessageDataItemName<'_>) -> bool {
    matches!(
        item,
        MessageDataItemName::BodyExt { peek: false, .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Text
    )
}

/// A stored message and, parsed on first need, its MIME structure.
pub struct Fetched<'a> {
    pub raw: &'a [u8],
    parsed: Option<Option<Message<'a>>>,
}

impl<'a> Fetched<'a> {
    pub fn new(raw: &'a [u8]) -> Fetched<'a> {
        Fetched { raw, parsed: None }
    }

    fn message(&mut self) -> Option<&Message<'a>> {
        let raw = self.raw;
        self.parsed
            .get_or_insert_with(|| MessageParser::default().parse(raw))
            .as_ref()
    }
}

/// Appends one data item (name and value) to `out`. `Err` for items xmta does not support.
pub fn item(
    out: &mut Vec<u8>,
    name: &MessageDataItemName<'_>,
    meta: &MessageMeta,
    flags: &[String],
    body: &mut Option<Fetched<'_>>,
) -> Result<(), String> {
    match name {
        MessageDataItemName::Flags => {
            out.extend_from_slice(format!("FLAGS {}", flag_list(flags)).as_bytes());
        }
        MessageDataItemName::Uid => out.extend_from_slice(format!("UID {}", meta.uid).as_bytes()),
        MessageDataItemName::Rfc822Size => {
            out.extend_from_slice(format!("RFC822.SIZE {}", meta.size).as_bytes());
        }
        MessageDataItemName::InternalDate => out.extend_from_slice(
            format!("INTERNALDATE {}", internal_date(meta.internal_date)).as_bytes(),
        ),
        MessageDataItemName::ModSeq => {
            out.extend_from_slice(format!("MODSEQ ({})", meta.modseq.max(1)).as_bytes());
        }
        MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. } => {
            return Err("BINARY is not supported".into());
        }
        other => {
            let Some(f) = body.as_mut() else {
                return Err("message body unavailable".into());
            };
            body_item(out, other, f);
        }
    }
    Ok(())
}

fn body_item(out: &mut Vec<u8>, name: &MessageDataItemName<'_>, f: &mut Fetched<'_>) {
    let raw = f.raw;
    match name {
        MessageDataItemName::Rfc822 => {
            out.extend_from_slice(b"RFC822 ");
            literal(out, raw);
        }
        MessageDataItemName::Rfc822Header => {
            out.extend_from_slice(b"RFC822.HEADER ");
            let (h, _) = split_header(raw);
            literal(out, h);
        }
        MessageDataItemName::Rfc822Text => {
            out.extend_from_slice(b"RFC822.TEXT ");
            let (_, t) = split_header(raw);
            literal(out, t);
        }
        MessageDataItemName::Envelope => {
            out.extend_from_slice(b"ENVELOPE ");
            match f.message() {
                Some(m) => envelope(out, m, raw),
                None => empty_envelope(out),
            }
        }
        MessageDataItemName::Body | MessageDataItemName::BodyStructure => {
            let ext = matches!(name, MessageDataItemName::BodyStructure);
            out.extend_from_slice(if ext { b"BODYSTRUCTURE " } else { b"BODY " });
            match f.message() {
                Some(m) => structure(out, m, 0, ext, 0),
                None => out.extend_from_slice(
                    format!(
                        "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" {} {})",
                        raw.len(),
                        count_lines(raw)
                    )
                    .as_bytes(),
                ),
            }
        }
        MessageDataItemName::BodyExt {
            section, partial, ..
        } => {
            out.extend_from_slice(b"BODY[");
            section_name(out, section.as_ref());
            out.push(b']');
            let bytes = section_bytes(f, section.as_ref());
            let bytes: &[u8] = bytes.as_deref().unwrap_or(b"");
            match partial {
                Some((start, len)) => {
                    out.extend_from_slice(format!("<{start}> ").as_bytes());
                    let s = (*start as usize).min(bytes.len());
                    let e = s.saturating_add(len.get() as usize).min(bytes.len());
                    literal(out, &bytes[s..e]);
                }
                None => {
                    out.push(b' ');
                    literal(out, bytes);
                }
            }
        }
        _ => out.extend_from_slice(b"NIL"),
    }
}

fn part_path(out: &mut Vec<u8>, part: &Part) {
    let nums: Vec<String> = part.0.as_ref().iter().map(|n| n.to_string()).collect();
    out.extend_from_slice(nums.join(".").as_bytes());
}

fn section_name(out: &mut Vec<u8>, section: Option<&Section<'_>>) {
    let Some(section) = section else { return };
    let with_part = |out: &mut Vec<u8>, part: &Option<Part>, what: &str| {
        if let Some(p) = part {
            part_path(out, p);
            out.push(b'.');
        }
        out.extend_from_slice(what.as_bytes());
    };
    match section {
        Section::Part(p) => part_path(out, p),
        Section::Header(p) => with_part(out, p, "HEADER"),
        Section::Text(p) => with_part(out, p, "TEXT"),
        Section::Mime(p) => {
            part_path(out, p);
            out.extend_from_slice(b".MIME");
        }
        Section::HeaderFields(p, fields) | Section::HeaderFieldsNot(p, fields) => {
            let not = matches!(section, Section::HeaderFieldsNot(..));
            with_part(
                out,
                p,
                if not {
                    "HEADER.FIELDS.NOT"
                } else {
                    "HEADER.FIELDS"
                },
            );
            out.extend_from_slice(b" (");
            for (i, f) in fields.as_ref().iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                let name = f.as_ref().to_ascii_uppercase();
                // As atoms when they can be (clients compare the echo with what they sent).
                if !name.is_empty()
                    && name
                        .iter()
                        .all(|&b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b))
                {
                    out.extend_from_slice(&name);
                } else {
                    string(out, &name);
                }
            }
            out.push(b')');
        }
    }
}

/// Splits a message (or a part) into its header block, blank line included, and the rest.
pub fn split_header(raw: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    while i < raw.len() {
        let line_end = raw[i..].iter().position(|&b| b == b'\n').map(|p| i + p + 1);
        let Some(end) = line_end else {
            return (raw, &[]);
        };
        let line = &raw[i..end];
        if line == b"\r\n" || line == b"\n" {
            return raw.split_at(end);
        }
        i = end;
    }
    (raw, &[])
}

/// The header fields of a header block: (name, whole field with its line ends).
pub fn header_fields(header: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out: Vec<(&[u8], &[u8])> = Vec::new();
    let mut start = None;
    let mut i = 0;
    while i < header.len() {
        let end = header[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |p| i + p + 1);
        let line = &header[i..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            if let Some(s) = start.take() {
                push_field(&mut out, &header[s..i]);
            }
            if line != b"\r\n" && line != b"\n" {
                start = Some(i);
            }
        }
        i = end;
    }
    if let Some(s) = start {
        push_field(&mut out, &header[s..]);
    }
    out
}

fn push_field<'a>(out: &mut Vec<(&'a [u8], &'a [u8])>, field: &'a [u8]) {
    if let Some(colon) = field.iter().position(|&b| b == b':') {
        let name = trim(&field[..colon]);
        out.push((name, field));
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &s[start..end.max(start)]
}

/// The unfolded value of the first field `name` of a header block.
pub fn header_value(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let (_, field) = header_fields(header)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))?;
    let colon = field.iter().position(|&b| b == b':')?;
    let value: Vec<u8> = field[colon + 1..]
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    Some(trim(&value).to_vec())
}

fn count_lines(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

/// A place in the MIME tree: a message and one of its parts.
#[derive(Clone, Copy)]
struct Node<'m, 'x> {
    msg: &'m Message<'x>,
    part: usize,
}

impl<'m, 'x> Node<'m, 'x> {
    fn get(&self) -> Option<&'m MessagePart<'x>> {
        self.msg.parts.get(self.part)
    }

    /// The part's bytes: from its header to its end, in the raw bytes of its message.
    fn bytes(&self, from: usize, to: usize) -> &'m [u8] {
        let raw: &'m [u8] = self.msg.raw_message.as_ref();
        let to = to.min(raw.len());
        raw.get(from.min(to)..to).unwrap_or(&[])
    }

    fn body(&self) -> &'m [u8] {
        self.get().map_or(&[], |p| {
            self.bytes(p.offset_body as usize, p.offset_end as usize)
        })
    }

    fn mime_header(&self) -> &'m [u8] {
        self.get().map_or(&[], |p| {
            self.bytes(p.offset_header as usize, p.offset_body as usize)
        })
    }
}

/// The children a part number selects from: the parts of a multipart, the parts of an
/// encapsulated message (or its single body), or a single part itself (number 1).
fn children<'m, 'x>(node: Node<'m, 'x>) -> Vec<Node<'m, 'x>> {
    let Some(part) = node.get() else {
        return Vec::new();
    };
    match &part.body {
        PartType::Multipart(ids) => ids
            .iter()
            .map(|&id| Node {
                msg: node.msg,
                part: id as usize,
            })
            .collect(),
        PartType::Message(sub) => {
            let root = Node { msg: sub, part: 0 };
            match sub.parts.first().map(|p| &p.body) {
                Some(PartType::Multipart(_)) => children(root),
                _ => vec![root],
            }
        }
        _ => vec![node],
    }
}

fn find_part<'m, 'x>(msg: &'m Message<'x>, path: &Part) -> Option<Node<'m, 'x>> {
    let mut node = Node { msg, part: 0 };
    let mut top = true;
    for n in path.0.as_ref() {
        let kids = if top {
            match msg.parts.first().map(|p| &p.body) {
                Some(PartType::Multipart(_)) => children(node),
                _ => vec![node],
            }
        } else {
            children(node)
        };
        top = false;
        node = *kids.get(n.get() as usize - 1)?;
    }
    Some(node)
}

/// For HEADER/TEXT of a part: the encapsulated message's bytes.
fn inner_message<'m>(node: Node<'m, '_>) -> Option<&'m [u8]> {
    match &node.get()?.body {
        PartType::Message(_) => Some(node.body()),
        _ => None,
    }
}

fn section_bytes<'r>(
    f: &'r mut Fetched<'_>,
    section: Option<&Section<'_>>,
) -> Option<Cow<'r, [u8]>> {
    let raw = f.raw;
    let Some(section) = section else {
        return Some(Cow::Borrowed(raw));
    };
    // The message whose header or text is asked for.
    let target = |f: &'r mut Fetched<'_>, part: &Option<Part>| -> Option<Cow<'r, [u8]>> {
        match part {
            None => Some(Cow::Borrowed(raw)),
            Some(p) => {
                let msg = f.message()?;
                let node = find_part(msg, p)?;
                inner_message(node).map(|b| Cow::Owned(b.to_vec()))
            }
        }
    };
    match section {
        Section::Part(p) => {
            let msg = f.message()?;
            let node = find_part(msg, p)?;
            Some(Cow::Owned(node.body().to_vec()))
        }
        Section::Mime(p) => {
            let msg = f.message()?;
            let node = find_part(msg, p)?;
            Some(Cow::Owned(node.mime_header().to_vec()))
        }
        Section::Header(p) => {
            let m = target(f, p)?;
            Some(Cow::Owned(split_header(&m).0.to_vec()))
        }
        Section::Text(p) => {
            let m = target(f, p)?;
            Some(Cow::Owned(split_header(&m).1.to_vec()))
        }
        Section::HeaderFields(p, names) | Section::HeaderFieldsNot(p, names) => {
            let not = matches!(section, Section::HeaderFieldsNot(..));
            let m = target(f, p)?;
            let (header, _) = split_header(&m);
            let mut out = Vec::new();
            for (name, field) in header_fields(header) {
                let listed = names
                    .as_ref()
                    .iter()
                    .any(|n| n.as_ref().eq_ignore_ascii_case(name));
                if listed != not {
                    out.extend_from_slice(field);
                }
            }
            out.extend_from_slice(b"\r\n");
            Some(Cow::Owned(out))
        }
    }
}

fn empty_envelope(out: &mut Vec<u8>) {
    out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
}

/// ENVELOPE (RFC 3501 §7.4.2): date, subject, from, sender, reply-to, to, cc, bcc,
/// in-reply-to, message-id. Strings are the raw header values (encoded words stay encoded).
fn envelope(out: &mut Vec<u8>, msg: &Message<'_>, raw: &[u8]) {
    let header = match msg.parts.first() {
        Some(p) => {
            let raw_msg: &[u8] = msg.raw_message.as_ref();
            let from = (p.offset_header as usize).min(raw_msg.len());
            split_header(&raw_msg[from..]).0
        }
        None => split_header(raw).0,
    };
    let raw_value = |name: &str| header_value(header, name);
    out.push(b'(');
    nstring(out, raw_value("Date").as_deref());
    out.push(b' ');
    nstring(out, raw_value("Subject").as_deref());
    let from = msg.from();
    for list in [
        from,
        msg.sender().or(from),
        msg.reply_to().or(from),
        msg.to(),
        msg.cc(),
        msg.bcc(),
    ] {
        out.push(b' ');
        addresses(out, list);
    }
    out.push(b' ');
    nstring(out, raw_value("In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, raw_value("Message-ID").as_deref());
    out.push(b')');
}

fn address(out: &mut Vec<u8>, name: Option<&str>, email: Option<&str>) {
    out.push(b'(');
    nstring(out, name.map(str::as_bytes));
    out.extend_from_slice(b" NIL ");
    let (local, host) = match email {
        Some(e) => match e.rsplit_once('@') {
            Some((l, h)) => (Some(l), Some(h)),
            None => (Some(e), None),
        },
        None => (None, None),
    };
    nstring(out, local.map(str::as_bytes));
    out.push(b' ');
    nstring(out, host.map(str::as_bytes));
    out.push(b')');
}

fn addresses(out: &mut Vec<u8>, list: Option<&Address<'_>>) {
    let mut items = Vec::new();
    match list {
        Some(Address::List(addrs)) => {
            for a in addrs {
                if a.address.is_some() {
                    address(&mut items, a.name.as_deref(), a.address.as_deref());
                }
            }
        }
        Some(Address::Group(groups)) => {
            for g in groups {
                if let Some(name) = &g.name {
                    items.extend_from_slice(b"(NIL NIL ");
                    string(&mut items, name.as_bytes());
                    items.extend_from_slice(b" NIL)");
                }
                for a in &g.addresses {
                    if a.address.is_some() {
                        address(&mut items, a.name.as_deref(), a.address.as_deref());
                    }
                }
                if g.name.is_some() {
                    items.extend_from_slice(b"(NIL NIL NIL NIL)");
                }
            }
        }
        None => {}
    }
    if items.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        out.extend_from_slice(&items);
        out.push(b')');
    }
}

fn upper(s: &str) -> Vec<u8> {
    s.to_ascii_uppercase().into_bytes()
}

fn params(
    out: &mut Vec<u8>,
    attrs: Option<&[mail_parser::Attribute<'_>]>,
    extra: Option<(&str, &str)>,
) {
    let mut items: Vec<(String, String)> = attrs
        .unwrap_or_default()
        .iter()
        .map(|a| (a.name.to_ascii_uppercase(), a.value.to_string()))
        .collect();
    if let Some((k, v)) = extra
        && !items.iter().any(|(n, _)| n.eq_ignore_ascii_case(k))
    {
        items.push((k.to_owned(), v.to_owned()));
    }
    if items.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (k, v)) in items.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, k.as_bytes());
        out.push(b' ');
        string(out, v.as_bytes());
    }
    out.push(b')');
}

/// BODY (`ext` false) or BODYSTRUCTURE of the part `idx` of `msg`. `depth` bounds the
/// recursion through encapsulated messages.
fn structure(out: &mut Vec<u8>, msg: &Message<'_>, idx: usize, ext: bool, depth: usize) {
    let node = Node { msg, part: idx };
    let Some(part) = node.get() else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let ct = part.content_type();
    if let PartType::Multipart(ids) = &part.body
        && depth < 32
    {
        out.push(b'(');
        if ids.is_empty() {
            out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
        }
        for &id in ids {
            structure(out, msg, id as usize, ext, depth + 1);
        }
        out.push(b' ');
        let subtype = ct.and_then(|c| c.subtype()).unwrap_or("mixed");
        string(out, &upper(subtype));
        if ext {
            out.push(b' ');
            params(out, ct.and_then(|c| c.attributes()), None);
            extension(out, part);
        }
        out.push(b')');
        return;
    }
    let (ctype, subtype) = match ct {
        Some(c) => (
            c.ctype().to_owned(),
            c.subtype().unwrap_or("plain").to_owned(),
        ),
        None => ("text".into(), "plain".into()),
    };
    let body = node.body();
    out.push(b'(');
    string(out, &upper(&ctype));
    out.push(b' ');
    string(out, &upper(&subtype));
    out.push(b' ');
    let is_text = ctype.eq_ignore_ascii_case("text");
    params(
        out,
        ct.and_then(|c| c.attributes()),
        (is_text).then_some(("CHARSET", "US-ASCII")),
    );
    out.push(b' ');
    nstring(out, part.content_id().map(str::as_bytes));
    out.push(b' ');
    nstring(out, part.content_description().map(str::as_bytes));
    out.push(b' ');
    let encoding = part.content_transfer_encoding().unwrap_or("7bit");
    string(out, &upper(encoding));
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    match &part.body {
        PartType::Message(sub) if depth < 32 => {
            out.push(b' ');
            envelope(out, sub, body);
            out.push(b' ');
            structure(out, sub, 0, ext, depth + 1);
            out.extend_from_slice(format!(" {}", count_lines(body)).as_bytes());
        }
        _ if is_text => out.extend_from_slice(format!(" {}", count_lines(body)).as_bytes()),
        _ => {}
    }
    if ext {
        // body-fld-md5, then disposition, language, location.
        out.extend_from_slice(b" NIL");
        extension(out, part);
    }
    out.push(b')');
}

/// Disposition, language and location of BODYSTRUCTURE.
fn extension(out: &mut Vec<u8>, part: &MessagePart<'_>) {
    out.push(b' ');
    match part.content_disposition() {
        Some(d) => {
            out.push(b'(');
            string(out, &upper(d.ctype()));
            out.push(b' ');
            params(out, d.attributes(), None);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    match part.content_language().as_text() {
        Some(l) => string(out, l.as_bytes()),
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    nstring(out, part.content_location().map(str::as_bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: A <a@x.test>\r\nTo: b@y.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npre\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: c@z.test\r\n\r\ninner body\r\n--b1--\r\n";

    fn fetch(name: MessageDataItemName<'_>, raw: &[u8]) -> String {
        String::from_utf8(fetch_bytes(name, raw)).unwrap()
    }

    fn fetch_bytes(name: MessageDataItemName<'_>, raw: &[u8]) -> Vec<u8> {
        let meta = MessageMeta {
            uid: 1,
            size: raw.len() as u64,
            internal_date: 0,
            flags: vec![],
            body_id: 1,
            modseq: 1,
        };
        let mut out = Vec::new();
        let mut f = Some(Fetched::new(raw));
        item(&mut out, &name, &meta, &[], &mut f).unwrap();
        out
    }

    fn section(s: &str) -> MessageDataItemName<'static> {
        use imap_codec::CommandCodec;
        use imap_codec::decode::Decoder;
        use imap_codec::imap_types::command::CommandBody;
        use imap_codec::imap_types::fetch::MacroOrMessageDataItemNames;
        let line = format!("a FETCH 1 ({s})\r\n");
        let (_, cmd) = CommandCodec::default().decode(line.as_bytes()).unwrap();
        let CommandBody::Fetch {
            macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(items),
            ..
        } = cmd.body
        else {
            panic!()
        };
        use imap_codec::imap_types::IntoStatic;
        items[0].clone().into_static()
    }

    fn lit(name: &str, content: &str) -> String {
        format!("{name} {{{}}}\r\n{content}", content.len())
    }

    #[test]
    fn sections_cut_the_stored_bytes() {
        assert_eq!(
            fetch(section("BODY.PEEK[1]"), MIXED),
            lit("BODY[1]", "hello")
        );
        assert_eq!(
            fetch(section("BODY.PEEK[2.HEADER]"), MIXED),
            lit("BODY[2.HEADER]", "Subject: inner\r\nFrom: c@z.test\r\n\r\n")
        );
        assert_eq!(
            fetch(section("BODY.PEEK[2.TEXT]"), MIXED),
            lit("BODY[2.TEXT]", "inner body")
        );
        assert_eq!(
            fetch(section("BODY.PEEK[1.MIME]"), MIXED),
            lit(
                "BODY[1.MIME]",
                "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            )
        );
        assert_eq!(
            fetch(section("BODY.PEEK[HEADER.FIELDS (subject to)]"), MIXED),
            lit(
                "BODY[HEADER.FIELDS (SUBJECT TO)]",
                "To: b@y.test\r\nSubject: hi\r\n\r\n"
            )
        );
        let not = fetch(
            section("BODY.PEEK[HEADER.FIELDS.NOT (subject to mime-version content-type)]"),
            MIXED,
        );
        assert_eq!(
            not,
            lit(
                "BODY[HEADER.FIELDS.NOT (SUBJECT TO MIME-VERSION CONTENT-TYPE)]",
                "From: A <a@x.test>\r\n\r\n"
            )
        );
        assert_eq!(
            fetch(section("BODY.PEEK[]<2.5>"), MIXED),
            lit("BODY[]<2>", "om: A")
        );
        let whole = fetch(section("BODY[]"), MIXED);
        assert!(whole.as_bytes().ends_with(MIXED));
        assert_eq!(fetch(section("BODY.PEEK[9]"), MIXED), lit("BODY[9]", ""));
    }

    #[test]
    fn envelope_and_structure() {
        let env = fetch(section("ENVELOPE"), MIXED);
        assert_eq!(
            env,
            "ENVELOPE (NIL \"hi\" ((\"A\" NIL \"a\" \"x.test\")) ((\"A\" NIL \"a\" \"x.test\")) ((\"A\" NIL \"a\" \"x.test\")) ((NIL NIL \"b\" \"y.test\")) NIL NIL NIL NIL)"
        );
        let bs = fetch(section("BODYSTRUCTURE"), MIXED);
        assert!(
            bs.starts_with("BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 0 NIL NIL NIL NIL)(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 44 (NIL \"inner\" ((NIL NIL \"c\" \"z.test\"))"),
            "{bs}"
        );
        assert!(
            bs.ends_with(" \"MIXED\" (\"BOUNDARY\" \"b1\") NIL NIL NIL)"),
            "{bs}"
        );
        let simple = b"Subject: x\r\n\r\nline1\r\nline2\r\n";
        assert_eq!(
            fetch(section("BODY"), simple),
            "BODY (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 14 2)"
        );
    }

    /// Parses `line` back with imap-codec's response decoder: what xmta sends must be IMAP.
    fn parses(line: &[u8]) {
        use imap_codec::ResponseCodec;
        use imap_codec::decode::Decoder;
        match ResponseCodec::default().decode(line) {
            Ok((rest, _)) => assert!(
                rest.is_empty(),
                "left over: {:?}",
                String::from_utf8_lossy(rest)
            ),
            Err(e) => panic!("{e:?}: {}", String::from_utf8_lossy(line)),
        }
    }

    fn fetch_line(raw: &[u8]) -> Vec<u8> {
        let mut line = b"* 1 FETCH (UID 1 ".to_vec();
        for (i, s) in [
            "ENVELOPE",
            "BODYSTRUCTURE",
            "BODY",
            "BODY.PEEK[HEADER.FIELDS (SUBJECT \"X-Odd\")]",
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                line.push(b' ');
            }
            line.extend_from_slice(&fetch_bytes(section(s), raw));
        }
        line.extend_from_slice(b")\r\n");
        line
    }

    #[test]
    fn literals_never_carry_nul() {
        let mut out = Vec::new();
        literal(&mut out, b"a\0b\0");
        assert_eq!(out, b"{4}\r\na\x80b\x80");
    }

    #[test]
    fn tricky_responses_parse_back_with_imap_codec() {
        let cases: Vec<&[u8]> = vec![
            MIXED,
            // Quotes, backslashes and a tab in strings; a group; an empty field.
            b"From: \"Quote \\\"Q\\\" Name\" <q@x.test>\r\nTo: undisclosed-recipients:;\r\nCc: Team: a@x.test, \"B \\\\ C\" <b@x.test>;\r\nSubject: He said \"hi\" \\ back\\slash\tend\r\nIn-Reply-To: \r\nMessage-ID: <\"odd\"@x.test>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n",
            // 8-bit header values and a NUL.
            "From: Jürgen Müller <j@x.test>\r\nSubject: Grüße \u{0} aus Köln\r\nContent-Type: text/plain; charset=\"utf-8\"; name=\"f\\\"ile\"\r\n\r\nbody\r\n".as_bytes(),
            // CR or LF inside a parameter value (a literal then), no header at all.
            b"Content-Type: text/plain; x=\"a\rb\"\r\n\r\nx",
            b"",
            b"no header, no blank line",
            // Nested multiparts, an encapsulated multipart message, dispositions with
            // quoted filenames, language and location.
            b"From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"o\"\r\n\r\n--o\r\nContent-Type: multipart/alternative; boundary=\"i\"\r\n\r\n--i\r\nContent-Type: text/plain\r\nContent-Language: de, en\r\n\r\nplain\r\n--i\r\nContent-Type: text/html; charset=\"iso-8859-1\"\r\nContent-Location: http://x.test/\"q\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<b>=E4</b>\r\n--i--\r\n--o\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"a \\\"b\\\".eml\"\r\n\r\nFrom: \"In\\\\ner\" <i@y.test>\r\nSubject: inner \"quoted\"\r\nContent-Type: multipart/mixed; boundary=\"z\"\r\n\r\n--z\r\nContent-Type: application/octet-stream\r\nContent-ID: <id\"1@x>\r\nContent-Description: desc \\ ription\r\n\r\nAAAA\r\n--z--\r\n--o\r\nContent-Type: multipart/mixed; boundary=\"e\"\r\n\r\n--e--\r\n--o--\r\n",
        ];
        for raw in cases {
            parses(&fetch_line(raw));
        }
    }

    /// Found by the imap fuzz target: corrupt nested MIME on which mail-parser's recovery
    /// hits its own `debug_assert!` (off in xmta's dev profile, see Cargo.toml); the FETCH
    /// response must still be IMAP.
    #[test]
    fn corrupt_mime_found_by_fuzzing_renders() {
        let seed = include_bytes!("../../tests/fuzz/corpus/imap/regress-mail-parser-debug-assert");
        // The first byte picks the FETCH part of the target.
        parses(&fetch_line(&seed[1..]));
    }

    #[test]
    fn strings_become_literals_where_they_must() {
        let mut out = Vec::new();
        string(&mut out, b"a\"b\\c");
        assert_eq!(out, b"\"a\\\"b\\\\c\"");
        for (input, want) in [
            (&b"a\r\nb"[..], &b"{4}\r\na\r\nb"[..]),
            (&b"\xc3\xbc"[..], &b"{2}\r\n\xc3\xbc"[..]),
            (&b"a\0b"[..], &b"\"ab\""[..]),
            (&b""[..], &b"\"\""[..]),
        ] {
            let mut out = Vec::new();
            string(&mut out, input);
            assert_eq!(out, want, "{:?}", String::from_utf8_lossy(input));
            let mut line = b"* LIST () \"/\" ".to_vec();
            line.extend_from_slice(&out);
            line.extend_from_slice(b"\r\n");
            if !input.is_empty() {
                parses(&line);
            }
        }
    }
}
