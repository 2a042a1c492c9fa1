//! Registered servers (XEP-MTA §22): after a peer domain is authenticated, one DNS query
//! under a configured registry zone says whether the domain is registered to send mail.
//!
//! Dialback and certificates prove *who* a peer is; a registry says whether that domain is
//! one a community vouches for, the way a DNS block or allow list does for SMTP, but keyed by
//! the authenticated domain instead of a spoofable address. The zone follows RFC 5782:
//!
//! - `A <domain>.<zone>`: 127.0.0.2 registered, 127.0.0.3 provisional, 127.0.0.4
//!   suspended; NXDOMAIN (or no A record) not registered. Any other answer, a SERVFAIL or a
//!   timeout is a lookup failure, which defers the mail (never accepts it silently).
//! - `A <domain>.<reversed peer ip>.<zone>` (with `bind_ip`): the domain is registered for
//!   the address it connects from.
//! - `TXT` of the same name: the reason, quoted in refusals and logs.
//! - Test points: `test.<zone>` is 127.0.0.2 and `invalid.<zone>` is NXDOMAIN; both are
//!   checked at start-up, and a zone that fails them is reported as broken.
//!
//! Answers (NXDOMAIN too) are cached by the resolver for their TTL, clamped to
//! `[min_ttl_secs, max_ttl_secs]`; failures for a few seconds only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use tracing::{debug, error, info, warn};

use crate::config::RegistryPolicy;

/// How long a failed lookup is remembered, so a dead registry is not asked for every
/// stanza; short, so mail flows soon after it answers again.
const FAILURE_CACHE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry resolver set-up: {0}")]
    Setup(String),
}

/// What the registry says about a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Registered,
    Provisional,
    Suspended,
    NotRegistered,
}

impl Status {
    /// The result word of the Authentication-Results method `x-xmta-registry`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Registered => "pass",
            Status::Provisional => "provisional",
            Status::Suspended => "suspended",
            Status::NotRegistered => "none",
        }
    }

    fn from_a(ip: Ipv4Addr) -> Option<Status> {
        match ip.octets() {
            [127, 0, 0, 2] => Some(Status::Registered),
            [127, 0, 0, 3] => Some(Status::Provisional),
            [127, 0, 0, 4] => Some(Status::Suspended),
            _ => None,
        }
    }

    /// The A record a zone file gives this status (None: no record).
    pub fn address(self) -> Option<&'static str> {
        match self {
            Status::Registered => Some("127.0.0.2"),
            Status::Provisional => Some("127.0.0.3"),
            Status::Suspended => Some("127.0.0.4"),
            Status::NotRegistered => None,
        }
    }

    fn rank(self) -> u8 {
        match self {
            Status::Registered => 0,
            Status::Provisional => 1,
            Status::NotRegistered => 2,
            Status::Suspended => 3,
        }
    }
}

/// A registry answer about one domain (and address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub status: Status,
    /// The TXT text, or a sentence of ours when the zone gives none.
    pub reason: String,
}

/// What the stream does with a peer domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on; with the Authentication-Results clause to add, if a registry was asked.
    Accept(Option<String>),
    /// `require` and not registered or suspended: a policy-violation stream error.
    Refuse(String),
    /// The registry could not be asked: mail is answered with a temporary error.
    Defer(String),
}

/// What the mail layer needs to know about the registry for one stanza.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RegistryMark {
    /// No registry is configured for this peer.
    #[default]
    None,
    /// The clause for Authentication-Results, e.g. `x-xmta-registry=pass (reg.example)`.
    Tag(String),
    /// The lookup failed: mail must be deferred with a temporary error.
    Deferred(String),
}

/// The registry client: a resolver of its own (own nameservers, TTL bounds, timeout).
pub struct Registry {
    /// `policy`, `overrides` and `bind_ip` are read from here at each decision (SIGHUP
    /// changes them); the zone and the resolver's settings are fixed at start.
    cfg: crate::live::Live,
    zone: String,
    dns: TokioResolver,
    failures: std::sync::Mutex<HashMap<String, (Instant, String)>>,
}

