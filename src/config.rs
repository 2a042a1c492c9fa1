//! Configuration: the TOML file an administrator writes, parsed into typed settings.
//!
//! Every limit the server enforces has a key here, so an administrator can see and change
//! it. Unknown keys are errors (a typo must not silently leave a default in force), and every
//! error names the file, the key and the reason; nothing starts on a bad config.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The default configuration, embedded so that `xmta serve` runs on a fresh machine.
pub const DEFAULT_CONFIG: &str = include_str!("../config/xmta.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: {reason}")]
    Parse { file: String, reason: String },
    #[error("{file}: key `{key}`: {reason}")]
    Invalid {
        file: String,
        key: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub s2s: S2sConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// SMTP (MX role) and LMTP listeners.
    #[serde(default)]
    pub smtp: SmtpConfig,
    /// Run as an XEP-0114 component of an existing XMPP server instead of (or besides)
    /// listening for s2s: that server then carries all of xmta's stanzas.
    #[serde(default)]
    pub component: Option<ComponentConfig>,
    /// The IMAP bridge (listeners off by default).
    #[serde(default)]
    pub imap: ImapConfig,
    /// Where the config was read from (for messages); not a key.
    #[serde(skip)]
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Mail domains this server is authoritative for.
    pub domains: Vec<String>,
    /// Where the store and the admin socket live; relative paths are relative to the
    /// working directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The local control socket the command line talks to while `serve` runs.
    #[serde(default)]
    pub admin_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Streams without TLS are refused in both directions.
    Required,
    /// TLS is offered and used when the peer offers it; dialback authenticates either way.
    Optional,
    /// No TLS (tests, private networks).
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S2sConfig {
    #[serde(default = "default_s2s_listen")]
    pub listen: Vec<SocketAddr>,
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// PEM certificate chain and key for STARTTLS on inbound streams.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Extra PEM trust roots for verifying peers (besides the built-in web PKI roots).
    pub ca: Option<PathBuf>,
    /// Largest stanza accepted on an inbound stream (advertised with XEP-0478).
    #[serde(default = "default_max_stanza")]
    pub max_stanza_bytes: usize,
    /// Most inbound s2s connections open at once; more are refused at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A stream that sends nothing for this long is closed.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// Time allowed from TCP connect until the stream is authenticated.
    #[serde(default = "default_handshake")]
    pub handshake_timeout_secs: u64,
    #[serde(default = "default_connect")]
    pub connect_timeout_secs: u64,
    /// Static next hops ("domain" = "host:port") that override DNS.
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Nameservers to ask instead of the system resolver.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// First retry delay; each further retry doubles it (with jitter) up to `retry_max_secs`.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_secs: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: u64,
    /// A message not delivered after this long is bounced.
    #[serde(default = "default_expire")]
    pub expire_secs: u64,
    /// How long to wait for the receiving server's receipt before retrying.
    #[serde(default = "default_receipt_timeout")]
    pub receipt_timeout_secs: u64,
    /// Largest message accepted (from `send`, and over s2s).
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Most delivery attempts in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long the receiver remembers a (domain, mail id, recipient) it stored.
    #[serde(default = "default_dedupe_days")]
    pub dedupe_days: u64,
    /// Most recipients in one message.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// host:port of the XMPP server's component listener (Prosody: component_ports 5347).
    pub server: String,
    /// The component's domain, e.g. "mail.example.org"; also a mail domain of this server.
    pub jid: String,
    /// The shared secret of the component on that server.
    pub secret: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// SMTP listeners in the MX role (inbound mail from other MTAs); none by default.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// An LMTP listener (RFC 2033) for a local MTA such as Postfix. LMTP is trusted: every
    /// recipient is accepted for relaying, so bind it to loopback only.
    #[serde(default)]
    pub lmtp: Option<SocketAddr>,
    /// Networks (CIDR) whose SMTP clients may relay to non-local domains.
    #[serde(default = "default_trusted_networks")]
    pub trusted_networks: Vec<String>,
    /// Parsed `trusted_networks`; not a key.
    #[serde(skip)]
    pub trusted: Vec<(std::net::IpAddr, u8)>,
    /// Most SMTP/LMTP connections open at once (all listeners together).
    #[serde(default = "default_smtp_max_connections")]
    pub max_connections: usize,
    /// A client that sends nothing for this long gets `421 4.4.2` and is disconnected.
    #[serde(default = "default_smtp_idle")]
    pub idle_timeout_secs: u64,
    /// The name in the greeting and in Received headers; the first mail domain by default.
    #[serde(default)]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. "info" or "xmta=debug".
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_s2s_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 5269))]
}
fn default_tls() -> TlsMode {
    TlsMode::Optional
}
fn default_max_stanza() -> usize {
    524_288
}
fn default_max_connections() -> usize {
    1000
}
fn default_idle() -> u64 {
    600
}
fn default_handshake() -> u64 {
    30
}
fn default_connect() -> u64 {
    10
}
fn default_retry_initial() -> u64 {
    60
}
fn default_retry_max() -> u64 {
    3600
}
fn default_expire() -> u64 {
    5 * 24 * 3600
}
fn default_receipt_timeout() -> u64 {
    120
}
fn default_max_message() -> usize {
    50 * 1024 * 1024
}
fn default_concurrency() -> usize {
    64
}
fn default_dedupe_days() -> u64 {
    14
}
fn default_max_recipients() -> usize {
    100
}
fn default_trusted_networks() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}
fn default_smtp_max_connections() -> usize {
    100
}
fn default_smtp_idle() -> u64 {
    300
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            listen: default_s2s_listen(),
            tls: default_tls(),
            cert: None,
            key: None,
            ca: None,
            max_stanza_bytes: default_max_stanza(),
            max_connections: default_max_connections(),
            idle_timeout_secs: default_idle(),
            handshake_timeout_secs: default_handshake(),
            connect_timeout_secs: default_connect(),
            routes: BTreeMap::new(),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            retry_initial_secs: default_retry_initial(),
            retry_max_secs: default_retry_max(),
            expire_secs: default_expire(),
            receipt_timeout_secs: default_receipt_timeout(),
            max_message_bytes: default_max_message(),
            concurrency: default_concurrency(),
            dedupe_days: default_dedupe_days(),
            max_recipients: default_max_recipients(),
        }
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: Vec::new(),
            lmtp: None,
            trusted_networks: default_trusted_networks(),
            trusted: Vec::new(),
            max_connections: default_smtp_max_connections(),
            idle_timeout_secs: default_smtp_idle(),
            hostname: None,
        }
    }
}

