//! SMTP in the MX role (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
//! ENHANCEDSTATUSCODES) and LMTP (RFC 2033) for a local MTA such as Postfix.
//!
//! Commands are parsed by `smtp-proto`. Mail for local users is stored; mail for other
//! domains is queued for XMPP delivery, over SMTP only from `[smtp] trusted_networks`
//! (`550 5.7.1 relaying denied` otherwise), over LMTP always (it is trusted). Only mail with
//! a local or null sender can be queued: the XMPP receiver checks that the envelope
//! sender's domain is the sending domain, so foreign senders get `550 5.7.1` until sender
//! rewriting exists. Every message gets a `Received:` header (RFC 5321 §4.4) and is answered
//! 250 only after [`crate::delivery::submit::accept`] committed it in one store transaction.
//!
//! Limits: command lines over 512 octets get `500 5.5.2` (RFC 5321 §4.5.3.1.4); text lines
//! over 1000 octets make the end of DATA answer `554 5.5.2` (§4.5.3.1.6; §4.3.2 allows no
//! 500 there); messages over `[delivery] max_message_bytes` get `552 5.3.4` (at MAIL when
//! SIZE says so, else at the end of DATA); recipients beyond `[delivery] max_recipients`
//! get `452 4.5.3`; idle clients `421 4.4.2`; connections beyond `[smtp] max_connections`
//! `421 4.3.2`. A bare LF in DATA is accepted and stored as CRLF.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{
    EXT_8BIT_MIME, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8,
    EhloResponse, Request,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::delivery::submit::{Inbound, RcptRefusal, Route, accept, route_rcpt};
use crate::server::Core;

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest text line in DATA, CRLF included (RFC 5321 §4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SMTP in the MX role.
    Smtp,
    /// LMTP (trusted).
    Lmtp,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("idle timeout")]
    Idle,
    #[error("client closed the connection")]
    Closed,
}

