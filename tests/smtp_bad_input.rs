//! Bad SMTP input, as scripted raw dialogs: every case gets its reply code, while a good
//! session running in parallel still delivers and mail accepted before survives (see
//! `with_good_sessions`). Limits are set low in each server's config.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::smtp::*;
use common::*;

/// An MX server for a.test on `ip` with alice (and carol, dave, erin) as users; only
/// 127.0.0.99 is trusted. Messages up to 4096 bytes, 3 recipients, DATA lines up to 2000
/// octets, 12 refused commands per session.
fn mx(ip: &str, extra: &str) -> (Xmta, SocketAddr) {
    let port = free_port(ip);
    let cfg = format!(
        "[smtp]\nlisten = [\"{ip}:{port}\"]\ntrusted_networks = [\"127.0.0.99/32\"]\nverify = false\nmax_line_bytes = 2000\nmax_errors = 12\n{extra}\n"
    );
    let mut x = Xmta::new(Spec {
        domain: "a.test",
        ip,
        routes: vec![],
        extra: &cfg,
        s2s_extra: "",
    });
    let text = std::fs::read_to_string(&x.config).expect("config");
    std::fs::write(
        &x.config,
        text.replacen(
            "[delivery]\n",
            "[delivery]\nmax_message_bytes = 4096\nmax_recipients = 3\n",
            1,
        ),
    )
    .expect("config");
    x.start();
    for u in ["alice", "carol", "dave", "erin"] {
        x.add_user(&format!("{u}@a.test"));
    }
    (x, format!("{ip}:{port}").parse().expect("addr"))
}

/// MAIL, RCPT alice, DATA on `s`; asserts the replies.
fn begin(s: &mut SmtpRaw) {
    assert_eq!(s.cmd("MAIL FROM:<x@elsewhere.example>").0, 250, "{}", s.log);
    assert_eq!(s.cmd("RCPT TO:<alice@a.test>").0, 250, "{}", s.log);
    assert_eq!(s.cmd("DATA").0, 354, "{}", s.log);
}

#[test]
fn long_lines() {
    let (x, addr) = mx("127.0.0.118", "");
    with_good_sessions(&x, addr, "alice@a.test", "long", 1, |s| {
        let (code, text) = s.cmd(&format!("NOOP {}", "x".repeat(600)));
        assert_eq!(code, 500, "{text}");
        assert!(text.contains("5.5.2"), "{text}");
        // Over RFC 5321's 1000 octets but within max_line_bytes: stored unchanged.
        begin(s);
        let line = "y".repeat(1500);
        s.send(message("x@elsewhere.example", "alice@a.test", "long-1500", &line).as_slice());
        assert_eq!(s.cmd(".").0, 250, "{}", s.log);
        // Over max_line_bytes: the whole message is refused, the session goes on.
        begin(s);
        let line = "z".repeat(2500);
        s.send(message("x@elsewhere.example", "alice@a.test", "long-2500", &line).as_slice());
        let (code, text) = s.cmd(".");
        assert_eq!(code, 554, "{text}");
        assert!(text.contains("5.5.2"), "{text}");
        assert_eq!(s.cmd("NOOP").0, 250);
    });
    let m = x.mailbox("alice@a.test");
    let uid = m
        .iter()
        .find(|m| m.subject == "long-1500")
        .expect("long-1500")
        .uid;
    let got = x.show("alice@a.test", uid);
    assert!(String::from_utf8_lossy(&got).contains(&format!("\r\n{}\r\n", "y".repeat(1500))));
}

