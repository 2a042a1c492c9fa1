//! One SMTP, submission or LMTP session: the command loop, STARTTLS, AUTH, DATA and the
//! hand-over to [`crate::delivery::submit::accept`]. Policies are described in the parent
//! module.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_AUTH, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING,
    EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse, Request,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::data::{DataProblem, DataReader};
use super::{MAX_AUTH_LINE, MAX_COMMAND_LINE, Mode, Shared, auth, downgrade};
use crate::config::DowngradePolicy;
use crate::delivery::submit::{Inbound, RcptRefusal, Route, accept_with, route_rcpt};
use crate::server::Core;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("idle timeout")]
    Idle,
    #[error("client closed the connection")]
    Closed,
    #[error("TLS handshake: {0}")]
    Tls(String),
}

/// A byte stream: the TCP socket, or TLS over it after STARTTLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type Io = BufReader<BufWriter<Box<dyn Stream>>>;

fn wrap(s: Box<dyn Stream>) -> Io {
    BufReader::new(BufWriter::new(s))
}

/// One reply line.
/// Adds `bytes` to the start of a line held across reads; once the line is longer than
/// `max` only its last two bytes are kept (enough to tell whether it ends in CRLF).
fn append_partial(partial: &mut Vec<u8>, long: &mut bool, bytes: &[u8], max: usize) {
    if !*long && partial.len() + bytes.len() > max {
        *long = true;
    }
    partial.extend_from_slice(bytes);
    if *long {
        let keep = partial.len().saturating_sub(2);
        partial.drain(..keep);
    }
}

fn reply(code: u16, esc: &str, text: &str) -> String {
    format!("{code} {esc} {text}\r\n")
}

/// What the command loop does after a command.
enum Next {
    Reply(String),
    /// Send this and close the connection.
    Close(String),
}

pub struct Session {
    core: Arc<Core>,
    /// The config in force when the session (or its current transaction) began: a SIGHUP
    /// counts for new sessions and for each new MAIL.
    cfg: Arc<crate::config::Config>,
    shared: Arc<Shared>,
    mode: Mode,
    peer: SocketAddr,
    helo: Option<String>,
    /// EHLO/LHLO (extensions in force) rather than HELO.
    esmtp: bool,
    tls: bool,
    /// The authenticated user's canonical address (submission).
    user: Option<String>,
    sender: Option<String>,
    rcpts: Vec<(String, Route)>,
    errors: u32,
}

impl Session {
    pub fn new(core: Arc<Core>, shared: Arc<Shared>, mode: Mode, peer: SocketAddr) -> Session {
        Session {
            cfg: core.cfg.get(),
            core,
            shared,
            mode,
            peer,
            helo: None,
            esmtp: false,
            tls: false,
            user: None,
            sender: None,
            rcpts: Vec::new(),
            errors: 0,
        }
    }

    fn reset(&mut self) {
        self.sender = None;
        self.rcpts.clear();
    }

    /// Whether the client is in `[smtp] trusted_networks`.
    fn trusted(&self) -> bool {
        self.cfg
            .smtp
            .trusted
            .iter()
            .any(|n| crate::config::cidr_contains(*n, self.peer.ip()))
    }

    fn relay_allowed(&self) -> bool {
        match self.mode {
            Mode::Lmtp => true,
            Mode::Submission => self.user.is_some(),
            Mode::Smtp => self.trusted(),
        }
    }

    /// MX mail from an untrusted client: verified and checked for downgrades.
    fn untrusted_mx(&self) -> bool {
        self.mode == Mode::Smtp && !self.trusted()
    }

    fn auth_allowed(&self) -> bool {
        self.mode == Mode::Submission
            && (self.tls
                || (self.cfg.smtp.submission_plaintext_loopback && self.peer.ip().is_loopback()))
    }

    fn idle(&self) -> Duration {
        Duration::from_secs(self.cfg.smtp.idle_timeout_secs)
    }

    fn host(&self) -> String {
        self.cfg.smtp_hostname().to_string()
    }

