//! Config reload on SIGHUP (src/server.rs, src/live.rs): peer deny lists, SMTP limits and
//! trusted networks, static routes and the registry policy change in a running server;
//! connections and accepted mail survive; a config that does not load, or that needs a
//! restart to hold, changes nothing; restart-only keys are named.
//!
//! Addresses: 127.0.2.1 to 127.0.2.40.

mod common;

use common::reload::*;
use common::smtp::SmtpRaw;
use common::*;

fn smtp_server(domain: &str, ip: &str, extra: &str) -> (Xmta, std::net::SocketAddr) {
    let smtp: std::net::SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
    let x = Xmta::new(Spec {
        domain,
        ip,
        routes: vec![],
        extra: &format!("[smtp]\nlisten = [\"{smtp}\"]\nverify = false\n{extra}"),
        s2s_extra: "",
    });
    (x, smtp)
}

/// Denying a peer by SIGHUP: its next stanza ends its stream, a new stream from it is
/// refused at dialback, the mail it was sending stays queued there (deferred, not lost),
/// mail accepted before is still in the mailbox; allowing it again delivers the mail.
#[test]
fn deny_a_peer_domain_by_sighup() {
    let (mut a, mut b) = pair("127.0.2.1", "127.0.2.2", "", "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let m1 = message("bob@b.test", "alice@a.test", "before-deny", "one");
    b.send("bob@b.test", &["alice@a.test"], &m1);
    a.wait_for("the first mail", 30, || {
        a.mailbox("alice@a.test").len() == 1
    });
    b.wait_for("b's queue to empty", 30, || b.queue().is_empty());

    reload(
        &a,
        "idle_timeout_secs = 60\n",
        "idle_timeout_secs = 60\ndeny = [\"b.test\"]\n",
    );
    let refused = "b.test is not allowed to connect here ([s2s] allow/deny)";
    let m2 = message("bob@b.test", "alice@a.test", "after-deny", "two");
    b.send("bob@b.test", &["alice@a.test"], &m2);
    // The open stream is ended at its next stanza and every new one is refused at
    // dialback: b retries (every 1-2 s here), so the refusal repeats (once per stream,
    // each ends with it) while the mail waits in b's queue.
    a.wait_for("the refusals of b.test", 60, || {
        a.log().matches(refused).count() >= 3
    });
    assert_eq!(b.queue().len(), 1, "the mail is still queued at b.test");
    assert!(
        b.log().contains("delivery deferred") || b.log().contains("deferred"),
        "{}",
        b.log_tail(20)
    );
    let inbox = a.mailbox("alice@a.test");
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0].subject, "before-deny");
    assert!(a.is_running() && b.is_running());

    // Allowing b.test again: the queued mail arrives, once.
    reload(
        &a,
        "idle_timeout_secs = 60\ndeny = [\"b.test\"]\n",
        "idle_timeout_secs = 60\n",
    );
    a.wait_for("the deferred mail", 60, || {
        a.mailbox("alice@a.test").len() == 2
    });
    b.wait_for("b's queue to empty", 30, || b.queue().is_empty());
    let subjects: Vec<String> = a
        .mailbox("alice@a.test")
        .into_iter()
        .map(|l| l.subject)
        .collect();
    assert_eq!(subjects, vec!["before-deny", "after-deny"]);
    // No bounce went back to bob.
    assert!(b.mailbox("bob@b.test").is_empty());
}

