//! `xmta serve`: opens the store, starts the s2s listener, the queue runner, the receiving
//! side and the admin socket, and shuts them down on SIGTERM/SIGINT.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::config::Config;
use crate::delivery::Delivery;
use crate::s2s::S2s;
use crate::s2s::dialback::DialbackSecret;
use crate::store::{Op, OpResult, Store};

/// What every part of a running server shares.
pub struct Core {
    pub cfg: Arc<Config>,
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
    #[error("imap: {0}")]
    Imap(String),
    #[error("admin socket {0}: {1}")]
    Admin(String, String),
}

/// The dialback secret: generated on first start and kept, so keys survive restarts.
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

pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    let cfg = Arc::new(cfg);
    let dir = &cfg.server.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| ServeError::DataDir(dir.display().to_string(), e.to_string()))?;
    let path = cfg.store_path();
    let store = Store::open(&path)
        .map_err(|e| ServeError::Store(path.display().to_string(), e.to_string()))?;
    let secret = dialback_secret(&store)
        .await
        .map_err(|e| ServeError::Store(path.display().to_string(), e))?;
    let (tx, rx) = mpsc::channel(1024);
    let s2s = S2s::new(cfg.clone(), secret, tx).map_err(|e| ServeError::S2s(e.to_string()))?;
    let delivery = Delivery::new(cfg.clone(), store.clone(), s2s.clone());
    let core = Arc::new(Core {
        cfg: cfg.clone(),
        store,
        s2s: s2s.clone(),
        delivery: delivery.clone(),
    });

    let mut listeners = Vec::new();
    for addr in &cfg.s2s.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?;
        listeners.push(l);
    }
    let mut smtp_listeners = Vec::new();
    for addr in &cfg.smtp.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?;
        smtp_listeners.push((l, crate::smtp::Mode::Smtp));
    }
    if let Some(addr) = &cfg.smtp.lmtp {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?;
        smtp_listeners.push((l, crate::smtp::Mode::Lmtp));
    }
    let mut imap_listeners = Vec::new();
    for (addr, tls) in cfg
        .imap
        .listen
        .iter()
        .map(|a| (a, false))
        .chain(cfg.imap.tls_listen.iter().map(|a| (a, true)))
    {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Listen(addr.to_string(), e.to_string()))?;
        imap_listeners.push((l, tls));
    }
    let admin = crate::admin::bind(&cfg.admin_socket())
        .map_err(|e| ServeError::Admin(cfg.admin_socket().display().to_string(), e.to_string()))?;

    for l in listeners {
        tokio::spawn(s2s.clone().serve(l));
    }
    let smtp_slots = Arc::new(tokio::sync::Semaphore::new(cfg.smtp.max_connections));
    for (l, mode) in smtp_listeners {
        tokio::spawn(crate::smtp::serve(
            core.clone(),
            l,
            mode,
            smtp_slots.clone(),
        ));
    }
    if !imap_listeners.is_empty() {
        let imap =
            crate::imap::Imap::new(core.clone()).map_err(|e| ServeError::Imap(e.to_string()))?;
        for (l, tls) in imap_listeners {
            tokio::spawn(crate::imap::serve(imap.clone(), l, tls));
        }
    }
    tokio::spawn(crate::mta::receive::run(core.clone(), rx));
    if let Some(cc) = cfg.component.clone() {
        tokio::spawn(s2s.clone().run_component(cc));
    }
    tokio::spawn(delivery.clone().run());
    tokio::spawn(crate::admin::serve(core.clone(), admin));
    info!(
        domains = ?cfg.server.domains,
        s2s = ?cfg.s2s.listen,
        smtp = ?cfg.smtp.listen,
        lmtp = ?cfg.smtp.lmtp,
        imap = ?cfg.imap.listen,
        imaps = ?cfg.imap.tls_listen,
        admin = %cfg.admin_socket().display(),
        "xmta ready"
    );

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM");
            return Ok(());
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
    s2s.close_all().await;
    let _ = std::fs::remove_file(cfg.admin_socket());
    // Every acknowledged message is already committed; nothing else to flush.
    Ok(())
}
