//! Where to connect for a remote domain: `[s2s.routes]` first, then DNS per RFC 6120 §3.2
//! (SRV `_xmpp-server._tcp` ordered by priority and weighted-random within a priority,
//! RFC 2782), then the domain's own A/AAAA records on port 5269.
//!
//! Direct TLS (XEP-0368): `_xmpps-server._tcp` targets, when published and TLS is not
//! off, are tried first (TLS from the first byte), then the STARTTLS targets.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rand::Rng;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("DNS lookup for {0} failed: {1}")]
    Dns(String, String),
    #[error("{0} has no XMPP server (no SRV record and no address)")]
    NotFound(String),
    #[error("{0} refuses XMPP server connections (SRV target '.')")]
    Refused(String),
}

/// A target to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// From `_xmpps-server._tcp`: TLS at once, no STARTTLS (XEP-0368).
    pub direct_tls: bool,
}

pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    let (h, p) = s.rsplit_once(':')?;
    let port: u16 = p.parse().ok()?;
    if h.is_empty() || h.contains(['[', ']', ' ']) {
        return None;
    }
    Some((h.to_string(), port))
}

#[derive(Clone)]
pub struct Resolver {
    dns: Arc<TokioResolver>,
    /// `[s2s.routes]` are read from the live config at each look-up (SIGHUP changes them).
    live: crate::live::Live,
    /// Whether `_xmpps-server._tcp` is asked (TLS not off).
    direct_tls: bool,
}

impl Resolver {
    pub fn new(live: &crate::live::Live) -> Result<Resolver, ResolveError> {
        let config = live.get();
        let mut builder = if config.dns.nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| ResolveError::Dns("system resolver".into(), e.to_string()))?
        } else {
            let servers = config
                .dns
                .nameservers
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
        // A dead resolver must defer delivery quickly, not hold an attempt for long.
        builder.options_mut().timeout = std::time::Duration::from_secs(3);
        builder.options_mut().attempts = 2;
        let dns = builder
            .build()
            .map_err(|e| ResolveError::Dns("resolver set-up".into(), e.to_string()))?;
        Ok(Resolver {
            dns: Arc::new(dns),
            live: live.clone(),
            direct_tls: config.s2s.tls != crate::config::TlsMode::Off,
        })
    }

    /// The ordered list of (host, port) to try for `domain`.
    pub async fn targets(&self, domain: &str) -> Result<Vec<Target>, ResolveError> {
        if let Some(route) = self.live.get().s2s.routes.get(domain)
            && let Some((host, port)) = parse_host_port(route)
        {
            return Ok(vec![Target {
                host,
                port,
                direct_tls: false,
            }]);
        }
        let mut direct = Vec::new();
        if self.direct_tls {
            let name = format!("_xmpps-server._tcp.{domain}.");
            match self.dns.srv_lookup(name.as_str()).await {
                Ok(lookup) => {
                    let records = srv_records(lookup.answers());
                    if !(records.len() == 1 && records[0].3.is_empty()) {
                        direct = order_srv(records, &mut rand::rng());
                        for t in &mut direct {
                            t.direct_tls = true;
                        }
                    }
                }
                // A failed xmpps lookup only loses the preference; STARTTLS remains.
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
                Err(e) => tracing::debug!(%name, error = %e, "xmpps SRV lookup failed"),
            }
        }
        let srv_name = format!("_xmpp-server._tcp.{domain}.");
        match self.dns.srv_lookup(srv_name.as_str()).await {
            Ok(lookup) => {
                let records = srv_records(lookup.answers());
                if records.len() == 1 && records[0].3.is_empty() {
                    if !direct.is_empty() {
                        return Ok(direct);
                    }
                    return Err(ResolveError::Refused(domain.to_string()));
                }
                if !records.is_empty() {
                    direct.extend(order_srv(records, &mut rand::rng()));
                    return Ok(direct);
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
            Err(e) if !direct.is_empty() => {
                tracing::debug!(%srv_name, error = %e, "SRV lookup failed; direct TLS targets only");
                return Ok(direct);
            }
            Err(e) => return Err(ResolveError::Dns(srv_name, e.to_string())),
        }
        if !direct.is_empty() {
            return Ok(direct);
        }
        // No SRV: the domain itself on the default port (RFC 6120 §3.2.2).
        match self.dns.lookup_ip(format!("{domain}.").as_str()).await {
            Ok(ips) if ips.iter().next().is_some() => Ok(vec![Target {
                host: domain.to_string(),
                port: 5269,
                direct_tls: false,
            }]),
            Ok(_) => Err(ResolveError::NotFound(domain.to_string())),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                Err(ResolveError::NotFound(domain.to_string()))
            }
            Err(e) => Err(ResolveError::Dns(domain.to_string(), e.to_string())),
        }
    }

    /// Whether `domain` announces an XMPP server: a `[s2s.routes]` entry, or an SRV
    /// `_xmpp-server._tcp` record other than the "." refusal. No record (or NXDOMAIN) is
    /// `Ok(false)`; a failed lookup is an error (the caller must not conclude anything).
    pub async fn has_xmpp_srv(&self, domain: &str) -> Result<bool, ResolveError> {
        if self.has_route(domain) {
            return Ok(true);
        }
        let srv_name = format!("_xmpp-server._tcp.{domain}.");
        match self.dns.srv_lookup(srv_name.as_str()).await {
            Ok(lookup) => Ok(lookup.answers().iter().any(|r| match &r.data {
                RData::SRV(srv) => !srv.target.to_ascii().trim_end_matches('.').is_empty(),
                _ => false,
            })),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(false),
            Err(e) => Err(ResolveError::Dns(srv_name, e.to_string())),
        }
    }

    /// Whether `[s2s.routes]` (as in force now) has an entry for `domain`.
    pub fn has_route(&self, domain: &str) -> bool {
        self.live.get().s2s.routes.contains_key(domain)
    }

    /// Socket addresses for one target host.
    pub async fn addresses(&self, target: &Target) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, target.port)]);
        }
        let ips = self
            .dns
            .lookup_ip(format!("{}.", target.host).as_str())
            .await
            .map_err(|e| ResolveError::Dns(target.host.clone(), e.to_string()))?;
        Ok(ips
            .iter()
            .map(|ip| SocketAddr::new(ip, target.port))
            .collect())
    }
}

