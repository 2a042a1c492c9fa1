//! A minimal XMPP client (RFC 6120 c2s: SASL PLAIN, resource binding) used to see what
//! reaches a user of a real XMPP server.

use std::net::SocketAddr;

use super::Raw;

pub struct C2s {
    pub raw: Raw,
    pub jid: String,
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl C2s {
    /// Logs in as `user@domain` over plain TCP and becomes available.
    pub fn login(addr: SocketAddr, user: &str, domain: &str, password: &str) -> C2s {
        let mut raw = Raw::connect(addr);
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
        );
        raw.send(&header);
        assert!(
            raw.read_until(10, |s| s.contains("</stream:features>")),
            "c2s features: {}",
            raw.got
        );
        let token = b64(format!("\0{user}\0{password}").as_bytes());
        raw.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        ));
        assert!(
            raw.read_until(10, |s| s.contains("<success")),
            "c2s auth: {}",
            raw.got
        );
        raw.got.clear();
        raw.send(&header);
        assert!(
            raw.read_until(10, |s| s.contains("</stream:features>")),
            "c2s features 2: {}",
            raw.got
        );
        raw.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>test</resource></bind></iq>");
        assert!(
            raw.read_until(10, |s| s.contains("</jid>")),
            "c2s bind: {}",
            raw.got
        );
        let jid = {
            let s = &raw.got;
            let a = s.find("<jid>").map(|i| i + 5).unwrap_or(0);
            let b = s.find("</jid>").unwrap_or(a);
            s[a..b].to_string()
        };
        raw.send(
            "<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
        );
        raw.send("<presence/>");
        raw.got.clear();
        C2s { raw, jid }
    }

    pub fn send(&mut self, s: &str) {
        self.raw.send(s);
    }

    /// Waits until what arrived satisfies `pred`.
    pub fn wait(&mut self, secs: u64, pred: impl Fn(&str) -> bool) -> bool {
        self.raw.read_until(secs, pred)
    }
}
