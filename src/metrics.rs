//! Operational metrics: process-wide counters kept in atomics, and a tiny HTTP/1.1 endpoint
//! (`[metrics] listen`) that serves them in the Prometheus text format at `/metrics`, plus
//! `/healthz` (200 while the store answers reads).
//!
//! Hand-rolled on purpose: a dozen counters and one histogram do not need a metrics
//! framework, and the hooks in the protocol code stay one-line calls of this module
//! (`metrics::accepted(Path::Smtp)` ...). Counters count from the start of the process.
//!
//! Semantics (documented in README "Operations"):
//! - `xmta_messages_accepted_total{path}`: messages taken responsibility for, by where
//!   they came in: `s2s` (per stored mail stanza), `smtp`, `lmtp`, `local` (`xmta send`).
//! - `xmta_messages_delivered_total{path}`: recipients delivered, by where they went:
//!   `local` (stored in a mailbox here), `s2s` (the remote server's receipt said stored).
//! - `xmta_messages_bounced_total{path}` / `xmta_messages_deferred_total{path}`: recipients
//!   failed permanently / deferred for a retry, per delivery attempt.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::store::Store;

/// Where a message came from or went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    S2s = 0,
    Smtp = 1,
    Lmtp = 2,
    Local = 3,
}

const PATHS: [&str; 4] = ["s2s", "smtp", "lmtp", "local"];

/// Dialback roles: `inbound` = we verified a peer's key (receiving role), `outbound` = a
/// peer answered our db:result (originating role).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Inbound = 0,
    Outbound = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Valid = 0,
    Invalid = 1,
    Error = 2,
}

const ROLES: [&str; 2] = ["inbound", "outbound"];
const OUTCOMES: [&str; 3] = ["valid", "invalid", "error"];

/// Upper bounds (seconds) of the store flush histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

struct Metrics {
    accepted: [AtomicU64; 4],
    delivered: [AtomicU64; 4],
    bounced: [AtomicU64; 4],
    deferred: [AtomicU64; 4],
    conn_open: [AtomicU64; 2],
    conn_total: [AtomicU64; 2],
    dialback: [[AtomicU64; 3]; 2],
    flush_buckets: [AtomicU64; BUCKETS.len()],
    flush_count: AtomicU64,
    flush_micros: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const Z: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const Z3: [AtomicU64; 3] = [Z, Z, Z];

static M: Metrics = Metrics {
    accepted: [Z; 4],
    delivered: [Z; 4],
    bounced: [Z; 4],
    deferred: [Z; 4],
    conn_open: [Z; 2],
    conn_total: [Z; 2],
    dialback: [Z3, Z3],
    flush_buckets: [Z; BUCKETS.len()],
    flush_count: Z,
    flush_micros: Z,
};

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// One message accepted (durably) on `path`.
pub fn accepted(path: Path) {
    add(&M.accepted[path as usize], 1);
}

/// `n` recipients delivered on `path`.
pub fn delivered(path: Path, n: usize) {
    add(&M.delivered[path as usize], n);
}

pub fn bounced(path: Path, n: usize) {
    add(&M.bounced[path as usize], n);
}

pub fn deferred(path: Path, n: usize) {
    add(&M.deferred[path as usize], n);
}

/// The outcome of one recorded delivery attempt over s2s.
pub fn s2s_attempt(delivered_n: usize, bounced_n: usize, deferred_n: usize) {
    delivered(Path::S2s, delivered_n);
    bounced(Path::S2s, bounced_n);
    deferred(Path::S2s, deferred_n);
}

/// A local recipient's store outcome: counted as delivered locally when stored.
pub fn delivered_if_stored(o: &crate::store::RcptOutcome) {
    if matches!(o, crate::store::RcptOutcome::Stored { .. }) {
        delivered(Path::Local, 1);
    }
}

/// A message accepted by the SMTP (MX role) or LMTP listener.
pub fn accepted_smtp(lmtp: bool) {
    accepted(if lmtp { Path::Lmtp } else { Path::Smtp });
}

/// A mail stanza received over s2s and stored. A retransmission the store recognised as a
/// duplicate for every recipient is not counted again.
pub fn s2s_stored(stored: usize) {
    if stored > 0 {
        accepted(Path::S2s);
    }
    delivered(Path::Local, stored);
}

/// Counts (delivered, deferred) among (is_delivered, is_deferred) pairs.
pub fn count_attempts(it: impl Iterator<Item = (bool, bool)>) -> (usize, usize) {
    it.fold((0, 0), |(d, f), (a, b)| {
        (d + usize::from(a), f + usize::from(b))
    })
}

/// Our dialback request failed: refused (`type='invalid'`) or no answer/error.
pub fn dialback_failed(reason: &str) {
    let o = if reason.contains("invalid") {
        Outcome::Invalid
    } else {
        Outcome::Error
    };
    dialback(Role::Outbound, o);
}

pub fn dialback(role: Role, outcome: Outcome) {
    add(&M.dialback[role as usize][outcome as usize], 1);
}

/// Counts an open s2s connection until dropped.
pub struct ConnGuard(usize);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        M.conn_open[self.0].fetch_sub(1, Ordering::Relaxed);
    }
}

