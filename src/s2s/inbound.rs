//! Incoming s2s streams: stream header, STARTTLS, dialback (receiving and authoritative
//! roles), then authenticated stanzas to the mail layer.
//!
//! Every fault a peer can cause ends in a stream error naming the RFC 6120 condition, and
//! only that one connection is closed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use minidom::Element;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info, warn};

use super::dialback::{self, DbType, Dialback};
use super::{BoxIo, InboundEvent, IpSlot, S2s, random_id};
use crate::config::{S2sAuth, TlsMode};
use crate::registry::{Decision, RegistryMark};
use crate::xml::writer::{stream_error, stream_header};
use crate::xml::{StreamHeader, XmlError, XmlReader, ns};

/// The outcome of verifying one `db:result`, sent back to the stream's task.
struct Verified {
    from: String,
    to: String,
    verdict: Result<DbType, String>,
    /// The registry's decision, asked once the key proved valid.
    registry: Option<Decision>,
}

struct Inbound {
    s2s: Arc<S2s>,
    /// The config in force when the connection was accepted: its limits, timeouts and
    /// `[s2s] auth` hold for the whole stream (`allow`/`deny` and the registry policy are
    /// read live, per stanza).
    cfg: Arc<crate::config::Config>,
    peer: SocketAddr,
    stream_no: u64,
    reader: XmlReader<ReadHalf<BoxIo>>,
    writer: WriteHalf<BoxIo>,
    header_sent: bool,
    stream_id: String,
    tls: bool,
    /// (originating domain, receiving domain) pairs authenticated on this stream.
    authed: HashSet<(String, String)>,
    pending: HashSet<(String, String)>,
    /// Pairs authenticated with SASL EXTERNAL (the rest by dialback).
    by_certificate: HashSet<(String, String)>,
    /// The certificate chain the peer presented in the TLS handshake, if any.
    peer_chain: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// 'from' and 'to' of the current stream header (normalized).
    header_from: Option<String>,
    header_to: Option<String>,
    sasl_done: bool,
}

/// Why a stream ends: the stream error to send, or a clean close.
enum End {
    Error(&'static str, String),
    Closed,
    Gone,
}

impl S2s {
    /// Accepts inbound streams (STARTTLS offered) until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        self.accept_loop(listener, false).await
    }

    /// Accepts direct TLS streams (XEP-0368: TLS from the first byte).
    pub async fn serve_direct_tls(self: Arc<Self>, listener: TcpListener) {
        self.accept_loop(listener, true).await
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, direct_tls: bool) {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "s2s accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            let cfg = self.cfg.get();
            let Some(slot) = self.ip_slot(peer.ip()) else {
                let limit = cfg.s2s.max_connections_per_ip;
                warn!(%peer, limit, "s2s connections per address limit reached, refusing");
                tokio::spawn(refuse(
                    sock,
                    format!(
                        "too many connections from {} (max_connections_per_ip = {limit})",
                        peer.ip()
                    ),
                ));
                continue;
            };
            match self.conn_limit.try_take(cfg.s2s.max_connections) {
                Some(permit) => {
                    let s2s = self.clone();
                    tokio::spawn(async move {
                        s2s.handle_inbound(sock, peer, direct_tls, slot, cfg).await;
                        drop(permit);
                    });
                }
                None => {
                    warn!(%peer, limit = cfg.s2s.max_connections, "s2s connection limit reached, refusing");
                    tokio::spawn(refuse(sock, "too many connections".into()));
                }
            }
        }
    }

    async fn handle_inbound(
        self: Arc<Self>,
        sock: TcpStream,
        peer: SocketAddr,
        direct_tls: bool,
        _slot: IpSlot,
        cfg: Arc<crate::config::Config>,
    ) {
        let _open = crate::metrics::inbound_conn();
        let io: BoxIo = Box::new(sock);
        let (r, w) = tokio::io::split(io);
        let stream_no = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let mut conn = Inbound {
            reader: XmlReader::new(r, cfg.s2s.max_stanza_bytes),
            writer: w,
            s2s: self.clone(),
            cfg,
            peer,
            stream_no,
            header_sent: false,
            stream_id: String::new(),
            tls: false,
            authed: HashSet::new(),
            pending: HashSet::new(),
            by_certificate: HashSet::new(),
            peer_chain: None,
            header_from: None,
            header_to: None,
            sasl_done: false,
        };
        let end = if direct_tls {
            match conn.tls_handshake().await {
                Ok(()) => conn.run().await,
                Err(e) => e,
            }
        } else {
            conn.run().await
        };
        match end {
            End::Error(cond, text) => {
                info!(%peer, condition = cond, %text, "closing inbound stream with error");
                if !conn.header_sent {
                    let h = stream_header(ns::SERVER, None, None, Some(&random_id()), true);
                    let _ = conn.writer.write_all(h.as_bytes()).await;
                }
                let _ = conn
                    .writer
                    .write_all(stream_error(cond, Some(&text)).as_bytes())
                    .await;
            }
            End::Closed => {
                debug!(%peer, "inbound stream closed by peer");
                let _ = conn.writer.write_all(b"</stream:stream>").await;
            }
            End::Gone => debug!(%peer, "inbound connection lost"),
        }
        let _ = conn.writer.shutdown().await;
        let _ = self
            .events
            .send(InboundEvent::StreamClosed { stream: stream_no })
            .await;
    }
}

