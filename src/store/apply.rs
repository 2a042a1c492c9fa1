//! Applying ops inside the writer's transaction.
//!
//! Each op first checks everything that decides its logical outcome (user exists, item exists,
//! duplicate) and only then writes, so such an outcome never leaves half an op behind. Errors
//! abort the whole transaction (see writer.rs).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{ReadableTable, Table, WriteTransaction};

use super::tables::{
    self, BODIES, BODY_CHUNK, BODY_REFS, COUNTERS, DEDUPE, LAST_UIDVALIDITY, MAILBOXES, MESSAGES,
    MailboxRec, MessageRec, NEXT_BODY, NEXT_MAILBOX, QUEUE, QueueRec, SECRETS, USERS, UserRec,
    decode, encode,
};
use super::{
    CopyOutcome, DEFAULT_FOLDERS, FlagChange, FlagUpdate, FolderOutcome, LocalDelivery,
    NewQueueItem, Op, OpResult, QueueItem, QueueRcpt, RcptOutcome, RcptStatus, StoreError,
};

/// The store's tables, opened once per write transaction.
pub(super) struct Tables<'txn> {
    users: Table<'txn, &'static str, &'static [u8]>,
    mailboxes: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    messages: Table<'txn, (u64, u32), &'static [u8]>,
    bodies: Table<'txn, (u64, u32), &'static [u8]>,
    body_refs: Table<'txn, u64, u64>,
    queue: Table<'txn, &'static str, &'static [u8]>,
    dedupe: Table<'txn, (&'static str, &'static str, &'static str), i64>,
    secrets: Table<'txn, &'static str, &'static [u8]>,
    counters: Table<'txn, &'static str, u64>,
    known_domains: Table<'txn, &'static str, (u8, i64)>,
    /// (address, folder) pairs changed so far, for the change notifications sent after the
    /// commit.
    pub touched: Vec<(String, String)>,
}