#[test]
fn size_limits() {
    let (x, addr) = mx("127.0.0.119", "");
    with_good_sessions(&x, addr, "alice@a.test", "size", 0, |s| {
        let (code, text) = s.cmd("MAIL FROM:<x@elsewhere.example> SIZE=100000");
        assert_eq!(code, 552, "{text}");
        assert!(text.contains("5.3.4"), "{text}");
        // SIZE within the limit, but the data is not.
        assert_eq!(s.cmd("MAIL FROM:<x@elsewhere.example> SIZE=1000").0, 250);
        assert_eq!(s.cmd("RCPT TO:<alice@a.test>").0, 250);
        assert_eq!(s.cmd("DATA").0, 354);
        let body = "0123456789\r\n".repeat(500);
        s.send(message("x@elsewhere.example", "alice@a.test", "size-big", &body).as_slice());
        let (code, text) = s.cmd(".");
        assert_eq!(code, 552, "{text}");
        assert_eq!(s.cmd("NOOP").0, 250);
    });
}

#[test]
fn smuggling_bare_lf_and_cr() {
    let (x, addr) = mx("127.0.0.120", "");
    with_good_sessions(&x, addr, "alice@a.test", "smuggle", 0, |s| {
        let smuggled = "MAIL FROM:<evil@elsewhere.example>\r\nRCPT TO:<alice@a.test>\r\nDATA\r\nSubject: smuggle-evil\r\n\r\nevil\r\n.\r\n";
        for end in ["\n.\n", "\r\n.\n", "\n.\r\n", "\r\n\r.\r\n", "\r\n\r.\n"] {
            begin(s);
            s.send(format!("Subject: smuggle-carrier\r\n\r\nfirst{end}{smuggled}").as_bytes());
            // One answer for the whole, at the real CRLF.CRLF: a refusal.
            let (code, text) = s.reply(10).expect("answer at the end of data");
            assert_eq!(code, 550, "{end:?}: {text}");
            assert!(text.contains("5.5.2 bare LF or CR"), "{text}");
            // Nothing smuggled was executed: the next answer is NOOP's.
            assert_eq!(s.cmd("NOOP"), (250, "250 2.0.0 ok".to_string()), "{end:?}");
        }
        // A bare LF in an otherwise well-ended message.
        begin(s);
        s.send(b"Subject: smuggle-lf\r\n\r\nline\nline\r\n");
        assert_eq!(s.cmd(".").0, 550);
    });
    let subjects: Vec<String> = x
        .mailbox("alice@a.test")
        .into_iter()
        .map(|m| m.subject)
        .collect();
    assert!(
        !subjects
            .iter()
            .any(|s| s == "smuggle-evil" || s == "smuggle-carrier")
    );
}

#[test]
fn commands_out_of_order_and_error_limit() {
    let (x, addr) = mx("127.0.0.121", "");
    with_good_sessions(&x, addr, "alice@a.test", "order", 0, |s| {
        assert_eq!(s.cmd("RCPT TO:<alice@a.test>").0, 503);
        assert_eq!(s.cmd("DATA").0, 503);
        assert_eq!(s.cmd("MAIL FROM:<x@elsewhere.example>").0, 250);
        assert_eq!(s.cmd("DATA").0, 503, "DATA before any RCPT");
        assert_eq!(
            s.cmd("MAIL FROM:<y@elsewhere.example>").0,
            503,
            "MAIL twice"
        );
        assert_eq!(s.cmd("RSET").0, 250);
        assert_eq!(s.cmd("LHLO x").0, 500);
        // max_errors = 12: 5 refusals so far; the 12th ends the session.
        for _ in 0..6 {
            assert_eq!(s.cmd("BOGUS").0, 500);
        }
        let (code, text) = s.cmd("BOGUS");
        assert_eq!(code, 500, "{text}");
        let (code, text) = s.reply(5).expect("421");
        assert_eq!(code, 421, "{text}");
        assert!(text.contains("4.7.0"), "{text}");
        assert!(s.closed_within(5));
    });
    // HELO-less MAIL on a fresh connection.
    let mut s = SmtpRaw::connect(addr);
    assert_eq!(s.cmd("MAIL FROM:<x@elsewhere.example>").0, 503);
}

