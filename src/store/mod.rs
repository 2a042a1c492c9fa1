//! The store: all of xmta's durable state in one redb file, `<data_dir>/xmta.redb`.
//!
//! It holds message bodies, the users' mailboxes (folders with stable IMAP UIDs and
//! UIDVALIDITY, flags), the outbound queue, the receiver's duplicate memory, users (the caller
//! hashes passwords; the store keeps opaque strings) and server secrets.
//!
//! # Durability contract
//! A change is acknowledged (the future of [`Store::apply`] resolves to `Ok`) only after the
//! redb write transaction holding it committed with `Durability::Immediate`, i.e. after its data
//! and the commit record were synced to stable storage. A power cut after the acknowledgement
//! cannot lose it; that is what lets the receiver tell a remote server "delivered" and the queue
//! forget a mail. Everything one `apply` call changes is one atomic unit.
//!
//! # Group commit
//! One writer thread (redb is synchronous and has one writer at a time) owns all writes. It
//! takes every request queued since its last commit (at most [`MAX_BATCH_REQUESTS`] requests or
//! [`MAX_BATCH_BYTES`] of message bodies), applies them in one write transaction, commits once
//! and then answers each caller, so concurrent deliveries share one sync. If the commit or any
//! storage I/O fails, every request of that batch gets an error (none is acknowledged) and the
//! database is closed and reopened before the next batch: redb refuses all further I/O on a
//! handle after an I/O error, and a full disk may recover. Logical outcomes (no such user,
//! already exists, duplicate) are results, decided before an op writes anything.
//!
//! Commits are two-phase with redb's quick repair, so opening after a crash does not have to
//! read the whole file (see `tables::configure`).
//!
//! Reads open a redb read transaction: a consistent snapshot that never blocks the writer.
//!
//! Apart from [`Store::open_with_backend`] (for tests) no redb type appears in this API, so
//! another backend can be put behind it later.

mod apply;
mod backup;
mod tables;
mod writer;

#[cfg(test)]
mod powercut;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, StorageBackend};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{info, warn};

use tables::{MessageRec, QueueRec, UserRec, decode};

pub use backup::BackupStats;
pub use writer::{MAX_BATCH_BYTES, MAX_BATCH_REQUESTS};

/// The name of the store's file inside the data directory.
pub const DB_FILE_NAME: &str = "xmta.redb";

/// The folders every new user gets.
pub const DEFAULT_FOLDERS: [&str; 5] = ["INBOX", "Sent", "Drafts", "Trash", "Junk"];

/// The folder mail from outside is delivered to.
pub const INBOX: &str = "INBOX";

/// The store's file inside `data_dir`.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE_NAME)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The file is open in another process (or another `Store` of this one): the command line
    /// then talks to the running server instead.
    #[error("the store {0} is in use by another process")]
    Locked(PathBuf),
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("the store is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// The writer thread has stopped; nothing more can be written.
    #[error("the store's writer thread is gone")]
    WriterGone,
    #[error("internal store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether the error belongs to one request's content (a bad record it touched, a value too
    /// large) rather than to the storage: such a request is failed alone and the rest of its
    /// batch is retried without it.
    fn is_request_local(&self) -> bool {
        matches!(self, StoreError::Corrupt(_) | StoreError::Invalid(_))
    }
}

/// A user account. `password_hash` is whatever the caller stored (the store does not hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub address: String,
    pub password_hash: String,
}

/// The IMAP state of one folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxInfo {
    /// Fixed for the life of the folder; a folder created again later gets a new one.
    pub uidvalidity: u32,
    /// The UID the next stored message gets. UIDs only grow and are never reused.
    pub uidnext: u32,
    /// Number of messages in the folder.
    pub exists: u32,
    /// The highest modification sequence of the folder (RFC 7162): grows with every change.
    pub highest_modseq: u64,
    /// IMAP subscription (LSUB).
    pub subscribed: bool,
    /// IMAP \Recent: the messages from this uid on are recent (no session claimed them yet).
    pub first_recent: u32,
}

