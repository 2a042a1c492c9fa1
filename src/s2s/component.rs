//! Component mode (XEP-0114): xmta attaches to an existing XMPP server (Prosody,
//! ejabberd) as the component for its mail domain. The server authenticates the other
//! domains on its own s2s streams and routes their stanzas for the component here; all
//! of xmta's outgoing stanzas go back through the same connection.
//!
//! Written on xmta's own stream reader and writer (the same as for s2s) rather than
//! tokio-xmpp's `Component`, so that the outbound side is the same `OutboundConn` the
//! courier already uses (flush markers, chunk permits, back-pressure), and stanzas reach
//! the mail layer as jabber:server elements like those from an s2s stream.

use std::sync::Arc;
use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{info, warn};

use super::outbound::{DEFAULT_PEER_MAX_STANZA, OutboundConn, stream_error_text};
use super::{BoxIo, InboundEvent, S2s, S2sError};
use crate::config::ComponentConfig;
use crate::xml::writer::{escape_attr, stream_header};
use crate::xml::{XmlReader, ns};

/// XEP-0114 §3: the handshake is hex(SHA-1(stream id + secret)).
pub fn handshake(stream_id: &str, secret: &str) -> String {
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

impl S2s {
    /// Keeps the component connection up for as long as the server runs, reconnecting with
    /// a growing delay when the XMPP server goes away.
    pub async fn run_component(self: Arc<Self>, cc: ComponentConfig) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.connect_component(&cc).await {
                Ok(conn) => {
                    delay = Duration::from_millis(200);
                    *self.component.lock().await = Some(conn.clone());
                    self.component_up.notify_waiters();
                    conn.closed().await;
                    warn!(server = %cc.server, "component connection closed; reconnecting");
                }
                Err(e) => {
                    warn!(server = %cc.server, error = %e, "component connection failed; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    async fn connect_component(
        self: &Arc<Self>,
        cc: &ComponentConfig,
    ) -> Result<Arc<OutboundConn>, S2sError> {
        let err = |r: String| S2sError::Stream {
            domain: cc.server.clone(),
            reason: r,
        };
        let tcp = timeout(
            self.cfg.get().connect_timeout(),
            TcpStream::connect(&cc.server),
        )
        .await
        .map_err(|_| S2sError::Timeout(cc.server.clone()))?
        .map_err(|e| S2sError::Connect {
            domain: cc.server.clone(),
            reason: e.to_string(),
        })?;
        let _ = tcp.set_nodelay(true);
        let io: BoxIo = Box::new(tcp);
        let (r, mut w) = tokio::io::split(io);
        let mut reader = XmlReader::new(
            r,
            self.cfg
                .get()
                .s2s
                .max_stanza_bytes
                .max(DEFAULT_PEER_MAX_STANZA * 2),
        );
        reader.alias_default_ns(ns::COMPONENT, ns::SERVER);
        let hs = async {
            let header = stream_header(ns::COMPONENT, None, Some(&cc.jid), None, false);
            w.write_all(header.as_bytes())
                .await
                .map_err(|e| err(e.to_string()))?;
            let h = reader.read_header().await.map_err(|e| err(e.to_string()))?;
            let id =
                h.id.filter(|i| !i.is_empty())
                    .ok_or_else(|| err("no stream id from the server".into()))?;
            let hs = format!(
                "<handshake>{}</handshake>",
                escape_attr(&handshake(&id, &cc.secret))
            );
            w.write_all(hs.as_bytes())
                .await
                .map_err(|e| err(e.to_string()))?;
            w.flush().await.map_err(|e| err(e.to_string()))?;
            let answer = reader
                .next()
                .await
                .map_err(|e| err(e.to_string()))?
                .ok_or_else(|| err("closed during the handshake".into()))?;
            if let Some(e) = stream_error_text(&answer) {
                return Err(err(format!(
                    "handshake refused ({e}); check component.secret"
                )));
            }
            if answer.name() != "handshake" {
                return Err(err(format!(
                    "expected <handshake/>, got <{}>",
                    answer.name()
                )));
            }
            Ok(id)
        };
        let id = timeout(self.cfg.get().handshake_timeout(), hs)
            .await
            .map_err(|_| S2sError::Timeout(cc.server.clone()))??;
        // The stream stays up while the server runs: no idle close on our side.
        let conn = OutboundConn::spawn(
            &cc.server,
            &id,
            DEFAULT_PEER_MAX_STANZA,
            false,
            false,
            w,
            Duration::from_secs(365 * 86_400),
        );
        conn.set_authenticated(&cc.jid);
        info!(server = %cc.server, jid = %cc.jid, "component connected");
        let stream_no = self
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s2s = self.clone();
        let c2 = conn.clone();
        let jid = cc.jid.clone();
        tokio::spawn(async move {
            let why = loop {
                let el = match reader.next().await {
                    Ok(Some(el)) => el,
                    Ok(None) => break "the server closed the stream".to_string(),
                    Err(e) => break e.to_string(),
                };
                if let Some(e) = stream_error_text(&el) {
                    break e;
                }
                if el.ns() != ns::SERVER || !matches!(el.name(), "message" | "presence" | "iq") {
                    continue;
                }
                // The server authenticated the sending domain on its s2s stream; the
                // component trusts its server for that (XEP-0114 §1).
                let from = el
                    .attr("from")
                    .and_then(|f| crate::addr::domain_of_jid(f).ok());
                let to = el
                    .attr("to")
                    .and_then(|t| crate::addr::domain_of_jid(t).ok());
                let (Some(from_domain), Some(to_domain)) = (from, to) else {
                    continue;
                };
                if to_domain != jid {
                    continue;
                }
                let ev = InboundEvent::Stanza {
                    stream: stream_no,
                    from_domain,
                    to_domain,
                    auth: "component",
                    registry: crate::registry::RegistryMark::None,
                    element: el,
                };
                if s2s.events.send(ev).await.is_err() {
                    break "shutting down".into();
                }
            };
            c2.mark_closed(&why);
            let _ = s2s
                .events
                .send(InboundEvent::StreamClosed { stream: stream_no })
                .await;
        });
        Ok(conn)
    }

    /// The component connection, waiting a little for it to come (back) up.
    pub(crate) async fn component_stream(&self) -> Result<Arc<OutboundConn>, S2sError> {
        let deadline = tokio::time::Instant::now() + self.cfg.get().connect_timeout();
        loop {
            let notified = self.component_up.notified();
            if let Some(c) = self.component.lock().await.as_ref()
                && c.is_open()
            {
                return Ok(c.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(S2sError::Closed("component server".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn xep0114_handshake() {
        // hex(SHA-1("3BF96D32" + "sharedsecret")), computed independently with Python's
        // hashlib; the stream id is the one of XEP-0114's example.
        assert_eq!(
            super::handshake("3BF96D32", "sharedsecret"),
            "3b6c216d9b55a7b4f3e82ab3e10cb81569f115d4"
        );
    }
}
