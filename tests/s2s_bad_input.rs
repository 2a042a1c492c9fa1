//! Bad input on the s2s port: each gets its stream error (RFC 6120 §4.9, XEP-MTA §12.1)
//! and is closed, while a parallel good stream from a.test keeps delivering.

mod common;

use common::*;

const HDR_A: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>";

fn expect_stream_error(b: &Xmta, input: &[&str], condition: &str) -> String {
    let mut r = Raw::connect(b.addr);
    for part in input {
        r.send(part);
    }
    let tag = format!("<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>");
    assert!(
        r.read_until(15, |s| s.contains(&tag)),
        "expected <{condition}/> for {input:?}, got: {}",
        r.got
    );
    assert!(
        r.closed_within(10),
        "stream must be closed after <{condition}/>"
    );
    r.got
}

#[test]
fn bad_input_is_refused_while_good_mail_flows() {
    let evil = FakePeer::start("127.0.0.13", "evil.test");
    let (mut a, mut b) = pair_with(
        "127.0.0.12",
        "127.0.0.14",
        "",
        "",
        "",
        "max_stanza_bytes = 65536",
    );
    set_route(&mut b, "evil.test", &evil.addr.to_string());
    // A short handshake timeout makes the staller test quick.
    let cfg = std::fs::read_to_string(&b.config)
        .unwrap()
        .replace("handshake_timeout_secs = 10", "handshake_timeout_secs = 3");
    std::fs::write(&b.config, cfg).unwrap();
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");

    std::thread::scope(|s| {
        // The good stream: a.test keeps sending while the attacks run.
        let good = s.spawn(|| {
            for i in 0..20 {
                let m = message(
                    "alice@a.test",
                    "bob@b.test",
                    &format!("good-{i:02}"),
                    "steady",
                );
                a.send("alice@a.test", &["bob@b.test"], &m);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });

        // Not XML.
        expect_stream_error(&b, &["HELO smtp.example.com\r\n"], "not-well-formed");
        // Wrong namespace.
        expect_stream_error(
            &b,
            &[
                "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' version='1.0'>",
            ],
            "invalid-namespace",
        );
        // Entity bomb (DTD).
        expect_stream_error(
            &b,
            &[
                "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;'>]>",
            ],
            "restricted-xml",
        );
        // Unknown host.
        expect_stream_error(
            &b,
            &[
                "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='a.test' to='c.test' version='1.0'>",
            ],
            "host-unknown",
        );
        // A stanza over max_stanza_bytes (65536 here).
        let big = format!(
            "<message from='x@a.test' to='bob@b.test'><body>{}</body></message>",
            "A".repeat(70_000)
        );
        expect_stream_error(&b, &[HDR_A, &big], "policy-violation");
        // Deeply nested elements.
        expect_stream_error(&b, &[HDR_A, &"<a>".repeat(200)], "policy-violation");
        // A stanza before authentication.
        expect_stream_error(
            &b,
            &[
                HDR_A,
                "<message from='alice@a.test' to='bob@b.test'><body>x</body></message>",
            ],
            "not-authorized",
        );
        // An unsolicited dialback answer (XEP-0220 §5: a peer cannot declare itself valid).
        expect_stream_error(
            &b,
            &[HDR_A, "<db:result from='a.test' to='b.test' type='valid'/>"],
            "not-authorized",
        );

        // A wrong dialback key: b asks a.test (the real one), which says invalid.
        let mut r = Raw::connect(b.addr);
        r.open_stream("a.test", "b.test");
        r.send("<db:result from='a.test' to='b.test'>0000000000000000000000000000000000000000000000000000000000000000</db:result>");
        assert!(
            r.read_until(15, |s| s.contains("type='invalid'")),
            "wrong key not refused: {}",
            r.got
        );
        assert!(
            r.read_until(5, |s| s.contains(
                "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            )),
            "{}",
            r.got
        );
        assert!(r.closed_within(10));

        // db:verify about a stream id b never used: invalid (XEP-0220 §5).
        let mut r = Raw::connect(b.addr);
        r.open_stream("a.test", "b.test");
        let bogus_key = "1".repeat(64);
        r.send(&format!(
            "<db:verify from='a.test' to='b.test' id='no-such-stream'>{bogus_key}</db:verify>"
        ));
        assert!(
            r.read_until(10, |s| s.contains("type='invalid'")),
            "{}",
            r.got
        );

        // A stream authenticated for evil.test (its fake authoritative server says valid)...
        let mut r = Raw::connect(b.addr);
        r.open_stream("evil.test", "b.test");
        r.send("<db:result from='evil.test' to='b.test'>somekey</db:result>");
        assert!(
            r.read_until(15, |s| s.contains("type='valid'")),
            "evil.test should authenticate: {}",
            r.got
        );
        // ...sends mail whose envelope sender is in a.test: a stanza error, sender-mismatch,
        // comes back over b's own stream to evil.test (XEP-MTA §4.2, §12.2).
        let msg = b"From: alice@a.test\r\nSubject: forged\r\n\r\nhi\r\n";
        let b64 = base64_encode(msg);
        let digest = sha256_hex(msg);
        r.send(&format!(
            "<message from='mallory@evil.test' to='bob@b.test' id='m1' type='normal'><mail xmlns='urn:xmpp:mta:0' id='forged1' size='{}' sha256='{digest}'><envelope><mail-from>alice@a.test</mail-from><rcpt-to>bob@b.test</rcpt-to></envelope><data>{b64}</data></mail></message>",
            msg.len()
        ));
        b.wait_for("the sender-mismatch error at evil.test", 20, || {
            evil.seen().contains("sender-mismatch")
        });
        assert!(
            evil.seen()
                .contains("<forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
            "{}",
            evil.seen()
        );
        // ...and a stanza whose 'from' claims a.test: invalid-from, stream closed.
        r.send("<message from='alice@a.test' to='bob@b.test' type='chat'><body>forged</body></message>");
        assert!(
            r.read_until(10, |s| s.contains(
                "<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            )),
            "{}",
            r.got
        );
        assert!(r.closed_within(10));

        // A peer that stalls after connecting is cut off after the handshake timeout.
        let mut r = Raw::connect(b.addr);
        r.send(HDR_A);
        assert!(
            r.read_until(10, |s| s.contains(
                "<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            )),
            "{}",
            r.got
        );
        assert!(r.closed_within(5));

        good.join().unwrap();
    });
    // Every good message arrived, none of the forged ones.
    b.wait_for("all good mail", 60, || b.mailbox("bob@b.test").len() >= 20);
    let mail = b.mailbox("bob@b.test");
    assert_eq!(mail.len(), 20, "{mail:?}");
    assert!(
        mail.iter().all(|l| l.subject.starts_with("good-")),
        "{mail:?}"
    );
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn sha256_hex(data: &[u8]) -> String {
    xmta::mta::payload::sha256_hex(data)
}
