//! Two xmta processes, a.test and b.test, exchange mail over dialback-authenticated s2s
//! streams. Section numbers refer to xep-drafts/xep-xmta-mail.xml ("XEP-MTA").

mod common;

use common::*;

/// XEP-MTA §7 (the mail stanza) and §10 (the receipt): mail both ways, stored exactly as
/// sent (after the receiving server's trace header), and the sender's queue empties only
/// on the receipt.
#[test]
fn mail_both_ways() {
    let (mut a, mut b) = pair("127.0.0.2", "127.0.0.3", "", "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");

    let m1 = message(
        "alice@a.test",
        "bob@b.test",
        "hello-bob",
        "Hi Bob, over XMPP.",
    );
    a.send("alice@a.test", &["bob@b.test"], &m1);
    b.wait_for("bob's mail", 30, || b.mailbox("bob@b.test").len() == 1);
    let got = b.show("bob@b.test", b.mailbox("bob@b.test")[0].uid);
    assert!(
        got.ends_with(&m1),
        "stored message must end with the exact bytes sent"
    );
    let trace = &got[..got.len() - m1.len()];
    let trace = String::from_utf8_lossy(trace);
    // XEP-MTA §9.4: Authentication-Results and Received name the authenticated domain.
    assert!(trace.starts_with("Authentication-Results: b.test; x-xmpp=pass (dialback)\r\n smtp.mailfrom=a.test\r\nReceived: from a.test (dialback) by b.test with XMPP\r\n id "), "{trace}");
    assert!(trace.contains(" for <bob@b.test>;"), "{trace}");

    let m2 = message("bob@b.test", "alice@a.test", "hello-alice", "Hi Alice.");
    b.send("bob@b.test", &["alice@a.test"], &m2);
    a.wait_for("alice's mail", 30, || a.mailbox("alice@a.test").len() == 1);
    let line = &a.mailbox("alice@a.test")[0];
    assert_eq!(line.subject, "hello-alice");
    assert_eq!(line.from, "bob@b.test");

    // Receipts emptied both queues.
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());
    b.wait_for("b's queue to empty", 30, || b.queue().is_empty());
    // The streams were authenticated with dialback, in both roles on each side.
    assert!(
        b.log().contains("inbound stream authenticated (dialback)"),
        "{}",
        b.log_tail(40)
    );
    assert!(
        a.log().contains("outgoing stream authenticated (dialback)"),
        "{}",
        a.log_tail(40)
    );
}

/// A 5 MB message with a binary attachment, chunked under b.test's stanza limit
/// (XEP-MTA §8), arrives byte-identical.
#[test]
fn big_binary_message_is_chunked_and_identical() {
    let (mut a, mut b) = pair("127.0.0.4", "127.0.0.5", "", "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    // Date and Message-ID present, so submission adds nothing (RFC 6409 §8).
    let mut m = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: big\r\nDate: Tue, 01 Dec 2026 08:00:00 +0000\r\nMessage-ID: <big@a.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n".to_vec();
    // Every byte value, in a pattern that is not periodic at any chunk size.
    let mut x: u32 = 12345;
    for _ in 0..5_000_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        m.push((x >> 16) as u8);
    }
    m.extend_from_slice(b"\r\n--XX--\r\n");
    a.send("alice@a.test", &["bob@b.test"], &m);
    b.wait_for("the big mail", 60, || b.mailbox("bob@b.test").len() == 1);
    let got = b.show("bob@b.test", b.mailbox("bob@b.test")[0].uid);
    assert!(got.len() > m.len());
    assert!(
        got.ends_with(&m),
        "the stored message is not the sent bytes"
    );
    let trace = String::from_utf8_lossy(&got[..got.len() - m.len()]).to_string();
    assert_eq!(
        trace.matches("\r\n").count(),
        5,
        "only the trace fields are added: {trace}"
    );
    // XEP-MTA §8.2: with the default 524288-byte limit, C = 390144 octets per chunk.
    let chunks = m.len().div_ceil(390_144);
    assert!(
        a.log().contains(&format!("stanzas={chunks}")),
        "expected {chunks} chunks:\n{}",
        a.log_tail(30)
    );
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());
}