/// (priority, weight, port, target) of the SRV records in an answer.
fn srv_records(answers: &[hickory_resolver::proto::rr::Record]) -> Vec<(u16, u16, u16, String)> {
    let mut records = Vec::new();
    for r in answers {
        if let RData::SRV(srv) = &r.data {
            let target = srv.target.to_ascii();
            let target = target.trim_end_matches('.').to_string();
            records.push((srv.priority, srv.weight, srv.port, target));
        }
    }
    records
}

/// RFC 2782 ordering: ascending priority; within a priority, repeatedly pick a record
/// with probability proportional to its weight (zero-weight records get a small chance
/// only when nothing else is left, as the RFC suggests by putting them first in the draw).
pub fn order_srv(mut records: Vec<(u16, u16, u16, String)>, rng: &mut impl Rng) -> Vec<Target> {
    records.sort_by_key(|r| r.0);
    let mut out = Vec::with_capacity(records.len());
    let mut i = 0;
    while i < records.len() {
        let prio = records[i].0;
        let mut group: Vec<_> = records[i..]
            .iter()
            .take_while(|r| r.0 == prio)
            .cloned()
            .collect();
        i += group.len();
        // Zero-weight entries first, as RFC 2782 prescribes before the running sum.
        group.sort_by_key(|r| r.1 != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| r.1 as u32).sum();
            let pick = if total == 0 {
                0
            } else {
                let n = rng.random_range(0..=total);
                let mut sum = 0u32;
                let mut idx = group.len() - 1;
                for (j, r) in group.iter().enumerate() {
                    sum += r.1 as u32;
                    if sum >= n {
                        idx = j;
                        break;
                    }
                }
                idx
            };
            let r = group.remove(pick);
            out.push(Target {
                host: r.3,
                port: r.2,
                direct_tls: false,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn srv_priority_then_weight() {
        let recs = vec![
            (20, 0, 5269, "backup.test".to_string()),
            (10, 90, 5269, "heavy.test".to_string()),
            (10, 10, 5269, "light.test".to_string()),
        ];
        let mut heavy_first = 0;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let o = order_srv(recs.clone(), &mut rng);
            assert_eq!(o.len(), 3);
            assert_eq!(
                o[2].host, "backup.test",
                "lower priority value is tried first"
            );
            if o[0].host == "heavy.test" {
                heavy_first += 1;
            }
        }
        // Weight 90 vs 10: heavy first about 90% of the time.
        assert!((820..=970).contains(&heavy_first), "{heavy_first}");
    }

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("127.0.0.3:5269"),
            Some(("127.0.0.3".into(), 5269))
        );
        assert_eq!(
            parse_host_port("xmpp.b.test:5270"),
            Some(("xmpp.b.test".into(), 5270))
        );
        assert_eq!(parse_host_port("nope"), None);
    }
}
