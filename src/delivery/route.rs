//! Which domains have an XMPP server, cached: the first half of the rule the Postfix
//! socketmap and the queue share (the second half, urn:xmpp:mta:0 in disco#info, is
//! `Delivery::takes_mail_over_xmpp`). Plain XMPP domains go to the smarthost when one is
//! set and `[gateway] plain_xmpp = "smarthost"`; otherwise they get body-only XMPP.
//!
//! A domain has an XMPP server when it has a `[s2s.routes]` entry (a static SRV) or an SRV
//! `_xmpp-server._tcp` record (other than the "." refusal). A domain without either
//! is a legacy mail domain: relayed to `[smtp] smarthost` when one is set. A failed DNS
//! lookup decides nothing (the caller defers, the socketmap answers TEMP) and is not cached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::s2s::resolve::{ResolveError, Resolver};

pub struct Router {
    resolver: Resolver,
    positive_ttl: Duration,
    negative_ttl: Duration,
    cache: Mutex<HashMap<String, (bool, Instant)>>,
}

/// Most cached domains; beyond it the cache is emptied (answers are cheap to redo).
const MAX_CACHED: usize = 100_000;

impl Router {
    pub fn new(cfg: &Config) -> Result<Router, ResolveError> {
        Ok(Router {
            resolver: Resolver::new(cfg)?,
            positive_ttl: Duration::from_secs(cfg.postfix.cache_secs),
            negative_ttl: Duration::from_secs(cfg.postfix.negative_cache_secs),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `domain` (normalized) is reached over XMPP; `Err` when DNS failed.
    pub async fn takes_xmpp(&self, domain: &str) -> Result<bool, String> {
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((yes, at)) = cache.get(domain) {
                let ttl = if *yes {
                    self.positive_ttl
                } else {
                    self.negative_ttl
                };
                if at.elapsed() < ttl {
                    return Ok(*yes);
                }
            }
        }
        let yes = self
            .resolver
            .has_xmpp_srv(domain)
            .await
            .map_err(|e| e.to_string())?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(domain.to_string(), (yes, Instant::now()));
        Ok(yes)
    }
}
