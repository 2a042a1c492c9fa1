//! XEP-0220 Server Dialback elements and XEP-0185 keys.
//!
//! xmpp-parsers has no dialback, so the three elements xmta exchanges (`db:result` request,
//! `db:result` answer, `db:verify` request/answer) are typed here and parsed once at the edge.

use hmac::{Hmac, Mac};
use minidom::Element;
use sha2::{Digest, Sha256};

use crate::xml::ns;

/// The secret a server keys its dialback keys with (generated on first start, kept in the
/// store so keys stay valid across restarts).
#[derive(Clone)]
pub struct DialbackSecret(Vec<u8>);

impl DialbackSecret {
    pub fn new(secret: Vec<u8>) -> Self {
        DialbackSecret(secret)
    }

    /// XEP-0185 §3: HMAC-SHA256 keyed with hex(SHA256(secret)) over
    /// "Receiving Server" SP "Originating Server" SP "Stream ID", as lowercase hex.
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let hashed = hex::encode(Sha256::digest(&self.0));
        let mut mac = match Hmac::<Sha256>::new_from_slice(hashed.as_bytes()) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Constant-time comparison of a presented key with the one we would have sent.
    pub fn verify(
        &self,
        receiving: &str,
        originating: &str,
        stream_id: &str,
        presented: &str,
    ) -> bool {
        let expected = self.key(receiving, originating, stream_id);
        let a = expected.as_bytes();
        let b = presented.trim().as_bytes();
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The `type` of a dialback answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbType {
    Valid,
    Invalid,
    Error,
}

impl DbType {
    fn parse(s: &str) -> Option<DbType> {
        match s {
            "valid" => Some(DbType::Valid),
            "invalid" => Some(DbType::Invalid),
            "error" => Some(DbType::Error),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            DbType::Valid => "valid",
            DbType::Invalid => "invalid",
            DbType::Error => "error",
        }
    }
}

/// A dialback element as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialback {
    /// `<db:result from=O to=R>KEY</db:result>`: O asks R to accept it on this stream.
    ResultRequest {
        from: String,
        to: String,
        key: String,
    },
    /// `<db:result from=R to=O type=..>`: R's verdict on our request.
    ResultAnswer {
        from: String,
        to: String,
        kind: DbType,
        /// Error condition when kind is Error (e.g. remote-server-not-found).
        condition: Option<String>,
    },
    /// `<db:verify from=R to=O id=ID>KEY</db:verify>`: R asks O, the authoritative server,
    /// whether KEY is O's key for stream ID.
    VerifyRequest {
        from: String,
        to: String,
        id: String,
        key: String,
    },
    /// `<db:verify from=O to=R id=ID type=..>`: O's verdict.
    VerifyAnswer {
        from: String,
        to: String,
        id: String,
        kind: DbType,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("bad dialback element: {0}")]
pub struct DialbackParseError(pub String);

impl TryFrom<&Element> for Dialback {
    type Error = DialbackParseError;

    fn try_from(el: &Element) -> Result<Self, Self::Error> {
        if el.ns() != ns::DIALBACK {
            return Err(DialbackParseError("not in the dialback namespace".into()));
        }
        let attr = |n: &str| -> Result<String, DialbackParseError> {
            el.attr(n)
                .map(|s| s.to_string())
                .ok_or_else(|| DialbackParseError(format!("<db:{}> without '{n}'", el.name())))
        };
        let from = attr("from")?;
        let to = attr("to")?;
        let kind = match el.attr("type") {
            None => None,
            Some(t) => {
                Some(DbType::parse(t).ok_or_else(|| DialbackParseError(format!("type='{t}'")))?)
            }
        };
        let key = el.text().trim().to_string();
        match (el.name(), kind) {
            ("result", None) => {
                if key.is_empty() {
                    return Err(DialbackParseError("<db:result> without a key".into()));
                }
                Ok(Dialback::ResultRequest { from, to, key })
            }
            ("result", Some(kind)) => {
                let condition = el
                    .children()
                    .find(|c| c.name() == "error")
                    .and_then(|e| {
                        e.children()
                            .find(|c| c.ns() == ns::STANZA_ERRORS && c.name() != "text")
                    })
                    .map(|c| c.name().to_string());
                Ok(Dialback::ResultAnswer {
                    from,
                    to,
                    kind,
                    condition,
                })
            }
            ("verify", None) => {
                if key.is_empty() {
                    return Err(DialbackParseError("<db:verify> without a key".into()));
                }
                Ok(Dialback::VerifyRequest {
                    from,
                    to,
                    id: attr("id")?,
                    key,
                })
            }
            ("verify", Some(kind)) => Ok(Dialback::VerifyAnswer {
                from,
                to,
                id: attr("id")?,
                kind,
            }),
            (other, _) => Err(DialbackParseError(format!("unknown element <db:{other}>"))),
        }
    }
}

fn esc(s: &str) -> String {
    crate::xml::writer::escape_attr(s)
}

/// `<db:result>` carrying our key.
pub fn result_request(from: &str, to: &str, key: &str) -> String {
    format!(
        "<db:result from='{}' to='{}'>{}</db:result>",
        esc(from),
        esc(to),
        esc(key)
    )
}

/// `<db:result type=..>` answering a peer's request. An error answer carries the stanza
/// error condition (XEP-0220 §2.4, e.g. `item-not-found` for a `to` we do not serve).
pub fn result_answer(from: &str, to: &str, kind: DbType, error: Option<(&str, &str)>) -> String {
    match error {
        Some((etype, cond)) => format!(
            "<db:result from='{}' to='{}' type='{}'><error type='{etype}'><{cond} xmlns='{}'/></error></db:result>",
            esc(from),
            esc(to),
            kind.as_str(),
            ns::STANZA_ERRORS
        ),
        None => format!(
            "<db:result from='{}' to='{}' type='{}'/>",
            esc(from),
            esc(to),
            kind.as_str()
        ),
    }
}

pub fn verify_request(from: &str, to: &str, id: &str, key: &str) -> String {
    format!(
        "<db:verify from='{}' to='{}' id='{}'>{}</db:verify>",
        esc(from),
        esc(to),
        esc(id),
        esc(key)
    )
}

pub fn verify_answer(from: &str, to: &str, id: &str, kind: DbType) -> String {
    format!(
        "<db:verify from='{}' to='{}' id='{}' type='{}'/>",
        esc(from),
        esc(to),
        esc(id),
        kind.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep0185_example_key() {
        // XEP-0185 §4 example: secret 's3cr3tf0rd14lb4ck', receiving 'xmpp.example.com',
        // originating 'example.org', stream id 'D60000229F'.
        let s = DialbackSecret::new(b"s3cr3tf0rd14lb4ck".to_vec());
        assert_eq!(
            s.key("xmpp.example.com", "example.org", "D60000229F"),
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
        assert!(s.verify(
            "xmpp.example.com",
            "example.org",
            "D60000229F",
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        ));
        assert!(!s.verify("xmpp.example.com", "example.org", "D60000229F", "00"));
        let other = s.key("xmpp.example.com", "example.net", "D60000229F");
        assert!(!s.verify("xmpp.example.com", "example.org", "D60000229F", &other));
    }

    #[test]
    fn parses_peer_variants() {
        let p = |s: &str| -> Dialback {
            let el: Element = s.parse().unwrap();
            Dialback::try_from(&el).unwrap()
        };
        let ns = "xmlns='jabber:server:dialback'";
        assert!(matches!(
            p(&format!("<result {ns} from='a' to='b'>k</result>")),
            Dialback::ResultRequest { .. }
        ));
        // ejabberd answers with an empty element, Prosody echoes the key.
        assert!(matches!(
            p(&format!("<result {ns} from='a' to='b' type='valid'/>")),
            Dialback::ResultAnswer {
                kind: DbType::Valid,
                ..
            }
        ));
        assert!(matches!(
            p(&format!(
                "<verify {ns} from='a' to='b' id='x' type='valid'>k</verify>"
            )),
            Dialback::VerifyAnswer {
                kind: DbType::Valid,
                ..
            }
        ));
        let e = p(&format!(
            "<result {ns} from='a' to='b' type='error'><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></result>"
        ));
        assert_eq!(
            e,
            Dialback::ResultAnswer {
                from: "a".into(),
                to: "b".into(),
                kind: DbType::Error,
                condition: Some("remote-server-not-found".into())
            }
        );
    }
}
