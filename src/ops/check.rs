//! `xmta check`: is this installation ready to serve? One line per check,
//! `PASS|WARN|FAIL name: detail — what to do`, on stdout.
//!
//! Exit status: 0 when nothing FAILed (WARNs are advice: the server runs, but something may
//! not reach it or may look wrong to peers), 2 when anything FAILed. A config that does not
//! parse is a FAIL and the other checks are skipped.
//!
//! Checks: the config; the data dir is writable (a probe file is written, synced and
//! removed); the store opens (when no server holds it); the certificate (chain and key parse
//! and match, names cover every mail domain, validity dates, trust by the web PKI roots plus
//! `s2s.ca`); DNS (the `_xmpp-server._tcp` SRV records of every domain point at this
//! server's host and s2s port, asked from `dns.nameservers` or the system resolver); the
//! registry listing when the config has a `[registry]` section; every listener address can
//! be bound, or is bound by the running xmta (found through its admin socket).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::admin::Request;
use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Line {
    pub level: Level,
    pub name: String,
    pub detail: String,
    pub fix: Option<String>,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = match self.level {
            Level::Pass => "PASS",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        // One line per check, whatever the detail (a TOML error spans several).
        let detail: Vec<&str> = self
            .detail
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "|")
            .collect();
        write!(f, "{l} {}: {}", self.name, detail.join(" "))?;
        if let Some(fix) = &self.fix {
            write!(f, " — {fix}")?;
        }
        Ok(())
    }
}

fn pass(name: &str, detail: impl Into<String>) -> Line {
    Line {
        level: Level::Pass,
        name: name.into(),
        detail: detail.into(),
        fix: None,
    }
}

fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Line {
    Line {
        level: Level::Warn,
        name: name.into(),
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Line {
    Line {
        level: Level::Fail,
        name: name.into(),
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// The exit status for a set of results.
pub fn exit_code(lines: &[Line]) -> i32 {
    if lines.iter().any(|l| l.level == Level::Fail) {
        2
    } else {
        0
    }
}

/// Runs every check; `emit` gets each line as soon as it is known.
pub async fn run(config: &Path, is_default: bool, mut emit: impl FnMut(&Line)) -> Vec<Line> {
    let mut out = Vec::new();
    let mut push = |l: Line, out: &mut Vec<Line>| {
        emit(&l);
        out.push(l);
    };
    let cfg = match Config::load(config, is_default) {
        Ok(c) => {
            push(
                pass(
                    "config",
                    format!(
                        "{} parses; domains {}",
                        c.source,
                        c.server.domains.join(", ")
                    ),
                ),
                &mut out,
            );
            c
        }
        Err(e) => {
            push(
                fail(
                    "config",
                    e.to_string(),
                    "fix the key named; nothing else was checked",
                ),
                &mut out,
            );
            return out;
        }
    };
    let running = match crate::admin::request(&cfg.admin_socket(), &Request::Ping).await {
        Ok(Some(r)) if r.ok => Some(r.lines.join(" ")),
        _ => None,
    };
    match &running {
        Some(who) => push(
            pass(
                "server",
                format!(
                    "running ({who}), admin socket {}",
                    cfg.admin_socket().display()
                ),
            ),
            &mut out,
        ),
        None => push(
            pass(
                "server",
                format!(
                    "not running (no answer on {})",
                    cfg.admin_socket().display()
                ),
            ),
            &mut out,
        ),
    }
    push(data_dir(&cfg), &mut out);
    if running.is_none() {
        push(store(&cfg), &mut out);
    }
    for l in certificate(&cfg) {
        push(l, &mut out);
    }
    for l in listeners(&cfg, running.is_some()).await {
        push(l, &mut out);
    }
    for l in dns(&cfg).await {
        push(l, &mut out);
    }
    if let Some(l) = registry(&cfg).await {
        push(l, &mut out);
    }
    out
}

fn data_dir(cfg: &Config) -> Line {
    let dir = &cfg.server.data_dir;
    let probe = dir.join(format!(".xmta-check-{}", std::process::id()));
    let r = std::fs::create_dir_all(dir).and_then(|()| {
        use std::io::Write;
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(b"xmta check\n")?;
        f.sync_all()?;
        std::fs::remove_file(&probe)
    });
    match r {
        Ok(()) => pass("data_dir", format!("{} is writable", dir.display())),
        Err(e) => {
            let _ = std::fs::remove_file(&probe);
            fail(
                "data_dir",
                format!("{} is not writable: {e}", dir.display()),
                "set server.data_dir to a writable directory owned by the xmta user",
            )
        }
    }
}

fn store(cfg: &Config) -> Line {
    let path = cfg.store_path();
    if !path.exists() {
        return pass(
            "store",
            format!(
                "{} does not exist yet; created on first start",
                path.display()
            ),
        );
    }
    match crate::store::Store::open(&path) {
        Ok(s) => match s.users() {
            Ok(u) => pass(
                "store",
                format!("{} opens ({} users)", path.display(), u.len()),
            ),
            Err(e) => fail(
                "store",
                format!("{}: {e}", path.display()),
                "restore it from a backup (xmta restore --force)",
            ),
        },
        Err(crate::store::StoreError::Locked(_)) => warn(
            "store",
            format!(
                "{} is held by a process that does not answer on the admin socket",
                path.display()
            ),
            "check for a hung xmta (or a second one with another admin_socket)",
        ),
        Err(e) => fail(
            "store",
            format!("{}: {e}", path.display()),
            "restore it from a backup (xmta restore --force)",
        ),
    }
}

fn certificate(cfg: &Config) -> Vec<Line> {
    let mut out = Vec::new();
    let (Some(cert), Some(_key)) = (&cfg.s2s.cert, &cfg.s2s.key) else {
        out.push(warn(
            "certificate",
            format!(
                "none configured (s2s.tls = {:?}): STARTTLS is not offered",
                cfg.s2s.tls
            ),
            "set s2s.cert and s2s.key (e.g. from Let's Encrypt) so peers that require TLS can deliver",
        ));
        return out;
    };
    let chain = match crate::s2s::tls::load_certs(cert) {
        Ok(c) => c,
        Err(e) => {
            out.push(fail(
                "certificate",
                e.to_string(),
                "s2s.cert must be a PEM chain, leaf first",
            ));
            return out;
        }
    };
    let ctx = match crate::s2s::tls::TlsContext::new(cfg) {
        Ok(c) => c,
        Err(e) => {
            out.push(fail(
                "certificate",
                e.to_string(),
                "s2s.key must be the private key of the first certificate in s2s.cert",
            ));
            return out;
        }
    };
    let mut leaf_names: Vec<String> = Vec::new();
    for (i, der) in chain.iter().enumerate() {
        let parsed = match x509_parser::parse_x509_certificate(der.as_ref()) {
            Ok((_, c)) => c,
            Err(e) => {
                out.push(fail(
                    "certificate",
                    format!(
                        "certificate {} of {} does not parse: {e}",
                        i + 1,
                        cert.display()
                    ),
                    "replace the file with a valid PEM chain",
                ));
                return out;
            }
        };
        let now = crate::now();
        let nb = parsed.validity().not_before.timestamp();
        let na = parsed.validity().not_after.timestamp();
        let what = if i == 0 {
            "the certificate".to_string()
        } else {
            format!("chain certificate {}", i + 1)
        };
        if now < nb {
            out.push(fail(
                "certificate",
                format!("{what} is not valid before {}", crate::rfc5322_date(nb)),
                "check the clock, or install a certificate valid now",
            ));
        } else if now > na {
            out.push(fail(
                "certificate",
                format!("{what} expired on {}", crate::rfc5322_date(na)),
                "renew it (e.g. certbot renew) and restart xmta",
            ));
        } else if na - now < 14 * 86_400 {
            out.push(warn(
                "certificate",
                format!("{what} expires on {}", crate::rfc5322_date(na)),
                "renew it soon",
            ));
        }
        if i == 0 {
            if let Ok(Some(san)) = parsed.subject_alternative_name() {
                for n in &san.value.general_names {
                    if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                        leaf_names.push(d.to_ascii_lowercase());
                    }
                }
            }
            if leaf_names.is_empty() {
                for cn in parsed.subject().iter_common_name() {
                    if let Ok(s) = cn.as_str() {
                        leaf_names.push(s.to_ascii_lowercase());
                    }
                }
            }
        }
    }
    let missing: Vec<&String> = cfg
        .server
        .domains
        .iter()
        .filter(|d| !leaf_names.iter().any(|n| name_matches(n, d)))
        .collect();
    if missing.is_empty() {
        out.push(pass(
            "certificate names",
            format!(
                "{} covers {}",
                leaf_names.join(", "),
                cfg.server.domains.join(", ")
            ),
        ));
    } else {
        out.push(fail(
            "certificate names",
            format!(
                "the certificate is for {} but not for {}",
                leaf_names.join(", "),
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "get a certificate whose subjectAltName lists every mail domain",
        ));
    }
    if out.iter().all(|l| l.level != Level::Fail) {
        let untrusted: Vec<&String> = cfg
            .server
            .domains
            .iter()
            .filter(|d| !ctx.chain_valid_for(&chain, d))
            .collect();
        if untrusted.is_empty() {
            out.push(pass(
                "certificate chain",
                format!(
                    "{} certificates, valid and trusted for every domain{}",
                    chain.len(),
                    if cfg.s2s.ca.is_some() {
                        " (web PKI roots + s2s.ca)"
                    } else {
                        ""
                    }
                ),
            ));
        } else {
            out.push(warn(
                "certificate chain",
                format!(
                    "not trusted for {} by the web PKI roots{}",
                    untrusted.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    if cfg.s2s.ca.is_some() { " or s2s.ca" } else { "" }
                ),
                "peers that require TLS will refuse it: include the intermediate certificates in s2s.cert, or use a public CA",
            ));
        }
    }
    out
}

fn name_matches(pattern: &str, domain: &str) -> bool {
    if pattern == domain {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(rest) => domain
            .split_once('.')
            .is_some_and(|(_, parent)| parent == rest),
        None => false,
    }
}

async fn listeners(cfg: &Config, running: bool) -> Vec<Line> {
    let mut addrs: Vec<(&str, SocketAddr)> = Vec::new();
    for a in &cfg.s2s.listen {
        addrs.push(("s2s.listen", *a));
    }
    for a in crate::ops::tls_listen(cfg) {
        addrs.push(("s2s.tls_listen", a));
    }
    for a in &cfg.smtp.listen {
        addrs.push(("smtp.listen", *a));
    }
    if let Some(a) = cfg.smtp.lmtp {
        addrs.push(("smtp.lmtp", a));
    }
    if let Some(a) = cfg.metrics.listen {
        addrs.push(("metrics.listen", a));
    }
    let mut out = Vec::new();
    for (key, a) in addrs {
        let name = format!("listen {a}");
        match tokio::net::TcpListener::bind(a).await {
            Ok(l) => {
                drop(l);
                if running {
                    out.push(warn(
                        &name,
                        format!("{key} {a} is free, but a server is running"),
                        "the running xmta was started with another config: restart it to listen here",
                    ));
                } else {
                    out.push(pass(&name, format!("{key} can be bound")));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && running => {
                out.push(pass(&name, format!("{key} is bound by the running xmta")));
            }
            Err(e) => out.push(fail(
                &name,
                format!("{key} cannot be bound: {e}"),
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    "another program listens there: stop it or change the address"
                } else {
                    "use an address of this host; ports below 1024 need root or CAP_NET_BIND_SERVICE"
                },
            )),
        }
    }
    out
}

fn resolver(cfg: &Config) -> Result<TokioResolver, String> {
    let mut builder = if cfg.dns.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| e.to_string())?
    } else {
        let servers = cfg
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
    builder.options_mut().timeout = std::time::Duration::from_secs(3);
    builder.options_mut().attempts = 2;
    builder.build().map_err(|e| e.to_string())
}

async fn lookup_ips(dns: &TokioResolver, host: &str) -> Vec<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    match dns.lookup_ip(format!("{host}.").as_str()).await {
        Ok(ips) => ips.iter().collect(),
        Err(_) => Vec::new(),
    }
}

async fn dns(cfg: &Config) -> Vec<Line> {
    let mut out = Vec::new();
    let dns = match resolver(cfg) {
        Ok(d) => d,
        Err(e) => {
            out.push(fail(
                "dns",
                format!("no resolver: {e}"),
                "fix /etc/resolv.conf or set dns.nameservers",
            ));
            return out;
        }
    };
    let host = cfg.public_hostname();
    let port = cfg.public_s2s_port();
    let listen_ips: Vec<IpAddr> = cfg.s2s.listen.iter().map(|a| a.ip()).collect();
    let any_ip = listen_ips.iter().any(|ip| ip.is_unspecified());
    let ours = |ips: &[IpAddr]| any_ip || ips.iter().any(|ip| listen_ips.contains(ip));
    for domain in &cfg.server.domains {
        let name = format!("dns {domain}");
        let record = format!("_xmpp-server._tcp.{domain}. 3600 IN SRV 5 10 {port} {host}.");
        let srv = format!("_xmpp-server._tcp.{domain}.");
        let mut records = Vec::new();
        match dns.srv_lookup(srv.as_str()).await {
            Ok(l) => {
                for r in l.answers() {
                    if let RData::SRV(s) = &r.data {
                        records.push((
                            s.target
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                            s.port,
                        ));
                    }
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
            Err(e) => {
                out.push(warn(
                    &name,
                    format!("could not look up {srv}: {e}"),
                    "check the resolver (dns.nameservers) and try again",
                ));
                continue;
            }
        }
        if records.is_empty() {
            // RFC 6120 §3.2.2: without SRV, peers try the domain itself on 5269.
            let ips = lookup_ips(&dns, domain).await;
            if port == 5269 && !ips.is_empty() && ours(&ips) {
                out.push(warn(
                    &name,
                    format!("no SRV record {srv}; peers fall back to {domain}:5269, which is this server"),
                    format!("publish `{record}` (see xmta dns-records {domain})"),
                ));
            } else {
                out.push(fail(
                    &name,
                    format!("no SRV record {srv}: other servers cannot find this one"),
                    format!("publish `{record}` (see xmta dns-records {domain})"),
                ));
            }
            continue;
        }
        if records.len() == 1 && records[0].0.is_empty() {
            out.push(fail(
                &name,
                format!("{srv} is \".\": the domain says it takes no XMPP s2s"),
                format!("replace it with `{record}`"),
            ));
            continue;
        }
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (target, p) in &records {
            let ips = lookup_ips(&dns, target).await;
            let shown = format!(
                "{target}:{p} ({})",
                if ips.is_empty() {
                    "no address".to_string()
                } else {
                    ips.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            if *p == port && !ips.is_empty() && (ours(&ips) || *target == host) {
                good.push(shown);
            } else {
                bad.push(shown);
            }
        }
        if good.is_empty() {
            out.push(fail(
                &name,
                format!(
                    "{srv} points at {}, not at this server ({host}:{port}, s2s.listen {:?})",
                    bad.join(", "),
                    cfg.s2s.listen
                ),
                format!("publish `{record}` and give {host} this host's address"),
            ));
        } else if !bad.is_empty() {
            out.push(warn(
                &name,
                format!(
                    "{srv}: {} reach this server, {} do not",
                    good.join(", "),
                    bad.join(", ")
                ),
                "remove the stale records or make them point here",
            ));
        } else {
            out.push(pass(&name, format!("{srv} -> {}", good.join(", "))));
        }
    }
    out
}

/// The registry listing of every domain; `None` without a `[registry]` section.
pub async fn registry(cfg: &Config) -> Option<Line> {
    let section = crate::ops::registry_section(cfg)?;
    let Some(zone) = section
        .get("zone")
        .and_then(|z| z.as_str())
        .map(|z| z.trim_matches('.').to_string())
    else {
        return Some(pass(
            "registry",
            "no registry.zone configured; nothing to check",
        ));
    };
    // registry.nameservers, else [dns] nameservers, else the system's.
    let own: Vec<SocketAddr> = section
        .get("nameservers")
        .and_then(|n| n.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let mut rcfg = cfg.clone();
    if !own.is_empty() {
        rcfg.dns.nameservers = own;
    }
    let dns = match resolver(&rcfg) {
        Ok(d) => d,
        Err(e) => {
            return Some(fail(
                "registry",
                format!("no resolver: {e}"),
                "set registry.nameservers or dns.nameservers",
            ));
        }
    };
    let (mut listed, mut provisional, mut suspended, mut missing) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for d in &cfg.server.domains {
        let q = format!("{d}.{zone}.");
        let ips: Vec<IpAddr> = match dns.lookup_ip(q.as_str()).await {
            Ok(ips) => ips.iter().collect(),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Vec::new(),
            Err(e) => {
                return Some(warn(
                    "registry",
                    format!("could not ask {q}: {e}"),
                    "check the registry's nameservers and try again",
                ));
            }
        };
        if ips.contains(&IpAddr::from([127, 0, 0, 4])) {
            suspended.push(q);
        } else if ips.contains(&IpAddr::from([127, 0, 0, 2])) {
            listed.push(q);
        } else if ips.contains(&IpAddr::from([127, 0, 0, 3])) {
            provisional.push(q);
        } else {
            missing.push(q);
        }
    }
    Some(if !suspended.is_empty() {
        fail(
            "registry",
            format!("suspended (127.0.0.4): {}", suspended.join(", ")),
            format!(
                "peers requiring registration refuse this mail: ask the operator of {zone} why (its TXT record gives the reason)"
            ),
        )
    } else if !missing.is_empty() {
        warn(
            "registry",
            format!("not listed (no A 127.0.0.2): {}", missing.join(", ")),
            format!(
                "ask the operator of {zone} to list the domain (xmta dns-records shows the entry)"
            ),
        )
    } else if !provisional.is_empty() {
        warn(
            "registry",
            format!("provisional (127.0.0.3): {}", provisional.join(", ")),
            "nothing to do but wait for the registry to confirm",
        )
    } else {
        pass(
            "registry",
            format!("listed in {zone} (127.0.0.2): {}", listed.join(", ")),
        )
    })
}
