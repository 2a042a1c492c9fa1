//! Operating xmta: the commands an administrator runs around `serve` (`dns-records`,
//! `check`, `import`, `backup`, `restore`), kept apart from the protocol code.
//!
//! Commands that change the store work the same way as the rest of the command line: through
//! the running server's admin socket when one answers (the server owns the store file), else
//! on the store file directly ([`Conn`]).

pub mod backup;
pub mod check;
pub mod dns_records;
pub mod import;

use std::path::PathBuf;

use crate::admin::{Request, Response};
use crate::config::Config;
use crate::store::{Store, StoreError};

/// Where requests go: the running server, or the store opened by this process.
pub enum Conn {
    Server(PathBuf),
    Direct(Store),
}

impl Conn {
    /// The running server if its admin socket answers, else the store file (created when
    /// missing).
    pub async fn open(cfg: &Config) -> Result<Conn, String> {
        let sock = cfg.admin_socket();
        if crate::admin::request(&sock, &Request::Ping)
            .await?
            .is_some()
        {
            return Ok(Conn::Server(sock));
        }
        std::fs::create_dir_all(&cfg.server.data_dir)
            .map_err(|e| format!("data dir {}: {e}", cfg.server.data_dir.display()))?;
        let path = cfg.store_path();
        match Store::open(&path) {
            Ok(s) => Ok(Conn::Direct(s)),
            Err(StoreError::Locked(_)) => Err(format!(
                "{} is in use by a running xmta, but its admin socket {} does not answer",
                path.display(),
                sock.display()
            )),
            Err(e) => Err(format!("store {}: {e}", path.display())),
        }
    }

    pub fn is_server(&self) -> bool {
        matches!(self, Conn::Server(_))
    }

    /// Runs one request; a refused request becomes `Err` with the server's reason.
    pub async fn call(&self, cfg: &Config, req: Request) -> Result<Response, String> {
        let resp = match self {
            Conn::Server(sock) => crate::admin::request(sock, &req)
                .await?
                .ok_or_else(|| "the server stopped answering on its admin socket".to_string())?,
            Conn::Direct(store) => crate::admin::execute(cfg, store, None, req).await,
        };
        if resp.ok {
            Ok(resp)
        } else {
            Err(resp.error.unwrap_or_else(|| "failed".into()))
        }
    }
}

/// The config file as plain TOML, for keys of features configured in their own modules
/// (`[registry]`, `s2s.tls_listen`): this module only needs to read a few of them, and
/// reading them untyped keeps it independent of those modules' config structs.
fn raw_config(cfg: &Config) -> Option<toml::Table> {
    let text = std::fs::read_to_string(&cfg.source).ok()?;
    toml::from_str(&text).ok()
}

/// The `[registry]` section, if the config has one.
pub fn registry_section(cfg: &Config) -> Option<toml::Table> {
    raw_config(cfg)?.get("registry")?.as_table().cloned()
}

/// `s2s.tls_listen`: direct TLS (XEP-0368) listeners, when configured.
pub fn tls_listen(cfg: &Config) -> Vec<std::net::SocketAddr> {
    raw_config(cfg)
        .and_then(|t| t.get("s2s")?.get("tls_listen")?.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect()
}

/// `registry.zone`, when the config has one.
pub fn registry_zone(cfg: &Config) -> Option<String> {
    registry_section(cfg)?
        .get("zone")?
        .as_str()
        .map(|z| z.trim_matches('.').to_string())
}