async fn refuse(mut sock: TcpStream, why: String) {
    let h = stream_header(ns::SERVER, None, None, Some(&random_id()), true);
    let msg = format!("{h}{}", stream_error("policy-violation", Some(&why)));
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sock.write_all(msg.as_bytes()),
    )
    .await;
    let _ = sock.shutdown().await;
}

fn xml_end(e: XmlError) -> End {
    match e {
        XmlError::Io(_) | XmlError::Eof => End::Gone,
        other => End::Error(other.condition(), other.to_string()),
    }
}

impl Inbound {
    async fn write(&mut self, data: &str) -> Result<(), End> {
        let r = async {
            self.writer.write_all(data.as_bytes()).await?;
            self.writer.flush().await
        };
        r.await.map_err(|_| End::Gone)
    }

    /// Reads the peer's header and answers with ours and the features.
    async fn open(&mut self, deadline: Instant) -> Result<StreamHeader, End> {
        let h = match timeout_at(deadline, self.reader.read_header()).await {
            Err(_) => {
                return Err(End::Error(
                    "connection-timeout",
                    "no stream header in time".into(),
                ));
            }
            Ok(Err(e)) => return Err(xml_end(e)),
            Ok(Ok(h)) => h,
        };
        self.stream_id = random_id();
        let local =
            h.to.clone()
                .and_then(|t| crate::addr::normalize_domain(&t).ok());
        self.header_to = local.clone();
        self.header_from = h
            .from
            .as_deref()
            .and_then(|f| crate::addr::normalize_domain(f).ok());
        let header = stream_header(
            ns::SERVER,
            local.as_deref(),
            h.from.as_deref(),
            Some(&self.stream_id),
            true,
        );
        self.write(&header).await?;
        self.header_sent = true;
        if h.default_ns != ns::SERVER {
            return Err(End::Error(
                "invalid-namespace",
                format!(
                    "default namespace must be jabber:server, not '{}'",
                    h.default_ns
                ),
            ));
        }
        match &local {
            Some(d) if self.cfg.is_local_domain(d) => {}
            Some(d) => {
                return Err(End::Error(
                    "host-unknown",
                    format!("this server does not serve {d}"),
                ));
            }
            None => {
                return Err(End::Error(
                    "host-unknown",
                    "the stream header has no valid 'to'".into(),
                ));
            }
        }
        if h.version.as_deref() == Some("1.0") {
            let mut f = String::from("<stream:features>");
            if !self.tls && self.s2s.tls.server.is_some() && self.s2s.tls.mode != TlsMode::Off {
                f.push_str(&format!("<starttls xmlns='{}'>", ns::TLS));
                if self.s2s.tls.mode == TlsMode::Required {
                    f.push_str("<required/>");
                }
                f.push_str("</starttls>");
            }
            if self.external_possible() {
                f.push_str(&format!(
                    "<mechanisms xmlns='{}'><mechanism>EXTERNAL</mechanism></mechanisms>",
                    ns::SASL
                ));
            }
            if self.cfg.s2s.auth != S2sAuth::Certificate {
                f.push_str(&format!(
                    "<dialback xmlns='{}'><errors/></dialback>",
                    ns::DIALBACK_FEATURE
                ));
            }
            f.push_str(&format!(
                "<limits xmlns='{}'><max-bytes>{}</max-bytes><idle-seconds>{}</idle-seconds></limits>",
                ns::STREAM_LIMITS,
                self.cfg.s2s.max_stanza_bytes,
                self.cfg.s2s.idle_timeout_secs
            ));
            f.push_str("</stream:features>");
            self.write(&f).await?;
        }
        debug!(peer = %self.peer, from = ?h.from, to = ?h.to, id = %self.stream_id, tls = self.tls, "inbound stream opened");
        Ok(h)
    }

