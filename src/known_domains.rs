//! Domains known to send mail over XMPP, for downgrade protection on the SMTP gateway.
//!
//! Once a domain is known to send its mail over authenticated XMPP streams, SMTP mail
//! claiming to come from it is a downgrade (or a forgery) and `[smtp] downgrade` decides
//! whether it is refused or tagged. Besides the local domains (always known), a domain is
//! learnt when (a) it delivered mail to us over an authenticated s2s stream, or (b) its
//! service discovery announced `urn:xmpp:mta:0` to our delivery queue. Merely opening an
//! s2s stream is not enough: plain chat servers authenticate too and still send their mail
//! over SMTP.
//!
//! The registry is process-wide and kept in memory only: after a restart it is learnt again
//! from the next mail or discovery. (Persisting it would make a single spoofed-looking
//! incident permanent; an in-memory list keeps the policy tied to current evidence.)

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// How a domain became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// It delivered mail to us over an authenticated s2s stream.
    S2sMail,
    /// Its service discovery announced urn:xmpp:mta:0.
    Disco,
}

impl Evidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::S2sMail => "sent mail over XMPP",
            Evidence::Disco => "announces urn:xmpp:mta:0",
        }
    }
}

static KNOWN: LazyLock<Mutex<HashMap<String, (Evidence, i64)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn known() -> std::sync::MutexGuard<'static, HashMap<String, (Evidence, i64)>> {
    KNOWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records that `domain` sends mail over XMPP (lower-cased; the latest evidence wins).
pub fn learn(domain: &str, evidence: Evidence) {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return;
    }
    let mut k = known();
    if k.get(&d).map(|(e, _)| *e) != Some(evidence) {
        tracing::debug!(domain = %d, evidence = evidence.as_str(), "domain known to send mail over XMPP");
    }
    k.insert(d, (evidence, crate::now()));
}

/// What is known about `domain`, if anything.
pub fn lookup(domain: &str) -> Option<Evidence> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    known().get(&d).map(|(e, _)| *e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_case_insensitively() {
        assert_eq!(lookup("known-domains-test.example"), None);
        learn("Known-Domains-Test.Example.", Evidence::Disco);
        assert_eq!(lookup("known-domains-test.example"), Some(Evidence::Disco));
        learn("known-domains-test.example", Evidence::S2sMail);
        assert_eq!(
            lookup("KNOWN-DOMAINS-TEST.EXAMPLE"),
            Some(Evidence::S2sMail)
        );
    }
}
