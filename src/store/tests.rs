//! Unit tests of the store (the power-cut tests are in powercut.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::powercut::SimBackend;
use super::tables::{BODIES, BODY_REFS, MAILBOXES, MESSAGES, QUEUE, USERS};
use super::*;
use redb::ReadableTableMetadata;

pub(super) fn delivery(rcpts: &[&str], body: &str) -> LocalDelivery {
    LocalDelivery {
        dedupe: None,
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        folder: INBOX.to_owned(),
        message: Bytes::from(body.to_owned()),
        internal_date: 1_700_000_000,
        flags: Vec::new(),
    }
}

fn new_item(id: &str, body: &str) -> NewQueueItem {
    NewQueueItem {
        origin: "x".into(),
        id: id.to_owned(),
        sender: "alice@a.example".to_owned(),
        recipients: vec!["bob@b.example".to_owned(), "carol@b.example".to_owned()],
        created: 100,
        next_attempt: 100,
        expires: 100 + 5 * 86400,
        message: Bytes::from(body.to_owned()),
    }
}

fn memory_store() -> Store {
    Store::open_with_backend(SimBackend::new()).expect("open store")
}

async fn with_users(store: &Store, users: &[&str]) {
    for user in users {
        assert!(store.add_user(user, "hash").await.expect("add user"));
    }
}

fn uid(outcome: &(String, RcptOutcome)) -> u32 {
    match outcome.1 {
        RcptOutcome::Stored { uid } => uid,
        other => panic!("{} not stored: {other:?}", outcome.0),
    }
}

/// Checks the invariants between the tables: body reference counts match the messages and
/// queue items referring to them, no body is orphaned, folder counters match their messages.
pub(super) fn check_consistency(store: &Store) -> Result<(), String> {
    let check = store.read(|txn| {
        let mut problems = Vec::new();
        let users = txn.open_table(USERS)?;
        let mailboxes = txn.open_table(MAILBOXES)?;
        let messages = txn.open_table(MESSAGES)?;
        let bodies = txn.open_table(BODIES)?;
        let body_refs = txn.open_table(BODY_REFS)?;
        let queue = txn.open_table(QUEUE)?;

        let mut body_sizes: BTreeMap<u64, u64> = BTreeMap::new();
        for entry in bodies.iter()? {
            let (key, chunk) = entry?;
            *body_sizes.entry(key.value().0).or_default() += chunk.value().len() as u64;
        }
        let mut expected_refs: BTreeMap<u64, u64> = BTreeMap::new();
        let mut mailbox_ids = BTreeMap::new();
        let mut uidvalidities = BTreeSet::new();
        for entry in mailboxes.iter()? {
            let (key, rec) = entry?;
            let (address, folder) = key.value();
            let rec: tables::MailboxRec = decode("mailbox", rec.value())?;
            if users.get(address)?.is_none() {
                problems.push(format!("mailbox {address}/{folder} without a user"));
            }
            if !uidvalidities.insert(rec.uidvalidity) {
                problems.push(format!("uidvalidity {} used twice", rec.uidvalidity));
            }
            mailbox_ids.insert(rec.id, (format!("{address}/{folder}"), rec));
        }
        let mut counts: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
        for entry in messages.iter()? {
            let (key, rec) = entry?;
            let (mailbox, uid) = key.value();
            let rec: MessageRec = decode("message", rec.value())?;
            *expected_refs.entry(rec.body).or_default() += 1;
            let count = counts.entry(mailbox).or_default();
            count.0 += 1;
            count.1 = count.1.max(uid);
            if body_sizes.get(&rec.body) != Some(&rec.size) {
                problems.push(format!(
                    "message {mailbox}/{uid}: body missing or of other size"
                ));
            }
        }
        for (id, (name, rec)) in &mailbox_ids {
            let (exists, max_uid) = counts.remove(id).unwrap_or((0, 0));
            if exists != rec.exists {
                problems.push(format!(
                    "{name}: exists {} but {exists} messages",
                    rec.exists
                ));
            }
            if max_uid >= rec.uidnext {
                problems.push(format!("{name}: uid {max_uid} >= uidnext {}", rec.uidnext));
            }
        }
        for id in counts.keys() {
            problems.push(format!("messages of unknown mailbox {id}"));
        }
        for entry in queue.iter()? {
            let (id, rec) = entry?;
            let rec: QueueRec = decode("queue item", rec.value())?;
            *expected_refs.entry(rec.body).or_default() += 1;
            if body_sizes.get(&rec.body) != Some(&rec.size) {
                problems.push(format!(
                    "queue item {}: body missing or of other size",
                    id.value()
                ));
            }
        }
        let mut refs = BTreeMap::new();
        for entry in body_refs.iter()? {
            let (id, n) = entry?;
            refs.insert(id.value(), n.value());
        }
        if refs != expected_refs {
            problems.push(format!(
                "body refcounts {refs:?}, references {expected_refs:?}"
            ));
        }
        for id in body_sizes.keys() {
            if !refs.contains_key(id) {
                problems.push(format!("orphaned body {id}"));
            }
        }
        Ok(problems)
    });
    match check {
        Ok(problems) if problems.is_empty() => Ok(()),
        Ok(problems) => Err(problems.join("; ")),
        Err(e) => Err(e.to_string()),
    }
}

