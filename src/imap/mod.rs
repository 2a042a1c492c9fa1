//! The IMAP bridge: IMAP4rev1 (RFC 3501) with IDLE, UIDPLUS, MOVE, CONDSTORE, NAMESPACE,
//! UNSELECT, LITERAL+, ENABLE and SPECIAL-USE over the store's folders, so that ordinary mail
//! clients read the mail xmta received over XMPP or SMTP.
//!
//! Commands are answered with hand-written response lines (FETCH data in fetch.rs); the
//! grammar of the replies is small and fixed, while parsing is where the hard cases are.
//! Unit tests in fetch.rs parse those replies back with imap-codec's response decoder.
//!
//! Commands are parsed by imap-codec: its `Fragmentizer` splits the byte stream into lines and
//! literals (so literal sizes are checked before a byte of them is accepted) and its codecs
//! decode commands, AUTHENTICATE data and IDLE's DONE. Sessions on the same folder learn of new
//! mail, flag changes and expunges through the store's change notifications (sent after each
//! commit), at once during IDLE and otherwise with the next command (RFC 3501 §7: no EXPUNGE
//! during FETCH, STORE or SEARCH).
//!
//! Listeners: `[imap] listen` (plaintext with STARTTLS) and `[imap] tls_listen` (implicit TLS,
//! RFC 8314). Limits, each a key of `[imap]`: command line length (`BAD`), literal size
//! (`NO [TOOBIG]` for a synchronizing literal; a non-synchronizing one that is too large cannot
//! be refused without reading it, so the connection is closed with `BYE`), message size for
//! APPEND (`[delivery] max_message_bytes`), idle time (`BYE` autologout), connections (`BYE` at
//! connect) and failed logins per client address (`NO [UNAVAILABLE]`). SEARCH nesting is
//! bounded by `max_search_depth` (`BAD`), within imap-codec's own fixed recursion limit of 9
//! (a deeper key does not parse: `BAD` too). Mailbox names are modified UTF-7 on the wire and
//! UTF-8 in the store (utf7.rs); \Recent is handed out through a store op (`ClaimRecent`).

mod auth;
/// Public only for the cargo-fuzz targets in tests/fuzz (FETCH rendering); not an API.
#[doc(hidden)]
pub mod fetch;
/// Public only for the cargo-fuzz targets in tests/fuzz (SEARCH evaluation); not an API.
#[doc(hidden)]
pub mod search;
mod session;
/// Public only for the cargo-fuzz targets in tests/fuzz (modified UTF-7); not an API.
#[doc(hidden)]
pub mod utf7;

use std::sync::Arc;
use std::time::Duration;

use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::imap_types::core::LiteralMode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::server::Core;

pub use auth::LoginLimiter;

/// Anything a session can run over: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("IMAP TLS set-up: {0}")]
    Tls(String),
}

/// What all IMAP listeners share.
pub struct Imap {
    pub core: Arc<Core>,
    /// Present when a certificate is configured: STARTTLS and `tls_listen` work.
    pub tls: Option<TlsAcceptor>,
    /// The certificate behind `tls`, re-read on SIGHUP.
    pub cert: Option<Arc<crate::s2s::tls::LiveCert>>,
    pub limiter: LoginLimiter,
    /// Connections open, against `[imap] max_connections` as in force at each accept.
    slots: Arc<crate::live::Slots>,
}

impl Imap {
    pub fn new(core: Arc<Core>) -> Result<Arc<Imap>, ImapError> {
        let cfg = core.cfg.get();
        let cert = cfg.imap.cert.as_ref().or(cfg.s2s.cert.as_ref());
        let key = cfg.imap.key.as_ref().or(cfg.s2s.key.as_ref());
        let (tls, cert) = match (cert, key) {
            (Some(cert), Some(key)) => {
                let (a, c) = acceptor(cert, key)?;
                (Some(a), Some(c))
            }
            _ => (None, None),
        };
        if tls.is_none() && !cfg.imap.tls_listen.is_empty() {
            return Err(ImapError::Tls(
                "imap.tls_listen needs imap.cert and imap.key (or s2s.cert and s2s.key)".into(),
            ));
        }
        Ok(Arc::new(Imap {
            limiter: LoginLimiter::new(
                cfg.imap.max_login_failures,
                Duration::from_secs(cfg.imap.login_failure_window_secs),
            ),
            slots: crate::live::Slots::new(),
            tls,
            cert,
            core,
        }))
    }
}

fn acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(TlsAcceptor, Arc<crate::s2s::tls::LiveCert>), ImapError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let live = crate::s2s::tls::LiveCert::load(cert, key, provider)
        .map_err(|e| ImapError::Tls(e.to_string()))?;
    let config = live
        .server_config()
        .map_err(|e| ImapError::Tls(e.to_string()))?;
    Ok((TlsAcceptor::from(Arc::new(config)), live))
}