/// Accepts connections on `listener` until the process ends; `slots` bounds the
/// connections of all SMTP/LMTP listeners together.
pub async fn serve(core: Arc<Core>, listener: TcpListener, mode: Mode, slots: Arc<Semaphore>) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "smtp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let core = core.clone();
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut session = Session::new(core, mode, peer);
                    match session.run(sock).await {
                        Ok(()) | Err(SessionError::Closed) => {}
                        Err(e) => debug!(%peer, error = %e, "smtp session ended"),
                    }
                });
            }
            Err(_) => {
                warn!(%peer, "smtp: too many connections");
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

struct Session {
    core: Arc<Core>,
    mode: Mode,
    peer: SocketAddr,
    helo: Option<String>,
    /// EHLO/LHLO (extensions in force) rather than HELO.
    esmtp: bool,
    sender: Option<String>,
    rcpts: Vec<(String, Route)>,
}

/// One reply line.
fn reply(code: u16, esc: &str, text: &str) -> String {
    format!("{code} {esc} {text}\r\n")
}

impl Session {
    fn new(core: Arc<Core>, mode: Mode, peer: SocketAddr) -> Session {
        Session {
            core,
            mode,
            peer,
            helo: None,
            esmtp: false,
            sender: None,
            rcpts: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.sender = None;
        self.rcpts.clear();
    }

    fn relay_allowed(&self) -> bool {
        match self.mode {
            Mode::Lmtp => true,
            Mode::Smtp => self
                .core
                .cfg
                .smtp
                .trusted
                .iter()
                .any(|n| crate::config::cidr_contains(*n, self.peer.ip())),
        }
    }

    fn idle(&self) -> Duration {
        Duration::from_secs(self.core.cfg.smtp.idle_timeout_secs)
    }

    async fn run(&mut self, sock: TcpStream) -> Result<(), SessionError> {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        let host = self.core.cfg.smtp_hostname().to_string();
        let proto = match self.mode {
            Mode::Smtp => "ESMTP",
            Mode::Lmtp => "LMTP",
        };
        info!(peer = %self.peer, mode = ?self.mode, "smtp connection");
        w.write_all(format!("220 {host} {proto} xmta ready\r\n").as_bytes())
            .await?;
        let mut line = Vec::new();
        loop {
            line.clear();
            let too_long = match self.read_line(&mut r, &mut line, MAX_COMMAND_LINE).await {
                Ok(t) => t,
                Err(SessionError::Idle) => {
                    let _ = w
                        .write_all(reply(421, "4.4.2", &format!("{host} idle timeout")).as_bytes())
                        .await;
                    return Err(SessionError::Idle);
                }
                Err(e) => return Err(e),
            };
            if too_long {
                w.write_all(reply(500, "5.5.2", "line too long").as_bytes())
                    .await?;
                continue;
            }
            let answer = match Request::parse(&mut line.iter()) {
                Ok(req) => {
                    let req = req.into_owned();
                    if matches!(req, Request::Quit) {
                        w.write_all(reply(221, "2.0.0", &format!("{host} bye")).as_bytes())
                            .await?;
                        return Ok(());
                    }
                    if matches!(req, Request::Data) {
                        match self.data_allowed() {
                            Err(a) => a,
                            Ok(()) => {
                                w.write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                                    .await?;
                                w.flush().await?;
                                let a = self.data(&mut r).await;
                                match a {
                                    Err(SessionError::Idle) => {
                                        let _ = w
                                            .write_all(
                                                reply(421, "4.4.2", "idle timeout").as_bytes(),
                                            )
                                            .await;
                                        return Err(SessionError::Idle);
                                    }
                                    other => other?,
                                }
                            }
                        }
                    } else {
                        self.command(req)
                    }
                }
                Err(e) => parse_error(&e),
            };
            w.write_all(answer.as_bytes()).await?;
            // PIPELINING: answers go out together when the client sent commands together.
            if r.buffer().is_empty() {
                w.flush().await?;
            }
        }
    }

    /// Reads one line (up to LF) into `out`; returns whether it was longer than `max` (the
    /// rest of the line is then consumed and dropped).
    async fn read_line<R: AsyncBufReadExt + Unpin>(
        &self,
        r: &mut R,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<bool, SessionError> {
        let mut too_long = false;
        loop {
            let buf = match tokio::time::timeout(self.idle(), r.fill_buf()).await {
                Ok(b) => b?,
                Err(_) => return Err(SessionError::Idle),
            };
            if buf.is_empty() {
                return Err(SessionError::Closed);
            }
            let (n, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(p) => (p + 1, true),
                None => (buf.len(), false),
            };
            if !too_long {
                if out.len() + n > max {
                    too_long = true;
                    out.clear();
                } else {
                    out.extend_from_slice(&buf[..n]);
                }
            }
            r.consume(n);
            if done {
                return Ok(too_long);
            }
        }
    }

    fn command(&mut self, req: Request<String>) -> String {
        let core = self.core.clone();
        let cfg = &core.cfg;
        let host = cfg.smtp_hostname().to_string();
        match req {
            Request::Lhlo { .. } if self.mode == Mode::Smtp => {
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
                if !address.is_empty()
                    && let Err(e) = crate::addr::MailAddress::parse(&address)
                {
                    return reply(553, "5.1.7", &format!("bad sender address: {e}"));
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
                        "foreign senders cannot be relayed over XMPP yet",
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
    async fn data<R: AsyncBufReadExt + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<String, SessionError> {
        let max = self.core.cfg.delivery.max_message_bytes;
        let mut message = Vec::new();
        let mut line = Vec::new();
        let mut long_line = false;
        let mut too_big = false;
        loop {
            line.clear();
            if self.read_line(r, &mut line, MAX_TEXT_LINE).await? {
                long_line = true;
                continue;
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            let mut text: &[u8] = &line;
            if text.first() == Some(&b'.') {
                text = &text[1..];
            }
            // A bare LF ends a line too; it is stored as CRLF.
            let body = text
                .strip_suffix(b"\r\n")
                .or_else(|| text.strip_suffix(b"\n"))
                .unwrap_or(text);
            if too_big || message.len() + body.len() + 2 > max {
                too_big = true;
                continue;
            }
            message.extend_from_slice(body);
            message.extend_from_slice(b"\r\n");
        }
        let rcpts = std::mem::take(&mut self.rcpts);
        let sender = self.sender.take().unwrap_or_default();
        let n = match self.mode {
            Mode::Smtp => 1,
            Mode::Lmtp => rcpts.len(),
        };
        let all = |s: String| s.repeat(n);
        if too_big {
            return Ok(all(reply(
                552,
                "5.3.4",
                &format!("message exceeds the limit of {max} bytes"),
            )));
        }
        if long_line {
            return Ok(all(reply(
                554,
                "5.5.2",
                "message has a line longer than 1000 octets",
            )));
        }
        let id = crate::new_mail_id();
        let received = self.received_header(&id, &rcpts);
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
            received_header: received,
        };
        let cfg = &self.core.cfg;
        match accept(cfg, &self.core.store, Some(&self.core.delivery), inbound).await {
            Ok(res) => {
                crate::metrics::accepted_smtp(self.mode == Mode::Lmtp);
                info!(peer = %self.peer, %id, from = %sender, rcpts = rcpts.len(),
                      queued = ?res.queue_id, "smtp message accepted");
                let ok = reply(250, "2.0.0", &format!("ok {id}"));
                match self.mode {
                    Mode::Smtp => Ok(ok),
                    Mode::Lmtp => Ok(rcpts
                        .iter()
                        .map(|(_, route)| match route {
                            Route::Local(a) if res.failed_local.contains(a) => {
                                reply(550, "5.1.1", &format!("<{a}> no such user here"))
                            }
                            _ => ok.clone(),
                        })
                        .collect()),
                }
            }
            Err(e) => {
                warn!(peer = %self.peer, error = %e, "smtp message not accepted");
                Ok(all(match e {
                    crate::delivery::submit::SubmitError::TooLarge(..) => {
                        reply(552, "5.3.4", &e.to_string())
                    }
                    _ => reply(451, "4.3.0", "temporary local error, try again later"),
                }))
            }
        }
    }

    /// RFC 5321 §4.4 trace header.
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
        let with = match self.mode {
            Mode::Smtp => "ESMTP",
            Mode::Lmtp => "LMTP",
        };
        let host = self.core.cfg.smtp_hostname();
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