/// One message of a folder, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    pub size: u64,
    /// Unix seconds.
    pub internal_date: i64,
    pub flags: Vec<String>,
    /// Identifies the stored body; messages with equal `body_id` share the same bytes.
    pub body_id: u64,
    /// The folder's modification sequence of the message's last change.
    pub modseq: u64,
}

/// How [`Op::SetFlags`] changes a message's flags (IMAP STORE FLAGS, +FLAGS, -FLAGS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagChange {
    Replace,
    Add,
    Remove,
}

/// A message's flags after [`Op::SetFlags`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagUpdate {
    pub uid: u32,
    pub flags: Vec<String>,
    pub modseq: u64,
    /// Whether the op changed them.
    pub changed: bool,
    /// Left alone because the message changed after `unchanged_since` (RFC 7162
    /// UNCHANGEDSINCE).
    pub refused: bool,
}

/// The outcome of [`Op::CopyMessages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    /// `pairs`: (source uid, new uid in the target) for each message copied, in the order
    /// asked (UIDPLUS COPYUID); uids that did not exist are left out.
    Done {
        uidvalidity: u32,
        pairs: Vec<(u32, u32)>,
    },
    /// The source or the target folder does not exist.
    NoSuchFolder,
}

/// The outcome of the folder ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderOutcome {
    Done,
    NoSuchUser,
    NoSuchFolder,
    AlreadyExists,
}

/// Sent after a commit for each folder it changed (new, changed or removed messages, the
/// folder created, deleted or renamed), so that IMAP sessions on it learn of it at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxChange {
    pub address: String,
    pub folder: String,
}

/// How many changes a slow listener may fall behind before it is told it lagged (it then
/// re-reads its folder).
const CHANGE_BACKLOG: usize = 1024;

/// Identifies a mail received over s2s: the authenticated sending domain and the sender's mail id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupeKey {
    pub domain: String,
    pub mail_id: String,
}

/// A message to store into the same folder of each recipient.
#[derive(Debug, Clone)]
pub struct LocalDelivery {
    /// Set for mail received over s2s: a recipient that already got this key is not stored again.
    pub dedupe: Option<DedupeKey>,
    pub recipients: Vec<String>,
    /// Normally [`INBOX`].
    pub folder: String,
    pub message: Bytes,
    /// Unix seconds; also the time of the dedupe record (what [`Op::PruneDedupe`] compares).
    pub internal_date: i64,
    pub flags: Vec<String>,
}

/// A message for the outbound queue.
#[derive(Debug, Clone)]
pub struct NewQueueItem {
    /// Globally unique mail id chosen by the caller.
    pub id: String,
    /// The local domain that sends it (the sender's domain; for a bounce, the domain that
    /// generated it).
    pub origin: String,
    /// Reverse-path; "" is the null sender (a bounce).
    pub sender: String,
    pub recipients: Vec<String>,
    pub created: i64,
    pub next_attempt: i64,
    pub expires: i64,
    pub message: Bytes,
}

/// Where a queue item's message is stored, and its size (see [`Store::queue_entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRef {
    id: u64,
    pub size: u64,
}

/// A queued message's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    pub id: String,
    #[serde(default)]
    pub origin: String,
    pub sender: String,
    pub recipients: Vec<QueueRcpt>,
    pub created: i64,
    pub next_attempt: i64,
    pub expires: i64,
    pub attempts: u32,
    /// Size of the message in bytes.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRcpt {
    pub address: String,
    pub status: RcptStatus,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptStatus {
    Pending,
    Delivered { at: i64 },
    Failed { code: String, text: String },
}

