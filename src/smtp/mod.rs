//! SMTP in the MX role (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
//! ENHANCEDSTATUSCODES, STARTTLS), submission (RFC 6409 with AUTH PLAIN/LOGIN) and LMTP
//! (RFC 2033) for a local MTA such as Postfix.
//!
//! Commands are parsed by `smtp-proto`. Mail for local users is stored; mail for other
//! domains is queued for XMPP delivery: over SMTP only from `[smtp] trusted_networks`
//! (`550 5.7.1 relaying denied` otherwise), over submission for authenticated users, over
//! LMTP always (it is trusted). Only mail with a local or null sender can be queued: the
//! XMPP receiver checks that the envelope sender's domain is the sending domain, so foreign
//! senders get `550 5.7.1` until sender rewriting exists. Every message gets a `Received:`
//! header (RFC 5321 §4.4, `with` per RFC 3848) and is answered 250 only after
//! [`crate::delivery::submit::accept`] committed it in one store transaction.
//!
//! Submodules: [`session`] (the dialog), [`data`] (DATA rules: bare LF/CR, long lines),
//! [`tls`] (STARTTLS), [`auth`] (SASL and failed-login limits), [`verify`] (SPF, DKIM,
//! DMARC), [`downgrade`] (mail that should have come over XMPP).
//!
//! Policies, where the RFCs leave a choice:
//! - Clients in `trusted_networks` on the MX listener (a local Postfix, a relay) are not
//!   verified or checked for downgrades: their mail was checked where it entered.
//! - STARTTLS (RFC 3207): after the TLS handshake all session state is forgotten (EHLO
//!   again, no AUTH, no transaction); anything the client pipelined after STARTTLS in the
//!   clear is discarded unread (the CVE-2011-0411 command injection).
//! - `[smtp] submissions` listeners speak TLS from the first byte (RFC 8314) and offer no
//!   STARTTLS; otherwise they are submission listeners.
//! - Submission: MAIL needs AUTH; AUTH needs TLS unless `submission_plaintext_loopback`
//!   and the client is on loopback (`538 5.7.11`). The envelope sender (`553 5.7.1`) and
//!   every header From address (`550 5.7.1`) must be the authenticated user's address.
//!   Failed logins cost `auth_failure_delay_ms` each and are limited per client address
//!   (`auth_max_failures` within `auth_failure_window_secs`): then `421 4.7.0` and the
//!   connection is closed, and AUTH from that address answers `454 4.7.0` until the window
//!   has passed.
//! - Pipelining abuse: a client that talks before the greeting (checked for
//!   `greeting_delay_ms`) gets `554 5.5.1` and is disconnected; one that sends message text
//!   together with DATA, before the 354 (RFC 2920 §3.1), gets `554 5.5.0` and is
//!   disconnected, since its text would otherwise be read as commands.
//! - Limits: command lines over 512 octets get `500 5.5.2` (RFC 5321 §4.5.3.1.4); DATA lines
//!   and bare line ends: see [`data`]; messages over `[delivery] max_message_bytes` get
//!   `552 5.3.4` (at MAIL when SIZE says so, else at the end of DATA); recipients beyond
//!   `[delivery] max_recipients` get `452 4.5.3`; `[smtp] max_errors` refused commands end
//!   the session with `421 4.7.0`; idle clients get `421 4.4.2`; connections beyond
//!   `[smtp] max_connections` `421 4.3.2`.
//! - Reload (SIGHUP): a session runs under the config in force when it began, and each new
//!   transaction (MAIL) under the one in force then; listeners, TLS, `hostname`, `verify`
//!   and the AUTH failure limit stay as started.

pub mod auth;
pub mod data;
pub mod downgrade;
pub mod session;
pub mod tls;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::config::Config;
use crate::server::Core;

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest SASL response line (RFC 4954 §4).
pub const MAX_AUTH_LINE: usize = 12_288;

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SMTP in the MX role.
    Smtp,
    /// Message submission (RFC 6409): AUTH required.
    Submission,
    /// LMTP (trusted).
    Lmtp,
}

/// What all SMTP listeners share: the TLS acceptor, the failed-login limit, the verifier.
pub struct Shared {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The certificate behind `tls`, re-read on SIGHUP.
    pub cert: Option<Arc<crate::s2s::tls::LiveCert>>,
    pub auth_limit: auth::FailureLimit,
    pub verifier: Option<verify::Verifier>,
}

impl Shared {
    pub fn new(cfg: &Config) -> Result<Shared, String> {
        let (tls, cert) = match tls::acceptor(cfg).map_err(|e| format!("smtp TLS: {e}"))? {
            Some((a, c)) => (Some(a), Some(c)),
            None => (None, None),
        };
        // Without a usable resolver mail is still accepted, only not verified.
        let verifier = if cfg.smtp.verify && !cfg.smtp.listen.is_empty() {
            match verify::Verifier::new(cfg) {
                Ok(v) => Some(v),
                Err(e) => {
                    warn!(error = %e, "smtp: SPF/DKIM/DMARC verification disabled");
                    None
                }
            }
        } else {
            None
        };
        Ok(Shared {
            tls,
            cert,
            auth_limit: auth::FailureLimit::new(
                cfg.smtp.auth_max_failures,
                Duration::from_secs(cfg.smtp.auth_failure_window_secs),
            ),
            verifier,
        })
    }
}

/// Accepts connections on `listener` until the process ends; `slots` bounds the
/// connections of all SMTP/LMTP listeners together. `implicit_tls`: TLS from the first
/// byte (RFC 8314 submissions, port 465 style).
pub async fn serve(
    core: Arc<Core>,
    shared: Arc<Shared>,
    listener: TcpListener,
    (mode, implicit_tls): (Mode, bool),
    slots: Arc<crate::live::Slots>,
) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "smtp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // `[smtp] max_connections` as in force now (a SIGHUP may change it).
        let max = core.cfg.get().smtp.max_connections;
        let core = core.clone();
        let shared = shared.clone();
        match slots.try_take(max) {
            Some(permit) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut s = session::Session::new(core, shared, mode, peer);
                    match s.run(sock, implicit_tls).await {
                        Ok(()) | Err(session::SessionError::Closed) => {}
                        Err(e) => debug!(%peer, error = %e, "smtp session ended"),
                    }
                });
            }
            None => {
                warn!(%peer, max, "smtp: too many connections");
                tokio::spawn(async move {
                    let mut sock = sock;
                    let _ = sock
                        .write_all(b"421 4.3.2 too many connections, try again later\r\n")
                        .await;
                });
            }
        }
    }
}
