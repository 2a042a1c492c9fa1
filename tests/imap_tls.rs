//! IMAP over TLS: STARTTLS on the plaintext listener and implicit TLS on `tls_listen`, with
//! Python imaplib verifying the certificate; without TLS, logins are refused
//! (LOGINDISABLED, `NO [PRIVACYREQUIRED]`).

mod common;

use common::imap::*;
use common::*;

const TLS: &str = r#"
import imaplib, ssl, sys
host, port, tls_port, ca = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
M = imaplib.IMAP4(host, port)
typ, caps = M.capability()
assert b'STARTTLS' in caps[0] and b'LOGINDISABLED' in caps[0], caps
try:
    M.login('u@t.test', 'secret')
    raise SystemExit('login without TLS worked')
except imaplib.IMAP4.error as e:
    assert 'PRIVACYREQUIRED' in str(e), e
M.starttls(ssl_context=ctx)
typ, caps = M.capability()
assert b'STARTTLS' not in caps[0] and b'LOGINDISABLED' not in caps[0] and b'AUTH=PLAIN' in caps[0], caps
typ, _ = M.login('u@t.test', 'secret')
typ, data = M.select('INBOX')
assert data == [b'1'], data
typ, data = M.fetch('1', '(BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
assert data[0][1] == b'Subject: over-tls\r\n\r\n', data
M.logout()

S = imaplib.IMAP4_SSL(host, tls_port, ssl_context=ctx)
typ, caps = S.capability()
assert b'STARTTLS' not in caps[0] and b'AUTH=PLAIN' in caps[0], caps
S.login('u@t.test', 'secret')
typ, data = S.select('INBOX')
assert data == [b'1'], data
S.logout()
print('OK')
"#;

/// Issue 4: STARTTLS and implicit TLS with a certificate from `[imap] cert`/`key`.
#[test]
fn starttls_and_implicit_tls() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, pairs) = make_certs(certs.path(), &["t.test"]);
    let (cert, key) = &pairs[0];
    let plain = free_port("127.0.0.101");
    let tls = free_port("127.0.0.101");
    let extra = format!(
        "[imap]\nlisten = [\"127.0.0.101:{plain}\"]\ntls_listen = [\"127.0.0.101:{tls}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let mut x = Xmta::new(Spec {
        domain: "t.test",
        ip: "127.0.0.101",
        routes: vec![],
        extra: &extra,
        s2s_extra: "",
    });
    x.start();
    x.add_user("u@t.test");
    x.send(
        "u@t.test",
        &["u@t.test"],
        &message("u@t.test", "u@t.test", "over-tls", "secret stuff"),
    );
    // imaplib checks the certificate against the host name it connects to: "t.test", which
    // the script resolves to the test address itself (no hosts file, no DNS).
    let out = python(
        &TLS.replace(
            "ctx = ssl.create_default_context(cafile=ca)",
            "ctx = ssl.create_default_context(cafile=ca)\nimport socket\n_orig = socket.getaddrinfo\nsocket.getaddrinfo = lambda h, *a, **k: _orig('127.0.0.101' if h == 't.test' else h, *a, **k)",
        ),
        &[
            "t.test",
            &plain.to_string(),
            &tls.to_string(),
            ca.to_str().expect("ca"),
        ],
        60,
    );
    assert_eq!(out.trim(), "OK");
}

/// RFC 3501 §6.2.1 / RFC 2595: commands sent together with STARTTLS, before the handshake,
/// are dropped, not run inside the TLS session.
#[test]
fn starttls_drops_pipelined_plaintext() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, pairs) = make_certs(certs.path(), &["t.test"]);
    let (cert, key) = &pairs[0];
    let plain = free_port("127.0.0.104");
    let extra = format!(
        "[imap]\nlisten = [\"127.0.0.104:{plain}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let mut x = Xmta::new(Spec {
        domain: "t.test",
        ip: "127.0.0.104",
        routes: vec![],
        extra: &extra,
        s2s_extra: "",
    });
    x.start();
    let out = python(
        r#"
import socket, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port))
f = s.makefile('rb')
assert f.readline().startswith(b'* OK')
s.sendall(b'a STARTTLS\r\nb CAPABILITY\r\n')
line = f.readline()
assert line.startswith(b'a OK'), line
ctx = ssl.create_default_context(cafile=ca)
t = ctx.wrap_socket(s, server_hostname='t.test')
tf = t.makefile('rb')
t.sendall(b'c NOOP\r\n')
lines = []
while True:
    l = tf.readline()
    lines.append(l)
    if l.startswith(b'c '):
        break
assert not any(l.startswith(b'b ') or l.startswith(b'* CAPABILITY') for l in lines), lines
assert lines[-1].startswith(b'c OK'), lines
print('OK')
"#,
        &["127.0.0.104", &plain.to_string(), ca.to_str().expect("ca")],
        30,
    );
    assert_eq!(out.trim(), "OK");
}
