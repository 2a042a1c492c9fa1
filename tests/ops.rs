//! Operating xmta (issue 8): dns-records, check, import, backup/restore, metrics, graceful
//! shutdown and reload. Addresses 127.0.0.150-169.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::ops::*;
use common::*;

fn out_of(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn dns_records_for_a_domain() {
    let x = Xmta::new(Spec {
        domain: "a.test",
        ip: "127.0.0.150",
        routes: vec![],
        extra: "[public]\nhostname = \"xmpp.a.test\"\ns2s_port = 5269\n\n[smtp]\nlisten = [\"127.0.0.150:2525\"]\nhostname = \"mx.a.test\"\n",
        s2s_extra: "",
    });
    let out = String::from_utf8(x.ok(&["dns-records", "a.test"], b"")).unwrap();
    assert!(
        out.lines()
            .any(|l| l == "_xmpp-server._tcp.a.test. 3600 IN SRV 5 10 5269 xmpp.a.test."),
        "{out}"
    );
    assert!(out.contains("_xmpps-server._tcp.a.test."), "{out}");
    assert!(
        out.contains("a.test.<registry zone>. 3600 IN A 127.0.0.2"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l == "a.test. 3600 IN MX 10 mx.a.test."),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l == "a.test. 3600 IN TXT \"v=spf1 mx -all\""),
        "{out}"
    );
    assert!(out.contains("public.hostname"), "{out}");
}

/// A config with TLS certificate `cert` and DNS from `dns`.
fn check_config(
    x: &Xmta,
    dns: &Dns,
    cert: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    data: &str,
) -> std::path::PathBuf {
    let tls = match cert {
        Some((c, k)) => format!(
            "tls = \"optional\"\ncert = \"{}\"\nkey = \"{}\"\n",
            c.display(),
            k.display()
        ),
        None => "tls = \"off\"\n".into(),
    };
    let cfg = format!(
        "[server]\ndomains = [\"a.test\"]\ndata_dir = \"{data}\"\n\n[s2s]\nlisten = [\"{}\"]\n{tls}\n[dns]\nnameservers = [\"{}\"]\n\n[public]\nhostname = \"xmpp.a.test\"\n",
        x.addr, dns.addr
    );
    let p = x.dir.path().join(format!("check-{}.toml", rand_tag()));
    std::fs::write(&p, cfg).unwrap();
    p
}

fn rand_tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
}

