//! s2s policy and limits: `[s2s] allow`/`deny`, per-peer message and byte rates (a `wait`
//! error the sender retries, never a dropped mail), connections per source address,
//! message size, and the idle timeout of an authenticated stream. Each limit answers with
//! its own clear error naming the key.

mod common;

use common::*;

const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";

fn edit(x: &Xmta, from: &str, to: &str) {
    let cfg = std::fs::read_to_string(&x.config).unwrap();
    assert!(cfg.contains(from), "{from} not in config");
    std::fs::write(&x.config, cfg.replacen(from, to, 1)).unwrap();
}

#[test]
fn allow_and_deny_lists() {
    let good = FakePeer::start("127.0.0.189", "ok.sub.test");
    let bad = FakePeer::start("127.0.0.189", "bad.sub.test");
    let (mut a, mut b) = pair_with(
        "127.0.0.170",
        "127.0.0.171",
        "",
        "",
        "",
        "allow = [\"a.test\", \"*.sub.test\"]\ndeny = [\"bad.sub.test\"]",
    );
    let mut c = Xmta::plain("c.test", "127.0.0.172");
    set_route(&mut c, "b.test", &b.addr.to_string());
    set_route(&mut b, "c.test", &c.addr.to_string());
    set_route(&mut b, "ok.sub.test", &good.addr.to_string());
    set_route(&mut b, "bad.sub.test", &bad.addr.to_string());
    a.start();
    b.start();
    c.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    c.add_user("carol@c.test");

    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "allowed", "x"),
    );
    b.wait_for("a's mail", 30, || b.mailbox("bob@b.test").len() == 1);

    // c.test is not in `allow`.
    c.send(
        "carol@c.test",
        &["bob@b.test"],
        &message("carol@c.test", "bob@b.test", "not-allowed", "x"),
    );
    c.wait_for("c's refusal", 30, || {
        c.queue().iter().any(|l| {
            l.contains("pending")
                && l.contains("policy-violation")
                && l.contains("c.test is not allowed to connect here ([s2s] allow/deny)")
        })
    });

    // bad.sub.test matches `allow` but is denied: refused before its key is checked.
    let mut r = Raw::connect(b.addr);
    r.open_stream("bad.sub.test", "b.test");
    r.send("<db:result from='bad.sub.test' to='b.test'>k</db:result>");
    assert!(
        r.read_until(10, |s| s
            .contains(&format!("<policy-violation xmlns='{STREAMS}'/>"))),
        "{}",
        r.got
    );
    assert!(!r.got.contains("type='valid'"), "{}", r.got);
    assert!(r.closed_within(10));
    assert!(
        !bad.seen().contains("db:verify"),
        "no verification for a denied domain: {}",
        bad.seen()
    );
    // ok.sub.test matches `*.sub.test`.
    let mut r = Raw::connect(b.addr);
    r.open_stream("ok.sub.test", "b.test");
    r.send("<db:result from='ok.sub.test' to='b.test'>k</db:result>");
    assert!(
        r.read_until(10, |s| s.contains("type='valid'")),
        "{}",
        r.got
    );
    assert_eq!(b.mailbox("bob@b.test").len(), 1);
}

/// 2 mails of burst, then 1 a second: of 5 mails sent at once some are answered with
/// resource-constraint (wait), and every one arrives, once.
#[test]
fn message_rate_limit_defers_and_all_arrive() {
    let (mut a, mut b) = pair_with(
        "127.0.0.173",
        "127.0.0.174",
        "",
        "",
        "",
        "peer_messages_per_minute = 60\npeer_messages_burst = 2",
    );
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    for i in 0..5 {
        a.send(
            "alice@a.test",
            &["bob@b.test"],
            &message("alice@a.test", "bob@b.test", &format!("rate-{i}"), "x"),
        );
    }
    b.wait_for("all five mails", 60, || b.mailbox("bob@b.test").len() >= 5);
    assert!(
        b.log().contains("peer message rate limit hit"),
        "{}",
        b.log_tail(40)
    );
    // The refusal b sent: resource-constraint (a `wait` error), naming the key.
    assert!(
        b.log().contains("condition=\"resource-constraint\" text=rate limit: a.test may send 60 mails a minute here (s2s.peer_messages_per_minute)"),
        "{}",
        b.log_tail(40)
    );
    assert!(a.log().contains("delivery deferred"), "{}", a.log_tail(40));
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());
    let mut subjects: Vec<String> = b
        .mailbox("bob@b.test")
        .into_iter()
        .map(|m| m.subject)
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["rate-0", "rate-1", "rate-2", "rate-3", "rate-4"]);
}

