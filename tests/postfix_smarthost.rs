//! Legacy domains through `[smtp] smarthost` (issue 3): xmta a.test sends to a domain with
//! no XMPP server (no route, NXDOMAIN for its SRV record at a private dnsmasq) by SMTP to a
//! private Postfix 3.7, which relays to smtp-sink. Postfix refuses one recipient for good
//! (550 5.1.1 via check_recipient_access) and one for now (450 4.2.0): the good one
//! arrives at the sink, the refused one comes back as an RFC 3464 DSN in the sender's
//! INBOX, the deferred one stays queued and is retried.

mod common;

use common::postfix::{Dnsmasq, Postfix, SmtpSink};
use common::*;

#[test]
fn smarthost_relays_legacy_domains_with_per_recipient_results() {
    let dns = Dnsmasq::start("127.0.0.141", &[]);
    let sink = SmtpSink::start("127.0.0.140");
    let access = "bad@legacy.test 550 5.1.1 no such user here\n\
                  later@legacy.test 450 4.2.0 mailbox busy, try later\n";
    let transport = format!(
        "legacy.test smtp:[{}]:{}\n",
        sink.addr.ip(),
        sink.addr.port()
    );
    let pf = Postfix::start(
        "127.0.0.139",
        "transport_maps = texthash:ETC/transport\n\
         smtpd_recipient_restrictions = check_recipient_access texthash:ETC/access, permit_mynetworks, reject\n",
        &[("transport", &transport), ("access", access)],
    );
    let extra = format!(
        "[dns]\nnameservers = [\"{}\"]\n\n[smtp]\nsmarthost = \"{}\"\nsmarthost_tls = \"optional\"\n",
        dns.addr, pf.smtp
    );
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip: "127.0.0.138",
        routes: vec![],
        extra: &extra,
        s2s_extra: "",
    });
    a.start();
    a.add_user("alice@a.test");
    let m = message(
        "alice@a.test",
        "good@legacy.test",
        "to-a-legacy-domain",
        "By SMTP through the smarthost.\r\n.a line with a leading dot",
    );
    a.send(
        "alice@a.test",
        &["good@legacy.test", "bad@legacy.test", "later@legacy.test"],
        &m,
    );

    // The good recipient reaches the sink, in one transaction.
    a.wait_for("the message at smtp-sink", 30, || {
        sink.dumps()
            .iter()
            .any(|d| d.contains("to-a-legacy-domain"))
    });
    let dumps = sink.dumps();
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    let d = &dumps[0];
    assert!(d.contains("good@legacy.test"), "{d}");
    assert!(!d.contains("bad@legacy.test>"), "{d}");
    // smtp-sink dumps the message as received (dot-unstuffed, LF line ends), then an
    // empty line: the bytes xmta queued arrive unchanged after the Received headers.
    let lf = String::from_utf8(m.clone()).unwrap().replace("\r\n", "\n");
    assert!(d.ends_with(&format!("\n{lf}\n")), "{d}");

    // The refused one: a DSN in alice's INBOX naming it with Postfix's codes.
    a.wait_for("the DSN in alice's INBOX", 30, || {
        !a.mailbox("alice@a.test").is_empty()
    });
    let list = a.mailbox("alice@a.test");
    assert_eq!(list.len(), 1, "{list:?}");
    let dsn = String::from_utf8_lossy(&a.show("alice@a.test", list[0].uid)).into_owned();
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(dsn.contains("report-type=\"delivery-status\""), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; bad@legacy.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(dsn.contains("Diagnostic-Code: smtp; 550 5.1.1"), "{dsn}");
    // The MTA that refused it is the smarthost, not legacy.test.
    assert!(
        dsn.contains(&format!("Remote-MTA: dns; {}", pf.smtp.ip())),
        "{dsn}"
    );
    assert!(
        !dsn.contains("Final-Recipient: rfc822; good@legacy.test"),
        "{dsn}"
    );
    assert!(
        !dsn.contains("Final-Recipient: rfc822; later@legacy.test"),
        "{dsn}"
    );

    // The deferred one is still queued, with Postfix's 450 as its last error, and retried.
    a.wait_for("a retry of later@legacy.test", 30, || {
        a.queue().iter().any(|l| {
            l.contains("later@legacy.test")
                && l.contains("450 4.2.0")
                && !l.contains("attempts=1\t")
        })
    });
    let q = a.queue();
    let pending: Vec<&String> = q.iter().filter(|l| l.contains("\tpending (")).collect();
    assert_eq!(
        pending.len(),
        1,
        "only later@legacy.test stays pending: {q:?}"
    );
    assert!(pending[0].contains("later@legacy.test"), "{q:?}");
    assert!(
        q.iter()
            .any(|l| l.contains("good@legacy.test") && l.ends_with("\tdelivered")),
        "{q:?}"
    );
    assert!(
        q.iter()
            .any(|l| l.contains("bad@legacy.test") && l.contains("\tfailed 5.1.1 smtp; 550")),
        "{q:?}"
    );
    // Each attempt is one SMTP transaction: the sink still has the one message.
    assert_eq!(sink.dumps().len(), 1);
    let log = pf.maillog();
    assert!(log.contains("bad@legacy.test"), "{log}");
}