#[test]
fn check_passes_good_config_and_names_each_fault() {
    let mut x = Xmta::plain("a.test", "127.0.0.151");
    let ip = "127.0.0.151";
    let port = x.addr.port();
    let good_dns = Dns::start(
        "127.0.0.152",
        &[("xmpp.a.test", ip)],
        &[("a.test", "xmpp.a.test", port)],
    );
    let y = this_year();
    let good = cert(x.dir.path(), "good", &["a.test"], y - 1, y + 2);
    let data = x.data_dir().display().to_string();

    // Good: no FAIL, exit 0. A self-signed certificate is a WARN (not publicly trusted).
    let cfg = check_config(&x, &good_dns, Some(&good), &data);
    let (code, out) = check(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(
        line(&out, "PASS certificate names:").contains("a.test"),
        "{out}"
    );
    assert!(
        line(&out, "WARN certificate chain:").contains("not trusted"),
        "{out}"
    );
    assert!(
        line(&out, "PASS dns a.test:").contains(&format!("xmpp.a.test:{port}")),
        "{out}"
    );
    assert!(
        line(&out, &format!("PASS listen {}", x.addr)).contains("can be bound"),
        "{out}"
    );
    assert!(line(&out, "PASS data_dir:").contains("writable"), "{out}");
    for l in out.lines() {
        assert!(
            l.starts_with("PASS ") || l.starts_with("WARN ") || l.starts_with("FAIL "),
            "{l}"
        );
    }

    // Expired certificate.
    let expired = cert(x.dir.path(), "expired", &["a.test"], y - 3, y - 1);
    let (code, out) = check(&check_config(&x, &good_dns, Some(&expired), &data));
    assert_eq!(code, 2, "{out}");
    assert!(line(&out, "FAIL certificate:").contains("expired"), "{out}");

    // Certificate for another name.
    let wrong = cert(x.dir.path(), "wrong", &["other.test"], y - 1, y + 2);
    let (code, out) = check(&check_config(&x, &good_dns, Some(&wrong), &data));
    assert_eq!(code, 2, "{out}");
    let l = line(&out, "FAIL certificate names:");
    assert!(
        l.contains("other.test") && l.contains("not for a.test"),
        "{l}"
    );

    // No SRV record.
    let empty_dns = Dns::start("127.0.0.153", &[], &[]);
    let (code, out) = check(&check_config(&x, &empty_dns, Some(&good), &data));
    assert_eq!(code, 2, "{out}");
    let l = line(&out, "FAIL dns a.test:");
    assert!(l.contains("no SRV record _xmpp-server._tcp.a.test."), "{l}");
    assert!(l.contains(&format!("SRV 5 10 {port} xmpp.a.test.")), "{l}");

    // SRV pointing elsewhere.
    let wrong_dns = Dns::start(
        "127.0.0.154",
        &[("xmpp.a.test", "127.0.0.99")],
        &[("a.test", "elsewhere.a.test", 5269)],
    );
    let (code, out) = check(&check_config(&x, &wrong_dns, Some(&good), &data));
    assert_eq!(code, 2, "{out}");
    assert!(
        line(&out, "FAIL dns a.test:").contains("not at this server"),
        "{out}"
    );

    // Unwritable data dir (root ignores modes: a path below a regular file cannot exist).
    let file = x.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let bad_data = file.join("data").display().to_string();
    let (code, out) = check(&check_config(&x, &good_dns, Some(&good), &bad_data));
    assert_eq!(code, 2, "{out}");
    assert!(
        line(&out, "FAIL data_dir:").contains("not writable"),
        "{out}"
    );

    // Broken config: named, exit 2.
    let broken = x.dir.path().join("broken.toml");
    std::fs::write(&broken, "[server]\ndomains = [\"a.test\"]\nlisten = 3\n").unwrap();
    let (code, out) = check(&broken);
    assert_eq!(code, 2, "{out}");
    assert!(line(&out, "FAIL config:").contains("listen"), "{out}");

    // While the server runs, its ports are in use by it: still PASS.
    let cfg = check_config(&x, &good_dns, Some(&good), &data);
    std::fs::copy(&cfg, &x.config).unwrap();
    x.start();
    let (code, out) = check(&x.config);
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "PASS server:").contains("running"), "{out}");
    assert!(
        line(&out, &format!("PASS listen {}", x.addr)).contains("bound by the running xmta"),
        "{out}"
    );
}

/// (subject index) -> (flags sorted, date) of a user's folder, read from the store file.
fn read_store(
    data: &std::path::Path,
    user: &str,
    folder: &str,
) -> BTreeMap<usize, (Vec<String>, i64)> {
    let store = xmta::store::Store::open(&data.join("xmta.redb")).expect("open store");
    let mut out = BTreeMap::new();
    for m in store.messages(user, folder).unwrap() {
        let body = store.message_body(user, folder, m.uid).unwrap().unwrap();
        let s = String::from_utf8_lossy(&body);
        let i: usize = s
            .split("Subject: msg-")
            .nth(1)
            .and_then(|r| r.split(['\r', '\n']).next())
            .and_then(|n| n.parse().ok())
            .expect("subject");
        let mut f = m.flags.clone();
        f.sort();
        assert!(
            out.insert(i, (f, m.internal_date)).is_none(),
            "message {i} twice"
        );
    }
    out
}

#[test]
fn import_maildir_10000_keeps_flags_and_dates_and_skips_duplicates() {
    let x = Xmta::plain("b.test", "127.0.0.155");
    x.add_user("bob@b.test");
    let md = x.dir.path().join("Maildir");
    let expect = make_maildir(&md, 10_000);
    let t0 = Instant::now();
    let out = x.cmd(
        &["import", "maildir", md.to_str().unwrap(), "bob@b.test"],
        b"",
    );
    let secs = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", out_of(&out));
    let text = out_of(&out);
    assert!(text.contains("imported 10000 messages"), "{text}");
    assert!(text.contains("directly into the store"), "{text}");
    // Not a terminal: plain progress lines.
    assert!(text.contains("import: 10000/10000 messages read"), "{text}");
    eprintln!("imported 10000 messages in {secs:.2} s");
    assert!(secs < 30.0, "import took {secs} s");

    let got = read_store(&x.data_dir(), "bob@b.test", "INBOX");
    assert_eq!(got.len(), 10_000);
    for (i, date, info) in &expect {
        let (flags, d) = &got[i];
        assert_eq!(flags, &info_flags(info), "flags of msg-{i}");
        assert_eq!(d, date, "date of msg-{i}");
    }
    // Readback through the CLI too (the IMAP readback comes with the IMAP bridge).
    assert_eq!(x.mailbox("bob@b.test").len(), 10_000);

    // A second run adds nothing.
    let out = x.cmd(
        &["import", "maildir", md.to_str().unwrap(), "bob@b.test"],
        b"",
    );
    assert!(out.status.success(), "{}", out_of(&out));
    assert!(
        out_of(&out).contains("imported 0 messages"),
        "{}",
        out_of(&out)
    );
    assert!(out_of(&out).contains("skipped 10000"), "{}", out_of(&out));
    assert_eq!(
        read_store(&x.data_dir(), "bob@b.test", "INBOX").len(),
        10_000
    );
}

