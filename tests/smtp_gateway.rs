//! The SMTP gateway beyond plain MX: STARTTLS (and the command-injection attack on it),
//! submission with AUTH, SPF/DKIM/DMARC verification against a private dnsmasq, and
//! downgrade protection. Clients are Python's smtplib/ssl and raw sockets.

mod common;

use common::smtp::*;
use common::*;

/// Server `a.test` on `ip` with an MX listener and a submission listener, TLS with a test
/// CA. Only 127.0.0.99 is trusted, so every test client (127.0.0.1) is an outsider.
/// Returns (server, MX port, submission port, CA path).
fn gateway(ip: &str, extra: &str) -> (Xmta, u16, u16, String) {
    let mx = free_port(ip);
    let sub = free_port(ip);
    let cfg = format!(
        "[smtp]\nlisten = [\"{ip}:{mx}\"]\nsubmission = [\"{ip}:{sub}\"]\ntrusted_networks = [\"127.0.0.99/32\"]\nauth_failure_delay_ms = 50\n#CERTS\n{extra}\n"
    );
    let x = Xmta::new(Spec {
        domain: "a.test",
        ip,
        routes: vec![],
        extra: &cfg,
        s2s_extra: "",
    });
    let (ca, pairs) = make_certs(x.dir.path(), &["a.test"]);
    let (cert, key) = &pairs[0];
    let text = std::fs::read_to_string(&x.config).expect("config");
    let text = text.replacen(
        "#CERTS\n",
        &format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        1,
    );
    std::fs::write(&x.config, text).expect("config");
    (x, mx, sub, ca.display().to_string())
}

fn write_msg(x: &Xmta, name: &str, m: &[u8]) -> String {
    let p = x.dir.path().join(name);
    std::fs::write(&p, m).expect("write message");
    p.display().to_string()
}

const STARTTLS_CHECKS: &str = r#"
import smtplib, socket, ssl, sys
host, port, ca, msgpath = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
# A well-behaved client.
s = smtplib.SMTP(host, port)
s._host = 'a.test'  # the name TLS checks the certificate for
s.ehlo('client.example')
print('offers-starttls', s.has_extn('starttls'), 'offers-auth', s.has_extn('auth'))
print('auth-on-mx', s.docmd('AUTH PLAIN AGFsaWNlQGEudGVzdABzZWNyZXQ=')[0])
s.starttls(context=ctx)
s.ehlo('client.example')
print('after-tls-starttls', s.has_extn('starttls'))
print('again', s.docmd('STARTTLS')[0])
print('send', s.sendmail('x@elsewhere.example', ['alice@a.test'], open(msgpath, 'rb').read()))
s.quit()

# The STARTTLS command injection (CVE-2011-0411): commands pipelined after STARTTLS in
# the clear must not be executed inside the TLS session.
def reply(f):
    lines = []
    while True:
        l = f.readline().decode()
        if not l:
            return lines
        lines.append(l.rstrip())
        if l[3:4] != '-':
            return lines
raw = socket.create_connection((host, port))
f = raw.makefile('rb', buffering=0)
print('greet', reply(f)[-1][:3])
raw.sendall(b'EHLO inj.example\r\n')
print('ehlo', reply(f)[-1][:3])
raw.sendall(b'STARTTLS\r\nEHLO inj.example\r\nMAIL FROM:<evil@elsewhere.example>\r\n')
print('starttls', reply(f)[-1][:3])
t = ctx.wrap_socket(raw, server_hostname='a.test')
g = t.makefile('rb', buffering=0)
t.sendall(b'RCPT TO:<alice@a.test>\r\n')
print('injected-rcpt', reply(g)[-1])
t.sendall(b'MAIL FROM:<x@elsewhere.example>\r\n')
print('mail-without-ehlo', reply(g)[-1][:3])
t.sendall(b'EHLO inj.example\r\n')
print('ehlo-tls', reply(g)[0][:3])
t.sendall(b'RCPT TO:<alice@a.test>\r\n')
print('rcpt-after-ehlo', reply(g)[-1])
t.sendall(b'QUIT\r\n')
print('quit', reply(g)[-1][:3])
"#;