    /// XEP-0178: EXTERNAL is offered once TLS is up and the peer's certificate is valid
    /// for the domain its stream header claims.
    fn external_possible(&self) -> bool {
        if !self.tls || self.sasl_done || self.cfg.s2s.auth == S2sAuth::Dialback {
            return false;
        }
        match (&self.peer_chain, &self.header_from) {
            (Some(chain), Some(from)) => {
                !self.cfg.is_local_domain(from) && self.s2s.tls.chain_valid_for(chain, from)
            }
            _ => false,
        }
    }

    /// SASL EXTERNAL (RFC 6120 §6, XEP-0178 §3): the authorization identity, if given,
    /// must be the header's 'from', for which the certificate must be valid.
    async fn sasl(&mut self, el: &Element) -> Result<(), End> {
        if el.name() != "auth" {
            return Err(End::Error(
                "unsupported-stanza-type",
                format!("SASL <{}> out of place", el.name()),
            ));
        }
        let failure = |cond: &str| format!("<failure xmlns='{}'><{cond}/></failure>", ns::SASL);
        if el.attr("mechanism") != Some("EXTERNAL") {
            return self.write(&failure("invalid-mechanism")).await;
        }
        let text = el.text();
        let authzid = match text.trim() {
            "" | "=" => self.header_from.clone(),
            b64 => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .ok()
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|d| crate::addr::normalize_domain(&d).ok())
            }
        };
        let ok = self.external_possible() && authzid.is_some() && authzid == self.header_from;
        let (Some(from), Some(to), true) = (self.header_from.clone(), self.header_to.clone(), ok)
        else {
            info!(peer = %self.peer, from = ?self.header_from, "SASL EXTERNAL refused");
            return self.write(&failure("not-authorized")).await;
        };
        self.admit(&from).await?;
        self.write(&format!("<success xmlns='{}'/>", ns::SASL))
            .await?;
        info!(peer = %self.peer, %from, %to, tls = self.tls, "inbound stream authenticated (SASL EXTERNAL)");
        self.sasl_done = true;
        self.authed.insert((from.clone(), to.clone()));
        self.by_certificate.insert((from, to));
        // The peer restarts the stream (RFC 6120 §6.4.6).
        self.reader.restart();
        self.header_sent = false;
        let deadline = Instant::now() + self.cfg.handshake_timeout();
        self.open(deadline).await.map(|_| ())
    }

    async fn starttls(&mut self) -> Result<(), End> {
        if self.s2s.tls.server.is_none() {
            return Err(End::Error(
                "unsupported-feature",
                "STARTTLS is not offered".into(),
            ));
        }
        if self.tls {
            return Err(End::Error(
                "policy-violation",
                "TLS is already in place".into(),
            ));
        }
        if !self.authed.is_empty() || !self.pending.is_empty() {
            return Err(End::Error(
                "policy-violation",
                "STARTTLS after dialback".into(),
            ));
        }
        self.write(&format!("<proceed xmlns='{}'/>", ns::TLS))
            .await?;
        self.tls_handshake().await
    }

    /// The server side of a TLS handshake on the current socket (after `<proceed/>`, or
    /// at once on a direct TLS listener); records the peer's certificate chain.
    async fn tls_handshake(&mut self) -> Result<(), End> {
        let Some(server) = self.s2s.tls.server.clone() else {
            return Err(End::Error(
                "unsupported-feature",
                "TLS is not configured here".into(),
            ));
        };
        // Swap the socket: take both halves back, handshake, split the TLS stream.
        let placeholder: BoxIo = Box::new(tokio::io::empty());
        let (pr, pw) = tokio::io::split(placeholder);
        let reader = std::mem::replace(&mut self.reader, XmlReader::new(pr, 0));
        let writer = std::mem::replace(&mut self.writer, pw);
        let r = reader.into_inner().map_err(xml_end)?;
        let io = r.unsplit(writer);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let tls =
            match tokio::time::timeout(self.cfg.handshake_timeout(), acceptor.accept(io)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    warn!(peer = %self.peer, error = %e, "TLS handshake failed");
                    return Err(End::Gone);
                }
                Err(_) => return Err(End::Gone),
            };
        self.peer_chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect());
        let io: BoxIo = Box::new(tls);
        let (r, w) = tokio::io::split(io);
        self.reader = XmlReader::new(r, self.cfg.s2s.max_stanza_bytes);
        self.writer = w;
        self.tls = true;
        self.header_sent = false;
        Ok(())
    }

    async fn run(&mut self) -> End {
        match self.run_inner().await {
            Ok(()) => End::Closed,
            Err(e) => e,
        }
    }

    async fn run_inner(&mut self) -> Result<(), End> {
        let cfg = self.cfg.clone();
        let deadline = Instant::now() + cfg.handshake_timeout();
        self.open(deadline).await?;
        let (vtx, mut vrx) = mpsc::channel::<Verified>(16);
        loop {
            // An unauthenticated stream must get on with it; an authenticated one may idle.
            let limit = if self.authed.is_empty() {
                cfg.handshake_timeout()
            } else {
                cfg.idle_timeout()
            };
            let el = tokio::select! {
                v = vrx.recv() => {
                    if let Some(v) = v {
                        self.verified(v).await?;
                    }
                    continue;
                }
                r = tokio::time::timeout(limit, self.reader.next()) => match r {
                    Err(_) => return Err(End::Error("connection-timeout", "idle for too long".into())),
                    Ok(Err(e)) => return Err(xml_end(e)),
                    Ok(Ok(None)) => return Ok(()),
                    Ok(Ok(Some(el))) => el,
                },
            };
            self.element(el, &vtx).await?;
        }
    }

    async fn element(&mut self, el: Element, vtx: &mpsc::Sender<Verified>) -> Result<(), End> {
        let el_ns = el.ns();
        if el_ns == ns::DIALBACK {
            return self.dialback(&el, vtx).await;
        }
        if el_ns == ns::SASL {
            return self.sasl(&el).await;
        }
        if el.is("starttls", ns::TLS) {
            self.starttls().await?;
            let deadline = Instant::now() + self.cfg.handshake_timeout();
            self.open(deadline).await?;
            return Ok(());
        }
        if el.is("error", ns::STREAM) {
            let text = super::outbound::stream_error_text(&el).unwrap_or_default();
            info!(peer = %self.peer, %text, "peer sent a stream error");
            return Err(End::Closed);
        }
        if el_ns != ns::SERVER {
            return Err(End::Error(
                "invalid-namespace",
                format!(
                    "<{}> in namespace '{el_ns}' is not a jabber:server stanza",
                    el.name()
                ),
            ));
        }
        if !matches!(el.name(), "message" | "presence" | "iq") {
            return Err(End::Error(
                "unsupported-stanza-type",
                format!("<{}> is not a stanza", el.name()),
            ));
        }
        if self.s2s.tls.mode == TlsMode::Required && !self.tls {
            return Err(End::Error("policy-violation", "TLS is required".into()));
        }
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return Err(End::Error(
                "improper-addressing",
                "a s2s stanza needs 'from' and 'to'".into(),
            ));
        };
        let from_domain = crate::addr::domain_of_jid(from)
            .map_err(|e| End::Error("invalid-from", format!("'from' {from}: {e}")))?;
        let to_domain = crate::addr::domain_of_jid(to)
            .map_err(|e| End::Error("improper-addressing", format!("'to' {to}: {e}")))?;
        if self.authed.is_empty() {
            return Err(End::Error(
                "not-authorized",
                "stanza before the stream was authenticated".into(),
            ));
        }
        if !self.authed.iter().any(|(f, _)| *f == from_domain) {
            return Err(End::Error(
                "invalid-from",
                format!("{from_domain} is not authenticated on this stream"),
            ));
        }
        if !self
            .authed
            .contains(&(from_domain.clone(), to_domain.clone()))
        {
            return Err(End::Error(
                "improper-addressing",
                format!("{from_domain} is not authenticated to send to {to_domain} on this stream"),
            ));
        }
        // `[s2s] deny`/`allow` as in force now: a SIGHUP that denies a peer ends its
        // streams at their next stanza (the sender keeps the mail queued and retries).
        if !self.s2s.cfg.get().peer_allowed(&from_domain) {
            return Err(End::Error(
                "policy-violation",
                format!("{from_domain} is not allowed to connect here ([s2s] allow/deny)"),
            ));
        }
        let registry = self.registry_mark(&from_domain).await?;
        let auth = if self
            .by_certificate
            .contains(&(from_domain.clone(), to_domain.clone()))
        {
            "certificate"
        } else if self.tls {
            "dialback; TLS"
        } else {
            "dialback"
        };
        self.s2s
            .events
            .send(InboundEvent::Stanza {
                stream: self.stream_no,
                from_domain,
                to_domain,
                auth,
                registry,
                element: el,
            })
            .await
            .map_err(|_| End::Error("system-shutdown", "server shutting down".into()))
    }

    async fn dialback(&mut self, el: &Element, vtx: &mpsc::Sender<Verified>) -> Result<(), End> {
        let db = Dialback::try_from(el).map_err(|e| End::Error("bad-format", e.to_string()))?;
        match db {
            Dialback::ResultRequest { from, to, key } => {
                let (Ok(from), Ok(to)) = (
                    crate::addr::normalize_domain(&from),
                    crate::addr::normalize_domain(&to),
                ) else {
                    return Err(End::Error(
                        "improper-addressing",
                        "dialback 'from'/'to' is not a domain".into(),
                    ));
                };
                if !self.cfg.is_local_domain(&to) {
                    let answer = dialback::result_answer(
                        &to,
                        &from,
                        DbType::Error,
                        Some(("cancel", "item-not-found")),
                    );
                    return self.write(&answer).await;
                }
                if self.cfg.is_local_domain(&from) {
                    return Err(End::Error("invalid-from", format!("{from} is served here")));
                }
                if self.cfg.s2s.auth == S2sAuth::Certificate {
                    return Err(End::Error(
                        "policy-violation",
                        format!(
                            "this server accepts only certificate authentication (SASL EXTERNAL, XEP-0178); dialback for {from} refused"
                        ),
                    ));
                }
                if !self.s2s.cfg.get().peer_allowed(&from) {
                    return Err(End::Error(
                        "policy-violation",
                        format!("{from} is not allowed to connect here ([s2s] allow/deny)"),
                    ));
                }
                if self.s2s.tls.mode == TlsMode::Required && !self.tls {
                    return Err(End::Error(
                        "policy-violation",
                        "TLS is required before dialback".into(),
                    ));
                }
                let pair = (from.clone(), to.clone());
                if self.authed.contains(&pair) || !self.pending.insert(pair) {
                    // A second request for a pair already being verified or verified.
                    return Err(End::Error(
                        "policy-violation",
                        format!("{from} already authenticated or pending"),
                    ));
                }
                info!(peer = %self.peer, %from, %to, "verifying dialback key");
                let s2s = self.s2s.clone();
                let id = self.stream_id.clone();
                let vtx = vtx.clone();
                let ip = self.peer.ip();
                tokio::spawn(async move {
                    let verdict = s2s
                        .verify_key(&to, &from, &id, &key)
                        .await
                        .map_err(|e| e.to_string());
                    let registry = match (&verdict, &s2s.registry) {
                        (Ok(DbType::Valid), Some(r)) => Some(r.decide(&from, Some(ip)).await),
                        _ => None,
                    };
                    let _ = vtx
                        .send(Verified {
                            from,
                            to,
                            verdict,
                            registry,
                        })
                        .await;
                });
                Ok(())
            }
            Dialback::VerifyRequest { from, to, id, key } => {
                // Authoritative role: `from` is the receiving server asking about our key.
                let from = crate::addr::normalize_domain(&from).unwrap_or(from);
                let to = crate::addr::normalize_domain(&to).unwrap_or(to);
                let valid = self.cfg.is_local_domain(&to)
                    && self.s2s.secret.verify(&from, &to, &id, &key)
                    && self.s2s.originated(&from, &to, &id);
                info!(peer = %self.peer, receiving = %from, originating = %to, valid, "answered db:verify");
                let kind = if valid {
                    DbType::Valid
                } else {
                    DbType::Invalid
                };
                self.write(&dialback::verify_answer(&to, &from, &id, kind))
                    .await
            }
            Dialback::ResultAnswer { .. } | Dialback::VerifyAnswer { .. } => Err(End::Error(
                "not-authorized",
                "unsolicited dialback answer on an incoming stream".into(),
            )),
        }
    }

    /// The checks after a domain proved who it is and before it may send: `[s2s]
    /// allow`/`deny`, then the registry (XEP-MTA §22) under `require`.
    async fn admit(&mut self, from: &str) -> Result<(), End> {
        if !self.s2s.cfg.get().peer_allowed(from) {
            return Err(End::Error(
                "policy-violation",
                format!("{from} is not allowed to connect here ([s2s] allow/deny)"),
            ));
        }
        if let Some(r) = self.s2s.registry.clone()
            && let Decision::Refuse(reason) = r.decide(from, Some(self.peer.ip())).await
        {
            return Err(End::Error("policy-violation", reason));
        }
        Ok(())
    }

    /// The registry's current answer for an authenticated domain (cached by the
    /// registry's resolver for the answer's TTL): a refusal ends the stream, a lookup
    /// failure marks the stanza so mail in it is deferred.
    async fn registry_mark(&mut self, from: &str) -> Result<RegistryMark, End> {
        let Some(r) = self.s2s.registry.clone() else {
            return Ok(RegistryMark::None);
        };
        Ok(match r.decide(from, Some(self.peer.ip())).await {
            Decision::Refuse(reason) => return Err(End::Error("policy-violation", reason)),
            Decision::Defer(why) => RegistryMark::Deferred(why),
            Decision::Accept(Some(tag)) => RegistryMark::Tag(tag),
            Decision::Accept(None) => RegistryMark::None,
        })
    }

    async fn verified(&mut self, v: Verified) -> Result<(), End> {
        let pair = (v.from.clone(), v.to.clone());
        self.pending.remove(&pair);
        match v.verdict {
            Ok(DbType::Valid) => {
                match v.registry {
                    Some(Decision::Refuse(reason)) => {
                        return Err(End::Error("policy-violation", reason));
                    }
                    Some(Decision::Accept(Some(tag))) => {
                        info!(peer = %self.peer, from = %v.from, %tag, "registry admits peer")
                    }
                    Some(Decision::Defer(why)) => {
                        info!(peer = %self.peer, from = %v.from, %why, "registry not answering; mail from this peer is deferred")
                    }
                    _ => {}
                }
                self.write(&dialback::result_answer(
                    &v.to,
                    &v.from,
                    DbType::Valid,
                    None,
                ))
                .await?;
                crate::metrics::dialback(
                    crate::metrics::Role::Inbound,
                    crate::metrics::Outcome::Valid,
                );
                info!(peer = %self.peer, from = %v.from, to = %v.to, tls = self.tls, "inbound stream authenticated (dialback)");
                self.authed.insert(pair);
                Ok(())
            }
            Ok(_) => {
                crate::metrics::dialback(
                    crate::metrics::Role::Inbound,
                    crate::metrics::Outcome::Invalid,
                );
                self.write(&dialback::result_answer(
                    &v.to,
                    &v.from,
                    DbType::Invalid,
                    None,
                ))
                .await?;
                Err(End::Error(
                    "not-authorized",
                    format!("dialback key for {} is invalid", v.from),
                ))
            }
            Err(reason) => {
                crate::metrics::dialback(
                    crate::metrics::Role::Inbound,
                    crate::metrics::Outcome::Error,
                );
                warn!(peer = %self.peer, from = %v.from, %reason, "could not verify dialback key");
                let answer = dialback::result_answer(
                    &v.to,
                    &v.from,
                    DbType::Error,
                    Some(("cancel", "remote-server-not-found")),
                );
                self.write(&answer).await
            }
        }
    }
}