#[test]
fn import_through_running_server_mbox_and_maildir() {
    let mut x = Xmta::plain("b.test", "127.0.0.156");
    x.start();
    x.add_user("bob@b.test");
    // mbox: flags from Status/X-Status, dates from the From line, >From unquoted.
    let mbox = x.dir.path().join("mbox");
    let mut m = String::new();
    for i in 0..50 {
        let (status, xstatus) = match i % 4 {
            0 => ("RO", ""),
            1 => ("O", "A"),
            2 => ("RO", "FT"),
            _ => ("", "D"),
        };
        m.push_str(&format!(
            "From sender{i}@old.example Tue Nov 14 22:{:02}:20 2023\nFrom: sender{i}@old.example\nSubject: msg-{i}\n",
            i % 60
        ));
        if !status.is_empty() {
            m.push_str(&format!("Status: {status}\n"));
        }
        if !xstatus.is_empty() {
            m.push_str(&format!("X-Status: {xstatus}\n"));
        }
        m.push_str(&format!("\nline one\n>From the quoted line {i}\n\n"));
    }
    std::fs::write(&mbox, m).unwrap();
    let out = x.cmd(
        &[
            "import",
            "mbox",
            mbox.to_str().unwrap(),
            "bob@b.test",
            "--folder",
            "Sent",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", out_of(&out));
    assert!(
        out_of(&out).contains("imported 50 messages into bob@b.test Sent"),
        "{}",
        out_of(&out)
    );
    assert!(
        out_of(&out).contains("through the running server"),
        "{}",
        out_of(&out)
    );
    // Again: nothing new.
    let out = x.cmd(
        &[
            "import",
            "mbox",
            mbox.to_str().unwrap(),
            "bob@b.test",
            "--folder",
            "Sent",
        ],
        b"",
    );
    assert!(
        out_of(&out).contains("imported 0 messages"),
        "{}",
        out_of(&out)
    );
    // A Maildir through the server as well.
    let md = x.dir.path().join("Maildir");
    make_maildir(&md, 300);
    let out = x.cmd(
        &["import", "maildir", md.to_str().unwrap(), "bob@b.test"],
        b"",
    );
    assert!(
        out_of(&out).contains("imported 300 messages"),
        "{}",
        out_of(&out)
    );
    // A folder that does not exist is refused by name.
    let out = x.cmd(
        &[
            "import",
            "maildir",
            md.to_str().unwrap(),
            "bob@b.test",
            "--folder",
            "Nope",
        ],
        b"",
    );
    assert!(!out.status.success());
    assert!(
        out_of(&out).contains("no folder `Nope`"),
        "{}",
        out_of(&out)
    );
    x.stop();

    let sent = read_store(&x.data_dir(), "bob@b.test", "Sent");
    assert_eq!(sent.len(), 50);
    for (i, (flags, date)) in &sent {
        let want: Vec<&str> = match i % 4 {
            0 => vec!["\\Seen"],
            1 => vec!["\\Answered"],
            2 => vec!["\\Draft", "\\Flagged", "\\Seen"],
            _ => vec!["\\Deleted"],
        };
        assert_eq!(flags, &want, "flags of msg-{i}");
        // Tue Nov 14 22:MM:20 2023 UTC
        assert_eq!(
            *date,
            1_700_000_000 + (*i as i64 % 60) * 60 - 13 * 60,
            "date of msg-{i}"
        );
    }
    let store = xmta::store::Store::open(&x.data_dir().join("xmta.redb")).unwrap();
    let m0 = store.messages("bob@b.test", "Sent").unwrap()[0].uid;
    let body = String::from_utf8(
        store
            .message_body("bob@b.test", "Sent", m0)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(body.contains("\r\nFrom the quoted line"), "{body}");
    assert!(!body.contains("Status:"), "{body}");
    assert!(!body.ends_with("\r\n\r\n"), "mbox separator kept: {body:?}");
}