    /// Runs the session; with `implicit_tls` (RFC 8314 submissions) the TLS handshake comes
    /// first and STARTTLS is not offered.
    pub async fn run(&mut self, sock: TcpStream, implicit_tls: bool) -> Result<(), SessionError> {
        info!(peer = %self.peer, mode = ?self.mode, implicit_tls, "smtp connection");
        if implicit_tls {
            let Some(acceptor) = self.shared.tls.clone() else {
                return Err(SessionError::Tls("no certificate configured".into()));
            };
            let tls = match tokio::time::timeout(self.idle(), acceptor.accept(sock)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return Err(SessionError::Tls(e.to_string())),
                Err(_) => return Err(SessionError::Tls("handshake timed out".into())),
            };
            self.tls = true;
            return self.greet_and_serve(wrap(Box::new(tls))).await;
        }
        let delay = self.cfg.smtp.greeting_delay_ms;
        if delay > 0 {
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(delay), sock.peek(&mut b)).await {
                Ok(Ok(0)) => return Err(SessionError::Closed),
                Ok(Ok(_)) => {
                    info!(peer = %self.peer, "smtp client talked before the greeting");
                    let mut sock = sock;
                    let _ = sock
                        .write_all(
                            reply(554, "5.5.1", "protocol error: talking before the greeting")
                                .as_bytes(),
                        )
                        .await;
                    return Ok(());
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {}
            }
        }
        self.greet_and_serve(wrap(Box::new(sock))).await
    }

    async fn greet_and_serve(&mut self, mut io: Io) -> Result<(), SessionError> {
        let host = self.host();
        let proto = match self.mode {
            Mode::Lmtp => "LMTP",
            _ => "ESMTP",
        };
        io.write_all(format!("220 {host} {proto} xmta ready\r\n").as_bytes())
            .await?;
        io.flush().await?;
        let result = self.command_loop(&mut io).await;
        if let Err(SessionError::Idle) = result {
            let _ = io
                .write_all(reply(421, "4.4.2", &format!("{host} idle timeout")).as_bytes())
                .await;
            let _ = io.flush().await;
        }
        result
    }

    async fn command_loop(&mut self, io: &mut Io) -> Result<(), SessionError> {
        let host = self.host();
        let mut line = Vec::new();
        loop {
            line.clear();
            let too_long = self.read_line(io, &mut line, MAX_COMMAND_LINE).await?;
            let next = if too_long {
                Next::Reply(reply(500, "5.5.2", "line too long"))
            } else {
                match Request::parse(&mut line.iter()) {
                    Ok(req) => {
                        let req = req.into_owned();
                        match req {
                            Request::Quit => {
                                io.write_all(
                                    reply(221, "2.0.0", &format!("{host} bye")).as_bytes(),
                                )
                                .await?;
                                io.flush().await?;
                                return Ok(());
                            }
                            Request::StartTls => {
                                if let Some(a) = self.starttls_refusal() {
                                    Next::Reply(a)
                                } else {
                                    self.starttls(io).await?;
                                    continue;
                                }
                            }
                            Request::Data => match self.data_allowed() {
                                Err(a) => Next::Reply(a),
                                Ok(()) if !io.buffer().is_empty() => {
                                    info!(peer = %self.peer, "smtp client sent data before 354");
                                    Next::Close(reply(
                                        554,
                                        "5.5.0",
                                        "message text sent before the 354 reply (RFC 2920 3.1)",
                                    ))
                                }
                                Ok(()) => {
                                    io.write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                                        .await?;
                                    io.flush().await?;
                                    Next::Reply(self.data(io).await?)
                                }
                            },
                            Request::Auth {
                                mechanism,
                                initial_response,
                            } => self.auth(io, mechanism, initial_response).await?,
                            other => Next::Reply(self.command(other)),
                        }
                    }
                    Err(e) => Next::Reply(parse_error(&e)),
                }
            };
            match next {
                Next::Reply(a) => {
                    if a.starts_with('5') && self.mode != Mode::Lmtp {
                        self.errors += 1;
                    }
                    io.write_all(a.as_bytes()).await?;
                    if self.errors >= self.cfg.smtp.max_errors {
                        info!(peer = %self.peer, errors = self.errors, "smtp: too many errors");
                        io.write_all(reply(421, "4.7.0", "too many errors, closing").as_bytes())
                            .await?;
                        io.flush().await?;
                        return Ok(());
                    }
                }
                Next::Close(a) => {
                    io.write_all(a.as_bytes()).await?;
                    io.flush().await?;
                    return Ok(());
                }
            }
        }
    }

