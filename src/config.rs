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
    /// Registered servers (XEP-MTA "Registries"): a DNS zone listing the domains that may
    /// send mail here, and what to do with the answer.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Postfix integration: the socketmap transport lookup server.
    #[serde(default)]
    pub postfix: PostfixConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// How this host is seen from outside (for `xmta dns-records` and `xmta check`).
    #[serde(default)]
    pub public: PublicConfig,
    /// Graceful shutdown on SIGTERM.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// `xmta import`.
    #[serde(default)]
    pub import: ImportConfig,
    /// The IMAP bridge (listeners off by default).
    #[serde(default)]
    pub imap: ImapConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
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
    /// How peers may authenticate: "certificate" (SASL EXTERNAL, XEP-0178, only),
    /// "dialback" (XEP-0220 only) or "either".
    #[serde(default)]
    pub auth: S2sAuth,
    /// Listeners for direct TLS (XEP-0368, `_xmpps-server._tcp`): TLS from the first byte.
    #[serde(default)]
    pub tls_listen: Vec<SocketAddr>,
    /// Peer domains allowed to send here ("example.org", or "*.example.org" for its
    /// subdomains); empty allows every domain not in `deny`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Peer domains refused (same patterns as `allow`); checked before `allow`.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Most inbound s2s connections open at once from one source address.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Mails one peer domain may send per minute (token bucket refill; 0 = no limit).
    #[serde(default = "default_peer_messages_per_minute")]
    pub peer_messages_per_minute: u64,
    /// Mails one peer domain may send in a burst (the bucket's size).
    #[serde(default = "default_peer_messages_burst")]
    pub peer_messages_burst: u64,
    /// Message octets one peer domain may send per minute (0 = no limit).
    #[serde(default = "default_peer_bytes_per_minute")]
    pub peer_bytes_per_minute: u64,
    /// Message octets one peer domain may send in a burst.
    #[serde(default = "default_peer_bytes_burst")]
    pub peer_bytes_burst: u64,
}

