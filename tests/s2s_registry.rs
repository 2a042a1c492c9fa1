//! Registered servers (XEP-MTA §22): a private dnsmasq serves the registry zone
//! `reg.test` (RFC 5782 conventions), and b.test asks it after each peer authenticates.
//! `require` refuses unregistered and suspended peers with a policy-violation stream
//! error, `tag` records the answer in Authentication-Results, and a registry that does not
//! answer defers the mail until it does.

mod common;

use common::registry::{Dnsmasq, Rec, mail_stanza, registry_section};
use common::*;

const HDR: &str = "urn:ietf:params:xml:ns:xmpp-streams";

/// `require`: a registered peer delivers (tagged pass), an unregistered one is refused
/// with policy-violation and keeps its mail queued, a suspended one is refused with the
/// zone's TXT reason, and the start-up probe finds the zone healthy.
#[test]
fn require_refuses_unregistered_and_suspended_peers() {
    let dns = Dnsmasq::start(
        "127.0.0.173",
        &["reg.test"],
        &[
            Rec::A("test.reg.test", "127.0.0.2"),
            Rec::A("a.test.reg.test", "127.0.0.2"),
            Rec::Txt("a.test.reg.test", "a.test registered 2026"),
            Rec::A("evil.test.reg.test", "127.0.0.4"),
            Rec::Txt("evil.test.reg.test", "suspended after spam complaints"),
        ],
    );
    let evil = FakePeer::start("127.0.0.174", "evil.test");
    let free = FakePeer::start("127.0.0.174", "free.test");
    let reg = registry_section(
        "reg.test",
        "require",
        dns.addr,
        "[registry.overrides]\n\"free.test\" = \"off\"",
    );
    let (mut a, mut b) = pair("127.0.0.170", "127.0.0.171", "", &reg);
    let mut c = Xmta::plain("c.test", "127.0.0.172");
    set_route(&mut c, "b.test", &b.addr.to_string());
    set_route(&mut b, "c.test", &c.addr.to_string());
    set_route(&mut b, "evil.test", &evil.addr.to_string());
    set_route(&mut b, "free.test", &free.addr.to_string());
    a.start();
    b.start();
    c.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    c.add_user("carol@c.test");
    b.wait_for("the registry probe", 10, || {
        b.log().contains("registry zone passes its test entries")
    });

    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "registered", "x"),
    );
    b.wait_for("a's mail", 30, || b.mailbox("bob@b.test").len() == 1);
    let got = String::from_utf8_lossy(&b.show("bob@b.test", 1)).to_string();
    assert!(
        got.starts_with(
            "Authentication-Results: b.test; x-xmpp=pass (dialback)\r\n smtp.mailfrom=a.test;\r\n x-xmta-registry=pass (reg.test)\r\n"
        ),
        "{got}"
    );

    // c.test is not in the zone (NXDOMAIN): refused, and c keeps the mail queued with the
    // reason.
    c.send(
        "carol@c.test",
        &["bob@b.test"],
        &message("carol@c.test", "bob@b.test", "unregistered", "x"),
    );
    c.wait_for("c's deferral naming the registry", 30, || {
        c.queue().iter().any(|l| {
            l.contains("pending")
                && l.contains("policy-violation")
                && l.contains("c.test is not registered in reg.test")
        })
    });
    assert!(b.log().contains("registry refuses peer domain=\"c.test\""));

    // evil.test is suspended: its dialback key is valid (its fake authoritative server
    // says so), but the stream ends with policy-violation and the TXT reason, and no
    // type='valid' answer was sent.
    let mut r = Raw::connect(b.addr);
    r.open_stream("evil.test", "b.test");
    r.send("<db:result from='evil.test' to='b.test'>somekey</db:result>");
    assert!(
        r.read_until(15, |s| s
            .contains(&format!("<policy-violation xmlns='{HDR}'/>"))),
        "{}",
        r.got
    );
    assert!(
        r.got.contains("suspended after spam complaints"),
        "{}",
        r.got
    );
    assert!(!r.got.contains("type='valid'"), "{}", r.got);
    r.send(&mail_stanza("mallory@evil.test", "bob@b.test", "evil1"));
    assert!(r.closed_within(10));

    // free.test is not in the zone either, but its override is "off": not asked, accepted,
    // and nothing about the registry in its trace header.
    let mut r = Raw::connect(b.addr);
    r.open_stream("free.test", "b.test");
    r.send("<db:result from='free.test' to='b.test'>somekey</db:result>");
    assert!(
        r.read_until(15, |s| s.contains("type='valid'")),
        "{}",
        r.got
    );
    r.send(&mail_stanza("frank@free.test", "bob@b.test", "override"));
    b.wait_for("free.test's mail", 30, || {
        b.mailbox("bob@b.test").len() == 2
    });
    let mail = b.mailbox("bob@b.test");
    let m = mail
        .iter()
        .find(|m| m.subject == "raw-override")
        .expect("override mail");
    let got = String::from_utf8_lossy(&b.show("bob@b.test", m.uid)).to_string();
    assert!(
        got.starts_with(
            "Authentication-Results: b.test; x-xmpp=pass (dialback)\r\n smtp.mailfrom=free.test\r\nReceived:"
        ),
        "{got}"
    );
    assert_eq!(dns.queries("A", "free.test.reg.test"), 0, "{}", dns.log());

    std::thread::sleep(std::time::Duration::from_secs(2));
    let mail = b.mailbox("bob@b.test");
    assert_eq!(mail.len(), 2, "{mail:?}");
    assert!(mail.iter().any(|m| m.subject == "registered"), "{mail:?}");
    assert!(
        !mail
            .iter()
            .any(|m| m.subject.contains("evil") || m.subject == "unregistered"),
        "{mail:?}"
    );
}

