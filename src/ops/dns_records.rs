//! `xmta dns-records DOMAIN`: the DNS records a domain needs for this server, in zone-file
//! syntax, to paste into the zone (names are absolute, so no `$ORIGIN` is needed).
//!
//! The SRV target is `public.hostname` (else `smtp.hostname`, which defaults to the first
//! mail domain), the port `public.s2s_port` (else the port of the first `s2s.listen`).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::Config;

const TTL: u32 = 3600;

pub fn render(cfg: &Config, domain: &str) -> Result<String, String> {
    let domain = crate::addr::normalize_domain(domain).map_err(|e| format!("'{domain}': {e}"))?;
    let host = cfg.public_hostname();
    let port = cfg.public_s2s_port();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "; DNS records for {domain}, served by xmta ({})",
        cfg.source
    );
    if !cfg.is_local_domain(&domain) {
        let _ = writeln!(
            o,
            "; WARNING: {domain} is not in server.domains ({}); add it there too",
            cfg.server.domains.join(", ")
        );
    }
    let key = if cfg.public.hostname.is_some() {
        "public.hostname"
    } else {
        "smtp.hostname / the first of server.domains (set public.hostname to change it)"
    };
    let _ = writeln!(o, "; Host name of this server: {host} (from {key})");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "; XMPP server-to-server (RFC 6120 section 3.2.1): where other servers connect for {domain}"
    );
    let _ = writeln!(
        o,
        "_xmpp-server._tcp.{domain}. {TTL} IN SRV 5 10 {port} {host}."
    );
    let direct = crate::ops::tls_listen(cfg);
    match direct.first() {
        Some(d) => {
            let _ = writeln!(
                o,
                "; Direct TLS (XEP-0368, s2s.tls_listen): TLS from the first byte"
            );
            let _ = writeln!(
                o,
                "_xmpps-server._tcp.{domain}. {TTL} IN SRV 5 10 {} {host}.",
                d.port()
            );
        }
        None => {
            let _ = writeln!(
                o,
                "; Direct TLS (XEP-0368) needs s2s.tls_listen; the s2s.listen port negotiates STARTTLS,"
            );
            let _ = writeln!(
                o,
                "; so a peer using this record would start TLS at once and fail. With a listener:"
            );
            let _ = writeln!(
                o,
                "; _xmpps-server._tcp.{domain}. {TTL} IN SRV 5 10 5270 {host}."
            );
        }
    }
    let mut addrs: Vec<IpAddr> = cfg.s2s.listen.iter().map(|a| a.ip()).collect();
    addrs.dedup();
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "; The host's addresses (from s2s.listen; skip if {host} already has them)"
    );
    for ip in &addrs {
        let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
        if ip.is_unspecified() || ip.is_loopback() {
            let _ = writeln!(
                o,
                "; {host}. {TTL} IN {kind} <public address> (s2s.listen is {ip})"
            );
        } else {
            let _ = writeln!(o, "{host}. {TTL} IN {kind} {ip}");
        }
    }
    let _ = writeln!(o);
    let zone = crate::ops::registry_zone(cfg);
    let _ = writeln!(
        o,
        "; Registry (a DNS list of domains reachable over XMPP mail, RFC 5782 style). Ask the"
    );
    let _ = writeln!(
        o,
        "; operator of the registry zone to list {domain}; the entry they publish looks like:"
    );
    match &zone {
        Some(z) => {
            let _ = writeln!(o, "; {domain}.{z}. {TTL} IN A 127.0.0.2");
        }
        None => {
            let _ = writeln!(
                o,
                "; {domain}.<registry zone>. {TTL} IN A 127.0.0.2   (no registry.zone in the config)"
            );
        }
    }
    let _ = writeln!(o);
    let smtp_host = cfg.smtp_hostname();
    if cfg.smtp.listen.is_empty() {
        let _ = writeln!(
            o,
            "; SMTP gateway: smtp.listen is empty, so this server takes no SMTP mail. With a listener:"
        );
        let _ = writeln!(o, "; {domain}. {TTL} IN MX 10 {smtp_host}.");
        let _ = writeln!(o, "; {domain}. {TTL} IN TXT \"v=spf1 mx -all\"");
    } else {
        let _ = writeln!(
            o,
            "; SMTP gateway (smtp.listen {:?}): mail from SMTP servers comes here",
            cfg.smtp.listen
        );
        let _ = writeln!(o, "{domain}. {TTL} IN MX 10 {smtp_host}.");
        let _ = writeln!(
            o,
            "; SPF: only this domain's MX host sends its mail over SMTP (add your other senders)"
        );
        let _ = writeln!(o, "{domain}. {TTL} IN TXT \"v=spf1 mx -all\"");
    }
    Ok(o)
}