/// One change. A `Vec<Op>` given to [`Store::apply`] is applied atomically, in order.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store one message into the given folder of each recipient. With `dedupe` set, a
    /// recipient for which a record (domain, mail_id, rcpt) exists is not stored again
    /// ([`RcptOutcome::Duplicate`]); otherwise the record is written together with the message.
    Deliver(LocalDelivery),
    /// Put a message into the outbound queue. Its body is stored once, and shared with the
    /// messages of `Deliver` ops of the same `apply` call that carry the same bytes.
    Enqueue(NewQueueItem),
    /// Replace a queue item's mutable state: recipients (status, last error), attempts and
    /// next_attempt. Its id names the item; sender, created, expires and size are kept.
    UpdateQueue(QueueItem),
    /// Remove a queue item (its body goes when nothing else refers to it).
    RemoveQueue { id: String },
    /// Create a user with the [`DEFAULT_FOLDERS`], each with its own UIDVALIDITY.
    AddUser {
        address: String,
        password_hash: String,
    },
    SetPassword {
        address: String,
        password_hash: String,
    },
    /// Remove a user with all of its folders and messages.
    DeleteUser { address: String },
    PutSecret {
        name: String,
        value: Vec<u8>,
        only_if_absent: bool,
    },
    /// Forget dedupe records older than `older_than` (unix seconds).
    PruneDedupe { older_than: i64 },
    /// Remember (or refresh) domains known to send their mail over XMPP.
    LearnDomains { entries: Vec<KnownDomain> },
    /// Write dedupe records for recipients whose copy was stored elsewhere (an external
    /// LMTP server), so a retry of the same mail is recognised (XEP-MTA §11.3).
    RecordDedupe {
        key: DedupeKey,
        recipients: Vec<String>,
        at: i64,
    },
    /// Change the flags of the folder's messages with these uids (missing uids are skipped).
    /// Every message changed gets the folder's next modification sequence. With
    /// `unchanged_since`, a message whose modification sequence is higher is left alone
    /// (and reported `refused`).
    SetFlags {
        address: String,
        folder: String,
        uids: Vec<u32>,
        change: FlagChange,
        flags: Vec<String>,
        unchanged_since: Option<u64>,
    },
    /// Remove the folder's messages with these uids (bodies go with their last reference).
    Expunge {
        address: String,
        folder: String,
        uids: Vec<u32>,
    },
    /// Copy messages (sharing their bodies) to the end of another folder of the same user,
    /// with new uids there; with `remove_source` they leave `from` in the same transaction
    /// (IMAP MOVE).
    CopyMessages {
        address: String,
        from: String,
        to: String,
        uids: Vec<u32>,
        remove_source: bool,
    },
    /// A new empty folder with a new UIDVALIDITY, unsubscribed.
    CreateFolder { address: String, folder: String },
    /// Remove a folder with its messages (not the folders below it).
    DeleteFolder { address: String, folder: String },
    /// Rename a folder and the folders below it (`from/...`), keeping UIDVALIDITY and UIDs.
    /// Renaming INBOX moves its messages into the new folder and leaves an empty INBOX.
    RenameFolder {
        address: String,
        from: String,
        to: String,
    },
    Subscribe {
        address: String,
        folder: String,
        subscribed: bool,
    },
    /// IMAP \Recent (RFC 3501 §2.3.2): the first session to select a folder read-write after
    /// messages arrived gets them as recent. Returns the uid range `[from, to)` claimed (`to`
    /// being UIDNEXT) and moves the folder's first recent uid to `to`.
    ClaimRecent { address: String, folder: String },
}

/// A domain known to send its mail over XMPP, as stored (see `crate::known_domains`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDomain {
    pub domain: String,
    /// `crate::known_domains::Evidence` as a number.
    pub evidence: u8,
    /// Unix seconds.
    pub last_seen: i64,
}

