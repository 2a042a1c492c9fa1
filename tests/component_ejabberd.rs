//! Component mode (XEP-0114) behind ejabberd 23.01: xmta is the mail.e.test component
//! of a private ejabberd (common/ejabberd.rs) serving e.test; mail between it and a
//! standalone xmta (a.test) crosses ejabberd's s2s, chunked, with receipts both ways.
//! ejabberd finds a.test through its private dnsmasq (SRV and A to the standalone
//! xmta); the standalone xmta reaches mail.e.test through a static route to ejabberd's
//! s2s port.
//!
//! Stanza limits on the way: ejabberd_s2s_in has `max_stanza_size: 524288` (the
//! harness, as in ejabberd's example config); ejabberd_service defaults to `infinity`
//! in 23.01, so the test sets the same 512 KiB there, and every chunk must fit both.

mod common;

use common::ejabberd::{Ejabberd, EjabberdService, EjabberdSpec};
use common::*;

#[test]
fn component_behind_ejabberd_carries_big_mail_both_ways() {
    let ej_ip = "127.0.0.56";
    let dns_ip = "127.0.0.57";
    let a_ip = "127.0.0.58";
    let comp_ip = "127.0.0.59";
    let secret = "c0mp0nent";
    // The standalone xmta; mail.e.test is ejabberd's s2s port.
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip: a_ip,
        routes: vec![],
        extra: "",
        s2s_extra: "",
    });
    set_route(&mut a, "mail.e.test", &format!("{ej_ip}:5269"));
    let e = Ejabberd::start(EjabberdSpec {
        ip: ej_ip,
        dns_ip,
        domain: "e.test",
        a: &[("a.test", a_ip)],
        srv: &[("a.test", "a.test", a.addr.port())],
        tls: None,
        service: Some(EjabberdService {
            port: 5347,
            jid: "mail.e.test",
            password: secret,
            max_stanza_size: Some(524_288),
        }),
    });
    let mut c = Xmta::new(Spec {
        domain: "mail.e.test",
        ip: comp_ip,
        routes: vec![],
        extra: &format!(
            "[component]\nserver = \"{}\"\njid = \"mail.e.test\"\nsecret = \"{secret}\"\n",
            e.service_addr()
        ),
        s2s_extra: "",
    });
    a.start();
    c.start();
    a.add_user("alice@a.test");
    c.add_user("carol@mail.e.test");
    c.wait_for("the component handshake", 20, || {
        c.log().contains("component connected")
    });

    let m1 = two_mb("alice@a.test", "carol@mail.e.test", "to-component", 7);
    a.send("alice@a.test", &["carol@mail.e.test"], &m1);
    c.wait_for("the mail at the component", 60, || {
        c.mailbox("carol@mail.e.test").len() == 1
    });
    let got = c.show("carol@mail.e.test", 1);
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

    let m2 = two_mb("carol@mail.e.test", "alice@a.test", "from-component", 11);
    c.send("carol@mail.e.test", &["alice@a.test"], &m2);
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

    // ejabberd carried it: both directions of its s2s with a.test were authenticated,
    // and it found a.test through its private DNS.
    e.wait_log(
        "Accepted inbound s2s dialback authentication a.test -> mail.e.test",
        10,
    );
    e.wait_log(
        "Accepted outbound s2s dialback authentication mail.e.test -> a.test",
        10,
    );
    let dns = e.dns_log_text();
    assert!(
        dns.contains("query[SRV] _xmpp-server._tcp.a.test") && dns.contains("query[A] a.test"),
        "{dns}"
    );
}