/// A byte budget of 3000 octets refilled at 1000 a second: the second 2.5 kB mail waits.
#[test]
fn byte_rate_limit_defers_and_all_arrive() {
    let (mut a, mut b) = pair_with(
        "127.0.0.175",
        "127.0.0.176",
        "",
        "",
        "",
        "peer_bytes_per_minute = 60000\npeer_bytes_burst = 3000",
    );
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let body = "y".repeat(2500);
    for i in 0..2 {
        a.send(
            "alice@a.test",
            &["bob@b.test"],
            &message("alice@a.test", "bob@b.test", &format!("bytes-{i}"), &body),
        );
    }
    b.wait_for("both mails", 60, || b.mailbox("bob@b.test").len() >= 2);
    assert!(
        b.log().contains("peer byte rate limit hit"),
        "{}",
        b.log_tail(40)
    );
    assert!(
        b.log().contains("condition=\"resource-constraint\" text=rate limit: a.test may send 60000 octets a minute here (s2s.peer_bytes_per_minute)"),
        "{}",
        b.log_tail(40)
    );
    assert_eq!(b.mailbox("bob@b.test").len(), 2);
}

/// `max_connections_per_ip = 2`: a third connection from the same address is refused with
/// policy-violation naming the key; once one closes, a new one is accepted.
#[test]
fn connections_per_ip_are_limited() {
    let mut b = Xmta::new(Spec {
        domain: "b.test",
        ip: "127.0.0.177",
        routes: vec![],
        extra: "",
        s2s_extra: "max_connections_per_ip = 2",
    });
    b.start();
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>";
    let mut r1 = Raw::connect(b.addr);
    r1.open_stream("a.test", "b.test");
    // `start` probed the s2s port, and that connection holds its slot until b has seen it
    // close: until then a second stream may be refused too. Once one is accepted, two are
    // open.
    // A new stream, read until it is accepted (features) or refused.
    let attempt = || {
        let mut r = Raw::connect(b.addr);
        r.send(header);
        r.read_until(5, |s| {
            s.contains("</stream:features>") || s.contains("policy-violation")
        });
        r
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r2 = loop {
        let r = attempt();
        if r.got.contains("</stream:features>") {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a second stream is never accepted: {}",
            r.got
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut r3 = Raw::connect(b.addr);
    assert!(
        r3.read_until(10, |s| s
            .contains(&format!("<policy-violation xmlns='{STREAMS}'/>"))),
        "{}",
        r3.got
    );
    assert!(
        r3.got.contains("(max_connections_per_ip = 2)"),
        "{}",
        r3.got
    );
    assert!(r3.closed_within(5));
    r1.send("</stream:stream>");
    assert!(r1.closed_within(5));
    drop(r1);
    // The slot is freed when b's task ends; allow it a moment, by polling.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r4 = attempt();
        if r4.got.contains("</stream:features>") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r4.got);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(r2);
}

/// A mail over the receiver's `max_message_bytes` is refused with policy-violation /
/// message-too-large (a permanent error), so the sender bounces it.
#[test]
fn message_size_limit_over_s2s() {
    let (mut a, mut b) = pair("127.0.0.178", "127.0.0.179", "", "");
    edit(&b, "[delivery]\n", "[delivery]\nmax_message_bytes = 4096\n");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "too-big", &"z".repeat(10_000)),
    );
    a.wait_for("the bounce", 30, || a.mailbox("alice@a.test").len() == 1);
    let dsn = String::from_utf8_lossy(&a.show("alice@a.test", a.mailbox("alice@a.test")[0].uid))
        .to_string();
    assert!(dsn.contains("Status: 5.3.4"), "{dsn}");
    assert!(b.mailbox("bob@b.test").is_empty());
    assert!(
        b.log().contains("condition=\"policy-violation\""),
        "{}",
        b.log_tail(20)
    );
}

/// An authenticated stream that sends nothing for `idle_timeout_secs` is closed with
/// connection-timeout; an unauthenticated one after `handshake_timeout_secs`.
#[test]
fn idle_and_handshake_timeouts() {
    let evil = FakePeer::start("127.0.0.181", "evil.test");
    let mut b = Xmta::plain("b.test", "127.0.0.180");
    set_route(&mut b, "evil.test", &evil.addr.to_string());
    edit(&b, "idle_timeout_secs = 60", "idle_timeout_secs = 2");
    edit(
        &b,
        "handshake_timeout_secs = 10",
        "handshake_timeout_secs = 3",
    );
    b.start();
    let mut r = Raw::connect(b.addr);
    r.open_stream("evil.test", "b.test");
    r.send("<db:result from='evil.test' to='b.test'>k</db:result>");
    assert!(
        r.read_until(10, |s| s.contains("type='valid'")),
        "{}",
        r.got
    );
    let t0 = std::time::Instant::now();
    assert!(
        r.read_until(10, |s| s
            .contains(&format!("<connection-timeout xmlns='{STREAMS}'/>"))),
        "{}",
        r.got
    );
    let idle = t0.elapsed();
    assert!(
        idle >= std::time::Duration::from_millis(1500),
        "closed too early: {idle:?}"
    );
    assert!(r.closed_within(5));

    let mut r = Raw::connect(b.addr);
    r.open_stream("evil.test", "b.test");
    let t0 = std::time::Instant::now();
    assert!(
        r.read_until(10, |s| s
            .contains(&format!("<connection-timeout xmlns='{STREAMS}'/>"))),
        "{}",
        r.got
    );
    assert!(t0.elapsed() >= std::time::Duration::from_millis(2500));
    assert!(r.closed_within(5));
}
