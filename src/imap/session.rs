//! One IMAP session: the RFC 3501 state machine (not authenticated, authenticated, selected)
//! and the commands, over the store. The selected folder is a snapshot of (uid, flags) in
//! sequence order; store change notifications mark it stale, and it is brought up to date
//! (untagged EXISTS, FETCH FLAGS, EXPUNGE) before each tagged reply and during IDLE.
//!
//! CONDSTORE (RFC 7162) rests on the store's modification sequences: HIGHESTMODSEQ at
//! SELECT, FETCH MODSEQ and CHANGEDSINCE, STORE UNCHANGEDSINCE (`OK [MODIFIED ...]`),
//! SEARCH MODSEQ and STATUS HIGHESTMODSEQ. QRESYNC is not offered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::command::{
    Command, CommandBody, FetchModifier, SelectParameter, StoreModifier,
};
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::{AuthenticateDataCodec, CommandCodec, IdleDoneCodec};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use super::fetch::{self, Fetched, flag_list, string};
use super::search::{self, Candidate, Context};
use super::{Conn, ConnEnd, Imap, auth, utf7};
use crate::store::{
    CopyOutcome, FlagChange, FolderOutcome, INBOX, LocalDelivery, MailboxChange, MessageMeta, Op,
    OpResult, RcptOutcome, StoreError,
};

/// The hierarchy delimiter of folder names.
const DELIMITER: char = '/';
/// Output is sent once it reaches this size, so a big FETCH is not held in memory whole.
const FLUSH_BYTES: usize = 1 << 20;

const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

enum Flow {
    Continue,
    Logout,
}

/// Runs a session on `conn` until the client logs out or the connection ends.
pub(super) async fn run(imap: Arc<Imap>, mut conn: Conn, peer: SocketAddr) -> Result<(), ConnEnd> {
    let mut s = Session {
        changes: imap.core.store.changes(),
        cfg: imap.core.cfg.get(),
        imap,
        peer,
        user: None,
        selected: None,
        condstore: false,
    };
    let greeting = format!(
        "* OK [CAPABILITY {}] xmta IMAP ready\r\n",
        s.capabilities(conn.tls)
    );
    conn.write(greeting.as_bytes()).await?;
    loop {
        match conn.next_message(s.idle_timeout()).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(ConnEnd::Idle) => {
                let _ = conn.write(b"* BYE autologout: idle for too long\r\n").await;
                return Err(ConnEnd::Idle);
            }
            Err(e) => return Err(e),
        }
        let cmd = match conn.frag.decode_message(&CommandCodec::default()) {
            Ok(cmd) => cmd.into_static(),
            Err(e) => {
                let reason = decode_error(&e);
                let tag = conn.tag();
                debug!(peer = %s.peer, %reason, "imap: bad command");
                conn.write(format!("{tag} BAD {reason}\r\n").as_bytes())
                    .await?;
                continue;
            }
        };
        match s.command(cmd, &mut conn).await? {
            Flow::Continue => {}
            Flow::Logout => return Ok(()),
        }
    }
}

fn decode_error<C: imap_codec::decode::Decoder>(
    e: &imap_codec::fragmentizer::DecodeMessageError<'_, C>,
) -> &'static str {
    use imap_codec::fragmentizer::DecodeMessageError as E;
    match e {
        E::DecodingFailure(_) => "syntax error, unknown command or invalid arguments",
        E::DecodingRemainder { .. } => "unexpected data after the command",
        E::MessageTooLong { .. } => "command too long",
        E::MessagePoisoned { .. } => "command refused",
    }
}

struct Session {
    imap: Arc<Imap>,
    /// The config in force when the connection was accepted (a SIGHUP counts for new
    /// connections).
    cfg: Arc<crate::config::Config>,
    peer: SocketAddr,
    user: Option<String>,
    selected: Option<Selected>,
    changes: broadcast::Receiver<MailboxChange>,
    /// CONDSTORE is in use (RFC 7162 §3.1): flag updates then carry MODSEQ.
    condstore: bool,
}

struct Selected {
    folder: String,
    read_only: bool,
    uidvalidity: u32,
    /// In sequence order (= uid order).
    msgs: Vec<Msg>,
    /// A change was announced that the snapshot does not have yet.
    stale: bool,
    /// The uid ranges `[from, to)` this session claimed as \Recent (RFC 3501 §2.3.2).
    claimed: Vec<(u32, u32)>,
    /// Messages from this uid on were not claimed by this session yet.
    claimed_to: u32,
}

impl Selected {
    fn claimed(&self, uid: u32) -> bool {
        self.claimed.iter().any(|&(a, b)| a <= uid && uid < b)
    }
}

struct Msg {
    meta: MessageMeta,
    /// Expunged by another session; still numbered until an EXPUNGE may be sent.
    expunged: bool,
    /// \Recent in this session.
    recent: bool,
}

type Reply = Result<String, ConnEnd>;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The store's (UTF-8) name of a client's (modified UTF-7) mailbox name; `Err` is the reply.
fn mailbox_name(m: &Mailbox<'_>) -> Result<String, String> {
    match m {
        Mailbox::Inbox => Ok(INBOX.to_owned()),
        Mailbox::Other(o) => {
            let name = utf7::decode(o.as_ref()).map_err(|e| format!("BAD {e}"))?;
            let name = name.trim_end_matches(DELIMITER).to_owned();
            if name.eq_ignore_ascii_case(INBOX) {
                Ok(INBOX.to_owned())
            } else {
                Ok(name)
            }
        }
    }
}

/// A folder name as clients see it: modified UTF-7, as an IMAP string.
fn write_name(out: &mut Vec<u8>, name: &str) {
    string(out, utf7::encode(name).as_bytes());
}

/// The flags of a message as a FETCH list, \Recent included when it is recent here.
fn shown_flags(flags: &[String], recent: bool) -> String {
    if recent {
        let mut f = flags.to_vec();
        f.push("\\Recent".into());
        flag_list(&f)
    } else {
        flag_list(flags)
    }
}

fn flag_strings(flags: &[Flag<'_>]) -> Vec<String> {
    flags.iter().map(|f| f.to_string()).collect()
}

fn special_use(folder: &str) -> Option<&'static str> {
    match folder {
        "Sent" => Some("\\Sent"),
        "Drafts" => Some("\\Drafts"),
        "Trash" => Some("\\Trash"),
        "Junk" => Some("\\Junk"),
        _ => None,
    }
}

