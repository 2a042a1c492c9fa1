//! `xmta import maildir|mbox PATH ADDRESS [--folder NAME]`: moves existing mail into a
//! user's folder, keeping flags and dates, and skipping what an earlier run imported.
//!
//! The command reads the source and sends batches of messages ([`Request::Import`]) to the
//! running server over the admin socket, or applies them to the store itself when no server
//! runs. Each batch is one `Store::apply` (one commit), so a 10,000-message Maildir takes a
//! few dozen commits, not 10,000.
//!
//! Duplicates: a message is identified by the SHA-256 of its stored bytes. Each one is
//! delivered with the dedupe key (domain `import:<folder>`, mail id = the digest), so the
//! store refuses a second copy atomically; since dedupe records are pruned after
//! `delivery.dedupe_days` (counted from the message's date), the command also first asks
//! for the digests of the messages already in the folder and skips those.
//!
//! Flags: Maildir info letters (`:2,DFPRST`) map to `\Draft \Flagged $Forwarded \Answered
//! \Seen \Deleted`, lowercase letters to the keywords of Dovecot's `dovecot-keywords` file;
//! mbox `Status:` (R = \Seen) and `X-Status:` (A = \Answered, F = \Flagged, T = \Draft,
//! D = \Deleted) headers, which are mbox bookkeeping and are removed from the stored copy
//! (with `X-UID`, `X-IMAP`, `X-IMAPbase`, `X-Keywords`; the keywords become flags).
//!
//! Dates (the IMAP INTERNALDATE): Maildir: the earlier of the delivery time at the start of
//! the file name (`1733040000.M1P2.host:2,S`) and the file's mtime (see [`maildir_date`]);
//! mbox: the date of the `From ` line, else the `Date:` header, else now.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Conn;
use crate::admin::Request;
use crate::config::Config;
use crate::store::{DedupeKey, LocalDelivery, Op, OpResult, RcptOutcome, Store};

/// One message to import, as sent over the admin socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportMessage {
    pub data_b64: String,
    pub flags: Vec<String>,
    /// Unix seconds.
    pub date: i64,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchResult {
    pub stored: u64,
    pub duplicates: u64,
}

pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn dedupe_domain(folder: &str) -> String {
    format!("import:{folder}")
}

/// Server side: stores one batch into `address`'s `folder` in one transaction.
pub async fn apply_batch(
    store: &Store,
    address: &str,
    folder: &str,
    messages: Vec<ImportMessage>,
) -> Result<BatchResult, String> {
    let mut ops = Vec::with_capacity(messages.len());
    for m in messages {
        let bytes = B64
            .decode(m.data_b64.as_bytes())
            .map_err(|e| format!("bad message encoding: {e}"))?;
        ops.push(Op::Deliver(LocalDelivery {
            dedupe: Some(DedupeKey {
                domain: dedupe_domain(folder),
                mail_id: digest(&bytes),
            }),
            recipients: vec![address.to_string()],
            folder: folder.to_string(),
            message: bytes.into(),
            internal_date: m.date,
            flags: m.flags,
        }));
    }
    let results = store.apply(ops).await.map_err(|e| e.to_string())?;
    let mut r = BatchResult::default();
    for res in results {
        let OpResult::Delivered(outcomes) = res else {
            return Err("unexpected store answer".into());
        };
        for (_, o) in outcomes {
            match o {
                RcptOutcome::Stored { .. } => r.stored += 1,
                RcptOutcome::Duplicate => r.duplicates += 1,
                RcptOutcome::NoSuchUser => return Err(format!("no such user: {address}")),
                RcptOutcome::NoSuchFolder => {
                    return Err(format!("{address} has no folder `{folder}`"));
                }
            }
        }
    }
    Ok(r)
}