fn conn(dir: usize) -> ConnGuard {
    add(&M.conn_open[dir], 1);
    add(&M.conn_total[dir], 1);
    ConnGuard(dir)
}

/// An inbound s2s connection: hold the guard for its lifetime.
pub fn inbound_conn() -> ConnGuard {
    conn(0)
}

/// Runs `f` (an outbound connection's reader task) counted as an open outbound connection.
pub async fn outbound_conn<F: Future>(f: F) -> F::Output {
    let _g = conn(1);
    f.await
}

/// Times one store commit (the durable flush).
pub fn time_store_flush<T>(f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let r = f();
    observe_flush(t0.elapsed());
    r
}

fn observe_flush(d: Duration) {
    let s = d.as_secs_f64();
    for (i, b) in BUCKETS.iter().enumerate() {
        if s <= *b {
            add(&M.flush_buckets[i], 1);
        }
    }
    add(&M.flush_count, 1);
    M.flush_micros
        .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The queue's state at scrape time: (recipients pending, age of the oldest item in seconds).
fn queue_state(store: &Store) -> Option<(u64, u64, i64)> {
    let items = store.queue().ok()?;
    let now = crate::now();
    let pending: u64 = items
        .iter()
        .map(|i| {
            i.recipients
                .iter()
                .filter(|r| matches!(r.status, crate::store::RcptStatus::Pending))
                .count() as u64
        })
        .sum();
    let oldest = items
        .iter()
        .map(|i| (now - i.created).max(0))
        .max()
        .unwrap_or(0);
    Some((items.len() as u64, pending, oldest))
}

/// The Prometheus text exposition (format 0.0.4) of every metric.
pub fn render(store: Option<&Store>) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let families: [(&str, &str, &[AtomicU64; 4]); 4] = [
        (
            "xmta_messages_accepted_total",
            "Messages accepted (durably stored or queued), by the path they came in on.",
            &M.accepted,
        ),
        (
            "xmta_messages_delivered_total",
            "Recipients delivered, by the path they left on (local = a mailbox here).",
            &M.delivered,
        ),
        (
            "xmta_messages_bounced_total",
            "Recipients failed permanently (a DSN is generated), by delivery path.",
            &M.bounced,
        ),
        (
            "xmta_messages_deferred_total",
            "Recipients deferred for a retry, per attempt, by delivery path.",
            &M.deferred,
        ),
    ];
    for (name, help, values) in families {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, p) in PATHS.iter().enumerate() {
            let _ = writeln!(o, "{name}{{path=\"{p}\"}} {}", get(&values[i]));
        }
    }
    if let Some((items, pending, oldest)) = store.and_then(queue_state) {
        let _ = writeln!(
            o,
            "# HELP xmta_queue_messages Messages in the outbound queue.\n# TYPE xmta_queue_messages gauge\nxmta_queue_messages {items}"
        );
        let _ = writeln!(
            o,
            "# HELP xmta_queue_recipients Recipients pending in the outbound queue.\n# TYPE xmta_queue_recipients gauge\nxmta_queue_recipients {pending}"
        );
        let _ = writeln!(
            o,
            "# HELP xmta_queue_oldest_age_seconds Age of the oldest queued message (0 when empty).\n# TYPE xmta_queue_oldest_age_seconds gauge\nxmta_queue_oldest_age_seconds {oldest}"
        );
    }
    let _ = writeln!(
        o,
        "# HELP xmta_s2s_connections Open s2s connections.\n# TYPE xmta_s2s_connections gauge"
    );
    for (i, d) in ROLES.iter().enumerate() {
        let _ = writeln!(
            o,
            "xmta_s2s_connections{{direction=\"{d}\"}} {}",
            get(&M.conn_open[i])
        );
    }
    let _ = writeln!(
        o,
        "# HELP xmta_s2s_connections_total s2s connections opened.\n# TYPE xmta_s2s_connections_total counter"
    );
    for (i, d) in ROLES.iter().enumerate() {
        let _ = writeln!(
            o,
            "xmta_s2s_connections_total{{direction=\"{d}\"}} {}",
            get(&M.conn_total[i])
        );
    }
    let _ = writeln!(
        o,
        "# HELP xmta_dialback_total Dialback outcomes (inbound: keys we verified; outbound: answers to our requests).\n# TYPE xmta_dialback_total counter"
    );
    for (r, role) in ROLES.iter().enumerate() {
        for (k, out) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                o,
                "xmta_dialback_total{{role=\"{role}\",result=\"{out}\"}} {}",
                get(&M.dialback[r][k])
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP xmta_store_flush_seconds Latency of store commits (the durable sync).\n# TYPE xmta_store_flush_seconds histogram"
    );
    for (i, b) in BUCKETS.iter().enumerate() {
        let _ = writeln!(
            o,
            "xmta_store_flush_seconds_bucket{{le=\"{b}\"}} {}",
            get(&M.flush_buckets[i])
        );
    }
    let count = get(&M.flush_count);
    let _ = writeln!(o, "xmta_store_flush_seconds_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(
        o,
        "xmta_store_flush_seconds_sum {}",
        get(&M.flush_micros) as f64 / 1e6
    );
    let _ = writeln!(o, "xmta_store_flush_seconds_count {count}");
    o
}

