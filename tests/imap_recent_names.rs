//! \Recent (RFC 3501 §2.3.2) across sessions, and mailbox names in modified UTF-7
//! (§5.1.3) with Python's imaplib. Addresses 127.0.1.122-124.

mod common;

use std::time::{Duration, Instant};

use common::imap::*;
use common::ops::make_maildir;
use common::*;

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

fn last(lines: &[String]) -> &str {
    lines.last().map(String::as_str).unwrap_or("")
}

/// NOOP until `needle` shows up (the new-mail notification follows the commit).
fn noop_until(c: &mut ImapRaw, tag: &str, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.cmd(tag, "NOOP");
        if has(&r, needle) {
            return r;
        }
        assert!(Instant::now() < deadline, "no {needle}: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn recent_goes_to_the_first_session_only() {
    let (x, addr) = imap_server("r.test", "127.0.1.122", "");
    let user = "u@r.test";
    x.add_user(user);
    for s in ["one", "two", "three"] {
        x.send(user, &[user], &message(user, user, s, "body"));
    }
    x.wait_for("three messages", 10, || x.mailbox(user).len() == 3);
    let mut a = ImapRaw::connect(addr);
    let mut b = ImapRaw::connect(addr);
    let mut c = ImapRaw::connect(addr);
    a.login(user);
    b.login(user);
    c.login(user);
    let r = c.cmd("c1", "STATUS INBOX (MESSAGES RECENT)");
    assert!(has(&r, "(MESSAGES 3 RECENT 3)"), "{r:?}");
    // EXAMINE shows them recent but does not take them.
    let r = c.cmd("c2", "EXAMINE INBOX");
    assert!(has(&r, "* 3 RECENT"), "{r:?}");

    // A selects first: all three are recent there.
    let r = a.cmd("a1", "SELECT INBOX");
    assert!(has(&r, "* 3 EXISTS") && has(&r, "* 3 RECENT"), "{r:?}");
    let r = a.cmd("a2", "FETCH 1 (FLAGS)");
    assert!(has(&r, "* 1 FETCH (FLAGS (\\Recent))"), "{r:?}");
    assert!(has(&a.cmd("a3", "SEARCH RECENT"), "* SEARCH 1 2 3"));
    a.cmd("a4", "STORE 2 +FLAGS.SILENT (\\Seen)");
    let r = a.cmd("a5", "SEARCH NEW");
    assert!(has(&r, "* SEARCH 1 3\r\n"), "{r:?}");
    let r = a.cmd("a6", "SEARCH OLD");
    assert!(has(&r, "* SEARCH\r\n"), "{r:?}");

    // B comes second: nothing is recent for it, and STATUS now says 0.
    let r = b.cmd("b1", "STATUS INBOX (RECENT)");
    assert!(has(&r, "(RECENT 0)"), "{r:?}");
    let r = b.cmd("b2", "SELECT INBOX");
    assert!(has(&r, "* 3 EXISTS") && has(&r, "* 0 RECENT"), "{r:?}");
    let r = b.cmd("b3", "FETCH 1:3 (FLAGS)");
    assert!(!has(&r, "\\Recent"), "{r:?}");
    assert!(has(&b.cmd("b4", "SEARCH RECENT"), "* SEARCH\r\n"));
    assert!(has(&b.cmd("b5", "SEARCH OLD"), "* SEARCH 1 2 3\r\n"));

    // New mail while both have the folder selected: the first to be told gets it.
    x.send(user, &[user], &message(user, user, "four", "body"));
    x.wait_for("four messages", 10, || x.mailbox(user).len() == 4);
    let r = c.cmd("c3", "STATUS INBOX (RECENT)");
    assert!(has(&r, "(RECENT 1)"), "{r:?}");
    let r = noop_until(&mut b, "b6", "* 4 EXISTS");
    assert!(has(&r, "* 1 RECENT"), "{r:?}");
    let r = b.cmd("b7", "FETCH 4 (FLAGS)");
    assert!(has(&r, "\\Recent"), "{r:?}");
    let r = noop_until(&mut a, "a7", "* 4 EXISTS");
    assert!(!has(&r, "RECENT"), "{r:?}");
    let r = a.cmd("a8", "SEARCH RECENT");
    assert!(has(&r, "* SEARCH 1 2 3\r\n"), "{r:?}");
    assert!(has(&a.cmd("a9", "FETCH 4 (FLAGS)"), "FLAGS ()"));
    let r = c.cmd("c4", "STATUS INBOX (RECENT)");
    assert!(has(&r, "(RECENT 0)"), "{r:?}");
    // A new session after all that: nothing recent.
    let mut d = ImapRaw::connect(addr);
    d.login(user);
    assert!(has(&d.cmd("d1", "SELECT INBOX"), "* 0 RECENT"));
}

const NAMES: &str = r#"
import imaplib, sys
host, port = sys.argv[1], int(sys.argv[2])
M = imaplib.IMAP4(host, port)
M.login('u@n.test', 'secret')
typ, data = M.create('Entw&APw-rfe')
assert typ == 'OK', data
typ, data = M.create('&ZeVnLIqe-/&U,BTFw-')
assert typ == 'OK', data
typ, data = M.list()
names = [l.split(b' "/" ', 1)[1] for l in data]
assert b'"Entw&APw-rfe"' in names, names
assert b'"&ZeVnLIqe-"' in names and b'"&ZeVnLIqe-/&U,BTFw-"' in names, names
typ, data = M.status('Entw&APw-rfe', '(MESSAGES)')
assert typ == 'OK' and data[0].startswith(b'"Entw&APw-rfe" (MESSAGES'), data
# Invalid modified UTF-7: refused.
for bad in ['Bad&AGE-', 'Bad&APw', 'Bad&A-']:
    try:
        typ, data = M.create(bad)
    except imaplib.IMAP4.error as e:
        assert 'modified UTF-7' in str(e), e
    else:
        raise AssertionError((bad, typ, data))
typ, data = M.list()
assert not any(b'Bad' in l for l in data), data
print('ready', flush=True)
sys.stdin.readline()
typ, data = M.select('Entw&APw-rfe')
assert typ == 'OK' and data == [b'1'], data
typ, data = M.rename('Entw&APw-rfe', 'Alt&-Entw&APw-rfe')
assert typ == 'OK', data
typ, data = M.list()
assert b'(\\HasNoChildren) "/" "Alt&-Entw&APw-rfe"' in data, data
M.logout()
"#;

#[test]
fn folder_names_are_modified_utf7_on_the_wire_and_utf8_in_the_store() {
    let (x, addr) = imap_server("n.test", "127.0.1.123", "");
    x.add_user("u@n.test");
    let port = addr.port().to_string();
    let mut py = PyChild::start(NAMES, &["127.0.1.123", &port]);
    assert_eq!(py.line(20), "ready");
    // The store has the folder under its UTF-8 name: an import names it so.
    let md = x.dir.path().join("Maildir");
    make_maildir(&md, 1);
    let out = x.cmd(
        &[
            "import",
            "maildir",
            md.to_str().unwrap(),
            "u@n.test",
            "--folder",
            "Entwürfe",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    py.send("go\n");
    py.finish(20);

    // 8-bit and control bytes in a name are not modified UTF-7 either.
    let mut c = ImapRaw::connect(addr);
    c.login("u@n.test");
    c.send_raw("c1 CREATE {9}\r\n".as_bytes());
    assert!(c.read_line().starts_with('+'));
    c.send_raw("Entwürfe\r\n".as_bytes());
    let r = c.until_tag("c1");
    assert!(last(&r).starts_with("c1 BAD"), "{r:?}");
    let r = c.cmd("c2", "SELECT \"Entw&APw-rfe\"");
    assert!(last(&r).starts_with("c2 NO"), "{r:?}");
    let r = c.cmd("c3", "SELECT \"Alt&-Entw&APw-rfe\"");
    assert!(last(&r).starts_with("c3 OK"), "{r:?}");
}