/// `[s2s] auth`: which authentication an inbound peer may use and an outbound stream
/// relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum S2sAuth {
    /// Only a certificate valid for the domain (SASL EXTERNAL); dialback is refused.
    Certificate,
    /// Only Server Dialback; EXTERNAL is neither offered nor used.
    Dialback,
    /// SASL EXTERNAL where both certificates are valid, dialback otherwise.
    #[default]
    Either,
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
    /// Most delivery attempts in flight at once (over all destinations). Mail to an xmta
    /// peer is pipelined on one stream, so this is also the window of mails awaiting
    /// receipts: a wider window lets the receiver commit more mails at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most message bytes held by delivery attempts at once (bodies and the stanzas made of
    /// them, until the receipt). An attempt waits for its share before reading the body;
    /// a message larger than this goes alone.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: u64,
    /// How long the receiver remembers a (domain, mail id, recipient) it stored.
    #[serde(default = "default_dedupe_days")]
    pub dedupe_days: u64,
    /// Most recipients in one message.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Where mail for local users goes: unset for the built-in store, or
    /// "lmtp:HOST:PORT" for an existing IMAP server's LMTP listener (e.g. Dovecot).
    #[serde(default)]
    pub local: Option<String>,
    /// Time allowed for a whole LMTP transaction with `local` (connect to last reply).
    #[serde(default = "default_local_timeout")]
    pub local_timeout_secs: u64,
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
    /// Submission listeners (RFC 6409, port 587 style): AUTH required, STARTTLS offered.
    #[serde(default)]
    pub submission: Vec<SocketAddr>,
    /// Submission with implicit TLS (RFC 8314, port 465 style); needs a certificate.
    #[serde(default)]
    pub submissions: Vec<SocketAddr>,
    /// PEM certificate chain and key for STARTTLS on the SMTP and submission listeners;
    /// `s2s.cert`/`s2s.key` when unset. Without either, STARTTLS is not offered.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Allow AUTH without TLS on submission when the client connects from a loopback address.
    #[serde(default)]
    pub submission_plaintext_loopback: bool,
    /// Failed AUTH attempts a client address may make within `auth_failure_window_secs`;
    /// beyond that AUTH answers `454 4.7.0` (and the connection gets `421 4.7.0`).
    #[serde(default = "default_auth_max_failures")]
    pub auth_max_failures: u32,
    #[serde(default = "default_auth_window")]
    pub auth_failure_window_secs: u64,
    /// Delay before answering a failed AUTH (slows guessing down).
    #[serde(default = "default_auth_delay")]
    pub auth_failure_delay_ms: u64,
    /// Verify SPF, DKIM and DMARC of mail from untrusted clients on the MX listeners and
    /// record the results in an Authentication-Results header (RFC 8601).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// Refuse (550 5.7.1) mail whose DMARC result is fail under a p=reject policy.
    #[serde(default)]
    pub dmarc_reject: bool,
    /// Upper bound for all DNS look-ups of one message's verification.
    #[serde(default = "default_verify_timeout")]
    pub verify_timeout_secs: u64,
    /// Mail over SMTP (MX role, untrusted client) claiming a sender domain known to send
    /// mail over XMPP: "refuse" (550 5.7.1), "tag" (X-Xmta-Downgrade header) or "off".
    #[serde(default = "default_downgrade")]
    pub downgrade: DowngradePolicy,
    /// How long a domain stays known to send its mail over XMPP after it was last seen
    /// doing so (remembered in the store across restarts); 0 keeps it for ever.
    #[serde(default = "default_downgrade_memory")]
    pub downgrade_memory_days: u32,
    /// Longest text line accepted in DATA, CRLF included; a message with a longer line is
    /// refused whole with `554 5.5.2` (never split or truncated).
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    /// Wait this long before the greeting; a client that talks first gets `554 5.5.1`.
    #[serde(default)]
    pub greeting_delay_ms: u64,
    /// Refused commands (5xx) one session may make before it is closed with `421 4.7.0`.
    #[serde(default = "default_max_errors")]
    pub max_errors: u32,
    /// "host:port" of an SMTP relay for domains that take no mail over XMPP (no
    /// `[s2s.routes]` entry and no `_xmpp-server._tcp` SRV record). Unset: such mail bounces.
    #[serde(default)]
    pub smarthost: Option<String>,
    /// STARTTLS toward the smarthost: "off", "optional" (when offered) or "required".
    #[serde(default = "default_smarthost_tls")]
    pub smarthost_tls: SmarthostTls,
    /// Accept any certificate from the smarthost (a loopback relay with a self-signed one).
    #[serde(default)]
    pub smarthost_allow_invalid_certs: bool,
    /// Time allowed for each command/reply with the smarthost.
    #[serde(default = "default_smarthost_timeout")]
    pub smarthost_timeout_secs: u64,
}

/// What to do with SMTP mail that should have come over XMPP (see `smtp.downgrade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DowngradePolicy {
    Refuse,
    Tag,
    Off,
}

