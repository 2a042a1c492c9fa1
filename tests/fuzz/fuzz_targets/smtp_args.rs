//! xmta's own code around smtp-proto's command parser: the MAIL FROM / RCPT TO mailbox and
//! its JID (src/addr.rs) and AUTH PLAIN / LOGIN decoding (src/smtp/auth.rs). smtp-proto
//! splits the command line; what the address means, its canonical key and its JID are
//! xmta's. The first byte picks the part:
//!
//! - a mailbox: if it parses, its canonical key parses back to the same key, its display
//!   form parses back to the same localpart and domain within the length limit, its domain is
//!   already normalized, and its JID (if any) is what the jid crate normalizes to and names
//!   the same mailbox.
//! - a JID: if it names a mailbox, that mailbox's key and JID round-trip the same way;
//!   XEP-0106 escaping round-trips for any string.
//! - SASL: decoding never panics; a PLAIN response of any three strings decodes to them.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::fuzz_target;
use xmta::addr::{
    MAX_ADDRESS_LEN, MailAddress, jid_escape_local, jid_unescape_local, normalize_domain,
};
use xmta::smtp::auth::{SaslError, decode_b64, decode_plain};

/// The key and JID of a parsed mailbox agree with each other.
fn check_mailbox(a: &MailAddress) {
    let key = a.canonical();
    match MailAddress::parse(&key) {
        Ok(b) => assert_eq!(b.canonical(), key, "the key does not parse back to itself"),
        Err(e) => panic!("the key {key:?} does not parse: {e}"),
    }
    assert_eq!(
        normalize_domain(a.domain()).as_deref(),
        Ok(a.domain()),
        "the domain is not normalized"
    );
    if let Some(j) = a.to_jid() {
        match jid::BareJid::new(&j) {
            Ok(n) => assert_eq!(n.as_str(), j, "the JID is not in normalized form"),
            Err(e) => panic!("the JID {j:?} is not a JID: {e}"),
        }
        match MailAddress::from_jid(&j) {
            Ok(b) => assert_eq!(b.canonical(), key, "the JID {j:?} names another mailbox"),
            Err(e) => panic!("the JID {j:?} does not name a mailbox: {e}"),
        }
    }
}

fn mailbox(s: &str) {
    let Ok(a) = MailAddress::parse(s) else {
        return;
    };
    let shown = a.to_string();
    assert!(
        shown.len() <= MAX_ADDRESS_LEN,
        "{shown:?} is over the limit"
    );
    match MailAddress::parse(&shown) {
        Ok(b) => {
            assert_eq!(b.local(), a.local(), "{shown:?}: localpart changed");
            assert_eq!(b.domain(), a.domain(), "{shown:?}: domain changed");
        }
        Err(e) => panic!("the display form {shown:?} does not parse: {e}"),
    }
    check_mailbox(&a);
}

fn jid(s: &str) {
    assert_eq!(
        jid_unescape_local(&jid_escape_local(s)),
        s,
        "XEP-0106 round trip"
    );
    if let Ok(a) = MailAddress::from_jid(s) {
        check_mailbox(&a);
    }
}

fn sasl(s: &str) {
    let _ = decode_b64(s);
    let _ = decode_plain(s);
    let enc = B64.encode(s.as_bytes());
    assert_eq!(decode_b64(&enc).as_deref(), Ok(s), "base64 round trip");
    assert_eq!(
        decode_b64(&format!(" {enc}\t")).as_deref(),
        Ok(s),
        "surrounding space"
    );
    let parts: Vec<&str> = s.split('\0').collect();
    let want = match parts[..] {
        [z, c, p] if !c.is_empty() => Ok((z.to_string(), c.to_string(), p.to_string())),
        _ => Err(SaslError::Malformed),
    };
    assert_eq!(decode_plain(&enc), want, "PLAIN");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let s = String::from_utf8_lossy(rest);
    match mode % 3 {
        0 => mailbox(&s),
        1 => jid(&s),
        _ => sasl(&s),
    }
});
