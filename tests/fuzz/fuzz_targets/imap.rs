//! xmta's own IMAP code (src/imap) on arbitrary input; imap-codec parses the commands, but
//! the replies and what they say are xmta's. The first byte picks the part:
//!
//! - FETCH: an arbitrary message rendered as ENVELOPE, BODY, BODYSTRUCTURE and a range of
//!   BODY[section]<partial> items in one `* 1 FETCH (...)` line, which must parse back with
//!   imap-codec's response decoder, whole; BODY[] must be the stored bytes (NUL sent as 0x80).
//! - SEARCH: `a SEARCH <input up to the first LF>` parsed with imap-codec, evaluated against
//!   the message after the LF. NOT must invert, OR of a key with itself must not change it,
//!   and the message is loaded at most once.
//! - modified UTF-7 mailbox names: decode never panics, decode(encode(s)) == s for any
//!   string, encode gives printable ASCII, and a decoded name re-encodes to an equal name.
#![no_main]

use std::sync::LazyLock;

use imap_codec::decode::Decoder;
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::{CommandCodec, ResponseCodec};
use libfuzzer_sys::fuzz_target;
use mail_parser::{Message, MessageParser, PartType};
use xmta::imap::fetch::{Fetched, item};
use xmta::imap::search::{Candidate, Context, matches};
use xmta::imap::utf7;
use xmta::store::MessageMeta;

const ITEMS: &str = "UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODY BODYSTRUCTURE \
    BODY.PEEK[] BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[1] BODY.PEEK[2] BODY.PEEK[1.MIME] \
    BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[1.2] BODY.PEEK[2.1.MIME] BODY.PEEK[1.1.1] \
    BODY.PEEK[3.HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[HEADER.FIELDS (SUBJECT \"X-Odd\" TO)] \
    BODY.PEEK[HEADER.FIELDS.NOT (TO)] BODY.PEEK[]<3.7> BODY.PEEK[1]<0.1> RFC822.HEADER \
    RFC822.TEXT RFC822";

/// The FETCH items, parsed once with imap-codec as the session gets them.
static NAMES: LazyLock<Vec<MessageDataItemName<'static>>> = LazyLock::new(|| {
    let line = format!("a FETCH 1 ({ITEMS})\r\n");
    let (_, cmd) = CommandCodec::default()
        .decode(line.as_bytes())
        .expect("the FETCH items parse");
    let CommandBody::Fetch {
        macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(items),
        ..
    } = cmd.body
    else {
        panic!("not a FETCH");
    };
    items.iter().map(|i| i.clone().into_static()).collect()
});

fn meta(raw: &[u8]) -> MessageMeta {
    MessageMeta {
        uid: 7,
        size: raw.len() as u64,
        internal_date: 1_764_583_200,
        flags: vec!["\\Seen".into()],
        body_id: 1,
        modseq: 3,
    }
}

/// How many multiparts and encapsulated messages nest at the deepest place (up to 40).
fn mime_depth(msg: &Message<'_>, part: usize, budget: usize) -> usize {
    if budget == 0 {
        return 0;
    }
    match msg.parts.get(part).map(|p| &p.body) {
        Some(PartType::Multipart(ids)) => {
            1 + ids
                .iter()
                .map(|&i| mime_depth(msg, i as usize, budget - 1))
                .max()
                .unwrap_or(0)
        }
        Some(PartType::Message(sub)) => 1 + mime_depth(sub, 0, budget - 1),
        _ => 0,
    }
}

/// imap-codec's response parser gives up on BODY/BODYSTRUCTURE nested deeper than this (its
/// own recursion limit of 8, `body(8)` in its fetch.rs, against the stack; RFC 3501's grammar
/// has no limit and xmta renders up to 32 levels, as deep as mail-parser's tree goes). Such
/// items are still rendered but not parsed back.
const CHECKER_DEPTH: usize = 6;

