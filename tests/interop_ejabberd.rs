//! Interop with a real ejabberd 23.01 (private instance on loopback, see
//! common/ejabberd.rs): dialback in both directions, xmta's mail reaching an ejabberd
//! user's client, and xmta's answers to the XMPP world (discovery, chat). ejabberd
//! finds b.test through a private dnsmasq (SRV `_xmpp-server._tcp.b.test` -> b.test on
//! xmta's port, A b.test -> xmta's address).
//!
//! ejabberd's own dialback habits met here: it verifies keys over a separate, never
//! authenticated connection; its `type='valid'` answers are empty elements; its
//! outgoing stream header has no id; its features carry an empty SASL `<mechanisms/>`.

mod common;

use common::c2s::C2s;
use common::ejabberd::{Ejabberd, EjabberdSpec, EjabberdTls};
use common::*;

/// b.test (xmta) routed to e.test's s2s port; returns it unstarted.
fn xmta(ip: &str, ejabberd_ip: &str) -> Xmta {
    let mut b = Xmta::new(Spec {
        domain: "b.test",
        ip,
        routes: vec![],
        extra: "",
        s2s_extra: "",
    });
    set_route(&mut b, "e.test", &format!("{ejabberd_ip}:5269"));
    b
}

fn first_line<'a>(log: &'a str, pat: &str) -> &'a str {
    log.lines().find(|l| l.contains(pat)).unwrap_or_default()
}

#[test]
fn dialback_both_ways_with_ejabberd_plain() {
    let ej_ip = "127.0.0.50";
    let dns_ip = "127.0.0.51";
    let xmta_ip = "127.0.0.52";
    let mut b = xmta(xmta_ip, ej_ip);
    let port = b.addr.port();
    let e = Ejabberd::start(EjabberdSpec {
        ip: ej_ip,
        dns_ip,
        domain: "e.test",
        a: &[("b.test", xmta_ip)],
        srv: &[("b.test", "b.test", port)],
        tls: None,
        service: None,
    });
    e.register("erin", "secret");
    b.start();
    b.add_user("bob@b.test");
    let mut erin = C2s::login(e.c2s_addr(), "erin", "e.test", "secret");

    // xmta -> ejabberd: ejabberd does not announce urn:xmpp:mta:0, so xmta delivers the
    // readable body to the user's JID (XEP-MTA §5.3), over a stream ejabberd verified
    // by dialback (a separate verify connection back to b.test).
    let m = message(
        "bob@b.test",
        "erin@e.test",
        "hello-ejabberd",
        "Hi Erin, this is mail.",
    );
    b.send("bob@b.test", &["erin@e.test"], &m);
    assert!(
        erin.wait(30, |s| s.contains("hello-ejabberd")
            && s.contains("</message>")),
        "erin got: {}\n--- xmta ---\n{}",
        erin.raw.got,
        b.log_tail(40)
    );
    assert!(
        erin.raw.got.contains("from='bob@b.test'") || erin.raw.got.contains("from=\"bob@b.test\""),
        "{}",
        erin.raw.got
    );
    assert!(
        erin.raw.got.contains("Hi Erin, this is mail."),
        "{}",
        erin.raw.got
    );
    e.wait_log(
        "Accepted inbound s2s dialback authentication b.test -> e.test",
        10,
    );
    b.wait_for("b's queue to empty", 30, || b.queue().is_empty());

    // ejabberd -> xmta: discovery on the xmta domain announces the mail feature.
    erin.raw.got.clear();
    erin.send("<iq type='get' to='b.test' id='disco1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    assert!(
        erin.wait(30, |s| s.contains("urn:xmpp:mta:0")),
        "disco answer: {}\n--- xmta ---\n{}",
        erin.raw.got,
        b.log_tail(40)
    );
    e.wait_log(
        "Accepted outbound s2s dialback authentication e.test -> b.test",
        10,
    );
    // It found b.test through the private DNS only.
    b.wait_for("ejabberd's DNS queries for b.test", 10, || {
        let dns = e.dns_log_text();
        dns.contains("query[SRV] _xmpp-server._tcp.b.test") && dns.contains("query[A] b.test")
    });
    // A chat message to a mail address gets an error, not silence.
    erin.raw.got.clear();
    erin.send("<message type='chat' to='bob@b.test' id='chat1'><body>hi bob</body></message>");
    assert!(
        erin.wait(30, |s| s.contains("service-unavailable")),
        "chat answer: {}\n--- xmta ---\n{}",
        erin.raw.got,
        b.log_tail(40)
    );
    let blog = b.log();
    let line = first_line(&blog, "inbound stream authenticated (dialback)");
    assert!(line.contains("from=e.test"), "{}", b.log_tail(30));
}