/// IMAP LIST pattern matching: `*` matches anything, `%` anything but the delimiter.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard(rest, &name[i..])),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != DELIMITER as u8)
            .any(|i| wildcard(rest, &name[i..])),
        Some((c, rest)) => name.first() == Some(c) && wildcard(rest, &name[1..]),
    }
}

fn list_matches(pattern: &str, folder: &str) -> bool {
    if folder == INBOX && pattern.len() >= 5 && pattern[..5].eq_ignore_ascii_case(INBOX) {
        return wildcard(
            format!("INBOX{}", &pattern[5..]).as_bytes(),
            folder.as_bytes(),
        );
    }
    wildcard(pattern.as_bytes(), folder.as_bytes())
}

/// UIDPLUS uid sets: "1:3,7".
fn uid_set(uids: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let mut j = i;
        while j + 1 < uids.len() && uids[j + 1] == uids[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            uids[i].to_string()
        } else {
            format!("{}:{}", uids[i], uids[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// ` MODSEQ (n)` for a FETCH response once CONDSTORE is in use.
fn modseq_item(condstore: bool, modseq: u64) -> String {
    if condstore {
        format!(" MODSEQ ({})", modseq.max(1))
    } else {
        String::new()
    }
}

fn store_error(e: &StoreError) -> String {
    warn!(error = %e, "imap: store error");
    "NO [SERVERBUG] the store failed, try again".to_owned()
}

impl Session {
    fn cfg(&self) -> &crate::config::ImapConfig {
        &self.cfg.imap
    }

    fn idle_timeout(&self) -> Duration {
        // RFC 3501 §5.4: at least 30 minutes once logged in; before that, less.
        let secs = self.cfg().idle_timeout_secs;
        if self.user.is_some() {
            Duration::from_secs(secs)
        } else {
            Duration::from_secs(secs.min(60))
        }
    }

    fn login_disabled(&self, tls: bool) -> bool {
        !tls && !self.cfg().allow_plaintext_auth
    }

    fn capabilities(&self, tls: bool) -> String {
        let mut caps = vec!["IMAP4rev1", "LITERAL+", "SASL-IR"];
        if self.user.is_none() {
            if !tls && self.imap.tls.is_some() {
                caps.push("STARTTLS");
            }
            if self.login_disabled(tls) {
                caps.push("LOGINDISABLED");
            } else {
                caps.push("AUTH=PLAIN");
            }
        }
        caps.extend([
            "IDLE",
            "UIDPLUS",
            "MOVE",
            "NAMESPACE",
            "UNSELECT",
            "ENABLE",
            "SPECIAL-USE",
            "CONDSTORE",
        ]);
        let limit = format!("APPENDLIMIT={}", self.cfg.delivery.max_message_bytes);
        let mut s = caps.join(" ");
        s.push(' ');
        s.push_str(&limit);
        s
    }

    fn user(&self) -> &str {
        self.user.as_deref().unwrap_or_default()
    }

    /// Drains the change notifications; marks the selected folder stale if one concerns it.
    fn note_changes(&mut self) {
        loop {
            match self.changes.try_recv() {
                Ok(change) => self.note(&change),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    if let Some(sel) = &mut self.selected {
                        sel.stale = true;
                    }
                }
                Err(_) => break,
            }
        }
    }

    fn note(&mut self, change: &MailboxChange) {
        let user = self.user.clone().unwrap_or_default();
        if let Some(sel) = &mut self.selected
            && change.address == user
            && change.folder == sel.folder
        {
            sel.stale = true;
        }
    }

    /// Brings the selected folder up to date, writing the untagged responses into `out`.
    /// Without `allow_expunge`, messages gone from the store stay numbered (RFC 3501 §7.4.1).
    fn sync(&mut self, out: &mut Vec<u8>, allow_expunge: bool) -> Result<(), StoreError> {
        self.note_changes();
        let user = self.user().to_owned();
        let condstore = self.condstore;
        let Some(sel) = &mut self.selected else {
            return Ok(());
        };
        if !sel.stale {
            return Ok(());
        }
        let store = &self.imap.core.store;
        let info = store.mailbox(&user, &sel.folder)?;
        let fresh = match info {
            Some(i) if i.uidvalidity == sel.uidvalidity => store.messages(&user, &sel.folder)?,
            // Deleted (or deleted and created again): every message is gone.
            _ => Vec::new(),
        };
        let mut pending = false;
        // Flags first, while the numbers still stand.
        let mut j = 0;
        for (i, m) in sel.msgs.iter_mut().enumerate() {
            while j < fresh.len() && fresh[j].uid < m.meta.uid {
                j += 1;
            }
            match fresh.get(j) {
                Some(f) if f.uid == m.meta.uid => {
                    if f.flags != m.meta.flags {
                        m.meta.flags = f.flags.clone();
                        m.meta.modseq = f.modseq;
                        out.extend_from_slice(
                            format!(
                                "* {} FETCH (FLAGS {} UID {}{})\r\n",
                                i + 1,
                                shown_flags(&m.meta.flags, m.recent),
                                m.meta.uid,
                                modseq_item(condstore, m.meta.modseq)
                            )
                            .as_bytes(),
                        );
                    }
                }
                _ => m.expunged = true,
            }
        }
        if allow_expunge {
            for i in (0..sel.msgs.len()).rev() {
                if sel.msgs[i].expunged {
                    sel.msgs.remove(i);
                    out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                }
            }
        } else {
            pending = sel.msgs.iter().any(|m| m.expunged);
        }
        let max_uid = sel.msgs.last().map_or(0, |m| m.meta.uid);
        let before = sel.msgs.len();
        for f in fresh {
            if f.uid > max_uid {
                let recent = sel.claimed(f.uid);
                sel.msgs.push(Msg {
                    meta: f,
                    expunged: false,
                    recent,
                });
            }
        }
        if sel.msgs.len() != before {
            out.extend_from_slice(format!("* {} EXISTS\r\n", sel.msgs.len()).as_bytes());
        }
        sel.stale = pending;
        Ok(())
    }

    async fn command(&mut self, cmd: Command<'static>, conn: &mut Conn) -> Result<Flow, ConnEnd> {
        let tag = cmd.tag.as_ref().to_owned();
        let name = cmd.body.name();
        debug!(peer = %self.peer, command = name, "imap command");
        let mut out = Vec::new();
        // RFC 3501 §7.4.1: no EXPUNGE while FETCH, STORE or SEARCH run (or their UID forms).
        let mut allow_expunge = true;
        let authed = self.user.is_some();
        let selected = self.selected.is_some();
        let reply: String = match cmd.body {
            CommandBody::Capability => {
                out.extend_from_slice(
                    format!("* CAPABILITY {}\r\n", self.capabilities(conn.tls)).as_bytes(),
                );
                "OK CAPABILITY completed".into()
            }
            CommandBody::Noop => "OK NOOP completed".into(),
            CommandBody::Logout => {
                out.extend_from_slice(b"* BYE logging out\r\n");
                out.extend_from_slice(format!("{tag} OK LOGOUT completed\r\n").as_bytes());
                conn.write(&out).await?;
                return Ok(Flow::Logout);
            }
            CommandBody::StartTLS => {
                if authed || conn.tls {
                    "BAD STARTTLS is not allowed now".into()
                } else if let Some(acceptor) = self.imap.tls.clone() {
                    conn.write(format!("{tag} OK begin TLS negotiation now\r\n").as_bytes())
                        .await?;
                    conn.start_tls(&acceptor, self.cfg()).await?;
                    return Ok(Flow::Continue);
                } else {
                    "BAD STARTTLS is not available".into()
                }
            }
            CommandBody::Login { username, password } if !authed => {
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                self.login(conn.tls, &mut out, &user, password.declassify().as_ref())
                    .await
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } if !authed => {
                if mechanism != AuthMechanism::Plain {
                    "NO [CANNOT] only AUTHENTICATE PLAIN is supported".into()
                } else {
                    let data = match initial_response {
                        Some(r) => Some(r.declassify().to_vec()),
                        None => self.sasl_continue(conn).await?,
                    };
                    match data {
                        None => "BAD authentication cancelled".into(),
                        Some(d) => {
                            let fields: Vec<&[u8]> = d.split(|&b| b == 0).collect();
                            match fields.as_slice() {
                                [authz, authc, pw] if authz.is_empty() || authz == authc => {
                                    let user = String::from_utf8_lossy(authc).into_owned();
                                    self.login(conn.tls, &mut out, &user, pw).await
                                }
                                _ => "BAD malformed PLAIN credentials".into(),
                            }
                        }
                    }
                }
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } => {
                "BAD already authenticated".into()
            }
            _ if !authed => "BAD log in first".into(),
            CommandBody::Select {
                mailbox,
                parameters,
            } => self.select(&mut out, &mailbox, false, &parameters).await,
            CommandBody::Examine {
                mailbox,
                parameters,
            } => self.select(&mut out, &mailbox, true, &parameters).await,
            CommandBody::Create { mailbox } => self.create(&mailbox).await,
            CommandBody::Delete { mailbox } => self.delete(&mailbox).await,
            CommandBody::Rename { from, to } => self.rename(&from, &to).await,
            CommandBody::Subscribe { mailbox } => self.subscribe(&mailbox, true).await,
            CommandBody::Unsubscribe { mailbox } => self.subscribe(&mailbox, false).await,
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(&mut out, &reference, &mailbox_wildcard, false),
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(&mut out, &reference, &mailbox_wildcard, true),
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(&mut out, &mailbox, &item_names),
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let data: &[u8] = match &message {
                    LiteralOrLiteral8::Literal(l) => l.as_ref(),
                    LiteralOrLiteral8::Literal8(l) => l.data.as_ref(),
                };
                let date = date.map(|d| d.as_ref().timestamp());
                self.append(&mailbox, &flags, date, data).await
            }
            CommandBody::Namespace => {
                out.extend_from_slice(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
                "OK NAMESPACE completed".into()
            }
            CommandBody::Enable { capabilities } => {
                // Of the capabilities ENABLE can turn on, only CONDSTORE is offered.
                out.extend_from_slice(b"* ENABLED");
                if capabilities
                    .as_ref()
                    .iter()
                    .any(|c| matches!(c, CapabilityEnable::CondStore))
                {
                    self.condstore = true;
                    out.extend_from_slice(b" CONDSTORE");
                }
                out.extend_from_slice(b"\r\n");
                "OK ENABLE completed".into()
            }
            CommandBody::Idle => return self.idle(conn, &tag).await,
            _ if !selected => "BAD no folder selected".into(),
            CommandBody::Check => "OK CHECK completed".into(),
            CommandBody::Close => {
                let r = self.expunge_deleted(None, &mut Vec::new()).await;
                self.selected = None;
                match r {
                    Ok(_) => "OK CLOSE completed".into(),
                    Err(e) => store_error(&e),
                }
            }
            CommandBody::Unselect => {
                self.selected = None;
                "OK UNSELECT completed".into()
            }
            CommandBody::Expunge => self.expunge(&mut out, None).await,
            CommandBody::ExpungeUid { sequence_set } => {
                self.expunge(&mut out, Some(&sequence_set)).await
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                allow_expunge = false;
                let ok_charset = charset.as_ref().is_none_or(|c| {
                    let c: &str = c.as_ref();
                    c.eq_ignore_ascii_case("UTF-8") || c.eq_ignore_ascii_case("US-ASCII")
                });
                let depth = criteria.as_ref().iter().map(search::depth).max();
                if depth.unwrap_or(0) > self.cfg().max_search_depth {
                    "BAD search keys nested too deeply".into()
                } else if ok_charset {
                    let key = SearchKey::And(criteria);
                    self.search(&mut out, &key, uid)
                } else {
                    "NO [BADCHARSET (UTF-8 US-ASCII)] unsupported charset".into()
                }
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                allow_expunge = false;
                let mut items: Vec<MessageDataItemName<'static>> = match macro_or_item_names {
                    MacroOrMessageDataItemNames::Macro(m) => {
                        m.expand().into_iter().map(|i| i.into_static()).collect()
                    }
                    MacroOrMessageDataItemNames::MessageDataItemNames(items) => items,
                };
                let mut changed_since = None;
                for m in &modifiers {
                    match m {
                        FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                        FetchModifier::Vanished => {}
                    }
                }
                if changed_since.is_some()
                    && !items
                        .iter()
                        .any(|i| matches!(i, MessageDataItemName::ModSeq))
                {
                    items.push(MessageDataItemName::ModSeq);
                }
                if items
                    .iter()
                    .any(|i| matches!(i, MessageDataItemName::ModSeq))
                {
                    self.condstore = true;
                }
                if modifiers
                    .iter()
                    .any(|m| matches!(m, FetchModifier::Vanished))
                {
                    "BAD VANISHED needs QRESYNC, which is not offered".into()
                } else {
                    self.fetch(conn, &mut out, &sequence_set, items, uid, changed_since)
                        .await?
                }
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                allow_expunge = false;
                let unchanged_since = modifiers
                    .iter()
                    .map(|m| match m {
                        StoreModifier::UnchangedSince(n) => *n,
                    })
                    .next();
                if unchanged_since.is_some() {
                    self.condstore = true;
                }
                self.store(
                    &mut out,
                    &sequence_set,
                    (kind, response),
                    &flags,
                    uid,
                    unchanged_since,
                )
                .await
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => {
                self.copy(&mut out, &sequence_set, &mailbox, uid, false)
                    .await
            }
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => {
                self.copy(&mut out, &sequence_set, &mailbox, uid, true)
                    .await
            }
            _ => format!("BAD {name} is not supported"),
        };
        if let Err(e) = self.sync(&mut out, allow_expunge) {
            warn!(error = %e, "imap: folder sync failed");
        }
        self.claim_recent(&mut out).await;
        out.extend_from_slice(format!("{tag} {reply}\r\n").as_bytes());
        conn.write(&out).await?;
        Ok(Flow::Continue)
    }

    /// One more SASL round: `None` if the client cancelled.
    async fn sasl_continue(&mut self, conn: &mut Conn) -> Result<Option<Vec<u8>>, ConnEnd> {
        conn.write(b"+ \r\n").await?;
        loop {
            if conn.next_message(self.idle_timeout()).await? {
                break;
            }
        }
        match conn.frag.decode_message(&AuthenticateDataCodec::default()) {
            Ok(AuthenticateData::Continue(d)) => Ok(Some(d.declassify().to_vec())),
            Ok(AuthenticateData::Cancel) | Err(_) => Ok(None),
        }
    }

    async fn login(&mut self, tls: bool, out: &mut Vec<u8>, user: &str, password: &[u8]) -> String {
        if self.login_disabled(tls) {
            return "NO [PRIVACYREQUIRED] use STARTTLS or the TLS port first".into();
        }
        let ip = self.peer.ip();
        if !self.imap.limiter.allowed(ip) {
            warn!(%ip, "imap: login refused, too many failures");
            return "NO [UNAVAILABLE] too many failed logins, try again later".into();
        }
        let store = &self.imap.core.store;
        let mut address = user.to_owned();
        if !auth::verify(store, &address, password).await {
            let lower = user.to_ascii_lowercase();
            if lower == address || !auth::verify(store, &lower, password).await {
                self.imap.limiter.failed(ip);
                info!(%ip, user, "imap: login failed");
                return "NO [AUTHENTICATIONFAILED] invalid credentials".into();
            }
            address = lower;
        }
        info!(peer = %self.peer, user = %address, "imap: logged in");
        self.user = Some(address);
        out.extend_from_slice(format!("* CAPABILITY {}\r\n", self.capabilities(tls)).as_bytes());
        "OK logged in".into()
    }

    async fn select(
        &mut self,
        out: &mut Vec<u8>,
        mailbox: &Mailbox<'_>,
        read_only: bool,
        parameters: &[SelectParameter],
    ) -> String {
        self.selected = None;
        if parameters
            .iter()
            .any(|p| matches!(p, SelectParameter::QResync { .. }))
        {
            return "BAD QRESYNC is not offered".into();
        }
        if parameters
            .iter()
            .any(|p| matches!(p, SelectParameter::CondStore))
        {
            self.condstore = true;
        }
        // Notifications from before the snapshot below are about older states; any later one
        // marks it stale.
        self.note_changes();
        let folder = match mailbox_name(mailbox) {
            Ok(f) => f,
            Err(e) => return e,
        };
        let store = self.imap.core.store.clone();
        let user = self.user().to_owned();
        // The messages that arrived since the last session selected the folder are recent in
        // this one (claimed before the snapshot, so none falls between the two).
        let claim = if read_only {
            None
        } else {
            let op = Op::ClaimRecent {
                address: user.clone(),
                folder: folder.clone(),
            };
            match store.apply_op(op).await {
                Ok(OpResult::RecentClaimed(Some(r))) => Some(r),
                Ok(_) => return "NO [NONEXISTENT] no such folder".into(),
                Err(e) => return store_error(&e),
            }
        };
        let (info, msgs) = match store
            .mailbox(&user, &folder)
            .and_then(|i| Ok((i, store.messages(&user, &folder)?)))
        {
            Ok((Some(i), m)) => (i, m),
            Ok((None, _)) => return "NO [NONEXISTENT] no such folder".into(),
            Err(e) => return store_error(&e),
        };
        let first_unseen = msgs
            .iter()
            .position(|m| !m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")));
        out.extend_from_slice(format!("* FLAGS ({SYSTEM_FLAGS})\r\n").as_bytes());
        if read_only {
            out.extend_from_slice(b"* OK [PERMANENTFLAGS ()] read-only\r\n");
        } else {
            out.extend_from_slice(
                format!("* OK [PERMANENTFLAGS ({SYSTEM_FLAGS} \\*)] flags permitted\r\n")
                    .as_bytes(),
            );
        }
        // EXAMINE changes nothing: the messages no session claimed yet show as recent.
        let (from, to) = claim.unwrap_or((info.first_recent, u32::MAX));
        let recent = |uid: u32| from <= uid && uid < to;
        let n_recent = msgs.iter().filter(|m| recent(m.uid)).count();
        out.extend_from_slice(
            format!("* {} EXISTS\r\n* {n_recent} RECENT\r\n", msgs.len()).as_bytes(),
        );
        if let Some(i) = first_unseen {
            out.extend_from_slice(format!("* OK [UNSEEN {}] first unseen\r\n", i + 1).as_bytes());
        }
        out.extend_from_slice(
            format!(
                "* OK [UIDVALIDITY {}] UIDs valid\r\n* OK [UIDNEXT {}] predicted next UID\r\n\
                 * OK [HIGHESTMODSEQ {}] highest\r\n",
                info.uidvalidity,
                info.uidnext,
                info.highest_modseq.max(1)
            )
            .as_bytes(),
        );
        self.selected = Some(Selected {
            folder,
            read_only,
            uidvalidity: info.uidvalidity,
            msgs: msgs
                .into_iter()
                .map(|meta| Msg {
                    recent: recent(meta.uid),
                    meta,
                    expunged: false,
                })
                .collect(),
            stale: false,
            claimed: claim.into_iter().filter(|(a, b)| a < b).collect(),
            claimed_to: claim.map_or(u32::MAX, |c| c.1),
        });
        if read_only {
            "OK [READ-ONLY] EXAMINE completed".into()
        } else {
            "OK [READ-WRITE] SELECT completed".into()
        }
    }

    async fn folder_op(&self, op: Op) -> Result<FolderOutcome, String> {
        match self.imap.core.store.apply_op(op).await {
            Ok(OpResult::Folder(o)) => Ok(o),
            Ok(other) => Err(store_error(&StoreError::Internal(format!("{other:?}")))),
            Err(e) => Err(store_error(&e)),
        }
    }

    async fn create(&mut self, mailbox: &Mailbox<'_>) -> String {
        let folder = match mailbox_name(mailbox) {
            Ok(f) => f,
            Err(e) => return e,
        };
        if folder == INBOX || folder.is_empty() {
            return "NO [ALREADYEXISTS] INBOX exists".into();
        }
        if folder.split(DELIMITER).any(str::is_empty) {
            return "NO [CANNOT] empty hierarchy level in the name".into();
        }
        // Superior folders are created too (RFC 3501 §6.3.3).
        let parts: Vec<&str> = folder.split(DELIMITER).collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            let op = Op::CreateFolder {
                address: self.user().to_owned(),
                folder: parent,
            };
            if let Err(e) = self.folder_op(op).await {
                return e;
            }
        }
        let op = Op::CreateFolder {
            address: self.user().to_owned(),
            folder,
        };
        match self.folder_op(op).await {
            Ok(FolderOutcome::Done) => "OK CREATE completed".into(),
            Ok(FolderOutcome::AlreadyExists) => "NO [ALREADYEXISTS] folder exists".into(),
            Ok(_) => "NO [CANNOT] cannot create the folder".into(),
            Err(e) => e,
        }
    }

    async fn delete(&mut self, mailbox: &Mailbox<'_>) -> String {
        let folder = match mailbox_name(mailbox) {
            Ok(f) => f,
            Err(e) => return e,
        };
        if folder == INBOX {
            return "NO [CANNOT] INBOX cannot be deleted".into();
        }
        if self.selected.as_ref().is_some_and(|s| s.folder == folder) {
            self.selected = None;
        }
        let op = Op::DeleteFolder {
            address: self.user().to_owned(),
            folder,
        };
        match self.folder_op(op).await {
            Ok(FolderOutcome::Done) => "OK DELETE completed".into(),
            Ok(_) => "NO [NONEXISTENT] no such folder".into(),
            Err(e) => e,
        }
    }

    async fn rename(&mut self, from: &Mailbox<'_>, to: &Mailbox<'_>) -> String {
        let (from, to) = match (mailbox_name(from), mailbox_name(to)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        if to == INBOX {
            return "NO [CANNOT] cannot rename to INBOX".into();
        }
        let op = Op::RenameFolder {
            address: self.user().to_owned(),
            from,
            to,
        };
        match self.folder_op(op).await {
            Ok(FolderOutcome::Done) => "OK RENAME completed".into(),
            Ok(FolderOutcome::AlreadyExists) => "NO [ALREADYEXISTS] target exists".into(),
            Ok(_) => "NO [NONEXISTENT] no such folder".into(),
            Err(e) => e,
        }
    }

    async fn subscribe(&mut self, mailbox: &Mailbox<'_>, on: bool) -> String {
        let folder = match mailbox_name(mailbox) {
            Ok(f) => f,
            Err(e) => return e,
        };
        let op = Op::Subscribe {
            address: self.user().to_owned(),
            folder,
            subscribed: on,
        };
        match self.imap.core.store.apply_op(op).await {
            Ok(OpResult::Subscribed(true)) => "OK done".into(),
            Ok(_) if !on => "OK done".into(),
            Ok(_) => "NO [NONEXISTENT] no such folder".into(),
            Err(e) => store_error(&e),
        }
    }

    fn list(
        &mut self,
        out: &mut Vec<u8>,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
    ) -> String {
        let verb = if lsub { "LSUB" } else { "LIST" };
        let pattern = match pattern {
            ListMailbox::Token(t) => utf7::decode(t.as_ref()),
            ListMailbox::String(s) => utf7::decode(s.as_ref()),
        };
        let reference = match reference {
            Mailbox::Inbox => Ok(INBOX.to_owned()),
            Mailbox::Other(o) => utf7::decode(o.as_ref()),
        };
        let (pattern, reference) = match (pattern, reference) {
            (Ok(p), Ok(r)) => (p, r),
            (Err(e), _) | (_, Err(e)) => return format!("BAD {e}"),
        };
        if pattern.is_empty() && !lsub {
            out.extend_from_slice(b"* LIST (\\Noselect) \"/\" \"\"\r\n");
            return "OK LIST completed".into();
        }
        let full = format!("{reference}{pattern}");
        let folders = match self.imap.core.store.folder_infos(self.user()) {
            Ok(f) => f,
            Err(e) => return store_error(&e),
        };
        for (name, info) in &folders {
            if lsub && !info.subscribed {
                continue;
            }
            if !list_matches(&full, name) {
                continue;
            }
            let prefix = format!("{name}/");
            let children = folders.iter().any(|(n, _)| n.starts_with(&prefix));
            let mut attrs = vec![if children {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            }];
            if !lsub && let Some(u) = special_use(name) {
                attrs.push(u);
            }
            out.extend_from_slice(format!("* {verb} ({}) \"/\" ", attrs.join(" ")).as_bytes());
            write_name(out, name);
            out.extend_from_slice(b"\r\n");
        }
        format!("OK {verb} completed")
    }

    fn status(
        &mut self,
        out: &mut Vec<u8>,
        mailbox: &Mailbox<'_>,
        items: &[StatusDataItemName],
    ) -> String {
        let folder = match mailbox_name(mailbox) {
            Ok(f) => f,
            Err(e) => return e,
        };
        let store = &self.imap.core.store;
        let user = self.user().to_owned();
        let info = match store.mailbox(&user, &folder) {
            Ok(Some(i)) => i,
            Ok(None) => return "NO [NONEXISTENT] no such folder".into(),
            Err(e) => return store_error(&e),
        };
        let needs_msgs = items.iter().any(|i| {
            matches!(
                i,
                StatusDataItemName::Unseen
                    | StatusDataItemName::Deleted
                    | StatusDataItemName::Recent
            )
        });
        let msgs = if needs_msgs {
            match store.messages(&user, &folder) {
                Ok(m) => m,
                Err(e) => return store_error(&e),
            }
        } else {
            Vec::new()
        };
        let count = |flag: &str, want: bool| {
            msgs.iter()
                .filter(|m| m.flags.iter().any(|f| f.eq_ignore_ascii_case(flag)) == want)
                .count()
        };
        let mut parts = Vec::new();
        for item in items {
            match item {
                StatusDataItemName::Messages => parts.push(format!("MESSAGES {}", info.exists)),
                StatusDataItemName::Recent => {
                    let n = msgs.iter().filter(|m| m.uid >= info.first_recent).count();
                    parts.push(format!("RECENT {n}"));
                }
                StatusDataItemName::UidNext => parts.push(format!("UIDNEXT {}", info.uidnext)),
                StatusDataItemName::UidValidity => {
                    parts.push(format!("UIDVALIDITY {}", info.uidvalidity));
                }
                StatusDataItemName::Unseen => {
                    parts.push(format!("UNSEEN {}", count("\\Seen", false)))
                }
                StatusDataItemName::HighestModSeq => {
                    self.condstore = true;
                    parts.push(format!("HIGHESTMODSEQ {}", info.highest_modseq.max(1)));
                }
                StatusDataItemName::Deleted => {
                    parts.push(format!("DELETED {}", count("\\Deleted", true)));
                }
                _ => {}
            }
        }
        out.extend_from_slice(b"* STATUS ");
        write_name(out, &folder);
        out.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        "OK STATUS completed".into()
    }

    async fn append(
        &mut self,
        mailbox: &Mailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<i64>,
        data: &[u8],
    ) -> String {
        let folder = match mailbox_name(mailbox) {
            Ok(f) => f,
            Err(e) => return e,
        };
        let max = self.cfg.delivery.max_message_bytes;
        if data.len() > max {
            return format!("NO [TOOBIG] message larger than {max} octets");
        }
        let store = &self.imap.core.store;
        let user = self.user().to_owned();
        let delivery = LocalDelivery {
            dedupe: None,
            recipients: vec![user.clone()],
            folder: folder.clone(),
            message: Bytes::copy_from_slice(data),
            internal_date: date.unwrap_or_else(now),
            flags: flag_strings(flags),
        };
        match store.deliver(delivery).await {
            Ok(r) => match r.first().map(|(_, o)| *o) {
                Some(RcptOutcome::Stored { uid }) => {
                    let validity = store
                        .mailbox(&user, &folder)
                        .ok()
                        .flatten()
                        .map_or(0, |i| i.uidvalidity);
                    format!("OK [APPENDUID {validity} {uid}] APPEND completed")
                }
                _ => "NO [TRYCREATE] no such folder".into(),
            },
            Err(e) => store_error(&e),
        }
    }

    /// The indices (into the snapshot) a sequence set names; `Err` for numbers beyond the
    /// folder (message sequence numbers only: UIDs that do not exist are ignored).
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, String> {
        let Some(sel) = &self.selected else {
            return Err("BAD no folder selected".into());
        };
        let count = sel.msgs.len() as u32;
        if uid {
            let max = sel.msgs.last().map_or(0, |m| m.meta.uid);
            return Ok((0..sel.msgs.len())
                .filter(|&i| search::set_contains(set, sel.msgs[i].meta.uid, max))
                .collect());
        }
        if count == 0 || search::set_max(set, count) > count {
            return Err("BAD invalid message sequence number".into());
        }
        Ok((0..sel.msgs.len())
            .filter(|&i| search::set_contains(set, i as u32 + 1, count))
            .collect())
    }

    fn search(&mut self, out: &mut Vec<u8>, key: &SearchKey<'_>, uid: bool) -> String {
        let with_modseq = search::uses_modseq(key);
        if with_modseq {
            self.condstore = true;
        }
        let Some(sel) = &self.selected else {
            return "BAD no folder selected".into();
        };
        let store = &self.imap.core.store;
        let user = self.user().to_owned();
        let ctx = Context {
            count: sel.msgs.len() as u32,
            max_uid: sel.msgs.last().map_or(0, |m| m.meta.uid),
        };
        let mut hits = Vec::new();
        let mut max_modseq = 0;
        for (i, m) in sel.msgs.iter().enumerate() {
            if m.expunged {
                continue;
            }
            let folder = &sel.folder;
            let msg_uid = m.meta.uid;
            let mut load = || store.message_body(&user, folder, msg_uid).ok().flatten();
            let mut c = Candidate {
                seq: i as u32 + 1,
                meta: &m.meta,
                flags: &m.meta.flags,
                recent: m.recent,
                load: &mut load,
                body: None,
            };
            if search::matches(key, &mut c, &ctx) {
                hits.push(if uid { m.meta.uid } else { i as u32 + 1 });
                max_modseq = max_modseq.max(m.meta.modseq.max(1));
            }
        }
        out.extend_from_slice(b"* SEARCH");
        let any = !hits.is_empty();
        for h in hits {
            out.extend_from_slice(format!(" {h}").as_bytes());
        }
        // RFC 7162 §3.1.5: the highest mod-sequence of the messages found.
        if with_modseq && any {
            out.extend_from_slice(format!(" (MODSEQ {max_modseq})").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        "OK SEARCH completed".into()
    }

    async fn fetch(
        &mut self,
        conn: &mut Conn,
        out: &mut Vec<u8>,
        set: &SequenceSet,
        mut items: Vec<MessageDataItemName<'static>>,
        uid: bool,
        changed_since: Option<u64>,
    ) -> Reply {
        let indices = match self.resolve(set, uid) {
            Ok(i) => i,
            Err(e) => return Ok(e),
        };
        if uid && !items.iter().any(|i| matches!(i, MessageDataItemName::Uid)) {
            items.insert(0, MessageDataItemName::Uid);
        }
        let needs_body = items.iter().any(fetch::needs_body);
        let user = self.user().to_owned();
        let store = self.imap.core.store.clone();
        let Some(sel) = &mut self.selected else {
            return Ok("BAD no folder selected".into());
        };
        let sets_seen = !sel.read_only && items.iter().any(fetch::sets_seen);
        let mut seen_uids = Vec::new();
        for i in indices {
            let m = &sel.msgs[i];
            if m.expunged || changed_since.is_some_and(|since| m.meta.modseq.max(1) <= since) {
                continue;
            }
            let raw = if needs_body {
                match store.message_body(&user, &sel.folder, m.meta.uid) {
                    Ok(Some(b)) => Some(b),
                    // Expunged meanwhile: nothing to send for it.
                    Ok(None) => continue,
                    Err(e) => return Ok(store_error(&e)),
                }
            } else {
                None
            };
            let mut flags = m.meta.flags.clone();
            if sets_seen && !flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")) {
                flags.push("\\Seen".into());
                seen_uids.push(m.meta.uid);
            }
            if m.recent {
                flags.push("\\Recent".into());
            }
            let mut body = raw.as_deref().map(Fetched::new);
            out.extend_from_slice(format!("* {} FETCH (", i + 1).as_bytes());
            let mut wrote_flags = false;
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b' ');
                }
                wrote_flags |= matches!(item, MessageDataItemName::Flags);
                if let Err(e) = fetch::item(out, item, &m.meta, &flags, &mut body) {
                    return Ok(format!("BAD {e}"));
                }
            }
            if seen_uids.last() == Some(&m.meta.uid) && !wrote_flags {
                out.extend_from_slice(format!(" FLAGS {}", flag_list(&flags)).as_bytes());
            }
            out.extend_from_slice(b")\r\n");
            if out.len() >= FLUSH_BYTES {
                conn.write(out).await?;
                out.clear();
            }
        }
        if !seen_uids.is_empty() {
            let op = Op::SetFlags {
                address: user.clone(),
                folder: sel.folder.clone(),
                uids: seen_uids,
                change: FlagChange::Add,
                flags: vec!["\\Seen".into()],
                unchanged_since: None,
            };
            match store.apply_op(op).await {
                Ok(OpResult::FlagsSet(updates)) => self.apply_updates(&updates),
                Ok(_) => {}
                Err(e) => return Ok(store_error(&e)),
            }
        }
        Ok(if uid {
            "OK UID FETCH completed".into()
        } else {
            "OK FETCH completed".into()
        })
    }

    /// In a folder selected read-write, claims the messages no session has seen as \Recent
    /// yet (a store op, so two sessions never both get one) and reports the new count.
    async fn claim_recent(&mut self, out: &mut Vec<u8>) {
        let user = self.user().to_owned();
        let Some(sel) = &self.selected else { return };
        if sel.read_only || sel.msgs.last().is_none_or(|m| m.meta.uid < sel.claimed_to) {
            return;
        }
        let op = Op::ClaimRecent {
            address: user,
            folder: sel.folder.clone(),
        };
        let range = match self.imap.core.store.apply_op(op).await {
            Ok(OpResult::RecentClaimed(Some(r))) => r,
            Ok(_) => return,
            Err(e) => {
                store_error(&e);
                return;
            }
        };
        let Some(sel) = &mut self.selected else {
            return;
        };
        sel.claimed_to = sel.claimed_to.max(range.1);
        if range.0 >= range.1 {
            return;
        }
        sel.claimed.push(range);
        let mut changed = false;
        for m in &mut sel.msgs {
            if !m.recent && range.0 <= m.meta.uid && m.meta.uid < range.1 {
                m.recent = true;
                changed = true;
            }
        }
        if changed {
            let n = sel.msgs.iter().filter(|m| m.recent && !m.expunged).count();
            out.extend_from_slice(format!("* {n} RECENT\r\n").as_bytes());
        }
    }

    /// Takes this session's own flag changes into the snapshot (so they are not reported
    /// back to it as changes of others).
    fn apply_updates(&mut self, updates: &[crate::store::FlagUpdate]) {
        let Some(sel) = &mut self.selected else {
            return;
        };
        for u in updates {
            if let Ok(i) = sel.msgs.binary_search_by_key(&u.uid, |m| m.meta.uid) {
                sel.msgs[i].meta.flags = u.flags.clone();
                sel.msgs[i].meta.modseq = u.modseq;
            }
        }
    }

    async fn store(
        &mut self,
        out: &mut Vec<u8>,
        set: &SequenceSet,
        (kind, response): (StoreType, StoreResponse),
        flags: &[Flag<'_>],
        uid: bool,
        unchanged_since: Option<u64>,
    ) -> String {
        if self.selected.as_ref().is_some_and(|s| s.read_only) {
            return "NO [READ-ONLY] folder is read-only".into();
        }
        let indices = match self.resolve(set, uid) {
            Ok(i) => i,
            Err(e) => return e,
        };
        // Bring in others' changes first, so that ours are not mistaken for theirs.
        let mut pre = Vec::new();
        if let Err(e) = self.sync(&mut pre, false) {
            return store_error(&e);
        }
        out.extend_from_slice(&pre);
        let Some(sel) = &self.selected else {
            return "BAD no folder selected".into();
        };
        let uids: Vec<u32> = indices
            .iter()
            .filter(|&&i| !sel.msgs[i].expunged)
            .map(|&i| sel.msgs[i].meta.uid)
            .collect();
        let change = match kind {
            StoreType::Replace => FlagChange::Replace,
            StoreType::Add => FlagChange::Add,
            StoreType::Remove => FlagChange::Remove,
        };
        let op = Op::SetFlags {
            address: self.user().to_owned(),
            folder: sel.folder.clone(),
            uids,
            change,
            flags: flag_strings(flags),
            unchanged_since,
        };
        let updates = match self.imap.core.store.apply_op(op).await {
            Ok(OpResult::FlagsSet(u)) => u,
            Ok(other) => return store_error(&StoreError::Internal(format!("{other:?}"))),
            Err(e) => return store_error(&e),
        };
        self.apply_updates(&updates);
        let condstore = self.condstore;
        let Some(sel) = &self.selected else {
            return "BAD no folder selected".into();
        };
        let mut refused = Vec::new();
        for u in &updates {
            let Ok(i) = sel.msgs.binary_search_by_key(&u.uid, |m| m.meta.uid) else {
                continue;
            };
            let recent = sel.msgs[i].recent;
            if u.refused {
                refused.push(if uid { u.uid } else { i as u32 + 1 });
                continue;
            }
            // RFC 7162 §3.1.3: with CONDSTORE, changed messages are reported even if silent.
            let silent = matches!(response, StoreResponse::Silent);
            if silent && !(condstore && u.changed) {
                continue;
            }
            let uid_part = if uid {
                format!(" UID {}", u.uid)
            } else {
                String::new()
            };
            let flags_part = if silent {
                String::new()
            } else {
                format!("FLAGS {}", shown_flags(&u.flags, recent))
            };
            let modseq = modseq_item(condstore, u.modseq);
            let items = format!("{flags_part}{uid_part}{modseq}");
            out.extend_from_slice(
                format!("* {} FETCH ({})\r\n", i + 1, items.trim_start()).as_bytes(),
            );
        }
        if refused.is_empty() {
            "OK STORE completed".into()
        } else {
            format!(
                "OK [MODIFIED {}] some messages changed meanwhile",
                uid_set(&refused)
            )
        }
    }

    async fn copy(
        &mut self,
        out: &mut Vec<u8>,
        set: &SequenceSet,
        mailbox: &Mailbox<'_>,
        uid: bool,
        remove: bool,
    ) -> String {
        let verb = if remove { "MOVE" } else { "COPY" };
        if remove && self.selected.as_ref().is_some_and(|s| s.read_only) {
            return "NO [READ-ONLY] folder is read-only".into();
        }
        let indices = match self.resolve(set, uid) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let to = match mailbox_name(mailbox) {
            Ok(f) => f,
            Err(e) => return e,
        };
        let Some(sel) = &mut self.selected else {
            return "BAD no folder selected".into();
        };
        let uids: Vec<u32> = indices
            .iter()
            .filter(|&&i| !sel.msgs[i].expunged)
            .map(|&i| sel.msgs[i].meta.uid)
            .collect();
        let op = Op::CopyMessages {
            address: self.user.clone().unwrap_or_default(),
            from: sel.folder.clone(),
            to,
            uids,
            remove_source: remove,
        };
        match self.imap.core.store.apply_op(op).await {
            Ok(OpResult::Copied(CopyOutcome::Done { uidvalidity, pairs })) => {
                let code = if pairs.is_empty() {
                    String::new()
                } else {
                    let src: Vec<u32> = pairs.iter().map(|p| p.0).collect();
                    let dst: Vec<u32> = pairs.iter().map(|p| p.1).collect();
                    format!(
                        "[COPYUID {uidvalidity} {} {}] ",
                        uid_set(&src),
                        uid_set(&dst)
                    )
                };
                if remove {
                    // RFC 6851 §4.3: COPYUID untagged, then the EXPUNGEs, then the tagged OK.
                    sel.stale = true;
                    if !code.is_empty() {
                        out.extend_from_slice(format!("* OK {code}moved\r\n").as_bytes());
                    }
                    format!("OK {verb} completed")
                } else {
                    format!("OK {code}{verb} completed")
                }
            }
            Ok(OpResult::Copied(CopyOutcome::NoSuchFolder)) => {
                "NO [TRYCREATE] no such folder".into()
            }
            Ok(other) => store_error(&StoreError::Internal(format!("{other:?}"))),
            Err(e) => store_error(&e),
        }
    }

    /// Expunges the messages flagged \Deleted (and in `set`, for UID EXPUNGE). Returns the
    /// uids removed.
    async fn expunge_deleted(
        &mut self,
        set: Option<&SequenceSet>,
        _out: &mut Vec<u8>,
    ) -> Result<Vec<u32>, StoreError> {
        let Some(sel) = &mut self.selected else {
            return Ok(Vec::new());
        };
        if sel.read_only {
            return Ok(Vec::new());
        }
        let max = sel.msgs.last().map_or(0, |m| m.meta.uid);
        let uids: Vec<u32> = sel
            .msgs
            .iter()
            .filter(|m| {
                m.meta
                    .flags
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case("\\Deleted"))
            })
            .filter(|m| set.is_none_or(|s| search::set_contains(s, m.meta.uid, max)))
            .map(|m| m.meta.uid)
            .collect();
        if uids.is_empty() {
            return Ok(uids);
        }
        let op = Op::Expunge {
            address: self.user.clone().unwrap_or_default(),
            folder: sel.folder.clone(),
            uids,
        };
        sel.stale = true;
        match self.imap.core.store.apply_op(op).await? {
            OpResult::Expunged(u) => Ok(u),
            other => Err(StoreError::Internal(format!("{other:?}"))),
        }
    }

    async fn expunge(&mut self, out: &mut Vec<u8>, set: Option<&SequenceSet>) -> String {
        if self.selected.as_ref().is_some_and(|s| s.read_only) {
            return "NO [READ-ONLY] folder is read-only".into();
        }
        match self.expunge_deleted(set, out).await {
            Ok(_) => "OK EXPUNGE completed".into(),
            Err(e) => store_error(&e),
        }
    }

    /// IDLE (RFC 2177): changes are reported as they are committed, until DONE.
    async fn idle(&mut self, conn: &mut Conn, tag: &str) -> Result<Flow, ConnEnd> {
        let mut out = Vec::new();
        if let Err(e) = self.sync(&mut out, true) {
            warn!(error = %e, "imap: folder sync failed");
        }
        out.extend_from_slice(b"+ idling\r\n");
        conn.write(&out).await?;
        let timeout = self.idle_timeout();
        loop {
            tokio::select! {
                r = conn.next_message(timeout) => {
                    match r {
                        Ok(true) => break,
                        Ok(false) => continue,
                        Err(ConnEnd::Idle) => {
                            let _ = conn.write(b"* BYE autologout: idle for too long\r\n").await;
                            return Err(ConnEnd::Idle);
                        }
                        Err(e) => return Err(e),
                    }
                }
                change = self.changes.recv() => {
                    match change {
                        Ok(c) => self.note(&c),
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            if let Some(sel) = &mut self.selected {
                                sel.stale = true;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            return Err(ConnEnd::Fatal("the store closed".into()));
                        }
                    }
                    let mut out = Vec::new();
                    if let Err(e) = self.sync(&mut out, true) {
                        warn!(error = %e, "imap: folder sync failed");
                    }
                    self.claim_recent(&mut out).await;
                    if !out.is_empty() {
                        conn.write(&out).await?;
                    }
                }
            }
        }
        let done = conn.frag.decode_message(&IdleDoneCodec::default()).is_ok();
        let reply = if done {
            format!("{tag} OK IDLE terminated\r\n")
        } else {
            format!("{tag} BAD expected DONE\r\n")
        };
        conn.write(reply.as_bytes()).await?;
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_wildcards() {
        assert!(list_matches("*", "Work/a"));
        assert!(list_matches("%", "Work"));
        assert!(!list_matches("%", "Work/a"));
        assert!(list_matches("Work/%", "Work/a"));
        assert!(list_matches("inbox", "INBOX"));
        assert!(!list_matches("Sen", "Sent"));
        assert!(list_matches("S*", "Sent"));
    }

    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
    }
}
