//! The IMAP bridge with Python's imaplib: mail that came over XMPP from another xmta is
//! read, searched, flagged, appended, moved and expunged, and new mail shows up in IDLE.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::imap::{self, *};
use common::*;

const SESSION: &str = r#"
import imaplib, sys, re
host, port, expected_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
expected = open(expected_path, 'rb').read()
M = imaplib.IMAP4(host, port)
typ, caps = M.capability()
for c in [b'IMAP4rev1', b'IDLE', b'UIDPLUS', b'MOVE', b'NAMESPACE', b'UNSELECT', b'LITERAL+', b'SPECIAL-USE', b'AUTH=PLAIN']:
    assert c in caps[0].split(), (c, caps)
typ, _ = M.login('bob@b.test', 'secret')
assert typ == 'OK'
typ, lines = M.list()
assert typ == 'OK'
names = {}
for l in lines:
    m = re.match(rb'\((.*?)\) "/" "?([^"]*)"?', l)
    names[m.group(2).decode()] = m.group(1).decode()
assert set(names) == {'INBOX', 'Sent', 'Drafts', 'Trash', 'Junk'}, names
assert '\\Sent' in names['Sent'] and '\\Trash' in names['Trash'] and '\\Junk' in names['Junk'] and '\\Drafts' in names['Drafts'], names
typ, data = M.select('INBOX')
assert typ == 'OK' and data == [b'1'], data
uidvalidity = M.untagged_responses.get('UIDVALIDITY')

# The exact stored bytes.
typ, data = M.fetch('1', '(BODY.PEEK[] RFC822.SIZE FLAGS UID)')
assert typ == 'OK'
assert data[0][1] == expected, (len(data[0][1]), len(expected))
assert b'RFC822.SIZE %d' % len(expected) in data[1], data
typ, data = M.fetch('1', '(FLAGS)')
assert b'\\Seen' not in data[0], data
typ, data = M.fetch('1', '(ENVELOPE)')
assert b'"hello-imap"' in data[0] and b'"alice" "a.test"' in data[0], data

typ, data = M.search(None, 'SUBJECT', 'hello-imap')
assert data == [b'1'], data
typ, data = M.search(None, 'FROM', 'alice@a.test', 'UNSEEN')
assert data == [b'1'], data
typ, data = M.search(None, 'SUBJECT', 'nothing-like-this')
assert data == [b''], data
typ, data = M.search(None, 'BODY', '"over XMPP"')
assert data == [b'1'], data

typ, data = M.store('1', '+FLAGS', '(\\Flagged)')
assert typ == 'OK' and b'\\Flagged' in data[0], data
typ, data = M.search(None, 'FLAGGED')
assert data == [b'1'], data
# BODY[] without PEEK sets \Seen.
typ, data = M.fetch('1', '(BODY[TEXT])')
assert typ == 'OK'
typ, data = M.search(None, 'SEEN')
assert data == [b'1'], data

# APPEND with UIDPLUS.
msg = b'From: bob@b.test\r\nTo: bob@b.test\r\nSubject: appended\r\n\r\ndraft text\r\n'
typ, data = M.append('INBOX', '(\\Draft)', None, msg)
assert typ == 'OK', data
m = re.search(rb'APPENDUID (\d+) (\d+)', data[0])
assert m, data
new_uid = m.group(2).decode()
typ, data = M.noop()
typ, data = M.select('INBOX')
assert data == [b'2'], data
typ, data = M.uid('FETCH', new_uid, '(BODY.PEEK[] FLAGS)')
assert data[0][1] == msg and b'\\Draft' in data[1], data

# MOVE to Trash: COPYUID, then EXPUNGE of the source.
typ, data = M.uid('MOVE', new_uid, 'Trash')
assert typ == 'OK', data
assert M.untagged_responses.get('EXPUNGE') == [b'2'], M.untagged_responses
typ, data = M.status('Trash', '(MESSAGES UIDNEXT)')
assert b'MESSAGES 1' in data[0], data
typ, data = M.select('INBOX')
assert data == [b'1'], data

# EXPUNGE.
M.store('1', '+FLAGS', '(\\Deleted)')
typ, data = M.expunge()
assert typ == 'OK' and data == [b'1'], data
typ, data = M.select('INBOX')
assert data == [b'0'], data
print('OK', flush=True)
M.logout()
"#;

const IDLE: &str = r#"
import imaplib, sys, time, socket
host, port = sys.argv[1], int(sys.argv[2])
M = imaplib.IMAP4(host, port)
M.login('bob@b.test', 'secret')
typ, data = M.select('INBOX')
before = int(data[0])
tag = M._new_tag()
M.send(tag + b' IDLE\r\n')
line = M.readline()
assert line.startswith(b'+'), line
print('IDLING', flush=True)
M.sock.settimeout(60)
while True:
    line = M.readline()
    if line.endswith(b'EXISTS\r\n'):
        print('EXISTS %s %.3f' % (line.split()[1].decode(), time.time()), flush=True)
        break