#[test]
fn pipelining_allowed_and_abused() {
    let (x, addr) = mx("127.0.0.122", "");
    with_good_sessions(&x, addr, "alice@a.test", "pipe", 1, |s| {
        // RFC 2920: MAIL, RCPT, DATA in one packet is fine; the text waits for the 354.
        s.send(b"MAIL FROM:<x@elsewhere.example>\r\nRCPT TO:<alice@a.test>\r\nDATA\r\n");
        assert_eq!(s.reply(10).expect("MAIL").0, 250);
        assert_eq!(s.reply(10).expect("RCPT").0, 250);
        assert_eq!(s.reply(10).expect("DATA").0, 354);
        s.send(&message(
            "x@elsewhere.example",
            "alice@a.test",
            "pipe-ok",
            "x",
        ));
        assert_eq!(s.cmd(".").0, 250, "{}", s.log);
        // The message text sent with DATA, before the 354: refused and disconnected.
        let mut b = SmtpRaw::connect(addr);
        assert_eq!(b.cmd("EHLO b.example").0, 250);
        let mut all =
            b"MAIL FROM:<x@elsewhere.example>\r\nRCPT TO:<alice@a.test>\r\nDATA\r\n".to_vec();
        all.extend_from_slice(&message(
            "x@elsewhere.example",
            "alice@a.test",
            "pipe-early",
            "x",
        ));
        all.extend_from_slice(b".\r\n");
        b.send(&all);
        assert_eq!(b.reply(10).expect("MAIL").0, 250);
        assert_eq!(b.reply(10).expect("RCPT").0, 250);
        let (code, text) = b.reply(10).expect("DATA");
        assert_eq!(code, 554, "{text}");
        assert!(text.contains("5.5.0"), "{text}");
        assert!(b.closed_within(5), "{}", b.log);
    });
}

#[test]
fn talking_before_the_greeting() {
    let (x, addr) = mx("127.0.0.123", "greeting_delay_ms = 300\n");
    with_good_sessions(&x, addr, "alice@a.test", "pregreet", 0, |_| {
        let mut b = SmtpRaw::connect_quiet(addr);
        b.send(b"EHLO eager.example\r\nMAIL FROM:<x@elsewhere.example>\r\n");
        let (code, text) = b.reply(10).expect("an answer");
        assert_eq!(code, 554, "{text}");
        assert!(text.contains("5.5.1"), "{text}");
        assert!(b.closed_within(5));
    });
}

#[test]
fn invalid_addresses() {
    let (x, addr) = mx("127.0.0.127", "");
    with_good_sessions(&x, addr, "alice@a.test", "addr", 0, |s| {
        for bad in [
            "MAIL FROM:<no-at-sign>",
            "MAIL FROM:<x@[127.0.0.1]>",
            "MAIL FROM:<x@-bad-.example>",
            "MAIL FROM:x@elsewhere.example>",
        ] {
            let (code, text) = s.cmd(bad);
            assert!((501..=553).contains(&code), "{bad}: {text}");
        }
        assert_eq!(s.cmd("MAIL FROM:<x@elsewhere.example>").0, 250);
        for bad in [
            "RCPT TO:<bob>",
            "RCPT TO:<>",
            "RCPT TO:<a@b@a.test>",
            "RCPT TO:<@a.test>",
        ] {
            let (code, text) = s.cmd(bad);
            assert!((501..=553).contains(&code), "{bad}: {text}");
        }
        assert_eq!(s.cmd("DATA").0, 503, "no valid recipient");
    });
}

#[test]
fn too_many_recipients() {
    let (x, addr) = mx("127.0.0.128", "");
    with_good_sessions(&x, addr, "alice@a.test", "rcpts", 1, |s| {
        assert_eq!(s.cmd("MAIL FROM:<x@elsewhere.example>").0, 250);
        for r in ["alice", "carol", "dave"] {
            assert_eq!(s.cmd(&format!("RCPT TO:<{r}@a.test>")).0, 250);
        }
        let (code, text) = s.cmd("RCPT TO:<erin@a.test>");
        assert_eq!(code, 452, "{text}");
        assert!(text.contains("4.5.3"), "{text}");
        assert_eq!(s.cmd("DATA").0, 354);
        s.send(&message(
            "x@elsewhere.example",
            "alice@a.test",
            "rcpts-three",
            "x",
        ));
        assert_eq!(s.cmd(".").0, 250);
    });
    assert_eq!(x.mailbox("dave@a.test").len(), 1);
    assert!(x.mailbox("erin@a.test").is_empty());
}

