//! Reading an XMPP stream: the header, then one complete top-level element at a time.

use std::io;

use bytes::BytesMut;
use minidom::Element;
use minidom::tree_builder::TreeBuilder;
use rxml::error::EndOrError;
use rxml::{Parse, RawEvent, RawParser, WithOptions};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::ns;

/// What can go wrong reading a stream; each maps to the stream error the peer is sent.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed without a stream footer")]
    Eof,
    #[error("not well-formed XML: {0}")]
    NotWellFormed(String),
    #[error("restricted XML (DTD, entity declaration, processing instruction or comment): {0}")]
    RestrictedXml(String),
    #[error("wrong namespace: {0}")]
    InvalidNamespace(String),
    #[error("stanza larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("elements nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("bad stream header: {0}")]
    BadHeader(String),
}

impl XmlError {
    /// The RFC 6120 stream error condition for this fault.
    pub fn condition(&self) -> &'static str {
        match self {
            XmlError::Io(_) | XmlError::Eof => "connection-timeout",
            XmlError::NotWellFormed(_) => "not-well-formed",
            XmlError::RestrictedXml(_) => "restricted-xml",
            XmlError::InvalidNamespace(_) => "invalid-namespace",
            XmlError::TooLarge(_) => "policy-violation",
            XmlError::TooDeep(_) => "policy-violation",
            XmlError::BadHeader(_) => "bad-format",
        }
    }
}

/// The attributes of a peer's `<stream:stream>` that xmta uses.
#[derive(Debug, Clone, Default)]
pub struct StreamHeader {
    pub from: Option<String>,
    pub to: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    /// The default namespace the header declared (jabber:server for s2s).
    pub default_ns: String,
    /// Whether `xmlns:db` was declared (XEP-0220 requires it for dialback).
    pub declares_dialback: bool,
}

const READ_CHUNK: usize = 64 * 1024;

/// Reads a stream from `R`. Cancel-safe: all progress lives in `self`, so `next()` may be
/// used in `tokio::select!`.
pub struct XmlReader<R> {
    io: R,
    buf: BytesMut,
    parser: RawParser,
    /// Prefix declarations of the stream header, inherited by every stanza.
    prefixes: Option<std::collections::BTreeMap<Option<String>, String>>,
    header: Option<HeaderBuilder>,
    builder: Option<TreeBuilder>,
    /// Depth below the stream element of the element being read (0 = between stanzas).
    depth: usize,
    stanza_bytes: usize,
    max_stanza_bytes: usize,
    max_depth: usize,
    ended: bool,
    /// Read a stream whose default namespace is the first as if it were the second.
    alias: Option<(&'static str, &'static str)>,
    /// The last two bytes the parser consumed.
    tail: [u8; 2],
    /// The parser stands just after the `>` of a start tag (or after text read by
    /// [`plain_text_run`]), where character data may be taken without it.
    at_text: bool,
    /// Whether plain text runs are taken without the parser at all.
    plain_runs: bool,
}

/// Bytes that are character data as they stand, with nothing to validate, expand or
/// normalise: the base64 alphabet (RFC 4648) and the whitespace of wrapped base64, but not
/// `\r` (end-of-line handling). `<data/>` holds only these.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b' ' | b'\n' | b'\t');
        c += 1;
    }
    t
};

/// How many bytes at the start of `buf` are [`PLAIN`].
fn plain_text_run(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&b| !PLAIN[b as usize])
        .unwrap_or(buf.len())
}

#[derive(Default)]
struct HeaderBuilder {
    open: bool,
    /// The stream's first byte other than whitespace was seen (and was `<`).
    markup_seen: bool,
    prefix: Option<String>,
    name: String,
    attrs: Vec<(Option<String>, String, String)>,
}

impl<R: AsyncRead + Unpin> XmlReader<R> {
    pub fn new(io: R, max_stanza_bytes: usize) -> Self {
        let options = rxml::Options {
            // Attribute values and names longer than this are refused; long text is split.
            max_token_length: 16 * 1024,
            ..Default::default()
        };
        XmlReader {
            io,
            buf: BytesMut::with_capacity(8192),
            parser: <RawParser as WithOptions>::with_options(options),
            prefixes: None,
            header: None,
            builder: None,
            depth: 0,
            stanza_bytes: 0,
            max_stanza_bytes,
            max_depth: 32,
            ended: false,
            alias: None,
            tail: [0; 2],
            at_text: false,
            plain_runs: true,
        }
    }