/// Accepts connections on `listener` until the process ends; with `implicit_tls` each one
/// starts with the TLS handshake.
pub async fn serve(imap: Arc<Imap>, listener: TcpListener, implicit_tls: bool) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "imap accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let imap = imap.clone();
        tokio::spawn(async move {
            let cfg = imap.core.cfg.get();
            let Some(permit) = imap.slots.try_take(cfg.imap.max_connections) else {
                warn!(%peer, "imap: too many connections");
                let mut sock = sock;
                let _ = sock
                    .write_all(b"* BYE [UNAVAILABLE] too many connections, try again later\r\n")
                    .await;
                return;
            };
            let _permit = permit;
            let _ = sock.set_nodelay(true);
            let io: Box<dyn Io> = if implicit_tls {
                let Some(tls) = imap.tls.clone() else { return };
                let handshake = Duration::from_secs(cfg.imap.idle_timeout_secs.min(60));
                match tokio::time::timeout(handshake, tls.accept(sock)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "imap TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                }
            } else {
                Box::new(sock)
            };
            info!(%peer, tls = implicit_tls, "imap connection");
            let conn = Conn::new(io, &cfg.imap, implicit_tls);
            match session::run(imap.clone(), conn, peer).await {
                Ok(()) => debug!(%peer, "imap session ended"),
                Err(e) => debug!(%peer, error = %e, "imap session ended"),
            }
        });
    }
}

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
pub enum ConnEnd {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("client closed the connection")]
    Closed,
    #[error("idle timeout")]
    Idle,
    /// The connection cannot go on (a reason was sent with BYE).
    #[error("closed by the server: {0}")]
    Fatal(String),
}

/// The byte stream of one connection and the fragmentizer over it.
pub(crate) struct Conn {
    io: Box<dyn Io>,
    frag: Fragmentizer,
    buf: Vec<u8>,
    pub tls: bool,
    max_line: usize,
    max_literal: u32,
    /// Where the fragment being read starts in the message, and whether it is a literal.
    fragment_start: usize,
    in_literal: bool,
    /// Set when a line of the current message was too long: it is answered BAD when complete.
    too_long: bool,
}

impl Conn {
    fn new(io: Box<dyn Io>, cfg: &crate::config::ImapConfig, tls: bool) -> Conn {
        let max_literal = u32::try_from(cfg.max_literal_bytes).unwrap_or(u32::MAX);
        Conn {
            io,
            frag: new_fragmentizer(cfg),
            buf: vec![0; 64 << 10],
            tls,
            max_line: cfg.max_command_line,
            max_literal,
            fragment_start: 0,
            in_literal: false,
            too_long: false,
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnEnd> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Starts TLS on the connection (after STARTTLS was answered). Bytes the client sent
    /// before the handshake are dropped (RFC 3501 §6.2.1: no plaintext command injection).
    pub async fn start_tls(
        &mut self,
        acceptor: &TlsAcceptor,
        cfg: &crate::config::ImapConfig,
    ) -> Result<(), ConnEnd> {
        let placeholder: Box<dyn Io> =
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()));
        let plain = std::mem::replace(&mut self.io, placeholder);
        let tls = acceptor
            .accept(plain)
            .await
            .map_err(|e| ConnEnd::Fatal(format!("TLS handshake: {e}")))?;
        self.io = Box::new(tls);
        self.frag = new_fragmentizer(cfg);
        self.fragment_start = 0;
        self.in_literal = false;
        self.too_long = false;
        self.tls = true;
        Ok(())
    }

    /// Reads until the fragmentizer holds a complete message. Synchronizing literals are
    /// accepted with a continuation request if they fit the limit and refused (the tagged
    /// reply is written here) otherwise; overlong lines are answered when the line ends.
    /// Returns `Ok(false)` when a message was refused here and the caller should read again.
    pub async fn next_message(&mut self, idle: Duration) -> Result<bool, ConnEnd> {
        loop {
            while let Some(info) = self.frag.progress() {
                match info {
                    FragmentInfo::Line {
                        start,
                        end,
                        announcement,
                        ..
                    } => {
                        self.fragment_start = end;
                        self.in_literal = announcement.is_some();
                        if end - start > self.max_line {
                            self.too_long = true;
                            self.frag.poison_message();
                        }
                        if let Some(LiteralAnnouncement { mode, length }) = announcement
                            && let Some(refused) = self.refuse_literal(mode, length).await?
                        {
                            return Ok(refused);
                        }
                    }
                    FragmentInfo::Literal { end, .. } => {
                        self.fragment_start = end;
                        self.in_literal = false;
                    }
                }
                if self.frag.is_message_complete() {
                    self.fragment_start = 0;
                    self.in_literal = false;
                    if std::mem::take(&mut self.too_long) {
                        let tag = self.tag();
                        self.write(format!("{tag} BAD command line too long\r\n").as_bytes())
                            .await?;
                        return Ok(false);
                    }
                    return Ok(true);
                }
            }
            // A line still without its end that is already too long: its tag is answered now
            // and the rest of the line is read and dropped, without buffering it.
            if !self.in_literal
                && self
                    .frag
                    .message_bytes()
                    .len()
                    .saturating_sub(self.fragment_start)
                    > self.max_line
            {
                let tag = self.tag();
                self.write(format!("{tag} BAD command line too long\r\n").as_bytes())
                    .await?;
                self.discard_line(idle).await?;
                return Ok(false);
            }
            let n = match tokio::time::timeout(idle, self.io.read(&mut self.buf)).await {
                Ok(r) => r?,
                Err(_) => return Err(ConnEnd::Idle),
            };
            if n == 0 {
                return Err(ConnEnd::Closed);
            }
            self.frag.enqueue_bytes(&self.buf[..n]);
        }
    }

