//! IMAP sessions against each other and against bad input: changes in one session are
//! reported to another on the same folder (RFC 3501 §7 rules on EXPUNGE), and every bad
//! input gets its tagged reply while a good session in parallel keeps working.

mod common;

use common::imap::*;
use common::*;

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

fn last(lines: &[String]) -> &str {
    lines.last().map(String::as_str).unwrap_or("")
}

fn three_messages(x: &Xmta, user: &str) {
    x.add_user(user);
    for s in ["one", "two", "three"] {
        x.send(user, &[user], &message(user, user, s, "body text"));
    }
    x.wait_for("three messages", 10, || x.mailbox(user).len() == 3);
}

/// Issue 4: a flag change and an expunge in one session are reported to another session on
/// the same folder: at NOOP, and at once in IDLE; no EXPUNGE during FETCH.
#[test]
fn two_sessions_see_each_others_changes() {
    let (x, addr) = imap_server("s.test", "127.0.0.94", "");
    three_messages(&x, "u@s.test");
    let mut a = ImapRaw::connect(addr);
    let mut b = ImapRaw::connect(addr);
    a.login("u@s.test");
    b.login("u@s.test");
    assert!(has(&a.cmd("a1", "SELECT INBOX"), "* 3 EXISTS"));
    assert!(has(&b.cmd("b1", "SELECT INBOX"), "* 3 EXISTS"));

    // A flag change.
    let r = a.cmd("a2", "STORE 1 +FLAGS (\\Flagged)");
    // A selected first: the messages are \Recent in its session only.
    assert!(has(&r, "* 1 FETCH (FLAGS (\\Flagged \\Recent))"), "{r:?}");
    let r = b.cmd("b2", "NOOP");
    assert!(has(&r, "* 1 FETCH (FLAGS (\\Flagged) UID 1)"), "{r:?}");
    // Not reported twice, nor back to the session that made it.
    assert_eq!(b.cmd("b3", "NOOP").len(), 1);
    assert_eq!(a.cmd("a3", "NOOP").len(), 1);

    // An expunge: A sees it at once; B not during FETCH, then at NOOP.
    a.cmd("a4", "STORE 2 +FLAGS.SILENT (\\Deleted)");
    let r = a.cmd("a5", "EXPUNGE");
    assert!(has(&r, "* 2 EXPUNGE"), "{r:?}");
    let r = b.cmd("b4", "FETCH 1:3 (UID)");
    assert!(!has(&r, "EXPUNGE"), "{r:?}");
    assert!(
        has(&r, "* 1 FETCH (UID 1)") && has(&r, "* 3 FETCH (UID 3)"),
        "{r:?}"
    );
    assert!(last(&r).starts_with("b4 OK"), "{r:?}");
    let r = b.cmd("b5", "NOOP");
    assert!(has(&r, "* 2 EXPUNGE"), "{r:?}");
    let r = b.cmd("b6", "UID SEARCH ALL");
    assert!(has(&r, "* SEARCH 1 3"), "{r:?}");

    // In IDLE, changes arrive without a command.
    b.send_raw(b"b7 IDLE\r\n");
    assert!(b.read_line().starts_with('+'));
    a.cmd("a6", "STORE 2 +FLAGS (\\Seen)");
    let line = b.read_line();
    assert_eq!(line, "* 2 FETCH (FLAGS (\\Seen) UID 3)\r\n");
    x.send(
        "u@s.test",
        &["u@s.test"],
        &message("u@s.test", "u@s.test", "four", "x"),
    );
    let line = b.read_line();
    assert_eq!(line, "* 3 EXISTS\r\n");
    // B is the first session told of it: it is recent there.
    assert_eq!(b.read_line(), "* 1 RECENT\r\n");
    a.cmd("a7", "STORE 1 +FLAGS.SILENT (\\Deleted)");
    assert_eq!(
        b.read_line(),
        "* 1 FETCH (FLAGS (\\Flagged \\Deleted) UID 1)\r\n"
    );
    a.cmd("a8", "EXPUNGE");
    assert_eq!(b.read_line(), "* 1 EXPUNGE\r\n");
    b.send_raw(b"DONE\r\n");
    assert!(b.read_line().starts_with("b7 OK"));
}