/// The UIDs in `user`'s INBOX, in order.
fn inbox_uids(store: &Store, user: &str) -> Vec<u32> {
    store
        .messages(user, INBOX)
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect()
}

/// Number of stored bodies.
fn body_count(store: &Store) -> usize {
    store
        .read(|txn| Ok(txn.open_table(BODY_REFS)?.len()?))
        .expect("count bodies") as usize
}

#[tokio::test]
async fn deliver_to_several_users_and_uids_increase() {
    let store = memory_store();
    with_users(&store, &["a@x", "b@x", "c@x"]).await;
    let first = store
        .deliver(delivery(&["a@x", "b@x"], "one"))
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!((uid(&first[0]), uid(&first[1])), (1, 1));
    let second = store
        .deliver(delivery(&["a@x", "c@x"], "two"))
        .await
        .unwrap();
    assert_eq!((uid(&second[0]), uid(&second[1])), (2, 1));

    let a = store.messages("a@x", INBOX).unwrap();
    assert_eq!(a.iter().map(|m| m.uid).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(a[0].size, 3);
    assert_eq!(a[0].internal_date, 1_700_000_000);
    assert_eq!(
        store.message_body("a@x", INBOX, 2).unwrap().unwrap(),
        b"two"
    );
    assert_eq!(
        store.message_body("b@x", INBOX, 1).unwrap().unwrap(),
        b"one"
    );
    assert_eq!(store.message_body("b@x", INBOX, 2).unwrap(), None);
    // One body per delivery, shared by its recipients.
    assert_eq!(
        a[0].body_id,
        store.messages("b@x", INBOX).unwrap()[0].body_id
    );
    assert_eq!(body_count(&store), 2);

    let info = store.mailbox("a@x", INBOX).unwrap().unwrap();
    assert_eq!((info.uidnext, info.exists), (3, 2));
    assert_ne!(info.uidvalidity, 0);
    assert_eq!(store.mailbox("a@x", "Nope").unwrap(), None);
    check_consistency(&store).unwrap();
}

#[tokio::test]
async fn unknown_user_and_folder_are_outcomes() {
    let store = memory_store();
    with_users(&store, &["a@x"]).await;
    let outcomes = store
        .deliver(delivery(&["nobody@x", "a@x"], "hi"))
        .await
        .unwrap();
    assert_eq!(outcomes[0], ("nobody@x".into(), RcptOutcome::NoSuchUser));
    assert_eq!(outcomes[1], ("a@x".into(), RcptOutcome::Stored { uid: 1 }));

    let mut to_folder = delivery(&["a@x"], "x");
    to_folder.folder = "Archive".into();
    assert_eq!(
        store.deliver(to_folder).await.unwrap(),
        [("a@x".into(), RcptOutcome::NoSuchFolder)]
    );
    let mut sent = delivery(&["a@x"], "copy");
    sent.folder = "Sent".into();
    sent.flags = vec!["\\Seen".into()];
    assert_eq!(
        store.deliver(sent).await.unwrap(),
        [("a@x".into(), RcptOutcome::Stored { uid: 1 })]
    );
    assert_eq!(store.messages("a@x", "Sent").unwrap()[0].flags, ["\\Seen"]);

    // Nobody stored: no body left behind.
    store
        .deliver(delivery(&["nobody@x"], "lost"))
        .await
        .unwrap();
    assert_eq!(body_count(&store), 2);
    check_consistency(&store).unwrap();
}

#[tokio::test]
async fn dedupe_stores_each_recipient_once() {
    let store = memory_store();
    with_users(&store, &["a@x", "b@x"]).await;
    let key = DedupeKey {
        domain: "remote.example".into(),
        mail_id: "m1".into(),
    };
    let mut d = delivery(&["a@x"], "hello");
    d.dedupe = Some(key.clone());
    assert_eq!(
        store.deliver(d.clone()).await.unwrap(),
        [("a@x".into(), RcptOutcome::Stored { uid: 1 })]
    );
    assert!(store.is_duplicate(&key, "a@x").unwrap());
    assert!(!store.is_duplicate(&key, "b@x").unwrap());

    // The retry also names b@x: only b@x is new. A repeated recipient in one op is a duplicate.
    d.recipients = vec!["a@x".into(), "b@x".into(), "b@x".into()];
    assert_eq!(
        store.deliver(d.clone()).await.unwrap(),
        [
            ("a@x".into(), RcptOutcome::Duplicate),
            ("b@x".into(), RcptOutcome::Stored { uid: 1 }),
            ("b@x".into(), RcptOutcome::Duplicate),
        ]
    );
    assert_eq!(store.messages("a@x", INBOX).unwrap().len(), 1);
    assert_eq!(store.messages("b@x", INBOX).unwrap().len(), 1);
    assert_eq!(store.mailbox("a@x", INBOX).unwrap().unwrap().uidnext, 2);

    // Another domain's mail with the same id is another mail.
    let mut other = d.clone();
    other.dedupe = Some(DedupeKey {
        domain: "other.example".into(),
        mail_id: "m1".into(),
    });
    other.recipients = vec!["a@x".into()];
    assert_eq!(
        store.deliver(other).await.unwrap(),
        [("a@x".into(), RcptOutcome::Stored { uid: 2 })]
    );

    // Records are pruned by delivery time.
    assert_eq!(store.prune_dedupe(1_700_000_000).await.unwrap(), 0);
    assert_eq!(store.prune_dedupe(1_700_000_001).await.unwrap(), 3);
    assert!(!store.is_duplicate(&key, "a@x").unwrap());
    check_consistency(&store).unwrap();
}

#[tokio::test]
async fn queue_lifecycle_and_body_refcount() {
    let store = memory_store();
    with_users(&store, &["alice@a.example"]).await;
    assert!(store.enqueue(new_item("q1", "first")).await.unwrap());
    assert!(!store.enqueue(new_item("q1", "again")).await.unwrap());
    assert_eq!(store.queue_body("q1").unwrap().unwrap(), b"first");

    let mut item = store.queue_item("q1").unwrap().unwrap();
    let (same, body_ref) = store.queue_entry("q1").unwrap().unwrap();
    let body = store.queued_body("q1", body_ref).unwrap().unwrap();
    assert_eq!(
        (same.id.as_str(), same.size, body_ref.size, &body[..]),
        ("q1", 5, 5, &b"first"[..])
    );
    assert!(store.queue_entry("nope").unwrap().is_none());
    assert_eq!(item.size, 5);
    assert_eq!(item.attempts, 0);
    assert_eq!(item.recipients[0].status, RcptStatus::Pending);
    item.attempts = 1;
    item.next_attempt = 700;
    item.expires = 1; // not mutable: kept
    item.recipients[0].status = RcptStatus::Delivered { at: 600 };
    item.recipients[1].status = RcptStatus::Failed {
        code: "4.4.1".into(),
        text: "no route".into(),
    };
    item.recipients[1].last_error = Some("connection refused".into());
    assert!(store.update_queue(item.clone()).await.unwrap());
    let stored = store.queue_item("q1").unwrap().unwrap();
    assert_eq!(stored.expires, 100 + 5 * 86400);
    item.expires = stored.expires;
    assert_eq!(stored, item);
    let mut unknown = item.clone();
    unknown.id = "nope".into();
    assert!(!store.update_queue(unknown).await.unwrap());

    // A submission: Sent copy for the sender and the queue item share one body.
    let body = Bytes::from_static(b"shared body");
    let mut sent = delivery(&["alice@a.example"], "");
    sent.folder = "Sent".into();
    sent.message = body.clone();
    let mut queued = new_item("q2", "");
    queued.message = body;
    let results = store
        .apply(vec![Op::Deliver(sent), Op::Enqueue(queued)])
        .await
        .unwrap();
    assert_eq!(results[1], OpResult::Enqueued(true));
    assert_eq!(body_count(&store), 2);
    let ids: Vec<String> = store.queue().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, ["q1", "q2"]);
    let (_, q2_body) = store.queue_entry("q2").unwrap().unwrap();

    assert!(store.remove_queue("q1").await.unwrap());
    assert!(!store.remove_queue("q1").await.unwrap());
    assert_eq!(store.queue_body("q1").unwrap(), None);
    assert!(store.queue_entry("q1").unwrap().is_none());
    assert_eq!(store.queued_body("q1", body_ref).unwrap(), None);
    assert_eq!(body_count(&store), 1);
    // The Sent copy still holds the shared body.
    assert!(store.remove_queue("q2").await.unwrap());
    // ... but the item is gone, so an attempt that read its entry before gets nothing.
    assert_eq!(store.queued_body("q2", q2_body).unwrap(), None);
    assert_eq!(body_count(&store), 1);
    assert_eq!(
        store
            .message_body("alice@a.example", "Sent", 1)
            .unwrap()
            .unwrap(),
        b"shared body"
    );
    check_consistency(&store).unwrap();
    assert!(store.delete_user("alice@a.example").await.unwrap());
    assert_eq!(body_count(&store), 0);
    check_consistency(&store).unwrap();
}