/// STARTTLS policy toward `[smtp] smarthost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmarthostTls {
    Off,
    Optional,
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. "info" or "xmta=debug".
    #[serde(default = "default_log_level")]
    pub level: String,
    /// "human" (default) or "json" (one JSON object per line, for log shippers).
    #[serde(default)]
    pub format: LogFormat,
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
fn default_max_connections_per_ip() -> usize {
    100
}
fn default_peer_messages_per_minute() -> u64 {
    6000
}
fn default_peer_messages_burst() -> u64 {
    2000
}
fn default_peer_bytes_per_minute() -> u64 {
    1 << 30
}
fn default_peer_bytes_burst() -> u64 {
    256 << 20
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
    256
}
fn default_max_inflight_bytes() -> u64 {
    256 << 20
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
fn default_auth_max_failures() -> u32 {
    5
}
fn default_auth_window() -> u64 {
    300
}
fn default_auth_delay() -> u64 {
    1000
}
fn default_true() -> bool {
    true
}
fn default_verify_timeout() -> u64 {
    20
}
fn default_downgrade_memory() -> u32 {
    365
}

fn default_downgrade() -> DowngradePolicy {
    DowngradePolicy::Refuse
}
fn default_max_line() -> usize {
    65_536
}
fn default_max_errors() -> u32 {
    20
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
            auth: S2sAuth::default(),
            tls_listen: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            max_connections_per_ip: default_max_connections_per_ip(),
            peer_messages_per_minute: default_peer_messages_per_minute(),
            peer_messages_burst: default_peer_messages_burst(),
            peer_bytes_per_minute: default_peer_bytes_per_minute(),
            peer_bytes_burst: default_peer_bytes_burst(),
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
            max_inflight_bytes: default_max_inflight_bytes(),
            dedupe_days: default_dedupe_days(),
            max_recipients: default_max_recipients(),
            local: None,
            local_timeout_secs: default_local_timeout(),
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
            submission: Vec::new(),
            submissions: Vec::new(),
            cert: None,
            key: None,
            submission_plaintext_loopback: false,
            auth_max_failures: default_auth_max_failures(),
            auth_failure_window_secs: default_auth_window(),
            auth_failure_delay_ms: default_auth_delay(),
            verify: true,
            dmarc_reject: false,
            verify_timeout_secs: default_verify_timeout(),
            downgrade: default_downgrade(),
            downgrade_memory_days: default_downgrade_memory(),
            max_line_bytes: default_max_line(),
            greeting_delay_ms: 0,
            max_errors: default_max_errors(),
            smarthost: None,
            smarthost_tls: default_smarthost_tls(),
            smarthost_allow_invalid_certs: false,
            smarthost_timeout_secs: default_smarthost_timeout(),
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
            format: LogFormat::Human,
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
        if self.delivery.max_inflight_bytes < 1 << 20 {
            return Err(self.invalid(
                "delivery.max_inflight_bytes",
                "must be at least 1048576 (1 MiB)",
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
        self.validate_s2s_policy()?;
        self.validate_registry()?;
        self.validate_smtp_extra()?;
        self.validate_postfix()?;
        if let Some(h) = &self.public.hostname {
            let n = crate::addr::normalize_domain(h)
                .map_err(|e| self.invalid("public.hostname", format!("`{h}`: {e}")))?;
            self.public.hostname = Some(n);
        }
        if self.metrics.max_connections == 0 {
            return Err(self.invalid("metrics.max_connections", "must be at least 1"));
        }
        if self.shutdown.grace_secs == 0 {
            return Err(self.invalid("shutdown.grace_secs", "must be at least 1"));
        }
        if self.import.batch_messages == 0 || self.import.batch_bytes < 1024 {
            return Err(self.invalid(
                "import",
                "batch_messages must be at least 1 and batch_bytes at least 1024",
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

    /// Checks of the STARTTLS, submission, verification and limit keys of `[smtp]`.
    fn validate_smtp_extra(&self) -> Result<(), ConfigError> {
        if self.smtp.cert.is_some() != self.smtp.key.is_some() {
            return Err(self.invalid(
                "smtp.cert",
                "`cert` and `key` go together: set both or neither",
            ));
        }
        for (k, p) in [("smtp.cert", &self.smtp.cert), ("smtp.key", &self.smtp.key)] {
            if let Some(p) = p
                && !p.is_file()
            {
                return Err(self.invalid(k, format!("{} is not a readable file", p.display())));
            }
        }
        if !self.smtp.submissions.is_empty() && self.smtp.cert.is_none() && self.s2s.cert.is_none()
        {
            return Err(self.invalid(
                "smtp.submissions",
                "implicit TLS needs `smtp.cert` and `smtp.key` (or `s2s.cert` and `s2s.key`)",
            ));
        }
        let mut seen = self.smtp.listen.clone();
        seen.extend(self.smtp.lmtp);
        for a in self.smtp.submission.iter().chain(&self.smtp.submissions) {
            if seen.contains(a) {
                return Err(self.invalid(
                    "smtp.submission",
                    format!("{a} is listed twice among the SMTP, LMTP and submission listeners; one address serves one protocol"),
                ));
            }
            seen.push(*a);
        }
        if self.smtp.auth_max_failures == 0 || self.smtp.auth_failure_window_secs == 0 {
            return Err(self.invalid(
                "smtp.auth_max_failures",
                "auth_max_failures and auth_failure_window_secs must be at least 1",
            ));
        }
        if self.smtp.verify_timeout_secs == 0 {
            return Err(self.invalid("smtp.verify_timeout_secs", "must be at least 1"));
        }
        // RFC 5321 §4.5.3.1.6: every receiver must take 1000-octet lines.
        if self.smtp.max_line_bytes < 1000 {
            return Err(self.invalid("smtp.max_line_bytes", "must be at least 1000"));
        }
        if self.smtp.max_errors == 0 {
            return Err(self.invalid("smtp.max_errors", "must be at least 1"));
        }
        if self.smtp.greeting_delay_ms > 60_000 {
            return Err(self.invalid("smtp.greeting_delay_ms", "must be at most 60000"));
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

/// `[registry]`: registered servers (XEP-MTA "Registries", RFC 5782 conventions).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The DNS zone, e.g. "registry.example.net"; no zone, no registry check.
    #[serde(default)]
    pub zone: Option<String>,
    /// "require" refuses unregistered and suspended peers, "tag" records the answer in
    /// Authentication-Results, "off" does not ask. Default "tag" when a zone is set.
    #[serde(default)]
    pub policy: Option<RegistryPolicy>,
    /// Per peer domain policy, e.g. `"partner.example" = "off"`.
    #[serde(default)]
    pub overrides: BTreeMap<String, RegistryPolicy>,
    /// Also ask `<domain>.<reversed peer ip>.<zone>`: the domain must be registered for
    /// the address it connects from.
    #[serde(default)]
    pub bind_ip: bool,
    /// Nameservers for registry queries; empty uses `[dns] nameservers`, then the system's.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// Floor and ceiling of the time an answer (also NXDOMAIN) is cached, whatever its TTL.
    #[serde(default = "default_registry_min_ttl")]
    pub min_ttl_secs: u64,
    #[serde(default = "default_registry_max_ttl")]
    pub max_ttl_secs: u64,
    /// A registry query not answered in this long is a lookup failure (the mail is deferred).
    #[serde(default = "default_registry_timeout")]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryPolicy {
    Require,
    Tag,
    Off,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            zone: None,
            policy: None,
            overrides: BTreeMap::new(),
            bind_ip: false,
            nameservers: Vec::new(),
            min_ttl_secs: default_registry_min_ttl(),
            max_ttl_secs: default_registry_max_ttl(),
            timeout_secs: default_registry_timeout(),
        }
    }
}

/// `[postfix]`: the socketmap server Postfix asks for transports (`transport_maps =
/// socketmap:inet:HOST:PORT:NAME`), answering for local domains and domains reachable over
/// XMPP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostfixConfig {
    /// TCP address of the socketmap server; unset: no server.
    #[serde(default)]
    pub socketmap: Option<SocketAddr>,
    /// The map name Postfix puts before each key (the NAME in socketmap:inet:HOST:PORT:NAME).
    #[serde(default = "default_map_name")]
    pub map_name: String,
    /// The transport answered; default `lmtp:inet:<[smtp] lmtp>`.
    #[serde(default)]
    pub transport: Option<String>,
    /// How long a "reachable over XMPP" answer is cached.
    #[serde(default = "default_route_cache")]
    pub cache_secs: u64,
    /// How long a "not reachable over XMPP" answer is cached.
    #[serde(default = "default_route_negative_cache")]
    pub negative_cache_secs: u64,
    /// Longest netstring request accepted; longer closes that connection.
    #[serde(default = "default_socketmap_max_request")]
    pub max_request_bytes: usize,
    /// Most socketmap connections open at once.
    #[serde(default = "default_socketmap_max_connections")]
    pub max_connections: usize,
    /// A socketmap connection idle this long is closed.
    #[serde(default = "default_socketmap_idle")]
    pub idle_timeout_secs: u64,
}

fn default_map_name() -> String {
    "transport".into()
}
fn default_route_cache() -> u64 {
    300
}
fn default_route_negative_cache() -> u64 {
    60
}
fn default_socketmap_max_request() -> usize {
    1024
}
fn default_socketmap_max_connections() -> usize {
    100
}
fn default_socketmap_idle() -> u64 {
    300
}
fn default_local_timeout() -> u64 {
    120
}
fn default_smarthost_tls() -> SmarthostTls {
    SmarthostTls::Optional
}
fn default_smarthost_timeout() -> u64 {
    60
}

impl Default for PostfixConfig {
    fn default() -> Self {
        PostfixConfig {
            socketmap: None,
            map_name: default_map_name(),
            transport: None,
            cache_secs: default_route_cache(),
            negative_cache_secs: default_route_negative_cache(),
            max_request_bytes: default_socketmap_max_request(),
            max_connections: default_socketmap_max_connections(),
            idle_timeout_secs: default_socketmap_idle(),
        }
    }
}

/// `[metrics]`: a Prometheus text endpoint (`/metrics`) and a health check (`/healthz`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint; none by default. Keep it on loopback or a private
    /// network: it needs no authentication.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Most scrapes served at once; further connections are closed at accept.
    #[serde(default = "default_metrics_connections")]
    pub max_connections: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            max_connections: default_metrics_connections(),
        }
    }
}

fn default_registry_min_ttl() -> u64 {
    60
}
fn default_registry_max_ttl() -> u64 {
    86_400
}
fn default_registry_timeout() -> u64 {
    3
}

/// A peer domain pattern of `[s2s] allow` / `deny`: "example.org" or "*.example.org".
pub fn domain_matches(pattern: &str, domain: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => domain
            .strip_suffix(parent)
            .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        None => pattern == domain,
    }
}

impl Config {
    fn validate_s2s_policy(&mut self) -> Result<(), ConfigError> {
        for key in ["allow", "deny"] {
            let list = if key == "allow" {
                &self.s2s.allow
            } else {
                &self.s2s.deny
            };
            let mut out = Vec::new();
            for p in list {
                let (wild, d) = match p.strip_prefix("*.") {
                    Some(d) => (true, d),
                    None => (false, p.as_str()),
                };
                let n = crate::addr::normalize_domain(d)
                    .map_err(|e| self.invalid(&format!("s2s.{key}"), format!("`{p}`: {e}")))?;
                out.push(if wild { format!("*.{n}") } else { n });
            }
            if key == "allow" {
                self.s2s.allow = out;
            } else {
                self.s2s.deny = out;
            }
        }
        if !self.s2s.tls_listen.is_empty() && self.s2s.cert.is_none() {
            return Err(self.invalid(
                "s2s.tls_listen",
                "direct TLS needs `s2s.cert` and `s2s.key`",
            ));
        }
        if self.s2s.auth == S2sAuth::Certificate && self.s2s.cert.is_none() {
            return Err(self.invalid(
                "s2s.auth",
                "\"certificate\" needs `s2s.cert` and `s2s.key` (SASL EXTERNAL presents them)",
            ));
        }
        if self.s2s.auth == S2sAuth::Certificate && self.s2s.tls == TlsMode::Off {
            return Err(self.invalid(
                "s2s.auth",
                "\"certificate\" needs TLS: set `s2s.tls` to \"optional\" or \"required\"",
            ));
        }
        if self.s2s.max_connections_per_ip == 0 {
            return Err(self.invalid("s2s.max_connections_per_ip", "must be at least 1"));
        }
        for (k, rate, burst) in [
            (
                "s2s.peer_messages_burst",
                self.s2s.peer_messages_per_minute,
                self.s2s.peer_messages_burst,
            ),
            (
                "s2s.peer_bytes_burst",
                self.s2s.peer_bytes_per_minute,
                self.s2s.peer_bytes_burst,
            ),
        ] {
            if rate > 0 && burst == 0 {
                return Err(self.invalid(k, "must be at least 1 when the rate is limited"));
            }
        }
        Ok(())
    }

    fn validate_registry(&mut self) -> Result<(), ConfigError> {
        match self.registry.zone.clone() {
            None => {
                if matches!(
                    self.registry.policy,
                    Some(RegistryPolicy::Require) | Some(RegistryPolicy::Tag)
                ) {
                    return Err(self.invalid("registry.policy", "needs `registry.zone`"));
                }
            }
            Some(z) => {
                let n = crate::addr::normalize_domain(z.trim_end_matches('.'))
                    .map_err(|e| self.invalid("registry.zone", format!("`{z}`: {e}")))?;
                self.registry.zone = Some(n);
            }
        }
        let mut overrides = BTreeMap::new();
        for (d, p) in &self.registry.overrides {
            let n = crate::addr::normalize_domain(d)
                .map_err(|e| self.invalid(&format!("registry.overrides.\"{d}\""), e.to_string()))?;
            overrides.insert(n, *p);
        }
        self.registry.overrides = overrides;
        if self.registry.timeout_secs == 0 {
            return Err(self.invalid("registry.timeout_secs", "must be at least 1"));
        }
        if self.registry.max_ttl_secs < self.registry.min_ttl_secs {
            return Err(self.invalid(
                "registry.max_ttl_secs",
                "must not be smaller than registry.min_ttl_secs",
            ));
        }
        Ok(())
    }

    /// The registry policy for peer `domain`: None when no registry is configured or the
    /// policy (or its override) is "off".
    pub fn registry_policy(&self, domain: &str) -> Option<RegistryPolicy> {
        self.registry.zone.as_ref()?;
        let p = self
            .registry
            .overrides
            .get(domain)
            .copied()
            .or(self.registry.policy)
            .unwrap_or(RegistryPolicy::Tag);
        (p != RegistryPolicy::Off).then_some(p)
    }

    /// Whether `[s2s] allow` / `deny` let peer `domain` in.
    pub fn peer_allowed(&self, domain: &str) -> bool {
        if self.s2s.deny.iter().any(|p| domain_matches(p, domain)) {
            return false;
        }
        self.s2s.allow.is_empty() || self.s2s.allow.iter().any(|p| domain_matches(p, domain))
    }
}

/// A parsed `[delivery] local` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalTarget {
    /// The built-in store.
    Store,
    /// An LMTP server at host:port.
    Lmtp(String, u16),
}

impl Config {
    /// Where local mail goes (`[delivery] local`, validated at load).
    pub fn local_target(&self) -> LocalTarget {
        match self.delivery.local.as_deref().and_then(parse_local) {
            Some(t) => t,
            None => LocalTarget::Store,
        }
    }

    /// The transport the socketmap answers: `[postfix] transport`, else LMTP to our listener.
    pub fn postfix_transport(&self) -> Option<String> {
        match (&self.postfix.transport, self.smtp.lmtp) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(l)) => Some(format!("lmtp:inet:{}:{}", l.ip(), l.port())),
            (None, None) => None,
        }
    }

    fn validate_postfix(&self) -> Result<(), ConfigError> {
        if let Some(l) = &self.delivery.local
            && parse_local(l).is_none()
        {
            return Err(self.invalid(
                "delivery.local",
                format!("`{l}` is neither \"store\" nor \"lmtp:HOST:PORT\""),
            ));
        }
        if self.delivery.local_timeout_secs == 0 || self.smtp.smarthost_timeout_secs == 0 {
            return Err(self.invalid(
                "delivery.local_timeout_secs / smtp.smarthost_timeout_secs",
                "must be at least 1",
            ));
        }
        if let Some(h) = &self.smtp.smarthost
            && crate::s2s::resolve::parse_host_port(h).is_none()
        {
            return Err(self.invalid("smtp.smarthost", format!("`{h}` is not host:port")));
        }
        let p = &self.postfix;
        if p.socketmap.is_some() && self.postfix_transport().is_none() {
            return Err(self.invalid(
                "postfix.transport",
                "the socketmap needs a transport to answer: set it, or set smtp.lmtp",
            ));
        }
        if p.map_name.is_empty() || p.map_name.contains([' ', ':', ',']) {
            return Err(self.invalid("postfix.map_name", "one word without spaces, ':' or ','"));
        }
        if let Some(t) = &p.transport
            && (t.is_empty() || t.contains(['\r', '\n']))
        {
            return Err(self.invalid("postfix.transport", "must be one non-empty line"));
        }
        if p.max_request_bytes < 64 || p.max_request_bytes > 100_000 {
            return Err(self.invalid("postfix.max_request_bytes", "must be 64..=100000"));
        }
        if p.max_connections == 0 || p.idle_timeout_secs == 0 {
            return Err(self.invalid(
                "postfix",
                "max_connections and idle_timeout_secs must be at least 1",
            ));
        }
        Ok(())
    }
}