/// Issue 4, bad input: each gets a tagged BAD or NO (or, where it must, BYE and close),
/// and a good session in parallel keeps working.
#[test]
fn bad_input_gets_tagged_replies() {
    let (x, addr) = imap_server(
        "s.test",
        "127.0.0.95",
        "max_command_line = 2048\nmax_literal_bytes = 100000",
    );
    three_messages(&x, "u@s.test");
    let mut good = ImapRaw::connect(addr);
    good.login("u@s.test");
    assert!(has(&good.cmd("g1", "SELECT INBOX"), "* 3 EXISTS"));
    let check = |good: &mut ImapRaw, n: u32| {
        let tag = format!("g{}", n + 10);
        let r = good.cmd(&tag, "FETCH 1 (UID FLAGS)");
        assert!(last(&r).starts_with(&format!("{tag} OK")), "{r:?}");
    };

    let mut c = ImapRaw::connect(addr);
    // Commands in the wrong state.
    assert!(last(&c.cmd("w1", "SELECT INBOX")).starts_with("w1 BAD"));
    assert!(last(&c.cmd("w2", "FETCH 1 FLAGS")).starts_with("w2 BAD"));
    c.login("u@s.test");
    assert!(last(&c.cmd("w3", "FETCH 1 FLAGS")).starts_with("w3 BAD"));
    assert!(last(&c.cmd("w4", "LOGIN u@s.test secret")).starts_with("w4 BAD"));
    assert!(last(&c.cmd("w5", "FROBNICATE")).starts_with("w5 BAD"));
    assert!(last(&c.cmd("w6", "SELECT Nonexistent")).starts_with("w6 NO"));
    check(&mut good, 1);

    // Invalid sequence sets.
    c.cmd("s0", "SELECT INBOX");
    assert!(last(&c.cmd("s1", "FETCH 0 FLAGS")).starts_with("s1 BAD"));
    assert!(last(&c.cmd("s2", "FETCH 99 FLAGS")).starts_with("s2 BAD"));
    assert!(last(&c.cmd("s3", "FETCH 1:x FLAGS")).starts_with("s3 BAD"));
    assert!(last(&c.cmd("s4", "STORE 5:7 +FLAGS (\\Seen)")).starts_with("s4 BAD"));
    // Non-existent UIDs are not an error (RFC 3501 §6.4.8).
    let r = c.cmd("s5", "UID FETCH 99:100 FLAGS");
    assert_eq!(r, vec!["s5 OK UID FETCH completed\r\n".to_string()]);
    check(&mut good, 2);

    // Deep nesting in SEARCH.
    let deep = format!("SEARCH {}ALL{}", "(".repeat(50), ")".repeat(50));
    assert!(last(&c.cmd("n1", &deep)).starts_with("n1 BAD"));
    let deep_not = format!("SEARCH {}ALL", "NOT ".repeat(200));
    assert!(last(&c.cmd("n2", &deep_not)).starts_with("n2 BAD"));
    assert!(has(
        &c.cmd("n3", "SEARCH OR (SEEN) (NOT SEEN)"),
        "* SEARCH 1 2 3"
    ));
    check(&mut good, 3);

    // Command lines too long: one that arrives whole, and one far larger that is dropped
    // while it arrives.
    let long = format!("l1 NOOP {}\r\n", "x".repeat(3000));
    c.send_raw(long.as_bytes());
    assert!(last(&c.until_tag("l1")).starts_with("l1 BAD"));
    let huge = format!("l2 NOOP {}\r\n", "y".repeat(3_000_000));
    c.send_raw(huge.as_bytes());
    assert!(last(&c.until_tag("l2")).starts_with("l2 BAD"));
    assert!(last(&c.cmd("l3", "NOOP")).starts_with("l3 OK"));
    check(&mut good, 4);

    // A huge synchronizing literal is refused before any of it is sent.
    c.send_raw(b"h1 APPEND INBOX {999999999}\r\n");
    let r = c.until_tag("h1");
    assert!(last(&r).starts_with("h1 NO [TOOBIG]"), "{r:?}");
    assert!(last(&c.cmd("h2", "NOOP")).starts_with("h2 OK"));
    // A literal within the limit is taken.
    let msg = "Subject: ok\r\n\r\nfine\r\n";
    c.send_raw(format!("h3 APPEND INBOX {{{}}}\r\n", msg.len()).as_bytes());
    assert!(c.read_line().starts_with('+'));
    c.send_raw(format!("{msg}\r\n").as_bytes());
    assert!(last(&c.until_tag("h3")).starts_with("h3 OK [APPENDUID"));
    check(&mut good, 5);

    // A huge non-synchronizing literal cannot be refused without reading it: BAD, BYE, close.
    let mut d = ImapRaw::connect(addr);
    d.login("u@s.test");
    d.send_raw(b"h4 APPEND INBOX {999999999+}\r\nabc");
    let r = d.until_tag("h4");
    assert!(last(&r).starts_with("h4 BAD"), "{r:?}");
    assert!(d.closed_within(5));
    check(&mut good, 6);

    // The messages already stored are all there.
    let r = good.cmd("g99", "SELECT INBOX");
    assert!(has(&r, "* 4 EXISTS"), "{r:?}");
    assert_eq!(x.mailbox("u@s.test").len(), 4);
}