    /// Reads one line (up to LF) into `out`; returns whether it was longer than `max` (the
    /// rest of the line is then consumed and dropped, and `out` holds its last two bytes).
    /// Pending replies are flushed before waiting for input, so pipelined replies go out
    /// together (RFC 2920).
    async fn read_line(
        &self,
        r: &mut Io,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<bool, SessionError> {
        let mut too_long = false;
        loop {
            if !r.buffer().contains(&b'\n') {
                r.flush().await?;
            }
            let buf = self.fill(r).await?;
            let (n, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(p) => (p + 1, true),
                None => (buf.len(), false),
            };
            if !too_long && out.len() + n > max {
                too_long = true;
            }
            out.extend_from_slice(&buf[..n]);
            if too_long {
                let keep = out.len().saturating_sub(2);
                out.drain(..keep);
            }
            r.consume(n);
            if done {
                return Ok(too_long);
            }
        }
    }

    /// The buffered input, reading more if it is empty; the idle timeout and the client's
    /// close are errors.
    async fn fill<'a>(&self, io: &'a mut Io) -> Result<&'a [u8], SessionError> {
        let buf = match tokio::time::timeout(self.idle(), io.fill_buf()).await {
            Ok(b) => b?,
            Err(_) => return Err(SessionError::Idle),
        };
        if buf.is_empty() {
            return Err(SessionError::Closed);
        }
        Ok(buf)
    }

    /// Feeds the message text to `reader` up to and including the end-of-data line,
    /// taking every complete line of a read at once (a line is only copied when it spans
    /// two reads). Lines longer than `max_line` are reported by their last two bytes, as
    /// [`Self::read_line`] does. What follows the end of data stays buffered (pipelining).
    async fn read_data(
        &self,
        io: &mut Io,
        reader: &mut DataReader,
        max_line: usize,
    ) -> Result<(), SessionError> {
        // The start of a line that an earlier read ended inside, and whether it is too long.
        let mut partial: Vec<u8> = Vec::new();
        let mut partial_long = false;
        loop {
            if io.buffer().is_empty() {
                // The 354 must be out before waiting for the text.
                io.flush().await?;
            }
            let buf = self.fill(io).await?;
            let mut used = 0;
            let mut ended = false;
            for nl in memchr::memchr_iter(b'\n', buf) {
                let piece = &buf[used..=nl];
                used = nl + 1;
                let end = if partial.is_empty() && !partial_long {
                    if piece.len() > max_line {
                        reader.long_line(&piece[piece.len().saturating_sub(2)..]);
                        false
                    } else {
                        reader.line(piece)
                    }
                } else {
                    append_partial(&mut partial, &mut partial_long, piece, max_line);
                    let end = if partial_long {
                        reader.long_line(&partial);
                        false
                    } else {
                        reader.line(&partial)
                    };
                    partial.clear();
                    partial_long = false;
                    end
                };
                if end {
                    ended = true;
                    break;
                }
            }
            if !ended {
                append_partial(&mut partial, &mut partial_long, &buf[used..], max_line);
                used = buf.len();
            }
            io.consume(used);
            if ended {
                return Ok(());
            }
        }
    }

    fn starttls_refusal(&self) -> Option<String> {
        if self.mode == Mode::Lmtp {
            return Some(reply(502, "5.5.1", "STARTTLS is not offered on LMTP"));
        }
        if self.tls {
            return Some(reply(503, "5.5.1", "TLS is already active"));
        }
        if self.shared.tls.is_none() {
            return Some(reply(
                454,
                "4.7.0",
                "TLS not available (no certificate configured)",
            ));
        }
        if !self.esmtp {
            return Some(reply(503, "5.5.1", "EHLO first"));
        }
        None
    }

    /// RFC 3207: answer 220, handshake, then forget everything known about the session.
    /// Whatever the client sent after STARTTLS before the handshake is discarded.
    async fn starttls(&mut self, io: &mut Io) -> Result<(), SessionError> {
        let Some(acceptor) = self.shared.tls.clone() else {
            return Ok(());
        };
        let pending = io.buffer().len();
        if pending > 0 {
            warn!(peer = %self.peer, bytes = pending, "smtp: discarding commands pipelined after STARTTLS");
        }
        io.write_all(reply(220, "2.0.0", "ready to start TLS").as_bytes())
            .await?;
        io.flush().await?;
        let placeholder = wrap(Box::new(tokio::io::duplex(1).0));
        let plain = std::mem::replace(io, placeholder).into_inner().into_inner();
        let tls = match tokio::time::timeout(self.idle(), acceptor.accept(plain)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(SessionError::Tls(e.to_string())),
            Err(_) => return Err(SessionError::Tls("handshake timed out".into())),
        };
        *io = wrap(Box::new(tls));
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.user = None;
        self.reset();
        debug!(peer = %self.peer, "smtp TLS established");
        Ok(())
    }

    async fn auth(
        &mut self,
        io: &mut Io,
        mechanism: u64,
        initial: String,
    ) -> Result<Next, SessionError> {
        if self.mode != Mode::Submission {
            return Ok(Next::Reply(reply(
                502,
                "5.5.1",
                "AUTH is offered on submission only",
            )));
        }
        if !self.esmtp {
            return Ok(Next::Reply(reply(503, "5.5.1", "EHLO first")));
        }
        if self.user.is_some() {
            return Ok(Next::Reply(reply(503, "5.5.1", "already authenticated")));
        }
        if self.sender.is_some() {
            return Ok(Next::Reply(reply(
                503,
                "5.5.1",
                "AUTH not allowed in a transaction",
            )));
        }
        if !self.auth_allowed() {
            return Ok(Next::Reply(reply(
                538,
                "5.7.11",
                "encryption required: STARTTLS first",
            )));
        }
        let ip = self.peer.ip();
        if self.shared.auth_limit.blocked(ip) {
            info!(peer = %self.peer, "smtp AUTH refused: too many failures from this address");
            return Ok(Next::Reply(reply(
                454,
                "4.7.0",
                "too many failed authentication attempts, try again later",
            )));
        }
        let creds = if mechanism == AUTH_PLAIN {
            let resp = if initial.is_empty() {
                match self.challenge(io, "").await? {
                    Some(r) => r,
                    None => {
                        return Ok(Next::Reply(reply(501, "5.7.0", "authentication cancelled")));
                    }
                }
            } else {
                initial
            };
            match auth::decode_plain(&resp) {
                Ok((authz, user, pw)) if authz.is_empty() || authz == user => Some((user, pw)),
                Ok(_) => None,
                Err(e) => {
                    return Ok(Next::Reply(reply(
                        501,
                        "5.5.2",
                        &format!("AUTH PLAIN: {e}"),
                    )));
                }
            }
        } else if mechanism == AUTH_LOGIN {
            let user = if initial.is_empty() {
                match self.challenge(io, "VXNlcm5hbWU6").await? {
                    Some(r) => r,
                    None => {
                        return Ok(Next::Reply(reply(501, "5.7.0", "authentication cancelled")));
                    }
                }
            } else {
                initial
            };
            let Ok(user) = auth::decode_b64(&user) else {
                return Ok(Next::Reply(reply(
                    501,
                    "5.5.2",
                    "AUTH LOGIN: not valid base64",
                )));
            };
            let Some(pw) = self.challenge(io, "UGFzc3dvcmQ6").await? else {
                return Ok(Next::Reply(reply(501, "5.7.0", "authentication cancelled")));
            };
            let Ok(pw) = auth::decode_b64(&pw) else {
                return Ok(Next::Reply(reply(
                    501,
                    "5.5.2",
                    "AUTH LOGIN: not valid base64",
                )));
            };
            Some((user, pw))
        } else {
            return Ok(Next::Reply(reply(
                504,
                "5.5.4",
                "mechanism not supported; use PLAIN or LOGIN",
            )));
        };
        let ok = match &creds {
            Some((user, pw)) => auth::check_password(&self.core.store, user, pw).await,
            None => None,
        };
        match ok {
            Some(canonical) => {
                info!(peer = %self.peer, user = %canonical, "smtp AUTH succeeded");
                self.user = Some(canonical);
                Ok(Next::Reply(reply(235, "2.7.0", "authentication succeeded")))
            }
            None => {
                let user = creds.map(|c| c.0).unwrap_or_default();
                warn!(peer = %self.peer, %user, "smtp AUTH failed");
                let blocked = self.shared.auth_limit.failed(ip);
                tokio::time::sleep(Duration::from_millis(self.cfg.smtp.auth_failure_delay_ms))
                    .await;
                if blocked {
                    Ok(Next::Close(reply(
                        421,
                        "4.7.0",
                        "too many failed authentication attempts, closing",
                    )))
                } else {
                    Ok(Next::Reply(reply(
                        535,
                        "5.7.8",
                        "authentication credentials invalid",
                    )))
                }
            }
        }
    }

    /// Sends a `334` challenge and reads the response line; `None` when the client
    /// cancelled with `*`.
    async fn challenge(&self, io: &mut Io, text: &str) -> Result<Option<String>, SessionError> {
        io.write_all(format!("334 {text}\r\n").as_bytes()).await?;
        io.flush().await?;
        let mut line = Vec::new();
        if self.read_line(io, &mut line, MAX_AUTH_LINE).await? {
            return Ok(Some("!".into()));
        }
        let s = String::from_utf8_lossy(&line).trim().to_string();
        Ok((s != "*").then_some(s))
    }

    fn command(&mut self, req: Request<String>) -> String {
        if matches!(req, Request::Mail { .. }) && self.sender.is_none() {
            // A new transaction: it runs under the config in force now.
            self.cfg = self.core.cfg.get();
        }
        let core = self.core.clone();
        let cfg_now = self.cfg.clone();
        let cfg: &crate::config::Config = &cfg_now;
        let host = cfg.smtp_hostname().to_string();
        match req {
            Request::Lhlo { .. } if self.mode != Mode::Lmtp => {
                reply(500, "5.5.1", "LHLO is for LMTP; use EHLO")
            }
            Request::Ehlo { .. } | Request::Helo { .. } if self.mode == Mode::Lmtp => {
                reply(500, "5.5.1", "this is LMTP; use LHLO")
            }
            Request::Helo { host: h } => {
                self.reset();
                self.helo = Some(h);
                self.esmtp = false;
                format!("250 {host}\r\n")
            }
            Request::Ehlo { host: h } | Request::Lhlo { host: h } => {
                self.reset();
                self.helo = Some(h);
                self.esmtp = true;
                let mut e = EhloResponse::new(host.as_str());
                e.capabilities = EXT_PIPELINING
                    | EXT_SIZE
                    | EXT_8BIT_MIME
                    | EXT_SMTP_UTF8
                    | EXT_ENHANCED_STATUS_CODES;
                if self.mode != Mode::Lmtp && !self.tls && self.shared.tls.is_some() {
                    e.capabilities |= EXT_START_TLS;
                }
                if self.auth_allowed() && self.user.is_none() {
                    e.capabilities |= EXT_AUTH;
                    e.auth_mechanisms = AUTH_PLAIN | AUTH_LOGIN;
                }
                e.size = cfg.delivery.max_message_bytes;
                let mut out = Vec::new();
                let _ = e.write(&mut out);
                String::from_utf8_lossy(&out).into_owned()
            }
            Request::Mail { from } => {
                if self.helo.is_none() {
                    return reply(503, "5.5.1", "say hello first");
                }
                if self.sender.is_some() {
                    return reply(503, "5.5.1", "nested MAIL command");
                }
                if self.mode == Mode::Submission && self.user.is_none() {
                    return reply(530, "5.7.0", "authentication required");
                }
                if !self.esmtp && (from.size > 0 || from.flags != 0) {
                    return reply(555, "5.5.4", "MAIL parameters need EHLO");
                }
                if from.size > cfg.delivery.max_message_bytes {
                    return reply(
                        552,
                        "5.3.4",
                        &format!(
                            "message size exceeds the limit of {} bytes",
                            cfg.delivery.max_message_bytes
                        ),
                    );
                }
                let address = from.address.trim().to_string();
                let parsed = if address.is_empty() {
                    None
                } else {
                    match crate::addr::MailAddress::parse(&address) {
                        Ok(a) => Some(a),
                        Err(e) => return reply(553, "5.1.7", &format!("bad sender address: {e}")),
                    }
                };
                if let Some(user) = &self.user {
                    match &parsed {
                        Some(a) if a.canonical() == *user => {}
                        _ => {
                            info!(peer = %self.peer, %user, sender = %address, "submission: sender not owned");
                            return reply(
                                553,
                                "5.7.1",
                                &format!("sender address not owned by {user}"),
                            );
                        }
                    }
                }
                if self.untrusted_mx()
                    && cfg.smtp.downgrade == DowngradePolicy::Refuse
                    && let Some(a) = &parsed
                    && let Some(why) = downgrade::reason(cfg, a.domain())
                {
                    info!(peer = %self.peer, sender = %address, why, "smtp downgrade refused (envelope)");
                    return reply(
                        550,
                        "5.7.1",
                        &format!("{} {why}: its mail comes over XMPP, not SMTP", a.domain()),
                    );
                }
                self.sender = Some(address);
                reply(250, "2.1.0", "sender ok")
            }
            Request::Rcpt { to } => {
                let Some(sender) = self.sender.clone() else {
                    return reply(503, "5.5.1", "MAIL first");
                };
                if self.rcpts.len() >= cfg.delivery.max_recipients {
                    return reply(452, "4.5.3", "too many recipients");
                }
                let relay = self.relay_allowed();
                match route_rcpt(cfg, &core.store, &sender, &to.address, relay) {
                    Ok(route) => {
                        self.rcpts.push((to.address.clone(), route));
                        reply(250, "2.1.5", "recipient ok")
                    }
                    Err(RcptRefusal::Bad(e)) => {
                        reply(553, "5.1.3", &format!("bad recipient address: {e}"))
                    }
                    Err(RcptRefusal::UnknownLocal) => reply(550, "5.1.1", "no such user here"),
                    Err(RcptRefusal::RelayDenied) => {
                        info!(peer = %self.peer, rcpt = %to.address, "relaying denied");
                        reply(550, "5.7.1", "relaying denied")
                    }
                    Err(RcptRefusal::ForeignSender) => reply(
                        550,
                        "5.7.1",
                        "foreign senders cannot be relayed over XMPP (SRS is off)",
                    ),
                    Err(RcptRefusal::Store(e)) => {
                        warn!(error = %e, "smtp: store error at RCPT");
                        reply(451, "4.3.0", "temporary local error")
                    }
                }
            }
            Request::Rset => {
                self.reset();
                reply(250, "2.0.0", "ok")
            }
            Request::Noop { .. } => reply(250, "2.0.0", "ok"),
            Request::Vrfy { .. } => reply(252, "2.5.0", "cannot verify, but will try"),
            _ => reply(502, "5.5.1", "command not implemented"),
        }
    }

    fn data_allowed(&self) -> Result<(), String> {
        if self.sender.is_none() {
            return Err(reply(503, "5.5.1", "MAIL first"));
        }
        if self.rcpts.is_empty() {
            return Err(reply(503, "5.5.1", "no valid recipients"));
        }
        Ok(())
    }

    /// Reads the message after 354 and answers it (one line, or one per recipient in LMTP).
    async fn data(&mut self, io: &mut Io) -> Result<String, SessionError> {
        let cfg = self.cfg.clone();
        let max = cfg.delivery.max_message_bytes;
        let mut reader = DataReader::new(max);
        self.read_data(io, &mut reader, cfg.smtp.max_line_bytes)
            .await?;
        let rcpts = std::mem::take(&mut self.rcpts);
        let sender = self.sender.take().unwrap_or_default();
        let n = match self.mode {
            Mode::Lmtp => rcpts.len(),
            _ => 1,
        };
        let all = |s: String| s.repeat(n);
        let message = match reader.finish() {
            Ok(m) => m,
            Err(DataProblem::TooBig) => {
                return Ok(all(reply(
                    552,
                    "5.3.4",
                    &format!("message exceeds the limit of {max} bytes"),
                )));
            }
            Err(DataProblem::LongLine) => {
                return Ok(all(reply(
                    554,
                    "5.5.2",
                    &format!(
                        "message has a line longer than {} octets",
                        cfg.smtp.max_line_bytes
                    ),
                )));
            }
            Err(DataProblem::BareLineEnd) => {
                info!(peer = %self.peer, "smtp message with a bare LF or CR refused");
                return Ok(all(reply(
                    550,
                    "5.5.2",
                    "bare LF or CR in message text; lines must end in CRLF (RFC 5321 2.3.8)",
                )));
            }
        };
        if let Some(user) = &self.user {
            let from = downgrade::header_from_addresses(&message);
            if from.is_empty() || from.iter().any(|a| a != user) {
                info!(peer = %self.peer, %user, ?from, "submission: header From not owned");
                return Ok(reply(
                    550,
                    "5.7.1",
                    &format!("header From must be {user}, the authenticated address"),
                ));
            }
        }
        let mut message = message;
        if self.mode == Mode::Submission {
            // RFC 6409 §8.1, §8.3: the MSA adds a missing Date and Message-ID.
            let domain = self
                .user
                .as_deref()
                .and_then(|u| u.rsplit_once('@'))
                .map(|(_, d)| d.to_string())
                .unwrap_or_else(|| cfg.smtp_hostname().to_string());
            message =
                match crate::delivery::submit::complete_headers(message, &domain, crate::now()) {
                    Ok(m) => m,
                    Err(_) => {
                        return Ok(reply(550, "5.6.0", "not an RFC 5322 message (no header)"));
                    }
                };
        }
        if self.untrusted_mx() || self.mode == Mode::Submission {
            let (m, n) = super::verify::strip_own_results(message, cfg.smtp_hostname());
            if n > 0 {
                info!(peer = %self.peer, removed = n, "removed Authentication-Results claiming our name");
            }
            message = m;
        }
        let id = crate::new_mail_id();
        let mut trace = String::new();
        let mut results: Vec<String> = Vec::new();
        if self.untrusted_mx() {
            if let Some(v) = &self.shared.verifier {
                let helo = self.helo.clone().unwrap_or_default();
                let verdict = v.verify(self.peer.ip(), &helo, &sender, &message).await;
                info!(peer = %self.peer, %id, results = ?verdict.results, "smtp message verified");
                if verdict.dmarc_reject && cfg.smtp.dmarc_reject {
                    return Ok(reply(
                        550,
                        "5.7.1",
                        "DMARC policy of the From domain says reject",
                    ));
                }
                results.push(verdict.value);
            }
            if cfg.smtp.downgrade != DowngradePolicy::Off {
                let mut domains = downgrade::header_from_domains(&message);
                if let Some((_, d)) = sender.rsplit_once('@') {
                    domains.insert(0, d.to_ascii_lowercase());
                }
                if let Some((d, why)) = domains
                    .iter()
                    .find_map(|d| downgrade::reason(&cfg, d).map(|w| (d.clone(), w)))
                {
                    if cfg.smtp.downgrade == DowngradePolicy::Refuse {
                        info!(peer = %self.peer, domain = %d, why, "smtp downgrade refused (header)");
                        return Ok(reply(
                            550,
                            "5.7.1",
                            &format!("{d} {why}: its mail comes over XMPP, not SMTP"),
                        ));
                    }
                    info!(peer = %self.peer, domain = %d, why, "smtp downgrade tagged");
                    trace.push_str(&format!(
                        "X-Xmta-Downgrade: {d} {why} but this message came over SMTP\r\n"
                    ));
                    let note = format!("x-xmta-downgrade=fail header.from={d} ({why})");
                    match results.last_mut() {
                        Some(v) => {
                            v.push_str(";\r\n\t");
                            v.push_str(&note);
                        }
                        None => results.push(format!("{}; {note}", cfg.smtp_hostname())),
                    }
                }
            }
        }
        for v in &results {
            trace.insert_str(0, &format!("Authentication-Results: {v}\r\n"));
        }
        trace.push_str(&self.received_header(&id, &rcpts));
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for (_, route) in &rcpts {
            match route {
                Route::Local(a) if !local.contains(a) => local.push(a.clone()),
                Route::Remote(a) if !remote.contains(a) => remote.push(a.clone()),
                _ => {}
            }
        }
        let inbound = Inbound {
            sender: sender.clone(),
            local,
            remote,
            message,
            received_header: trace,
        };
        // LMTP answers per recipient, so an external local delivery target (Dovecot) can
        // refuse one recipient without failing the others.
        let per_rcpt = self.mode == Mode::Lmtp;
        let accepted = accept_with(
            &cfg,
            &self.core.store,
            Some(&self.core.delivery),
            inbound,
            per_rcpt,
        );
        match accepted.await {
            Ok(res) => {
                crate::metrics::accepted_smtp(self.mode == Mode::Lmtp);
                info!(peer = %self.peer, %id, from = %sender, rcpts = rcpts.len(),
                      queued = ?res.queue_id, "smtp message accepted");
                let ok = reply(250, "2.0.0", &format!("ok {id}"));
                match self.mode {
                    Mode::Lmtp => Ok(rcpts
                        .iter()
                        .map(|(_, route)| match route {
                            Route::Local(a) if res.local_reply(a).is_some() => {
                                res.local_reply(a).unwrap_or_default()
                            }
                            Route::Local(a) if res.failed_local.contains(a) => {
                                reply(550, "5.1.1", &format!("<{a}> no such user here"))
                            }
                            _ => ok.clone(),
                        })
                        .collect()),
                    _ => Ok(ok),
                }
            }
            Err(e) => {
                warn!(peer = %self.peer, error = %e, "smtp message not accepted");
                Ok(all(match e {
                    crate::delivery::submit::SubmitError::TooLarge(..) => {
                        reply(552, "5.3.4", &e.to_string())
                    }
                    // RFC 3463 4.3.1: the store's disk is full (ENOSPC; the store error
                    // carries only the I/O error's text). Still temporary: space may return.
                    crate::delivery::submit::SubmitError::Store(s) if s.contains("os error 28") => {
                        reply(452, "4.3.1", "insufficient system storage, try again later")
                    }
                    _ => reply(451, "4.3.0", "temporary local error, try again later"),
                }))
            }
        }
    }

    /// RFC 5321 §4.4 trace header; `with` per RFC 3848 (ESMTPS, ESMTPSA, LMTP...).
    fn received_header(&self, id: &str, rcpts: &[(String, Route)]) -> String {
        let helo = self
            .helo
            .as_deref()
            .unwrap_or("unknown")
            .replace(|c: char| c.is_control() || c == '(' || c == ')', "");
        let ip = match self.peer.ip() {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
        };
        let base = match self.mode {
            Mode::Lmtp => "LMTP",
            _ => "ESMTP",
        };
        let with = format!(
            "{base}{}{}",
            if self.tls { "S" } else { "" },
            if self.user.is_some() { "A" } else { "" }
        );
        let host = self.cfg.smtp_hostname();
        let mut h =
            format!("Received: from {helo} ([{ip}])\r\n\tby {host} (xmta) with {with} id {id}");
        if let [(a, _)] = rcpts {
            h.push_str(&format!("\r\n\tfor <{a}>"));
        }
        h.push_str(&format!(";\r\n\t{}\r\n", crate::rfc5322_date(crate::now())));
        h
    }
}

fn parse_error(e: &smtp_proto::Error) -> String {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => reply(500, "5.5.1", "command unrecognized"),
        E::InvalidSenderAddress => reply(553, "5.1.7", "bad sender address syntax"),
        E::InvalidRecipientAddress => reply(553, "5.1.3", "bad recipient address syntax"),
        E::SyntaxError { syntax } => reply(501, "5.5.4", &format!("syntax: {syntax}")),
        E::InvalidParameter { param } => reply(501, "5.5.4", &format!("bad parameter {param}")),
        E::UnsupportedParameter { param } => {
            reply(504, "5.5.4", &format!("unsupported parameter {param}"))
        }
        _ => reply(500, "5.5.2", "syntax error"),
    }
}
