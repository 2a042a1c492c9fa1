//! The XML stream layer: bytes on a socket <-> a stream header and a sequence of elements.
//!
//! tokio-xmpp's `xmlstream` cannot declare `xmlns:db` on the stream header, rejects header
//! attributes it does not know and has no server-side TLS restart, so xmta reads with rxml's
//! raw parser plus minidom's tree builder (the same pieces tokio-xmpp is made of) and writes
//! with its own small serializer that uses the fixed prefixes `stream:` and `db:`.
//! Limits (stanza size, nesting depth) are enforced while reading, before memory is spent.

pub mod reader;
pub mod writer;

pub use reader::{StreamHeader, XmlError, XmlReader};
pub use writer::{StreamWriter, element_to_string};

/// Namespaces xmta speaks.
pub mod ns {
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const SERVER: &str = "jabber:server";
    pub const COMPONENT: &str = "jabber:component:accept";
    pub const DIALBACK: &str = "jabber:server:dialback";
    pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    pub const STREAM_LIMITS: &str = "urn:xmpp:stream-limits:0";
    pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
    pub const MTA: &str = "urn:xmpp:mta:0";
    pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
}
