//! Local delivery into an existing Dovecot (issue 4 item 6): xmta b.test with
//! `[delivery] local = "lmtp:..."` hands local mail to a private Dovecot 2.3 over LMTP,
//! acknowledging each recipient only once Dovecot answered for it. Mail sent over XMPP from
//! xmta a.test is read back from Dovecot with Python's imaplib; a recipient Dovecot does
//! not know is refused (5xx: DSN to the sender); Dovecot down defers (retry) until it is up.

mod common;

use common::dovecot::Dovecot;
use common::*;

/// LMTP client (Python's smtplib): prints one "code text" line per recipient after DATA.
const LMTP_SEND: &str = r#"
import smtplib, sys
host, port, sender, rcpts, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(','), sys.argv[5]
s = smtplib.LMTP(host, port)
s.ehlo()
s.mail(sender)
for r in rcpts:
    code, text = s.rcpt(r)
    assert code == 250, (r, code, text)
code, text = s.data(open(path, 'rb').read())
print(code, text.decode())
for _ in rcpts[1:]:
    code, text = s.getreply()
    print(code, text.decode())
s.quit()
"#;

fn b_with_dovecot(dovecot: &Dovecot, lmtp: &str) -> (Xmta, Xmta) {
    let extra_b = format!("[smtp]\nlmtp = \"{lmtp}\"\n");
    let (a, mut b) = pair("127.0.0.142", "127.0.0.143", "", &extra_b);
    let cfg = std::fs::read_to_string(&b.config).unwrap().replacen(
        "[delivery]\n",
        &format!("[delivery]\nlocal = \"lmtp:{}\"\n", dovecot.lmtp),
        1,
    );
    std::fs::write(&b.config, cfg).unwrap();
    b.start();
    (a, b)
}

#[test]
fn s2s_mail_is_delivered_into_dovecot() {
    let mut dovecot = Dovecot::new("127.0.0.144", &["bob@b.test"]);
    dovecot.start();
    let lmtp = format!("127.0.0.143:{}", free_port("127.0.0.143"));
    let (mut a, b) = b_with_dovecot(&dovecot, &lmtp);
    a.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    // carol exists in xmta but not in Dovecot: Dovecot refuses her for good.
    b.add_user("carol@b.test");

    let m = message(
        "alice@a.test",
        "bob@b.test",
        "into-dovecot",
        "Over XMPP, then LMTP into Dovecot.\r\n.dot line\r\nlast line",
    );
    a.send("alice@a.test", &["bob@b.test", "carol@b.test"], &m);
    b.wait_for("the mail in Dovecot", 30, || {
        !dovecot.fetch_all("bob@b.test").is_empty()
    });
    let got = dovecot.fetch_all("bob@b.test");
    assert_eq!(got.len(), 1);
    let s = String::from_utf8_lossy(&got[0]).into_owned();
    // Dovecot adds Return-Path/Delivered-To/Received in front; xmta b.test's trace and the
    // original bytes follow unchanged.
    assert!(got[0].ends_with(&m), "{s}");
    assert!(
        s.contains("Authentication-Results: b.test; x-xmpp=pass"),
        "{s}"
    );
    assert!(s.contains("Delivered-To: bob@b.test"), "{s}");
    assert!(s.starts_with("Return-Path: <alice@a.test>"), "{s}");
    // Nothing went into xmta's own store.
    assert!(b.mailbox("bob@b.test").is_empty());

    // carol: Dovecot's 550 travels back in the receipt, and a.test bounces to alice.
    a.wait_for("the DSN for carol", 30, || {
        !a.mailbox("alice@a.test").is_empty()
    });
    let dsn = String::from_utf8_lossy(&a.show("alice@a.test", a.mailbox("alice@a.test")[0].uid))
        .into_owned();
    assert!(
        dsn.contains("Final-Recipient: rfc822; carol@b.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(
        !dsn.contains("Final-Recipient: rfc822; bob@b.test"),
        "{dsn}"
    );

    // Local submission on b.test goes to Dovecot too.
    let m2 = message("carol@b.test", "bob@b.test", "local-submission", "Local.");
    b.send("carol@b.test", &["bob@b.test"], &m2);
    let got = dovecot.fetch_all("bob@b.test");
    assert_eq!(got.len(), 2, "xmta send returns once Dovecot took it");
    assert!(got.iter().any(|g| g.ends_with(&m2)));

    // xmta's own LMTP listener answers each recipient with Dovecot's answer for it.
    let m3 = message(
        "postfix@a.test",
        "bob@b.test",
        "via-lmtp",
        "LMTP in, LMTP out.",
    );
    let path = b.dir.path().join("m3.eml");
    std::fs::write(&path, &m3).unwrap();
    let (host, port) = lmtp.rsplit_once(':').unwrap();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(LMTP_SEND)
        .args([
            host,
            port,
            "postfix@a.test",
            "bob@b.test,carol@b.test",
            path.to_str().unwrap(),
        ])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("250 "), "bob: {text}");
    assert!(
        lines[1].starts_with("550 5.1.1 <carol@b.test>"),
        "carol: {text}"
    );
    let got = dovecot.fetch_all("bob@b.test");
    assert_eq!(got.len(), 3);
    assert!(got.iter().any(|g| g.ends_with(&m3)));
}

