//! Outgoing s2s streams: connect (routes, SRV, A), negotiate STARTTLS, authenticate each
//! local domain with dialback (originating role), then carry stanzas.
//!
//! The same connect-and-negotiate step also serves the receiving role's verification
//! connection (`verify_key`): like ejabberd, xmta asks the authoritative server over a
//! separate short-lived stream, which cannot deadlock with the stream being verified.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use minidom::Element;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use super::dialback::{self, DbType, Dialback};
use super::{BoxIo, S2s, S2sError};
use crate::config::{S2sAuth, TlsMode};
use crate::xml::writer::stream_header;
use crate::xml::{XmlReader, ns};

/// A negotiated stream, before dialback.
pub(crate) struct Negotiated {
    pub reader: XmlReader<ReadHalf<BoxIo>>,
    pub writer: WriteHalf<BoxIo>,
    pub stream_id: String,
    pub features: Option<Element>,
    pub tls: bool,
    pub cert_valid: bool,
    pub peer: SocketAddr,
    /// The local domain was authenticated with SASL EXTERNAL (XEP-0178): no dialback.
    pub external: bool,
}

/// The largest stanza a peer accepts when it does not say (what Prosody and ejabberd use).
pub const DEFAULT_PEER_MAX_STANZA: usize = 524_288;