#[tokio::test]
async fn users_add_delete_list() {
    let store = memory_store();
    with_users(&store, &["b@x", "a@x"]).await;
    assert!(!store.add_user("a@x", "other").await.unwrap());
    assert_eq!(store.users().unwrap(), ["a@x", "b@x"]);
    assert_eq!(store.user("a@x").unwrap().unwrap().password_hash, "hash");
    assert!(store.set_password("a@x", "new").await.unwrap());
    assert!(!store.set_password("z@x", "new").await.unwrap());
    assert_eq!(
        store.user("a@x").unwrap(),
        Some(UserRecord {
            address: "a@x".into(),
            password_hash: "new".into()
        })
    );
    let mut folders = DEFAULT_FOLDERS.map(String::from).to_vec();
    folders.sort();
    assert_eq!(store.folders("a@x").unwrap(), folders);
    assert_eq!(store.folders("z@x").unwrap(), Vec::<String>::new());
    let validities: BTreeSet<u32> = DEFAULT_FOLDERS
        .iter()
        .map(|f| store.mailbox("a@x", f).unwrap().unwrap().uidvalidity)
        .collect();
    assert_eq!(validities.len(), DEFAULT_FOLDERS.len());
    let old_validity = store.mailbox("a@x", INBOX).unwrap().unwrap().uidvalidity;

    store
        .deliver(delivery(&["a@x", "b@x"], "to both"))
        .await
        .unwrap();
    store.deliver(delivery(&["a@x"], "to a")).await.unwrap();
    assert!(store.delete_user("a@x").await.unwrap());
    assert!(!store.delete_user("a@x").await.unwrap());
    assert_eq!(store.users().unwrap(), ["b@x"]);
    assert_eq!(store.user("a@x").unwrap(), None);
    assert_eq!(store.folders("a@x").unwrap(), Vec::<String>::new());
    assert_eq!(body_count(&store), 1);
    check_consistency(&store).unwrap();

    // Created again: new folders, new UIDVALIDITY, UIDs from 1.
    with_users(&store, &["a@x"]).await;
    let info = store.mailbox("a@x", INBOX).unwrap().unwrap();
    assert!(info.uidvalidity > old_validity);
    assert_eq!((info.uidnext, info.exists), (1, 0));
    check_consistency(&store).unwrap();
}

