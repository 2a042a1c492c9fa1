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

use crate::live::Live;
use crate::s2s::resolve::{ResolveError, Resolver};

pub struct Router {
    resolver: Resolver,
    /// For `[postfix] cache_secs` / `negative_cache_secs`, read at each look-up.
    live: Live,
    cache: Mutex<HashMap<String, (bool, Instant)>>,
}

/// Most cached domains; beyond it the cache is emptied (answers are cheap to redo).
const MAX_CACHED: usize = 100_000;

impl Router {
    pub fn new(live: &Live) -> Result<Router, ResolveError> {
        Ok(Router {
            resolver: Resolver::new(live)?,
            live: live.clone(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `domain` (normalized) is reached over XMPP; `Err` when DNS failed.
    pub async fn takes_xmpp(&self, domain: &str) -> Result<bool, String> {
        // Routes are asked before the cache and never cached: a SIGHUP that adds or
        // removes one counts at once.
        if self.resolver.has_route(domain) {
            return Ok(true);
        }
        {
            let cfg = self.live.get();
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((yes, at)) = cache.get(domain) {
                let ttl = Duration::from_secs(if *yes {
                    cfg.postfix.cache_secs
                } else {
                    cfg.postfix.negative_cache_secs
                });
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