/// `tag` with `bind_ip`: everyone delivers, and Authentication-Results says what the
/// registry answered: pass for a.test (registered for its address too), provisional for
/// c.test, none for evil.test (registered, but not for the address it connects from).
/// Answers are cached: three mails from a.test cost one query.
#[test]
fn tag_records_the_registry_answer() {
    // Connections between loopback addresses come from 127.0.0.1 on Linux; the address
    // the peer listens on is listed too, in case a kernel picks that one.
    let dns = Dnsmasq::start(
        "127.0.0.178",
        &["reg.test"],
        &[
            Rec::A("test.reg.test", "127.0.0.2"),
            Rec::A("a.test.reg.test", "127.0.0.2"),
            Rec::A("a.test.1.0.0.127.reg.test", "127.0.0.2"),
            Rec::A("a.test.175.0.0.127.reg.test", "127.0.0.2"),
            Rec::A("c.test.reg.test", "127.0.0.3"),
            Rec::A("c.test.1.0.0.127.reg.test", "127.0.0.3"),
            Rec::A("c.test.177.0.0.127.reg.test", "127.0.0.3"),
            Rec::A("evil.test.reg.test", "127.0.0.2"),
        ],
    );
    let evil = FakePeer::start("127.0.0.179", "evil.test");
    let reg = registry_section(
        "reg.test",
        "tag",
        dns.addr,
        "bind_ip = true\nmin_ttl_secs = 300\nmax_ttl_secs = 600",
    );
    let reg = reg.replace("min_ttl_secs = 1\nmax_ttl_secs = 60\n", "");
    let (mut a, mut b) = pair("127.0.0.175", "127.0.0.176", "", &reg);
    let mut c = Xmta::plain("c.test", "127.0.0.177");
    set_route(&mut c, "b.test", &b.addr.to_string());
    set_route(&mut b, "c.test", &c.addr.to_string());
    set_route(&mut b, "evil.test", &evil.addr.to_string());
    a.start();
    b.start();
    c.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    c.add_user("carol@c.test");

    for i in 0..3 {
        a.send(
            "alice@a.test",
            &["bob@b.test"],
            &message("alice@a.test", "bob@b.test", &format!("from-a-{i}"), "x"),
        );
    }
    c.send(
        "carol@c.test",
        &["bob@b.test"],
        &message("carol@c.test", "bob@b.test", "from-c", "x"),
    );
    let mut r = Raw::connect(b.addr);
    r.open_stream("evil.test", "b.test");
    r.send("<db:result from='evil.test' to='b.test'>somekey</db:result>");
    assert!(
        r.read_until(15, |s| s.contains("type='valid'")),
        "evil.test is authenticated under tag: {}",
        r.got
    );
    r.send(&mail_stanza("mallory@evil.test", "bob@b.test", "evilmail"));
    b.wait_for("all five mails", 30, || b.mailbox("bob@b.test").len() == 5);

    let mail = b.mailbox("bob@b.test");
    let header_of = |subject: &str| -> String {
        let m = mail.iter().find(|m| m.subject == subject).expect(subject);
        let text = String::from_utf8_lossy(&b.show("bob@b.test", m.uid)).to_string();
        text[..text.find("Received:").unwrap()].to_string()
    };
    assert!(
        header_of("from-a-1").ends_with(";\r\n x-xmta-registry=pass (reg.test)\r\n"),
        "{}",
        header_of("from-a-1")
    );
    assert!(
        header_of("from-c").ends_with(";\r\n x-xmta-registry=provisional (reg.test)\r\n"),
        "{}",
        header_of("from-c")
    );
    assert!(
        header_of("raw-evilmail").ends_with(";\r\n x-xmta-registry=none (reg.test)\r\n"),
        "{}",
        header_of("raw-evilmail")
    );
    // One A query per name, whatever the number of stanzas and mails (TTL floor 300 s).
    assert_eq!(dns.queries("A", "a.test.reg.test"), 1, "{}", dns.log());
    assert_eq!(
        dns.queries("A", "evil.test.1.0.0.127.reg.test")
            + dns.queries("A", "evil.test.179.0.0.127.reg.test"),
        1,
        "{}",
        dns.log()
    );
}

