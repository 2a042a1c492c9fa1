//! Attacks from XEP-0220 §5 (security considerations) and the bugs real servers had
//! (unsolicited verdicts, replayed keys, stanzas for domains a multiplexed stream did not
//! authenticate, a TLS certificate taken for the wrong domain). Each test asserts both
//! the stream error and that no mail was stored, so it fails if the attack succeeds.

mod common;

use common::registry::{Relay, TestCa, TlsRaw, mail_stanza};
use common::*;

const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

fn stream_error(cond: &str) -> String {
    format!("<{cond} xmlns='{STREAMS}'/>")
}

/// b serves b.test and b2.test.
fn two_domains(b: &Xmta) {
    let cfg = std::fs::read_to_string(&b.config).unwrap();
    let cfg = cfg.replacen(
        "domains = [\"b.test\"]",
        "domains = [\"b.test\", \"b2.test\"]",
        1,
    );
    std::fs::write(&b.config, cfg).unwrap();
}

fn first_between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)?;
    Some(&s[i..i + j])
}

#[test]
fn unsolicited_verdicts_and_unauthenticated_domains_are_refused() {
    let evil = FakePeer::start("127.0.0.170", "evil.test");
    let (mut a, mut b) = pair("127.0.0.171", "127.0.0.172", "", "");
    two_domains(&b);
    set_route(&mut b, "evil.test", &evil.addr.to_string());
    a.start();
    b.start();
    b.add_user("bob@b.test");
    b.add_user("bob@b2.test");

    // 1. A peer declares itself valid (db:result type='valid' it was never sent) and
    //    sends mail at once.
    let mut r = Raw::connect(b.addr);
    r.open_stream("a.test", "b.test");
    r.send(&format!(
        "<db:result from='a.test' to='b.test' type='valid'/>{}",
        mail_stanza("alice@a.test", "bob@b.test", "unsolicited")
    ));
    assert!(
        r.read_until(10, |s| s.contains(&stream_error("not-authorized"))),
        "{}",
        r.got
    );
    assert!(r.closed_within(10));

    // 2. The same while a real request for a.test is pending: the forged verdict does
    //    not complete it.
    let mut r = Raw::connect(b.addr);
    r.open_stream("a.test", "b.test");
    r.send(&format!(
        "<db:result from='a.test' to='b.test'>{}</db:result><db:result from='b.test' to='a.test' type='valid'/><db:verify from='a.test' to='b.test' id='x' type='valid'/>{}",
        "0".repeat(64),
        mail_stanza("alice@a.test", "bob@b.test", "pending-forged")
    ));
    assert!(
        r.read_until(10, |s| s.contains(&stream_error("not-authorized"))),
        "{}",
        r.got
    );
    assert!(!r.got.contains("type='valid'"), "{}", r.got);
    assert!(r.closed_within(10));

    // 3. evil.test authenticates for b.test, then sends a stanza to b2.test, which it did
    //    not authenticate for on this stream (multiplexing, XEP-0220 §4).
    let mut r = Raw::connect(b.addr);
    r.open_stream("evil.test", "b.test");
    r.send("<db:result from='evil.test' to='b.test'>k</db:result>");
    assert!(
        r.read_until(10, |s| s.contains("type='valid'")),
        "{}",
        r.got
    );
    r.send(&mail_stanza("mallory@evil.test", "bob@b2.test", "other-to"));
    assert!(
        r.read_until(10, |s| s.contains(&stream_error("improper-addressing"))),
        "{}",
        r.got
    );
    assert!(r.closed_within(10));

    // 4. ...and one whose 'from' is a domain it did not authenticate (a.test, or a
    //    look-alike subdomain of it).
    for forged in ["a.test", "a.test.evil.test"] {
        let mut r = Raw::connect(b.addr);
        r.open_stream("evil.test", "b.test");
        r.send("<db:result from='evil.test' to='b.test'>k</db:result>");
        assert!(
            r.read_until(10, |s| s.contains("type='valid'")),
            "{}",
            r.got
        );
        r.send(&mail_stanza(
            &format!("alice@{forged}"),
            "bob@b.test",
            "other-from",
        ));
        assert!(
            r.read_until(10, |s| s.contains(&stream_error("invalid-from"))),
            "{}",
            r.got
        );
        assert!(r.closed_within(10));
    }

    // 5. A db:verify for a stream id b never issued: invalid.
    let mut r = Raw::connect(b.addr);
    r.open_stream("evil.test", "b.test");
    r.send(&format!(
        "<db:verify from='evil.test' to='b.test' id='no-such-stream'>{}</db:verify>",
        "1".repeat(64)
    ));
    assert!(
        r.read_until(10, |s| s.contains("type='invalid'")),
        "{}",
        r.got
    );
    assert!(!r.got.contains("type='valid'"), "{}", r.got);

    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(b.mailbox("bob@b.test").is_empty());
    assert!(b.mailbox("bob@b2.test").is_empty());
    assert!(!b.log().contains("mail stored"), "{}", b.log_tail(30));
}