    /// Stanzas of a stream in default namespace `from` are read as if in `to` (a
    /// component stream's jabber:component:accept stanzas become jabber:server ones, so
    /// the mail layer sees one kind of stanza).
    pub fn alias_default_ns(&mut self, from: &'static str, to: &'static str) {
        self.alias = Some((from, to));
    }

    /// Reads every byte through the parser (no plain text runs): the reference the fuzz
    /// target compares the fast path with.
    #[doc(hidden)]
    pub fn without_plain_text_runs(mut self) -> Self {
        self.plain_runs = false;
        self
    }

    pub fn set_max_stanza_bytes(&mut self, n: usize) {
        self.max_stanza_bytes = n;
    }

    /// Gives the transport back, e.g. for a TLS handshake after `<proceed/>`. Fails if the
    /// peer already sent bytes past the last element (it must wait for the handshake).
    pub fn into_inner(self) -> Result<R, XmlError> {
        if !self.buf.is_empty() {
            return Err(XmlError::NotWellFormed(
                "data after <starttls/> before the TLS handshake".into(),
            ));
        }
        Ok(self.io)
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    async fn fill(&mut self) -> Result<(), XmlError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(READ_CHUNK);
        }
        let before = self.buf.len();
        let n = self.io.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(XmlError::Eof);
        }
        // XMPP forbids DTDs (RFC 6120 §11.1); rxml rejects them as a syntax error, but the
        // peer deserves the specific condition. Look a few bytes back for split markers.
        let from = before.saturating_sub(8);
        let fresh = &self.buf[from..];
        if memchr::memmem::find_iter(fresh, b"<!").any(|i| {
            let w = &fresh[i..];
            w.starts_with(b"<!DOCTYPE") || w.starts_with(b"<!ENTITY")
        }) {
            return Err(XmlError::RestrictedXml(
                "a DTD or entity declaration".into(),
            ));
        }
        // Before the stream header only markup may come; say so at once rather than
        // waiting for more of, say, an SMTP greeting.
        // Only the first byte that is not whitespace is looked at: the parser may already
        // have taken the `<` of a header that arrives in pieces.
        if let Some(h) = self.header.as_mut().filter(|h| !h.open && !h.markup_seen)
            && let Some(&b) = self.buf.iter().find(|b| !b.is_ascii_whitespace())
        {
            if b != b'<' {
                return Err(XmlError::NotWellFormed(
                    "the stream does not start with XML markup".into(),
                ));
            }
            h.markup_seen = true;
        }
        Ok(())
    }

    /// One raw event, reading more bytes as needed.
    ///
    /// Inside a stanza, a run of [`PLAIN`] bytes right after a start tag is returned as text
    /// without going through the parser, whose lexer takes character data a byte at a time
    /// (most of the cost of a big mail's base64). The parser cannot tell: it resumes at the
    /// first other byte, where text may go on or markup begin, exactly as if the run had
    /// been empty.
    async fn event(&mut self) -> Result<RawEvent, XmlError> {
        loop {
            if self.at_text && self.depth > 0 {
                let n = plain_text_run(&self.buf);
                if n < self.buf.len() {
                    // Another byte follows: the parser takes over from it.
                    self.at_text = false;
                }
                if n > 0 {
                    let run = self.buf.split_to(n);
                    let text = std::str::from_utf8(&run)
                        .map_err(|_| XmlError::NotWellFormed("internal: text run".into()))?;
                    return Ok(RawEvent::Text(
                        rxml::parser::EventMetrics::new(n),
                        text.to_owned(),
                    ));
                }
            }
            let mut slice: &[u8] = &self.buf[..];
            let before = slice.len();
            let r = self.parser.parse(&mut slice, false);
            let consumed = before - slice.len();
            match consumed {
                0 => {}
                1 => self.tail = [self.tail[1], self.buf[0]],
                _ => self.tail = [self.buf[consumed - 2], self.buf[consumed - 1]],
            }
            let _ = self.buf.split_to(consumed);
            match r {
                Ok(Some(ev)) => {
                    // `>` of a start tag, not `/>` of an empty element (whose end event
                    // the parser still holds).
                    self.at_text = self.plain_runs
                        && matches!(ev, RawEvent::ElementHeadClose(_))
                        && self.tail[1] == b'>'
                        && self.tail[0] != b'/';
                    return Ok(ev);
                }
                Ok(None) => return Err(XmlError::Eof),
                Err(EndOrError::NeedMoreData) => {
                    // Bytes held for an incomplete token count against the stanza limit too,
                    // so a peer cannot make us buffer without bound.
                    if self.depth > 0 && self.stanza_bytes + self.buf.len() > self.max_stanza_bytes
                    {
                        return Err(XmlError::TooLarge(self.max_stanza_bytes));
                    }
                    if self.depth == 0 && self.buf.len() > self.max_stanza_bytes {
                        return Err(XmlError::TooLarge(self.max_stanza_bytes));
                    }
                    self.fill().await?
                }
                Err(EndOrError::Error(e)) => return Err(classify(e)),
            }
        }
    }

    /// Reads the peer's stream header (also after a TLS restart: call `restart` first).
    pub async fn read_header(&mut self) -> Result<StreamHeader, XmlError> {
        if self.header.is_none() {
            self.header = Some(HeaderBuilder::default());
        }
        loop {
            let ev = self.event().await?;
            let Some(h) = self.header.as_mut() else {
                return Err(XmlError::BadHeader("internal: no header state".into()));
            };
            match ev {
                RawEvent::XmlDeclaration(..) => {}
                RawEvent::ElementHeadOpen(_, (prefix, name)) => {
                    h.open = true;
                    h.prefix = prefix.map(|p| p.to_string());
                    h.name = name.to_string();
                }
                RawEvent::Attribute(_, (prefix, name), value) => {
                    h.attrs
                        .push((prefix.map(|p| p.to_string()), name.to_string(), value));
                }
                RawEvent::ElementHeadClose(_) => {
                    let h = self.header.take().unwrap_or_default();
                    return self.finish_header(h);
                }
                RawEvent::ElementFoot(_) => {
                    return Err(XmlError::BadHeader("empty stream element".into()));
                }
                RawEvent::Text(_, t) => {
                    if !t.trim().is_empty() || h.open {
                        return Err(XmlError::NotWellFormed(
                            "text before the stream header".into(),
                        ));
                    }
                }
            }
        }
    }

    fn finish_header(&mut self, h: HeaderBuilder) -> Result<StreamHeader, XmlError> {
        let mut prefixes = std::collections::BTreeMap::<Option<String>, String>::new();
        let mut header = StreamHeader::default();
        for (prefix, name, value) in &h.attrs {
            match (prefix.as_deref(), name.as_str()) {
                (None, "xmlns") => {
                    prefixes.insert(None, value.clone());
                }
                (Some("xmlns"), p) => {
                    if p == "db" && value == ns::DIALBACK {
                        header.declares_dialback = true;
                    }
                    prefixes.insert(Some(p.to_string()), value.clone());
                }
                (None, "from") => header.from = Some(value.clone()),
                (None, "to") => header.to = Some(value.clone()),
                (None, "id") => header.id = Some(value.clone()),
                (None, "version") => header.version = Some(value.clone()),
                _ => {}
            }
        }
        let stream_ns = prefixes.get(&h.prefix).cloned().unwrap_or_default();
        if h.name != "stream" || stream_ns != ns::STREAM {
            return Err(XmlError::InvalidNamespace(format!(
                "the root element must be <stream:stream xmlns:stream='{}'>",
                ns::STREAM
            )));
        }
        header.default_ns = prefixes.get(&None).cloned().unwrap_or_default();
        if let Some((from, to)) = self.alias
            && header.default_ns == from
        {
            prefixes.insert(None, to.to_string());
        }
        self.prefixes = Some(prefixes);
        Ok(header)
    }

    /// Resets the parser for a new stream over the same transport (after SASL) or hands
    /// over to a new transport (use a new reader for TLS).
    pub fn restart(&mut self) {
        let options = rxml::Options {
            max_token_length: 16 * 1024,
            ..Default::default()
        };
        self.parser = <RawParser as WithOptions>::with_options(options);
        self.prefixes = None;
        self.header = None;
        self.builder = None;
        self.depth = 0;
        self.stanza_bytes = 0;
        self.ended = false;
        self.tail = [0; 2];
        self.at_text = false;
    }

    /// The next top-level element; `Ok(None)` once the peer closed its stream with
    /// `</stream:stream>`.
    pub async fn next(&mut self) -> Result<Option<Element>, XmlError> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let ev = self.event().await?;
            let len = ev.metrics().len();
            match &ev {
                RawEvent::ElementFoot(_) if self.depth == 0 => {
                    self.ended = true;
                    return Ok(None);
                }
                RawEvent::Text(_, t) if self.depth == 0 => {
                    // Whitespace keepalives between stanzas.
                    if !t.trim().is_empty() {
                        return Err(XmlError::NotWellFormed("text between stanzas".into()));
                    }
                    continue;
                }
                RawEvent::XmlDeclaration(..) => {
                    return Err(XmlError::NotWellFormed(
                        "XML declaration inside the stream".into(),
                    ));
                }
                _ => {}
            }
            if self.depth == 0 {
                let mut b = TreeBuilder::new();
                if let Some(p) = &self.prefixes {
                    b = b.with_prefixes_stack(vec![p.clone().into()]);
                }
                self.builder = Some(b);
                self.stanza_bytes = 0;
            }
            self.stanza_bytes += len;
            if self.stanza_bytes > self.max_stanza_bytes {
                return Err(XmlError::TooLarge(self.max_stanza_bytes));
            }
            let closes = match &ev {
                RawEvent::ElementHeadOpen(..) => {
                    self.depth += 1;
                    if self.depth > self.max_depth {
                        return Err(XmlError::TooDeep(self.max_depth));
                    }
                    false
                }
                RawEvent::ElementFoot(_) => {
                    self.depth -= 1;
                    self.depth == 0
                }
                _ => false,
            };
            let Some(builder) = self.builder.as_mut() else {
                return Err(XmlError::NotWellFormed("internal: no tree builder".into()));
            };
            builder.process_event(ev).map_err(|e| match e {
                minidom::Error::MissingNamespace => {
                    XmlError::InvalidNamespace("undeclared namespace prefix".into())
                }
                other => XmlError::NotWellFormed(other.to_string()),
            })?;
            if closes {
                let root = self.builder.take().and_then(|b| b.root);
                return match root {
                    Some(el) => Ok(Some(el)),
                    None => Err(XmlError::NotWellFormed("incomplete element".into())),
                };
            }
        }
    }
}

