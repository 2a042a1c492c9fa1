//! Interop with a real Prosody 0.12 (private instance on loopback): dialback in both
//! directions, xmta's mail reaching a Prosody user's client, and xmta's answers to the
//! XMPP world (discovery, chat). Prosody resolves b.test through a hosts file.

mod common;

use common::c2s::C2s;
use common::prosody::Prosody;
use common::*;

#[test]
fn dialback_both_ways_with_prosody_plain() {
    let xmta_ip = "127.0.0.41";
    let prosody_ip = "127.0.0.40";
    // Prosody finds b.test by A record, on the default port.
    let mut b = Xmta::on_default_port("b.test", xmta_ip);
    set_route(&mut b, "p.test", &format!("{prosody_ip}:5269"));
    let p = Prosody::start(prosody_ip, "p.test", &[(xmta_ip, "b.test")], "", "");
    p.register("alice", "secret");
    b.start();
    b.add_user("bob@b.test");

    let mut alice = C2s::login(
        format!("{prosody_ip}:5222").parse().unwrap(),
        "alice",
        "p.test",
        "secret",
    );

    // xmta -> Prosody: Prosody does not announce urn:xmpp:mta:0, so xmta delivers the
    // readable body to the user's JID (XEP-MTA §5.3), over a stream Prosody verified.
    let m = message(
        "bob@b.test",
        "alice@p.test",
        "hello-prosody",
        "Hi Alice, this is mail.",
    );
    b.send("bob@b.test", &["alice@p.test"], &m);
    assert!(
        alice.wait(30, |s| s.contains("hello-prosody")
            && s.contains("</message>")),
        "alice got: {}\n--- xmta ---\n{}",
        alice.raw.got,
        b.log_tail(40)
    );
    assert!(
        alice.raw.got.contains("from='bob@b.test'")
            || alice.raw.got.contains("from=\"bob@b.test\""),
        "{}",
        alice.raw.got
    );
    assert!(
        alice.raw.got.contains("Hi Alice, this is mail."),
        "{}",
        alice.raw.got
    );
    let plog = p.log();
    assert!(
        plog.contains("Incoming s2s connection b.test->p.test complete"),
        "prosody did not authenticate xmta:\n{}",
        p.log_tail(60)
    );
    b.wait_for("b's queue to empty", 30, || b.queue().is_empty());

    // Prosody -> xmta: discovery on the xmta domain announces the mail feature.
    alice.raw.got.clear();
    alice.send("<iq type='get' to='b.test' id='disco1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    assert!(
        alice.wait(30, |s| s.contains("urn:xmpp:mta:0")),
        "disco answer: {}\n--- xmta ---\n{}",
        alice.raw.got,
        b.log_tail(40)
    );
    assert!(
        p.log()
            .contains("Outgoing s2s connection p.test->b.test complete"),
        "{}",
        p.log_tail(60)
    );
    // A chat message to a mail address gets an error, not silence.
    alice.raw.got.clear();
    alice.send("<message type='chat' to='bob@b.test' id='chat1'><body>hi bob</body></message>");
    assert!(
        alice.wait(30, |s| s.contains("service-unavailable")),
        "chat answer: {}",
        alice.raw.got
    );
    assert!(
        b.log().contains("inbound stream authenticated (dialback)"),
        "{}",
        b.log_tail(30)
    );
}