/// Server side: the digests of the messages in a folder (what an import skips).
pub fn folder_digests(store: &Store, address: &str, folder: &str) -> Result<Vec<String>, String> {
    if store.user(address).map_err(|e| e.to_string())?.is_none() {
        return Err(format!("no such user: {address}"));
    }
    if store
        .mailbox(address, folder)
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err(format!("{address} has no folder `{folder}`"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in store.messages(address, folder).map_err(|e| e.to_string())? {
        if !seen.insert(m.body_id) {
            continue;
        }
        if let Some(b) = store
            .message_body(address, folder, m.uid)
            .map_err(|e| e.to_string())?
        {
            out.push(digest(&b));
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Maildir,
    Mbox,
}

/// A message read from the source.
struct Parsed {
    bytes: Vec<u8>,
    flags: Vec<String>,
    date: i64,
}

/// The client side: reads `path` and imports it. Returns the summary line.
pub async fn run(
    cfg: &Config,
    format: Format,
    path: &Path,
    address: &str,
    folder: &str,
) -> Result<String, String> {
    let address = crate::addr::MailAddress::parse(address)
        .map_err(|e| format!("'{address}': {e}"))?
        .canonical();
    let conn = Conn::open(cfg).await?;
    let existing: HashSet<String> = conn
        .call(
            cfg,
            Request::ImportDigests {
                address: address.clone(),
                folder: folder.to_string(),
            },
        )
        .await?
        .lines
        .into_iter()
        .collect();
    let mut source = Source::open(format, path)?;
    let progress = Progress::new(source.total(), source.unit());
    let started = Instant::now();
    let (mut stored, mut skipped, mut read) = (0u64, 0u64, 0u64);
    let mut batch: Vec<ImportMessage> = Vec::new();
    let mut batch_bytes = 0usize;
    loop {
        let next = source.next_message()?;
        let done = next.is_none();
        if let Some(p) = next {
            read += 1;
            let bytes = crate::cli::normalize_crlf(&p.bytes);
            if existing.contains(&digest(&bytes)) {
                skipped += 1;
            } else {
                batch_bytes += bytes.len();
                batch.push(ImportMessage {
                    data_b64: B64.encode(&bytes),
                    flags: p.flags,
                    date: p.date,
                });
            }
        }
        let full =
            batch.len() >= cfg.import.batch_messages || batch_bytes >= cfg.import.batch_bytes;
        if !batch.is_empty() && (full || done) {
            let resp = conn
                .call(
                    cfg,
                    Request::Import {
                        address: address.clone(),
                        folder: folder.to_string(),
                        messages: std::mem::take(&mut batch),
                    },
                )
                .await?;
            batch_bytes = 0;
            for l in resp.lines {
                let mut it = l.split_whitespace();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    let v: u64 = v.parse().unwrap_or(0);
                    match k {
                        "stored" => stored += v,
                        "duplicates" => skipped += v,
                        _ => {}
                    }
                }
            }
        }
        progress.update(source.position(), read, stored, skipped, done);
        if done {
            break;
        }
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "imported {stored} messages into {address} {folder}, skipped {skipped} already there ({read} read in {secs:.1} s, {})",
        if conn.is_server() {
            "through the running server"
        } else {
            "directly into the store"
        }
    ))
}

/// Progress: an indicatif bar on a terminal, plain lines (one per ~10%) otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    unit: &'static str,
    last_tenth: std::cell::Cell<u64>,
    started: Instant,
}

impl Progress {
    fn new(total: u64, unit: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            let tpl = if unit == "bytes" {
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}"
            } else {
                "{bar:40} {pos}/{len} messages {per_sec} ETA {eta} {msg}"
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(tpl) {
                b.set_style(style);
            }
            b
        });
        Progress {
            bar,
            total,
            unit,
            last_tenth: std::cell::Cell::new(0),
            started: Instant::now(),
        }
    }

    fn update(&self, pos: u64, read: u64, stored: u64, skipped: u64, done: bool) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.set_message(format!("stored {stored} skipped {skipped}"));
            return;
        }
        let tenth = (pos * 10).checked_div(self.total).unwrap_or(10);
        if tenth > self.last_tenth.get() || done {
            self.last_tenth.set(tenth);
            let rate = read as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "import: {pos}/{} {} read, {stored} stored, {skipped} skipped, {rate:.0} messages/s",
                self.total, self.unit
            );
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

