//! Checking IMAP logins against xmta's users (argon2 hashes, as `xmta user add` writes them)
//! and limiting failed logins per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};

use crate::store::Store;

/// Whether `password` is the user's. Unknown users, bad hashes and wrong passwords are all
/// `false`. Runs argon2 off the async threads.
pub async fn verify(store: &Store, user: &str, password: &[u8]) -> bool {
    let record = match store.user(user) {
        Ok(Some(r)) => r,
        _ => return false,
    };
    let password = password.to_vec();
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&record.password_hash).is_ok_and(|hash| {
            argon2::Argon2::default()
                .verify_password(&password, &hash)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// Counts failed logins per client address in a sliding window: after `max` failures within
/// `window`, logins from that address are refused without checking until the window passes.
pub struct LoginLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginLimiter {
    pub fn new(max: u32, window: Duration) -> LoginLimiter {
        LoginLimiter {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may try a login now.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(&ip) {
            Some((_, since)) if since.elapsed() >= self.window => {
                map.remove(&ip);
                true
            }
            Some((n, _)) => *n < self.max,
            None => true,
        }
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget stale entries now and then so the map cannot grow without bound.
        if map.len() > 10_000 {
            let window = self.window;
            map.retain(|_, (_, since)| since.elapsed() < window);
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_max_failures() {
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(l.allowed(ip));
        l.failed(ip);
        assert!(l.allowed(ip));
        l.failed(ip);
        assert!(!l.allowed(ip));
        assert!(l.allowed(other));
        let short = LoginLimiter::new(1, Duration::from_millis(1));
        short.failed(ip);
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.allowed(ip));
    }
}
