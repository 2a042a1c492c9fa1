//! The SMTP gateway with foreign senders (SRS) and trace fields toward the smarthost:
//! LMTP into xmta a.test with the sender user@legacy.test -> XMPP -> xmta b.test, sent
//! with an SRS0 sender of a.test; b.test's DSN for an unknown recipient comes back to that
//! SRS0 address over XMPP, and a.test forwards it to user@legacy.test through its
//! smarthost (a real smtp-sink). A forged SRS0 address is refused 550 5.1.1.
//! A plain XMPP domain (a real Prosody, no urn:xmpp:mta:0 in its disco#info) gets its mail
//! through the smarthost, and the socketmap answers NOTFOUND for it, OK for an xmta domain.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::postfix::{Dnsmasq, SmtpSink};
use common::prosody::Prosody;
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

    // nobody@b.test: b.test's receipt says failed; a.test builds the DSN, reverses its
    // SRS0 sender and sends the DSN (null sender) to Carol@legacy.test via the smarthost.
    a.wait_for("the DSN at smtp-sink", 60, || {
        sink.dumps().iter().any(|d| d.contains("nobody@b.test"))
    });
    let dumps = sink.dumps();
    let d = dumps.iter().find(|d| d.contains("nobody@b.test")).unwrap();
    assert!(d.contains("multipart/report"), "{d}");
    assert!(d.contains("To: <Carol@legacy.test>"), "{d}");
    assert!(d.contains("X-Rcpt-Args: <Carol@legacy.test>"), "{d}");
    assert!(!d.contains("To: <SRS0="), "{d}");

    // A reply over XMPP to the SRS0 envelope sender b.test logged: a.test checks the
    // address, and forwards the mail to Carol@legacy.test through the smarthost.
    let srs = log
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sender=").filter(|s| s.starts_with("SRS0=")))
        .expect("b.test logged the SRS0 sender")
        .to_string();
    assert!(srs.ends_with("=legacy.test=Carol@a.test"), "{srs}");
    let m = message("bob@b.test", &srs, "reply-to-srs", "back to carol");
    b.send("bob@b.test", &[srs.as_str()], &m);
    a.wait_for("the forwarded reply at smtp-sink", 30, || {
        sink.dumps().iter().any(|d| d.contains("reply-to-srs"))
    });
    let dumps = sink.dumps();
    let d = dumps.iter().find(|d| d.contains("reply-to-srs")).unwrap();
    assert!(d.contains("Received: from b.test"), "{d}");
    // A forged SRS0 address sent over XMPP: b.test gets a failed receipt (bounce to bob).
    let m = message(
        "bob@b.test",
        "SRS0=AAAAA=AA=legacy.test=Carol@a.test",
        "forged-srs",
        "x",
    );
    b.send(
        "bob@b.test",
        &["SRS0=AAAAA=AA=legacy.test=Carol@a.test"],
        &m,
    );
    b.wait_for("bob's bounce for the forged SRS0 address", 30, || {
        b.mailbox("bob@b.test").len() >= 2
    });
    assert!(!sink.dumps().iter().any(|d| d.contains("forged-srs")));

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

/// One socketmap question over a fresh connection: `transport ADDRESS` -> the reply.
fn socketmap(addr: SocketAddr, key: &str) -> String {
    let mut c = TcpStream::connect(addr).expect("connect socketmap");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let req = format!("transport {key}");
    c.write_all(format!("{}:{req},", req.len()).as_bytes())
        .expect("write");
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !got.ends_with(b",") {
        let n = c.read(&mut b).expect("read socketmap reply");
        assert!(n > 0, "socketmap closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    let s = String::from_utf8(got).expect("utf8");
    let (len, rest) = s.split_once(':').expect("netstring");
    let v = rest.strip_suffix(',').expect("netstring end");
    assert_eq!(len.parse::<usize>().expect("len"), v.len(), "{s}");
    v.to_string()
}

#[test]
fn plain_xmpp_domain_goes_to_the_smarthost_and_socketmap_says_notfound() {
    let (ip_a, ip_p, ip_b) = ("127.0.2.100", "127.0.2.101", "127.0.2.102");
    let dns = Dnsmasq::start("127.0.2.104", &[]);
    let sink = SmtpSink::start("127.0.2.103");
    let lmtp = free_port(ip_a);
    let sm = free_port(ip_a);
    let extra_a = format!(
        "[smtp]\nlmtp = \"{ip_a}:{lmtp}\"\nsmarthost = \"{}\"\nsmarthost_tls = \"off\"\n\n[dns]\nnameservers = [\"{}\"]\n\n[postfix]\nsocketmap = \"{ip_a}:{sm}\"\n",
        sink.addr, dns.addr
    );
    // Prosody dials a.test back on the default port (dialback), found through its hosts file.
    let mut b = Xmta::new(Spec {
        domain: "b.test",
        ip: ip_b,
        routes: vec![("a.test".into(), format!("{ip_a}:5269"))],
        extra: "",
        s2s_extra: "",
    });
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip: ip_a,
        routes: vec![
            ("b.test".into(), b.addr.to_string()),
            ("p.test".into(), format!("{ip_p}:5269")),
        ],
        extra: &extra_a,
        s2s_extra: "",
    });
    a.use_default_port();
    let p = Prosody::start(ip_p, "p.test", &[(ip_a, "a.test")], "", "");
    p.register("carol", "secret");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let sm_addr: SocketAddr = format!("{ip_a}:{sm}").parse().unwrap();
    common::postfix::wait_port(sm_addr, 10, "socketmap", || a.log_tail(20));

    // The socketmap asks p.test's disco#info over s2s (Prosody: no urn:xmpp:mta:0), so
    // Postfix keeps its own SMTP transport for it; b.test is an xmta: OK.
    let ok = format!("OK lmtp:inet:{ip_a}:{lmtp}");
    assert_eq!(
        socketmap(sm_addr, "carol@p.test"),
        "NOTFOUND ",
        "{}",
        a.log_tail(40)
    );
    assert_eq!(socketmap(sm_addr, "bob@b.test"), ok, "{}", a.log_tail(40));
    assert_eq!(socketmap(sm_addr, "alice@a.test"), ok);
    assert_eq!(socketmap(sm_addr, "x@legacy.test"), "NOTFOUND ");
    let plog = p.log();
    assert!(
        plog.contains("Incoming s2s connection a.test->p.test complete"),
        "the disco question went over a stream Prosody verified:\n{plog}"
    );

    // Mail for the plain XMPP domain goes through the smarthost, not as a chat message.
    let m = message(
        "alice@a.test",
        "carol@p.test",
        "plain-xmpp-via-smarthost",
        "hi",
    );
    a.send("alice@a.test", &["carol@p.test"], &m);
    let m = message("alice@a.test", "bob@b.test", "xmta-via-xmpp", "hi");
    a.send("alice@a.test", &["bob@b.test"], &m);
    a.wait_for("carol's mail at smtp-sink", 30, || {
        sink.dumps()
            .iter()
            .any(|d| d.contains("plain-xmpp-via-smarthost"))
    });
    b.wait_for("bob's mail over XMPP", 30, || {
        !b.mailbox("bob@b.test").is_empty()
    });
    assert!(
        !sink.dumps().iter().any(|d| d.contains("xmta-via-xmpp")),
        "mail for an xmta domain must not go to the smarthost"
    );
    let plog = p.log();
    assert!(
        !plog.contains("plain-xmpp-via-smarthost"),
        "Prosody must not have received the mail as a stanza:\n{plog}"
    );
}