impl S2s {
    /// TCP connect to the first reachable target of `remote`, then stream negotiation.
    pub(crate) async fn open_stream(
        &self,
        local: &str,
        remote: &str,
    ) -> Result<Negotiated, S2sError> {
        let targets = self.resolver.targets(remote).await?;
        let mut last = String::from("no address");
        for target in targets {
            let addrs = match self.resolver.addresses(&target).await {
                Ok(a) => a,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            for addr in addrs {
                match timeout(self.cfg.get().connect_timeout(), TcpStream::connect(addr)).await {
                    Ok(Ok(tcp)) => {
                        let _ = tcp.set_nodelay(true);
                        let deadline = Instant::now() + self.cfg.get().handshake_timeout();
                        if target.direct_tls {
                            // XEP-0368: a failed direct TLS target falls back to the next.
                            match timeout_at(deadline, self.direct_tls(tcp, addr, local, remote))
                                .await
                            {
                                Ok(Ok(n)) => return Ok(n),
                                Ok(Err(e)) => last = format!("{addr} (direct TLS): {e}"),
                                Err(_) => last = format!("{addr} (direct TLS): timed out"),
                            }
                            info!(remote, %addr, reason = %last, "direct TLS target failed; trying the next");
                            continue;
                        }
                        let io: BoxIo = Box::new(tcp);
                        return match timeout_at(
                            deadline,
                            self.negotiate(io, false, false, addr, local, remote),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => Err(S2sError::Timeout(remote.to_string())),
                        };
                    }
                    Ok(Err(e)) => last = format!("{addr}: {e}"),
                    Err(_) => last = format!("{addr}: connect timed out"),
                }
            }
        }
        Err(S2sError::Connect {
            domain: remote.to_string(),
            reason: last,
        })
    }

    /// XEP-0368: TLS from the first byte (ALPN `xmpp-server`, SNI the remote domain),
    /// then the stream as after STARTTLS.
    async fn direct_tls(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        local: &str,
        remote: &str,
    ) -> Result<Negotiated, S2sError> {
        let name =
            ServerName::try_from(remote.to_string()).map_err(|e| S2sError::stream(remote, e))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.client_direct.clone());
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| S2sError::TlsRequired {
                domain: remote.to_string(),
                reason: format!("the TLS handshake failed: {e}"),
            })?;
        let cert_valid = stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| self.tls.chain_valid_for(c, remote))
            .unwrap_or(false);
        info!(
            remote,
            cert_valid,
            direct = true,
            "outgoing stream encrypted"
        );
        let io: BoxIo = Box::new(stream);
        self.negotiate(io, true, cert_valid, peer, local, remote)
            .await
    }

    async fn negotiate(
        &self,
        io: BoxIo,
        mut tls: bool,
        mut cert_valid: bool,
        peer: SocketAddr,
        local: &str,
        remote: &str,
    ) -> Result<Negotiated, S2sError> {
        let (r, mut w) = tokio::io::split(io);
        let mut reader = XmlReader::new(r, self.cfg.get().s2s.max_stanza_bytes);
        let mut external = false;
        loop {
            let header = stream_header(ns::SERVER, Some(local), Some(remote), None, true);
            write(&mut w, remote, &header).await?;
            let h = reader
                .read_header()
                .await
                .map_err(|e| S2sError::stream(remote, e))?;
            if h.default_ns != ns::SERVER {
                return Err(S2sError::stream(
                    remote,
                    format!("peer speaks '{}', not jabber:server", h.default_ns),
                ));
            }
            let stream_id = h.id.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
                S2sError::stream(remote, "peer sent no stream id (needed for dialback)")
            })?;
            let features = if h.version.as_deref() == Some("1.0") {
                let el = reader
                    .next()
                    .await
                    .map_err(|e| S2sError::stream(remote, e))?
                    .ok_or_else(|| S2sError::stream(remote, "stream closed before features"))?;
                if let Some(err) = stream_error_text(&el) {
                    return Err(S2sError::stream(remote, err));
                }
                if !el.is("features", ns::STREAM) {
                    return Err(S2sError::stream(
                        remote,
                        format!("expected stream features, got <{}>", el.name()),
                    ));
                }
                Some(el)
            } else {
                None
            };
            let starttls = features
                .as_ref()
                .and_then(|f| f.get_child("starttls", ns::TLS));
            if let Some(st) = starttls
                && !tls
            {
                if self.tls.mode == TlsMode::Off {
                    if st.has_child("required", ns::TLS) {
                        return Err(S2sError::stream(
                            remote,
                            "peer requires TLS but our config has tls = \"off\"",
                        ));
                    }
                } else {
                    write(&mut w, remote, &format!("<starttls xmlns='{}'/>", ns::TLS)).await?;
                    let answer = reader
                        .next()
                        .await
                        .map_err(|e| S2sError::stream(remote, e))?
                        .ok_or_else(|| S2sError::stream(remote, "stream closed during STARTTLS"))?;
                    if !answer.is("proceed", ns::TLS) {
                        return Err(S2sError::stream(
                            remote,
                            format!("STARTTLS refused (<{}>)", answer.name()),
                        ));
                    }
                    let r = reader
                        .into_inner()
                        .map_err(|e| S2sError::stream(remote, e))?;
                    let io = r.unsplit(w);
                    let name = ServerName::try_from(remote.to_string())
                        .map_err(|e| S2sError::stream(remote, e))?;
                    let connector = tokio_rustls::TlsConnector::from(self.tls.client.clone());
                    let stream =
                        connector
                            .connect(name, io)
                            .await
                            .map_err(|e| S2sError::TlsRequired {
                                domain: remote.to_string(),
                                reason: format!("the TLS handshake failed: {e}"),
                            })?;
                    cert_valid = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| self.tls.chain_valid_for(c, remote))
                        .unwrap_or(false);
                    info!(remote, cert_valid, "outgoing stream encrypted");
                    let io: BoxIo = Box::new(stream);
                    let (r2, w2) = tokio::io::split(io);
                    reader = XmlReader::new(r2, self.cfg.get().s2s.max_stanza_bytes);
                    w = w2;
                    tls = true;
                    continue;
                }
            }
            if self.tls.mode == TlsMode::Required && !tls {
                return Err(S2sError::TlsRequired {
                    domain: remote.to_string(),
                    reason: "the peer does not offer STARTTLS".into(),
                });
            }
            // XEP-0178: over TLS with our certificate, authenticate with SASL EXTERNAL
            // where the peer offers it and its own certificate is valid for its domain
            // (both sides authenticated by certificate); dialback remains the fallback.
            let offers_external = features
                .as_ref()
                .and_then(|f| f.get_child("mechanisms", ns::SASL))
                .map(|m| {
                    m.children()
                        .any(|c| c.name() == "mechanism" && c.text().trim() == "EXTERNAL")
                })
                .unwrap_or(false);
            if tls
                && cert_valid
                && !external
                && offers_external
                && self.tls.client_cert
                && self.cfg.get().s2s.auth != S2sAuth::Dialback
            {
                use base64::Engine;
                let authzid = base64::engine::general_purpose::STANDARD.encode(local.as_bytes());
                write(
                    &mut w,
                    remote,
                    &format!(
                        "<auth xmlns='{}' mechanism='EXTERNAL'>{authzid}</auth>",
                        ns::SASL
                    ),
                )
                .await?;
                let answer = reader
                    .next()
                    .await
                    .map_err(|e| S2sError::stream(remote, e))?
                    .ok_or_else(|| S2sError::stream(remote, "stream closed during SASL"))?;
                if answer.is("success", ns::SASL) {
                    info!(
                        local,
                        remote, "outgoing stream authenticated (SASL EXTERNAL)"
                    );
                    external = true;
                    reader.restart();
                    continue;
                }
                let why = answer
                    .children()
                    .next()
                    .map(|c| c.name().to_string())
                    .unwrap_or_default();
                info!(local, remote, reason = %why, "SASL EXTERNAL refused; using dialback");
            }
            return Ok(Negotiated {
                reader,
                writer: w,
                stream_id,
                features,
                tls,
                cert_valid,
                peer,
                external,
            });
        }
    }

    /// A new outgoing stream to `remote` with its reader and writer tasks running; no
    /// domain authenticated yet.
    pub(crate) async fn dial(
        self: &Arc<Self>,
        local: &str,
        remote: &str,
    ) -> Result<Arc<OutboundConn>, S2sError> {
        let n = self.open_stream(local, remote).await?;
        if self.cfg.get().s2s.auth == S2sAuth::Certificate && !(n.external && n.cert_valid) {
            let why = if !n.tls {
                "the stream is not encrypted".to_string()
            } else if !n.cert_valid {
                format!("{remote}'s certificate is not valid for {remote}")
            } else {
                format!("{remote} did not accept our certificate (SASL EXTERNAL)")
            };
            return Err(S2sError::DialbackRefused {
                domain: remote.to_string(),
                local: local.to_string(),
                reason: format!("[s2s] auth = \"certificate\" allows no dialback, and {why}"),
            });
        }
        let max_stanza = n
            .features
            .as_ref()
            .and_then(|f| f.get_child("limits", ns::STREAM_LIMITS))
            .and_then(|l| l.get_child("max-bytes", ns::STREAM_LIMITS))
            .and_then(|m| m.text().trim().parse::<usize>().ok())
            .unwrap_or(DEFAULT_PEER_MAX_STANZA);
        let peer_idle = n
            .features
            .as_ref()
            .and_then(|f| f.get_child("limits", ns::STREAM_LIMITS))
            .and_then(|l| l.get_child("idle-seconds", ns::STREAM_LIMITS))
            .and_then(|m| m.text().trim().parse::<u64>().ok());
        // Close before the peer would (XEP-0478 idle-seconds), with a margin.
        let own = self.cfg.get().idle_timeout();
        let idle = match peer_idle {
            Some(p) if p > 10 => own.min(std::time::Duration::from_secs(p - 5)),
            _ => own,
        };
        info!(remote, peer = %n.peer, stream_id = %n.stream_id, tls = n.tls, max_stanza, "outgoing stream open");
        let conn = OutboundConn::spawn(
            remote,
            &n.stream_id,
            max_stanza,
            n.tls,
            n.cert_valid,
            n.writer,
            idle,
        );
        if n.external {
            conn.set_authenticated(local);
        }
        tokio::spawn(crate::metrics::outbound_conn(reader_task(
            conn.clone(),
            n.reader,
        )));
        Ok(conn)
    }

    /// Receiving role: ask the authoritative server of `originating` whether `key` is its
    /// key for our stream `stream_id` (XEP-0220 §2.3).
    pub(crate) async fn verify_key(
        &self,
        receiving: &str,
        originating: &str,
        stream_id: &str,
        key: &str,
    ) -> Result<DbType, S2sError> {
        let mut n = self.open_stream(receiving, originating).await?;
        write(
            &mut n.writer,
            originating,
            &dialback::verify_request(receiving, originating, stream_id, key),
        )
        .await?;
        let deadline = Instant::now() + self.cfg.get().handshake_timeout();
        let verdict = loop {
            let el = match timeout_at(deadline, n.reader.next()).await {
                Err(_) => return Err(S2sError::Timeout(originating.to_string())),
                Ok(Err(e)) => return Err(S2sError::stream(originating, e)),
                Ok(Ok(None)) => return Err(S2sError::Closed(originating.to_string())),
                Ok(Ok(Some(el))) => el,
            };
            if let Some(err) = stream_error_text(&el) {
                return Err(S2sError::stream(originating, err));
            }
            if let Ok(Dialback::VerifyAnswer { id, kind, .. }) = Dialback::try_from(&el)
                && id == stream_id
            {
                break kind;
            }
            debug!(
                originating,
                element = el.name(),
                "ignored on verification stream"
            );
        };
        let _ = n.writer.write_all(b"</stream:stream>").await;
        let _ = n.writer.shutdown().await;
        Ok(verdict)
    }
}

