//! Local delivery into an existing Dovecot (issue 4 item 6): xmta b.test with
//! `[delivery] local = "lmtp:..."` hands local mail to a private Dovecot 2.3 over LMTP,
//! acknowledging each recipient only once Dovecot answered for it. Mail sent over XMPP from
//! xmta a.test is read back from Dovecot with Python's imaplib; a recipient Dovecot does
//! not know is refused (5xx: DSN to the sender); Dovecot down defers (retry) until it is up.

mod common;

use common::dovecot::Dovecot;
use common::*;

fn b_with_dovecot(dovecot: &Dovecot) -> (Xmta, Xmta) {
    let (a, mut b) = pair("127.0.0.142", "127.0.0.143", "", "");
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
    let (mut a, b) = b_with_dovecot(&dovecot);
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
}

#[test]
fn dovecot_down_defers_until_it_is_up() {
    let mut dovecot = Dovecot::new("127.0.0.148", &["bob@b.test"]);
    let (mut a, mut b) = pair("127.0.0.149", "127.0.0.147", "", "");
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
    dovecot.start();
    b.wait_for("the retried mail in Dovecot", 30, || {
        !dovecot.fetch_all("bob@b.test").is_empty()
    });
    let got = dovecot.fetch_all("bob@b.test");
    assert_eq!(got.len(), 1);
    assert!(got[0].ends_with(&m));
    a.wait_for("the queue to empty", 30, || a.queue().is_empty());
}
