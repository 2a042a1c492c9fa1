//! XMPP server-to-server streams (RFC 6120) authenticated with Server Dialback (XEP-0220).
//!
//! - `inbound`: the listener; a peer's stream is accepted, offered STARTTLS, and each domain
//!   it claims is verified (receiving role) before any stanza from that domain is passed on.
//!   Dialback `db:verify` questions about our own keys are answered there too
//!   (authoritative role).
//! - `outbound`: one stream per remote domain, reused, on which each local domain that
//!   sends is authenticated with its own `db:result` (originating role).
//!
//! The rule this module exists to enforce: a stanza reaches the rest of xmta only if its
//! `from` domain was authenticated on the stream it arrived on.
//!
//! Who may authenticate is policy: `[s2s] auth` (certificate / dialback / either),
//! `allow`/`deny`, `max_connections_per_ip`, and the registry of registered servers
//! (`crate::registry`), asked once a domain is authenticated and applied to each stanza.
//! All of it is read from the live config (`crate::live`), so SIGHUP changes it: limits,
//! timeouts and `auth` per new stream, `allow`/`deny` and the registry policy per stanza,
//! `[s2s.routes]` per outbound stream (see `crate::server` for the rules).

mod component;
pub mod dialback;
mod inbound;
mod outbound;
pub mod resolve;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use minidom::Element;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::live::{Live, Slots};
use dialback::DialbackSecret;
pub use outbound::OutboundConn;
use resolve::Resolver;
use tls::TlsContext;