#[tokio::test]
async fn secrets_only_if_absent() {
    let store = memory_store();
    assert_eq!(store.secret("dialback").unwrap(), None);
    assert_eq!(
        store
            .put_secret("dialback", b"k1".to_vec(), true)
            .await
            .unwrap(),
        b"k1"
    );
    assert_eq!(
        store
            .put_secret("dialback", b"k2".to_vec(), true)
            .await
            .unwrap(),
        b"k1"
    );
    assert_eq!(store.secret("dialback").unwrap().unwrap(), b"k1");
    assert_eq!(
        store
            .put_secret("dialback", b"k3".to_vec(), false)
            .await
            .unwrap(),
        b"k3"
    );
    assert_eq!(store.secret("dialback").unwrap().unwrap(), b"k3");
}

#[tokio::test]
async fn ops_of_one_call_are_applied_in_order() {
    let store = memory_store();
    let results = store
        .apply(vec![
            Op::AddUser {
                address: "a@x".into(),
                password_hash: "h".into(),
            },
            Op::Deliver(delivery(&["a@x"], "first")),
            Op::SetPassword {
                address: "a@x".into(),
                password_hash: "h2".into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        [
            OpResult::UserAdded(true),
            OpResult::Delivered(vec![("a@x".into(), RcptOutcome::Stored { uid: 1 })]),
            OpResult::PasswordSet(true),
        ]
    );
    assert_eq!(store.apply(Vec::new()).await.unwrap(), []);
}

#[tokio::test]
async fn reopen_sees_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let key = DedupeKey {
        domain: "r.example".into(),
        mail_id: "m".into(),
    };
    let validity;
    {
        let store = Store::open(&path).unwrap();
        with_users(&store, &["a@x"]).await;
        let mut d = delivery(&["a@x"], "kept");
        d.dedupe = Some(key.clone());
        store.deliver(d).await.unwrap();
        store.enqueue(new_item("q", "queued")).await.unwrap();
        store.put_secret("s", b"v".to_vec(), true).await.unwrap();
        validity = store.mailbox("a@x", INBOX).unwrap().unwrap().uidvalidity;
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.users().unwrap(), ["a@x"]);
    assert_eq!(
        store.message_body("a@x", INBOX, 1).unwrap().unwrap(),
        b"kept"
    );
    let info = store.mailbox("a@x", INBOX).unwrap().unwrap();
    assert_eq!((info.uidvalidity, info.uidnext), (validity, 2));
    assert!(store.is_duplicate(&key, "a@x").unwrap());
    assert_eq!(store.queue_body("q").unwrap().unwrap(), b"queued");
    assert_eq!(store.secret("s").unwrap().unwrap(), b"v");
    // UIDs continue after the reopen.
    let outcome = store.deliver(delivery(&["a@x"], "next")).await.unwrap();
    assert_eq!(uid(&outcome[0]), 2);
    check_consistency(&store).unwrap();
}

#[tokio::test]
async fn second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let store = Store::open(&path).unwrap();
    match Store::open(&path) {
        Err(StoreError::Locked(locked)) => assert_eq!(locked, path),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("opened twice"),
    }
    // Dropping the last handle closes the file.
    drop(store);
    Store::open(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_batches_concurrent_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db_path(dir.path())).unwrap();
    with_users(&store, &["a@x", "b@x"]).await;
    let before = store.commits();
    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let body = format!("message {i}");
                store.deliver(delivery(&["a@x", "b@x"], &body)).await
            })
        })
        .collect();
    for task in tasks {
        let outcomes = task.await.unwrap().unwrap();
        assert!(matches!(outcomes[0].1, RcptOutcome::Stored { .. }));
    }
    let commits = store.commits() - before;
    println!(
        "group commit: 200 concurrent deliveries in {commits} commits, {:?}",
        started.elapsed()
    );
    assert!(commits < 50, "200 deliveries took {commits} commits");

    // Steady state: 8 tasks delivering one after another share commits as they overlap.
    let before = store.commits();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let body = format!("message {t}-{i}");
                    store
                        .deliver(delivery(&["b@x"], &body))
                        .await
                        .expect("deliver");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "group commit: 8 tasks x 25 sequential deliveries in {} commits",
        store.commits() - before
    );
    assert_eq!(inbox_uids(&store, "a@x"), (1..=200).collect::<Vec<u32>>());
    check_consistency(&store).unwrap();
}

