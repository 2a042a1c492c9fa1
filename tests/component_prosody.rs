//! Component mode (XEP-0114): xmta is the mail.p.test component of a private Prosody;
//! mail between it and a standalone xmta (a.test) crosses Prosody's s2s, chunked above
//! Prosody's 512 KiB stanza limit, with receipts both ways.

mod common;

use common::prosody::Prosody;
use common::*;

/// Prosody serving p.test with the component mail.p.test on `prosody_ip`, the standalone
/// xmta a.test (alice) on `a_ip`, and the component xmta (carol) on `comp_ip`, all
/// started, the component connected.
fn setup(prosody_ip: &str, a_ip: &str, comp_ip: &str) -> (Prosody, Xmta, Xmta) {
    let p = Prosody::start(
        prosody_ip,
        "p.test",
        &[(a_ip, "a.test")],
        "",
        "Component \"mail.p.test\"\n    component_secret = \"c0mp0nent\"\n",
    );
    // Prosody finds a.test by A record, on the default port.
    let mut a = Xmta::on_default_port("a.test", a_ip);
    set_route(&mut a, "mail.p.test", &format!("{prosody_ip}:5269"));
    let mut c = Xmta::new(Spec {
        domain: "mail.p.test",
        ip: comp_ip,
        routes: vec![],
        extra: &format!(
            "[component]\nserver = \"{prosody_ip}:5347\"\njid = \"mail.p.test\"\nsecret = \"c0mp0nent\"\n"
        ),
        s2s_extra: "",
    });
    a.start();
    c.start();
    a.add_user("alice@a.test");
    c.add_user("carol@mail.p.test");
    c.wait_for("the component handshake", 20, || {
        c.log().contains("component connected")
    });
    (p, a, c)
}

#[test]
fn component_behind_prosody_carries_big_mail_both_ways() {
    let (p, a, c) = setup("127.0.0.62", "127.0.0.63", "127.0.0.64");

    let m1 = two_mb("alice@a.test", "carol@mail.p.test", "to-component", 7);
    a.send("alice@a.test", &["carol@mail.p.test"], &m1);
    c.wait_for("the mail at the component", 60, || {
        c.mailbox("carol@mail.p.test").len() == 1
    });
    let got = c.show("carol@mail.p.test", 1);
    assert!(
        got.ends_with(&m1),
        "not byte-identical ({} vs {} bytes)",
        got.len(),
        m1.len()
    );
    assert!(String::from_utf8_lossy(&got[..200]).contains("x-xmpp=pass (component)"));
    a.wait_for("a's receipt from the component", 60, || {
        a.queue().is_empty()
    });

    let m2 = two_mb("carol@mail.p.test", "alice@a.test", "from-component", 11);
    c.send("carol@mail.p.test", &["alice@a.test"], &m2);
    a.wait_for("the mail at a.test", 60, || {
        a.mailbox("alice@a.test").len() == 1
    });
    let got = a.show("alice@a.test", 1);
    assert!(
        got.ends_with(&m2),
        "not byte-identical ({} vs {} bytes)",
        got.len(),
        m2.len()
    );
    c.wait_for("the component's receipt", 60, || c.queue().is_empty());
    // Prosody carried it: both directions of its s2s with a.test were authenticated.
    let plog = p.log();
    assert!(
        plog.contains("Incoming s2s connection a.test->mail.p.test complete"),
        "{}",
        p.log_tail(40)
    );
    assert!(
        plog.contains("Outgoing s2s connection mail.p.test->a.test complete"),
        "{}",
        p.log_tail(40)
    );
}

/// Prosody, which carries every stanza between a.test and the component, is killed in
/// the middle of a 200-message burst and restarted. Receipts and the component's
/// duplicate memory (XEP-MTA §11.4) make every message arrive exactly once.
#[test]
fn prosody_restart_mid_burst_delivers_each_mail_once() {
    let (mut p, a, c) = setup("127.0.0.65", "127.0.0.66", "127.0.0.67");
    let total = 200;
    std::thread::scope(|s| {
        let sender = s.spawn(|| {
            for i in 0..total {
                let m = message(
                    "alice@a.test",
                    "carol@mail.p.test",
                    &format!("burst-{i:03}"),
                    "x",
                );
                a.send("alice@a.test", &["carol@mail.p.test"], &m);
            }
        });
        c.wait_for("part of the burst", 60, || {
            c.mailbox("carol@mail.p.test").len() >= 30
        });
        p.stop();
        p.launch();
        sender.join().unwrap();
    });
    c.wait_for("the component to reconnect", 60, || {
        c.log().matches("component connected").count() >= 2
    });
    a.wait_for("a's queue to empty", 180, || a.queue().is_empty());
    let mut subjects: Vec<String> = c
        .mailbox("carol@mail.p.test")
        .into_iter()
        .map(|l| l.subject)
        .collect();
    subjects.sort();
    let expected: Vec<String> = (0..total).map(|i| format!("burst-{i:03}")).collect();
    assert_eq!(subjects, expected, "every message exactly once");
    assert!(
        a.log().contains("delivery deferred"),
        "the restart must have interrupted delivery"
    );
}