/// Any byte stream a s2s connection runs over: TCP, or TLS over TCP after STARTTLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// What inbound streams hand to the mail layer.
// Nearly every event is a stanza; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum InboundEvent {
    /// A stanza whose `from` domain is authenticated on stream `stream`.
    Stanza {
        stream: u64,
        from_domain: String,
        to_domain: String,
        /// How `from_domain` was authenticated, for trace headers: "dialback",
        /// "dialback; TLS", or "component" (by the XMPP server xmta is a component of).
        auth: &'static str,
        /// The registry's answer for `from_domain` (XEP-MTA §22).
        registry: crate::registry::RegistryMark,
        element: Element,
    },
    /// The stream ended; state kept per stream (partial chunked mail) can go.
    StreamClosed { stream: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum S2sError {
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
    #[error("cannot connect to {domain}: {reason}")]
    Connect { domain: String, reason: String },
    #[error("stream to {domain} failed: {reason}")]
    Stream { domain: String, reason: String },
    #[error("{domain} did not accept our dialback key for {local}: {reason}")]
    DialbackRefused {
        domain: String,
        local: String,
        reason: String,
    },
    #[error("{domain}: TLS is required by our config but {reason}")]
    TlsRequired { domain: String, reason: String },
    #[error("timed out talking to {0}")]
    Timeout(String),
    #[error("stream to {0} is closed")]
    Closed(String),
}

impl S2sError {
    fn stream(domain: &str, reason: impl ToString) -> S2sError {
        S2sError::Stream {
            domain: domain.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A pooled stream to one remote domain, with the `[s2s.routes]` entry it was opened by.
type Slot = Arc<tokio::sync::Mutex<Option<(Arc<OutboundConn>, Option<String>)>>>;

/// The s2s service: listener, outbound pool, dialback state.
pub struct S2s {
    /// The configuration in force (SIGHUP swaps it): read per stream, and per stanza for
    /// `[s2s] allow`/`deny`.
    pub(crate) cfg: Live,
    pub(crate) secret: DialbackSecret,
    pub(crate) resolver: Resolver,
    pub(crate) tls: TlsContext,
    pub(crate) events: mpsc::Sender<InboundEvent>,
    pool: std::sync::Mutex<HashMap<String, Slot>>,
    /// (receiving domain, originating domain, stream id) of dialback keys we sent and whose
    /// verdict is still open: a `db:verify` about any other stream is refused (XEP-0220 §5).
    originated: std::sync::Mutex<HashSet<(String, String, String)>>,
    next_stream: AtomicU64,
    /// Inbound connections open (against `[s2s] max_connections`).
    conn_limit: Arc<Slots>,
    /// The XEP-0114 connection, in component mode.
    component: tokio::sync::Mutex<Option<Arc<OutboundConn>>>,
    component_up: tokio::sync::Notify,
    /// The registry of registered servers, when `[registry] zone` is set.
    pub(crate) registry: Option<Arc<crate::registry::Registry>>,
    /// Inbound connections open per source address (`max_connections_per_ip`).
    per_ip: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
}

impl S2s {
    pub fn new(
        cfg: Live,
        secret: DialbackSecret,
        events: mpsc::Sender<InboundEvent>,
    ) -> Result<Arc<S2s>, Box<dyn std::error::Error + Send + Sync>> {
        let resolver = Resolver::new(&cfg)?;
        let tls = TlsContext::new(&cfg.get())?;
        let conn_limit = Slots::new();
        let registry = crate::registry::Registry::new(cfg.clone())?;
        if let (Some(r), Ok(rt)) = (&registry, tokio::runtime::Handle::try_current()) {
            rt.spawn(r.clone().probe());
        }
        Ok(Arc::new(S2s {
            cfg,
            secret,
            resolver,
            tls,
            events,
            pool: std::sync::Mutex::new(HashMap::new()),
            originated: std::sync::Mutex::new(HashSet::new()),
            next_stream: AtomicU64::new(1),
            conn_limit,
            component: tokio::sync::Mutex::new(None),
            component_up: tokio::sync::Notify::new(),
            registry,
            per_ip: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// An authenticated outgoing stream from `local` to `remote`, opened (or authenticated
    /// for one more local domain) if needed.
    pub async fn stream(
        self: &Arc<Self>,
        local: &str,
        remote: &str,
    ) -> Result<Arc<OutboundConn>, S2sError> {
        let cfg = self.cfg.get();
        if cfg.component.is_some() {
            return self.component_stream().await;
        }
        // The static route in force; a stream opened under another one is not reused (a
        // SIGHUP changed the route), it is left to close when idle.
        let route = cfg.s2s.routes.get(remote).cloned();
        let slot = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.entry(remote.to_string()).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some((conn, opened_by)) = guard.as_ref()
            && conn.is_open()
            && *opened_by == route
        {
            if !conn.is_authenticated(local) {
                conn.authenticate(self, local).await?;
            }
            return Ok(conn.clone());
        }
        let conn = self.dial(local, remote).await?;
        if !conn.is_authenticated(local) {
            conn.authenticate(self, local).await?;
        }
        *guard = Some((conn.clone(), route));
        Ok(conn)
    }

    /// Sends one serialized stanza from `local` to `remote`.
    pub async fn send(
        self: &Arc<Self>,
        local: &str,
        remote: &str,
        stanza: String,
    ) -> Result<(), S2sError> {
        let conn = self.stream(local, remote).await?;
        conn.send(stanza).await
    }

    /// Closes every outgoing stream (shutdown).
    pub async fn close_all(&self) {
        let slots: Vec<Slot> = {
            let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.values().cloned().collect()
        };
        for slot in slots {
            if let Some((conn, _)) = slot.lock().await.take() {
                conn.close();
            }
        }
    }

    fn remember_originated(&self, receiving: &str, originating: &str, id: &str, add: bool) {
        let mut set = self.originated.lock().unwrap_or_else(|p| p.into_inner());
        let key = (
            receiving.to_string(),
            originating.to_string(),
            id.to_string(),
        );
        if add {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    fn originated(&self, receiving: &str, originating: &str, id: &str) -> bool {
        let set = self.originated.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(&(
            receiving.to_string(),
            originating.to_string(),
            id.to_string(),
        ))
    }
}

/// Counts one inbound connection from an address while alive
/// (`[s2s] max_connections_per_ip`).
pub(crate) struct IpSlot {
    s2s: Arc<S2s>,
    ip: std::net::IpAddr,
}

impl S2s {
    /// A slot for one more connection from `ip`, or None when it has its maximum.
    pub(crate) fn ip_slot(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.cfg.get().s2s.max_connections_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            s2s: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.s2s.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

pub(crate) fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}
