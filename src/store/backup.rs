//! Consistent backups: a copy of every table, read from ONE redb read transaction, written
//! into a new redb file. The read transaction is a snapshot, so the copy is exactly the store
//! as of one commit even while mail keeps arriving (the writer is never blocked), and the
//! copy is itself a store file that `xmta restore` puts in place.
//!
//! Only read transactions touch the live database here; the new file is private until it is
//! complete, synced and renamed to its final name.

use std::path::{Path, PathBuf};
use std::sync::PoisonError;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
};

use super::tables;
use super::{Store, StoreError};

/// What a backup holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupStats {
    pub users: u64,
    pub mailboxes: u64,
    pub messages: u64,
    pub queue_items: u64,
    /// Bytes of message bodies.
    pub body_bytes: u64,
}

impl Store {
    /// Writes a consistent snapshot of the whole store to `dest` (a new redb file; an
    /// existing `dest` is replaced only once the new copy is complete and synced).
    ///
    /// Blocking: call it from `spawn_blocking` in async code.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupStats, StoreError> {
        let slot = self
            .inner
            .shared
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let db = slot.as_ref().ok_or_else(|| {
            StoreError::Io("the store could not be reopened after an error".into())
        })?;
        let txn = db.begin_read()?;
        // The snapshot is taken: the slot's lock (which only a reopen after an I/O error
        // waits for) is not held while copying.
        drop(slot);
        let partial = partial_path(dest);
        let _ = std::fs::remove_file(&partial);
        let result = write_copy(&txn, &partial);
        drop(txn);
        match result {
            Ok(stats) => {
                sync_file(&partial)?;
                std::fs::rename(&partial, dest)
                    .map_err(|e| StoreError::Io(format!("renaming to {}: {e}", dest.display())))?;
                super::sync_parent_dir(dest)?;
                Ok(stats)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                Err(e)
            }
        }
    }
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

fn sync_file(p: &Path) -> Result<(), StoreError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::Io(format!("syncing {}: {e}", p.display())))
}

fn write_copy(src: &ReadTransaction, dest: &Path) -> Result<BackupStats, StoreError> {
    let out = Database::builder().create(dest)?;
    let mut stats = BackupStats {
        users: copy(src, &out, tables::USERS, |_, _| {})?,
        mailboxes: copy(src, &out, tables::MAILBOXES, |_, _| {})?,
        messages: copy(src, &out, tables::MESSAGES, |_, _| {})?,
        ..Default::default()
    };
    let mut bytes = 0u64;
    copy(src, &out, tables::BODIES, |_, v| bytes += v.len() as u64)?;
    stats.body_bytes = bytes;
    copy(src, &out, tables::BODY_REFS, |_, _| {})?;
    stats.queue_items = copy(src, &out, tables::QUEUE, |_, _| {})?;
    copy(src, &out, tables::DEDUPE, |_, _| {})?;
    copy(src, &out, tables::SECRETS, |_, _| {})?;
    copy(src, &out, tables::COUNTERS, |_, _| {})?;
    // Absent from stores not yet written by a version that has it.
    if src.open_table(tables::KNOWN_DOMAINS).is_ok() {
        copy(src, &out, tables::KNOWN_DOMAINS, |_, _| {})?;
    }
    // The last commit makes everything before it durable.
    let mut txn = out.begin_write()?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    txn.commit()?;
    Ok(stats)
}

/// Copies one table in its own write transaction of the new file; returns the row count.
fn copy<K, V>(
    src: &ReadTransaction,
    out: &Database,
    def: TableDefinition<K, V>,
    mut each: impl FnMut(&K::SelfType<'_>, &V::SelfType<'_>),
) -> Result<u64, StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let from = src.open_table(def)?;
    let mut txn = out.begin_write()?;
    txn.set_durability(Durability::None)
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    let mut n = 0u64;
    {
        let mut to = txn.open_table(def)?;
        for entry in from.iter()? {
            let (k, v) = entry?;
            let (k, v) = (k.value(), v.value());
            each(&k, &v);
            to.insert(&k, &v)?;
            n += 1;
        }
    }
    txn.commit()?;
    Ok(n)
}
