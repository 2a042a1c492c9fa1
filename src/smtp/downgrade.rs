//! Downgrade protection (`[smtp] downgrade`): SMTP mail from an untrusted client on the MX
//! listener whose envelope sender or header From domain sends its mail over XMPP. Such a
//! domain is a local domain (its mail never comes from outside over SMTP) or one in
//! [`crate::known_domains`] (it delivered mail to us over XMPP, or announces
//! urn:xmpp:mta:0). Its mail arriving over SMTP is a forgery or a downgrade: refused with
//! `550 5.7.1`, or tagged with an `X-Xmta-Downgrade:` header and an
//! `x-xmta-downgrade=fail` result in Authentication-Results.
//!
//! Known cost of checking the header From too: a mailing list that relays a local user's
//! post back without rewriting From (as lists do for DMARC p=reject domains) is refused
//! under "refuse"; "tag" keeps such mail.

use crate::config::Config;
use crate::known_domains::{self, Evidence};

/// Why `domain` must not arrive over SMTP, if it must not.
pub fn reason(cfg: &Config, domain: &str) -> Option<&'static str> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return None;
    }
    if cfg.is_local_domain(&d) {
        return Some("is a local domain");
    }
    known_domains::lookup(&d).map(Evidence::as_str)
}

/// The domains of the header From addresses of `message` (header block only).
pub fn header_from_domains(message: &[u8]) -> Vec<String> {
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(message) else {
        return Vec::new();
    };
    let Some(from) = parsed.from() else {
        return Vec::new();
    };
    from.iter()
        .filter_map(|a| a.address())
        .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
        .collect()
}

/// The header From addresses of `message`, canonical where they parse (raw otherwise).
pub fn header_from_addresses(message: &[u8]) -> Vec<String> {
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(message) else {
        return Vec::new();
    };
    let Some(from) = parsed.from() else {
        return Vec::new();
    };
    from.iter()
        .map(|a| {
            let raw = a.address().unwrap_or("");
            crate::addr::MailAddress::parse(raw)
                .map(|m| m.canonical())
                .unwrap_or_else(|_| raw.to_string())
        })
        .collect()
}
