//! Per-peer rate limits on received mail (`[s2s] peer_messages_*`, `peer_bytes_*`): a token
//! bucket per sending domain, so one domain cannot flood the store while others wait.
//!
//! A mail over the limit is answered with a `wait` error (XEP-MTA §12.2), never dropped:
//! the sender keeps it queued and retries once the bucket has refilled.

use std::collections::HashMap;
use std::time::Instant;

/// One bucket: `capacity` tokens, refilled at `per_minute / 60` tokens a second.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of one kind (messages or octets) for all peers.
#[derive(Debug)]
pub struct PeerBuckets {
    per_minute: u64,
    capacity: u64,
    buckets: HashMap<String, Bucket>,
}

impl PeerBuckets {
    /// `per_minute = 0` disables the limit.
    pub fn new(per_minute: u64, capacity: u64) -> PeerBuckets {
        PeerBuckets {
            per_minute,
            capacity: capacity.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes `cost` tokens for `peer` at `now`; false (nothing taken) when the bucket does
    /// not hold them. A cost above the bucket's size passes once the bucket is full (and
    /// leaves it in debt), so a large mail is slowed, never refused for ever.
    pub fn take(&mut self, peer: &str, cost: u64, now: Instant) -> bool {
        if !self.available(peer, cost, now) {
            return false;
        }
        if let Some(b) = self.buckets.get_mut(peer) {
            b.tokens -= cost as f64;
        }
        true
    }

    /// Whether `peer` has `cost` tokens at `now` (refilling its bucket; nothing taken).
    pub fn available(&mut self, peer: &str, cost: u64, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let cap = self.capacity as f64;
        let rate = self.per_minute as f64 / 60.0;
        if self.buckets.len() > 10_000 {
            // Forget peers whose buckets are full again (they cost nothing to recreate).
            self.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < cap
            });
        }
        let b = self.buckets.entry(peer.to_string()).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(cap);
        b.at = now;
        let need = (cost as f64).min(cap);
        b.tokens + 1e-9 >= need
    }

    /// Seconds until `peer` has `cost` tokens again (for the refusal's text).
    pub fn wait_secs(&self, peer: &str, cost: u64) -> u64 {
        if self.per_minute == 0 {
            return 0;
        }
        let rate = self.per_minute as f64 / 60.0;
        let have = self.buckets.get(peer).map(|b| b.tokens).unwrap_or(0.0);
        let need = (cost as f64).min(self.capacity as f64);
        ((need - have).max(0.0) / rate).ceil() as u64
    }

    /// Puts new limits in force (a config reload); the buckets keep their tokens, capped
    /// to the new size at their next refill.
    pub fn set_limits(&mut self, per_minute: u64, capacity: u64) {
        self.per_minute = per_minute;
        self.capacity = capacity.max(1);
    }

    pub fn per_minute(&self) -> u64 {
        self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = PeerBuckets::new(60, 2);
        assert!(b.take("a", 1, t0));
        assert!(b.take("a", 1, t0));
        assert!(!b.take("a", 1, t0));
        // Another peer has its own bucket.
        assert!(b.take("b", 1, t0));
        assert_eq!(b.wait_secs("a", 1), 1);
        assert!(b.take("a", 1, t0 + Duration::from_millis(1000)));
        assert!(!b.take("a", 1, t0 + Duration::from_millis(1100)));
    }

    #[test]
    fn large_cost_passes_when_full() {
        let t0 = Instant::now();
        let mut b = PeerBuckets::new(600, 100);
        assert!(b.take("a", 1000, t0));
        // In debt: 900 tokens to repay at 10/s before even 1 more.
        assert!(!b.take("a", 1, t0 + Duration::from_secs(60)));
        assert!(b.take("a", 1, t0 + Duration::from_secs(91)));
    }

    #[test]
    fn available_takes_nothing() {
        let t0 = Instant::now();
        let mut b = PeerBuckets::new(60, 1);
        assert!(b.available("a", 1, t0));
        assert!(b.available("a", 1, t0));
        assert!(b.take("a", 1, t0));
        assert!(!b.available("a", 1, t0));
    }

    #[test]
    fn zero_disables() {
        let mut b = PeerBuckets::new(0, 0);
        for _ in 0..1000 {
            assert!(b.take("a", u64::MAX, Instant::now()));
        }
    }
}