/// SMTP limits, connection limit and trusted networks by SIGHUP: a session opened
/// afterwards gets the new replies, a session open across the reload keeps working and
/// gets the new values at its next transaction.
#[test]
fn smtp_limits_and_trusted_networks_by_sighup() {
    let (mut x, smtp) = smtp_server("b.test", "127.0.2.5", "");
    edit_config(
        &x,
        "[delivery]\n",
        "[delivery]\nmax_recipients = 5\nmax_message_bytes = 100000\n",
    );
    x.start();
    for u in ["bob", "carol", "dave"] {
        x.add_user(&format!("{u}@b.test"));
    }

    let mut old = SmtpRaw::connect(smtp);
    assert_eq!(old.cmd("EHLO client.test").0, 250);
    let mut s = SmtpRaw::connect(smtp);
    let (code, ehlo) = s.cmd("EHLO client.test");
    assert_eq!(code, 250);
    assert!(ehlo.contains("SIZE 100000"), "{ehlo}");
    assert_eq!(s.cmd("MAIL FROM:<x@c.test> SIZE=5000").0, 250);
    assert_eq!(s.cmd("RCPT TO:<bob@b.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<carol@b.test>").0, 250);
    // Relaying from loopback: trusted by default.
    assert_eq!(s.cmd("RSET").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<someone@c.test>").0, 250);
    assert_eq!(s.cmd("QUIT").0, 221);
    assert!(s.closed_within(5), "{}", s.log);

    reload(
        &x,
        "max_recipients = 5\nmax_message_bytes = 100000\n",
        "max_recipients = 1\nmax_message_bytes = 2000\n",
    );
    reload(
        &x,
        "verify = false\n",
        "verify = false\ntrusted_networks = [\"10.0.0.0/8\"]\nmax_connections = 2\n",
    );
    let log = x.log();
    assert!(!log.contains("takes effect only after a restart"), "{log}");

    let mut s = SmtpRaw::connect(smtp);
    // `old` and `s` are the two connections `max_connections = 2` allows now.
    let mut third = SmtpRaw::connect_quiet(smtp);
    let (code, text) = third.reply(10).expect("a reply");
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.3.2"), "{text}");
    let (code, ehlo) = s.cmd("EHLO client.test");
    assert_eq!(code, 250);
    assert!(ehlo.contains("SIZE 2000"), "{ehlo}");
    let (code, text) = s.cmd("MAIL FROM:<x@c.test> SIZE=5000");
    assert_eq!(code, 552, "{text}");
    assert_eq!(s.cmd("MAIL FROM:<x@c.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<bob@b.test>").0, 250);
    let (code, text) = s.cmd("RCPT TO:<carol@b.test>");
    assert_eq!(code, 452, "{text}");
    assert_eq!(s.cmd("RSET").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<>").0, 250);
    let (code, text) = s.cmd("RCPT TO:<someone@c.test>");
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.7.1") && text.contains("relay"), "{text}");
    assert_eq!(s.cmd("QUIT").0, 221);

    // The session open across the reload is still served; its new transaction runs under
    // the new limits, and a message within them is delivered.
    assert_eq!(old.cmd("MAIL FROM:<x@c.test> SIZE=5000").0, 552);
    assert_eq!(old.cmd("MAIL FROM:<x@c.test>").0, 250);
    assert_eq!(old.cmd("RCPT TO:<dave@b.test>").0, 250);
    assert_eq!(old.cmd("RCPT TO:<bob@b.test>").0, 452);
    assert_eq!(old.cmd("DATA").0, 354);
    old.send(b"Subject: across\r\n\r\nhello\r\n.\r\n");
    assert_eq!(old.reply(10).map(|r| r.0), Some(250), "{}", old.log);
    assert_eq!(old.cmd("QUIT").0, 221);
    let inbox = x.mailbox("dave@b.test");
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0].subject, "across");
}

/// A static route changed by SIGHUP: the next mail goes to the new next hop, although a
/// stream to the old one is still open.
#[test]
fn static_route_changed_by_sighup() {
    let ip_a = "127.0.2.10";
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip: ip_a,
        routes: vec![],
        extra: "",
        s2s_extra: "",
    });
    // Two servers for b.test (say the old and the new host of the domain).
    let mut old = Xmta::new(Spec {
        domain: "b.test",
        ip: "127.0.2.11",
        routes: vec![("a.test".into(), a.addr.to_string())],
        extra: "",
        s2s_extra: "",
    });
    let mut new = Xmta::new(Spec {
        domain: "b.test",
        ip: "127.0.2.12",
        routes: vec![("a.test".into(), a.addr.to_string())],
        extra: "",
        s2s_extra: "",
    });
    set_route(&mut a, "b.test", &old.addr.to_string());
    a.start();
    old.start();
    new.start();
    a.add_user("alice@a.test");
    old.add_user("bob@b.test");
    new.add_user("bob@b.test");

    let m = message("alice@a.test", "bob@b.test", "via-old", "1");
    a.send("alice@a.test", &["bob@b.test"], &m);
    old.wait_for("mail at the old host", 30, || {
        old.mailbox("bob@b.test").len() == 1
    });
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());

    reload(
        &a,
        &format!("\"b.test\" = \"{}\"", old.addr),
        &format!("\"b.test\" = \"{}\"", new.addr),
    );
    let m = message("alice@a.test", "bob@b.test", "via-new", "2");
    a.send("alice@a.test", &["bob@b.test"], &m);
    new.wait_for("mail at the new host", 30, || {
        new.mailbox("bob@b.test").len() == 1
    });
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());
    assert_eq!(new.mailbox("bob@b.test")[0].subject, "via-new");
    let at_old = old.mailbox("bob@b.test");
    assert_eq!(at_old.len(), 1, "{at_old:?}");
    assert_eq!(at_old[0].subject, "via-old");
}