#[test]
fn starttls_and_command_injection() {
    let (mut a, mx, _, ca) = gateway("127.0.0.110", "verify = false\n");
    a.start();
    a.add_user("alice@a.test");
    let m = message(
        "x@elsewhere.example",
        "alice@a.test",
        "over-tls",
        "Private.",
    );
    let path = write_msg(&a, "m.eml", &m);
    let out = python(
        STARTTLS_CHECKS,
        &["127.0.0.110", &mx.to_string(), &ca, &path],
    );
    let has = |s: &str| out.lines().any(|l| l.starts_with(s));
    assert!(has("offers-starttls True offers-auth False"), "{out}");
    assert!(has("auth-on-mx 502"), "{out}");
    assert!(has("after-tls-starttls False"), "{out}");
    assert!(has("again 503"), "{out}");
    assert!(has("send {}"), "{out}");
    assert!(has("starttls 220"), "{out}");
    // The injected EHLO and MAIL were discarded: no transaction exists inside TLS, and the
    // session starts over (EHLO needed).
    assert!(has("injected-rcpt 503 5.5.1 MAIL first"), "{out}");
    assert!(has("mail-without-ehlo 503"), "{out}");
    assert!(has("ehlo-tls 250"), "{out}");
    assert!(has("rcpt-after-ehlo 503 5.5.1 MAIL first"), "{out}");
    assert!(has("quit 221"), "{out}");
    let boxed = a.mailbox("alice@a.test");
    assert_eq!(boxed.len(), 1, "only the well-behaved message");
    let got = a.show("alice@a.test", boxed[0].uid);
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("with ESMTPS id "), "{text}");
    assert!(got.ends_with(&m));
    assert!(
        a.log()
            .contains("discarding commands pipelined after STARTTLS")
    );
}

const SUBMISSION_CHECKS: &str = r#"
import smtplib, ssl, sys, base64
host, port, ca, good, forged = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
s = smtplib.SMTP(host, port)
s._host = 'a.test'  # the name TLS checks the certificate for
s.ehlo('laptop.example')
print('auth-in-clear-offered', s.has_extn('auth'))
print('mail-before-auth', s.docmd('MAIL FROM:<alice@a.test>')[0])
print('auth-in-clear', s.docmd('AUTH PLAIN', base64.b64encode(b'\0alice@a.test\0secret').decode())[0])
s.starttls(context=ctx)
s.ehlo('laptop.example')
print('auth-offered', s.esmtp_features.get('auth').strip())
try:
    s.login('alice@a.test', 'wrong')
    print('wrong accepted')
except smtplib.SMTPAuthenticationError as e:
    print('wrong', e.smtp_code)
s.login('alice@a.test', 'secret')
print('authed')
code, text = s.docmd('MAIL FROM:<carol@a.test>')
print('mail-as-other', code, text.decode())
try:
    s.sendmail('alice@a.test', ['carol@a.test'], open(forged, 'rb').read())
    print('forged accepted')
except smtplib.SMTPDataError as e:
    print('forged', e.smtp_code, e.smtp_error.decode())
print('send', s.sendmail('alice@a.test', ['carol@a.test', 'bob@b.test'], open(good, 'rb').read()))
s.quit()
# AUTH LOGIN
s = smtplib.SMTP(host, port)
s._host = 'a.test'  # the name TLS checks the certificate for
s.starttls(context=ctx)
s.ehlo('laptop.example')
s.user, s.password = 'alice@a.test', 'secret'
print('login', s.auth('LOGIN', s.auth_login)[0])
s.quit()
"#;

