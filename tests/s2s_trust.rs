//! Certificate trust for s2s: `[s2s] auth = "certificate"` accepts a peer only by a
//! certificate valid for its domain under the configured roots (SASL EXTERNAL, XEP-0178),
//! and refuses wrong-domain and expired certificates (dialback is not an alternative);
//! direct TLS (XEP-0368) is found by `_xmpps-server._tcp` SRV and preferred, with a
//! fall-back to STARTTLS when the direct TLS target does not work.

mod common;

use common::registry::{Dnsmasq, Rec, TestCa};
use common::*;

#[test]
fn certificate_auth_accepts_valid_and_refuses_wrong_domain_and_expired() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "trust");
    let cert_a = ca.issue("a.test", &["a.test"], false);
    let cert_b = ca.issue("b.test", &["b.test"], false);
    // c.test presents a valid certificate, but for another domain; d.test an expired one.
    let cert_c = ca.issue("c-wrong", &["x.test"], false);
    let cert_d = ca.issue("d.test", &["d.test"], true);
    let (mut a, mut b) = pair_with(
        "127.0.0.184",
        "127.0.0.185",
        "",
        "",
        "auth = \"certificate\"",
        "auth = \"certificate\"",
    );
    let mut c = Xmta::plain("c.test", "127.0.0.186");
    let mut d = Xmta::plain("d.test", "127.0.0.187");
    set_tls(
        &mut a,
        "optional",
        Some((&cert_a.0, &cert_a.1)),
        Some(&ca.ca_path),
    );
    set_tls(
        &mut b,
        "optional",
        Some((&cert_b.0, &cert_b.1)),
        Some(&ca.ca_path),
    );
    set_tls(
        &mut c,
        "optional",
        Some((&cert_c.0, &cert_c.1)),
        Some(&ca.ca_path),
    );
    set_tls(
        &mut d,
        "optional",
        Some((&cert_d.0, &cert_d.1)),
        Some(&ca.ca_path),
    );
    for x in [&mut c, &mut d] {
        set_route(x, "b.test", &b.addr.to_string());
    }
    set_route(&mut b, "c.test", &c.addr.to_string());
    set_route(&mut b, "d.test", &d.addr.to_string());
    for x in [&mut a, &mut b, &mut c, &mut d] {
        x.start();
    }
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    c.add_user("carol@c.test");
    d.add_user("dave@d.test");

    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "good-cert", "x"),
    );
    b.wait_for("a's mail", 30, || b.mailbox("bob@b.test").len() == 1);
    let got = String::from_utf8_lossy(&b.show("bob@b.test", 1)).to_string();
    assert!(
        got.starts_with("Authentication-Results: b.test; x-xmpp=pass (certificate)"),
        "{got}"
    );
    assert!(
        b.log()
            .contains("inbound stream authenticated (SASL EXTERNAL)")
    );

    for (x, from, subject) in [
        (&c, "carol@c.test", "wrong-domain"),
        (&d, "dave@d.test", "expired"),
    ] {
        x.send(
            from,
            &["bob@b.test"],
            &message(from, "bob@b.test", subject, "x"),
        );
        // b offers no EXTERNAL for a certificate not valid for the peer's domain, and
        // refuses the dialback the peer falls back to.
        x.wait_for("the refusal in the sender's queue", 30, || {
            x.queue().iter().any(|l| {
                l.contains("pending")
                    && l.contains("policy-violation")
                    && l.contains("accepts only certificate authentication")
            })
        });
    }
    assert!(!b.log().contains("inbound stream authenticated (dialback)"));
    let mail = b.mailbox("bob@b.test");
    assert_eq!(mail.len(), 1, "{mail:?}");

    // The other direction: b (auth = certificate) will not send to d.test, whose
    // certificate has expired, and says why.
    b.send(
        "bob@b.test",
        &["dave@d.test"],
        &message("bob@b.test", "dave@d.test", "to-expired", "x"),
    );
    b.wait_for("b's refusal to use d.test", 30, || {
        b.queue().iter().any(|l| {
            l.contains("pending") && l.contains("d.test's certificate is not valid for d.test")
        })
    });
    assert!(d.mailbox("dave@d.test").is_empty());
}