async fn write(w: &mut WriteHalf<BoxIo>, remote: &str, data: &str) -> Result<(), S2sError> {
    w.write_all(data.as_bytes())
        .await
        .map_err(|e| S2sError::stream(remote, e))?;
    w.flush().await.map_err(|e| S2sError::stream(remote, e))
}

/// "condition: text" of a `<stream:error>`, or None for any other element.
pub(crate) fn stream_error_text(el: &Element) -> Option<String> {
    if !el.is("error", ns::STREAM) {
        return None;
    }
    let cond = el
        .children()
        .find(|c| c.ns() == ns::STREAM_ERRORS && c.name() != "text")
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| "undefined-condition".into());
    let text = el.get_child("text", ns::STREAM_ERRORS).map(|t| t.text());
    Some(match text {
        Some(t) => format!("stream error <{cond}/>: {t}"),
        None => format!("stream error <{cond}/>"),
    })
}

type AuthResult = Result<(), String>;

/// Chunked mails in flight on one stream at once: what a receiver keeps as partial mails
/// (XEP-MTA §8.4 recommends 8), so the sender does not provoke resource-constraint.
pub const MAX_CHUNKED_IN_FLIGHT: usize = 8;

/// What the writer task is given.
enum Outgoing {
    Data(String),
    /// Answered once everything queued before it has been written to the socket.
    Flushed(oneshot::Sender<()>),
}