enum Source {
    Maildir {
        files: Vec<PathBuf>,
        next: usize,
        keywords: Vec<(char, String)>,
    },
    Mbox(Mbox),
}

impl Source {
    fn open(format: Format, path: &Path) -> Result<Source, String> {
        match format {
            Format::Maildir => {
                let mut files = Vec::new();
                let mut any = false;
                for sub in ["cur", "new"] {
                    let dir = path.join(sub);
                    let Ok(rd) = std::fs::read_dir(&dir) else {
                        continue;
                    };
                    any = true;
                    for e in rd {
                        let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
                        let name = e.file_name();
                        if name.to_string_lossy().starts_with('.') {
                            continue;
                        }
                        if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                            files.push(e.path());
                        }
                    }
                }
                if !any {
                    return Err(format!(
                        "{} is not a Maildir (it has neither cur/ nor new/)",
                        path.display()
                    ));
                }
                // Delivery order: the file names start with the delivery time.
                files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
                Ok(Source::Maildir {
                    files,
                    next: 0,
                    keywords: dovecot_keywords(path),
                })
            }
            Format::Mbox => Mbox::open(path).map(Source::Mbox),
        }
    }

    fn total(&self) -> u64 {
        match self {
            Source::Maildir { files, .. } => files.len() as u64,
            Source::Mbox(m) => m.size,
        }
    }

    fn unit(&self) -> &'static str {
        match self {
            Source::Maildir { .. } => "messages",
            Source::Mbox(_) => "bytes",
        }
    }

    fn position(&self) -> u64 {
        match self {
            Source::Maildir { next, .. } => *next as u64,
            Source::Mbox(m) => m.pos,
        }
    }

    fn next_message(&mut self) -> Result<Option<Parsed>, String> {
        match self {
            Source::Maildir {
                files,
                next,
                keywords,
            } => {
                let Some(p) = files.get(*next) else {
                    return Ok(None);
                };
                *next += 1;
                let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mtime = std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64);
                let date = maildir_date(maildir_name_time(&name), mtime);
                Ok(Some(Parsed {
                    bytes,
                    flags: maildir_flags(&name, keywords),
                    date,
                }))
            }
            Source::Mbox(m) => m.next_message(),
        }
    }
}

/// The flags of a Maildir file name's info part (`:2,FS`; `!2,` on some file systems).
pub fn maildir_flags(name: &str, keywords: &[(char, String)]) -> Vec<String> {
    let info = name
        .rsplit_once(":2,")
        .or_else(|| name.rsplit_once("!2,"))
        .map(|(_, i)| i)
        .unwrap_or("");
    let mut out = Vec::new();
    for c in info.chars() {
        let f = match c {
            'D' => "\\Draft",
            'F' => "\\Flagged",
            'P' => "$Forwarded",
            'R' => "\\Answered",
            'S' => "\\Seen",
            'T' => "\\Deleted",
            c if c.is_ascii_lowercase() => match keywords.iter().find(|(k, _)| *k == c) {
                Some((_, name)) => name.as_str(),
                None => continue,
            },
            _ => continue,
        };
        if !out.iter().any(|o| o == f) {
            out.push(f.to_string());
        }
    }
    out
}

/// The INTERNALDATE of a Maildir message: the earlier of the file name's delivery time and
/// the file's mtime. Dovecot (and Python's `mailbox`) keep the received date in the mtime,
/// which an IMAP APPEND with a date sets to before the name's time; a copy without
/// preserved times (`cp -r`) moves the mtime to after it. Either way the earlier one is
/// the message's.
pub fn maildir_date(name_time: Option<i64>, mtime: Option<i64>) -> i64 {
    match (name_time, mtime) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => crate::now(),
    }
}