/// XEP-0368: b.test publishes `_xmpps-server._tcp` pointing at its direct TLS listener;
/// c.test publishes one pointing at a port that does not speak TLS, so a falls back to
/// its `_xmpp-server._tcp` (STARTTLS) record.
#[test]
fn direct_tls_is_preferred_and_falls_back_to_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "direct");
    let cert_a = ca.issue("a.test", &["a.test"], false);
    let cert_b = ca.issue("b.test", &["b.test"], false);
    let cert_c = ca.issue("c.test", &["c.test"], false);
    let dns_port = free_port("127.0.0.188");
    let mut dns = Dnsmasq::stopped("127.0.0.188", dns_port, &["test"]);
    let tls_port = free_port("127.0.0.185");
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip: "127.0.0.184",
        routes: vec![],
        extra: &format!("[dns]\nnameservers = [\"{}\"]\n", dns.addr),
        s2s_extra: "",
    });
    let mut b = Xmta::new(Spec {
        domain: "b.test",
        ip: "127.0.0.185",
        routes: vec![],
        extra: "",
        s2s_extra: &format!("tls_listen = [\"127.0.0.185:{tls_port}\"]"),
    });
    let mut c = Xmta::plain("c.test", "127.0.0.186");
    set_tls(
        &mut a,
        "optional",
        Some((&cert_a.0, &cert_a.1)),
        Some(&ca.ca_path),
    );
    set_tls(
        &mut b,
        "optional",
        Some((&cert_b.0, &cert_b.1)),
        Some(&ca.ca_path),
    );
    set_tls(
        &mut c,
        "optional",
        Some((&cert_c.0, &cert_c.1)),
        Some(&ca.ca_path),
    );
    set_route(&mut b, "a.test", &a.addr.to_string());
    set_route(&mut c, "a.test", &a.addr.to_string());
    // c's "direct TLS" target is its plain s2s port: the TLS handshake fails there.
    let (b_plain, c_plain) = (b.addr.port(), c.addr.port());
    dns.restart(&[
        Rec::A("xmpp.b.test", "127.0.0.185"),
        Rec::A("xmpp.c.test", "127.0.0.186"),
        Rec::Srv("_xmpps-server._tcp.b.test", "xmpp.b.test", tls_port),
        Rec::Srv("_xmpp-server._tcp.b.test", "xmpp.b.test", b_plain),
        Rec::Srv("_xmpps-server._tcp.c.test", "xmpp.c.test", c_plain),
        Rec::Srv("_xmpp-server._tcp.c.test", "xmpp.c.test", c_plain),
    ]);
    a.start();
    b.start();
    c.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    c.add_user("carol@c.test");
    a.send(
        "alice@a.test",
        &["bob@b.test", "carol@c.test"],
        &message("alice@a.test", "bob@b.test", "direct", "x"),
    );
    b.wait_for("the mail at b", 30, || b.mailbox("bob@b.test").len() == 1);
    c.wait_for("the mail at c", 30, || c.mailbox("carol@c.test").len() == 1);
    let log = a.log();
    assert!(
        log.contains("outgoing stream encrypted remote=\"b.test\" cert_valid=true direct=true"),
        "{}",
        a.log_tail(40)
    );
    // c: the direct TLS attempt failed, STARTTLS on the same port worked.
    assert!(
        log.contains("direct TLS target failed; trying the next remote=\"c.test\""),
        "{}",
        a.log_tail(40)
    );
    assert!(
        !log.contains("remote=\"c.test\" cert_valid=true direct=true"),
        "{}",
        a.log_tail(40)
    );
    assert!(
        log.contains("outgoing stream encrypted remote=\"c.test\" cert_valid=true"),
        "{}",
        a.log_tail(40)
    );
    // Both streams authenticated by certificate (both sides valid under the CA).
    for x in [&b, &c] {
        let got = String::from_utf8_lossy(&x.show(
            &format!(
                "{}@{}",
                if x.domain == "b.test" { "bob" } else { "carol" },
                x.domain
            ),
            1,
        ))
        .to_string();
        assert!(got.contains("x-xmpp=pass (certificate)"), "{got}");
    }
    assert!(dns.queries("SRV", "_xmpps-server._tcp.b.test") >= 1);
}

/// `auth = "dialback"`: even with certificates both sides can verify, EXTERNAL is neither
/// offered nor used, and dialback over TLS authenticates the stream.
#[test]
fn dialback_only_does_not_use_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "dbonly");
    let cert_a = ca.issue("a.test", &["a.test"], false);
    let cert_b = ca.issue("b.test", &["b.test"], false);
    let (mut a, mut b) = pair_with(
        "127.0.0.187",
        "127.0.0.189",
        "",
        "",
        "auth = \"dialback\"",
        "auth = \"dialback\"",
    );
    set_tls(
        &mut a,
        "optional",
        Some((&cert_a.0, &cert_a.1)),
        Some(&ca.ca_path),
    );
    set_tls(
        &mut b,
        "optional",
        Some((&cert_b.0, &cert_b.1)),
        Some(&ca.ca_path),
    );
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "dialback-only", "x"),
    );
    b.wait_for("the mail", 30, || b.mailbox("bob@b.test").len() == 1);
    let got = String::from_utf8_lossy(&b.show("bob@b.test", 1)).to_string();
    assert!(
        got.starts_with("Authentication-Results: b.test; x-xmpp=pass (dialback; TLS)"),
        "{got}"
    );
    assert!(
        a.log()
            .contains("outgoing stream encrypted remote=\"b.test\" cert_valid=true"),
        "{}",
        a.log_tail(30)
    );
    assert!(!a.log().contains("SASL EXTERNAL") && !b.log().contains("SASL EXTERNAL"));
}