fn parse_local(s: &str) -> Option<LocalTarget> {
    if s == "store" {
        return Some(LocalTarget::Store);
    }
    let rest = s.strip_prefix("lmtp:")?;
    let rest = rest.strip_prefix("inet:").unwrap_or(rest);
    let (h, p) = crate::s2s::resolve::parse_host_port(rest)?;
    Some(LocalTarget::Lmtp(h, p))
}

fn default_metrics_connections() -> usize {
    16
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `[public]`: how other servers reach this one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicConfig {
    /// The DNS name of this host, the target of the SRV records (default: `smtp.hostname`,
    /// which defaults to the first mail domain).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The s2s port other servers connect to (default: the port of the first `s2s.listen`);
    /// differs from it behind port forwarding.
    #[serde(default)]
    pub s2s_port: Option<u16>,
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM, how long to wait for in-flight SMTP/LMTP sessions and admin requests
    /// (e.g. `xmta send`) to finish after the listeners stopped accepting.
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_secs: default_grace(),
        }
    }
}

fn default_grace() -> u64 {
    8
}

/// `[import]`: `xmta import` batches (one store transaction each).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// Most messages in one batch.
    #[serde(default = "default_import_batch")]
    pub batch_messages: usize,
    /// Most message bytes in one batch (a batch holds at least one message).
    #[serde(default = "default_import_bytes")]
    pub batch_bytes: usize,
}