/// The same over STARTTLS, certificates from a test CA. Prosody requires encryption on
/// s2s, so nothing gets through unless both directions negotiated TLS.
#[test]
fn dialback_over_starttls_with_prosody() {
    let xmta_ip = "127.0.0.43";
    let prosody_ip = "127.0.0.42";
    let certs = tempfile::tempdir().unwrap();
    let (ca, pairs) = make_certs(certs.path(), &["b.test", "p.test"]);
    // Prosody finds b.test by A record, on the default port.
    let mut b = Xmta::on_default_port("b.test", xmta_ip);
    set_route(&mut b, "p.test", &format!("{prosody_ip}:5269"));
    set_tls(
        &mut b,
        "required",
        Some((&pairs[0].0, &pairs[0].1)),
        Some(&ca),
    );
    let vhost = format!(
        "ssl = {{ certificate = \"{}\"; key = \"{}\"; }}",
        pairs[1].0.display(),
        pairs[1].1.display()
    );
    let p = Prosody::start(
        prosody_ip,
        "p.test",
        &[(xmta_ip, "b.test")],
        "s2s_require_encryption = true",
        &vhost,
    );
    p.register("alice", "secret");
    b.start();
    b.add_user("bob@b.test");
    let mut alice = C2s::login(
        format!("{prosody_ip}:5222").parse().unwrap(),
        "alice",
        "p.test",
        "secret",
    );

    b.send(
        "bob@b.test",
        &["alice@p.test"],
        &message("bob@b.test", "alice@p.test", "tls-to-prosody", "over TLS"),
    );
    assert!(
        alice.wait(30, |s| s.contains("tls-to-prosody")),
        "alice got: {}\n--- xmta ---\n{}",
        alice.raw.got,
        b.log_tail(40)
    );
    assert!(
        b.log()
            .contains("outgoing stream encrypted remote=\"p.test\" cert_valid=true"),
        "{}",
        b.log_tail(40)
    );

    alice.raw.got.clear();
    alice.send("<iq type='get' to='b.test' id='disco2'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    assert!(
        alice.wait(30, |s| s.contains("urn:xmpp:mta:0")),
        "disco answer: {}\n--- xmta ---\n{}",
        alice.raw.got,
        b.log_tail(40)
    );
    // Prosody's stream into xmta was encrypted too, and since its certificate is valid
    // for p.test under the test CA xmta trusts, Prosody authenticated with SASL EXTERNAL
    // (XEP-0178). Prosody does not trust that CA, so xmta's stream to it used dialback.
    let log = b.log();
    let line = log
        .lines()
        .find(|l| l.contains("inbound stream authenticated (SASL EXTERNAL)"))
        .unwrap_or_default();
    assert!(
        line.contains("from=p.test") && line.contains("tls=true"),
        "{line}\n{}",
        b.log_tail(40)
    );
}

/// Prosody is killed in the middle of a 200-message burst and restarted: xmta resends
/// whatever Prosody had not confirmed (the ping barrier of XEP-MTA §5.3), so every
/// message reaches the user. A plain XMPP server keeps no duplicate memory, so a message
/// Prosody took in the instant before it died (processed, ping not yet answered) can come
/// twice: at-least-once, bounded by what was in flight. Exactly-once needs a receiving
/// server that speaks urn:xmpp:mta:0 (tests/s2s_mail.rs).
#[test]
fn prosody_restart_mid_burst_loses_nothing() {
    let xmta_ip = "127.0.0.45";
    let prosody_ip = "127.0.0.44";
    // Prosody finds b.test by A record, on the default port.
    let mut b = Xmta::on_default_port("b.test", xmta_ip);
    set_route(&mut b, "p.test", &format!("{prosody_ip}:5269"));
    let mut p = Prosody::start(prosody_ip, "p.test", &[(xmta_ip, "b.test")], "", "");
    p.register("alice", "secret");
    b.start();
    b.add_user("bob@b.test");
    let total = 200;
    std::thread::scope(|s| {
        let sender = s.spawn(|| {
            for i in 0..total {
                let m = message("bob@b.test", "alice@p.test", &format!("burst-{i:03}"), "x");
                b.send("bob@b.test", &["alice@p.test"], &m);
            }
        });
        // Kill Prosody once part of the burst went out, then bring it back.
        b.wait_for("part of the burst delivered", 60, || {
            b.log().matches("delivered as plain XMPP messages").count() >= 40
        });
        p.stop();
        p.launch();
        sender.join().unwrap();
    });
    b.wait_for("b's queue to empty", 120, || b.queue().is_empty());
    assert!(
        b.log().contains("delivery deferred"),
        "the restart must have interrupted delivery:\n{}",
        b.log_tail(30)
    );
    // Alice comes online and gets everything Prosody stored for her.
    let mut alice = C2s::login(
        format!("{prosody_ip}:5222").parse().unwrap(),
        "alice",
        "p.test",
        "secret",
    );
    let all_in = alice.wait(30, |s| {
        (0..total).all(|i| s.contains(&format!("burst-{i:03}")))
    });
    let got = alice.raw.got.clone();
    let missing: Vec<usize> = (0..total)
        .filter(|i| !got.contains(&format!("burst-{i:03}")))
        .collect();
    assert!(all_in, "missing after the restart: {missing:?}");
    // Subjects appear once in <subject/> per copy.
    let dups: Vec<usize> = (0..total)
        .filter(|i| {
            got.matches(&format!("<subject>burst-{i:03}</subject>"))
                .count()
                > 1
        })
        .collect();
    assert!(
        dups.len() <= 2,
        "more duplicates than the in-flight window explains: {dups:?}"
    );
}