impl Registry {
    /// None when `[registry] zone` is not set.
    pub fn new(live: crate::live::Live) -> Result<Option<Arc<Registry>>, RegistryError> {
        let cfg = live.get();
        let Some(zone) = cfg.registry.zone.clone() else {
            return Ok(None);
        };
        let servers = if cfg.registry.nameservers.is_empty() {
            &cfg.dns.nameservers
        } else {
            &cfg.registry.nameservers
        };
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| RegistryError::Setup(e.to_string()))?
        } else {
            let servers = servers
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let r = &cfg.registry;
        let o = builder.options_mut();
        o.timeout = Duration::from_secs(r.timeout_secs);
        o.attempts = 1;
        o.positive_min_ttl = Some(Duration::from_secs(r.min_ttl_secs));
        o.negative_min_ttl = Some(Duration::from_secs(r.min_ttl_secs));
        o.positive_max_ttl = Some(Duration::from_secs(r.max_ttl_secs));
        o.negative_max_ttl = Some(Duration::from_secs(r.max_ttl_secs));
        let dns = builder
            .build()
            .map_err(|e| RegistryError::Setup(e.to_string()))?;
        Ok(Some(Arc::new(Registry {
            cfg: live,
            zone,
            dns,
            failures: std::sync::Mutex::new(HashMap::new()),
        })))
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The A answer for `name`: Ok(None) for NXDOMAIN / no A record.
    async fn query_a(&self, name: &str) -> Result<Option<Status>, String> {
        match self.dns.lookup(format!("{name}."), RecordType::A).await {
            Ok(lookup) => {
                let mut status = None;
                for r in lookup.answers() {
                    if let RData::A(a) = &r.data {
                        match Status::from_a(a.0) {
                            // Several codes: the worst one counts.
                            Some(s) if status.is_none_or(|o: Status| s.rank() > o.rank()) => {
                                status = Some(s)
                            }
                            Some(_) => {}
                            None => {
                                return Err(format!("{name} answered {}, not 127.0.0.2-4", a.0));
                            }
                        }
                    }
                }
                Ok(status)
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(None),
            Err(e) => Err(format!("{name}: {e}")),
        }
    }

    /// The TXT text of `name`, if any (a failure here only loses the reason).
    async fn query_txt(&self, name: &str) -> Option<String> {
        let lookup = self
            .dns
            .lookup(format!("{name}."), RecordType::TXT)
            .await
            .ok()?;
        let text: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect();
        (!text.is_empty()).then(|| text.join(" "))
    }

    /// Asks the registry about `domain` (connecting from `ip` when `bind_ip` is set).
    pub async fn lookup(&self, domain: &str, ip: Option<IpAddr>) -> Result<Listing, String> {
        let key = format!("{domain} {ip:?}");
        if let Some((at, why)) = self.lock_failures().get(&key)
            && at.elapsed() < FAILURE_CACHE
        {
            return Err(why.clone());
        }
        let r = self.lookup_uncached(domain, ip).await;
        let mut failures = self.lock_failures();
        match &r {
            Err(why) => {
                failures.insert(key, (Instant::now(), why.clone()));
            }
            Ok(_) => {
                failures.remove(&key);
            }
        }
        r
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, String)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn lookup_uncached(&self, domain: &str, ip: Option<IpAddr>) -> Result<Listing, String> {
        let name = format!("{domain}.{}", self.zone);
        let by_domain = self.query_a(&name).await?.unwrap_or(Status::NotRegistered);
        let (status, name, bound) = match (self.cfg.get().registry.bind_ip, ip) {
            (true, Some(ip)) if by_domain != Status::Suspended => {
                let bound = format!("{domain}.{}.{}", reversed(ip), self.zone);
                let by_ip = self.query_a(&bound).await?.unwrap_or(Status::NotRegistered);
                // The worse of the two: a domain registered for other addresses only is
                // not registered for this one.
                if by_ip.rank() > by_domain.rank() {
                    (by_ip, bound, Some(ip))
                } else {
                    (by_domain, name, None)
                }
            }
            _ => (by_domain, name, None),
        };
        let reason = match status {
            Status::NotRegistered => None,
            _ => self.query_txt(&name).await,
        };
        let zone = &self.zone;
        let reason = reason.unwrap_or_else(|| match (status, bound) {
            (Status::NotRegistered, Some(ip)) => {
                format!("{domain} is not registered in {zone} for {ip}")
            }
            (s, _) => format!("{domain} is {} in {zone}", status_word(s)),
        });
        Ok(Listing { status, reason })
    }

    /// The policy decision for peer `domain` connecting from `ip`.
    pub async fn decide(&self, domain: &str, ip: Option<IpAddr>) -> Decision {
        let Some(policy) = self.cfg.get().registry_policy(domain) else {
            return Decision::Accept(None);
        };
        match self.lookup(domain, ip).await {
            Err(why) => {
                warn!(domain, zone = %self.zone, error = %why, "registry lookup failed; deferring mail");
                Decision::Defer(format!("registry {} could not be asked: {why}", self.zone))
            }
            Ok(l) => {
                let tag = format!("x-xmta-registry={} ({})", l.status.as_str(), self.zone);
                let refused = matches!(l.status, Status::NotRegistered | Status::Suspended);
                if policy == RegistryPolicy::Require && refused {
                    info!(domain, zone = %self.zone, status = l.status.as_str(), reason = %l.reason, "registry refuses peer");
                    Decision::Refuse(l.reason)
                } else {
                    debug!(domain, zone = %self.zone, status = l.status.as_str(), "registry answer");
                    Decision::Accept(Some(tag))
                }
            }
        }
    }

    /// RFC 5782 §5 test points: `test.<zone>` must be listed 127.0.0.2 and
    /// `invalid.<zone>` must not exist. Err names what is wrong.
    pub async fn self_test(&self) -> Result<(), String> {
        let test = format!("test.{}", self.zone);
        match self.query_a(&test).await {
            Ok(Some(Status::Registered)) => {}
            Ok(other) => {
                return Err(format!(
                    "{test} must be 127.0.0.2, it is {}",
                    other.map(|s| s.as_str()).unwrap_or("not listed")
                ));
            }
            Err(e) => return Err(e),
        }
        let invalid = format!("invalid.{}", self.zone);
        match self.query_a(&invalid).await {
            Ok(None) => Ok(()),
            Ok(Some(s)) => Err(format!("{invalid} must not exist, it is {}", s.as_str())),
            Err(e) => Err(e),
        }
    }

    /// Runs the start-up probe and logs the outcome.
    pub async fn probe(self: Arc<Self>) {
        match self.self_test().await {
            Ok(()) => info!(zone = %self.zone, "registry zone passes its test entries"),
            Err(e) => {
                error!(zone = %self.zone, error = %e, "registry zone is broken: its RFC 5782 test entries do not answer as they must")
            }
        }
    }
}

/// RFC 5782 §2.1/§2.4: IPv4 octets reversed, IPv6 nibbles reversed.
pub fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => reversed(IpAddr::V4(v4)),
            None => {
                let hex = hex::encode(v6.octets());
                let nibbles: Vec<String> = hex.chars().rev().map(|c| c.to_string()).collect();
                nibbles.join(".")
            }
        },
    }
}