/// `Store::apply_soon`: requests that can wait share one commit within the delay; one that
/// cannot wait ends the wait at once and takes the waiting ones along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_can_wait_share_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db_path(dir.path())).unwrap();
    with_users(&store, &["a@x"]).await;
    let delay = Duration::from_secs(1);
    store.set_soon_delay(delay);
    let soon = |body: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .apply_soon(vec![Op::Deliver(delivery(&["a@x"], body))])
                .await
        })
    };

    let before = store.commits();
    let t0 = Instant::now();
    let first = soon("one");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = soon("two");
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(
        store.commits() - before,
        1,
        "two requests 50 ms apart, one commit"
    );
    assert!(
        t0.elapsed() >= delay,
        "they waited for the first one's delay"
    );

    let before = store.commits();
    let t0 = Instant::now();
    let waiting = soon("three");
    tokio::time::sleep(Duration::from_millis(50)).await;
    store
        .apply(vec![Op::Deliver(delivery(&["a@x"], "four"))])
        .await
        .unwrap();
    waiting.await.unwrap().unwrap();
    assert_eq!(store.commits() - before, 1, "committed together");
    assert!(
        t0.elapsed() < delay,
        "a request that cannot wait does not wait: {:?}",
        t0.elapsed()
    );
    assert_eq!(inbox_uids(&store, "a@x"), [1, 2, 3, 4]);
}