#[test]
fn submission_with_auth_local_and_over_xmpp() {
    let subs = free_port("127.0.0.111");
    let (mut a, _, sub, ca) = gateway(
        "127.0.0.111",
        &format!("verify = false\nsubmissions = [\"127.0.0.111:{subs}\"]\n"),
    );
    let mut b = Xmta::plain("b.test", "127.0.0.112");
    set_route(&mut a, "b.test", &b.addr.to_string());
    set_route(&mut b, "a.test", &a.addr.to_string());
    a.start();
    b.start();
    a.add_user("alice@a.test");
    a.add_user("carol@a.test");
    b.add_user("bob@b.test");
    let good = message(
        "alice@a.test",
        "carol@a.test, bob@b.test",
        "submitted",
        "Hi.",
    );
    let forged = message("carol@a.test", "carol@a.test", "forged", "Not from carol.");
    let gp = write_msg(&a, "good.eml", &good);
    let fp = write_msg(&a, "forged.eml", &forged);
    let ip465 = write_msg(
        &a,
        "implicit.eml",
        &message("alice@a.test", "carol@a.test", "implicit-tls", "Hi."),
    );
    let out = python(
        SUBMISSION_CHECKS,
        &["127.0.0.111", &sub.to_string(), &ca, &gp, &fp],
    );
    let has = |s: &str| out.lines().any(|l| l.starts_with(s));
    assert!(has("auth-in-clear-offered False"), "{out}");
    assert!(has("mail-before-auth 530"), "{out}");
    assert!(has("auth-in-clear 538"), "{out}");
    assert!(has("auth-offered PLAIN LOGIN"), "{out}");
    assert!(has("wrong 535"), "{out}");
    assert!(has("authed"), "{out}");
    assert!(has("mail-as-other 553 5.7.1"), "{out}");
    assert!(has("forged 550 5.7.1"), "{out}");
    assert!(has("send {}"), "{out}");
    assert!(has("login 235"), "{out}");
    // Implicit TLS (RFC 8314): TLS from the first byte, no STARTTLS offered.
    let implicit = python(
        r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
ctx.check_hostname = False  # the chain is still verified against the test CA
s = smtplib.SMTP_SSL(sys.argv[1], int(sys.argv[2]), context=ctx)
s.ehlo('laptop.example')
print('starttls', s.has_extn('starttls'), 'auth', s.esmtp_features.get('auth', '').strip())
s.login('alice@a.test', 'secret')
print('send', s.sendmail('alice@a.test', ['carol@a.test'], open(sys.argv[4], 'rb').read()))
s.quit()
"#,
        &["127.0.0.111", &subs.to_string(), &ca, &ip465],
    );
    assert!(
        implicit.contains("starttls False auth PLAIN LOGIN"),
        "{implicit}"
    );
    assert!(implicit.contains("send {}"), "{implicit}");
    // swaks (Perl, Net::SSLeay) as a second real client: STARTTLS with the certificate
    // verified, AUTH LOGIN.
    let sw = std::process::Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.111:{sub}"),
            "--tls",
            "--tls-verify",
        ])
        .args(["--tls-ca-path", &ca, "--tls-sni", "a.test"])
        .args([
            "--auth",
            "LOGIN",
            "--auth-user",
            "alice@a.test",
            "--auth-password",
            "secret",
        ])
        .args(["--from", "alice@a.test", "--to", "carol@a.test"])
        .args([
            "--header",
            "Subject: via-swaks",
            "--header",
            "From: alice@a.test",
        ])
        .args(["--body", "From swaks."])
        .output()
        .expect("swaks runs (package swaks)");
    let sw_out = String::from_utf8_lossy(&sw.stdout);
    assert!(
        sw.status.success(),
        "{sw_out}{}",
        String::from_utf8_lossy(&sw.stderr)
    );
    assert!(sw_out.contains("<~  235 2.7.0"), "{sw_out}");
    let carol = a.mailbox("carol@a.test");
    assert_eq!(
        carol.len(),
        3,
        "the good, the implicit-TLS and the swaks message"
    );
    assert!(carol.iter().any(|m| m.subject == "via-swaks"));
    assert!(carol.iter().any(|m| m.subject == "implicit-tls"));
    let uid = carol
        .iter()
        .find(|m| m.subject == "submitted")
        .expect("submitted")
        .uid;
    let got = a.show("carol@a.test", uid);
    assert!(got.ends_with(&good));
    assert!(String::from_utf8_lossy(&got).contains("with ESMTPSA id "));
    b.wait_for("bob's mail over XMPP", 30, || {
        b.mailbox("bob@b.test").len() == 1
    });
    let got = b.show("bob@b.test", b.mailbox("bob@b.test")[0].uid);
    assert!(got.ends_with(&good), "{}", String::from_utf8_lossy(&got));
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());
}

