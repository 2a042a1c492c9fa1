//! xmta: an XMPP mail transfer agent.
//!
//! Mail moves between domains over XMPP server-to-server streams that prove which domain
//! is speaking (Server Dialback, TLS), instead of SMTP sessions that believe whatever a
//! connecting host claims. Layout:
//!
//! - `s2s`: the streams and their authentication (dialback, STARTTLS, SRV).
//! - `mta`: the mail-over-XMPP protocol of `xep-drafts/` (payload, receiving side).
//! - `delivery`: submission, the outbound queue, retries, bounces.
//! - `store`: the durable redb store (mailboxes, queue, users, duplicate memory).
//! - `registry`: registered servers (RFC 5782-style DNS zone) asked for authenticated peers.
//! - `smtp`: SMTP (MX role), submission and LMTP listeners.
//! - `known_domains`: domains known to send mail over XMPP (SMTP downgrade protection).
//! - `server`, `admin`, `cli`: running it and talking to it; `live`: the config handle
//!   SIGHUP swaps.

pub mod addr;
pub mod admin;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod imap;
pub mod known_domains;
pub mod live;
pub mod metrics;
pub mod mta;
pub mod ops;
pub mod postfix;
pub mod registry;
pub mod s2s;
pub mod server;
pub mod smtp;
pub mod srs;
pub mod store;
pub mod xml;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A new globally unique mail id (128 random bits; XEP-MTA §7.2).
pub fn new_mail_id() -> String {
    let b: [u8; 16] = rand::random();
    hex::encode(b)
}

/// RFC 5322 date-time in UTC, e.g. "Tue, 01 Dec 2026 08:44:32 +0000".
pub fn rfc5322_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if mo <= 2 { 1 } else { 0 };
    let wd = (days + 4).rem_euclid(7); // 1970-01-01 was a Thursday
    const WD: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[wd as usize],
        d,
        MO[(mo - 1) as usize],
        y,
        h,
        m,
        s
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_format() {
        assert_eq!(super::rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            super::rfc5322_date(1_796_114_672),
            "Tue, 01 Dec 2026 08:44:32 +0000"
        );
    }
}
