//! The SMTP (MX role) and LMTP listeners, driven by a real client: Python's smtplib.

mod common;

use std::process::Command;

use common::*;

/// Runs a Python script (argv: the given args) and returns its stdout; fails on a non-zero exit.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// LMTP: sender, recipients (comma separated), message file; prints one line per
/// recipient reply after DATA (smtplib reads the first one itself).
const LMTP_SEND: &str = r#"
import smtplib, sys
host, port, sender, rcpts, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(','), sys.argv[5]
msg = open(path, 'rb').read()
s = smtplib.LMTP(host, port)
code, _ = s.ehlo()
assert code == 250, code
s.mail(sender)
for r in rcpts:
    code, text = s.rcpt(r)
    assert code == 250, (r, code, text)
code, text = s.data(msg)
print(code, text.decode())
for _ in rcpts[1:]:
    code, text = s.getreply()
    print(code, text.decode())
s.quit()
"#;

fn write_msg(x: &Xmta, m: &[u8]) -> String {
    let p = x.dir.path().join("msg.eml");
    std::fs::write(&p, m).expect("write message");
    p.display().to_string()
}

/// The stored message, with its Received header (our trace) split off.
fn after_received(stored: &[u8], sent: &[u8]) -> String {
    assert!(
        stored.ends_with(sent),
        "stored message must end with the exact bytes sent:\n{}",
        String::from_utf8_lossy(stored)
    );
    let trace = String::from_utf8_lossy(&stored[..stored.len() - sent.len()]).into_owned();
    assert!(trace.starts_with("Received: from "), "{trace}");
    trace
}

#[test]
fn lmtp_two_local_users() {
    let port = free_port("127.0.0.80");
    let extra = format!("[smtp]\nlmtp = \"127.0.0.80:{port}\"\n");
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip: "127.0.0.80",
        routes: vec![],
        extra: &extra,
        s2s_extra: "",
    });
    a.start();
    a.add_user("alice@a.test");
    a.add_user("carol@a.test");
    let m = message(
        "postfix@a.test",
        "alice@a.test",
        "lmtp-two",
        "Line one.\r\n.leading dot\r\nend.",
    );
    let path = write_msg(&a, &m);
    let out = python(
        LMTP_SEND,
        &[
            "127.0.0.80",
            &port.to_string(),
            "someone@elsewhere.example",
            "alice@a.test,carol@a.test",
            &path,
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| l.starts_with("250 2.0.0")), "{out}");
    let alice = a.show("alice@a.test", a.mailbox("alice@a.test")[0].uid);
    let carol = a.show("carol@a.test", a.mailbox("carol@a.test")[0].uid);
    let trace = after_received(&alice, &m);
    assert!(trace.contains("with LMTP id "), "{trace}");
    after_received(&carol, &m);
    assert_eq!(alice, carol);
}

#[test]
fn lmtp_remote_recipient_goes_over_xmpp() {
    let port = free_port("127.0.0.81");
    // SRS off: a foreign sender is refused (tests/postfix_gateway.rs has SRS on).
    let extra = format!("[smtp]\nlmtp = \"127.0.0.81:{port}\"\n\n[gateway]\nsrs = false\n");
    let (mut a, mut b) = pair("127.0.0.81", "127.0.0.82", &extra, "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let m = message(
        "alice@a.test",
        "bob@b.test",
        "lmtp-remote",
        "Via LMTP and XMPP.",
    );
    let path = write_msg(&a, &m);
    // Without SRS a foreign sender cannot be relayed over XMPP (the receiver checks the
    // sender's domain).
    let foreign = python(
        r#"
import smtplib, sys
s = smtplib.LMTP(sys.argv[1], int(sys.argv[2]))
s.ehlo()
s.mail('x@elsewhere.example')
code, text = s.rcpt('bob@b.test')
print(code, text.decode())
s.quit()
"#,
        &["127.0.0.81", &port.to_string()],
    );
    assert!(
        foreign.starts_with("550 5.7.1 foreign senders cannot be relayed"),
        "{foreign}"
    );
    let out = python(
        LMTP_SEND,
        &[
            "127.0.0.81",
            &port.to_string(),
            "alice@a.test",
            "bob@b.test",
            &path,
        ],
    );
    assert!(out.starts_with("250 2.0.0"), "{out}");
    b.wait_for("bob's mail", 30, || b.mailbox("bob@b.test").len() == 1);
    let got = b.show("bob@b.test", b.mailbox("bob@b.test")[0].uid);
    assert!(got.ends_with(&m), "{}", String::from_utf8_lossy(&got));
    assert!(
        String::from_utf8_lossy(&got).contains("with LMTP id "),
        "our Received header travels with the message"
    );
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());
}