    /// Checks an announced literal; `Some(false)` when it was refused (and answered).
    async fn refuse_literal(
        &mut self,
        mode: LiteralMode,
        length: u32,
    ) -> Result<Option<bool>, ConnEnd> {
        let poisoned = self.frag.is_message_poisoned();
        match mode {
            LiteralMode::Sync if length > self.max_literal => {
                let tag = self.tag();
                self.frag.skip_message();
                self.fragment_start = 0;
                self.in_literal = false;
                self.too_long = false;
                self.write(
                    format!(
                        "{tag} NO [TOOBIG] literal of {length} octets is larger than the limit of {}\r\n",
                        self.max_literal
                    )
                    .as_bytes(),
                )
                .await?;
                Ok(Some(false))
            }
            LiteralMode::Sync if poisoned => {
                // The line before it was too long: refuse now rather than take the literal.
                let tag = self.tag();
                self.frag.skip_message();
                self.fragment_start = 0;
                self.in_literal = false;
                self.too_long = false;
                self.write(format!("{tag} BAD command line too long\r\n").as_bytes())
                    .await?;
                Ok(Some(false))
            }
            LiteralMode::Sync => {
                self.write(b"+ ready for literal data\r\n").await?;
                Ok(None)
            }
            LiteralMode::NonSync if length > self.max_literal => {
                // RFC 7888 §4: the client sends the data anyway; reading and dropping an
                // arbitrary amount is not worth it.
                let tag = self.tag();
                let _ = self
                    .write(
                        format!(
                            "{tag} BAD literal of {length} octets is larger than the limit of {}\r\n* BYE non-synchronizing literal too large\r\n",
                            self.max_literal
                        )
                        .as_bytes(),
                    )
                    .await;
                Err(ConnEnd::Fatal("non-synchronizing literal too large".into()))
            }
            LiteralMode::NonSync => Ok(None),
        }
    }

    /// Reads and drops bytes up to the end of the current line, then starts a new message
    /// with what follows it.
    async fn discard_line(&mut self, idle: Duration) -> Result<(), ConnEnd> {
        let mut tail: Vec<u8> = self
            .frag
            .message_bytes()
            .iter()
            .rev()
            .take(16)
            .rev()
            .copied()
            .collect();
        loop {
            let n = match tokio::time::timeout(idle, self.io.read(&mut self.buf)).await {
                Ok(r) => r?,
                Err(_) => return Err(ConnEnd::Idle),
            };
            if n == 0 {
                return Err(ConnEnd::Closed);
            }
            let chunk = &self.buf[..n];
            if let Some(p) = chunk.iter().position(|&b| b == b'\n') {
                tail.extend_from_slice(&chunk[..p]);
                if ends_with_nonsync_literal(&tail) {
                    let _ = self
                        .write(b"* BYE a literal follows a line that was too long\r\n")
                        .await;
                    return Err(ConnEnd::Fatal("literal after an overlong line".into()));
                }
                let rest = chunk[p + 1..].to_vec();
                self.frag.skip_message();
                self.fragment_start = 0;
                self.in_literal = false;
                self.too_long = false;
                self.frag.enqueue_bytes(&rest);
                return Ok(());
            }
            tail.extend_from_slice(chunk);
            let keep = tail.len().saturating_sub(16);
            tail.drain(..keep);
        }
    }

    /// The tag of the current message, or `*` when it has none that parses.
    pub fn tag(&self) -> String {
        self.frag
            .decode_tag()
            .map_or_else(|| "*".to_owned(), |t| t.as_ref().to_owned())
    }
}

fn new_fragmentizer(cfg: &crate::config::ImapConfig) -> Fragmentizer {
    // One message is at most a few lines and one literal within the limits.
    let max = cfg
        .max_literal_bytes
        .saturating_add(cfg.max_command_line.saturating_mul(4));
    Fragmentizer::new(u32::try_from(max).unwrap_or(u32::MAX))
}

/// Whether `line` (without its line end) ends in a non-synchronizing literal announcement.
fn ends_with_nonsync_literal(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(inner) = line.strip_suffix(b"+}") else {
        return false;
    };
    let digits = inner
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    digits > 0 && inner[..inner.len() - digits].ends_with(b"{")
}