#[test]
fn idle_clients_get_421() {
    let (x, addr) = mx("127.0.0.126", "idle_timeout_secs = 2\n");
    with_good_sessions(&x, addr, "alice@a.test", "idle", 0, |s| {
        let t = Instant::now();
        let (code, text) = s.reply(10).expect("421 after the idle time");
        assert_eq!(code, 421, "{text}");
        assert!(text.contains("4.4.2"), "{text}");
        assert!(t.elapsed() >= Duration::from_millis(1500));
        assert!(s.closed_within(5));
        // Idle in the middle of DATA: 421, and nothing is stored.
        let mut b = SmtpRaw::connect(addr);
        assert_eq!(b.cmd("EHLO b.example").0, 250);
        begin(&mut b);
        b.send(b"Subject: idle-partial\r\n\r\nhalf a li");
        assert_eq!(b.reply(10).expect("421").0, 421);
        assert!(b.closed_within(5));
    });
}

const BRUTE: &str = r#"
import smtplib, sys, time, base64
host, port, bad_src, good_src = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def plain(pw):
    return base64.b64encode(b'\0alice@a.test\0' + pw.encode()).decode()
s = smtplib.SMTP(host, port, source_address=(bad_src, 0))
s.ehlo('guess.example')
for i in range(3):
    t = time.time()
    code, text = s.docmd('AUTH PLAIN ' + plain('guess%d' % i))
    print('try', i, code, text.decode(), 'slow', time.time() - t >= 0.2)
try:
    print('after', s.docmd('NOOP')[0])
except smtplib.SMTPServerDisconnected:
    print('disconnected')
s = smtplib.SMTP(host, port, source_address=(bad_src, 0))
s.ehlo('guess.example')
code, text = s.docmd('AUTH PLAIN ' + plain('secret'))
print('blocked', code, text.decode())
s.quit()
s = smtplib.SMTP(host, port, source_address=(good_src, 0))
s.ehlo('laptop.example')
s.login('alice@a.test', 'secret')
print('good', s.sendmail('alice@a.test', ['carol@a.test'], open(sys.argv[5], 'rb').read()))
s.quit()
"#;

#[test]
fn auth_brute_force_is_limited() {
    let ip = "127.0.0.124";
    let sub = free_port(ip);
    let extra = format!(
        "submission = [\"{ip}:{sub}\"]\nsubmission_plaintext_loopback = true\nauth_max_failures = 3\nauth_failure_delay_ms = 250\n"
    );
    let (x, addr) = mx(ip, &extra);
    let m = message("alice@a.test", "carol@a.test", "brute-good", "x");
    let path = x.dir.path().join("good.eml");
    std::fs::write(&path, &m).expect("write");
    with_good_sessions(&x, addr, "alice@a.test", "brute", 0, |_| {
        let out = python(
            BRUTE,
            &[
                ip,
                &sub.to_string(),
                "127.0.0.124",
                "127.0.0.125",
                &path.display().to_string(),
            ],
        );
        let has = |s: &str| out.lines().any(|l| l.starts_with(s));
        assert!(has("try 0 535 5.7.8"), "{out}");
        assert!(has("try 1 535 5.7.8"), "{out}");
        assert!(has("try 2 421 4.7.0"), "{out}");
        assert!(
            !out.contains("slow False"),
            "each failure is delayed: {out}"
        );
        assert!(has("disconnected"), "{out}");
        assert!(has("blocked 454 4.7.0"), "even the right password: {out}");
        assert!(has("good {}"), "another address logs in: {out}");
    });
    assert_eq!(x.mailbox("carol@a.test").len(), 1);
}