/// Parses "192.0.2.0/24", "::1/128" or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok()?,
        None => max,
    };
    (len <= max).then_some((ip, len))
}

/// Whether `ip` is inside the network `(net, len)`.
pub fn cidr_contains(net: (std::net::IpAddr, u8), ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (net.0, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(net.1)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(net.1)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
        }
    }
}

impl Config {
    /// Reads `path`; when it is the default path and does not exist, the embedded default is
    /// used, so a fresh checkout runs without writing a config first.
    pub fn load(path: &Path, is_default_path: bool) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_default_path => {
                return Config::parse(DEFAULT_CONFIG, "(embedded default config)");
            }
            Err(e) => {
                return Err(ConfigError::Read {
                    file,
                    reason: e.to_string(),
                });
            }
        };
        Config::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            reason: e.to_string().trim_end().to_string(),
        })?;
        cfg.source = file.to_string();
        cfg.validate()?;
        Ok(cfg)
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.clone(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        if self.server.domains.is_empty() {
            return Err(self.invalid("server.domains", "at least one mail domain is needed"));
        }
        let mut domains = Vec::new();
        for d in &self.server.domains {
            let n = crate::addr::normalize_domain(d)
                .map_err(|e| self.invalid("server.domains", format!("`{d}`: {e}")))?;
            if domains.contains(&n) {
                return Err(self.invalid("server.domains", format!("`{d}` is listed twice")));
            }
            domains.push(n);
        }
        self.server.domains = domains;
        if self.s2s.cert.is_some() != self.s2s.key.is_some() {
            return Err(self.invalid(
                "s2s.cert",
                "`cert` and `key` go together: set both or neither",
            ));
        }
        if self.s2s.tls == TlsMode::Required && self.s2s.cert.is_none() {
            return Err(self.invalid(
                "s2s.tls",
                "\"required\" needs `s2s.cert` and `s2s.key` (inbound streams must offer STARTTLS)",
            ));
        }
        for (k, p) in [
            ("s2s.cert", &self.s2s.cert),
            ("s2s.key", &self.s2s.key),
            ("s2s.ca", &self.s2s.ca),
        ] {
            if let Some(p) = p
                && !p.is_file()
            {
                return Err(self.invalid(k, format!("{} is not a readable file", p.display())));
            }
        }
        // XEP-MTA §5.2: a smaller limit could not carry a full envelope or receipt.
        if self.s2s.max_stanza_bytes < 65_536 {
            return Err(self.invalid("s2s.max_stanza_bytes", "must be at least 65536"));
        }
        if self.s2s.max_connections == 0 {
            return Err(self.invalid("s2s.max_connections", "must be at least 1"));
        }
        for (k, v) in [
            ("s2s.idle_timeout_secs", self.s2s.idle_timeout_secs),
            (
                "s2s.handshake_timeout_secs",
                self.s2s.handshake_timeout_secs,
            ),
            ("s2s.connect_timeout_secs", self.s2s.connect_timeout_secs),
            (
                "delivery.retry_initial_secs",
                self.delivery.retry_initial_secs,
            ),
            (
                "delivery.receipt_timeout_secs",
                self.delivery.receipt_timeout_secs,
            ),
            ("delivery.expire_secs", self.delivery.expire_secs),
        ] {
            if v == 0 {
                return Err(self.invalid(k, "must be at least 1"));
            }
        }
        // XEP-MTA §11.2/§11.3: senders give up within 7 days, receivers remember at least
        // that long, so a retry can never be stored twice.
        if self.delivery.expire_secs > 7 * 86_400 {
            return Err(self.invalid("delivery.expire_secs", "must be at most 604800 (7 days)"));
        }
        if self.delivery.dedupe_days < 7 {
            return Err(self.invalid("delivery.dedupe_days", "must be at least 7"));
        }
        if self.delivery.retry_max_secs < self.delivery.retry_initial_secs {
            return Err(self.invalid(
                "delivery.retry_max_secs",
                "must not be smaller than delivery.retry_initial_secs",
            ));
        }
        if self.delivery.concurrency == 0 || self.delivery.max_recipients == 0 {
            return Err(self.invalid(
                "delivery",
                "concurrency and max_recipients must be at least 1",
            ));
        }
        let mut routes = BTreeMap::new();
        for (domain, target) in &self.s2s.routes {
            let key = format!("s2s.routes.\"{domain}\"");
            let d = crate::addr::normalize_domain(domain)
                .map_err(|e| self.invalid(&key, e.to_string()))?;
            if crate::s2s::resolve::parse_host_port(target).is_none() {
                return Err(self.invalid(&key, format!("`{target}` is not host:port")));
            }
            routes.insert(d, target.clone());
        }
        self.s2s.routes = routes;
        if let Some(c) = &mut self.component {
            let jid = crate::addr::normalize_domain(&c.jid).map_err(|e| ConfigError::Invalid {
                file: self.source.clone(),
                key: "component.jid".into(),
                reason: e.to_string(),
            })?;
            if crate::s2s::resolve::parse_host_port(&c.server).is_none() {
                return Err(ConfigError::Invalid {
                    file: self.source.clone(),
                    key: "component.server".into(),
                    reason: format!("`{}` is not host:port", c.server),
                });
            }
            if c.secret.is_empty() {
                return Err(ConfigError::Invalid {
                    file: self.source.clone(),
                    key: "component.secret".into(),
                    reason: "the shared secret must not be empty".into(),
                });
            }
            if self.server.domains != [jid.clone()] {
                return Err(ConfigError::Invalid {
                    file: self.source.clone(),
                    key: "server.domains".into(),
                    reason: format!(
                        "in component mode the only mail domain is the component's jid `{jid}`"
                    ),
                });
            }
            c.jid = jid;
        }
        let mut trusted = Vec::new();
        for n in &self.smtp.trusted_networks {
            match parse_cidr(n) {
                Some(c) => trusted.push(c),
                None => {
                    return Err(self.invalid(
                        "smtp.trusted_networks",
                        format!("`{n}` is not an address or CIDR network (e.g. 127.0.0.0/8)"),
                    ));
                }
            }
        }
        self.smtp.trusted = trusted;
        if self.smtp.max_connections == 0 {
            return Err(self.invalid("smtp.max_connections", "must be at least 1"));
        }
        if self.smtp.idle_timeout_secs == 0 {
            return Err(self.invalid("smtp.idle_timeout_secs", "must be at least 1"));
        }
        match &self.smtp.hostname {
            Some(h) => {
                let n = crate::addr::normalize_domain(h)
                    .map_err(|e| self.invalid("smtp.hostname", format!("`{h}`: {e}")))?;
                self.smtp.hostname = Some(n);
            }
            None => self.smtp.hostname = self.server.domains.first().cloned(),
        }
        if let Some(l) = self.smtp.lmtp
            && self.smtp.listen.contains(&l)
        {
            return Err(self.invalid(
                "smtp.lmtp",
                format!("{l} is also in smtp.listen; one address serves one protocol"),
            ));
        }
        self.validate_imap()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(self.invalid(
                "log.level",
                format!("`{}` is not a log filter", self.log.level),
            ));
        }
        Ok(())
    }

    /// The name in SMTP greetings and Received headers.
    fn validate_imap(&mut self) -> Result<(), ConfigError> {
        if self.imap.max_literal_bytes == 0 {
            self.imap.max_literal_bytes = self.delivery.max_message_bytes;
        }
        if self.imap.max_connections == 0 {
            return Err(self.invalid("imap.max_connections", "must be at least 1"));
        }
        if self.imap.max_command_line < 1024 {
            return Err(self.invalid("imap.max_command_line", "must be at least 1024"));
        }
        if self.imap.idle_timeout_secs == 0 {
            return Err(self.invalid("imap.idle_timeout_secs", "must be at least 1"));
        }
        if self.imap.cert.is_some() != self.imap.key.is_some() {
            return Err(self.invalid("imap.cert", "imap.cert and imap.key go together"));
        }
        let has_cert = self.imap.cert.is_some() || self.s2s.cert.is_some();
        if !self.imap.tls_listen.is_empty() && !has_cert {
            return Err(self.invalid(
                "imap.tls_listen",
                "needs imap.cert and imap.key (or s2s.cert and s2s.key)",
            ));
        }
        for l in self.imap.listen.iter().chain(&self.imap.tls_listen) {
            if self.smtp.listen.contains(l) || self.s2s.listen.contains(l) {
                return Err(self.invalid(
                    "imap.listen",
                    format!("{l} is also used by another protocol"),
                ));
            }
        }
        Ok(())
    }

    pub fn smtp_hostname(&self) -> &str {
        self.smtp
            .hostname
            .as_deref()
            .or(self.server.domains.first().map(String::as_str))
            .unwrap_or("localhost")
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.server.domains.iter().any(|d| d == domain)
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.server
            .admin_socket
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("admin.sock"))
    }

    pub fn store_path(&self) -> PathBuf {
        self.server.data_dir.join("xmta.redb")
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.s2s.idle_timeout_secs)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.s2s.handshake_timeout_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.s2s.connect_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::parse(DEFAULT_CONFIG, "default").expect("default config");
        assert_eq!(c.server.domains, vec!["localhost".to_string()]);
        assert_eq!(c.s2s.max_stanza_bytes, 524_288);
    }

    #[test]
    fn unknown_key_is_named() {
        let e =
            Config::parse("[server]\ndomains=['a.test']\ndata_dri='x'\n", "x.toml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("x.toml:"), "{msg}");
        assert!(msg.contains("data_dri"), "{msg}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse("[server]\ndomains=[]\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("server.domains"), "{e}");
        let e = Config::parse(
            "[server]\ndomains=['a.test']\n[s2s]\nmax_stanza_bytes=10\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("s2s.max_stanza_bytes"), "{e}");
        let e = Config::parse(
            "[server]\ndomains=['a.test']\n[s2s.routes]\n'b.test'='nope'\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("s2s.routes"), "{e}");
        let e = Config::parse(
            "[server]\ndomains=['a.test']\n[s2s]\ntls='sometimes'\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("tls"), "{e}");
        let e = Config::parse(
            "[server]\ndomains=['a.test']\n[smtp]\ntrusted_networks=['10.0.0.0/33']\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("smtp.trusted_networks"), "{e}");
    }

    #[test]
    fn imap_section() {
        let c = Config::parse("[server]\ndomains=['a.test']\n", "x.toml").unwrap();
        assert!(c.imap.listen.is_empty() && !c.imap.allow_plaintext_auth);
        assert_eq!(c.imap.max_literal_bytes, c.delivery.max_message_bytes);
        let e = Config::parse(
            "[server]\ndomains=['a.test']\n[imap]\ntls_listen=['127.0.0.1:993']\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("imap.tls_listen"), "{e}");
        let e = Config::parse(
            "[server]\ndomains=['a.test']\n[imap]\nmax_command_line=10\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("imap.max_command_line"), "{e}");
        let e = Config::parse(
            "[server]\ndomains=['a.test']\n[s2s]\nlisten=['127.0.0.1:5269']\n[imap]\nlisten=['127.0.0.1:5269']\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("imap.listen"), "{e}");
    }

    #[test]
    fn cidr() {
        let n = parse_cidr("127.0.0.80/32").unwrap();
        assert!(cidr_contains(n, "127.0.0.80".parse().unwrap()));
        assert!(!cidr_contains(n, "127.0.0.81".parse().unwrap()));
        let n = parse_cidr("10.0.0.0/8").unwrap();
        assert!(cidr_contains(n, "10.2.3.4".parse().unwrap()));
        assert!(cidr_contains(
            parse_cidr("0.0.0.0/0").unwrap(),
            "1.2.3.4".parse().unwrap()
        ));
        assert!(cidr_contains(
            parse_cidr("::1").unwrap(),
            "::1".parse().unwrap()
        ));
        assert!(parse_cidr("nope").is_none());
    }
}

/// `[imap]`: the IMAP bridge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// Plaintext listeners offering STARTTLS (when a certificate is configured); none by
    /// default.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (RFC 8314, port 993); they need a certificate.
    #[serde(default)]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain and key; `[s2s] cert`/`key` when not set.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Whether LOGIN and AUTHENTICATE work without TLS (LOGINDISABLED otherwise).
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// Most IMAP connections open at once (all listeners together); more get `* BYE`.
    #[serde(default = "default_imap_max_connections")]
    pub max_connections: usize,
    /// Longest command line (one line, literals not counted); longer ones get `BAD`.
    #[serde(default = "default_imap_max_line")]
    pub max_command_line: usize,
    /// Largest literal accepted; `[delivery] max_message_bytes` when 0 (APPEND larger than
    /// that is refused with `NO [TOOBIG]` either way).
    #[serde(default)]
    pub max_literal_bytes: usize,
    /// A session silent for this long is logged out (`* BYE`). Before login at most 60 s.
    #[serde(default = "default_imap_idle")]
    pub idle_timeout_secs: u64,
    /// Failed logins from one client address allowed within `login_failure_window_secs`;
    /// further attempts get `NO [UNAVAILABLE]` until the window has passed.
    #[serde(default = "default_imap_login_failures")]
    pub max_login_failures: u32,
    #[serde(default = "default_imap_login_window")]
    pub login_failure_window_secs: u64,
}

fn default_imap_max_connections() -> usize {
    500
}
fn default_imap_max_line() -> usize {
    65536
}
fn default_imap_idle() -> u64 {
    1800
}
fn default_imap_login_failures() -> u32 {
    5
}
fn default_imap_login_window() -> u64 {
    300
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            listen: Vec::new(),
            tls_listen: Vec::new(),
            cert: None,
            key: None,
            allow_plaintext_auth: false,
            max_connections: default_imap_max_connections(),
            max_command_line: default_imap_max_line(),
            max_literal_bytes: 0,
            idle_timeout_secs: default_imap_idle(),
            max_login_failures: default_imap_login_failures(),
            login_failure_window_secs: default_imap_login_window(),
        }
    }
}