#[test]
fn dovecot_down_defers_until_it_is_up() {
    let mut dovecot = Dovecot::new("127.0.0.148", &["bob@b.test"]);
    let smtp = format!("127.0.0.147:{}", free_port("127.0.0.147"));
    let extra_b = format!("[smtp]\nlisten = [\"{smtp}\"]\n");
    let (mut a, mut b) = pair("127.0.0.149", "127.0.0.147", "", &extra_b);
    let cfg = std::fs::read_to_string(&b.config).unwrap().replacen(
        "[delivery]\n",
        &format!("[delivery]\nlocal = \"lmtp:{}\"\n", dovecot.lmtp),
        1,
    );
    std::fs::write(&b.config, cfg).unwrap();
    b.start();
    a.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let m = message(
        "alice@a.test",
        "bob@b.test",
        "deferred",
        "Wait for Dovecot.",
    );
    a.send("alice@a.test", &["bob@b.test"], &m);
    // Dovecot is not running: b.test's receipt defers bob, a.test keeps the mail queued.
    a.wait_for("a deferral naming the mailbox server", 30, || {
        a.queue()
            .iter()
            .any(|l| l.contains("bob@b.test") && l.contains("local mailbox server"))
    });
    assert!(a.mailbox("alice@a.test").is_empty(), "no bounce for a 4xx");
    // SMTP (one reply for the whole message) while Dovecot is down: b.test answers 250
    // only with the message durably queued for a later LMTP attempt.
    let m_smtp = message(
        "dave@c.test",
        "bob@b.test",
        "smtp-while-down",
        "Queued first.",
    );
    let path = b.dir.path().join("smtp.eml");
    std::fs::write(&path, &m_smtp).unwrap();
    let (host, port) = smtp.rsplit_once(':').unwrap();
    let script = "import smtplib,sys\ns=smtplib.SMTP(sys.argv[1],int(sys.argv[2]))\nr=s.sendmail('dave@c.test',['bob@b.test'],open(sys.argv[3],'rb').read())\nassert r=={},r\ns.quit()\n";
    let st = std::process::Command::new("python3")
        .args(["-c", script, host, port, path.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "SMTP to b.test accepted");
    b.wait_for("b.test to queue the local recipient", 10, || {
        b.queue()
            .iter()
            .any(|l| l.contains("bob@b.test") && l.contains("pending"))
    });
    dovecot.start();
    b.wait_for("both mails in Dovecot", 30, || {
        dovecot.fetch_all("bob@b.test").len() == 2
    });
    let got = dovecot.fetch_all("bob@b.test");
    assert!(got.iter().any(|g| g.ends_with(&m)));
    assert!(got.iter().any(|g| g.ends_with(&m_smtp)));
    a.wait_for("the queue to empty", 30, || a.queue().is_empty());
    b.wait_for("b.test's queue to empty", 30, || b.queue().is_empty());
}

/// The same mail id sent twice over s2s (a sender whose receipt was lost retries): Dovecot
/// gets it once, the second receipt says duplicate (XEP-MTA §11.3), with the store's
/// dedupe records written for the copy Dovecot took.
#[test]
fn s2s_retry_reaches_dovecot_once() {
    let mut dovecot = Dovecot::new("127.0.0.144", &["bob@b.test"]);
    dovecot.start();
    let evil = FakePeer::start("127.0.0.142", "evil.test");
    let mut b = Xmta::new(Spec {
        domain: "b.test",
        ip: "127.0.0.143",
        routes: vec![("evil.test".into(), evil.addr.to_string())],
        extra: "",
        s2s_extra: "",
    });
    let cfg = std::fs::read_to_string(&b.config).unwrap().replacen(
        "[delivery]\n",
        &format!("[delivery]\nlocal = \"lmtp:{}\"\n", dovecot.lmtp),
        1,
    );
    std::fs::write(&b.config, cfg).unwrap();
    b.start();
    b.add_user("bob@b.test");
    let mut r = Raw::connect(b.addr);
    r.open_stream("evil.test", "b.test");
    r.send("<db:result from='evil.test' to='b.test'>somekey</db:result>");
    assert!(
        r.read_until(15, |s| s.contains("type='valid'")),
        "{}",
        r.got
    );
    let msg = b"From: eve@evil.test\r\nTo: bob@b.test\r\nSubject: twice\r\n\r\nsent twice\r\n";
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(msg);
    let digest = xmta::mta::payload::sha256_hex(msg);
    let stanza = |n: u32| {
        format!(
            "<message from='eve@evil.test' to='bob@b.test' id='t{n}' type='normal'><mail xmlns='urn:xmpp:mta:0' id='dup1' size='{}' sha256='{digest}'><envelope><mail-from>eve@evil.test</mail-from><rcpt-to>bob@b.test</rcpt-to></envelope><data>{b64}</data></mail></message>",
            msg.len()
        )
    };
    r.send(&stanza(1));
    b.wait_for("the first receipt", 20, || {
        evil.seen().contains("id='dup1'")
    });
    assert!(!evil.seen().contains("duplicate='true'"), "{}", evil.seen());
    r.send(&stanza(2));
    b.wait_for("the duplicate receipt", 20, || {
        evil.seen().contains("duplicate='true'")
    });
    let got = dovecot.fetch_all("bob@b.test");
    assert_eq!(got.len(), 1, "delivered once");
    assert!(got[0].ends_with(msg));
}