/// STARTTLS toward the smarthost: a Postfix that insists on TLS (`smtpd_tls_security_level
/// = encrypt`, a certificate from a test CA). With `smarthost_tls = "required"` and
/// `smarthost_allow_invalid_certs` the mail goes through over TLS; without accepting the
/// untrusted certificate it stays queued with the TLS error.
#[test]
fn smarthost_starttls() {
    let dns = Dnsmasq::start("127.0.0.141", &[]);
    let sink = SmtpSink::start("127.0.0.140");
    let certs = tempfile::tempdir().unwrap();
    let (_ca, pairs) = make_certs(certs.path(), &["postfix.test"]);
    let (cert, key) = &pairs[0];
    let transport = format!(
        "legacy.test smtp:[{}]:{}\n",
        sink.addr.ip(),
        sink.addr.port()
    );
    let pf = Postfix::start(
        "127.0.0.139",
        &format!(
            "transport_maps = texthash:ETC/transport\n\
             smtpd_tls_security_level = encrypt\n\
             smtpd_tls_cert_file = {}\n\
             smtpd_tls_key_file = {}\n\
             smtpd_tls_loglevel = 1\n",
            cert.display(),
            key.display()
        ),
        &[("transport", &transport)],
    );
    let start = |ip: &str, allow: bool| {
        let extra = format!(
            "[dns]\nnameservers = [\"{}\"]\n\n[smtp]\nsmarthost = \"{}\"\nsmarthost_tls = \"required\"\nsmarthost_allow_invalid_certs = {allow}\n",
            dns.addr, pf.smtp
        );
        let mut x = Xmta::new(Spec {
            domain: "a.test",
            ip,
            routes: vec![],
            extra: &extra,
            s2s_extra: "",
        });
        x.start();
        x.add_user("alice@a.test");
        x
    };
    let trusting = start("127.0.0.138", true);
    let m = message(
        "alice@a.test",
        "tls@legacy.test",
        "over-starttls",
        "Encrypted hop.",
    );
    trusting.send("alice@a.test", &["tls@legacy.test"], &m);
    trusting.wait_for("the message at smtp-sink", 30, || {
        sink.dumps().iter().any(|d| d.contains("over-starttls"))
    });
    assert!(
        pf.maillog().contains("TLS connection established from"),
        "{}",
        pf.maillog()
    );
    trusting.wait_for("the queue to empty", 30, || trusting.queue().is_empty());

    // The certificate is not from a trusted root: without allowing it, nothing is sent.
    let strict = start("127.0.0.148", false);
    let m2 = message(
        "alice@a.test",
        "tls@legacy.test",
        "not-trusted",
        "Stays queued.",
    );
    strict.send("alice@a.test", &["tls@legacy.test"], &m2);
    strict.wait_for("a TLS deferral", 30, || {
        strict
            .queue()
            .iter()
            .any(|l| l.contains("pending (smarthost") && l.contains("STARTTLS"))
    });
    assert!(strict.mailbox("alice@a.test").is_empty(), "no bounce");
    assert!(!sink.dumps().iter().any(|d| d.contains("not-trusted")));
}

/// A smarthost that accepts the connection and never greets: the attempt times out after
/// `[smtp] smarthost_timeout_secs`, the mail stays queued (deferred, not bounced), and a
/// real smarthost configured after a restart gets it, once.
#[test]
fn silent_smarthost_defers_until_a_working_one() {
    let dns = Dnsmasq::start("127.0.2.121", &[]);
    let silent = std::net::TcpListener::bind("127.0.2.122:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    // Accept and hold the connections, saying nothing.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for c in silent.incoming().flatten() {
            h.lock().unwrap().push(c);
        }
    });
    let extra = format!(
        "[dns]\nnameservers = [\"{}\"]\n\n[smtp]\nsmarthost = \"{silent_addr}\"\nsmarthost_tls = \"off\"\nsmarthost_timeout_secs = 2\n",
        dns.addr
    );
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip: "127.0.2.120",
        routes: vec![],
        extra: &extra,
        s2s_extra: "",
    });
    a.start();
    a.add_user("alice@a.test");
    let m = message("alice@a.test", "dave@legacy.test", "silent-smarthost", "hi");
    a.send("alice@a.test", &["dave@legacy.test"], &m);
    a.wait_for("a timed-out attempt", 30, || {
        a.queue().iter().any(|l| {
            l.contains("dave@legacy.test")
                && l.contains("pending (")
                && !l.contains("not tried yet")
        })
    });
    assert!(
        !held.lock().unwrap().is_empty(),
        "xmta connected to the silent smarthost"
    );
    assert!(
        a.mailbox("alice@a.test").is_empty(),
        "no bounce for a timeout"
    );
    let q = a.queue().join("\n");
    assert!(
        q.to_lowercase().contains("time"),
        "the queue names the timeout: {q}"
    );
    // A working smarthost: after the restart the queued mail goes there.
    a.stop();
    let sink = SmtpSink::start("127.0.2.123");
    let cfg = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(
        &a.config,
        cfg.replace(&silent_addr.to_string(), &sink.addr.to_string()),
    )
    .unwrap();
    a.start();
    a.wait_for("the mail at smtp-sink", 30, || {
        sink.dumps().iter().any(|d| d.contains("silent-smarthost"))
    });
    a.wait_for("the queue to empty", 10, || a.queue().is_empty());
    assert_eq!(sink.dumps().len(), 1, "delivered once");
}