/// A config that does not load, or that would need a restart to hold, leaves the running
/// one in force; a key that needs a restart is named and keeps its running value while
/// the rest of the file is applied.
#[test]
fn bad_reloads_keep_the_running_config() {
    let (mut x, smtp) = smtp_server("b.test", "127.0.2.20", "");
    x.start();
    x.add_user("bob@b.test");
    let good = std::fs::read_to_string(&x.config).unwrap();

    // Not TOML at all.
    std::fs::write(&x.config, format!("{good}\n[smtp\n")).unwrap();
    hup_and_wait(&x, NOT_LOADED);
    // A value that does not validate.
    std::fs::write(
        &x.config,
        good.replace("verify = false\n", "verify = false\nmax_errors = 0\n"),
    )
    .unwrap();
    hup_and_wait(&x, NOT_LOADED);
    assert!(x.log().contains("smtp.max_errors"), "{}", x.log_tail(5));
    // Valid on its own, but `registry.policy = "require"` needs `registry.zone`, which a
    // reload cannot set: the whole file is refused, nothing of it applied.
    std::fs::write(
        &x.config,
        good.replace(
            "verify = false\n",
            "verify = false\nmax_errors = 1\n\n[registry]\nzone = \"reg.test\"\npolicy = \"require\"\n",
        ),
    )
    .unwrap();
    hup_and_wait(&x, NOT_HOLDING);
    assert!(x.log().contains("registry.policy"), "{}", x.log_tail(5));
    assert!(x.is_running());
    // Still the old config: max_errors is 20, so two bad commands do not end the session.
    let mut s = SmtpRaw::connect(smtp);
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    assert_eq!(s.cmd("RCPT TO:<bob@b.test>").0, 503);
    assert_eq!(s.cmd("RCPT TO:<bob@b.test>").0, 503);
    assert_eq!(s.cmd("NOOP").0, 250);
    assert_eq!(s.cmd("QUIT").0, 221);
    good_smtp_delivery(&x, smtp, "still-works");

    // A restart-only key changed together with a live one: the live one is applied, the
    // other named and kept.
    let other_port = free_port("127.0.2.21");
    std::fs::write(
        &x.config,
        good.replace(
            &format!("listen = [\"{smtp}\"]"),
            &format!("listen = [\"127.0.2.21:{other_port}\"]"),
        )
        .replace("verify = false\n", "verify = false\nmax_errors = 1\n"),
    )
    .unwrap();
    hup_and_wait(&x, RELOADED);
    let log = x.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("takes effect only after a restart"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("smtp.listen"), "{warned:?}");
    let mut s = SmtpRaw::connect(smtp);
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    let (code, text) = s.cmd("RCPT TO:<bob@b.test>");
    assert_eq!(code, 503, "{text}");
    assert!(
        s.closed_within(5),
        "max_errors = 1 ends the session: {}",
        s.log
    );
    assert!(s.log.contains("421"), "{}", s.log);
    good_smtp_delivery(&x, smtp, "after-reload");
    assert!(
        std::net::TcpStream::connect(("127.0.2.21", other_port)).is_err(),
        "the new listener is not opened before a restart"
    );
}

fn good_smtp_delivery(x: &Xmta, smtp: std::net::SocketAddr, subject: &str) {
    let before = x.mailbox("bob@b.test").len();
    let mut s = SmtpRaw::connect(smtp);
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<x@c.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<bob@b.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send(format!("Subject: {subject}\r\n\r\nhi\r\n.\r\n").as_bytes());
    assert_eq!(s.reply(10).map(|r| r.0), Some(250), "{}", s.log);
    assert_eq!(s.cmd("QUIT").0, 221);
    assert_eq!(x.mailbox("bob@b.test").len(), before + 1);
}

/// Python: STARTTLS to the SMTP listener; prints whether the certificate presented is the
/// one now in the file argv[3].
const PRESENTED: &str = r#"
import hashlib, smtplib, ssl, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=10)
s.ehlo('client.test')
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
got = hashlib.sha256(s.sock.getpeercert(True)).hexdigest()
pem = open(sys.argv[3]).read()
want = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
print('same' if got == want else 'other', got)
s.quit()
"#;