#[tokio::test]
async fn large_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let body: Vec<u8> = (0..30 << 20).map(|i: u32| (i % 251) as u8).collect();
    {
        let store = Store::open(&path).unwrap();
        with_users(&store, &["a@x"]).await;
        let mut d = delivery(&["a@x"], "");
        d.message = Bytes::from(body.clone());
        store.deliver(d).await.unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.messages("a@x", INBOX).unwrap()[0].size, 30 << 20);
    assert!(store.message_body("a@x", INBOX, 1).unwrap().unwrap() == body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_record_fails_only_its_request() {
    let store = memory_store();
    with_users(&store, &["a@x", "b@x"]).await;
    // Damage b@x's INBOX record behind the store's back.
    {
        let slot = store.inner.shared.db.read().unwrap();
        let txn = slot.as_ref().unwrap().begin_write().unwrap();
        txn.open_table(MAILBOXES)
            .unwrap()
            .insert(("b@x", INBOX), b"garbage".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            let rcpt = if i == 7 { "b@x" } else { "a@x" };
            tokio::spawn(async move { store.deliver(delivery(&[rcpt], "m")).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        if i == 7 {
            assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
        } else {
            assert!(result.is_ok(), "{result:?}");
        }
    }
    assert_eq!(store.messages("a@x", INBOX).unwrap().len(), 19);
}

#[tokio::test]
async fn io_failure_fails_the_batch_and_the_writer_recovers() {
    let backend = SimBackend::new();
    let store = Store::open_with_backend(backend.clone()).unwrap();
    with_users(&store, &["a@x"]).await;
    store.deliver(delivery(&["a@x"], "before")).await.unwrap();

    backend.set_failing(true);
    let failed = store.deliver(delivery(&["a@x"], "during")).await;
    assert!(matches!(failed, Err(StoreError::Io(_))), "{failed:?}");
    // Still failing: the reopen fails too, and so does the next write.
    assert!(store.deliver(delivery(&["a@x"], "during")).await.is_err());

    backend.set_failing(false);
    let outcome = store.deliver(delivery(&["a@x"], "after")).await.unwrap();
    let bodies: Vec<Vec<u8>> = store
        .messages("a@x", INBOX)
        .unwrap()
        .iter()
        .map(|m| store.message_body("a@x", INBOX, m.uid).unwrap().unwrap())
        .collect();
    assert_eq!(bodies, [b"before".to_vec(), b"after".to_vec()]);
    assert_eq!(uid(&outcome[0]), 2);
    check_consistency(&store).unwrap();
}

// IMAP ops: flags, expunge, copy/move, folders, subscriptions, change notifications.

fn flags_op(uids: &[u32], change: FlagChange, flags: &[&str]) -> Op {
    Op::SetFlags {
        address: "u@x".into(),
        folder: INBOX.into(),
        uids: uids.to_vec(),
        change,
        flags: flags.iter().map(|f| f.to_string()).collect(),
        unchanged_since: None,
    }
}

async fn three_messages(store: &Store) -> Vec<u32> {
    with_users(store, &["u@x"]).await;
    let mut uids = Vec::new();
    for body in ["one", "two", "three"] {
        let out = store.deliver(delivery(&["u@x"], body)).await.unwrap();
        uids.push(uid(&out[0]));
    }
    uids
}

#[tokio::test]
async fn flags_are_set_added_removed_with_modseq() {
    let store = memory_store();
    let uids = three_messages(&store).await;
    let before = store.mailbox("u@x", INBOX).unwrap().unwrap().highest_modseq;
    let r = store
        .apply_op(flags_op(
            &[uids[0], 999],
            FlagChange::Add,
            &["\\Seen", "\\Flagged"],
        ))
        .await
        .unwrap();
    let OpResult::FlagsSet(updates) = r else {
        panic!("{r:?}")
    };
    assert_eq!(updates.len(), 1, "missing uid 999 is skipped");
    assert!(updates[0].changed);
    assert_eq!(updates[0].flags, vec!["\\Seen", "\\Flagged"]);
    let after = store.mailbox("u@x", INBOX).unwrap().unwrap().highest_modseq;
    assert_eq!(after, before + 1);
    assert_eq!(updates[0].modseq, after);

    // Adding what is there changes nothing and does not bump the modseq.
    let r = store
        .apply_op(flags_op(&[uids[0]], FlagChange::Add, &["\\seen"]))
        .await
        .unwrap();
    assert!(
        matches!(&r, OpResult::FlagsSet(u) if !u[0].changed),
        "{r:?}"
    );
    assert_eq!(
        store.mailbox("u@x", INBOX).unwrap().unwrap().highest_modseq,
        after
    );

    store
        .apply_op(flags_op(&[uids[0]], FlagChange::Remove, &["\\SEEN"]))
        .await
        .unwrap();
    store
        .apply_op(flags_op(&[uids[1]], FlagChange::Replace, &["$Junk"]))
        .await
        .unwrap();
    let msgs = store.messages("u@x", INBOX).unwrap();
    assert_eq!(msgs[0].flags, vec!["\\Flagged"]);
    assert_eq!(msgs[1].flags, vec!["$Junk"]);
    assert!(msgs[2].flags.is_empty());
    assert!(msgs[1].modseq > msgs[0].modseq - 1 && msgs[1].modseq > msgs[2].modseq);
    check_consistency(&store).unwrap();
}

#[tokio::test]
async fn expunge_copy_move_share_bodies() {
    let store = memory_store();
    let uids = three_messages(&store).await;
    let trash = store.mailbox("u@x", "Trash").unwrap().unwrap();
    let r = store
        .apply_op(Op::CopyMessages {
            address: "u@x".into(),
            from: INBOX.into(),
            to: "Trash".into(),
            uids: vec![uids[2], uids[0], 77],
            remove_source: false,
        })
        .await
        .unwrap();
    assert_eq!(
        r,
        OpResult::Copied(CopyOutcome::Done {
            uidvalidity: trash.uidvalidity,
            pairs: vec![(uids[2], 1), (uids[0], 2)],
        })
    );
    // Copies share the bodies: still three.
    assert_eq!(body_count(&store), 3);
    assert_eq!(
        store.message_body("u@x", "Trash", 1).unwrap().unwrap(),
        b"three"
    );

    // Expunging the originals keeps the copies' bodies.
    let r = store
        .apply_op(Op::Expunge {
            address: "u@x".into(),
            folder: INBOX.into(),
            uids: vec![uids[0], uids[2], 55],
        })
        .await
        .unwrap();
    assert_eq!(r, OpResult::Expunged(vec![uids[0], uids[2]]));
    assert_eq!(store.mailbox("u@x", INBOX).unwrap().unwrap().exists, 1);
    assert_eq!(body_count(&store), 3);
    check_consistency(&store).unwrap();

    // Move: gone from the source, new uid in the target, same body.
    let r = store
        .apply_op(Op::CopyMessages {
            address: "u@x".into(),
            from: INBOX.into(),
            to: "Trash".into(),
            uids: vec![uids[1]],
            remove_source: true,
        })
        .await
        .unwrap();
    assert!(
        matches!(&r, OpResult::Copied(CopyOutcome::Done { pairs, .. }) if pairs == &vec![(uids[1], 3)]),
        "{r:?}"
    );
    assert!(store.messages("u@x", INBOX).unwrap().is_empty());
    assert_eq!(
        store.message_body("u@x", "Trash", 3).unwrap().unwrap(),
        b"two"
    );
    check_consistency(&store).unwrap();

    // Expunging the last references frees the bodies.
    store
        .apply_op(Op::Expunge {
            address: "u@x".into(),
            folder: "Trash".into(),
            uids: vec![1, 2, 3],
        })
        .await
        .unwrap();
    assert_eq!(body_count(&store), 0);
    let r = store
        .apply_op(Op::CopyMessages {
            address: "u@x".into(),
            from: INBOX.into(),
            to: "Nope".into(),
            uids: vec![1],
            remove_source: false,
        })
        .await
        .unwrap();
    assert_eq!(r, OpResult::Copied(CopyOutcome::NoSuchFolder));
    check_consistency(&store).unwrap();
}

#[tokio::test]
async fn folders_create_delete_rename_subscribe() {
    let store = memory_store();
    let uids = three_messages(&store).await;
    let folder = |op: &str, a: &str, b: &str| match op {
        "create" => Op::CreateFolder {
            address: "u@x".into(),
            folder: a.into(),
        },
        "delete" => Op::DeleteFolder {
            address: "u@x".into(),
            folder: a.into(),
        },
        _ => Op::RenameFolder {
            address: "u@x".into(),
            from: a.into(),
            to: b.into(),
        },
    };
    let done = OpResult::Folder(FolderOutcome::Done);
    assert_eq!(
        store.apply_op(folder("create", "Work", "")).await.unwrap(),
        done
    );
    assert_eq!(
        store.apply_op(folder("create", "Work", "")).await.unwrap(),
        OpResult::Folder(FolderOutcome::AlreadyExists)
    );
    assert_eq!(
        store
            .apply_op(folder("create", "Work/a", ""))
            .await
            .unwrap(),
        done
    );
    let work = store.mailbox("u@x", "Work").unwrap().unwrap();
    assert!(!work.subscribed);
    assert!(store.mailbox("u@x", INBOX).unwrap().unwrap().subscribed);

    // Rename keeps UIDVALIDITY and takes the folders below along.
    assert_eq!(
        store
            .apply_op(folder("rename", "Work", "Job"))
            .await
            .unwrap(),
        done
    );
    assert_eq!(
        store.mailbox("u@x", "Job").unwrap().unwrap().uidvalidity,
        work.uidvalidity
    );
    assert!(store.mailbox("u@x", "Job/a").unwrap().is_some());
    assert!(store.mailbox("u@x", "Work").unwrap().is_none());
    assert_eq!(
        store.apply_op(folder("rename", "Nope", "X")).await.unwrap(),
        OpResult::Folder(FolderOutcome::NoSuchFolder)
    );

    // Delete and create again: a new UIDVALIDITY.
    assert_eq!(
        store.apply_op(folder("delete", "Job", "")).await.unwrap(),
        done
    );
    assert_eq!(
        store.apply_op(folder("create", "Job", "")).await.unwrap(),
        done
    );
    let again = store.mailbox("u@x", "Job").unwrap().unwrap();
    assert_ne!(again.uidvalidity, work.uidvalidity);

    // Renaming INBOX moves its messages and leaves an empty INBOX with a new UIDVALIDITY.
    let inbox = store.mailbox("u@x", INBOX).unwrap().unwrap();
    assert_eq!(
        store
            .apply_op(folder("rename", INBOX, "Old"))
            .await
            .unwrap(),
        done
    );
    let old = store.messages("u@x", "Old").unwrap();
    assert_eq!(old.iter().map(|m| m.uid).collect::<Vec<_>>(), uids);
    let new_inbox = store.mailbox("u@x", INBOX).unwrap().unwrap();
    assert_eq!(new_inbox.exists, 0);
    assert_ne!(new_inbox.uidvalidity, inbox.uidvalidity);

    // Deleting a folder with messages frees their bodies.
    assert_eq!(
        store.apply_op(folder("delete", "Old", "")).await.unwrap(),
        done
    );
    assert_eq!(body_count(&store), 0);

    let sub = |f: &str, on: bool| Op::Subscribe {
        address: "u@x".into(),
        folder: f.into(),
        subscribed: on,
    };
    assert_eq!(
        store.apply_op(sub("Job", true)).await.unwrap(),
        OpResult::Subscribed(true)
    );
    assert!(store.mailbox("u@x", "Job").unwrap().unwrap().subscribed);
    assert_eq!(
        store.apply_op(sub("None", true)).await.unwrap(),
        OpResult::Subscribed(false)
    );
    let names: Vec<String> = store
        .folder_infos("u@x")
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        ["Drafts", "INBOX", "Job", "Job/a", "Junk", "Sent", "Trash"]
    );
    check_consistency(&store).unwrap();
}

#[tokio::test]
async fn changes_are_announced_after_commit() {
    let store = memory_store();
    with_users(&store, &["u@x", "v@x"]).await;
    let mut changes = store.changes();
    store
        .deliver(delivery(&["u@x", "v@x"], "hello"))
        .await
        .unwrap();
    let mut got = [changes.recv().await.unwrap(), changes.recv().await.unwrap()];
    got.sort_by(|a, b| a.address.cmp(&b.address));
    assert_eq!(got[0].address, "u@x");
    assert_eq!(got[0].folder, INBOX);
    assert_eq!(got[1].address, "v@x");
    // The snapshot a listener opens on the notification has the change.
    assert_eq!(store.messages("u@x", INBOX).unwrap().len(), 1);

    store
        .apply_op(flags_op(&[1], FlagChange::Add, &["\\Seen"]))
        .await
        .unwrap();
    let c = changes.recv().await.unwrap();
    assert_eq!((c.address.as_str(), c.folder.as_str()), ("u@x", INBOX));
    // A no-op change announces nothing; the next real one is the next message.
    store
        .apply_op(flags_op(&[1], FlagChange::Add, &["\\Seen"]))
        .await
        .unwrap();
    store
        .apply_op(Op::Expunge {
            address: "v@x".into(),
            folder: INBOX.into(),
            uids: vec![1],
        })
        .await
        .unwrap();
    let c = changes.recv().await.unwrap();
    assert_eq!(c.address, "v@x");
    assert!(changes.try_recv().is_err());
}

#[tokio::test]
async fn unchanged_since_refuses_messages_changed_later() {
    let store = memory_store();
    let uids = three_messages(&store).await;
    store
        .apply_op(flags_op(&[uids[1]], FlagChange::Add, &["\\Seen"]))
        .await
        .unwrap();
    let msgs = store.messages("u@x", INBOX).unwrap();
    let since = msgs[0].modseq;
    assert!(msgs[1].modseq > since);
    let op = Op::SetFlags {
        address: "u@x".into(),
        folder: INBOX.into(),
        uids: uids.clone(),
        change: FlagChange::Add,
        flags: vec!["\\Flagged".into()],
        unchanged_since: Some(msgs[2].modseq),
    };
    let OpResult::FlagsSet(updates) = store.apply_op(op).await.unwrap() else {
        panic!()
    };
    let refused: Vec<u32> = updates
        .iter()
        .filter(|u| u.refused)
        .map(|u| u.uid)
        .collect();
    assert_eq!(refused, vec![uids[1]]);
    let msgs = store.messages("u@x", INBOX).unwrap();
    assert_eq!(msgs[0].flags, vec!["\\Flagged"]);
    assert_eq!(msgs[1].flags, vec!["\\Seen"]);
    assert_eq!(msgs[2].flags, vec!["\\Flagged"]);
}

/// `bench/ceiling.patch` (BENCHMARKS.md, the ceiling comparison) changes how `configure`
/// commits; it has to keep applying as the store changes, or the benchmark's instructions
/// break. Each hunk's old side must still be in the file, as `git apply` needs.
#[test]
fn the_bench_ceiling_patch_still_applies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let patch = std::fs::read_to_string(root.join("bench/ceiling.patch")).unwrap();
    assert!(patch.contains("+++ b/src/store/tables.rs"));
    let target = std::fs::read_to_string(root.join("src/store/tables.rs")).unwrap();
    let mut hunks = 0;
    for hunk in patch.split("\n@@ ").skip(1) {
        let old: Vec<&str> = hunk
            .lines()
            .skip(1)
            .filter(|l| l.starts_with(' ') || l.starts_with('-'))
            .map(|l| &l[1..])
            .collect();
        assert!(
            target.contains(&old.join("\n")),
            "bench/ceiling.patch no longer applies to src/store/tables.rs: make its change by \
             hand and save `git diff src/store/tables.rs` as the patch"
        );
        hunks += 1;
    }
    assert_eq!(hunks, 1);
}