fn classify(e: rxml::Error) -> XmlError {
    let text = e.to_string();
    match e {
        rxml::Error::RestrictedXml(_) => XmlError::RestrictedXml(text),
        _ => XmlError::NotWellFormed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(
        input: &[u8],
        max: usize,
    ) -> (
        Result<StreamHeader, XmlError>,
        Vec<Result<Option<Element>, XmlError>>,
    ) {
        let mut r = XmlReader::new(input, max);
        let h = r.read_header().await;
        let mut out = Vec::new();
        if h.is_ok() {
            loop {
                let e = r.next().await;
                let stop = !matches!(e, Ok(Some(_)));
                out.push(e);
                if stop {
                    break;
                }
            }
        }
        (h, out)
    }

    const HDR: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0' xml:lang='en'>";

    #[tokio::test]
    async fn header_and_stanzas() {
        let doc = format!(
            "{HDR}<db:result from='a.test' to='b.test'>abc</db:result> <message to='x@b.test'><body>hi</body></message></stream:stream>"
        );
        let (h, els) = read_all(doc.as_bytes(), 4096).await;
        let h = h.unwrap();
        assert_eq!(h.from.as_deref(), Some("a.test"));
        assert!(h.declares_dialback);
        assert_eq!(h.default_ns, ns::SERVER);
        let first = els[0].as_ref().unwrap().as_ref().unwrap();
        assert!(first.is("result", ns::DIALBACK));
        assert_eq!(first.text(), "abc");
        let second = els[1].as_ref().unwrap().as_ref().unwrap();
        assert!(second.is("message", ns::SERVER));
        assert!(matches!(els[2], Ok(None)));
    }

    #[tokio::test]
    async fn bombs_and_garbage_are_refused() {
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{HDR}<message>{}</message>", "x".repeat(5000)),
                "policy-violation",
            ),
            (format!("{HDR}{}", "<a>".repeat(100)), "policy-violation"),
            (
                format!("<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>]>{HDR}"),
                "restricted-xml",
            ),
            (
                format!("{HDR}<message><!-- c --></message>"),
                "restricted-xml",
            ),
            (format!("{HDR}<message>&lol;</message>"), "not-well-formed"),
            ("HELO smtp.example\r\n".to_string(), "not-well-formed"),
            (
                "<stream:stream xmlns:stream='urn:wrong' xmlns='jabber:server'>".to_string(),
                "invalid-namespace",
            ),
            (format!("{HDR}<x:message/>"), "invalid-namespace"),
            (format!("{HDR}<message></iq>"), "not-well-formed"),
        ];
        for (doc, cond) in cases {
            let (h, els) = read_all(doc.as_bytes(), 4096).await;
            let err = match h {
                Err(e) => e,
                Ok(_) => match els.into_iter().find_map(|e| e.err()) {
                    Some(e) => e,
                    None => panic!("accepted: {doc}"),
                },
            };
            assert_eq!(err.condition(), cond, "{doc}: {err}");
        }
    }

    /// Hands out its input `step` bytes per read, so tokens and text runs split anywhere.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl tokio::io::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let end = (self.pos + self.step).min(self.data.len());
            let n = (end - self.pos).min(buf.remaining());
            let from = self.pos;
            buf.put_slice(&self.data[from..from + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn read_trickled(doc: &str, step: usize) -> Result<Vec<Element>, XmlError> {
        let io = Trickle {
            data: doc.as_bytes().to_vec(),
            pos: 0,
            step,
        };
        let mut r = XmlReader::new(io, 1 << 20);
        r.read_header().await?;
        let mut out = Vec::new();
        while let Some(el) = r.next().await? {
            out.push(el);
        }
        Ok(out)
    }

    /// Text taken without the parser (plain runs after a start tag) gives the same tree as
    /// the parser would, however the input is split: base64, runs ending in references,
    /// CR, other characters or markup, and text after an empty element, which belongs to
    /// its parent.
    #[tokio::test]
    async fn plain_text_runs_read_like_the_parser() {
        let b64 = "QUJD+/=".repeat(3000);
        let doc = format!(
            "{HDR}<message><mail xmlns='urn:xmpp:mta:0'><data>{b64}\n{b64}</data></mail></message>\
             <message><body>ab c&amp;d\r\ne\u{e9}f<x/>tail <y a='1'/> more</body><z>q</z><w>ab\r\ncd\re</w></message>\
             </stream:stream>"
        );
        for step in [1, 2, 3, 7, 64, 4096, 1 << 20] {
            let els = read_trickled(&doc, step).await.unwrap();
            assert_eq!(els.len(), 2, "step {step}");
            let data = els[0]
                .get_child("mail", "urn:xmpp:mta:0")
                .and_then(|m| m.get_child("data", "urn:xmpp:mta:0"))
                .unwrap();
            assert_eq!(data.text(), format!("{b64}\n{b64}"), "step {step}");
            let body = els[1].get_child("body", ns::SERVER).unwrap();
            assert_eq!(body.text(), "ab c&d\neéftail  more", "step {step}");
            let kids: Vec<&str> = body.children().map(|c| c.name()).collect();
            assert_eq!(kids, ["x", "y"], "step {step}");
            assert!(
                body.children().all(|c| c.text().is_empty()),
                "text after an empty element is its parent's (step {step})"
            );
            assert_eq!(els[1].get_child("z", ns::SERVER).unwrap().text(), "q");
            // End-of-line handling (XML 1.0 §2.11) still applies.
            assert_eq!(
                els[1].get_child("w", ns::SERVER).unwrap().text(),
                "ab\ncd\ne"
            );
        }
    }

    /// What the parser refuses after a plain run is still refused.
    #[tokio::test]
    async fn plain_text_runs_do_not_hide_bad_text() {
        for bad in ["abc]]>def", "abc\u{1}def", "abc&bogus;", "abc<"] {
            let doc = format!("{HDR}<message><body>{bad}</body></message></stream:stream>");
            for step in [1, 3, 4096] {
                let r = read_trickled(&doc, step).await;
                assert!(
                    matches!(r, Err(XmlError::NotWellFormed(_) | XmlError::Eof)),
                    "{bad:?} step {step}: {r:?}"
                );
            }
        }
    }
}