impl Default for ImportConfig {
    fn default() -> Self {
        ImportConfig {
            batch_messages: default_import_batch(),
            batch_bytes: default_import_bytes(),
        }
    }
}

/// `[gateway]`: the SMTP gateway's routing of plain XMPP domains and SRS for relayed mail
/// with foreign senders (see `crate::srs`, `crate::delivery::route`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Domains with an XMPP server that does not announce urn:xmpp:mta:0: "smarthost"
    /// (their mail goes to `[smtp] smarthost` when one is set) or "xmpp-body" (always the
    /// legacy body-only XMPP delivery). Without a smarthost both mean "xmpp-body".
    #[serde(default = "default_plain_xmpp")]
    pub plain_xmpp: PlainXmpp,
    /// Rewrite foreign envelope senders of relayed mail to SRS0 addresses in a local domain.
    #[serde(default = "default_true")]
    pub srs: bool,
    /// The name of the SRS key in the store (generated on first start).
    #[serde(default = "default_srs_secret")]
    pub srs_secret: String,
    /// How long an SRS address stays valid, in days.
    #[serde(default = "default_srs_days")]
    pub srs_max_age_days: u32,
    /// How long the socketmap waits for service discovery of an unknown XMPP domain
    /// before answering from its SRV record alone.
    #[serde(default = "default_socketmap_disco")]
    pub socketmap_disco_timeout_secs: u64,
}