/// An observer of a plaintext a.test -> b.test stream captures a's dialback key and
/// stream id, then replays them: on a new stream (another stream id), towards another
/// receiving domain, and as a db:verify to a after the dialback is over. All invalid.
#[test]
fn replayed_dialback_keys_are_refused() {
    let (mut a, mut b) = pair("127.0.0.173", "127.0.0.174", "", "");
    two_domains(&b);
    let relay = Relay::start("127.0.0.175", b.addr);
    let cfg = std::fs::read_to_string(&a.config).unwrap().replacen(
        &format!("\"b.test\" = \"{}\"", b.addr),
        &format!("\"b.test\" = \"{}\"", relay.addr),
        1,
    );
    std::fs::write(&a.config, cfg).unwrap();
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    b.add_user("bob@b2.test");
    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "observed", "x"),
    );
    b.wait_for("the observed mail", 30, || {
        b.mailbox("bob@b.test").len() == 1
    });
    let up = relay.up();
    let down = relay.down();
    let key = first_between(&up, "<db:result from='a.test' to='b.test'>", "</db:result>")
        .expect("a's key on the wire")
        .to_string();
    let id = common::attr(&down, "stream:stream", "id").expect("b's stream id");
    assert_eq!(key.len(), 64);

    // Replay on a new stream: b's new stream id makes the key invalid.
    let mut r = Raw::connect(b.addr);
    let new_id = r.open_stream("a.test", "b.test");
    assert_ne!(new_id, id);
    r.send(&format!(
        "<db:result from='a.test' to='b.test'>{key}</db:result>"
    ));
    assert!(
        r.read_until(15, |s| s.contains("type='invalid'")),
        "{}",
        r.got
    );
    r.send(&mail_stanza("alice@a.test", "bob@b.test", "replay-1"));
    assert!(
        r.read_until(5, |s| s.contains(&stream_error("not-authorized"))),
        "{}",
        r.got
    );
    assert!(r.closed_within(10));

    // Replay towards another receiving domain (b2.test, same server).
    let mut r = Raw::connect(b.addr);
    r.open_stream("a.test", "b2.test");
    r.send(&format!(
        "<db:result from='a.test' to='b2.test'>{key}</db:result>"
    ));
    assert!(
        r.read_until(15, |s| s.contains("type='invalid'")),
        "{}",
        r.got
    );
    r.send(&mail_stanza("alice@a.test", "bob@b2.test", "replay-2"));
    assert!(
        r.read_until(5, |s| s.contains(&stream_error("not-authorized"))),
        "{}",
        r.got
    );
    assert!(r.closed_within(10));

    // Replay the verification itself to a, the authoritative server: the dialback it
    // belonged to is over, so a no longer vouches for that stream id.
    let mut r = Raw::connect(a.addr);
    r.open_stream("b.test", "a.test");
    r.send(&format!(
        "<db:verify from='b.test' to='a.test' id='{id}'>{key}</db:verify>"
    ));
    assert!(
        r.read_until(10, |s| s.contains("type='invalid'")),
        "{}",
        r.got
    );
    assert!(!r.got.contains("type='valid'"), "{}", r.got);
    // The same key for an id a never saw.
    r.send(&format!(
        "<db:verify from='b.test' to='a.test' id='not-{id}'>{key}</db:verify>"
    ));
    assert!(
        r.read_until(10, |s| s.matches("type='invalid'").count() == 2),
        "{}",
        r.got
    );

    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(b.mailbox("bob@b.test").len(), 1);
    assert!(b.mailbox("bob@b2.test").is_empty());
}

/// An attacker with a certificate valid for evil.test (under the CA b trusts) claims
/// a.test over TLS. Under `auth = "either"`, EXTERNAL is not offered and fails when tried,
/// and its dialback is still verified with the real a.test (invalid). Under
/// `auth = "certificate"` the dialback is refused outright.
#[test]
fn certificate_for_another_domain_is_not_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "attack");
    let evil_cert = ca.issue("evil.test", &["evil.test"], false);
    let b_cert = ca.issue("b.test", &["b.test"], false);
    for (mode, ip_a, ip_b) in [
        ("either", "127.0.0.176", "127.0.0.177"),
        ("certificate", "127.0.0.178", "127.0.0.179"),
    ] {
        let (mut a, mut b) = pair_with(ip_a, ip_b, "", "", "", &format!("auth = \"{mode}\""));
        set_tls(
            &mut b,
            "optional",
            Some((&b_cert.0, &b_cert.1)),
            Some(&ca.ca_path),
        );
        a.start();
        b.start();
        b.add_user("bob@b.test");
        let mut t = TlsRaw::connect(
            b.addr,
            "a.test",
            "b.test",
            &evil_cert.0,
            &evil_cert.1,
            &ca.ca_path,
        );
        assert!(
            !t.got.contains("EXTERNAL"),
            "EXTERNAL offered for a.test: {}",
            t.got
        );
        use base64::Engine;
        let authzid = base64::engine::general_purpose::STANDARD.encode("a.test");
        t.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>"
        ));
        assert!(
            t.read_until(10, |s| s.contains("<not-authorized/></failure>")),
            "{mode}: {}",
            t.got
        );
        t.send(&format!(
            "<db:result from='a.test' to='b.test'>{}</db:result>",
            "0".repeat(64)
        ));
        if mode == "either" {
            assert!(
                t.read_until(15, |s| s.contains("type='invalid'")),
                "{}",
                t.got
            );
            t.send(&mail_stanza("alice@a.test", "bob@b.test", "cert-mismatch"));
            assert!(
                t.read_until(5, |s| s.contains(&stream_error("not-authorized"))),
                "{}",
                t.got
            );
        } else {
            assert!(
                t.read_until(10, |s| s.contains(&stream_error("policy-violation"))),
                "{}",
                t.got
            );
            assert!(
                t.got.contains("accepts only certificate authentication"),
                "{}",
                t.got
            );
        }
        assert!(!t.got.contains("type='valid'"), "{mode}: {}", t.got);
        assert!(!t.got.contains("<success"), "{mode}: {}", t.got);
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(b.mailbox("bob@b.test").is_empty(), "{mode}");
        assert!(
            !b.log().contains("inbound stream authenticated"),
            "{mode}: {}",
            b.log_tail(30)
        );
    }
}