impl<'txn> Tables<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            users: txn.open_table(USERS)?,
            mailboxes: txn.open_table(MAILBOXES)?,
            messages: txn.open_table(MESSAGES)?,
            bodies: txn.open_table(BODIES)?,
            body_refs: txn.open_table(BODY_REFS)?,
            queue: txn.open_table(QUEUE)?,
            dedupe: txn.open_table(DEDUPE)?,
            secrets: txn.open_table(SECRETS)?,
            counters: txn.open_table(COUNTERS)?,
            known_domains: txn.open_table(super::tables::KNOWN_DOMAINS)?,
            touched: Vec::new(),
        })
    }

    /// Applies the ops of one request, in order.
    pub fn apply_request(&mut self, ops: &[Op]) -> Result<Vec<OpResult>, StoreError> {
        // Bodies written by this request, so that equal bytes are stored once.
        let mut written: Vec<(Bytes, u64)> = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let result = match op {
                Op::Deliver(delivery) => self.deliver(delivery, &mut written)?,
                Op::Enqueue(item) => self.enqueue(item, &mut written)?,
                Op::UpdateQueue(item) => self.update_queue(item)?,
                Op::RemoveQueue { id } => self.remove_queue(id)?,
                Op::AddUser {
                    address,
                    password_hash,
                } => self.add_user(address, password_hash)?,
                Op::SetPassword {
                    address,
                    password_hash,
                } => self.set_password(address, password_hash)?,
                Op::DeleteUser { address } => self.delete_user(address)?,
                Op::PutSecret {
                    name,
                    value,
                    only_if_absent,
                } => self.put_secret(name, value, *only_if_absent)?,
                Op::PruneDedupe { older_than } => self.prune_dedupe(*older_than)?,
                Op::LearnDomains { entries } => {
                    for k in entries {
                        self.known_domains
                            .insert(k.domain.as_str(), (k.evidence, k.last_seen))?;
                    }
                    OpResult::Learned(entries.len() as u64)
                }
                Op::RecordDedupe {
                    key,
                    recipients,
                    at,
                } => {
                    for rcpt in recipients {
                        self.dedupe.insert(
                            (key.domain.as_str(), key.mail_id.as_str(), rcpt.as_str()),
                            *at,
                        )?;
                    }
                    OpResult::Recorded(recipients.len() as u64)
                }
                Op::SetFlags {
                    address,
                    folder,
                    uids,
                    change,
                    flags,
                    unchanged_since,
                } => self.set_flags(address, folder, uids, *change, flags, *unchanged_since)?,
                Op::Expunge {
                    address,
                    folder,
                    uids,
                } => self.expunge(address, folder, uids)?,
                Op::CopyMessages {
                    address,
                    from,
                    to,
                    uids,
                    remove_source,
                } => self.copy_messages(address, from, to, uids, *remove_source)?,
                Op::CreateFolder { address, folder } => self.create_folder(address, folder)?,
                Op::DeleteFolder { address, folder } => self.delete_folder(address, folder)?,
                Op::RenameFolder { address, from, to } => self.rename_folder(address, from, to)?,
                Op::Subscribe {
                    address,
                    folder,
                    subscribed,
                } => self.subscribe(address, folder, *subscribed)?,
                Op::ClaimRecent { address, folder } => self.claim_recent(address, folder)?,
            };
            results.push(result);
        }
        Ok(results)
    }

    fn deliver(
        &mut self,
        d: &LocalDelivery,
        written: &mut Vec<(Bytes, u64)>,
    ) -> Result<OpResult, StoreError> {
        let mut outcomes = Vec::with_capacity(d.recipients.len());
        for rcpt in &d.recipients {
            let outcome = self.deliver_one(d, rcpt, written)?;
            outcomes.push((rcpt.clone(), outcome));
        }
        Ok(OpResult::Delivered(outcomes))
    }

    fn deliver_one(
        &mut self,
        d: &LocalDelivery,
        rcpt: &str,
        written: &mut Vec<(Bytes, u64)>,
    ) -> Result<RcptOutcome, StoreError> {
        if self.users.get(rcpt)?.is_none() {
            return Ok(RcptOutcome::NoSuchUser);
        }
        let Some(mut mailbox) = tables::get_mailbox(&self.mailboxes, rcpt, &d.folder)? else {
            return Ok(RcptOutcome::NoSuchFolder);
        };
        if let Some(key) = &d.dedupe {
            let dedupe_key = (key.domain.as_str(), key.mail_id.as_str(), rcpt);
            if self.dedupe.get(dedupe_key)?.is_some() {
                return Ok(RcptOutcome::Duplicate);
            }
        }
        let uid = mailbox.uidnext;
        let (Some(uidnext), Some(exists)) = (uid.checked_add(1), mailbox.exists.checked_add(1))
        else {
            return Err(StoreError::Invalid(format!(
                "folder {} of {rcpt} has used up its UIDs",
                d.folder
            )));
        };

        let body = self.share_body(&d.message, written)?;
        mailbox.highest_modseq += 1;
        let rec = MessageRec {
            size: d.message.len() as u64,
            internal_date: d.internal_date,
            flags: d.flags.clone(),
            body,
            modseq: mailbox.highest_modseq,
        };
        self.messages
            .insert((mailbox.id, uid), encode(&rec)?.as_slice())?;
        mailbox.uidnext = uidnext;
        mailbox.exists = exists;
        self.put_mailbox(rcpt, &d.folder, &mailbox)?;
        self.touch(rcpt, &d.folder);
        if let Some(key) = &d.dedupe {
            let dedupe_key = (key.domain.as_str(), key.mail_id.as_str(), rcpt);
            self.dedupe.insert(dedupe_key, d.internal_date)?;
        }
        Ok(RcptOutcome::Stored { uid })
    }

    fn enqueue(
        &mut self,
        item: &NewQueueItem,
        written: &mut Vec<(Bytes, u64)>,
    ) -> Result<OpResult, StoreError> {
        if self.queue.get(item.id.as_str())?.is_some() {
            return Ok(OpResult::Enqueued(false));
        }
        let body = self.share_body(&item.message, written)?;
        let rec = QueueRec {
            origin: item.origin.clone(),
            sender: item.sender.clone(),
            recipients: item
                .recipients
                .iter()
                .map(|address| QueueRcpt {
                    address: address.clone(),
                    status: RcptStatus::Pending,
                    last_error: None,
                })
                .collect(),
            created: item.created,
            next_attempt: item.next_attempt,
            expires: item.expires,
            attempts: 0,
            size: item.message.len() as u64,
            body,
        };
        self.queue
            .insert(item.id.as_str(), encode(&rec)?.as_slice())?;
        Ok(OpResult::Enqueued(true))
    }

    fn update_queue(&mut self, item: &QueueItem) -> Result<OpResult, StoreError> {
        let Some(old) = self.queue.get(item.id.as_str())? else {
            return Ok(OpResult::Updated(false));
        };
        let mut rec: QueueRec = decode("queue item", old.value())?;
        drop(old);
        rec.recipients = item.recipients.clone();
        rec.attempts = item.attempts;
        rec.next_attempt = item.next_attempt;
        self.queue
            .insert(item.id.as_str(), encode(&rec)?.as_slice())?;
        Ok(OpResult::Updated(true))
    }

    fn remove_queue(&mut self, id: &str) -> Result<OpResult, StoreError> {
        let body = match self.queue.get(id)? {
            Some(old) => decode::<QueueRec>("queue item", old.value())?.body,
            None => return Ok(OpResult::Removed(false)),
        };
        self.queue.remove(id)?;
        self.release_body(body)?;
        Ok(OpResult::Removed(true))
    }

    fn add_user(&mut self, address: &str, password_hash: &str) -> Result<OpResult, StoreError> {
        if self.users.get(address)?.is_some() {
            return Ok(OpResult::UserAdded(false));
        }
        let rec = UserRec {
            password_hash: password_hash.to_owned(),
        };
        self.users.insert(address, encode(&rec)?.as_slice())?;
        for folder in DEFAULT_FOLDERS {
            let mailbox = self.new_mailbox(true)?;
            self.put_mailbox(address, folder, &mailbox)?;
        }
        Ok(OpResult::UserAdded(true))
    }

    fn set_password(&mut self, address: &str, password_hash: &str) -> Result<OpResult, StoreError> {
        if self.users.get(address)?.is_none() {
            return Ok(OpResult::PasswordSet(false));
        }
        let rec = UserRec {
            password_hash: password_hash.to_owned(),
        };
        self.users.insert(address, encode(&rec)?.as_slice())?;
        Ok(OpResult::PasswordSet(true))
    }

    fn delete_user(&mut self, address: &str) -> Result<OpResult, StoreError> {
        if self.users.get(address)?.is_none() {
            return Ok(OpResult::UserDeleted(false));
        }
        // Read everything to remove first: a table cannot be changed while iterated.
        let folders = tables::folders_of(&self.mailboxes, address)?;
        for (folder, mailbox) in folders {
            let mut messages = Vec::new();
            for entry in self
                .messages
                .range((mailbox.id, 0)..=(mailbox.id, u32::MAX))?
            {
                let (key, rec) = entry?;
                let rec: MessageRec = decode("message", rec.value())?;
                messages.push((key.value().1, rec.body));
            }
            for (uid, body) in messages {
                self.messages.remove((mailbox.id, uid))?;
                self.release_body(body)?;
            }
            self.mailboxes.remove((address, folder.as_str()))?;
            self.touch(address, &folder);
        }
        self.users.remove(address)?;
        Ok(OpResult::UserDeleted(true))
    }

    fn put_secret(
        &mut self,
        name: &str,
        value: &[u8],
        only_if_absent: bool,
    ) -> Result<OpResult, StoreError> {
        if only_if_absent && let Some(old) = self.secrets.get(name)? {
            return Ok(OpResult::Secret(old.value().to_vec()));
        }
        self.secrets.insert(name, value)?;
        Ok(OpResult::Secret(value.to_vec()))
    }

    fn prune_dedupe(&mut self, older_than: i64) -> Result<OpResult, StoreError> {
        let mut removed = 0;
        self.dedupe.retain(|_, at| {
            let keep = at >= older_than;
            if !keep {
                removed += 1;
            }
            keep
        })?;
        Ok(OpResult::Pruned(removed))
    }

    fn put_mailbox(
        &mut self,
        address: &str,
        folder: &str,
        mailbox: &MailboxRec,
    ) -> Result<(), StoreError> {
        self.mailboxes
            .insert((address, folder), encode(mailbox)?.as_slice())?;
        Ok(())
    }

    /// Returns a body id holding `message` with one more reference: the body this request
    /// already wrote with the same bytes, or a new one.
    fn share_body(
        &mut self,
        message: &Bytes,
        written: &mut Vec<(Bytes, u64)>,
    ) -> Result<u64, StoreError> {
        let id = match written.iter().find(|(bytes, _)| bytes == message) {
            Some((_, id)) => *id,
            None => {
                let id = self.next_counter(NEXT_BODY)?;
                self.write_body(id, message)?;
                written.push((message.clone(), id));
                id
            }
        };
        let refs = self.body_refs.get(id)?.map_or(0, |r| r.value());
        self.body_refs.insert(id, refs + 1)?;
        Ok(id)
    }

    fn write_body(&mut self, id: u64, message: &[u8]) -> Result<(), StoreError> {
        if message.is_empty() {
            self.bodies.insert((id, 0), [].as_slice())?;
        }
        for (index, chunk) in message.chunks(BODY_CHUNK).enumerate() {
            let index = u32::try_from(index)
                .map_err(|_| StoreError::Invalid("message too large".into()))?;
            self.bodies.insert((id, index), chunk)?;
        }
        Ok(())
    }

    /// Drops one reference to a body, and the body with its last one.
    fn release_body(&mut self, id: u64) -> Result<(), StoreError> {
        let refs = self.body_refs.get(id)?.map_or(0, |r| r.value());
        if refs > 1 {
            self.body_refs.insert(id, refs - 1)?;
        } else {
            self.body_refs.remove(id)?;
            self.bodies
                .retain_in((id, 0)..=(id, u32::MAX), |_, _| false)?;
        }
        Ok(())
    }

    fn next_counter(&mut self, name: &str) -> Result<u64, StoreError> {
        let value = self.counters.get(name)?.map_or(1, |v| v.value());
        self.counters.insert(name, value + 1)?;
        Ok(value)
    }

    /// UIDVALIDITY values grow across all folders and start from the clock, so a folder
    /// deleted and created again (even after the file was replaced) gets a new one.
    fn next_uidvalidity(&mut self) -> Result<u32, StoreError> {
        let last = self
            .counters
            .get(LAST_UIDVALIDITY)?
            .map_or(0, |v| v.value());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let next = (last + 1).max(now);
        let Ok(value) = u32::try_from(next) else {
            return Err(StoreError::Invalid("UIDVALIDITY values are used up".into()));
        };
        self.counters.insert(LAST_UIDVALIDITY, next)?;
        Ok(value)
    }
}