/// An outgoing stream to one remote domain, shared by all local domains that send there.
pub struct OutboundConn {
    pub remote: String,
    pub stream_id: String,
    /// The peer's stanza size limit (XEP-0478), or the 512 KiB default.
    pub max_stanza_bytes: usize,
    pub tls: bool,
    pub cert_valid: bool,
    tx: mpsc::Sender<Outgoing>,
    /// Permits for chunked transmissions (see MAX_CHUNKED_IN_FLIGHT).
    pub chunked: Arc<tokio::sync::Semaphore>,
    open: AtomicBool,
    closed: watch::Sender<bool>,
    authed: std::sync::Mutex<HashSet<String>>,
    pending: std::sync::Mutex<HashMap<String, oneshot::Sender<AuthResult>>>,
}

impl OutboundConn {
    /// A stream ready for stanzas, with its writer task running; the caller runs the reader.
    pub(crate) fn spawn(
        remote: &str,
        stream_id: &str,
        max_stanza_bytes: usize,
        tls: bool,
        cert_valid: bool,
        writer: WriteHalf<BoxIo>,
        idle: std::time::Duration,
    ) -> Arc<OutboundConn> {
        let (tx, rx) = mpsc::channel::<Outgoing>(256);
        let (closed_tx, closed_rx) = watch::channel(false);
        let conn = Arc::new(OutboundConn {
            remote: remote.to_string(),
            stream_id: stream_id.to_string(),
            max_stanza_bytes,
            tls,
            cert_valid,
            tx,
            chunked: Arc::new(tokio::sync::Semaphore::new(MAX_CHUNKED_IN_FLIGHT)),
            open: AtomicBool::new(true),
            closed: closed_tx,
            authed: std::sync::Mutex::new(HashSet::new()),
            pending: std::sync::Mutex::new(HashMap::new()),
        });
        tokio::spawn(writer_task(conn.clone(), writer, rx, closed_rx, idle));
        conn
    }

