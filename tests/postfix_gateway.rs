//! The SMTP gateway with foreign senders (SRS) and trace fields toward the smarthost:
//! LMTP into xmta a.test with the sender user@legacy.test -> XMPP -> xmta b.test, sent
//! with an SRS0 sender of a.test; b.test's DSN for an unknown recipient comes back to that
//! SRS0 address over XMPP, and a.test forwards it to user@legacy.test through its
//! smarthost (a real smtp-sink). A forged SRS0 address is refused 550 5.1.1.

mod common;

use std::net::SocketAddr;

use common::postfix::{Dnsmasq, SmtpSink};
use common::smtp::SmtpRaw;
use common::*;

#[test]
fn foreign_sender_goes_out_with_srs_and_its_bounce_comes_back() {
    let dns = Dnsmasq::start("127.0.1.43", &[]);
    let sink = SmtpSink::start("127.0.1.44");
    let lmtp = free_port("127.0.1.41");
    let extra_a = format!(
        "[smtp]\nlmtp = \"127.0.1.41:{lmtp}\"\nsmarthost = \"{}\"\nsmarthost_tls = \"off\"\n\n[dns]\nnameservers = [\"{}\"]\n",
        sink.addr, dns.addr
    );
    let (mut a, mut b) = pair("127.0.1.41", "127.0.1.42", &extra_a, "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let addr: SocketAddr = format!("127.0.1.41:{lmtp}").parse().unwrap();
    let mut s = SmtpRaw::connect(addr);
    assert_eq!(s.cmd("LHLO postfix.a.test").0, 250, "{}", s.log);
    assert_eq!(s.cmd("MAIL FROM:<Carol@legacy.test>").0, 250, "{}", s.log);
    assert_eq!(s.cmd("RCPT TO:<bob@b.test>").0, 250, "{}", s.log);
    assert_eq!(s.cmd("RCPT TO:<nobody@b.test>").0, 250, "{}", s.log);
    assert_eq!(s.cmd("DATA").0, 354, "{}", s.log);
    s.send(
        b"From: Carol <Carol@legacy.test>\r\nTo: bob@b.test\r\nSubject: via-the-gateway\r\n\r\nforwarded by Postfix\r\n.\r\n",
    );
    for _ in 0..2 {
        let (code, text) = s.reply(10).expect("LMTP answer per recipient");
        assert_eq!(code, 250, "{text}");
    }
    // A forged SRS0 address of a.test: refused like an unknown user.
    assert_eq!(s.cmd("MAIL FROM:<>").0, 250, "{}", s.log);
    let (code, text) = s.cmd("RCPT TO:<SRS0=AAAAA=AA=legacy.test=carol@a.test>");
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.1.1"), "{text}");
    let _ = s.cmd("QUIT");

    // bob@b.test has it; the header From is untouched.
    b.wait_for("the mail in bob's INBOX", 30, || {
        !b.mailbox("bob@b.test").is_empty()
    });
    let list = b.mailbox("bob@b.test");
    let m = String::from_utf8_lossy(&b.show("bob@b.test", list[0].uid)).into_owned();
    assert!(m.contains("From: Carol <Carol@legacy.test>"), "{m}");
    assert!(m.contains("smtp.mailfrom=a.test"), "{m}");
    // b.test took it as a.test's mail: the envelope sender was an SRS0 address of a.test.
    let log = b.log();
    assert!(!log.contains("sender-mismatch"), "{log}");

    // nobody@b.test: b.test bounces to the SRS0 address, a.test reverses it and sends
    // the DSN to Carol@legacy.test through the smarthost.
    a.wait_for("the DSN at smtp-sink", 60, || {
        sink.dumps().iter().any(|d| d.contains("nobody@b.test"))
    });
    let dumps = sink.dumps();
    let d = dumps.iter().find(|d| d.contains("nobody@b.test")).unwrap();
    assert!(d.contains("Carol@legacy.test"), "{d}");
    assert!(d.contains("multipart/report"), "{d}");
    // The bounce was addressed to the SRS0 sender (b.test's DSN, received by a.test over
    // XMPP for that one recipient), and went out to the original address restored.
    assert!(d.contains("for <SRS0="), "{d}");
    assert!(d.contains("=legacy.test=Carol@a.test>"), "{d}");

    // Mail from `xmta send` has no trace field yet: xmta adds one toward the smarthost.
    let m = message("alice@a.test", "dave@legacy.test", "no-trace-yet", "hi");
    a.send("alice@a.test", &["dave@legacy.test"], &m);
    a.wait_for("the mail at smtp-sink", 30, || {
        sink.dumps().iter().any(|d| d.contains("no-trace-yet"))
    });
    let dumps = sink.dumps();
    let d = dumps.iter().find(|d| d.contains("no-trace-yet")).unwrap();
    assert!(d.contains("Received: by a.test (xmta) id "), "{d}");
    assert!(d.contains("for <dave@legacy.test>"), "{d}");
}