M.send(b'DONE\r\n')
line = M.readline()
# This session is the first told of the message: RECENT follows EXISTS.
while line.startswith(b'* '):
    assert line.endswith(b'RECENT\r\n'), line
    line = M.readline()
assert line.startswith(tag + b' OK'), line
M.logout()
"#;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Issue 4: mail delivered over XMPP from another xmta is read over IMAP with imaplib:
/// LOGIN, LIST (SPECIAL-USE), SELECT, FETCH (the stored bytes exactly), SEARCH, STORE,
/// APPEND (APPENDUID), MOVE (EXPUNGE of the source), EXPUNGE.
#[test]
fn imaplib_reads_mail_from_xmpp() {
    let (extra, imap) = imap_extra("127.0.0.91", "");
    let (mut a, mut b) = pair("127.0.0.90", "127.0.0.91", "", &extra);
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let m = message(
        "alice@a.test",
        "bob@b.test",
        "hello-imap",
        "Hi Bob, over XMPP.",
    );
    a.send("alice@a.test", &["bob@b.test"], &m);
    b.wait_for("bob's mail", 30, || b.mailbox("bob@b.test").len() == 1);
    let stored = b.show("bob@b.test", b.mailbox("bob@b.test")[0].uid);
    assert!(stored.ends_with(&m));
    let path = write_file(b.dir.path(), "expected.eml", &stored);
    let out = python(
        SESSION,
        &[
            "127.0.0.91",
            &imap.port().to_string(),
            path.to_str().expect("path"),
        ],
        60,
    );
    assert_eq!(out.trim(), "OK", "{out}");
    // The store agrees: INBOX empty, the appended message in Trash.
    assert!(b.mailbox("bob@b.test").is_empty());
}

/// Issue 4: new mail shows up in IDLE as EXISTS, within a second of being stored: once
/// delivered locally, once over XMPP from the other xmta.
#[test]
fn idle_reports_new_mail_within_a_second() {
    let (extra, imap) = imap_extra("127.0.0.93", "");
    let (mut a, mut b) = pair("127.0.0.92", "127.0.0.93", "", &extra);
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let port = imap.port().to_string();

    // Local delivery: the CLI returns once the store committed.
    let mut py = PyChild::start(IDLE, &["127.0.0.93", &port]);
    assert_eq!(py.line(20), "IDLING");
    let m1 = message("bob@b.test", "bob@b.test", "local", "to myself");
    b.send("bob@b.test", &["bob@b.test"], &m1);
    let committed = unix_now();
    let line = py.line(10);
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f[..2], ["EXISTS", "1"], "{line}");
    let at: f64 = f[2].parse().expect("time");
    assert!(
        at - committed < 1.0,
        "EXISTS {:.3} s after the commit",
        at - committed
    );
    py.finish(10);

    // Over XMPP: EXISTS no later than a second after the test first sees the mail stored.
    let mut py = PyChild::start(IDLE, &["127.0.0.93", &port]);
    assert_eq!(py.line(20), "IDLING");
    let m2 = message("alice@a.test", "bob@b.test", "over-xmpp", "during IDLE");
    a.send("alice@a.test", &["bob@b.test"], &m2);
    let start = Instant::now();
    while b.mailbox("bob@b.test").len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "mail not delivered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = unix_now();
    let line = py.line(10);
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f[..2], ["EXISTS", "2"], "{line}");
    let at: f64 = f[2].parse().expect("time");
    assert!(
        at - seen < 1.0,
        "EXISTS {:.3} s after the store had it",
        at - seen
    );
    py.finish(10);
}

/// Issue 4: mail arriving over SMTP shows up in IDLE within a second of the 250.
#[test]
fn idle_reports_mail_from_smtp() {
    let smtp_port = free_port("127.0.0.103");
    let (x, imap) = imap::imap_server(
        "b.test",
        "127.0.0.103",
        &format!("[smtp]\nlisten = [\"127.0.0.103:{smtp_port}\"]"),
    );
    x.add_user("bob@b.test");
    let mut py = PyChild::start(IDLE, &["127.0.0.103", &imap.port().to_string()]);
    assert_eq!(py.line(20), "IDLING");
    let out = python(
        r#"
import smtplib, sys, time
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]))
s.sendmail('carol@c.example', ['bob@b.test'], b'From: carol@c.example\r\nTo: bob@b.test\r\nSubject: by smtp\r\n\r\nhello\r\n')
print('%.3f' % time.time())
s.quit()
"#,
        &["127.0.0.103", &smtp_port.to_string()],
        30,
    );
    let accepted: f64 = out.trim().parse().expect("time");
    let line = py.line(10);
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f[..2], ["EXISTS", "1"], "{line}");
    let at: f64 = f[2].parse().expect("time");
    assert!(
        at - accepted < 1.0,
        "EXISTS {:.3} s after the 250",
        at - accepted
    );
    py.finish(10);
}