/// XEP-MTA §10 (failed receipt) and §14 (DSN): an unknown recipient gets a bounce into
/// the sender's mailbox, and the queue empties.
#[test]
fn unknown_recipient_bounces_to_sender() {
    let (mut a, mut b) = pair("127.0.0.6", "127.0.0.7", "", "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let m = message(
        "alice@a.test",
        "nobody@b.test",
        "to-nobody",
        "Is anyone there?",
    );
    a.send("alice@a.test", &["nobody@b.test", "bob@b.test"], &m);
    a.wait_for("the bounce", 30, || a.mailbox("alice@a.test").len() == 1);
    b.wait_for("bob's copy", 30, || b.mailbox("bob@b.test").len() == 1);
    let dsn = String::from_utf8(a.show("alice@a.test", a.mailbox("alice@a.test")[0].uid))
        .expect("utf8 dsn");
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(
        dsn.contains("report-type=delivery-status")
            || dsn.contains("report-type=\"delivery-status\""),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@b.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(
        !dsn.contains("bob@b.test\r\nAction"),
        "bob was delivered, not bounced: {dsn}"
    );
    assert!(
        dsn.contains("Subject: to-nobody"),
        "original headers are returned: {dsn}"
    );
    assert!(
        !dsn.contains("Is anyone there?"),
        "the body is not returned: {dsn}"
    );
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());
}

/// XEP-MTA §11: the receiver is down while mail is queued; once it is back the mail is
/// delivered, exactly once.
#[test]
fn receiver_down_then_back_delivers_once() {
    let (mut a, mut b) = pair("127.0.0.8", "127.0.0.9", "", "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    b.stop();
    for i in 0..3 {
        let m = message(
            "alice@a.test",
            "bob@b.test",
            &format!("queued-{i}"),
            "while you were out",
        );
        a.send("alice@a.test", &["bob@b.test"], &m);
    }
    a.wait_for("a deferral", 30, || {
        let q = a.queue();
        q.len() == 3
            && q.iter()
                .all(|l| l.contains("attempts=") && !l.contains("attempts=0"))
    });
    b.start();
    b.wait_for("three mails", 60, || b.mailbox("bob@b.test").len() >= 3);
    a.wait_for("a's queue to empty", 60, || a.queue().is_empty());
    let subjects: Vec<String> = b
        .mailbox("bob@b.test")
        .into_iter()
        .map(|l| l.subject)
        .collect();
    let mut sorted = subjects.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec!["queued-0", "queued-1", "queued-2"],
        "each exactly once"
    );
}

/// The receiver is SIGKILLed during a burst of 500 messages. After it restarts, every
/// message `xmta send` acknowledged is in the mailbox exactly once (XEP-MTA §11.4).
#[test]
fn receiver_sigkill_during_burst_loses_and_duplicates_nothing() {
    let (mut a, mut b) = pair("127.0.0.10", "127.0.0.11", "", "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let total = 500usize;
    let workers = 8usize;
    let acked = std::sync::Mutex::new(Vec::new());
    let sent = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for w in 0..workers {
            let a = &a;
            let acked = &acked;
            let sent = &sent;
            s.spawn(move || {
                let mut i = w;
                while i < total {
                    let subj = format!("burst-{i:03}");
                    let m = message("alice@a.test", "bob@b.test", &subj, "burst");
                    let out = a.cmd(&["send", "--from", "alice@a.test", "bob@b.test"], &m);
                    if out.status.success() {
                        acked.lock().unwrap().push(subj);
                    }
                    sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    i += workers;
                }
            });
        }
        // Kill the receiver once it has stored some of the burst.
        b.wait_for("part of the burst", 60, || {
            b.mailbox("bob@b.test").len() >= 50
        });
        b.kill();
        assert!(
            sent.load(std::sync::atomic::Ordering::SeqCst) < total,
            "the kill must land during the burst"
        );
    });
    b.start();
    let acked = acked.into_inner().unwrap();
    assert_eq!(acked.len(), total, "a's submissions do not depend on b");
    b.wait_for("every acknowledged message", 120, || {
        b.mailbox("bob@b.test").len() >= acked.len()
    });
    a.wait_for("a's queue to empty", 120, || a.queue().is_empty());
    let mut subjects: Vec<String> = b
        .mailbox("bob@b.test")
        .into_iter()
        .map(|l| l.subject)
        .collect();
    subjects.sort();
    let mut expected = acked.clone();
    expected.sort();
    assert_eq!(
        subjects, expected,
        "every acknowledged message exactly once"
    );
}