/// The delivery time at the start of a Maildir file name, if it is one.
pub fn maildir_name_time(name: &str) -> Option<i64> {
    let digits = name.split('.').next()?;
    if digits.len() < 9 || digits.len() > 11 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Dovecot's `dovecot-keywords`: lines "<index> <keyword>", index 0 = letter 'a'.
fn dovecot_keywords(dir: &Path) -> Vec<(char, String)> {
    let Ok(text) = std::fs::read_to_string(dir.join("dovecot-keywords")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (i, k) = l.split_once(' ')?;
            let i: u8 = i.trim().parse().ok()?;
            (i < 26).then(|| (char::from(b'a' + i), k.trim().to_string()))
        })
        .collect()
}

struct Mbox {
    reader: BufReader<std::fs::File>,
    size: u64,
    pos: u64,
    /// The `From ` line that starts the next message.
    pending_from: Option<String>,
    path: PathBuf,
}

impl Mbox {
    fn open(path: &Path) -> Result<Mbox, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut m = Mbox {
            reader: BufReader::with_capacity(1 << 20, f),
            size,
            pos: 0,
            pending_from: None,
            path: path.to_path_buf(),
        };
        let mut first = Vec::new();
        m.read_line(&mut first)?;
        if first.is_empty() {
            return Ok(m);
        }
        if !first.starts_with(b"From ") {
            return Err(format!(
                "{} is not an mbox file (it does not start with a `From ` line)",
                path.display()
            ));
        }
        m.pending_from = Some(String::from_utf8_lossy(&first).trim_end().to_string());
        Ok(m)
    }

    fn read_line(&mut self, buf: &mut Vec<u8>) -> Result<usize, String> {
        let n = self
            .reader
            .read_until(b'\n', buf)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.pos += n as u64;
        Ok(n)
    }

    fn next_message(&mut self) -> Result<Option<Parsed>, String> {
        let Some(from_line) = self.pending_from.take() else {
            return Ok(None);
        };
        let mut lines: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.read_line(&mut line)? == 0 {
                break;
            }
            // A `From ` line after an empty line (or at the very start) begins the next one.
            let prev_blank = lines
                .last()
                .is_none_or(|l: &Vec<u8>| l == b"\n" || l == b"\r\n");
            if line.starts_with(b"From ") && prev_blank {
                self.pending_from = Some(String::from_utf8_lossy(&line).trim_end().to_string());
                break;
            }
            lines.push(line);
        }
        // The empty line before the separator belongs to the mbox, not the message.
        if self.pending_from.is_some() && lines.last().is_some_and(|l| l == b"\n" || l == b"\r\n") {
            lines.pop();
        }
        let mut flags = Vec::new();
        let mut bytes = Vec::new();
        let mut in_head = true;
        let mut skipping = false;
        for l in lines {
            if in_head {
                if l == b"\n" || l == b"\r\n" {
                    in_head = false;
                    bytes.extend_from_slice(&l);
                    continue;
                }
                if skipping && (l.starts_with(b" ") || l.starts_with(b"\t")) {
                    continue;
                }
                skipping = false;
                if let Some((name, value)) = header(&l) {
                    match name.as_str() {
                        "status" => {
                            if value.contains('R') {
                                push_flag(&mut flags, "\\Seen");
                            }
                            skipping = true;
                            continue;
                        }
                        "x-status" => {
                            for (c, f) in [
                                ('A', "\\Answered"),
                                ('F', "\\Flagged"),
                                ('T', "\\Draft"),
                                ('D', "\\Deleted"),
                            ] {
                                if value.contains(c) {
                                    push_flag(&mut flags, f);
                                }
                            }
                            skipping = true;
                            continue;
                        }
                        "x-keywords" => {
                            for k in value.split([' ', ',']).filter(|k| !k.is_empty()) {
                                push_flag(&mut flags, k);
                            }
                            skipping = true;
                            continue;
                        }
                        "x-uid" | "x-imap" | "x-imapbase" => {
                            skipping = true;
                            continue;
                        }
                        _ => {}
                    }
                }
                bytes.extend_from_slice(&l);
            } else {
                // mboxrd: ">From " quoted (any number of '>') loses one '>'.
                let q = l.iter().take_while(|&&b| b == b'>').count();
                if q > 0 && l[q..].starts_with(b"From ") {
                    bytes.extend_from_slice(&l[1..]);
                } else {
                    bytes.extend_from_slice(&l);
                }
            }
        }
        let date = from_line_date(&from_line)
            .or_else(|| header_date(&bytes))
            .unwrap_or_else(crate::now);
        Ok(Some(Parsed { bytes, flags, date }))
    }
}

