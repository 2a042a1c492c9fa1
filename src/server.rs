//! `xmta serve`: opens the store, starts the s2s listener, the queue runner, the receiving
//! side and the admin socket, and shuts them down on SIGTERM/SIGINT.
//!
//! Shutdown (SIGTERM or SIGINT): the listeners stop accepting (s2s, SMTP/LMTP, admin,
//! metrics), SMTP/LMTP sessions and admin requests in flight get up to
//! `shutdown.grace_secs` to finish, the s2s streams are closed, and a last (empty) store
//! commit waits for every write queued before it; then the process exits 0. Mail that was
//! not acknowledged yet is still the sender's (it retries), so nothing acknowledged is lost.
//!
//! Reload (SIGHUP): the config file is read and validated again, and put in force without
//! dropping a connection or touching the store. Design:
//! - One shared handle, [`crate::live::Live`] (an `arc_swap::ArcSwap<Config>`), is what
//!   every part holds instead of a fixed config (`Core::cfg`, `S2s`, `Delivery`, the
//!   registry, the resolvers). A reload swaps the whole `Config` at once; readers take a
//!   snapshot (`get()`, one atomic reference count, never a lock) where a value is used.
//! - Where the snapshot is taken decides when a change counts: per inbound s2s connection
//!   (stanza size, idle and handshake timeouts, `[s2s] auth`), per stanza (`[s2s]
//!   allow`/`deny`, so a newly denied peer's open streams end at their next stanza with
//!   policy-violation and its mail stays queued at the sender; the registry policy and
//!   overrides; the per-peer rate limits, whose buckets keep their tokens), per outbound
//!   stream (`[s2s.routes]`: a pooled stream opened under another route is not reused, the
//!   next delivery dials the new next hop and the old stream closes when idle), per SMTP
//!   session and again at each MAIL (size and recipient limits, `trusted_networks`,
//!   `downgrade`, `max_errors`, line length, timeouts), per IMAP connection, per delivery
//!   attempt (retry timers, receipt timeout, expiry of new mail, smarthost and its TLS
//!   settings, `[delivery] local`), per accept (`max_connections` of s2s, SMTP and IMAP,
//!   `[s2s] max_connections_per_ip`: a lower limit refuses new connections, cuts none).
//! - Keys that a running process cannot change keep their running values, so the handle
//!   always holds what is really in force: [`crate::live::restart_only`] copies them from
//!   the running config into the new one and each differing key is logged by name as
//!   "takes effect only after a restart". They are the listeners and addresses
//!   (`s2s.listen`, `s2s.tls_listen`, `smtp.listen`/`lmtp`/`submission`/`submissions`,
//!   `imap.listen`/`tls_listen`, `postfix.socketmap`, `metrics.listen`), the store and names
//!   (`server.domains`, `server.data_dir`, `server.admin_socket`, `smtp.hostname`,
//!   `component`), TLS settings (`s2s.tls`, the certificate paths `s2s.cert`/`key`/`ca`,
//!   `smtp.cert`/`key`, `imap.cert`/`key`), what resolvers and limiters are built from
//!   (`dns.nameservers`, `registry.zone`/`nameservers`/`min_ttl_secs`/`max_ttl_secs`/
//!   `timeout_secs`, `smtp.verify`/`verify_timeout_secs`, `smtp.auth_max_failures`/
//!   `auth_failure_window_secs`, `imap.max_login_failures`/`login_failure_window_secs`),
//!   pools sized at start (`delivery.concurrency`, `postfix.max_connections`,
//!   `metrics.max_connections`), the SRS key made at start (`gateway.srs`,
//!   `gateway.srs_secret`) and `log.format`.
//! - The mixed config (new live keys, running restart-only ones) is validated again; a file
//!   that does not load or a mix that does not hold (e.g. `registry.policy = "require"`
//!   with a `registry.zone` the running process does not have) changes nothing and is
//!   logged as an error. `log.level` changes the log filter at once.
//! - The certificate files in use are read again (same paths): a renewed certificate is
//!   presented from the next TLS handshake on (s2s both ways, SMTP, IMAP); a file that does
//!   not load, or a key that does not match, leaves the certificate in use.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::delivery::Delivery;
use crate::s2s::S2s;
use crate::s2s::dialback::DialbackSecret;
use crate::store::{Op, OpResult, Store};