/// The folder operations of IMAP.
impl Tables<'_> {
    fn touch(&mut self, address: &str, folder: &str) {
        if !self
            .touched
            .iter()
            .any(|(a, f)| a == address && f == folder)
        {
            self.touched.push((address.to_owned(), folder.to_owned()));
        }
    }

    fn new_mailbox(&mut self, subscribed: bool) -> Result<MailboxRec, StoreError> {
        Ok(MailboxRec {
            id: self.next_counter(NEXT_MAILBOX)?,
            uidvalidity: self.next_uidvalidity()?,
            uidnext: 1,
            exists: 0,
            highest_modseq: 0,
            subscribed,
            first_recent: 0,
        })
    }

    fn message(&self, mailbox: u64, uid: u32) -> Result<Option<MessageRec>, StoreError> {
        match self.messages.get((mailbox, uid))? {
            Some(rec) => decode("message", rec.value()).map(Some),
            None => Ok(None),
        }
    }

    fn set_flags(
        &mut self,
        address: &str,
        folder: &str,
        uids: &[u32],
        change: FlagChange,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<OpResult, StoreError> {
        let Some(mut mailbox) = tables::get_mailbox(&self.mailboxes, address, folder)? else {
            return Ok(OpResult::FlagsSet(Vec::new()));
        };
        let modseq = mailbox.highest_modseq + 1;
        let mut out = Vec::new();
        let mut any = false;
        for &uid in uids {
            let Some(mut rec) = self.message(mailbox.id, uid)? else {
                continue;
            };
            if unchanged_since.is_some_and(|since| rec.modseq > since) {
                out.push(FlagUpdate {
                    uid,
                    flags: rec.flags,
                    modseq: rec.modseq,
                    changed: false,
                    refused: true,
                });
                continue;
            }
            let new = changed_flags(&rec.flags, change, flags);
            let changed = !same_flags(&new, &rec.flags);
            if changed {
                rec.flags = new;
                rec.modseq = modseq;
                self.messages
                    .insert((mailbox.id, uid), encode(&rec)?.as_slice())?;
                any = true;
            }
            out.push(FlagUpdate {
                uid,
                flags: rec.flags,
                modseq: rec.modseq,
                changed,
                refused: false,
            });
        }
        if any {
            mailbox.highest_modseq = modseq;
            self.put_mailbox(address, folder, &mailbox)?;
            self.touch(address, folder);
        }
        Ok(OpResult::FlagsSet(out))
    }

    fn expunge(
        &mut self,
        address: &str,
        folder: &str,
        uids: &[u32],
    ) -> Result<OpResult, StoreError> {
        let Some(mut mailbox) = tables::get_mailbox(&self.mailboxes, address, folder)? else {
            return Ok(OpResult::Expunged(Vec::new()));
        };
        let mut removed = Vec::new();
        for &uid in uids {
            let Some(rec) = self.message(mailbox.id, uid)? else {
                continue;
            };
            self.messages.remove((mailbox.id, uid))?;
            self.release_body(rec.body)?;
            removed.push(uid);
        }
        if !removed.is_empty() {
            mailbox.exists = mailbox.exists.saturating_sub(removed.len() as u32);
            mailbox.highest_modseq += 1;
            self.put_mailbox(address, folder, &mailbox)?;
            self.touch(address, folder);
        }
        Ok(OpResult::Expunged(removed))
    }

    fn copy_messages(
        &mut self,
        address: &str,
        from: &str,
        to: &str,
        uids: &[u32],
        remove_source: bool,
    ) -> Result<OpResult, StoreError> {
        let Some(mut source) = tables::get_mailbox(&self.mailboxes, address, from)? else {
            return Ok(OpResult::Copied(CopyOutcome::NoSuchFolder));
        };
        let Some(mut target) = tables::get_mailbox(&self.mailboxes, address, to)? else {
            return Ok(OpResult::Copied(CopyOutcome::NoSuchFolder));
        };
        // Moving into the same folder changes nothing. (Copying into it is a copy like any
        // other; the source record is then the target's, see below.)
        if source.id == target.id && remove_source {
            return Ok(OpResult::Copied(CopyOutcome::Done {
                uidvalidity: target.uidvalidity,
                pairs: Vec::new(),
            }));
        }
        let mut found = Vec::new();
        for &uid in uids {
            if let Some(rec) = self.message(source.id, uid)? {
                found.push((uid, rec));
            }
        }
        let Some(count) = u32::try_from(found.len())
            .ok()
            .filter(|n| target.uidnext.checked_add(*n).is_some())
        else {
            return Err(StoreError::Invalid(format!(
                "folder {to} of {address} has used up its UIDs"
            )));
        };
        if found.is_empty() {
            return Ok(OpResult::Copied(CopyOutcome::Done {
                uidvalidity: target.uidvalidity,
                pairs: Vec::new(),
            }));
        }
        target.highest_modseq += 1;
        let mut pairs = Vec::with_capacity(found.len());
        for (uid, rec) in &found {
            let new_uid = target.uidnext;
            target.uidnext += 1;
            let copy = MessageRec {
                size: rec.size,
                internal_date: rec.internal_date,
                flags: rec.flags.clone(),
                body: rec.body,
                modseq: target.highest_modseq,
            };
            self.messages
                .insert((target.id, new_uid), encode(&copy)?.as_slice())?;
            let refs = self.body_refs.get(rec.body)?.map_or(0, |r| r.value());
            self.body_refs.insert(rec.body, refs + 1)?;
            pairs.push((*uid, new_uid));
        }
        target.exists = target.exists.saturating_add(count);
        if source.id == target.id {
            source = target.clone();
        }
        self.put_mailbox(address, to, &target)?;
        self.touch(address, to);
        if remove_source {
            for (uid, rec) in &found {
                self.messages.remove((source.id, *uid))?;
                self.release_body(rec.body)?;
            }
            source.exists = source.exists.saturating_sub(count);
            source.highest_modseq += 1;
            self.put_mailbox(address, from, &source)?;
            self.touch(address, from);
        }
        Ok(OpResult::Copied(CopyOutcome::Done {
            uidvalidity: target.uidvalidity,
            pairs,
        }))
    }

    fn create_folder(&mut self, address: &str, folder: &str) -> Result<OpResult, StoreError> {
        if self.users.get(address)?.is_none() {
            return Ok(OpResult::Folder(FolderOutcome::NoSuchUser));
        }
        if tables::get_mailbox(&self.mailboxes, address, folder)?.is_some() {
            return Ok(OpResult::Folder(FolderOutcome::AlreadyExists));
        }
        let mailbox = self.new_mailbox(false)?;
        self.put_mailbox(address, folder, &mailbox)?;
        self.touch(address, folder);
        Ok(OpResult::Folder(FolderOutcome::Done))
    }

    fn delete_folder(&mut self, address: &str, folder: &str) -> Result<OpResult, StoreError> {
        let Some(mailbox) = tables::get_mailbox(&self.mailboxes, address, folder)? else {
            return Ok(OpResult::Folder(FolderOutcome::NoSuchFolder));
        };
        self.remove_messages(mailbox.id)?;
        self.mailboxes.remove((address, folder))?;
        self.touch(address, folder);
        Ok(OpResult::Folder(FolderOutcome::Done))
    }

    fn remove_messages(&mut self, mailbox: u64) -> Result<(), StoreError> {
        let mut messages = Vec::new();
        for entry in self.messages.range((mailbox, 0)..=(mailbox, u32::MAX))? {
            let (key, rec) = entry?;
            let rec: MessageRec = decode("message", rec.value())?;
            messages.push((key.value().1, rec.body));
        }
        for (uid, body) in messages {
            self.messages.remove((mailbox, uid))?;
            self.release_body(body)?;
        }
        Ok(())
    }

    /// Renames `from` and the folders below it (`from/...`). INBOX is special (RFC 3501
    /// §6.3.5): its messages move to the new folder and an empty INBOX takes its place.
    fn rename_folder(
        &mut self,
        address: &str,
        from: &str,
        to: &str,
    ) -> Result<OpResult, StoreError> {
        let Some(mailbox) = tables::get_mailbox(&self.mailboxes, address, from)? else {
            return Ok(OpResult::Folder(FolderOutcome::NoSuchFolder));
        };
        if tables::get_mailbox(&self.mailboxes, address, to)?.is_some() {
            return Ok(OpResult::Folder(FolderOutcome::AlreadyExists));
        }
        let mut moves = vec![(from.to_owned(), to.to_owned(), mailbox)];
        if from != super::INBOX {
            let prefix = format!("{from}/");
            for (name, rec) in tables::folders_of(&self.mailboxes, address)? {
                if let Some(rest) = name.strip_prefix(&prefix) {
                    let new = format!("{to}/{rest}");
                    if tables::get_mailbox(&self.mailboxes, address, &new)?.is_some() {
                        return Ok(OpResult::Folder(FolderOutcome::AlreadyExists));
                    }
                    moves.push((name, new, rec));
                }
            }
        }
        for (old, new, rec) in moves {
            self.mailboxes.remove((address, old.as_str()))?;
            self.put_mailbox(address, &new, &rec)?;
            self.touch(address, &old);
            self.touch(address, &new);
        }
        if from == super::INBOX {
            let inbox = self.new_mailbox(true)?;
            self.put_mailbox(address, super::INBOX, &inbox)?;
        }
        Ok(OpResult::Folder(FolderOutcome::Done))
    }

    fn subscribe(
        &mut self,
        address: &str,
        folder: &str,
        subscribed: bool,
    ) -> Result<OpResult, StoreError> {
        let Some(mut mailbox) = tables::get_mailbox(&self.mailboxes, address, folder)? else {
            return Ok(OpResult::Subscribed(false));
        };
        mailbox.subscribed = subscribed;
        self.put_mailbox(address, folder, &mailbox)?;
        Ok(OpResult::Subscribed(true))
    }

    /// Hands the messages that arrived since the last claim to the caller (IMAP \Recent):
    /// the uids from the old first-recent uid up to UIDNEXT; the next claim starts there.
    fn claim_recent(&mut self, address: &str, folder: &str) -> Result<OpResult, StoreError> {
        let Some(mut mailbox) = tables::get_mailbox(&self.mailboxes, address, folder)? else {
            return Ok(OpResult::RecentClaimed(None));
        };
        let from = mailbox.first_recent;
        let to = mailbox.uidnext;
        if from < to {
            mailbox.first_recent = to;
            self.put_mailbox(address, folder, &mailbox)?;
        }
        Ok(OpResult::RecentClaimed(Some((from, to))))
    }
}

/// The flags after applying `change` with `flags` to `old` (no duplicates, order kept).
fn changed_flags(old: &[String], change: FlagChange, flags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = match change {
        FlagChange::Replace => Vec::new(),
        FlagChange::Add | FlagChange::Remove => old.to_vec(),
    };
    match change {
        FlagChange::Replace | FlagChange::Add => {
            for f in flags {
                if !out.iter().any(|o| o.eq_ignore_ascii_case(f)) {
                    out.push(f.clone());
                }
            }
        }
        FlagChange::Remove => out.retain(|o| !flags.iter().any(|f| f.eq_ignore_ascii_case(o))),
    }
    out
}

fn same_flags(a: &[String], b: &[String]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|x| b.iter().any(|y| y.eq_ignore_ascii_case(x)))
}