/// Signs `m` for sig.test (selector `sel`) with a fresh Ed25519 key; returns the signed
/// message and the DKIM key record.
fn dkim_sign(m: &[u8]) -> (Vec<u8>, String) {
    use base64::Engine as _;
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;
    let der = Ed25519Key::generate_pkcs8().expect("key");
    let key = Ed25519Key::from_pkcs8_der(&der).expect("key");
    let public = base64::engine::general_purpose::STANDARD.encode(key.public_key());
    let sig = DkimSigner::from_key(key)
        .domain("sig.test")
        .selector("sel")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(m)
        .expect("sign");
    let mut out = sig.to_header().into_bytes();
    out.extend_from_slice(m);
    (out, format!("v=DKIM1; k=ed25519; p={public}"))
}

const SEND: &str = r#"
import smtplib, sys
host, port, sender, rcpt, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
s = smtplib.SMTP(host, port)
s._host = 'a.test'  # the name TLS checks the certificate for
s.ehlo('mta.sig.test')
try:
    print('result', s.sendmail(sender, [rcpt], open(path, 'rb').read()))
except smtplib.SMTPDataError as e:
    print('refused', e.smtp_code, e.smtp_error.decode())
s.quit()
"#;

#[test]
fn spf_dkim_dmarc_recorded() {
    let dns_ip = "127.0.0.113";
    let dns_port = free_port(dns_ip);
    let m = message("news@sig.test", "alice@a.test", "signed", "Signed body.");
    let (signed, record) = dkim_sign(&m);
    let _dns = Dnsmasq::start(
        dns_ip,
        dns_port,
        &[
            "--txt-record=sig.test,v=spf1 ip4:127.0.0.1 -all".into(),
            format!("--txt-record=sel._domainkey.sig.test,{record}"),
            "--txt-record=_dmarc.sig.test,v=DMARC1; p=reject".into(),
            "--txt-record=other.test,v=spf1 -all".into(),
        ],
    );
    let dns = format!("[dns]\nnameservers = [\"{dns_ip}:{dns_port}\"]\n");
    let (mut a, mx, _, _) = gateway("127.0.0.114", &format!("verify = true\n{dns}"));
    let (mut r, rmx, _, _) = gateway(
        "127.0.0.114",
        &format!("verify = true\ndmarc_reject = true\n{dns}"),
    );
    a.start();
    r.start();
    a.add_user("alice@a.test");
    r.add_user("alice@a.test");
    let send = |x: &Xmta, port: u16, sender: &str, m: &[u8], name: &str| {
        let p = write_msg(x, name, m);
        python(
            SEND,
            &["127.0.0.114", &port.to_string(), sender, "alice@a.test", &p],
        )
    };
    // Intact: all three pass.
    let out = send(&a, mx, "news@sig.test", &signed, "signed.eml");
    assert!(out.contains("result {}"), "{out}");
    // A signed header altered after signing: DKIM fails; SPF still passes and aligns, so
    // DMARC passes.
    let altered = String::from_utf8(signed.clone())
        .expect("utf8")
        .replace("Subject: signed", "Subject: altered");
    let out = send(&a, mx, "news@sig.test", altered.as_bytes(), "altered.eml");
    assert!(out.contains("result {}"), "{out}");
    // A forged result under our authserv-id is removed; another server's is kept.
    let forged = [
        &b"Authentication-Results: a.test; dkim=pass header.d=bank.test\r\nAuthentication-Results: relay.example; spf=pass\r\n"[..],
        &m,
    ]
    .concat();
    let out = send(&a, mx, "news@sig.test", &forged, "forged.eml");
    assert!(out.contains("result {}"), "{out}");
    // Altered and from an envelope domain whose SPF fails: DMARC fails, recorded only.
    let out = send(&a, mx, "x@other.test", altered.as_bytes(), "altered2.eml");
    assert!(out.contains("result {}"), "{out}");
    let boxed = a.mailbox("alice@a.test");
    assert_eq!(boxed.len(), 4);
    let f = String::from_utf8_lossy(&a.show("alice@a.test", boxed[2].uid)).into_owned();
    assert!(!f.contains("bank.test"), "{f}");
    assert!(
        f.contains("\r\nAuthentication-Results: relay.example; spf=pass\r\n"),
        "{f}"
    );
    assert_eq!(
        f.matches("Authentication-Results: a.test;").count(),
        1,
        "{f}"
    );
    let header = |uid: u32| {
        let got = a.show("alice@a.test", uid);
        let text = String::from_utf8_lossy(&got).into_owned();
        let ar = text
            .split("\r\n")
            .skip_while(|l| !l.starts_with("Authentication-Results: a.test;"))
            .take_while(|l| {
                l.starts_with("Authentication-Results") || l.starts_with('\t') || l.starts_with(' ')
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!ar.is_empty(), "no Authentication-Results:\n{text}");
        ar
    };
    let h1 = header(boxed[0].uid);
    assert!(h1.contains("spf=pass"), "{h1}");
    assert!(
        h1.contains("dkim=pass header.d=sig.test header.s=sel"),
        "{h1}"
    );
    assert!(h1.contains("dmarc=pass header.from=sig.test"), "{h1}");
    let h2 = header(boxed[1].uid);
    assert!(h2.contains("dkim=fail"), "{h2}");
    assert!(h2.contains("spf=pass"), "{h2}");
    assert!(h2.contains("dmarc=pass"), "{h2}");
    let h3 = header(boxed[3].uid);
    assert!(h3.contains("dkim=fail"), "{h3}");
    assert!(h3.contains("spf=fail"), "{h3}");
    assert!(h3.contains("dmarc=fail"), "{h3}");
    assert!(h3.contains("policy.dmarc=reject"), "{h3}");
    // The stored copy is the message as sent, below our trace headers.
    assert!(a.show("alice@a.test", boxed[0].uid).ends_with(&signed));
    // With dmarc_reject the DMARC failure is refused; the passing message is accepted.
    let out = send(&r, rmx, "x@other.test", altered.as_bytes(), "r1.eml");
    assert!(out.contains("refused 550 5.7.1"), "{out}");
    let out = send(&r, rmx, "news@sig.test", &signed, "r2.eml");
    assert!(out.contains("result {}"), "{out}");
    assert_eq!(r.mailbox("alice@a.test").len(), 1);
}

/// Sends one message over raw SMTP; returns the replies to MAIL and to the end of DATA
/// (None when MAIL was refused).
fn try_send(addr: std::net::SocketAddr, sender: &str, m: &[u8]) -> (u16, Option<(u16, String)>) {
    let mut s = SmtpRaw::connect(addr);
    s.cmd("EHLO mta.elsewhere.example");
    let (code, _) = s.cmd(&format!("MAIL FROM:<{sender}>"));
    if code != 250 {
        return (code, None);
    }
    assert_eq!(s.cmd("RCPT TO:<alice@a.test>").0, 250, "{}", s.log);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send(m);
    let end = s.cmd(".");
    s.cmd("QUIT");
    (code, Some(end))
}

#[test]
fn downgrade_refused_for_local_and_xmpp_domains() {
    let ip = "127.0.0.115";
    let mx = free_port(ip);
    let extra = format!(
        "[smtp]\nlisten = [\"{ip}:{mx}\"]\ntrusted_networks = [\"127.0.0.99/32\"]\nverify = false\n"
    );
    let (mut a, mut b) = pair(ip, "127.0.0.116", &extra, "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let addr: std::net::SocketAddr = format!("{ip}:{mx}").parse().expect("addr");
    // A local domain never sends over SMTP from outside: envelope and header checks.
    let m = message("mallory@a.test", "alice@a.test", "spoof-local", "x");
    let (code, _) = try_send(addr, "mallory@a.test", &m);
    assert_eq!(code, 550);
    let (code, end) = try_send(addr, "x@elsewhere.example", &m);
    assert_eq!(code, 250);
    let (c, text) = end.expect("data answered");
    assert_eq!(c, 550, "{text}");
    assert!(text.contains("5.7.1 a.test is a local domain"), "{text}");
    // b.test is accepted over SMTP until it has sent mail over XMPP ...
    let m = message("bob@b.test", "alice@a.test", "smtp-before", "x");
    let (code, end) = try_send(addr, "bob@b.test", &m);
    assert_eq!((code, end.map(|e| e.0)), (250, Some(250)));
    b.send(
        "bob@b.test",
        &["alice@a.test"],
        &message("bob@b.test", "alice@a.test", "over-xmpp", "x"),
    );
    a.wait_for("bob's XMPP mail", 30, || {
        a.mailbox("alice@a.test").len() == 2
    });
    // ... and refused afterwards: the same envelope, and a forged header From.
    let m = message("bob@b.test", "alice@a.test", "smtp-after", "x");
    let mut s = SmtpRaw::connect(addr);
    s.cmd("EHLO mta.elsewhere.example");
    let (code, text) = s.cmd("MAIL FROM:<bob@b.test>");
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.7.1 b.test sent mail over XMPP"), "{text}");
    let (_, end) = try_send(addr, "x@elsewhere.example", &m);
    assert_eq!(end.expect("data answered").0, 550);
    // The evidence is in the store: after a restart b.test is still refused over SMTP.
    a.stop();
    a.start();
    common::postfix::wait_port(addr, 10, "smtp", || a.log_tail(20));
    assert!(
        a.log()
            .contains("domains known to send mail over XMPP loaded domains=1"),
        "{}",
        a.log_tail(30)
    );
    let mut s = SmtpRaw::connect(addr);
    s.cmd("EHLO mta.elsewhere.example");
    let (code, text) = s.cmd("MAIL FROM:<bob@b.test>");
    assert_eq!(code, 550, "after a restart: {text}");
    assert!(text.contains("5.7.1 b.test sent mail over XMPP"), "{text}");
    let subjects: Vec<String> = a
        .mailbox("alice@a.test")
        .into_iter()
        .map(|m| m.subject)
        .collect();
    assert_eq!(subjects, vec!["smtp-before", "over-xmpp"]);
}

#[test]
fn downgrade_tagged() {
    let ip = "127.0.0.117";
    let mx = free_port(ip);
    let extra = format!(
        "[smtp]\nlisten = [\"{ip}:{mx}\"]\ntrusted_networks = [\"127.0.0.99/32\"]\nverify = false\ndowngrade = \"tag\"\n"
    );
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip,
        routes: vec![],
        extra: &extra,
        s2s_extra: "",
    });
    a.start();
    a.add_user("alice@a.test");
    let addr: std::net::SocketAddr = format!("{ip}:{mx}").parse().expect("addr");
    let m = message("boss@a.test", "alice@a.test", "tagged", "x");
    let (code, end) = try_send(addr, "boss@a.test", &m);
    assert_eq!((code, end.map(|e| e.0)), (250, Some(250)));
    let got = a.show("alice@a.test", a.mailbox("alice@a.test")[0].uid);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with(
            "Authentication-Results: a.test; x-xmta-downgrade=fail header.from=a.test"
        ),
        "{text}"
    );
    assert!(
        text.contains("\r\nX-Xmta-Downgrade: a.test is a local domain"),
        "{text}"
    );
    assert!(got.ends_with(&m));
}