/// A renewed certificate (same paths, new files) is used for handshakes after SIGHUP; a
/// broken one is refused and the one in use stays.
#[test]
fn renewed_certificate_by_sighup() {
    let ip = "127.0.2.25";
    let tmp = tempfile::tempdir().unwrap();
    let (old_dir, new_dir) = (tmp.path().join("old"), tmp.path().join("new"));
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let (_, old) = make_certs(&old_dir, &["b.test"]);
    let (_, new) = make_certs(&new_dir, &["b.test"]);
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::copy(&old[0].0, &cert).unwrap();
    std::fs::copy(&old[0].1, &key).unwrap();
    let (mut x, smtp) = smtp_server(
        "b.test",
        ip,
        &format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    x.start();
    let port = smtp.port().to_string();
    let presented = |file: &std::path::Path| {
        common::smtp::python(PRESENTED, &[ip, &port, file.to_str().unwrap()])
    };
    assert!(presented(&old[0].0).starts_with("same"));

    std::fs::copy(&new[0].0, &cert).unwrap();
    std::fs::copy(&new[0].1, &key).unwrap();
    // Before the reload the old certificate is still presented.
    assert!(presented(&old[0].0).starts_with("same"));
    hup_and_wait(&x, "SIGHUP: certificate reloaded");
    assert!(presented(&new[0].0).starts_with("same"));

    // A key that does not match the certificate: refused, the renewed one stays.
    std::fs::copy(&old[0].1, &key).unwrap();
    hup_and_wait(&x, "SIGHUP: certificate not reloaded");
    assert!(presented(&new[0].0).starts_with("same"));
    assert!(x.is_running());
}

/// `[registry] policy` and `overrides` by SIGHUP: an unregistered peer is tagged under
/// `tag`, refused (its mail stays queued) once the policy is `require`, and delivers again
/// once an override exempts it.
#[test]
fn registry_policy_by_sighup() {
    use common::registry::{Dnsmasq, Rec, registry_section};
    let dns = Dnsmasq::start(
        "127.0.2.30",
        &["reg.test"],
        &[Rec::A("test.reg.test", "127.0.0.2")],
    );
    let reg = registry_section("reg.test", "tag", dns.addr, "");
    let (mut a, mut b) = pair("127.0.2.31", "127.0.2.32", "", &reg);
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let send = |subject: &str| {
        a.send(
            "alice@a.test",
            &["bob@b.test"],
            &message("alice@a.test", "bob@b.test", subject, "x"),
        )
    };
    send("tagged");
    b.wait_for("the tagged mail", 30, || b.mailbox("bob@b.test").len() == 1);
    let got = String::from_utf8_lossy(&b.show("bob@b.test", 1)).to_string();
    assert!(got.contains("x-xmta-registry="), "{got}");

    reload(&b, "policy = \"tag\"", "policy = \"require\"");
    send("refused-then-exempted");
    a.wait_for("a's deferral naming the registry", 60, || {
        a.queue()
            .iter()
            .any(|l| l.contains("pending") && l.contains("a.test is not registered in reg.test"))
    });
    assert_eq!(b.mailbox("bob@b.test").len(), 1);

    // The [registry] section is the last one: the overrides table goes after it.
    let cfg = std::fs::read_to_string(&b.config).unwrap();
    std::fs::write(
        &b.config,
        format!("{cfg}\n[registry.overrides]\n\"a.test\" = \"off\"\n"),
    )
    .unwrap();
    hup_and_wait(&b, RELOADED);
    b.wait_for("the exempted mail", 60, || {
        b.mailbox("bob@b.test").len() == 2
    });
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());
    let got = String::from_utf8_lossy(&b.show("bob@b.test", 2)).to_string();
    assert!(got.contains("refused-then-exempted"), "{got}");
    assert!(!got.contains("x-xmta-registry="), "{got}");
}

/// Reads one CRLF line from a raw IMAP connection (None when closed or silent for 10 s).
fn imap_line(c: &mut std::net::TcpStream) -> Option<String> {
    use std::io::Read;
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match c.read(&mut b) {
            Ok(1) => line.push(b[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}

/// `[imap] max_connections` lowered by SIGHUP refuses a new connection with BYE and keeps
/// the open one; raised again, new connections are served.
#[test]
fn imap_limits_by_sighup() {
    use std::io::Write;
    let (x, addr) = common::imap::imap_server(
        "i.test",
        "127.0.2.35",
        "max_connections = 5\nmax_command_line = 8192",
    );
    x.add_user("ann@i.test");
    let mut open = std::net::TcpStream::connect(addr).expect("connect");
    assert!(imap_line(&mut open).expect("greeting").starts_with("* OK"));
    reload(
        &x,
        "max_connections = 5\nmax_command_line = 8192",
        "max_connections = 1\nmax_command_line = 8192",
    );
    // One connection is open: a new one is refused at once; the open one still works.
    let mut extra = std::net::TcpStream::connect(addr).expect("connect");
    let bye = imap_line(&mut extra).expect("an answer");
    assert!(bye.starts_with("* BYE [UNAVAILABLE]"), "{bye}");
    open.write_all(b"a1 NOOP\r\n").expect("write");
    let ok = imap_line(&mut open).expect("NOOP answer");
    assert!(ok.starts_with("a1 OK"), "{ok}");
    drop(open);
    // Raised again: a new connection is served.
    reload(&x, "max_connections = 1\n", "max_connections = 5\n");
    let mut again = std::net::TcpStream::connect(addr).expect("connect");
    let g = imap_line(&mut again).expect("greeting");
    assert!(g.starts_with("* OK"), "{g}");
}
