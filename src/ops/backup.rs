//! `xmta backup FILE` and `xmta restore FILE [--force]`.
//!
//! A backup is a redb file holding a copy of every table of the store, taken from one read
//! transaction (see `store::backup`): while the server runs, the command asks it over the
//! admin socket and the server writes the file, so the copy is the store as of one commit
//! although mail keeps flowing. Without a server the command opens the store itself.
//!
//! Restore puts such a file in place as `<data_dir>/xmta.redb`: it refuses while a server
//! runs, and refuses to replace an existing store unless `--force`. The file is copied to a
//! temporary name in the data dir, opened as a store (which checks its schema), synced and
//! then renamed, so a failed restore leaves the data dir as it was.

use std::path::{Path, PathBuf};

use super::Conn;
use crate::admin::Request;
use crate::config::Config;
use crate::store::{BackupStats, Store, StoreError};

fn describe(s: &BackupStats) -> String {
    format!(
        "{} users, {} folders, {} messages, {} queued, {} bytes of bodies",
        s.users, s.mailboxes, s.messages, s.queue_items, s.body_bytes
    )
}

/// Server side (or direct): writes the snapshot. Blocking work runs off the async threads.
pub async fn backup(store: Store, path: PathBuf) -> Result<String, String> {
    if !path.is_absolute() {
        return Err(format!("{}: give an absolute path", path.display()));
    }
    let p = path.clone();
    let stats = tokio::task::spawn_blocking(move || store.backup_to(&p))
        .await
        .map_err(|e| format!("backup task: {e}"))?
        .map_err(|e| format!("backup to {}: {e}", path.display()))?;
    Ok(format!("backup {}: {}", path.display(), describe(&stats)))
}

/// `xmta backup FILE`.
pub async fn run_backup(cfg: &Config, file: &Path) -> Result<String, String> {
    let path = std::path::absolute(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let conn = Conn::open(cfg).await?;
    let resp = conn.call(cfg, Request::Backup { path }).await?;
    Ok(resp.lines.join("\n"))
}

/// `xmta restore FILE [--force]`.
pub async fn run_restore(cfg: &Config, file: &Path, force: bool) -> Result<String, String> {
    let sock = cfg.admin_socket();
    if crate::admin::request(&sock, &Request::Ping)
        .await?
        .is_some()
    {
        return Err(format!(
            "a server is running (it answers on {}); stop it before restoring",
            sock.display()
        ));
    }
    if !file.is_file() {
        return Err(format!("{} is not a file", file.display()));
    }
    let dir = &cfg.server.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("data dir {}: {e}", dir.display()))?;
    let target = cfg.store_path();
    if target.exists() && !force {
        return Err(format!(
            "{} exists; restore into a fresh data dir, or give --force to replace it",
            target.display()
        ));
    }
    let tmp = dir.join("xmta.redb.restoring");
    let _ = std::fs::remove_file(&tmp);
    std::fs::copy(file, &tmp).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("copying {} to {}: {e}", file.display(), tmp.display())
    })?;
    let summary = match check_store(&tmp) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "{} is not a usable xmta backup: {e}",
                file.display()
            ));
        }
    };
    // Replacing the file of a store another process holds open would be a disaster; the
    // lock test is opening it.
    if target.exists() {
        match Store::open(&target) {
            Err(StoreError::Locked(_)) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(format!("{} is in use by a running xmta", target.display()));
            }
            Ok(s) => drop(s),
            Err(_) => {} // a broken store is what --force is for
        }
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &target).map_err(|e| format!("renaming to {}: {e}", target.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing {}: {e}", dir.display()))?;
    Ok(format!(
        "restored {} into {}: {summary}",
        file.display(),
        target.display()
    ))
}

/// Opens `path` as a store and counts what it holds.
fn check_store(path: &Path) -> Result<String, String> {
    let store = Store::open(path).map_err(|e| e.to_string())?;
    let users = store.users().map_err(|e| e.to_string())?;
    let mut messages = 0usize;
    for u in &users {
        for f in store.folders(u).map_err(|e| e.to_string())? {
            messages += store.messages(u, &f).map_err(|e| e.to_string())?.len();
        }
    }
    let queued = store.queue().map_err(|e| e.to_string())?.len();
    Ok(format!(
        "{} users, {messages} messages, {queued} queued",
        users.len()
    ))
}