/// The outcome of one [`Op`], in the same position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// One entry per recipient, in order.
    Delivered(Vec<(String, RcptOutcome)>),
    /// `false`: an item with that id already existed (nothing changed).
    Enqueued(bool),
    /// `false`: no such item.
    Updated(bool),
    /// `false`: no such item.
    Removed(bool),
    /// `false`: the user already existed (nothing changed).
    UserAdded(bool),
    /// `false`: no such user.
    PasswordSet(bool),
    /// `false`: no such user.
    UserDeleted(bool),
    /// The value now stored (the old one if `only_if_absent` and it existed).
    Secret(Vec<u8>),
    /// Number of dedupe records removed.
    Pruned(u64),
    /// Number of known domains written.
    Learned(u64),
    /// Number of dedupe records written.
    Recorded(u64),
    /// One entry per message found, in the order asked.
    FlagsSet(Vec<FlagUpdate>),
    /// The uids removed.
    Expunged(Vec<u32>),
    Copied(CopyOutcome),
    /// Of CreateFolder, DeleteFolder, RenameFolder.
    Folder(FolderOutcome),
    /// `false`: no such folder.
    Subscribed(bool),
    /// The uid range `[from, to)` claimed as recent; `None`: no such folder.
    RecentClaimed(Option<(u32, u32)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptOutcome {
    Stored {
        uid: u32,
    },
    /// Already delivered under the same dedupe key: not stored again.
    Duplicate,
    NoSuchUser,
    /// The user exists but has no such folder.
    NoSuchFolder,
}

/// Handle to the store. Cheap to clone; the file is closed when the last clone is dropped
/// (the drop waits for the writer thread to finish its current batch).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    // Options so that Drop can close the channel and then join the thread.
    tx: Option<mpsc::Sender<writer::Request>>,
    writer: Option<JoinHandle<()>>,
}

type Reopen = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// What the handles and the writer thread share.
struct Shared {
    // None after a failed reopen; the writer retries before its next batch. Readers hold the
    // read lock only while they read, the writer only takes the write lock to reopen.
    db: RwLock<Option<Database>>,
    reopen: Reopen,
    commits: AtomicU64,
    changes: tokio::sync::broadcast::Sender<MailboxChange>,
    /// Lazy requests waiting for a commit (see the writer's module doc).
    lazy: std::sync::Mutex<writer::Lazy>,
    /// [`writer::SOON_DELAY`] in microseconds (tests lengthen it).
    soon_delay_us: AtomicU64,
}

