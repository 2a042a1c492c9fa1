//! SMTP AUTH (RFC 4954) for submission: the PLAIN (RFC 4616) and LOGIN mechanisms, checked
//! against the users' argon2 password hashes in the store, and a per-client-address limit
//! on failed attempts (`[smtp] auth_max_failures` within `auth_failure_window_secs`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::addr::MailAddress;
use crate::store::Store;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaslError {
    #[error("not valid base64")]
    Base64,
    #[error("not UTF-8")]
    Utf8,
    #[error("malformed PLAIN response")]
    Malformed,
}

/// Decodes one base64 SASL line ("=" is the empty response).
pub fn decode_b64(line: &str) -> Result<String, SaslError> {
    let line = line.trim();
    if line == "=" {
        return Ok(String::new());
    }
    let raw = B64.decode(line.as_bytes()).map_err(|_| SaslError::Base64)?;
    String::from_utf8(raw).map_err(|_| SaslError::Utf8)
}

/// A PLAIN response: authzid NUL authcid NUL password. Returns (authzid, authcid, password).
pub fn decode_plain(line: &str) -> Result<(String, String, String), SaslError> {
    let s = decode_b64(line)?;
    let mut parts = s.split('\0');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(z), Some(c), Some(p), None) if !c.is_empty() => {
            Ok((z.to_string(), c.to_string(), p.to_string()))
        }
        _ => Err(SaslError::Malformed),
    }
}

/// A hash of a random password, verified when the user does not exist so that an unknown
/// user takes as long to refuse as a wrong password.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let pw = hex::encode(rand::random::<[u8; 16]>());
    crate::cli::hash_password(&pw).unwrap_or_default()
});

/// The canonical address of `user` when `password` is right (argon2 runs on a blocking
/// thread).
pub async fn check_password(store: &Store, user: &str, password: &str) -> Option<String> {
    let canonical = MailAddress::parse(user).ok().map(|a| a.canonical());
    let record = match &canonical {
        Some(c) => store.user(c).ok().flatten(),
        None => None,
    };
    let hash = record.as_ref().map(|r| r.password_hash.clone());
    let pw = password.to_string();
    let ok = tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        PasswordHash::new(&hash)
            .map(|h| {
                argon2::Argon2::default()
                    .verify_password(pw.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    (ok && record.is_some()).then_some(canonical).flatten()
}

/// Failed AUTH attempts per client address within a sliding window.
pub struct FailureLimit {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl FailureLimit {
    pub fn new(max: u32, window: Duration) -> FailureLimit {
        FailureLimit {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn recent(
        &self,
        ip: IpAddr,
    ) -> (
        std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>>,
        usize,
    ) {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let n = match m.get_mut(&ip) {
            Some(q) => {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.window)
                {
                    q.pop_front();
                }
                q.len()
            }
            None => 0,
        };
        if n == 0 {
            m.remove(&ip);
        }
        (m, n)
    }

    /// Whether `ip` used up its failed attempts.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        self.recent(ip).1 >= self.max as usize
    }

    /// Records a failure; returns whether `ip` is now blocked.
    pub fn failed(&self, ip: IpAddr) -> bool {
        let (mut m, n) = self.recent(ip);
        // Bound the memory an address-hopping attacker can make us use.
        if m.len() >= 100_000 && !m.contains_key(&ip) {
            m.clear();
        }
        m.entry(ip).or_default().push_back(Instant::now());
        n + 1 >= self.max as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain() {
        let l = B64.encode(b"\0alice@a.test\0pw");
        assert_eq!(
            decode_plain(&l),
            Ok((String::new(), "alice@a.test".into(), "pw".into()))
        );
        assert_eq!(decode_plain("!!"), Err(SaslError::Base64));
        assert_eq!(
            decode_plain(&B64.encode(b"alice")),
            Err(SaslError::Malformed)
        );
        assert_eq!(decode_b64("="), Ok(String::new()));
    }

    #[test]
    fn limit() {
        let l = FailureLimit::new(2, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!l.blocked(ip));
        assert!(!l.failed(ip));
        assert!(l.failed(ip));
        assert!(l.blocked(ip));
        assert!(!l.blocked(other));
        let short = FailureLimit::new(1, Duration::from_millis(1));
        short.failed(ip);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!short.blocked(ip));
    }
}