/// SMTP MX checks, from 127.0.0.84 while only 127.0.0.85 may relay.
const SMTP_CHECKS: &str = r#"
import smtplib, sys
host, port, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def conn():
    return smtplib.SMTP(host, port, source_address=(src, 0))
# Commands out of order.
s = conn()
print('early-mail', s.docmd('MAIL FROM:<x@elsewhere.example>')[0])
s.ehlo('client.example')
print('early-rcpt', s.docmd('RCPT TO:<alice@a.test>')[0])
print('early-data', s.docmd('DATA')[0])
print('pipelining', s.has_extn('pipelining'), 'size', s.esmtp_features.get('size'))
print('long', s.docmd('NOOP ' + 'x' * 600)[0])
s.quit()
# A local user is accepted, an unknown one and a non-local one are refused.
s = conn()
s.ehlo('client.example')
print('mail', s.mail('x@elsewhere.example')[0])
code, text = s.rcpt('nobody@a.test'); print('unknown', code, text.decode())
code, text = s.rcpt('bob@b.test'); print('relay', code, text.decode())
print('local', s.rcpt('alice@a.test')[0])
code, text = s.data(open(sys.argv[4], 'rb').read()); print('data', code, text.decode())
s.quit()
# Too big: smtplib announces SIZE= at MAIL.
s = conn()
try:
    s.sendmail('x@elsewhere.example', ['alice@a.test'], open(sys.argv[5], 'rb').read())
    print('big accepted')
except smtplib.SMTPSenderRefused as e:
    print('big', e.smtp_code, e.smtp_error.decode())
s.quit()
"#;

#[test]
fn smtp_mx() {
    let port = free_port("127.0.0.84");
    let extra = format!(
        "[smtp]\nlisten = [\"127.0.0.84:{port}\"]\ntrusted_networks = [\"127.0.0.85/32\"]\nverify = false\n"
    );
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip: "127.0.0.84",
        routes: vec![],
        extra: &extra,
        s2s_extra: "",
    });
    let cfg = std::fs::read_to_string(&a.config).expect("config");
    std::fs::write(
        &a.config,
        cfg.replacen("[delivery]\n", "[delivery]\nmax_message_bytes = 4096\n", 1),
    )
    .expect("config");
    a.start();
    a.add_user("alice@a.test");
    let m = message("x@elsewhere.example", "alice@a.test", "mx-in", "Over SMTP.");
    let path = write_msg(&a, &m);
    let big = a.dir.path().join("big.eml");
    let body = "0123456789".repeat(50).repeat(10);
    std::fs::write(
        &big,
        message("x@elsewhere.example", "alice@a.test", "big", &body),
    )
    .expect("write big");
    let out = python(
        SMTP_CHECKS,
        &[
            "127.0.0.84",
            &port.to_string(),
            "127.0.0.84",
            &path,
            &big.display().to_string(),
        ],
    );
    let has = |s: &str| out.lines().any(|l| l.starts_with(s));
    assert!(has("early-mail 503"), "{out}");
    assert!(has("early-rcpt 503"), "{out}");
    assert!(has("early-data 503"), "{out}");
    assert!(has("pipelining True size 4096"), "{out}");
    assert!(has("long 500"), "{out}");
    assert!(has("mail 250"), "{out}");
    assert!(has("unknown 550 5.1.1"), "{out}");
    assert!(has("relay 550 5.7.1 relaying denied"), "{out}");
    assert!(has("local 250"), "{out}");
    assert!(has("data 250 2.0.0"), "{out}");
    assert!(has("big 552 5.3.4"), "{out}");
    let boxed = a.mailbox("alice@a.test");
    assert_eq!(boxed.len(), 1, "only the one accepted message is stored");
    let got = a.show("alice@a.test", boxed[0].uid);
    let trace = after_received(&got, &m);
    assert!(
        trace.contains("from client.example ([127.0.0.84])"),
        "{trace}"
    );
    assert!(trace.contains("with ESMTP id "), "{trace}");
    assert!(trace.contains("for <alice@a.test>;"), "{trace}");
}