impl Store {
    /// Opens the store at `path`, creating the file and its tables on first use.
    ///
    /// Fails with [`StoreError::Locked`] if another process (or another `Store`) has it open.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let created = !path.exists();
        let db = tables::builder()
            .create(path)
            .map_err(|e| open_error(e, path))?;
        let owned = path.to_path_buf();
        // A reopen after an I/O error must find the file: were it gone (an unmounted disk),
        // creating a new one would quietly start an empty store.
        let reopen = move || {
            tables::builder()
                .open(&owned)
                .map_err(|e| open_error(e, &owned))
        };
        let store = Store::start(db, Box::new(reopen))?;
        if created {
            // The new file's directory entry must be durable too, or a power cut could lose the
            // whole file together with everything acknowledged in it.
            sync_parent_dir(path)?;
        }
        info!(path = %path.display(), "store opened");
        Ok(store)
    }

    /// Opens a store on a custom redb backend (tests). The backend is cloned to reopen the
    /// database after an I/O error, so a clone must address the same storage.
    pub fn open_with_backend<B: StorageBackend + Clone>(backend: B) -> Result<Store, StoreError> {
        let open = move || Ok(tables::builder().create_with_backend(backend.clone())?);
        let db = open()?;
        Store::start(db, Box::new(open))
    }

    fn start(db: Database, reopen: Reopen) -> Result<Store, StoreError> {
        tables::init_schema(&db)?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            reopen,
            commits: AtomicU64::new(0),
            changes: tokio::sync::broadcast::channel(CHANGE_BACKLOG).0,
            lazy: Default::default(),
            soon_delay_us: AtomicU64::new(writer::SOON_DELAY.as_micros() as u64),
        });
        let (tx, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("xmta-store-writer".into())
            .spawn(move || writer::run(&thread_shared, rx))
            .map_err(|e| StoreError::Io(format!("starting the store writer: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                writer: Some(writer),
            }),
        })
    }

    /// Applies `ops` atomically and durably: when this returns `Ok`, all of them are committed
    /// (sharing one commit with concurrent callers); on `Err`, none of them is acknowledged
    /// (after an I/O error they may or may not have reached the disk). Dropping the future
    /// does not cancel the write.
    pub async fn apply(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, StoreError> {
        self.request(ops, false).await
    }

    /// Like [`Store::apply`] (durable when it returns), for a caller that has many such
    /// requests in flight and is not slowed by the latency of one: mail from an s2s peer,
    /// whose sender keeps a window of mails awaiting receipts. Its commit may wait up to
    /// [`writer::SOON_DELAY`] for more requests to share it, which saves the commits (and
    /// fsyncs) that per-mail latency does not need. A request that cannot wait ends the
    /// wait at once.
    pub async fn apply_soon(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, StoreError> {
        self.request(ops, true).await
    }

    async fn request(&self, ops: Vec<Op>, soon: bool) -> Result<Vec<OpResult>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or(StoreError::WriterGone)?;
        let delay = self.inner.shared.soon_delay_us.load(Ordering::Relaxed);
        tx.send(writer::Request {
            ops,
            reply,
            lazy: false,
            until: soon.then(|| Instant::now() + Duration::from_micros(delay)),
        })
        .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Hands `ops` to the writer without waiting: they are committed with a later commit
    /// (at most [`writer::LAZY_MAX_AGE`] later while the server runs, or by the next
    /// [`Store::apply`] of no ops). Only for writes whose loss in a crash is harmless: the
    /// removal of a delivered queue item (a re-send is recognised by the receiver's
    /// duplicate memory). Not durable when this returns.
    pub fn apply_lazily(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let tx = self.inner.tx.as_ref().ok_or(StoreError::WriterGone)?;
        let held = self.inner.shared.hold_lazily(ops);
        // The writer is woken only when it has to start counting (the first one held) or
        // to commit (the most it holds); the others just wait in the buffer.
        if held == 1 || held == writer::LAZY_MAX {
            let (reply, _) = oneshot::channel();
            tx.send(writer::Request {
                ops: Vec::new(),
                reply,
                lazy: true,
                until: None,
            })
            .map_err(|_| StoreError::WriterGone)?;
        }
        Ok(())
    }

    async fn apply_one(&self, op: Op) -> Result<OpResult, StoreError> {
        let mut results = self.apply(vec![op]).await?;
        match (results.pop(), results.is_empty()) {
            (Some(result), true) => Ok(result),
            _ => Err(StoreError::Internal("one op gave not one result".into())),
        }
    }

    pub async fn deliver(
        &self,
        delivery: LocalDelivery,
    ) -> Result<Vec<(String, RcptOutcome)>, StoreError> {
        match self.apply_one(Op::Deliver(delivery)).await? {
            OpResult::Delivered(outcomes) => Ok(outcomes),
            other => Err(unexpected(other)),
        }
    }

    /// `Ok(false)`: an item with that id already exists.
    pub async fn enqueue(&self, item: NewQueueItem) -> Result<bool, StoreError> {
        match self.apply_one(Op::Enqueue(item)).await? {
            OpResult::Enqueued(done) => Ok(done),
            other => Err(unexpected(other)),
        }
    }

    /// `Ok(false)`: no such item.
    pub async fn update_queue(&self, item: QueueItem) -> Result<bool, StoreError> {
        match self.apply_one(Op::UpdateQueue(item)).await? {
            OpResult::Updated(done) => Ok(done),
            other => Err(unexpected(other)),
        }
    }

    /// `Ok(false)`: no such item.
    pub async fn remove_queue(&self, id: &str) -> Result<bool, StoreError> {
        let op = Op::RemoveQueue { id: id.to_owned() };
        match self.apply_one(op).await? {
            OpResult::Removed(done) => Ok(done),
            other => Err(unexpected(other)),
        }
    }

    /// `Ok(false)`: the user already exists.
    pub async fn add_user(&self, address: &str, password_hash: &str) -> Result<bool, StoreError> {
        let op = Op::AddUser {
            address: address.to_owned(),
            password_hash: password_hash.to_owned(),
        };
        match self.apply_one(op).await? {
            OpResult::UserAdded(done) => Ok(done),
            other => Err(unexpected(other)),
        }
    }

    /// `Ok(false)`: no such user.
    pub async fn set_password(
        &self,
        address: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let op = Op::SetPassword {
            address: address.to_owned(),
            password_hash: password_hash.to_owned(),
        };
        match self.apply_one(op).await? {
            OpResult::PasswordSet(done) => Ok(done),
            other => Err(unexpected(other)),
        }
    }

    /// `Ok(false)`: no such user.
    pub async fn delete_user(&self, address: &str) -> Result<bool, StoreError> {
        let op = Op::DeleteUser {
            address: address.to_owned(),
        };
        match self.apply_one(op).await? {
            OpResult::UserDeleted(done) => Ok(done),
            other => Err(unexpected(other)),
        }
    }

    /// Returns the value now stored.
    pub async fn put_secret(
        &self,
        name: &str,
        value: Vec<u8>,
        only_if_absent: bool,
    ) -> Result<Vec<u8>, StoreError> {
        let op = Op::PutSecret {
            name: name.to_owned(),
            value,
            only_if_absent,
        };
        match self.apply_one(op).await? {
            OpResult::Secret(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Returns the number of records removed.
    pub async fn prune_dedupe(&self, older_than: i64) -> Result<u64, StoreError> {
        match self.apply_one(Op::PruneDedupe { older_than }).await? {
            OpResult::Pruned(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Change notifications: one [`MailboxChange`] per folder a commit changed, sent after
    /// the commit (a reader that then opens a snapshot sees the change).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<MailboxChange> {
        self.inner.shared.changes.subscribe()
    }

    /// Applies one op and returns its result.
    pub async fn apply_op(&self, op: Op) -> Result<OpResult, StoreError> {
        self.apply_one(op).await
    }

    /// The user's folders with their state, sorted by name.
    pub fn folder_infos(&self, address: &str) -> Result<Vec<(String, MailboxInfo)>, StoreError> {
        self.read(|txn| {
            let mailboxes = txn.open_table(tables::MAILBOXES)?;
            Ok(tables::folders_of(&mailboxes, address)?
                .into_iter()
                .map(|(folder, mb)| (folder, mb.info()))
                .collect())
        })
    }

    /// Sets how long requests that can wait ([`Store::apply_soon`]) may wait for others to
    /// share their commit ([`writer::SOON_DELAY`] otherwise).
    #[cfg(test)]
    pub(crate) fn set_soon_delay(&self, delay: Duration) {
        self.inner
            .shared
            .soon_delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Number of write transactions the writer has committed since open (for metrics and tests).
    pub fn commits(&self) -> u64 {
        self.inner.shared.commits.load(Ordering::Relaxed)
    }

    // Reads: each runs on one snapshot.

    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
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
        f(&txn)
    }

    pub fn user(&self, address: &str) -> Result<Option<UserRecord>, StoreError> {
        self.read(|txn| {
            let users = txn.open_table(tables::USERS)?;
            let Some(rec) = users.get(address)? else {
                return Ok(None);
            };
            let rec: UserRec = decode("user", rec.value())?;
            Ok(Some(UserRecord {
                address: address.to_owned(),
                password_hash: rec.password_hash,
            }))
        })
    }

    /// All user addresses, sorted.
    pub fn users(&self) -> Result<Vec<String>, StoreError> {
        self.read(|txn| {
            let users = txn.open_table(tables::USERS)?;
            let mut out = Vec::new();
            for entry in users.iter()? {
                let (address, _) = entry?;
                out.push(address.value().to_owned());
            }
            Ok(out)
        })
    }

    pub fn mailbox(&self, address: &str, folder: &str) -> Result<Option<MailboxInfo>, StoreError> {
        self.read(|txn| {
            let mailboxes = txn.open_table(tables::MAILBOXES)?;
            Ok(tables::get_mailbox(&mailboxes, address, folder)?.map(|mb| mb.info()))
        })
    }

    /// The user's folder names, sorted (empty for an unknown user).
    pub fn folders(&self, address: &str) -> Result<Vec<String>, StoreError> {
        self.read(|txn| {
            let mailboxes = txn.open_table(tables::MAILBOXES)?;
            Ok(tables::folders_of(&mailboxes, address)?
                .into_iter()
                .map(|(folder, _)| folder)
                .collect())
        })
    }

    /// The folder's messages in UID order (empty for an unknown folder).
    pub fn messages(&self, address: &str, folder: &str) -> Result<Vec<MessageMeta>, StoreError> {
        self.read(|txn| {
            let mailboxes = txn.open_table(tables::MAILBOXES)?;
            let Some(mb) = tables::get_mailbox(&mailboxes, address, folder)? else {
                return Ok(Vec::new());
            };
            let messages = txn.open_table(tables::MESSAGES)?;
            let mut out = Vec::new();
            for entry in messages.range((mb.id, 0)..=(mb.id, u32::MAX))? {
                let (key, rec) = entry?;
                let rec: MessageRec = decode("message", rec.value())?;
                out.push(MessageMeta {
                    uid: key.value().1,
                    size: rec.size,
                    internal_date: rec.internal_date,
                    flags: rec.flags,
                    body_id: rec.body,
                    modseq: rec.modseq,
                });
            }
            Ok(out)
        })
    }

    pub fn message_body(
        &self,
        address: &str,
        folder: &str,
        uid: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|txn| {
            let mailboxes = txn.open_table(tables::MAILBOXES)?;
            let Some(mb) = tables::get_mailbox(&mailboxes, address, folder)? else {
                return Ok(None);
            };
            let messages = txn.open_table(tables::MESSAGES)?;
            let Some(rec) = messages.get((mb.id, uid))? else {
                return Ok(None);
            };
            let rec: MessageRec = decode("message", rec.value())?;
            read_body(txn, rec.body, rec.size).map(Some)
        })
    }

    /// All queue items, in id order.
    pub fn queue(&self) -> Result<Vec<QueueItem>, StoreError> {
        self.read(|txn| {
            let queue = txn.open_table(tables::QUEUE)?;
            let mut out = Vec::new();
            for entry in queue.iter()? {
                let (id, rec) = entry?;
                let rec: QueueRec = decode("queue item", rec.value())?;
                out.push(rec.into_item(id.value()));
            }
            Ok(out)
        })
    }

    pub fn queue_item(&self, id: &str) -> Result<Option<QueueItem>, StoreError> {
        Ok(self.queue_entry(id)?.map(|(item, _)| item))
    }

    /// The item and where its message lies, without reading the message: a delivery
    /// attempt takes its share of the in-flight byte budget before [`Store::queued_body`].
    pub fn queue_entry(&self, id: &str) -> Result<Option<(QueueItem, BodyRef)>, StoreError> {
        self.read(|txn| {
            let queue = txn.open_table(tables::QUEUE)?;
            let Some(rec) = queue.get(id)? else {
                return Ok(None);
            };
            let rec: QueueRec = decode("queue item", rec.value())?;
            let body = BodyRef {
                id: rec.body,
                size: rec.size,
            };
            Ok(Some((rec.into_item(id), body)))
        })
    }

    /// The message of queue item `id` (from [`Store::queue_entry`]); `None` once the item is
    /// gone (delivered or dropped meanwhile).
    pub fn queued_body(&self, id: &str, body: BodyRef) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|txn| {
            if txn.open_table(tables::QUEUE)?.get(id)?.is_none() {
                return Ok(None);
            }
            read_body(txn, body.id, body.size).map(Some)
        })
    }

    pub fn queue_body(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.queue_entry(id)? {
            Some((_, body)) => self.queued_body(id, body),
            None => Ok(None),
        }
    }

    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|txn| {
            let secrets = txn.open_table(tables::SECRETS)?;
            Ok(secrets.get(name)?.map(|v| v.value().to_vec()))
        })
    }

    /// The domains known to send their mail over XMPP (empty for a store that has never
    /// been written by a version with that table).
    pub fn known_domains(&self) -> Result<Vec<KnownDomain>, StoreError> {
        self.read(|txn| {
            let t = match txn.open_table(tables::KNOWN_DOMAINS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for e in t.iter()? {
                let (k, v) = e?;
                let (evidence, last_seen) = v.value();
                out.push(KnownDomain {
                    domain: k.value().to_string(),
                    evidence,
                    last_seen,
                });
            }
            Ok(out)
        })
    }

    /// Whether `rcpt` already got the mail `key` (a dedupe record exists).
    pub fn is_duplicate(&self, key: &DedupeKey, rcpt: &str) -> Result<bool, StoreError> {
        self.read(|txn| {
            let dedupe = txn.open_table(tables::DEDUPE)?;
            Ok(dedupe
                .get((key.domain.as_str(), key.mail_id.as_str(), rcpt))?
                .is_some())
        })
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop; joining makes sure the file is closed
        // (and its lock released) when the last handle is gone.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            warn!("the store writer thread panicked");
        }
    }
}

fn read_body(txn: &ReadTransaction, id: u64, size: u64) -> Result<Vec<u8>, StoreError> {
    let bodies = txn.open_table(tables::BODIES)?;
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut chunks = 0;
    for chunk in bodies.range((id, 0)..=(id, u32::MAX))? {
        out.extend_from_slice(chunk?.1.value());
        chunks += 1;
    }
    if chunks == 0 {
        return Err(StoreError::Corrupt(format!("body {id} is missing")));
    }
    Ok(out)
}

fn open_error(e: redb::DatabaseError, path: &Path) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_path_buf()),
        e => e.into(),
    }
}

