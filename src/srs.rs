//! Sender Rewriting Scheme (SRS0) for mail the SMTP gateway relays with a foreign sender.
//!
//! A receiving xmta checks that a mail's envelope sender is in the domain its s2s stream
//! authenticated (XEP-MTA §9.1). When a gateway relays mail from `user@legacy.test`
//! (Postfix forwarding, a trusted client), it therefore sends it with the envelope sender
//! `SRS0=HHHHH=TT=legacy.test=user@a.test` in its own domain; bounces to that address come
//! back to the gateway, which checks and reverses it and forwards the bounce to the
//! original sender. The header From is never touched.
//!
//! The classic scheme (Shevek's SRS, as in libsrs2/postsrsd): `TT` is the day number
//! (days since the epoch, modulo 1024) in two base32 characters; `HHHHH` the first 25 bits
//! of HMAC-SHA1(key, TT || lowercase(domain) || local) in base32, compared without regard
//! to case (addresses may be case-folded on the way back). The key is a random secret
//! kept in the store under `[gateway] srs_secret`, generated on first start like the
//! dialback secret. An address older than `[gateway] srs_max_age_days` is refused.

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::addr::MailAddress;
use crate::config::Config;
use crate::store::{Op, OpResult, Store};

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const HASH_CHARS: usize = 5;
const DAYS_WRAP: i64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrsError {
    #[error("not an SRS0 address")]
    NotSrs,
    #[error("malformed SRS0 address")]
    Malformed,
    #[error("SRS0 hash does not match")]
    BadHash,
    #[error("SRS0 address expired")]
    Expired,
}

/// Whether a localpart is in SRS form (`SRS0=` or `SRS1=`, any case).
pub fn is_srs(local: &str) -> bool {
    local.len() > 5
        && local
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("SRS0=") || p.eq_ignore_ascii_case("SRS1="))
}

fn b32(mut v: u64, n: usize) -> String {
    let mut out = vec![b'A'; n];
    for i in (0..n).rev() {
        out[i] = B32[(v & 31) as usize];
        v >>= 5;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn b32_value(s: &str) -> Option<u64> {
    let mut v = 0u64;
    for c in s.bytes() {
        let c = c.to_ascii_uppercase();
        v = (v << 5) | B32.iter().position(|&x| x == c)? as u64;
    }
    Some(v)
}

fn hash(key: &[u8], tt: &str, domain: &str, local: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
        return String::new(); // HMAC takes keys of any length; not reached.
    };
    mac.update(tt.to_ascii_uppercase().as_bytes());
    mac.update(domain.to_ascii_lowercase().as_bytes());
    mac.update(local.as_bytes());
    let d = mac.finalize().into_bytes();
    let first = u64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
    let bits = first >> (32 - 5 * HASH_CHARS);
    b32(bits, HASH_CHARS)
}

fn day(now: i64) -> i64 {
    (now.div_euclid(86_400)).rem_euclid(DAYS_WRAP)
}

/// The SRS0 localpart for `local@domain` at time `now` (unix seconds).
pub fn forward_local(key: &[u8], local: &str, domain: &str, now: i64) -> String {
    let tt = b32(day(now) as u64, 2);
    let h = hash(key, &tt, domain, local);
    format!("SRS0={h}={tt}={domain}={local}")
}

/// The original `local@domain` an SRS0 localpart stands for, checked (hash, age).
pub fn reverse_local(
    key: &[u8],
    srs_local: &str,
    now: i64,
    max_age_days: u32,
) -> Result<String, SrsError> {
    if !is_srs(srs_local) {
        return Err(SrsError::NotSrs);
    }
    if !srs_local[..5].eq_ignore_ascii_case("SRS0=") {
        return Err(SrsError::Malformed); // SRS1 is never generated here.
    }
    let mut parts = srs_local[5..].splitn(4, '=');
    let (Some(h), Some(tt), Some(domain), Some(local)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SrsError::Malformed);
    };
    if h.len() != HASH_CHARS || tt.len() != 2 || domain.is_empty() || local.is_empty() {
        return Err(SrsError::Malformed);
    }
    let then = b32_value(tt).ok_or(SrsError::Malformed)? as i64;
    if !h.eq_ignore_ascii_case(&hash(key, tt, domain, local)) {
        return Err(SrsError::BadHash);
    }
    let age = (day(now) - then).rem_euclid(DAYS_WRAP);
    if age > i64::from(max_age_days) {
        return Err(SrsError::Expired);
    }
    Ok(format!("{local}@{domain}"))
}