/// See `gateway.plain_xmpp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlainXmpp {
    Smarthost,
    XmppBody,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            plain_xmpp: default_plain_xmpp(),
            srs: true,
            srs_secret: default_srs_secret(),
            srs_max_age_days: default_srs_days(),
            socketmap_disco_timeout_secs: default_socketmap_disco(),
        }
    }
}

fn default_plain_xmpp() -> PlainXmpp {
    PlainXmpp::Smarthost
}
fn default_srs_secret() -> String {
    "srs".into()
}
fn default_srs_days() -> u32 {
    21
}
fn default_socketmap_disco() -> u64 {
    10
}

fn default_import_batch() -> usize {
    500
}
fn default_import_bytes() -> usize {
    16 << 20
}

impl Config {
    /// The SRV target: `public.hostname`, else `smtp.hostname` (itself defaulting to the
    /// first mail domain).
    pub fn public_hostname(&self) -> String {
        self.public
            .hostname
            .clone()
            .unwrap_or_else(|| self.smtp_hostname().to_string())
    }

    /// The port other servers reach the s2s listener on.
    pub fn public_s2s_port(&self) -> u16 {
        self.public
            .s2s_port
            .or(self.s2s.listen.first().map(|a| a.port()))
            .unwrap_or(5269)
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
    fn smtp_keys_checked() {
        let base = "[server]\ndomains=['a.test']\n[smtp]\n";
        let c = Config::parse(base, "x.toml").expect("defaults");
        assert!(c.smtp.verify);
        assert_eq!(c.smtp.downgrade, DowngradePolicy::Refuse);
        assert_eq!(c.smtp.max_line_bytes, 65_536);
        for (bad, key) in [
            ("max_line_bytes = 999\n", "smtp.max_line_bytes"),
            ("downgrade = 'sometimes'\n", "downgrade"),
            ("auth_max_failures = 0\n", "smtp.auth_max_failures"),
            ("max_errors = 0\n", "smtp.max_errors"),
            (
                "cert = '/nonexistent.pem'\nkey = '/nonexistent.key'\n",
                "smtp.cert",
            ),
            ("cert = '/nonexistent.pem'\n", "smtp.cert"),
        ] {
            let e = Config::parse(&format!("{base}{bad}"), "x.toml").unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn postfix_smarthost_and_local_keys() {
        let base = "[server]\ndomains=['a.test']\n";
        let c = Config::parse(
            &format!("{base}[smtp]\nlmtp='127.0.0.1:24'\n[postfix]\nsocketmap='127.0.0.1:7777'\n"),
            "x",
        )
        .unwrap();
        assert_eq!(
            c.postfix_transport().as_deref(),
            Some("lmtp:inet:127.0.0.1:24")
        );
        assert_eq!(c.local_target(), LocalTarget::Store);
        let c = Config::parse(
            &format!("{base}[delivery]\nlocal='lmtp:127.0.0.9:2424'\n[smtp]\nsmarthost='relay.test:25'\nsmarthost_tls='required'\n"),
            "x",
        )
        .unwrap();
        assert_eq!(
            c.local_target(),
            LocalTarget::Lmtp("127.0.0.9".into(), 2424)
        );
        assert_eq!(c.smtp.smarthost_tls, SmarthostTls::Required);
        for (bad, key) in [
            (
                "[postfix]\nsocketmap='127.0.0.1:7777'\n",
                "postfix.transport",
            ),
            ("[delivery]\nlocal='imap:x'\n", "delivery.local"),
            (
                "[delivery]\nmax_inflight_bytes=4096\n",
                "delivery.max_inflight_bytes",
            ),
            ("[smtp]\nsmarthost='nope'\n", "smtp.smarthost"),
            (
                "[postfix]\nmax_request_bytes=10\n",
                "postfix.max_request_bytes",
            ),
            ("[postfix]\nmap_name='a b'\n", "postfix.map_name"),
        ] {
            let e = Config::parse(&format!("{base}{bad}"), "x").unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
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

    #[test]
    fn registry_and_policy_keys() {
        let c = Config::parse(
            "[server]\ndomains=['a.test']\n[s2s]\ndeny=['*.Evil.test']\nallow=['b.test','*.c.test']\n[registry]\nzone='reg.test.'\npolicy='require'\n[registry.overrides]\n'X.test'='off'\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.registry.zone.as_deref(), Some("reg.test"));
        assert_eq!(c.registry_policy("b.test"), Some(RegistryPolicy::Require));
        assert_eq!(c.registry_policy("x.test"), None);
        assert!(c.peer_allowed("b.test"));
        assert!(c.peer_allowed("m.c.test"));
        assert!(!c.peer_allowed("c.test"));
        assert!(!c.peer_allowed("d.test"));
        assert!(!c.peer_allowed("a.evil.test"));
        let e = Config::parse(
            "[server]\ndomains=['a.test']\n[registry]\npolicy='require'\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("registry.policy"), "{e}");
        let e = Config::parse(
            "[server]\ndomains=['a.test']\n[s2s]\nauth='certificate'\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("s2s.auth"), "{e}");
        let e = Config::parse(
            "[server]\ndomains=['a.test']\n[s2s]\ndeny=['bad domain']\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("s2s.deny"), "{e}");
        let c = Config::parse("[server]\ndomains=['a.test']\n", "x.toml").unwrap();
        assert_eq!(c.registry_policy("b.test"), None);
        assert!(c.peer_allowed("b.test"));
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
    /// Deepest nesting of SEARCH keys (parentheses, OR, NOT; a plain key is 1) before BAD.
    /// imap-codec's parser stops at 9 whatever this says, so larger values act as 9.
    #[serde(default = "default_imap_search_depth")]
    pub max_search_depth: usize,
}

fn default_imap_search_depth() -> usize {
    9
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
            max_search_depth: default_imap_search_depth(),
        }
    }
}

impl Config {
    /// Validates a config assembled by a reload (the new file's live keys with the running
    /// restart-only ones, see `crate::live::restart_only`): the mix must hold together too.
    pub fn revalidate(&mut self) -> Result<(), ConfigError> {
        self.validate()
    }
}
