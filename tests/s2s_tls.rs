//! s2s over STARTTLS (RFC 6120 §5) with certificates from a test CA, and the
//! `tls = "required"` policy in both directions.

mod common;

use common::*;

#[test]
fn starttls_required_both_ways() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, pairs) = make_certs(certs.path(), &["a.test", "b.test"]);
    let (mut a, mut b) = pair("127.0.0.16", "127.0.0.17", "", "");
    set_tls(
        &mut a,
        "required",
        Some((&pairs[0].0, &pairs[0].1)),
        Some(&ca),
    );
    set_tls(
        &mut b,
        "required",
        Some((&pairs[1].0, &pairs[1].1)),
        Some(&ca),
    );
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "tls-ab", "over TLS"),
    );
    b.send(
        "bob@b.test",
        &["alice@a.test"],
        &message("bob@b.test", "alice@a.test", "tls-ba", "over TLS too"),
    );
    b.wait_for("mail at b", 30, || b.mailbox("bob@b.test").len() == 1);
    a.wait_for("mail at a", 30, || a.mailbox("alice@a.test").len() == 1);
    let got = String::from_utf8_lossy(&b.show("bob@b.test", 1)).to_string();
    assert!(
        // Both certificates are valid under the CA both trust: SASL EXTERNAL (XEP-0178)
        // authenticates the stream, and the trace header says so.
        got.starts_with("Authentication-Results: b.test; x-xmpp=pass (certificate)"),
        "{got}"
    );
    // Both sides verified the other's certificate against the test CA.
    assert!(
        a.log()
            .contains("outgoing stream encrypted remote=\"b.test\" cert_valid=true"),
        "{}",
        a.log_tail(30)
    );
    assert!(
        b.log()
            .contains("outgoing stream encrypted remote=\"a.test\" cert_valid=true"),
        "{}",
        b.log_tail(30)
    );
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());
}

#[test]
fn required_tls_refuses_plaintext_peers() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, pairs) = make_certs(certs.path(), &["b.test"]);
    let (mut a, mut b) = pair("127.0.0.18", "127.0.0.19", "", "");
    set_tls(
        &mut b,
        "required",
        Some((&pairs[0].0, &pairs[0].1)),
        Some(&ca),
    );
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");

    // b offers STARTTLS as required; a plaintext dialback attempt is refused.
    let mut r = Raw::connect(b.addr);
    r.open_stream("a.test", "b.test");
    assert!(
        r.got
            .contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"),
        "{}",
        r.got
    );
    r.send("<db:result from='a.test' to='b.test'>abcd</db:result>");
    assert!(
        r.read_until(10, |s| s.contains(
            "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        )),
        "{}",
        r.got
    );
    assert!(r.closed_within(5));

    // a.test has tls = "off": it cannot reach b, keeps the mail queued and says why.
    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "plain", "x"),
    );
    a.wait_for("a deferral naming TLS", 30, || {
        a.queue().iter().any(|l| l.contains("requires TLS"))
    });
    assert!(b.mailbox("bob@b.test").is_empty());
}

/// Opportunistic TLS with certificates neither side can verify (each from its own CA):
/// the streams are encrypted, EXTERNAL is neither offered nor used, and dialback
/// authenticates the domains (RFC 7590 §3.4, XEP-0220 over TLS).
#[test]
fn unverifiable_certificates_fall_back_to_dialback_over_tls() {
    let ca_a = tempfile::tempdir().unwrap();
    let ca_b = tempfile::tempdir().unwrap();
    let (_, pa) = make_certs(ca_a.path(), &["a.test"]);
    let (_, pb) = make_certs(ca_b.path(), &["b.test"]);
    let (mut a, mut b) = pair("127.0.0.68", "127.0.0.69", "", "");
    set_tls(&mut a, "optional", Some((&pa[0].0, &pa[0].1)), None);
    set_tls(&mut b, "optional", Some((&pb[0].0, &pb[0].1)), None);
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "opportunistic", "x"),
    );
    b.wait_for("the mail", 30, || b.mailbox("bob@b.test").len() == 1);
    let got = String::from_utf8_lossy(&b.show("bob@b.test", 1)).to_string();
    assert!(
        got.starts_with("Authentication-Results: b.test; x-xmpp=pass (dialback; TLS)"),
        "{got}"
    );
    assert!(
        a.log()
            .contains("outgoing stream encrypted remote=\"b.test\" cert_valid=false"),
        "{}",
        a.log_tail(30)
    );
    assert!(!a.log().contains("SASL EXTERNAL") && !b.log().contains("SASL EXTERNAL"));
}