/// Largest request head read.
const MAX_HEAD: usize = 8192;

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped, at most
/// `max_connections` at once.
pub async fn serve(listener: TcpListener, store: Store, max_connections: usize) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics connection limit reached; closing");
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let r = tokio::time::timeout(Duration::from_secs(10), handle(sock, &store)).await;
            if let Ok(Err(e)) = r {
                debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

async fn handle(mut sock: TcpStream, store: &Store) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HEAD {
            return respond(
                &mut sock,
                "431 Request Header Fields Too Large",
                "too large\n",
            )
            .await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(&mut sock, "405 Method Not Allowed", "GET only\n").await;
    }
    match path {
        "/metrics" => {
            let store = store.clone();
            let body = tokio::task::spawn_blocking(move || render(Some(&store)))
                .await
                .unwrap_or_default();
            respond(&mut sock, "200 OK", &body).await
        }
        "/healthz" => match store.users() {
            Ok(_) => respond(&mut sock, "200 OK", "ok\n").await,
            Err(e) => {
                respond(
                    &mut sock,
                    "503 Service Unavailable",
                    &format!("store: {e}\n"),
                )
                .await
            }
        },
        _ => respond(&mut sock, "404 Not Found", "try /metrics or /healthz\n").await,
    }
}

async fn respond(sock: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let ctype = if body.starts_with("# HELP") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(msg.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn render_has_every_family() {
        super::accepted(super::Path::Smtp);
        super::time_store_flush(|| ());
        let t = super::render(None);
        assert!(t.contains("xmta_messages_accepted_total{path=\"smtp\"} "));
        assert!(t.contains("xmta_store_flush_seconds_count "));
        assert!(t.contains("xmta_dialback_total{role=\"inbound\",result=\"valid\"} 0"));
    }
}
