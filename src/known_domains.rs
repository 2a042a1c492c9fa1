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
//! The memory is kept in the store (table `known_domains`), so a restart does not open a
//! window for downgrades, in the spirit of HSTS and MTA-STS: evidence is remembered for
//! `[smtp] downgrade_memory_days` after it was last seen, then forgotten (a domain that
//! moved back to SMTP is refused no longer). Lookups are answered from memory; [`learn`]
//! hands back the store op to write when the domain is new, its evidence changed, or it
//! was last written more than [`REFRESH_SECS`] ago; the caller commits it before it
//! acknowledges the mail that taught it (so one commit per domain per day at most).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{LazyLock, Mutex};

use crate::store::{KnownDomain, Op, Store};

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

    fn code(self) -> u8 {
        match self {
            Evidence::S2sMail => 1,
            Evidence::Disco => 2,
        }
    }

    fn from_code(c: u8) -> Option<Evidence> {
        match c {
            1 => Some(Evidence::S2sMail),
            2 => Some(Evidence::Disco),
            _ => None,
        }
    }
}

/// A domain seen again is written to the store at most this often (its age is kept to
/// the day).
pub const REFRESH_SECS: i64 = 86_400;

/// (evidence, last seen, last written to the store).
type Entry = (Evidence, i64, i64);

static KNOWN: LazyLock<Mutex<HashMap<String, Entry>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
/// Evidence older than this many seconds is forgotten (0: never).
static MAX_AGE: AtomicI64 = AtomicI64::new(0);

fn known() -> std::sync::MutexGuard<'static, HashMap<String, Entry>> {
    KNOWN.lock().unwrap_or_else(|p| p.into_inner())
}

fn normalize(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// Changes how long evidence is remembered (SIGHUP); entries already forgotten at start
/// are not brought back.
pub fn set_memory_days(memory_days: u32) {
    MAX_AGE.store(i64::from(memory_days) * 86_400, Ordering::Relaxed);
}

/// Loads the remembered domains (those seen within `memory_days`; 0: all). Called by
/// `xmta serve` at start; returns how many were loaded.
pub fn start(store: &Store, memory_days: u32) -> Result<usize, String> {
    set_memory_days(memory_days);
    let max_age = MAX_AGE.load(Ordering::Relaxed);
    let now = crate::now();
    let mut n = 0;
    {
        let mut k = known();
        for d in store.known_domains().map_err(|e| e.to_string())? {
            let Some(e) = Evidence::from_code(d.evidence) else {
                continue;
            };
            if max_age > 0 && now - d.last_seen > max_age {
                continue;
            }
            n += 1;
            k.entry(d.domain).or_insert((e, d.last_seen, d.last_seen));
        }
    }
    Ok(n)
}

/// Records that `domain` sends mail over XMPP (lower-cased; having sent mail over XMPP
/// outranks a disco answer).
/// Returns the op that remembers it in the store, when one is due.
#[must_use = "commit the op, or the evidence is forgotten at restart"]
pub fn learn(domain: &str, evidence: Evidence) -> Option<Op> {
    let d = normalize(domain);
    if d.is_empty() {
        return None;
    }
    let now = crate::now();
    let (evidence, write) = {
        let mut k = known();
        let old = k.get(&d).copied();
        // Having sent us mail is the stronger evidence: disco does not replace it.
        let (evidence, write) = match old {
            Some((e, _, written)) => {
                let ev = if e == Evidence::S2sMail { e } else { evidence };
                (ev, ev != e || now - written >= REFRESH_SECS)
            }
            None => (evidence, true),
        };
        if old.map(|(e, _, _)| e) != Some(evidence) {
            tracing::debug!(domain = %d, evidence = evidence.as_str(), "domain known to send mail over XMPP");
        }
        let written = match (write, old) {
            (false, Some((_, _, w))) => w,
            _ => now,
        };
        k.insert(d.clone(), (evidence, now, written));
        (evidence, write)
    };
    write.then(|| Op::LearnDomains {
        entries: vec![KnownDomain {
            domain: d,
            evidence: evidence.code(),
            last_seen: now,
        }],
    })
}

/// Commits what [`learn`] returned, if anything; a failure is logged (the evidence stays
/// in memory and is written again at the next refresh).
pub async fn remember(store: &Store, op: Option<Op>) {
    if let Some(op) = op
        && let Err(e) = store.apply(vec![op]).await
    {
        tracing::warn!(error = %e, "could not remember a domain known to send mail over XMPP");
    }
}

/// What is known about `domain`, if anything (and not older than the memory).
pub fn lookup(domain: &str) -> Option<Evidence> {
    let d = normalize(domain);
    let max_age = MAX_AGE.load(Ordering::Relaxed);
    let k = known();
    let (e, seen, _) = k.get(&d)?;
    if max_age > 0 && crate::now() - seen > max_age {
        return None;
    }
    Some(*e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_case_insensitively() {
        assert_eq!(lookup("known-domains-test.example"), None);
        assert!(learn("Known-Domains-Test.Example.", Evidence::Disco).is_some());
        assert_eq!(lookup("known-domains-test.example"), Some(Evidence::Disco));
        // Seen again the same way: nothing to write until the refresh is due.
        assert!(learn("known-domains-test.example", Evidence::Disco).is_none());
        // Stronger evidence is written at once, and a disco answer does not replace it.
        assert!(learn("known-domains-test.example", Evidence::S2sMail).is_some());
        assert!(learn("known-domains-test.example", Evidence::Disco).is_none());
        assert_eq!(
            lookup("KNOWN-DOMAINS-TEST.EXAMPLE"),
            Some(Evidence::S2sMail)
        );
    }

    #[test]
    fn evidence_codes_round_trip() {
        for e in [Evidence::S2sMail, Evidence::Disco] {
            assert_eq!(Evidence::from_code(e.code()), Some(e));
        }
        assert_eq!(Evidence::from_code(0), None);
    }
}
