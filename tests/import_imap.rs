//! Issue 8 "done when": a generated 10,000-message Maildir with mixed flags imports, then reads
//! back through IMAP (Python's imaplib) with the same flags and dates; a second import adds
//! nothing. Addresses 127.0.1.121-125.

mod common;

use std::time::Instant;

use common::imap::*;
use common::ops::*;
use common::*;

/// Reads the whole INBOX with one FETCH and compares it with the expectation file
/// (`i flags date` per line), samples bodies against the Maildir files, and prints the
/// STATUS values before and after the test signals the second import.
const READBACK: &str = r#"
import imaplib, sys, re, os, datetime
host, port, expected_path, maildir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
expected = {}
for line in open(expected_path):
    i, flags, date = line.split('\t')
    expected[int(i)] = (sorted(f for f in flags.split(' ') if f), int(date))
M = imaplib.IMAP4(host, port)
M.login('bob@b.test', 'secret')
typ, data = M.status('INBOX', '(MESSAGES UIDNEXT)')
assert typ == 'OK', data
before = data[0].decode()
typ, data = M.select('INBOX')
assert typ == 'OK' and data == [str(len(expected)).encode()], data
typ, data = M.fetch('1:*', '(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
assert typ == 'OK', typ
seen = {}
uid_of = {}
pat = re.compile(rb'^(\d+) \(UID (\d+) FLAGS \(([^)]*)\) INTERNALDATE "([^"]+)" RFC822.SIZE (\d+) BODY\[HEADER.FIELDS \(SUBJECT\)\] \{\d+\}$')
for item in data:
    if item == b')':
        continue
    head, subj = item
    m = pat.match(head)
    assert m, head
    i = int(re.search(rb'Subject: msg-(\d+)', subj).group(1))
    assert i not in seen, ('twice', i)
    raw_flags = m.group(3).decode().split(' ')
    # The first session to select the folder gets all of them as \\Recent.
    assert '\\Recent' in raw_flags, head
    flags = sorted(f for f in raw_flags if f and f != '\\Recent')
    date = int(datetime.datetime.strptime(m.group(4).decode(), '%d-%b-%Y %H:%M:%S %z').timestamp())
    seen[i] = (flags, date)
    uid_of[i] = (int(m.group(2)), int(m.group(5)))
assert len(seen) == len(expected), (len(seen), len(expected))
bad = [(i, seen[i], expected[i]) for i in expected if seen.get(i) != expected[i]]
assert not bad, bad[:5]
# Body bytes of a few samples (one per kind of name and flag set) against the files.
files = {}
for sub in ('cur', 'new'):
    for name in os.listdir(os.path.join(maildir, sub)):
        raw = open(os.path.join(maildir, sub, name), 'rb').read()
        i = int(re.search(rb'Subject: msg-(\d+)', raw).group(1))
        files[i] = raw.replace(b'\r\n', b'\n').replace(b'\n', b'\r\n')
for i in (0, 1, 5, 7, 13, 4242, 9999):
    uid, size = uid_of[i]
    typ, data = M.uid('FETCH', str(uid), '(BODY.PEEK[])')
    assert typ == 'OK', data
    assert data[0][1] == files[i], (i, data[0][1], files[i])
    assert size == len(files[i]), (i, size, len(files[i]))
# PEEK left \Seen alone.
typ, data = M.search(None, 'UNSEEN')
unseen = len(data[0].split())
assert unseen == sum(1 for f, _ in expected.values() if '\\Seen' not in f), unseen
print('READ', before, flush=True)
sys.stdin.readline()
typ, data = M.status('INBOX', '(MESSAGES UIDNEXT)')
print('AFTER', data[0].decode(), flush=True)
M.untagged_responses.clear()
typ, data = M.noop()
assert 'EXISTS' not in M.untagged_responses, M.untagged_responses
M.logout()
"#;

#[test]
fn imported_maildir_reads_back_through_imap() {
    let ip = "127.0.1.121";
    let (extra, imap_addr) = imap_extra(ip, "");
    let mut x = Xmta::new(Spec {
        domain: "b.test",
        ip,
        routes: vec![],
        extra: &extra,
        s2s_extra: "",
    });
    x.add_user("bob@b.test");
    let md = x.dir.path().join("Maildir");
    let expect = make_maildir(&md, 10_000);
    let mut lines = String::new();
    for (i, date, info) in &expect {
        lines.push_str(&format!("{i}\t{}\t{date}\n", info_flags(info).join(" ")));
    }
    let exp_path = write_file(x.dir.path(), "expected.tsv", lines.as_bytes());

    // First import straight into the store, then read it back through the server.
    let t0 = Instant::now();
    let out = x.cmd(
        &["import", "maildir", md.to_str().unwrap(), "bob@b.test"],
        b"",
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("imported 10000 messages"), "{text}");
    eprintln!("import: {:.2} s", t0.elapsed().as_secs_f64());
    x.start();

    let t1 = Instant::now();
    let port = imap_addr.port().to_string();
    let mut py = PyChild::start(
        READBACK,
        &[ip, &port, exp_path.to_str().unwrap(), md.to_str().unwrap()],
    );
    let read = py.line(60);
    eprintln!("IMAP readback: {:.2} s", t1.elapsed().as_secs_f64());
    assert!(read.starts_with("READ "), "{read}");
    assert!(read.contains("MESSAGES 10000"), "{read}");

    // The second import runs through the live server and adds nothing.
    let out = x.cmd(
        &["import", "maildir", md.to_str().unwrap(), "bob@b.test"],
        b"",
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("imported 0 messages"), "{text}");
    assert!(text.contains("skipped 10000"), "{text}");
    py.send("go\n");
    let after = py.line(30);
    assert!(after.starts_with("AFTER "), "{after}");
    // Same MESSAGES and UIDNEXT as before the second import.
    assert_eq!(
        after.trim_start_matches("AFTER ").trim(),
        read.trim_start_matches("READ ").trim(),
        "STATUS changed"
    );
    py.finish(30);
}
