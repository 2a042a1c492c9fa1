//! Table layout and record encodings of the store.
//!
//! Records are serde_json behind keys that redb orders, so that a user's folders and a folder's
//! messages are contiguous ranges.

use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{QueueItem, QueueRcpt, StoreError};

/// address -> UserRec
pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// (address, folder) -> MailboxRec
pub(super) const MAILBOXES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("mailboxes");
/// (mailbox id, uid) -> MessageRec
pub(super) const MESSAGES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("messages");
/// (body id, chunk index) -> up to BODY_CHUNK bytes of the message (at least one chunk, empty
/// for an empty message)
pub(super) const BODIES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("bodies");
/// redb gives a value larger than a page a run of pages rounded up to a power of two, so a
/// body stored whole could take twice its size on disk. Chunks just under 64 KiB fill their
/// pages; only a body's last chunk wastes space.
pub(super) const BODY_CHUNK: usize = (64 << 10) - 256;
/// body id -> number of messages and queue items referring to it. Kept apart from the bytes so
/// that sharing a body does not rewrite it.
pub(super) const BODY_REFS: TableDefinition<u64, u64> = TableDefinition::new("body_refs");
/// queue id -> QueueRec
pub(super) const QUEUE: TableDefinition<&str, &[u8]> = TableDefinition::new("queue");
/// (sending domain, mail id, recipient) -> unix time of the delivery
pub(super) const DEDUPE: TableDefinition<(&str, &str, &str), i64> = TableDefinition::new("dedupe");
/// name -> value
pub(super) const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// name -> value; see the keys below
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Domains known to send their mail over XMPP (downgrade protection, see
/// `crate::known_domains`): domain -> (evidence code, unix seconds last seen). Added after
/// schema 1 was fixed: created by the first write of a newer version, absent before.
pub(super) const KNOWN_DOMAINS: TableDefinition<&str, (u8, i64)> =
    TableDefinition::new("known_domains");

pub(super) const SCHEMA_KEY: &str = "schema_version";
pub(super) const SCHEMA_VERSION: u64 = 1;
/// The next body id.
pub(super) const NEXT_BODY: &str = "next_body_id";
/// The next mailbox id (never reused, so a folder created again is a new mailbox).
pub(super) const NEXT_MAILBOX: &str = "next_mailbox_id";
/// The last UIDVALIDITY given out (they only grow, across all folders).
pub(super) const LAST_UIDVALIDITY: &str = "last_uidvalidity";

/// redb's page cache limit. It fills only as pages are used.
const CACHE_BYTES: usize = 256 << 20;

/// The durability of every commit. Never lower it: acknowledgements rely on it.
const DURABILITY: Durability = Durability::Immediate;

/// Sets up a write transaction the way every commit of the store must be made.
///
/// Quick repair saves redb's allocator state with each commit, so that opening after a crash
/// does not walk (read) the whole file, which for a big mail store takes minutes; it implies
/// two-phase commit: data and commit slot are synced before the slot is made primary. That
/// also covers the caveat of the default one-phase commit, whose checksums are not meant to
/// hold up against attacker-chosen data (mail bodies are). Group commit amortises the extra
/// sync, not all of it: with one fsync per commit on both hops the s=10 relay was 12-19 %
/// faster (BENCHMARKS.md, the ceiling comparison).
pub(super) fn configure(txn: &mut WriteTransaction) -> Result<(), StoreError> {
    txn.set_durability(DURABILITY)
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    txn.set_two_phase_commit(true);
    txn.set_quick_repair(true);
    Ok(())
}

pub(super) fn builder() -> Builder {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    builder.set_repair_callback(|session| {
        tracing::warn!(
            progress = session.progress(),
            "repairing the store after an unclean shutdown"
        );
    });
    builder
}

/// Creates the tables on first open; checks the schema version on later ones.
pub(super) fn init_schema(db: &Database) -> Result<(), StoreError> {
    {
        let txn = db.begin_read()?;
        match txn.open_table(COUNTERS) {
            Ok(counters) => {
                return match counters.get(SCHEMA_KEY)?.map(|v| v.value()) {
                    Some(SCHEMA_VERSION) => Ok(()),
                    Some(other) => Err(StoreError::Corrupt(format!(
                        "unknown store schema version {other}"
                    ))),
                    None => Err(StoreError::Corrupt(
                        "the store has no schema version".into(),
                    )),
                };
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut txn = db.begin_write()?;
    configure(&mut txn)?;
    {
        txn.open_table(USERS)?;
        txn.open_table(MAILBOXES)?;
        txn.open_table(MESSAGES)?;
        txn.open_table(BODIES)?;
        txn.open_table(BODY_REFS)?;
        txn.open_table(QUEUE)?;
        txn.open_table(DEDUPE)?;
        txn.open_table(SECRETS)?;
        txn.open_table(KNOWN_DOMAINS)?;
        let mut counters = txn.open_table(COUNTERS)?;
        counters.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
    }
    txn.commit()?;
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct UserRec {
    pub password_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MailboxRec {
    pub id: u64,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub exists: u32,
    /// The highest modification sequence given to a change in the folder (RFC 7162); records
    /// written before it existed read as 0.
    #[serde(default)]
    pub highest_modseq: u64,
    /// IMAP subscription; the default folders (and records written before it existed) are
    /// subscribed.
    #[serde(default = "subscribed_default")]
    pub subscribed: bool,
    /// IMAP \Recent: messages with this uid or higher have not been claimed by a session
    /// yet (see `Op::ClaimRecent`); records written before it existed read as 0 (all recent).
    #[serde(default)]
    pub first_recent: u32,
}

fn subscribed_default() -> bool {
    true
}

impl MailboxRec {
    pub fn info(&self) -> super::MailboxInfo {
        super::MailboxInfo {
            uidvalidity: self.uidvalidity,
            uidnext: self.uidnext,
            exists: self.exists,
            highest_modseq: self.highest_modseq,
            subscribed: self.subscribed,
            first_recent: self.first_recent,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MessageRec {
    pub size: u64,
    pub internal_date: i64,
    pub flags: Vec<String>,
    pub body: u64,
    /// The folder's modification sequence of the last change to this message (0 for records
    /// written before it existed).
    #[serde(default)]
    pub modseq: u64,
}

/// A queue item without its id (the key).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct QueueRec {
    /// The local domain the item is sent from.
    #[serde(default)]
    pub origin: String,
    pub sender: String,
    pub recipients: Vec<QueueRcpt>,
    pub created: i64,
    pub next_attempt: i64,
    pub expires: i64,
    pub attempts: u32,
    pub size: u64,
    pub body: u64,
}

impl QueueRec {
    pub fn into_item(self, id: &str) -> QueueItem {
        QueueItem {
            id: id.to_owned(),
            origin: self.origin,
            sender: self.sender,
            recipients: self.recipients,
            created: self.created,
            next_attempt: self.next_attempt,
            expires: self.expires,
            attempts: self.attempts,
            size: self.size,
        }
    }
}

pub(super) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("bad {what} record: {e}")))
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Internal(format!("encoding a record: {e}")))
}

pub(super) fn get_mailbox(
    mailboxes: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    address: &str,
    folder: &str,
) -> Result<Option<MailboxRec>, StoreError> {
    match mailboxes.get((address, folder))? {
        Some(rec) => decode("mailbox", rec.value()).map(Some),
        None => Ok(None),
    }
}

/// The user's folders, sorted by name.
pub(super) fn folders_of(
    mailboxes: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    address: &str,
) -> Result<Vec<(String, MailboxRec)>, StoreError> {
    let mut out = Vec::new();
    // ("addr", "") sorts first among the user's keys; the range ends at the first other address.
    for entry in mailboxes.range((address, "")..)? {
        let (key, rec) = entry?;
        let (owner, folder) = key.value();
        if owner != address {
            break;
        }
        out.push((folder.to_owned(), decode("mailbox", rec.value())?));
    }
    Ok(out)
}