fn push_flag(flags: &mut Vec<String>, f: &str) {
    if !flags.iter().any(|x| x == f) {
        flags.push(f.to_string());
    }
}

fn header(line: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(line).ok()?;
    let (name, value) = s.split_once(':')?;
    if name.is_empty() || name.contains(' ') {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.trim().to_string()))
}

fn header_date(message: &[u8]) -> Option<i64> {
    let m = mail_parser::MessageParser::default().parse_headers(message)?;
    m.date().map(|d| d.to_timestamp())
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The date of an mbox `From sender Tue Dec  1 08:00:00 2026` line (asctime, optionally
/// with a numeric zone before or after the year), as unix seconds.
pub fn from_line_date(line: &str) -> Option<i64> {
    let t: Vec<&str> = line.split_whitespace().collect();
    let mi = t.iter().skip(2).position(|x| MONTHS.contains(x))? + 2;
    let month = MONTHS.iter().position(|m| *m == t[mi])? as i64 + 1;
    let day: i64 = t.get(mi + 1)?.parse().ok()?;
    let mut hms = t.get(mi + 2)?.split(':').map(|x| x.parse::<i64>());
    let h = hms.next()?.ok()?;
    let m = hms.next()?.ok()?;
    let s = hms.next().and_then(|x| x.ok()).unwrap_or(0);
    let mut year = None;
    let mut tz = 0i64;
    for x in t.iter().skip(mi + 3) {
        if x.len() == 4 && x.bytes().all(|b| b.is_ascii_digit()) {
            year = x.parse::<i64>().ok();
        } else if x.len() == 5 && (x.starts_with('+') || x.starts_with('-')) {
            let v: i64 = x[1..].parse().ok()?;
            let off = (v / 100) * 3600 + (v % 100) * 60;
            tz = if x.starts_with('-') { -off } else { off };
        }
    }
    let year = year?;
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s - tz)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_from_names() {
        let kw = vec![('a', "$Junk".to_string())];
        assert_eq!(
            maildir_flags("1733040000.M1P2.host:2,DFPRSTa", &kw),
            vec![
                "\\Draft",
                "\\Flagged",
                "$Forwarded",
                "\\Answered",
                "\\Seen",
                "\\Deleted",
                "$Junk"
            ]
        );
        assert!(maildir_flags("1733040000.M1P2.host", &kw).is_empty());
        assert_eq!(
            maildir_name_time("1733040000.M1P2.host:2,S"),
            Some(1_733_040_000)
        );
        assert_eq!(maildir_name_time("msg-1:2,S"), None);
    }

    #[test]
    fn from_lines() {
        assert_eq!(
            from_line_date("From alice@a.test Tue Dec  1 08:44:32 2026"),
            Some(1_796_114_672)
        );
        assert_eq!(
            from_line_date("From MAILER-DAEMON Tue Dec  1 09:44:32 2026 +0100"),
            Some(1_796_114_672)
        );
        assert_eq!(from_line_date("From nobody"), None);
    }
}