    /// Marks `local` as authenticated by other means (the component handshake).
    pub(crate) fn set_authenticated(&self, local: &str) {
        self.authed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(local.to_string());
    }

    /// Resolves when the stream has closed.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    pub fn is_authenticated(&self, local: &str) -> bool {
        self.authed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(local)
    }

    /// Queues serialized stanzas for the writer; an error means the stream is gone.
    pub async fn send(&self, data: String) -> Result<(), S2sError> {
        if !self.is_open() {
            return Err(S2sError::Closed(self.remote.clone()));
        }
        self.tx
            .send(Outgoing::Data(data))
            .await
            .map_err(|_| S2sError::Closed(self.remote.clone()))
    }

    /// Waits until everything sent so far has been written to the socket.
    pub async fn flushed(&self) -> Result<(), S2sError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Outgoing::Flushed(tx))
            .await
            .map_err(|_| S2sError::Closed(self.remote.clone()))?;
        rx.await.map_err(|_| S2sError::Closed(self.remote.clone()))
    }

    pub fn close(&self) {
        self.mark_closed("closed locally");
    }

    pub(crate) fn mark_closed(&self, why: &str) {
        if self.open.swap(false, Ordering::SeqCst) {
            debug!(remote = %self.remote, why, "outgoing stream closed");
        }
        let _ = self.closed.send(true);
        let pending: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(format!("stream closed: {why}")));
        }
    }

    /// Originating role: send our key for `local` and wait for the verdict.
    pub(crate) async fn authenticate(&self, s2s: &S2s, local: &str) -> Result<(), S2sError> {
        if s2s.cfg.get().s2s.auth == S2sAuth::Certificate {
            return Err(S2sError::DialbackRefused {
                domain: self.remote.clone(),
                local: local.to_string(),
                reason: "[s2s] auth = \"certificate\" allows no dialback".into(),
            });
        }
        let key = s2s.secret.key(&self.remote, local, &self.stream_id);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(local.to_string(), tx);
        s2s.remember_originated(&self.remote, local, &self.stream_id, true);
        let sent = self
            .send(dialback::result_request(local, &self.remote, &key))
            .await;
        let verdict = match sent {
            Err(e) => Err(e.to_string()),
            Ok(()) => match timeout(s2s.cfg.get().handshake_timeout(), rx).await {
                Ok(Ok(v)) => v,
                Ok(Err(_)) => Err("stream closed".to_string()),
                Err(_) => Err("no dialback answer in time".to_string()),
            },
        };
        s2s.remember_originated(&self.remote, local, &self.stream_id, false);
        match verdict {
            Ok(()) => {
                self.authed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(local.to_string());
                crate::metrics::dialback(
                    crate::metrics::Role::Outbound,
                    crate::metrics::Outcome::Valid,
                );
                info!(local, remote = %self.remote, "outgoing stream authenticated (dialback)");
                Ok(())
            }
            Err(reason) => {
                crate::metrics::dialback_failed(&reason);
                warn!(local, remote = %self.remote, %reason, "dialback failed on outgoing stream");
                self.mark_closed(&reason);
                Err(S2sError::DialbackRefused {
                    domain: self.remote.clone(),
                    local: local.to_string(),
                    reason,
                })
            }
        }
    }
}