/// A domain whose service discovery announced urn:xmpp:mta:0 (learnt when we send it mail)
/// is refused over SMTP afterwards.
#[test]
fn downgrade_refused_after_disco() {
    let ip = "127.0.0.129";
    let mx = free_port(ip);
    let extra = format!(
        "[smtp]\nlisten = [\"{ip}:{mx}\"]\ntrusted_networks = [\"127.0.0.99/32\"]\nverify = false\n"
    );
    let (mut a, mut b) = pair(ip, ip, &extra, "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let addr: std::net::SocketAddr = format!("{ip}:{mx}").parse().expect("addr");
    let m = message("bob@b.test", "alice@a.test", "smtp-before", "x");
    let (code, end) = try_send(addr, "bob@b.test", &m);
    assert_eq!((code, end.map(|e| e.0)), (250, Some(250)));
    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "to-bob", "x"),
    );
    b.wait_for("alice's mail", 30, || b.mailbox("bob@b.test").len() == 1);
    let mut s = SmtpRaw::connect(addr);
    s.cmd("EHLO mta.elsewhere.example");
    let (code, text) = s.cmd("MAIL FROM:<bob@b.test>");
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("5.7.1 b.test announces urn:xmpp:mta:0"),
        "{text}"
    );
    assert_eq!(a.mailbox("alice@a.test").len(), 1);
}