/// Failed logins are limited per client address (`[imap] max_login_failures`); a session
/// logged in before keeps working. AUTHENTICATE PLAIN with an initial response works.
#[test]
fn failed_logins_are_rate_limited() {
    let (x, addr) = imap_server("s.test", "127.0.0.96", "max_login_failures = 3");
    x.add_user("u@s.test");
    let mut good = ImapRaw::connect(addr);
    // AUTHENTICATE PLAIN, base64("\0u@s.test\0secret").
    let r = good.cmd("p1", "AUTHENTICATE PLAIN AHVAcy50ZXN0AHNlY3JldA==");
    assert!(last(&r).starts_with("p1 OK"), "{r:?}");
    let mut c = ImapRaw::connect(addr);
    for i in 0..3 {
        let tag = format!("f{i}");
        let r = c.cmd(&tag, "LOGIN u@s.test wrong");
        assert!(
            last(&r).starts_with(&format!("{tag} NO [AUTHENTICATIONFAILED]")),
            "{r:?}"
        );
    }
    let r = c.cmd("f3", "LOGIN u@s.test secret");
    assert!(last(&r).starts_with("f3 NO [UNAVAILABLE]"), "{r:?}");
    let mut other = ImapRaw::connect(addr);
    let r = other.cmd("f4", "AUTHENTICATE PLAIN AHVAcy50ZXN0AHNlY3JldA==");
    assert!(last(&r).starts_with("f4 NO [UNAVAILABLE]"), "{r:?}");
    // Malformed SASL data.
    let r = c.cmd("f5", "AUTHENTICATE PLAIN !!!notbase64");
    assert!(last(&r).starts_with("f5 BAD"), "{r:?}");
    assert!(has(&good.cmd("p2", "SELECT INBOX"), "* 0 EXISTS"));
}

/// Connections beyond `[imap] max_connections` get `* BYE` at once.
#[test]
fn connection_limit() {
    let (_x, addr) = imap_server("s.test", "127.0.0.97", "max_connections = 2");
    let _a = ImapRaw::connect(addr);
    let _b = ImapRaw::connect(addr);
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    use std::io::Read;
    let mut buf = String::new();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    s.read_to_string(&mut buf).expect("read");
    assert!(buf.starts_with("* BYE [UNAVAILABLE]"), "{buf}");
}