async fn writer_task(
    conn: Arc<OutboundConn>,
    mut w: WriteHalf<BoxIo>,
    mut rx: mpsc::Receiver<Outgoing>,
    mut closed: watch::Receiver<bool>,
    idle: std::time::Duration,
) {
    let mut buf = String::new();
    loop {
        tokio::select! {
            msg = timeout(idle, rx.recv()) => {
                match msg {
                    Ok(Some(first)) => {
                        buf.clear();
                        let mut acks = Vec::new();
                        // A stanza alone is written as it is, not copied (a big mail).
                        let mut single: Option<String> = None;
                        let mut next = Some(first);
                        // Coalesce whatever else is queued into one write.
                        while let Some(item) = next.take() {
                            match item {
                                Outgoing::Data(d) if buf.is_empty() && single.is_none() => {
                                    single = Some(d)
                                }
                                Outgoing::Data(d) => {
                                    if let Some(s) = single.take() {
                                        buf.push_str(&s);
                                    }
                                    buf.push_str(&d);
                                }
                                Outgoing::Flushed(ack) => acks.push(ack),
                            }
                            if buf.len() + single.as_ref().map_or(0, String::len) < 1 << 20 {
                                next = rx.try_recv().ok();
                            }
                        }
                        let out = single.as_deref().unwrap_or(&buf);
                        if let Err(e) = async {
                            w.write_all(out.as_bytes()).await?;
                            w.flush().await
                        }.await {
                            conn.mark_closed(&format!("write failed: {e}"));
                            break;
                        }
                        for ack in acks {
                            let _ = ack.send(());
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        debug!(remote = %conn.remote, "outgoing stream idle, closing");
                        conn.mark_closed("idle");
                        break;
                    }
                }
            }
            _ = closed.changed() => break,
        }
    }
    let _ = w.write_all(b"</stream:stream>").await;
    let _ = w.shutdown().await;
}

async fn reader_task(conn: Arc<OutboundConn>, mut reader: XmlReader<ReadHalf<BoxIo>>) {
    let why = loop {
        let el = match reader.next().await {
            Ok(Some(el)) => el,
            Ok(None) => break "peer closed the stream".to_string(),
            Err(e) => break format!("read failed: {e}"),
        };
        if let Some(err) = stream_error_text(&el) {
            warn!(remote = %conn.remote, %err, "outgoing stream closed by peer");
            break err;
        }
        match Dialback::try_from(&el) {
            Ok(Dialback::ResultAnswer {
                from,
                to,
                kind,
                condition,
            }) => {
                let tx = conn
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&to);
                let verdict = match kind {
                    DbType::Valid if from == conn.remote => Ok(()),
                    DbType::Valid => Err(format!("answer from unexpected domain {from}")),
                    DbType::Invalid => Err("key refused (type='invalid')".into()),
                    DbType::Error => Err(format!(
                        "peer reported an error: {}",
                        condition.unwrap_or_else(|| "undefined-condition".into())
                    )),
                };
                match tx {
                    Some(tx) => {
                        let _ = tx.send(verdict);
                    }
                    None => {
                        debug!(remote = %conn.remote, %to, "dialback answer for no pending request")
                    }
                }
            }
            _ => debug!(remote = %conn.remote, element = el.name(), "ignored on outgoing stream"),
        }
    };
    conn.mark_closed(&why);
}