/// The same over STARTTLS, certificates from a test CA. ejabberd requires STARTTLS on
/// s2s and xmta has tls = "required" and checks ejabberd's certificate against the CA,
/// so nothing gets through unless both directions negotiated TLS.
#[test]
fn dialback_over_starttls_with_ejabberd() {
    let ej_ip = "127.0.0.53";
    let dns_ip = "127.0.0.54";
    let xmta_ip = "127.0.0.55";
    let certs = tempfile::tempdir().unwrap();
    let (ca, pairs) = make_certs(certs.path(), &["b.test", "e.test"]);
    let mut b = xmta(xmta_ip, ej_ip);
    set_tls(
        &mut b,
        "required",
        Some((&pairs[0].0, &pairs[0].1)),
        Some(&ca),
    );
    let port = b.addr.port();
    let e = Ejabberd::start(EjabberdSpec {
        ip: ej_ip,
        dns_ip,
        domain: "e.test",
        a: &[("b.test", xmta_ip)],
        srv: &[("b.test", "b.test", port)],
        tls: Some(EjabberdTls {
            cert: &pairs[1].0,
            key: &pairs[1].1,
            ca: &ca,
            s2s_starttls: "required",
        }),
        service: None,
    });
    e.register("erin", "secret");
    b.start();
    b.add_user("bob@b.test");
    let mut erin = C2s::login(e.c2s_addr(), "erin", "e.test", "secret");

    b.send(
        "bob@b.test",
        &["erin@e.test"],
        &message("bob@b.test", "erin@e.test", "tls-to-ejabberd", "over TLS"),
    );
    assert!(
        erin.wait(30, |s| s.contains("tls-to-ejabberd")
            && s.contains("</message>")),
        "erin got: {}\n--- xmta ---\n{}",
        erin.raw.got,
        b.log_tail(40)
    );
    assert!(
        b.log()
            .contains("outgoing stream encrypted remote=\"e.test\" cert_valid=true"),
        "{}",
        b.log_tail(40)
    );
    // Over TLS with certificates from the CA both trust, the servers use SASL EXTERNAL
    // (XEP-0178) instead of dialback, in both directions.
    let accepted = e.wait_log(
        "Accepted inbound s2s EXTERNAL authentication b.test -> e.test",
        10,
    );
    assert!(accepted.contains("(tls|"), "{}", e.s2s_log_tail(60));
    assert!(
        b.log().contains(
            "outgoing stream authenticated (SASL EXTERNAL) local=\"b.test\" remote=\"e.test\""
        ),
        "{}",
        b.log_tail(40)
    );

    erin.raw.got.clear();
    erin.send("<iq type='get' to='b.test' id='disco2'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    assert!(
        erin.wait(30, |s| s.contains("urn:xmpp:mta:0")),
        "disco answer: {}\n--- xmta ---\n{}",
        erin.raw.got,
        b.log_tail(40)
    );
    // ejabberd's stream into xmta was encrypted too.
    let out = e.wait_log(
        "Accepted outbound s2s EXTERNAL authentication e.test -> b.test",
        10,
    );
    assert!(out.contains("(tls|"), "{}", e.s2s_log_tail(60));
    let blog = b.log();
    let line = first_line(&blog, "inbound stream authenticated (SASL EXTERNAL)");
    assert!(
        line.contains("from=e.test") && line.contains("tls=true"),
        "{line}\n{}",
        b.log_tail(40)
    );
}

