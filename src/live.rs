//! The running configuration, swappable on SIGHUP (`crate::server` reloads it).
//!
//! [`Live`] is a shared handle to the current [`Config`] (an `arc_swap::ArcSwap`): the hot
//! paths take a snapshot (`get()`, one atomic reference count) per connection, per
//! transaction or per stanza, so a reload never blocks them and a connection never sees a
//! half-applied config. [`restart_only`] is the one list of keys that a reload cannot
//! change in a running process (listeners, the store, TLS material, resolvers): a reload
//! keeps their running values, so what `get()` returns is always what is really in force.
//!
//! [`Slots`] counts connections against a limit read from the live config at each accept,
//! so `max_connections` keys change live too (a lower limit refuses new connections until
//! enough old ones have ended; none is cut).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::config::Config;

/// A shared handle to the configuration in force.
#[derive(Clone)]
pub struct Live(Arc<ArcSwap<Config>>);

impl Live {
    pub fn new(cfg: Config) -> Live {
        Live(Arc::new(ArcSwap::from_pointee(cfg)))
    }

    /// A snapshot of the configuration in force now.
    pub fn get(&self) -> Arc<Config> {
        self.0.load_full()
    }

    /// Puts `cfg` in force for everything that reads the handle from now on.
    pub fn set(&self, cfg: Config) {
        self.0.store(Arc::new(cfg));
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Live").finish_non_exhaustive()
    }
}

/// Copies into `new` the running value of every key that needs a restart, and names the
/// ones whose value in `new` differed (so the reload can say they are not applied).
///
/// Everything not listed here is read from the live config where it is used and takes
/// effect on reload (see the module doc of `crate::server` for the list and its rules).
pub fn restart_only(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($name:literal => $($field:ident).+;)*) => {$(
            if format!("{:?}", running.$($field).+) != format!("{:?}", new.$($field).+) {
                changed.push($name);
                new.$($field).+ = running.$($field).+.clone();
            }
        )*};
    }
    keep! {
        "server.domains" => server.domains;
        "server.data_dir" => server.data_dir;
        "server.admin_socket" => server.admin_socket;
        "s2s.listen" => s2s.listen;
        "s2s.tls_listen" => s2s.tls_listen;
        "s2s.tls" => s2s.tls;
        "s2s.cert" => s2s.cert;
        "s2s.key" => s2s.key;
        "s2s.ca" => s2s.ca;
        "dns.nameservers" => dns.nameservers;
        "delivery.concurrency" => delivery.concurrency;
        "log.format" => log.format;
        "smtp.listen" => smtp.listen;
        "smtp.lmtp" => smtp.lmtp;
        "smtp.submission" => smtp.submission;
        "smtp.submissions" => smtp.submissions;
        "smtp.hostname" => smtp.hostname;
        "smtp.cert" => smtp.cert;
        "smtp.key" => smtp.key;
        "smtp.verify" => smtp.verify;
        "smtp.verify_timeout_secs" => smtp.verify_timeout_secs;
        "smtp.auth_max_failures" => smtp.auth_max_failures;
        "smtp.auth_failure_window_secs" => smtp.auth_failure_window_secs;
        "component" => component;
        "registry.zone" => registry.zone;
        "registry.nameservers" => registry.nameservers;
        "registry.min_ttl_secs" => registry.min_ttl_secs;
        "registry.max_ttl_secs" => registry.max_ttl_secs;
        "registry.timeout_secs" => registry.timeout_secs;
        "postfix.socketmap" => postfix.socketmap;
        "postfix.max_connections" => postfix.max_connections;
        "metrics.listen" => metrics.listen;
        "metrics.max_connections" => metrics.max_connections;
        "imap.listen" => imap.listen;
        "imap.tls_listen" => imap.tls_listen;
        "imap.cert" => imap.cert;
        "imap.key" => imap.key;
        "imap.max_login_failures" => imap.max_login_failures;
        "imap.login_failure_window_secs" => imap.login_failure_window_secs;
        "gateway.srs" => gateway.srs;
        "gateway.srs_secret" => gateway.srs_secret;
    }
    changed
}

/// A count of open connections held against a limit given at each take.
#[derive(Debug, Default)]
pub struct Slots {
    used: AtomicUsize,
}

/// One taken slot; dropping it frees it.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new() -> Arc<Slots> {
        Arc::new(Slots::default())
    }

    /// A slot when fewer than `max` are taken, else None.
    pub fn try_take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// How many slots are taken now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_limit_given() {
        let s = Slots::new();
        let a = s.try_take(2).unwrap();
        let _b = s.try_take(2).unwrap();
        assert!(s.try_take(2).is_none());
        assert!(s.try_take(1).is_none());
        assert!(s.try_take(3).is_some());
        assert_eq!(s.in_use(), 2);
        drop(a);
        assert_eq!(s.in_use(), 1);
        assert!(s.try_take(2).is_some());
    }

    #[test]
    fn restart_only_keys_keep_running_values() {
        let base = "[server]\ndomains=['a.test']\n";
        let running = Config::parse(
            &format!("{base}[s2s]\nlisten=['127.0.0.1:5269']\ndeny=['x.test']\n"),
            "x",
        )
        .unwrap();
        let mut new = Config::parse(
            "[server]\ndomains=['b.test']\n[s2s]\nlisten=['127.0.0.1:5270']\ndeny=['y.test']\n[smtp]\nmax_errors=3\n",
            "x",
        )
        .unwrap();
        let changed = restart_only(&running, &mut new);
        assert_eq!(
            changed,
            vec!["server.domains", "s2s.listen", "smtp.hostname"]
        );
        assert_eq!(new.server.domains, running.server.domains);
        assert_eq!(new.s2s.listen, running.s2s.listen);
        assert_eq!(new.smtp.hostname.as_deref(), Some("a.test"));
        assert_eq!(new.s2s.deny, vec!["y.test".to_string()]);
        assert_eq!(new.smtp.max_errors, 3);
        let mut same = running.clone();
        assert!(restart_only(&running, &mut same).is_empty());
    }
}