/// What every part of a running server shares.
pub struct Core {
    /// The configuration in force; SIGHUP swaps it (see the module doc).
    pub cfg: crate::live::Live,
    pub store: Store,
    pub s2s: Arc<S2s>,
    pub delivery: Arc<Delivery>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data dir {0}: {1}")]
    DataDir(String, String),
    #[error("store {0}: {1}")]
    Store(String, String),
    #[error("s2s set-up: {0}")]
    S2s(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, String),
    #[error("smtp set-up: {0}")]
    Smtp(String),
    #[error("imap: {0}")]
    Imap(String),
    #[error("admin socket {0}: {1}")]
    Admin(String, String),
    #[error("cannot watch signals: {0}")]
    Signal(String),
}

/// The dialback secret: generated on first start and kept, so keys survive restarts.
/// The backlog of every listener. The standard library's 128 overflows when a burst of
/// connections (a queue run of a busy Postfix, `smtp-source -s 200`) arrives faster than the
/// accept loop takes them: the kernel then drops SYNs and each of those clients waits a
/// whole second to retry (measured: a 0.8 s stall of a 200-session relay per overflow).
/// The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 1024;

fn listen(addr: &std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(*addr)?;
    socket.listen(LISTEN_BACKLOG)
}

pub async fn dialback_secret(store: &Store) -> Result<DialbackSecret, String> {
    if let Some(s) = store.secret("dialback").map_err(|e| e.to_string())? {
        return Ok(DialbackSecret::new(s));
    }
    let fresh: [u8; 32] = rand::random();
    let r = store
        .apply(vec![Op::PutSecret {
            name: "dialback".into(),
            value: fresh.to_vec(),
            only_if_absent: true,
        }])
        .await
        .map_err(|e| e.to_string())?;
    match r.into_iter().next() {
        Some(OpResult::Secret(v)) => Ok(DialbackSecret::new(v)),
        _ => Err("unexpected store answer for the dialback secret".into()),
    }
}

/// What SIGHUP needs: where the config came from and how to change the log filter.
pub struct Reload {
    pub path: std::path::PathBuf,
    pub is_default: bool,
    pub log: crate::cli::LogReload,
}

pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    serve_inner(cfg, None).await
}

/// `serve` with SIGHUP reloading from `path`.
pub async fn serve_with(
    cfg: Config,
    path: std::path::PathBuf,
    is_default: bool,
    log: crate::cli::LogReload,
) -> Result<(), ServeError> {
    serve_inner(
        cfg,
        Some(Reload {
            path,
            is_default,
            log,
        }),
    )
    .await
}