/// An unterminated literal: the server waits for the rest, then logs the session out at
/// `[imap] idle_timeout_secs` with `* BYE`; a session that keeps talking is not affected.
#[test]
fn unterminated_literal_ends_at_the_idle_timeout() {
    let (x, addr) = imap_server("s.test", "127.0.0.98", "idle_timeout_secs = 2");
    x.add_user("u@s.test");
    let mut good = ImapRaw::connect(addr);
    good.login("u@s.test");
    let mut e = ImapRaw::connect(addr);
    e.login("u@s.test");
    e.send_raw(b"t1 APPEND INBOX {100}\r\n");
    assert!(e.read_line().starts_with('+'));
    e.send_raw(b"only ten b");
    let start = std::time::Instant::now();
    for i in 0..6 {
        let tag = format!("g{i}");
        assert!(last(&good.cmd(&tag, "NOOP")).starts_with(&format!("{tag} OK")));
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(e.read_line(), "* BYE autologout: idle for too long\r\n");
    assert!(start.elapsed() >= std::time::Duration::from_secs(1));
    assert!(e.closed_within(5));
    assert!(x.mailbox("u@s.test").is_empty());
}

/// CONDSTORE (RFC 7162): HIGHESTMODSEQ at SELECT and in STATUS, MODSEQ in FETCH and in
/// another session's flag updates, FETCH CHANGEDSINCE, STORE UNCHANGEDSINCE with MODIFIED,
/// SEARCH MODSEQ.
#[test]
fn condstore() {
    let (x, addr) = imap_server("s.test", "127.0.0.102", "");
    three_messages(&x, "u@s.test");
    let mut a = ImapRaw::connect(addr);
    let mut b = ImapRaw::connect(addr);
    a.login("u@s.test");
    b.login("u@s.test");
    assert!(has(&a.cmd("c0", "CAPABILITY"), " CONDSTORE"));
    assert!(has(&a.cmd("c1", "ENABLE CONDSTORE"), "* ENABLED CONDSTORE"));
    let r = a.cmd("c2", "SELECT INBOX");
    let hms: u64 = r
        .iter()
        .find_map(|l| l.strip_prefix("* OK [HIGHESTMODSEQ "))
        .and_then(|l| l.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no HIGHESTMODSEQ in {r:?}"));
    assert!(has(
        &b.cmd("d1", "SELECT INBOX (CONDSTORE)"),
        "HIGHESTMODSEQ"
    ));

    let r = a.cmd("c3", "FETCH 1:3 (MODSEQ)");
    assert!(has(&r, "* 3 FETCH (MODSEQ ("), "{r:?}");
    // A change by b: a sees it with its MODSEQ, and only it is "changed since".
    let r = b.cmd("d2", "STORE 2 +FLAGS (\\Flagged)");
    let line = r
        .iter()
        .find(|l| l.starts_with("* 2 FETCH"))
        .unwrap_or_else(|| panic!("{r:?}"));
    assert!(
        line.contains("FLAGS (\\Flagged)") && line.contains("MODSEQ ("),
        "{line}"
    );
    let r = a.cmd("c4", "NOOP");
    assert!(
        has(&r, "* 2 FETCH (FLAGS (\\Flagged \\Recent) UID 2 MODSEQ ("),
        "{r:?}"
    );
    let r = a.cmd("c5", &format!("FETCH 1:3 (FLAGS) (CHANGEDSINCE {hms})"));
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(
        r[0].starts_with("* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ ("),
        "{r:?}"
    );
    let r = a.cmd("c6", &format!("UID SEARCH MODSEQ {}", hms + 1));
    assert!(has(&r, "* SEARCH 2 (MODSEQ "), "{r:?}");
    let r = a.cmd("c7", "STATUS INBOX (HIGHESTMODSEQ)");
    assert!(has(&r, &format!("HIGHESTMODSEQ {}", hms + 1)), "{r:?}");

    // UNCHANGEDSINCE the old value: message 2 changed since and is refused.
    let r = a.cmd(
        "c8",
        &format!("STORE 1:3 (UNCHANGEDSINCE {hms}) +FLAGS (\\Seen)"),
    );
    assert!(last(&r).starts_with("c8 OK [MODIFIED 2]"), "{r:?}");
    assert!(
        has(&r, "* 1 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (") && !has(&r, "* 2 FETCH"),
        "{r:?}"
    );
    let r = a.cmd("c9", "FETCH 2 (FLAGS)");
    assert!(
        has(&r, "FLAGS (\\Flagged \\Recent)") && !has(&r, "\\Seen"),
        "{r:?}"
    );
}

fn uidvalidity(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("* OK [UIDVALIDITY "))
        .and_then(|l| l.split(']').next())
        .unwrap_or_else(|| panic!("no UIDVALIDITY in {lines:?}"))
        .to_string()
}

/// The folder commands (CREATE, LIST, SUBSCRIBE/LSUB, RENAME, STATUS, DELETE with a new
/// UIDVALIDITY on re-create), COPY with COPYUID, UID EXPUNGE, EXAMINE read-only, CLOSE,
/// UNSELECT, NAMESPACE, and FETCH of MIME parts over the wire.
#[test]
fn folders_copy_and_mime_fetch() {
    let (x, addr) = imap_server("s.test", "127.0.0.105", "");
    three_messages(&x, "u@s.test");
    let mut c = ImapRaw::connect(addr);
    c.login("u@s.test");
    assert!(has(
        &c.cmd("n", "NAMESPACE"),
        "* NAMESPACE ((\"\" \"/\")) NIL NIL"
    ));
    assert!(last(&c.cmd("c1", "CREATE Work/Sub")).starts_with("c1 OK"));
    assert!(last(&c.cmd("c2", "CREATE Work")).starts_with("c2 NO [ALREADYEXISTS]"));
    let r = c.cmd("c3", "LIST \"\" \"Work*\"");
    assert!(has(&r, "* LIST (\\HasChildren) \"/\" \"Work\""), "{r:?}");
    assert!(
        has(&r, "* LIST (\\HasNoChildren) \"/\" \"Work/Sub\""),
        "{r:?}"
    );
    let r = c.cmd("c4", "LIST \"\" %");
    assert!(!has(&r, "Work/Sub") && has(&r, "\"Work\""), "{r:?}");
    assert!(has(&r, "\\Sent) \"/\" \"Sent\""), "{r:?}");
    assert!(!has(&c.cmd("c5", "LSUB \"\" *"), "Work"));
    assert!(last(&c.cmd("c6", "SUBSCRIBE Work")).starts_with("c6 OK"));
    assert!(has(&c.cmd("c7", "LSUB \"\" *"), "\"Work\""));

    // COPY with COPYUID into Work/Sub.
    let r = c.cmd("s1", "EXAMINE Work/Sub");
    let sub_validity = uidvalidity(&r);
    c.cmd("s2", "SELECT INBOX");
    let r = c.cmd("s3", "COPY 2:3 Work/Sub");
    assert_eq!(
        last(&r),
        format!("s3 OK [COPYUID {sub_validity} 2:3 1:2] COPY completed\r\n")
    );
    assert!(last(&c.cmd("s4", "COPY 1 Nowhere")).starts_with("s4 NO [TRYCREATE]"));
    // UID EXPUNGE removes only the listed \Deleted messages.
    c.cmd("s5", "STORE 1:2 +FLAGS.SILENT (\\Deleted)");
    let r = c.cmd("s6", "UID EXPUNGE 2");
    assert!(has(&r, "* 2 EXPUNGE") && !has(&r, "* 1 EXPUNGE"), "{r:?}");
    // CLOSE expunges the rest silently.
    let r = c.cmd("s7", "CLOSE");
    assert!(!has(&r, "EXPUNGE"), "{r:?}");
    let r = c.cmd("s8", "STATUS INBOX (MESSAGES UNSEEN UIDNEXT)");
    assert!(
        has(&r, "* STATUS \"INBOX\" (MESSAGES 1 UNSEEN 1 UIDNEXT 4)"),
        "{r:?}"
    );

    // RENAME keeps the folder (and its UIDVALIDITY), with its subfolder.
    assert!(last(&c.cmd("r1", "RENAME Work Job")).starts_with("r1 OK"));
    let r = c.cmd("r2", "EXAMINE Job/Sub");
    assert_eq!(uidvalidity(&r), sub_validity);
    assert!(has(&r, "* 2 EXISTS"), "{r:?}");
    assert!(last(&c.cmd("r3", "STORE 1 +FLAGS (\\Seen)")).starts_with("r3 NO [READ-ONLY]"));
    assert!(last(&c.cmd("r4", "UNSELECT")).starts_with("r4 OK"));
    assert!(last(&c.cmd("r5", "DELETE Job/Sub")).starts_with("r5 OK"));
    assert!(last(&c.cmd("r6", "DELETE INBOX")).starts_with("r6 NO"));
    assert!(last(&c.cmd("r7", "CREATE Job/Sub")).starts_with("r7 OK"));
    assert_ne!(uidvalidity(&c.cmd("r8", "SELECT Job/Sub")), sub_validity);
    assert!(last(&c.cmd("r9", "APPEND Nowhere {1+}\r\nx")).starts_with("r9 NO [TRYCREATE]"));

    // A MIME message: sections, BODYSTRUCTURE and ENVELOPE over the wire.
    let mime = "From: A <a@x.test>\r\nTo: u@s.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n\
                Content-Type: multipart/alternative; boundary=\"zz\"\r\n\r\n--zz\r\n\
                Content-Type: text/plain\r\n\r\nplain part\r\n--zz\r\n\
                Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
                <p>html part</p>\r\n--zz--\r\n";
    let r = c.cmd("m1", &format!("APPEND INBOX {{{}+}}\r\n{mime}", mime.len()));
    assert!(last(&r).starts_with("m1 OK [APPENDUID"), "{r:?}");
    c.cmd("m2", "SELECT INBOX");
    let r = c.cmd(
        "m3",
        "FETCH 2 (BODY.PEEK[2] BODY.PEEK[1.MIME] BODYSTRUCTURE ENVELOPE)",
    );
    let all: String = r.concat();
    assert!(all.contains("BODY[2] {16}\r\n<p>html part</p>"), "{all}");
    assert!(
        all.contains("BODY[1.MIME] {28}\r\nContent-Type: text/plain\r\n\r\n"),
        "{all}"
    );
    assert!(
        all.contains("BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 10 0 NIL NIL NIL NIL)(\"TEXT\" \"HTML\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"QUOTED-PRINTABLE\" 16 0 NIL NIL NIL NIL) \"ALTERNATIVE\" (\"BOUNDARY\" \"zz\") NIL NIL NIL)"),
        "{all}"
    );
    assert!(
        all.contains("ENVELOPE (NIL \"parts\" ((\"A\" NIL \"a\" \"x.test\"))"),
        "{all}"
    );
    // PEEK left \Seen alone; BODY[] without it sets it.
    // (Recent: the APPEND came after this session's last SELECT.)
    assert!(has(&c.cmd("m4", "FETCH 2 (FLAGS)"), "FLAGS (\\Recent)"));
    let r = c.cmd("m5", "FETCH 2 (BODY[TEXT]<0.4>)");
    assert!(r.concat().contains("BODY[TEXT]<0> {4}\r\n--zz"), "{r:?}");
    assert!(has(&r, "FLAGS (\\Seen \\Recent)"), "{r:?}");
}
