//! Writing an XMPP stream with the prefixes real servers expect: `stream:` for the stream
//! namespace, `db:` for dialback (declared on the header, as XEP-0220 requires and ejabberd
//! matches literally), `jabber:server` as the default namespace.

use minidom::{Element, Node};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::ns;

/// Serialises `el` as it appears inside a stream whose default namespace is `default_ns`.
pub fn element_to_string(el: &Element, default_ns: &str) -> String {
    let mut out = String::with_capacity(256);
    write_element(el, default_ns, &mut out);
    out
}

fn write_element(el: &Element, parent_ns: &str, out: &mut String) {
    let el_ns = el.ns();
    let (qname, declare): (String, bool) = if el_ns == ns::DIALBACK {
        (format!("db:{}", el.name()), false)
    } else if el_ns == ns::STREAM {
        (format!("stream:{}", el.name()), false)
    } else {
        (el.name().to_string(), el_ns != parent_ns)
    };
    out.push('<');
    out.push_str(&qname);
    if declare {
        out.push_str(" xmlns='");
        escape_into(&el_ns, true, out);
        out.push('\'');
    }
    for ((attr_ns, name), value) in el.attrs().iter() {
        out.push(' ');
        if attr_ns.as_str() == ns::XML {
            out.push_str("xml:");
        }
        out.push_str(name.as_str());
        out.push_str("='");
        escape_into(value, true, out);
        out.push('\'');
    }
    // Children of a prefixed element inherit the default namespace of its parent.
    let child_parent_ns = if el_ns == ns::DIALBACK || el_ns == ns::STREAM {
        parent_ns.to_string()
    } else {
        el_ns
    };
    let mut nodes = el.nodes().peekable();
    if nodes.peek().is_none() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for node in nodes {
        match node {
            Node::Element(child) => write_element(child, &child_parent_ns, out),
            Node::Text(t) => escape_into(t, false, out),
        }
    }
    out.push_str("</");
    out.push_str(&qname);
    out.push('>');
}

fn escape_into(s: &str, attr: bool, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' if attr => out.push_str("&apos;"),
            '"' if attr => out.push_str("&quot;"),
            '\r' => out.push_str("&#xD;"),
            // Characters outside XML 1.0's Char production cannot be sent at all (a peer's
            // parser would close the stream); they are dropped.
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
}

/// Attribute-safe escaping for values put into hand-written markup.
pub fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(s, true, &mut out);
    out
}

/// The opening of a stream, as sent by either side.
pub fn stream_header(
    default_ns: &str,
    from: Option<&str>,
    to: Option<&str>,
    id: Option<&str>,
    dialback: bool,
) -> String {
    let mut s = String::from("<?xml version='1.0'?><stream:stream xmlns='");
    s.push_str(default_ns);
    s.push_str("' xmlns:stream='");
    s.push_str(ns::STREAM);
    s.push('\'');
    if dialback {
        s.push_str(" xmlns:db='");
        s.push_str(ns::DIALBACK);
        s.push('\'');
    }
    for (k, v) in [("from", from), ("to", to), ("id", id)] {
        if let Some(v) = v {
            s.push(' ');
            s.push_str(k);
            s.push_str("='");
            escape_into(v, true, &mut s);
            s.push('\'');
        }
    }
    s.push_str(" version='1.0' xml:lang='en'>");
    s
}

/// A stream error followed by the stream footer (RFC 6120 §4.9).
pub fn stream_error(condition: &str, text: Option<&str>) -> String {
    let mut s = format!("<stream:error><{condition} xmlns='{}'/>", ns::STREAM_ERRORS);
    if let Some(t) = text {
        s.push_str(&format!(
            "<text xmlns='{}' xml:lang='en'>",
            ns::STREAM_ERRORS
        ));
        escape_into(t, false, &mut s);
        s.push_str("</text>");
    }
    s.push_str("</stream:error></stream:stream>");
    s
}

/// The writing half of a stream.
pub struct StreamWriter<W> {
    io: W,
    default_ns: &'static str,
}

impl<W: AsyncWrite + Unpin> StreamWriter<W> {
    pub fn new(io: W, default_ns: &'static str) -> Self {
        StreamWriter { io, default_ns }
    }

    pub async fn send_raw(&mut self, s: &str) -> std::io::Result<()> {
        self.io.write_all(s.as_bytes()).await?;
        self.io.flush().await
    }

    pub async fn send(&mut self, el: &Element) -> std::io::Result<()> {
        let s = element_to_string(el, self.default_ns);
        self.send_raw(&s).await
    }

    pub fn into_inner(self) -> W {
        self.io
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialback_uses_db_prefix() {
        let el = Element::builder("result", ns::DIALBACK)
            .attr(rxml::NcName::try_from("from").unwrap(), "a.test")
            .append("k<ey")
            .build();
        assert_eq!(
            element_to_string(&el, ns::SERVER),
            "<db:result from='a.test'>k&lt;ey</db:result>"
        );
    }

    #[test]
    fn non_xml_characters_are_dropped() {
        assert_eq!(escape_attr("a\u{1}b\u{FFFF}c\u{FFFE}\td\ne"), "abc\td\ne");
    }

    #[test]
    fn nested_namespaces() {
        let el: Element = "<message xmlns='jabber:server' to='b'><mail xmlns='urn:xmpp:mta:0' id='1'><data>x&amp;y</data></mail><body>hi</body></message>"
            .parse()
            .unwrap();
        assert_eq!(
            element_to_string(&el, ns::SERVER),
            "<message to='b'><mail xmlns='urn:xmpp:mta:0' id='1'><data>x&amp;y</data></mail><body>hi</body></message>"
        );
    }
}