/// `xmta registry zonefile`: a BIND zone file for `zone` from lines of
/// `domain [ip] [registered|provisional|suspended] [reason...]` (`#` starts a comment).
pub fn zonefile(zone: &str, input: &str, serial: u32) -> Result<String, String> {
    let zone = zone.trim_end_matches('.');
    let mut out = format!(
        "; registry zone for xmta (XEP-MTA §22, RFC 5782 conventions)\n$ORIGIN {zone}.\n$TTL 3600\n@\tIN\tSOA\tns.{zone}. hostmaster.{zone}. ( {serial} 3600 600 604800 300 )\n@\tIN\tNS\tns.{zone}.\n; RFC 5782 test points: test is listed, invalid does not exist.\ntest\tIN\tA\t127.0.0.2\ntest\tIN\tTXT\t\"test entry\"\n"
    );
    for (n, line) in input.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace().peekable();
        let Some(d) = words.next() else { continue };
        let domain =
            crate::addr::normalize_domain(d).map_err(|e| format!("line {}: `{d}`: {e}", n + 1))?;
        let ip = match words.peek().and_then(|w| w.parse::<IpAddr>().ok()) {
            Some(ip) => {
                words.next();
                Some(ip)
            }
            None => None,
        };
        let status = match words.peek().copied() {
            Some("registered") => Status::Registered,
            Some("provisional") => Status::Provisional,
            Some("suspended") => Status::Suspended,
            _ => Status::Registered,
        };
        if matches!(
            words.peek().copied(),
            Some("registered" | "provisional" | "suspended")
        ) {
            words.next();
        }
        let reason: Vec<&str> = words.collect();
        let reason = if reason.is_empty() {
            format!("{domain} {}", status_word(status))
        } else {
            reason.join(" ")
        };
        let owner = match ip {
            Some(ip) => format!("{domain}.{}", reversed(ip)),
            None => domain.clone(),
        };
        let addr = status.address().unwrap_or("127.0.0.2");
        let txt = reason.replace('\\', "\\\\").replace('"', "\\\"");
        out.push_str(&format!(
            "{owner}\tIN\tA\t{addr}\n{owner}\tIN\tTXT\t\"{txt}\"\n"
        ));
        // An address-bound entry implies the domain entry too (the query asks both).
        if ip.is_some() && !out.contains(&format!("\n{domain}\tIN\tA\t")) {
            out.push_str(&format!(
                "{domain}\tIN\tA\t{addr}\n{domain}\tIN\tTXT\t\"{txt}\"\n"
            ));
        }
    }
    Ok(out)
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Registered => "registered",
        Status::Provisional => "provisional",
        Status::Suspended => "suspended",
        Status::NotRegistered => "not registered",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_addresses() {
        assert_eq!(reversed("192.0.2.99".parse().unwrap()), "99.2.0.192");
        assert_eq!(
            reversed("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
        assert_eq!(reversed("::ffff:127.0.0.1".parse().unwrap()), "1.0.0.127");
    }

    #[test]
    fn status_codes() {
        assert_eq!(
            Status::from_a(Ipv4Addr::new(127, 0, 0, 2)),
            Some(Status::Registered)
        );
        assert_eq!(
            Status::from_a(Ipv4Addr::new(127, 0, 0, 4)),
            Some(Status::Suspended)
        );
        assert_eq!(Status::from_a(Ipv4Addr::new(127, 0, 0, 1)), None);
        assert_eq!(Status::from_a(Ipv4Addr::new(10, 0, 0, 2)), None);
    }

    #[test]
    fn zone_file_lines() {
        let z = zonefile(
            "reg.example.",
            "# comment\nb.example\nc.example 192.0.2.7 provisional new member\nd.example suspended \"spam\" reports\n\n",
            7,
        )
        .unwrap();
        assert!(z.contains("$ORIGIN reg.example.\n"), "{z}");
        assert!(z.contains("( 7 3600"), "{z}");
        assert!(z.contains("test\tIN\tA\t127.0.0.2\n"), "{z}");
        assert!(!z.contains("\ninvalid\t"), "{z}");
        assert!(
            z.contains(
                "b.example\tIN\tA\t127.0.0.2\nb.example\tIN\tTXT\t\"b.example registered\"\n"
            ),
            "{z}"
        );
        assert!(z.contains("c.example.7.2.0.192\tIN\tA\t127.0.0.3\n"), "{z}");
        assert!(
            z.contains("c.example.7.2.0.192\tIN\tTXT\t\"new member\"\n"),
            "{z}"
        );
        assert!(z.contains("c.example\tIN\tA\t127.0.0.3\n"), "{z}");
        assert!(
            z.contains(
                "d.example\tIN\tA\t127.0.0.4\nd.example\tIN\tTXT\t\"\\\"spam\\\" reports\"\n"
            ),
            "{z}"
        );
        assert!(zonefile("reg.example", "bad..domain\n", 1).is_err());
    }
}