fn fetch(raw: &[u8]) {
    let deep = MessageParser::default()
        .parse(raw)
        .is_some_and(|m| mime_depth(&m, 0, 40) >= CHECKER_DEPTH);
    let meta = meta(raw);
    let flags = ["\\Seen".to_string(), "$Label1".to_string()];
    let mut body = Some(Fetched::new(raw));
    let mut line = b"* 1 FETCH (".to_vec();
    for (i, name) in NAMES.iter().enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        let start = line.len();
        item(&mut line, name, &meta, &flags, &mut body).expect("a supported item");
        if deep
            && matches!(
                name,
                MessageDataItemName::Body | MessageDataItemName::BodyStructure
            )
        {
            line.truncate(start);
            line.extend_from_slice(b"UID 7");
            continue;
        }
        if matches!(
            name,
            MessageDataItemName::BodyExt {
                section: None,
                partial: None,
                ..
            }
        ) {
            let mut want = format!("BODY[] {{{}}}\r\n", raw.len()).into_bytes();
            want.extend(raw.iter().map(|&b| if b == 0 { 0x80 } else { b }));
            assert!(
                line[start..] == want[..],
                "BODY[] is not the stored message"
            );
        }
    }
    line.extend_from_slice(b")\r\n");
    match ResponseCodec::default().decode(&line) {
        Ok((rest, _)) => assert!(
            rest.is_empty(),
            "left over after the FETCH response: {:?}",
            String::from_utf8_lossy(rest)
        ),
        Err(e) => panic!(
            "xmta's FETCH response does not parse: {e:?}\n{}",
            String::from_utf8_lossy(&line)
        ),
    }
}

fn search(data: &[u8]) {
    let (key, raw) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let mut line = b"a SEARCH ".to_vec();
    line.extend_from_slice(key);
    line.extend_from_slice(b"\r\n");
    let Ok((_, cmd)) = CommandCodec::default().decode(&line) else {
        return;
    };
    let CommandBody::Search { criteria, .. } = cmd.body else {
        return;
    };
    let key = SearchKey::And(criteria);
    let meta = meta(raw);
    let flags = [
        "\\Seen".to_string(),
        "\\Flagged".to_string(),
        "$Work".to_string(),
    ];
    let ctx = Context {
        count: 5,
        max_uid: 9,
    };
    let run = |key: &SearchKey<'_>| {
        let mut loads = 0;
        let mut load = || {
            loads += 1;
            Some(raw.to_vec())
        };
        let mut c = Candidate {
            seq: 3,
            meta: &meta,
            flags: &flags,
            recent: raw.len() % 2 == 0,
            load: &mut load,
            body: None,
        };
        let hit = matches(key, &mut c, &ctx);
        drop(c);
        assert!(loads <= 1, "the message was loaded {loads} times");
        hit
    };
    let hit = run(&key);
    let not = SearchKey::Not(Box::new(key.clone()));
    assert_eq!(run(&not), !hit, "NOT does not invert");
    let or = SearchKey::Or(Box::new(key.clone()), Box::new(key.clone()));
    assert_eq!(run(&or), hit, "OR of a key with itself changed it");
    let _ = xmta::imap::search::depth(&key);
    let _ = xmta::imap::search::uses_modseq(&key);
}

fn mutf7(data: &[u8]) {
    if let Ok(name) = utf7::decode(data) {
        let again = utf7::encode(&name);
        assert_eq!(
            utf7::decode(again.as_bytes()).as_deref(),
            Ok(name.as_str()),
            "a decoded name does not survive encoding"
        );
    }
    let s = String::from_utf8_lossy(data);
    let e = utf7::encode(&s);
    assert!(
        e.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "encoded name is not printable ASCII: {e:?}"
    );
    assert_eq!(utf7::decode(e.as_bytes()).as_deref(), Ok(&*s), "{e:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => fetch(rest),
        1 => search(rest),
        _ => mutf7(rest),
    }
});