async fn serve_inner(cfg: Config, reload: Option<Reload>) -> Result<(), ServeError> {
    // Watch the signals before anything is bound: a SIGTERM/SIGINT/SIGHUP that arrives
    // while starting (e.g. `systemctl stop` right after start) is then handled (a graceful
    // stop once started; SIGHUP a reload) rather than killing the process by the default
    // action.
    use tokio::signal::unix::{SignalKind, signal};
    let watch = |kind: SignalKind| signal(kind).map_err(|e| ServeError::Signal(e.to_string()));
    let mut term = watch(SignalKind::terminate())?;
    let mut int = watch(SignalKind::interrupt())?;
    let mut hup = watch(SignalKind::hangup())?;
    let live = crate::live::Live::new(cfg);
    let cfg = live.get();
    let dir = &cfg.server.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| ServeError::DataDir(dir.display().to_string(), e.to_string()))?;
    let path = cfg.store_path();
    let store = Store::open(&path)
        .map_err(|e| ServeError::Store(path.display().to_string(), e.to_string()))?;
    let secret = dialback_secret(&store)
        .await
        .map_err(|e| ServeError::Store(path.display().to_string(), e))?;
    if cfg.gateway.srs {
        crate::srs::ensure_key(&store, &cfg.gateway.srs_secret)
            .await
            .map_err(|e| ServeError::Store(path.display().to_string(), e))?;
    }
    match crate::known_domains::start(&store, cfg.smtp.downgrade_memory_days) {
        Ok(n) if n > 0 => info!(domains = n, "domains known to send mail over XMPP loaded"),
        Ok(_) => {}
        Err(e) => return Err(ServeError::Store(path.display().to_string(), e)),
    }
    let (tx, rx) = mpsc::channel(1024);
    let s2s = S2s::new(live.clone(), secret, tx).map_err(|e| ServeError::S2s(e.to_string()))?;
    let delivery = Delivery::new(live.clone(), store.clone(), s2s.clone());
    let core = Arc::new(Core {
        cfg: live.clone(),
        store,
        s2s: s2s.clone(),
        delivery: delivery.clone(),
    });

    let mut listeners = Vec::new();
    for addr in &cfg.s2s.listen {
        let l = listen(addr).map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?;
        listeners.push(l);
    }
    let mut tls_listeners = Vec::new();
    for addr in &cfg.s2s.tls_listen {
        let l = listen(addr).map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?;
        tls_listeners.push(l);
    }
    let mut smtp_listeners = Vec::new();
    for addr in &cfg.smtp.listen {
        let l = listen(addr).map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?;
        smtp_listeners.push((l, (crate::smtp::Mode::Smtp, false)));
    }
    for addr in &cfg.smtp.submission {
        let l = listen(addr).map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?;
        smtp_listeners.push((l, (crate::smtp::Mode::Submission, false)));
    }
    for addr in &cfg.smtp.submissions {
        let l = listen(addr).map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?;
        smtp_listeners.push((l, (crate::smtp::Mode::Submission, true)));
    }
    if let Some(addr) = &cfg.smtp.lmtp {
        let l = listen(addr).map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?;
        smtp_listeners.push((l, (crate::smtp::Mode::Lmtp, false)));
    }
    let socketmap = match &cfg.postfix.socketmap {
        Some(addr) => {
            Some(listen(addr).map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?)
        }
        None => None,
    };
    let metrics_listener = match cfg.metrics.listen {
        Some(addr) => {
            Some(listen(&addr).map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?)
        }
        None => None,
    };
    let mut imap_listeners = Vec::new();
    for (addr, tls) in cfg
        .imap
        .listen
        .iter()
        .map(|a| (a, false))
        .chain(cfg.imap.tls_listen.iter().map(|a| (a, true)))
    {
        let l = listen(addr).map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?;
        imap_listeners.push((l, tls));
    }
    let admin = crate::admin::bind(&cfg.admin_socket())
        .map_err(|e| ServeError::Admin(cfg.admin_socket().display().to_string(), e.to_string()))?;

    // The accept loops, stopped first at shutdown.
    let mut acceptors = Vec::new();
    for l in listeners {
        acceptors.push(tokio::spawn(s2s.clone().serve(l)));
    }
    for l in tls_listeners {
        acceptors.push(tokio::spawn(s2s.clone().serve_direct_tls(l)));
    }
    let smtp_slots = crate::live::Slots::new();
    let smtp_shared = Arc::new(crate::smtp::Shared::new(&cfg).map_err(ServeError::Smtp)?);
    // The certificates SIGHUP re-reads.
    let mut certs: Vec<Arc<crate::s2s::tls::LiveCert>> = Vec::new();
    certs.extend(s2s.tls.cert.clone());
    certs.extend(smtp_shared.cert.clone());
    for (l, mode) in smtp_listeners {
        acceptors.push(tokio::spawn(crate::smtp::serve(
            core.clone(),
            smtp_shared.clone(),
            l,
            mode,
            smtp_slots.clone(),
        )));
    }
    if let Some(l) = metrics_listener {
        acceptors.push(tokio::spawn(crate::metrics::serve(
            l,
            core.store.clone(),
            cfg.metrics.max_connections,
        )));
    }
    if let Some(l) = socketmap {
        acceptors.push(tokio::spawn(crate::postfix::serve(core.clone(), l)));
    }
    if !imap_listeners.is_empty() {
        let imap =
            crate::imap::Imap::new(core.clone()).map_err(|e| ServeError::Imap(e.to_string()))?;
        certs.extend(imap.cert.clone());
        for (l, tls) in imap_listeners {
            acceptors.push(tokio::spawn(crate::imap::serve(imap.clone(), l, tls)));
        }
    }
    tokio::spawn(crate::mta::receive::run(core.clone(), rx));
    if let Some(cc) = cfg.component.clone() {
        tokio::spawn(s2s.clone().run_component(cc));
    }
    tokio::spawn(delivery.clone().run());
    acceptors.push(tokio::spawn(crate::admin::serve(core.clone(), admin)));
    info!(
        domains = ?cfg.server.domains,
        s2s = ?cfg.s2s.listen,
        smtp = ?cfg.smtp.listen,
        submission = ?cfg.smtp.submission,
        lmtp = ?cfg.smtp.lmtp,
        socketmap = ?cfg.postfix.socketmap,
        imap = ?cfg.imap.listen,
        imaps = ?cfg.imap.tls_listen,
        admin = %cfg.admin_socket().display(),
        metrics = ?cfg.metrics.listen,
        "xmta ready"
    );

    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                reload_config(reload.as_ref(), &core);
                reload_certs(&certs);
            }
        }
    }
    shutdown(&core, acceptors, &smtp_slots).await;
    Ok(())
}