/// The envelope sender relayed mail goes out with: the sender itself when null or in a
/// local domain; an SRS0 address in the first local domain when foreign and
/// `[gateway] srs` is on; `None` when it cannot be relayed (SRS off, no key, or an address
/// whose SRS form is not a valid mailbox).
pub fn outbound_sender(cfg: &Config, store: &Store, sender: &str) -> Option<String> {
    if sender.is_empty() {
        return Some(String::new());
    }
    let a = MailAddress::parse(sender).ok()?;
    if cfg.is_local_domain(a.domain()) {
        return Some(sender.to_string());
    }
    if !cfg.gateway.srs {
        return None;
    }
    let key = key(store, &cfg.gateway.srs_secret)?;
    let ours = cfg.server.domains.first()?;
    let local = forward_local(&key, a.local(), a.domain(), crate::now());
    let out = format!("{local}@{ours}");
    MailAddress::parse(&out).ok().map(|_| out)
}

/// For a recipient in a local domain: `None` when it is no SRS address, else the original
/// address it stands for or why it is refused.
pub fn reverse_rcpt(
    cfg: &Config,
    store: &Store,
    rcpt: &MailAddress,
) -> Option<Result<String, SrsError>> {
    if !is_srs(rcpt.local()) {
        return None;
    }
    let Some(key) = key(store, &cfg.gateway.srs_secret) else {
        return Some(Err(SrsError::BadHash));
    };
    Some(
        reverse_local(
            &key,
            rcpt.local(),
            crate::now(),
            cfg.gateway.srs_max_age_days,
        )
        .and_then(|orig| {
            MailAddress::parse(&orig)
                .map(|a| a.to_string())
                .map_err(|_| SrsError::Malformed)
        }),
    )
}

/// The SRS key from the store, if generated.
pub fn key(store: &Store, name: &str) -> Option<Vec<u8>> {
    store.secret(name).ok().flatten()
}

/// Generates the SRS key on first start (kept, so addresses survive restarts).
pub async fn ensure_key(store: &Store, name: &str) -> Result<(), String> {
    if store.secret(name).map_err(|e| e.to_string())?.is_some() {
        return Ok(());
    }
    let fresh: [u8; 32] = rand::random();
    let r = store
        .apply(vec![Op::PutSecret {
            name: name.into(),
            value: fresh.to_vec(),
            only_if_absent: true,
        }])
        .await
        .map_err(|e| e.to_string())?;
    match r.into_iter().next() {
        Some(OpResult::Secret(_)) => Ok(()),
        _ => Err("unexpected store answer for the SRS secret".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &[u8] = b"test key";
    const NOW: i64 = 1_790_000_000;

    #[test]
    fn round_trip_case_insensitive_and_checked() {
        let l = forward_local(K, "Bob.Smith", "Legacy.test", NOW);
        assert!(l.starts_with("SRS0="), "{l}");
        assert_eq!(l.split('=').count(), 5, "{l}");
        assert_eq!(
            reverse_local(K, &l, NOW, 21).unwrap(),
            "Bob.Smith@Legacy.test"
        );
        // The hash and timestamp survive case folding (the original localpart keeps
        // its case in the hash, as it must be restored exactly).
        let (h, rest) = l[5..].split_once('=').unwrap();
        let folded = format!("srs0={}={rest}", h.to_ascii_lowercase());
        assert_eq!(
            reverse_local(K, &folded, NOW, 21).unwrap(),
            "Bob.Smith@Legacy.test"
        );
        // 20 days later still good, 22 days later expired; across the 1024-day wrap too.
        assert!(reverse_local(K, &l, NOW + 20 * 86_400, 21).is_ok());
        assert_eq!(
            reverse_local(K, &l, NOW + 22 * 86_400, 21),
            Err(SrsError::Expired)
        );
        let wrap = 1023 * 86_400 + 3600;
        let w = forward_local(K, "u", "d.test", wrap);
        assert!(reverse_local(K, &w, wrap + 2 * 86_400, 21).is_ok());
        // Another key, a changed domain or local part: refused.
        assert_eq!(reverse_local(b"other", &l, NOW, 21), Err(SrsError::BadHash));
        let forged = l.replace("Legacy.test", "evil.test");
        assert_eq!(reverse_local(K, &forged, NOW, 21), Err(SrsError::BadHash));
        assert_eq!(
            reverse_local(K, "SRS0=AAAAA=AA=x.test=u", NOW, 21),
            Err(SrsError::BadHash)
        );
        assert_eq!(
            reverse_local(K, "SRS0=AAAAA=A!=x.test=u", NOW, 21),
            Err(SrsError::Malformed)
        );
        assert_eq!(
            reverse_local(K, "SRS0=x=y", NOW, 21),
            Err(SrsError::Malformed)
        );
        assert_eq!(reverse_local(K, "bob", NOW, 21), Err(SrsError::NotSrs));
        // A localpart holding '=' comes back whole.
        let e = forward_local(K, "a=b", "d.test", NOW);
        assert_eq!(reverse_local(K, &e, NOW, 21).unwrap(), "a=b@d.test");
    }
}