fn unexpected(result: OpResult) -> StoreError {
    StoreError::Internal(format!("unexpected op result {result:?}"))
}

#[cfg(unix)]
fn sync_parent_dir(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Io(format!("syncing directory {}: {e}", dir.display())))
}

#[cfg(not(unix))]
fn sync_parent_dir(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

// Conversions of redb's errors. Storage failures become Io (the batch fails and the database is
// reopened); redb's own corruption reports become Corrupt.

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        match e {
            redb::StorageError::Corrupted(msg) => StoreError::Corrupt(msg),
            redb::StorageError::ValueTooLarge(len) => {
                StoreError::Invalid(format!("a value of {len} bytes is too large"))
            }
            e => StoreError::Io(e.to_string()),
        }
    }
}

impl From<redb::TableError> for StoreError {
    fn from(e: redb::TableError) -> Self {
        match e {
            redb::TableError::Storage(e) => e.into(),
            // A table of another type or a missing one: not a file this code wrote.
            e => StoreError::Corrupt(e.to_string()),
        }
    }
}

impl From<redb::TransactionError> for StoreError {
    fn from(e: redb::TransactionError) -> Self {
        match e {
            redb::TransactionError::Storage(e) => e.into(),
            e => StoreError::Internal(e.to_string()),
        }
    }
}

impl From<redb::CommitError> for StoreError {
    fn from(e: redb::CommitError) -> Self {
        match e {
            redb::CommitError::Storage(e) => e.into(),
            e => StoreError::Internal(e.to_string()),
        }
    }
}

impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::Storage(e) => e.into(),
            // Store::open replaces the empty path with the file's.
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(PathBuf::new()),
            e @ (redb::DatabaseError::RepairAborted | redb::DatabaseError::UpgradeRequired(_)) => {
                StoreError::Corrupt(e.to_string())
            }
            e => StoreError::Io(e.to_string()),
        }
    }
}