/// Stops accepting, lets work in flight finish (bounded by `shutdown.grace_secs`), closes
/// the streams and waits for the store's last commit.
async fn shutdown(
    core: &Core,
    acceptors: Vec<tokio::task::JoinHandle<()>>,
    smtp_slots: &crate::live::Slots,
) {
    let cfg = core.cfg.get();
    for a in &acceptors {
        a.abort();
    }
    for a in acceptors {
        let _ = a.await;
    }
    // A command started now finds no socket and no free store: it fails and says so.
    let _ = std::fs::remove_file(cfg.admin_socket());
    let grace = std::time::Duration::from_secs(cfg.shutdown.grace_secs);
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let smtp = smtp_slots.in_use();
        let admin = crate::admin::in_flight();
        if smtp == 0 && admin == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(
                smtp_sessions = smtp,
                admin_requests = admin,
                "shutdown grace time over; unacknowledged work is left to its senders' retries"
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    core.s2s.close_all().await;
    // The writer answers in order: when this empty commit is done, so is every write
    // queued before it.
    match core.store.apply(Vec::new()).await {
        Ok(_) => info!("store flushed; bye"),
        Err(e) => warn!(error = %e, "last store commit failed"),
    }
}

/// SIGHUP: re-reads the config and puts it in force, except the keys that need a restart
/// (`crate::live::restart_only`), which keep their running values and are named in a warning.
/// A file that does not load, or does not validate together with those kept values, changes
/// nothing.
fn reload_config(reload: Option<&Reload>, core: &Core) {
    let Some(r) = reload else {
        info!("SIGHUP: no config file to reload");
        return;
    };
    let mut new = match Config::load(&r.path, r.is_default) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "SIGHUP: the config does not load; keeping the running one");
            return;
        }
    };
    let running = core.cfg.get();
    let restart = crate::live::restart_only(&running, &mut new);
    if let Err(e) = new.revalidate() {
        error!(error = %e, restart_only = ?restart, "SIGHUP: the config does not hold with the running values of the keys that need a restart; keeping the running one");
        return;
    }
    if new.log.level != running.log.level {
        match (r.log)(&new.log.level) {
            Ok(()) => info!(level = %new.log.level, "SIGHUP: log level changed"),
            Err(e) => error!(error = %e, "SIGHUP: could not change the log level"),
        }
    }
    for key in &restart {
        warn!(
            key,
            "SIGHUP: changed, but takes effect only after a restart"
        );
    }
    let applied = changed_sections(&running, &new);
    crate::known_domains::set_memory_days(new.smtp.downgrade_memory_days);
    core.cfg.set(new);
    info!(applied = ?applied, "SIGHUP: config reloaded");
}

/// SIGHUP: re-reads the certificate files in use (same paths; new paths need a restart).
/// A file that does not load leaves the certificate in use as it is.
fn reload_certs(certs: &[Arc<crate::s2s::tls::LiveCert>]) {
    for c in certs {
        let path = c.cert_path().display();
        match c.reload() {
            Ok(true) => info!(%path, "SIGHUP: certificate reloaded"),
            Ok(false) => debug!(%path, "SIGHUP: certificate unchanged"),
            Err(e) => {
                error!(%path, error = %e, "SIGHUP: certificate not reloaded; the one in use stays")
            }
        }
    }
}

/// The sections whose values differ between `a` and `b` (for the reload's log line).
fn changed_sections(a: &Config, b: &Config) -> Vec<&'static str> {
    macro_rules! differing {
        ($($section:ident),*) => {{
            let mut out = Vec::new();
            $(
                if format!("{:?}", a.$section) != format!("{:?}", b.$section) {
                    out.push(stringify!($section));
                }
            )*
            out
        }};
    }
    differing!(
        server, s2s, dns, delivery, log, smtp, component, registry, postfix, metrics, public,
        shutdown, import, imap, gateway
    )
}