/// ejabberd cannot resolve b.test: its private DNS starts with no records for it, so the
/// verify connection ejabberd opens for xmta's `<db:result>` has nowhere to go, and
/// ejabberd answers `<db:result type='error'>` with `<remote-server-not-found/>`. The
/// mail stays queued with that reason; once the DNS has b.test's records, the next retry
/// gets through and erin receives the mail: retried, never lost.
#[test]
fn ejabberd_cannot_resolve_xmta_then_can() {
    let ej_ip = "127.0.0.70";
    let dns_ip = "127.0.0.71";
    let xmta_ip = "127.0.0.72";
    let mut b = xmta(xmta_ip, ej_ip);
    let port = b.addr.port();
    let mut e = Ejabberd::start(EjabberdSpec {
        ip: ej_ip,
        dns_ip,
        domain: "e.test",
        a: &[],
        srv: &[],
        tls: None,
        service: None,
    });
    e.register("erin", "secret");
    b.start();
    b.add_user("bob@b.test");
    let mut erin = C2s::login(e.c2s_addr(), "erin", "e.test", "secret");

    let m = message(
        "bob@b.test",
        "erin@e.test",
        "dns-later",
        "Hi Erin, eventually.",
    );
    b.send("bob@b.test", &["erin@e.test"], &m);

    // The mail waits in the queue, its reason naming ejabberd's error.
    let mut pending = String::new();
    b.wait_for("a queue line naming remote-server-not-found", 30, || {
        pending = b
            .queue()
            .into_iter()
            .find(|l| l.contains("erin@e.test") && l.contains("remote-server-not-found"))
            .unwrap_or_default();
        !pending.is_empty()
    });
    assert!(
        pending.contains("pending (")
            && pending.contains(
                "e.test did not accept our dialback key for b.test: peer reported an error: remote-server-not-found"
            ),
        "{pending}"
    );
    let blog = b.log();
    let line = first_line(&blog, "dialback failed on outgoing stream");
    assert!(
        line.contains("remote-server-not-found") && line.contains("e.test"),
        "{line}\n{}",
        b.log_tail(40)
    );
    // ejabberd's side: it asked its DNS for b.test, found nothing, and said so on the wire.
    let sent = e.wait_log("Send XML on stream = <<\"<db:result", 10);
    assert!(
        sent.contains("type='error'") && sent.contains("remote-server-not-found"),
        "{sent}\n{}",
        e.s2s_log_tail(60)
    );
    let dns = e.dns_log_text();
    assert!(
        dns.contains("query[SRV] _xmpp-server._tcp.b.test")
            && dns.contains("config _xmpp-server._tcp.b.test is NXDOMAIN"),
        "dnsmasq: {dns}"
    );
    assert!(
        !e.log()
            .contains("Accepted inbound s2s dialback authentication b.test"),
        "{}",
        e.s2s_log_tail(60)
    );
    assert!(!erin.raw.got.contains("dns-later"), "{}", erin.raw.got);

    // The DNS learns b.test; xmta's next retry is verified and delivered.
    e.restart_dns(&[("b.test", xmta_ip)], &[("b.test", "b.test", port)]);
    assert!(
        erin.wait(30, |s| s.contains("dns-later") && s.contains("</message>")),
        "erin got: {}\n--- xmta ---\n{}",
        erin.raw.got,
        b.log_tail(40)
    );
    assert!(
        erin.raw.got.contains("Hi Erin, eventually."),
        "{}",
        erin.raw.got
    );
    e.wait_log(
        "Accepted inbound s2s dialback authentication b.test -> e.test",
        10,
    );
    b.wait_for("b's queue to empty", 30, || b.queue().is_empty());
    let blog = b.log();
    assert!(
        blog.contains("outgoing stream authenticated (dialback)"),
        "{}",
        b.log_tail(40)
    );
}
