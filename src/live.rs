//! The running configuration, swappable on SIGHUP (`crate::server` reloads it).
//!
//! [`Live`] is a shared handle to the current [`Config`] (an `arc_swap::ArcSwap`): the hot
//! paths take a snapshot (`get()`, one atomic reference count) per connection, per
//! transaction or per stanza, so a reload never blocks them and a connection never sees a
//! half-applied config. [`RESTART_ONLY`] is the one list of keys that a reload cannot
//! change in a running process (listeners, the store, TLS settings, resolvers, pools sized
//! at start): [`restart_only`] keeps their running values, so what `get()` returns is
//! always what is really in force. [`LIVE`] lists the rest; every key is in one of them.
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

/// Declares the restart-only keys once: their names ([`RESTART_ONLY`]) and the copy
/// ([`restart_only`]).
macro_rules! restart_keys {
    ($($name:literal => $($field:ident).+;)*) => {
        /// The keys a reload cannot change (a whole section when named without a key).
        pub const RESTART_ONLY: &[&str] = &[$($name),*];

        /// Copies into `new` the running value of every key that needs a restart, and
        /// names the ones whose value in `new` differed (so the reload can say they are
        /// not applied). Everything else is read from the live config where it is used
        /// and takes effect on reload ([`LIVE`]; rules in the module doc of
        /// `crate::server`).
        pub fn restart_only(running: &Config, new: &mut Config) -> Vec<&'static str> {
            let mut changed = Vec::new();
            $(
                if format!("{:?}", running.$($field).+) != format!("{:?}", new.$($field).+) {
                    changed.push($name);
                    new.$($field).+ = running.$($field).+.clone();
                }
            )*
            changed
        }
    };
}

restart_keys! {
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
    "delivery.max_inflight_bytes" => delivery.max_inflight_bytes;
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

/// The keys a reload puts in force (a whole section when named without a key). Every key
/// is in this list or in [`RESTART_ONLY`] (a unit test checks it against the default
/// config): a new key must be placed in one of them, by whether the code that uses it
/// reads the live config.
pub const LIVE: &[&str] = &[
    "log.level",
    "s2s.routes",
    "s2s.auth",
    "s2s.allow",
    "s2s.deny",
    "s2s.max_stanza_bytes",
    "s2s.max_connections",
    "s2s.max_connections_per_ip",
    "s2s.idle_timeout_secs",
    "s2s.handshake_timeout_secs",
    "s2s.connect_timeout_secs",
    "s2s.peer_messages_per_minute",
    "s2s.peer_messages_burst",
    "s2s.peer_bytes_per_minute",
    "s2s.peer_bytes_burst",
    "delivery.retry_initial_secs",
    "delivery.retry_max_secs",
    "delivery.expire_secs",
    "delivery.receipt_timeout_secs",
    "delivery.max_message_bytes",
    "delivery.max_recipients",
    "delivery.dedupe_days",
    "delivery.local",
    "delivery.local_timeout_secs",
    "smtp.trusted_networks",
    "smtp.max_connections",
    "smtp.idle_timeout_secs",
    "smtp.submission_plaintext_loopback",
    "smtp.auth_failure_delay_ms",
    "smtp.dmarc_reject",
    "smtp.downgrade",
    "smtp.downgrade_memory_days",
    "smtp.max_line_bytes",
    "smtp.greeting_delay_ms",
    "smtp.max_errors",
    "smtp.smarthost",
    "smtp.smarthost_tls",
    "smtp.smarthost_allow_invalid_certs",
    "smtp.smarthost_timeout_secs",
    "imap.allow_plaintext_auth",
    "imap.max_connections",
    "imap.max_command_line",
    "imap.max_literal_bytes",
    "imap.idle_timeout_secs",
    "imap.max_search_depth",
    "registry.policy",
    "registry.overrides",
    "registry.bind_ip",
    "postfix.map_name",
    "postfix.transport",
    "postfix.cache_secs",
    "postfix.negative_cache_secs",
    "postfix.max_request_bytes",
    "postfix.idle_timeout_secs",
    "gateway.plain_xmpp",
    "gateway.srs_max_age_days",
    "gateway.socketmap_disco_timeout_secs",
    // Read only by commands (`xmta dns-records`, `check`, `import`) or at shutdown.
    "public",
    "shutdown",
    "import",
];

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

    /// Every key of the default config (set or commented out) is classified, once.
    #[test]
    fn every_key_is_live_or_restart_only() {
        let covers = |list: &[&str], key: &str| {
            list.iter()
                .any(|k| *k == key || key.starts_with(&format!("{k}.")))
        };
        let mut section = String::new();
        let mut seen = 0;
        for line in crate::config::DEFAULT_CONFIG.lines() {
            let l = line.trim_start_matches('#').trim();
            if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            let Some((k, _)) = l.split_once('=') else {
                continue;
            };
            let k = k.trim();
            if section.is_empty()
                || k.is_empty()
                || !k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                continue;
            }
            let key = format!("{section}.{k}");
            let (live, restart) = (covers(LIVE, &key), covers(RESTART_ONLY, &key));
            assert!(
                live != restart,
                "{key}: put it in exactly one of live::LIVE and restart_keys! (live: {live}, restart-only: {restart})"
            );
            seen += 1;
        }
        assert!(seen > 90, "only {seen} keys found in the default config");
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