/// A registry that does not answer: the start-up probe reports the zone broken, mail is
/// answered with a temporary error (the sender keeps it queued), and once the registry
/// answers the queued mail is delivered. A later suspension takes effect on the open
/// stream once the cached answer expires.
#[test]
fn dead_registry_defers_until_it_answers() {
    let port = free_port("127.0.0.182");
    let mut dns = Dnsmasq::stopped("127.0.0.182", port, &["reg.test"]);
    let reg = registry_section("reg.test", "require", dns.addr, "");
    let (mut a, mut b) = pair("127.0.0.180", "127.0.0.181", "", &reg);
    // The queue notices a stream closed under a sent mail only when the receipt is
    // overdue: keep that short.
    let cfg = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(
        &a.config,
        cfg.replacen("receipt_timeout_secs = 10", "receipt_timeout_secs = 3", 1),
    )
    .unwrap();
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    b.wait_for("the broken-zone report", 15, || {
        b.log().contains("registry zone is broken")
    });

    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "while-dead", "x"),
    );
    a.wait_for("a deferral naming the registry", 30, || {
        a.queue().iter().any(|l| {
            l.contains("pending")
                && l.contains("resource-constraint (wait)")
                && l.contains("registry reg.test could not be asked")
        })
    });
    assert!(b.mailbox("bob@b.test").is_empty());

    dns.restart(&[
        Rec::A("test.reg.test", "127.0.0.2"),
        Rec::A("a.test.reg.test", "127.0.0.2"),
    ]);
    b.wait_for("the deferred mail", 30, || {
        b.mailbox("bob@b.test").len() == 1
    });
    let got = String::from_utf8_lossy(&b.show("bob@b.test", 1)).to_string();
    assert!(got.contains("x-xmta-registry=pass (reg.test)"), "{got}");
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());

    // The registry suspends a.test: once the cached answer expires (TTL floor 1 s), the
    // open stream's next stanza ends it with policy-violation, and so does every new
    // attempt.
    dns.restart(&[
        Rec::A("test.reg.test", "127.0.0.2"),
        Rec::A("a.test.reg.test", "127.0.0.4"),
        Rec::Txt("a.test.reg.test", "suspended by the registry operator"),
    ]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "after-suspension", "x"),
    );
    a.wait_for("the suspension in a's queue", 30, || {
        a.queue().iter().any(|l| {
            l.contains("pending")
                && l.contains("policy-violation")
                && l.contains("suspended by the registry operator")
        })
    });
    assert_eq!(b.mailbox("bob@b.test").len(), 1);
}

/// `xmta registry zonefile` prints a zone whose records are the ones the checks ask.
#[test]
fn zonefile_command() {
    let x = Xmta::plain("b.test", "127.0.0.183");
    let input = "a.test\nc.test 192.0.2.7 provisional new member\nevil.test suspended spam\n";
    let out = x.ok(
        &[
            "registry", "zonefile", "-", "--zone", "reg.test", "--serial", "42",
        ],
        input.as_bytes(),
    );
    let z = String::from_utf8(out).unwrap();
    for line in [
        "$ORIGIN reg.test.",
        "test\tIN\tA\t127.0.0.2",
        "a.test\tIN\tA\t127.0.0.2",
        "c.test.7.2.0.192\tIN\tA\t127.0.0.3",
        "c.test.7.2.0.192\tIN\tTXT\t\"new member\"",
        "evil.test\tIN\tA\t127.0.0.4",
        "evil.test\tIN\tTXT\t\"spam\"",
    ] {
        assert!(z.lines().any(|l| l == line), "missing {line:?} in\n{z}");
    }
    assert!(z.contains("( 42 "), "{z}");
    let bad = x.cmd(
        &["registry", "zonefile", "-", "--zone", "reg.test"],
        b"bad..domain x\n",
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 1"));
}
