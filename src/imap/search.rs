//! SEARCH: evaluating imap-codec's search keys against a folder's messages. Keys on flags,
//! sizes, dates and numbers use the metadata only; keys on headers or text load the message.

use chrono::{DateTime, NaiveDate};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mail_parser::MessageParser;

use super::fetch::{header_value, split_header};
use crate::store::MessageMeta;

/// Whether `n` is in `set`, where `*` stands for `largest`.
pub fn set_contains(set: &SequenceSet, n: u32, largest: u32) -> bool {
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0.as_ref().iter().any(|s| match s {
        Sequence::Single(v) => value(v) == n,
        Sequence::Range(a, b) => {
            let (a, b) = (value(a), value(b));
            a.min(b) <= n && n <= a.max(b)
        }
    })
}

/// The largest number a sequence set names, `*` being `largest`.
pub fn set_max(set: &SequenceSet, largest: u32) -> u32 {
    let value = |v: &SeqOrUid| match v {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(v) => value(v),
            Sequence::Range(a, b) => value(a).max(value(b)),
        })
        .max()
        .unwrap_or(0)
}

/// One message as SEARCH sees it.
pub struct Candidate<'a> {
    pub seq: u32,
    pub meta: &'a MessageMeta,
    pub flags: &'a [String],
    /// \Recent in this session.
    pub recent: bool,
    /// Loads the message bytes (at most once per message).
    pub load: &'a mut dyn FnMut() -> Option<Vec<u8>>,
    pub body: Option<Option<Vec<u8>>>,
}

/// The folder-wide values `*` stands for.
pub struct Context {
    pub count: u32,
    pub max_uid: u32,
}

impl Candidate<'_> {
    fn bytes(&mut self) -> Option<&[u8]> {
        if self.body.is_none() {
            self.body = Some((self.load)());
        }
        self.body.as_ref().and_then(|b| b.as_deref())
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }

    fn header_contains(&mut self, name: &str, needle: &[u8]) -> bool {
        let Some(raw) = self.bytes() else {
            return false;
        };
        let (header, _) = split_header(raw);
        if needle.is_empty() {
            return header_value(header, name).is_some();
        }
        if header_value(header, name).is_some_and(|v| contains(&v, needle)) {
            return true;
        }
        // Encoded words: compare with the decoded value too.
        let parsed = MessageParser::default().parse_headers(raw);
        parsed
            .and_then(|m| {
                m.header(name)
                    .and_then(|v| v.as_text().map(|t| t.as_bytes().to_vec()))
            })
            .is_some_and(|v| contains(&v, needle))
    }

    fn body_contains(&mut self, needle: &[u8]) -> bool {
        let Some(raw) = self.bytes() else {
            return false;
        };
        let (_, text) = split_header(raw);
        if contains(text, needle) {
            return true;
        }
        // Transfer-encoded text parts, decoded.
        let Some(msg) = MessageParser::default().parse(raw) else {
            return false;
        };
        (0..msg.text_body_count()).any(|i| {
            msg.body_text(i)
                .is_some_and(|t| contains(t.as_bytes(), needle))
        })
    }

    fn sent_date(&mut self) -> Option<NaiveDate> {
        let raw = self.bytes()?;
        let m = MessageParser::default().parse_headers(raw)?;
        let d = m.date()?;
        NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
    }
}

fn internal_day(secs: i64) -> Option<NaiveDate> {
    DateTime::from_timestamp(secs, 0).map(|d| d.date_naive())
}

/// Case-insensitive (ASCII) substring search.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    if needle.len() > hay.len() {
        return false;
    }
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether the message matches `key`.
pub fn matches(key: &SearchKey<'_>, c: &mut Candidate<'_>, ctx: &Context) -> bool {
    let day = || internal_day(c.meta.internal_date);
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().all(|k| matches(k, c, ctx)),
        SearchKey::Or(a, b) => matches(a, c, ctx) || matches(b, c, ctx),
        SearchKey::Not(k) => !matches(k, c, ctx),
        SearchKey::SequenceSet(set) => set_contains(set, c.seq, ctx.count),
        SearchKey::Uid(set) => set_contains(set, c.meta.uid, ctx.max_uid),
        SearchKey::All => true,
        SearchKey::Answered => c.has("\\Answered"),
        SearchKey::Unanswered => !c.has("\\Answered"),
        SearchKey::Deleted => c.has("\\Deleted"),
        SearchKey::Undeleted => !c.has("\\Deleted"),
        SearchKey::Draft => c.has("\\Draft"),
        SearchKey::Undraft => !c.has("\\Draft"),
        SearchKey::Flagged => c.has("\\Flagged"),
        SearchKey::Unflagged => !c.has("\\Flagged"),
        SearchKey::Seen => c.has("\\Seen"),
        SearchKey::Unseen => !c.has("\\Seen"),
        SearchKey::Keyword(k) => c.has(k.as_ref()),
        SearchKey::Unkeyword(k) => !c.has(k.as_ref()),
        SearchKey::Recent => c.recent,
        SearchKey::New => c.recent && !c.has("\\Seen"),
        SearchKey::Old => !c.recent,
        SearchKey::Larger(n) => c.meta.size > u64::from(*n),
        SearchKey::Smaller(n) => c.meta.size < u64::from(*n),
        SearchKey::Before(d) => day().is_some_and(|x| x < *d.as_ref()),
        SearchKey::On(d) => day().is_some_and(|x| x == *d.as_ref()),
        SearchKey::Since(d) => day().is_some_and(|x| x >= *d.as_ref()),
        SearchKey::SentBefore(d) => c.sent_date().is_some_and(|x| x < *d.as_ref()),
        SearchKey::SentOn(d) => c.sent_date().is_some_and(|x| x == *d.as_ref()),
        SearchKey::SentSince(d) => c.sent_date().is_some_and(|x| x >= *d.as_ref()),
        SearchKey::From(s) => c.header_contains("From", s.as_ref()),
        SearchKey::To(s) => c.header_contains("To", s.as_ref()),
        SearchKey::Cc(s) => c.header_contains("Cc", s.as_ref()),
        SearchKey::Bcc(s) => c.header_contains("Bcc", s.as_ref()),
        SearchKey::Subject(s) => c.header_contains("Subject", s.as_ref()),
        SearchKey::Header(name, s) => {
            let name = String::from_utf8_lossy(name.as_ref()).into_owned();
            c.header_contains(&name, s.as_ref())
        }
        SearchKey::Body(s) => c.body_contains(s.as_ref()),
        SearchKey::Text(s) => {
            let needle = s.as_ref();
            let in_header = c
                .bytes()
                .is_some_and(|raw| contains(split_header(raw).0, needle));
            in_header || c.body_contains(needle)
        }
        SearchKey::ModSequence { modseq, .. } => c.meta.modseq.max(1) >= *modseq,
    }
}

/// How deeply `key` nests: 1 for a plain key, one more for each parenthesized list, OR
/// and NOT around it (`[imap] max_search_depth`).
pub fn depth(key: &SearchKey<'_>) -> usize {
    match key {
        SearchKey::And(keys) => 1 + keys.as_ref().iter().map(depth).max().unwrap_or(0),
        SearchKey::Or(a, b) => 1 + depth(a).max(depth(b)),
        SearchKey::Not(k) => 1 + depth(k),
        _ => 1,
    }
}

/// Whether the key uses MODSEQ (the SEARCH response then carries the highest mod-sequence).
pub fn uses_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_modseq),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::Not(k) => uses_modseq(k),
        _ => false,
    }
}
