//! Operating xmta (issue 8): dns-records, check, import, backup/restore, metrics, graceful
//! shutdown and reload. Addresses 127.0.0.150-169.

mod common;

use std::collections::{BTreeMap, BTreeSet};
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

    // A key that is not the certificate's.
    let mismatched = (good.0.clone(), expired.1.clone());
    let (code, out) = check(&check_config(&x, &good_dns, Some(&mismatched), &data));
    assert_eq!(code, 2, "{out}");
    assert!(line(&out, "FAIL certificate:").contains("key"), "{out}");

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

fn subjects(x: &Xmta, user: &str) -> Vec<String> {
    x.mailbox(user).into_iter().map(|l| l.subject).collect()
}

/// A backup taken while a.test keeps sending to b.test is the store of one moment:
/// restored into a fresh data dir, it holds exactly as many messages as the backup said,
/// each of them one that b.test really received, none twice.
#[test]
fn backup_while_mail_flows_then_restore_into_fresh_dir() {
    let (mut a, mut b) = pair("127.0.0.157", "127.0.0.158", "", "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let total = 40;
    let file = b.dir.path().join("b.backup");
    let report = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            for i in 0..total {
                let m = message("alice@a.test", "bob@b.test", &format!("flow-{i}"), "x");
                a.send("alice@a.test", &["bob@b.test"], &m);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        b.wait_for("some mail", 60, || b.mailbox("bob@b.test").len() >= 5);
        let report = String::from_utf8(b.ok(&["backup", file.to_str().unwrap()], b"")).unwrap();
        sender.join().unwrap();
        report
    });
    // "backup FILE: 1 users, 5 folders, N messages, ..."
    let n: usize = report
        .split(" messages")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count in {report:?}"));
    assert!(report.contains("1 users"), "{report}");
    b.wait_for("all mail", 60, || b.mailbox("bob@b.test").len() == total);
    let all: BTreeSet<String> = subjects(&b, "bob@b.test").into_iter().collect();
    assert_eq!(all.len(), total);
    assert!(n >= 5 && n <= total, "{report}");

    let mut c = Xmta::plain("b.test", "127.0.0.159");
    // Restoring while the server of that data dir runs is refused.
    let out = b.cmd(&["restore", file.to_str().unwrap(), "--force"], b"");
    assert!(!out.status.success());
    assert!(
        out_of(&out).contains("stop it before restoring"),
        "{}",
        out_of(&out)
    );
    let out = String::from_utf8(c.ok(&["restore", file.to_str().unwrap()], b"")).unwrap();
    assert!(out.contains(&format!("{n} messages")), "{out}");
    // A second restore onto the now existing store needs --force.
    let again = c.cmd(&["restore", file.to_str().unwrap()], b"");
    assert!(!again.status.success());
    assert!(out_of(&again).contains("--force"), "{}", out_of(&again));
    // The restored server logs in JSON ([log] format = "json").
    let cfg = std::fs::read_to_string(&c.config).unwrap();
    std::fs::write(
        &c.config,
        cfg.replace(
            "level = \"xmta=debug,info\"",
            "level = \"xmta=debug,info\"\nformat = \"json\"",
        ),
    )
    .unwrap();
    c.start();
    // `start` returns once the admin socket answers, a moment before the ready line.
    c.wait_for("a JSON 'xmta ready' line", 10, || {
        c.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["fields"]["message"] == "xmta ready")
    });
    let restored = subjects(&c, "bob@b.test");
    assert_eq!(restored.len(), n, "restored {restored:?}, backup said {n}");
    let set: BTreeSet<String> = restored.iter().cloned().collect();
    assert_eq!(set.len(), n, "a message twice: {restored:?}");
    assert!(set.is_subset(&all), "{set:?} not within {all:?}");
    // The messages are whole.
    let uid = c.mailbox("bob@b.test")[0].uid;
    assert!(String::from_utf8_lossy(&c.show("bob@b.test", uid)).contains("Subject: flow-"));
}

fn metrics_extra(ip: &str) -> (String, std::net::SocketAddr) {
    let port = free_port(ip);
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    (format!("[metrics]\nlisten = \"{addr}\"\n"), addr)
}

/// Counters scraped during an exchange of N mails match N on both sides.
#[test]
fn metrics_count_mail_between_two_servers() {
    let (ea, ma) = metrics_extra("127.0.0.160");
    let (eb, mb) = metrics_extra("127.0.0.161");
    let (mut a, mut b) = pair("127.0.0.160", "127.0.0.161", &ea, &eb);
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");
    let (code, body) = http_get(ma, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert_eq!(http_get(ma, "/nope").0, 404);
    let n = 12;
    for i in 0..n {
        let m = message("alice@a.test", "bob@b.test", &format!("m-{i}"), "x");
        a.send("alice@a.test", &["bob@b.test"], &m);
    }
    b.wait_for("all mail", 60, || b.mailbox("bob@b.test").len() == n);
    a.wait_for("a's queue to empty", 60, || a.queue().is_empty());
    let pa = http_get(ma, "/metrics").1;
    let pb = http_get(mb, "/metrics").1;
    let nf = n as f64;
    assert_eq!(
        sample(&pa, "xmta_messages_accepted_total{path=\"local\"}"),
        Some(nf),
        "{pa}"
    );
    // Receipts are recorded just after the queue item is removed: poll briefly.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let mut pa = pa;
    while sample(&pa, "xmta_messages_delivered_total{path=\"s2s\"}") != Some(nf) {
        assert!(Instant::now() < deadline, "{pa}");
        std::thread::sleep(std::time::Duration::from_millis(100));
        pa = http_get(ma, "/metrics").1;
    }
    assert_eq!(
        sample(&pa, "xmta_messages_bounced_total{path=\"s2s\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&pa, "xmta_queue_messages"), Some(0.0), "{pa}");
    assert_eq!(
        sample(&pa, "xmta_queue_oldest_age_seconds"),
        Some(0.0),
        "{pa}"
    );
    assert!(sample(&pa, "xmta_s2s_connections_total{direction=\"outbound\"}").unwrap() >= 1.0);
    assert!(
        sample(
            &pa,
            "xmta_dialback_total{role=\"outbound\",result=\"valid\"}"
        )
        .unwrap()
            >= 1.0,
        "{pa}"
    );
    assert_eq!(
        sample(&pb, "xmta_messages_accepted_total{path=\"s2s\"}"),
        Some(nf),
        "{pb}"
    );
    assert_eq!(
        sample(&pb, "xmta_messages_delivered_total{path=\"local\"}"),
        Some(nf),
        "{pb}"
    );
    assert_eq!(
        sample(&pb, "xmta_messages_accepted_total{path=\"smtp\"}"),
        Some(0.0)
    );
    assert!(
        sample(&pb, "xmta_s2s_connections{direction=\"inbound\"}").unwrap() >= 1.0,
        "{pb}"
    );
    assert!(
        sample(
            &pb,
            "xmta_dialback_total{role=\"inbound\",result=\"valid\"}"
        )
        .unwrap()
            >= 1.0,
        "{pb}"
    );
    assert!(
        sample(&pb, "xmta_store_flush_seconds_count").unwrap() >= nf,
        "{pb}"
    );
    assert!(
        pb.contains("xmta_store_flush_seconds_bucket{le=\"+Inf\"}"),
        "{pb}"
    );
}

/// SIGTERM while mail flows: the server exits 0, and after a restart every message the
/// sender accepted arrives exactly once. SIGHUP before that changes the log level.
#[test]
fn sigterm_loses_no_mail_in_flight_and_sighup_reloads() {
    let (mut a, b) = pair("127.0.0.162", "127.0.0.163", "", "");
    a.start();
    let mut srv = Guard(Some(spawn_serve(&b)));
    a.add_user("alice@a.test");
    b.add_user("bob@b.test");

    // SIGHUP: the log level changes at once, so does a delivery key; a key that needs a
    // restart is named (and only that one).
    let cfg = std::fs::read_to_string(&b.config).unwrap();
    let cfg = cfg
        .replace("level = \"xmta=debug,info\"", "level = \"info\"")
        .replace("retry_initial_secs = 1", "retry_initial_secs = 2")
        + "\n[dns]\nnameservers = [\"127.0.0.163:53\"]\n";
    std::fs::write(&b.config, cfg).unwrap();
    srv.signal("HUP");
    b.wait_for("the reload", 10, || {
        b.log().contains("SIGHUP: config reloaded")
    });
    let log = b.log();
    assert!(log.contains("SIGHUP: log level changed"), "{log}");
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("takes effect only after a restart"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("dns.nameservers"), "{log}");
    let reloaded = log
        .lines()
        .find(|l| l.contains("SIGHUP: config reloaded"))
        .unwrap();
    assert!(reloaded.contains("delivery"), "{reloaded}");

    let total = 30;
    let stopped = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let sender = s.spawn(|| {
            for i in 0..total {
                // The second half is sent only once b.test is down.
                while i == total / 2 && !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                let m = message("alice@a.test", "bob@b.test", &format!("t-{i}"), "x");
                a.send("alice@a.test", &["bob@b.test"], &m);
                std::thread::sleep(std::time::Duration::from_millis(15));
            }
        });
        b.wait_for("some mail", 60, || b.mailbox("bob@b.test").len() >= 5);
        srv.signal("TERM");
        let t0 = Instant::now();
        let st = srv.wait_exit(20);
        eprintln!("stopped in {:?}", t0.elapsed());
        stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(st.success(), "exit status {st}\n{}", b.log_tail(30));
        sender.join().unwrap();
    });
    assert!(b.log().contains("store flushed; bye"), "{}", b.log_tail(30));
    let before = b.mailbox("bob@b.test").len();
    assert!(before <= total / 2, "{before} arrived before the stop");
    let _srv2 = Guard(Some(spawn_serve(&b)));
    b.wait_for("all mail after the restart", 90, || {
        b.mailbox("bob@b.test").len() >= total
    });
    a.wait_for("a's queue to empty", 60, || a.queue().is_empty());
    let got = subjects(&b, "bob@b.test");
    let set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), total, "{got:?}");
    assert_eq!(set.len(), total, "a message twice: {got:?}");
}

/// SIGTERM during an SMTP transaction: the listener stops accepting at once, the open
/// session may finish its DATA (250 after the commit), then the process exits 0.
#[test]
fn sigterm_lets_an_smtp_transaction_finish() {
    use std::io::{BufRead, BufReader, Write};
    let ip = "127.0.0.164";
    let smtp_port = free_port(ip);
    let smtp: std::net::SocketAddr = format!("{ip}:{smtp_port}").parse().unwrap();
    let x = Xmta::new(Spec {
        domain: "b.test",
        ip,
        routes: vec![],
        extra: &format!("[smtp]\nlisten = [\"{smtp}\"]\n\n[shutdown]\ngrace_secs = 20\n"),
        s2s_extra: "",
    });
    let mut srv = Guard(Some(spawn_serve(&x)));
    x.add_user("bob@b.test");
    let sock = std::net::TcpStream::connect(smtp).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut r = BufReader::new(sock.try_clone().unwrap());
    let mut w = sock;
    let mut reply = |w: &mut std::net::TcpStream, send: &str| -> String {
        if !send.is_empty() {
            w.write_all(send.as_bytes()).unwrap();
        }
        let mut all = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            all.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    assert!(reply(&mut w, "").starts_with("220"));
    assert!(reply(&mut w, "EHLO client.test\r\n").starts_with("250"));
    assert!(reply(&mut w, "MAIL FROM:<carol@c.test>\r\n").starts_with("250"));
    assert!(reply(&mut w, "RCPT TO:<bob@b.test>\r\n").starts_with("250"));
    assert!(reply(&mut w, "DATA\r\n").starts_with("354"));
    srv.signal("TERM");
    // New connections are refused once the listener is gone.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&smtp, std::time::Duration::from_millis(200)).is_ok()
    {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        srv.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "exited during the transaction"
    );
    let msg = "From: carol@c.test\r\nTo: bob@b.test\r\nSubject: in-flight\r\n\r\nhello\r\n.\r\n";
    assert!(reply(&mut w, msg).starts_with("250"), "DATA not accepted");
    assert!(reply(&mut w, "QUIT\r\n").starts_with("221"));
    let st = srv.wait_exit(20);
    assert!(st.success(), "exit status {st}\n{}", x.log_tail(30));
    let store = xmta::store::Store::open(&x.data_dir().join("xmta.redb")).unwrap();
    assert_eq!(store.messages("bob@b.test", "INBOX").unwrap().len(), 1);
}

/// Python's `mailbox` module (a real Maildir and mbox writer) makes both formats with
/// flags and dates; both import with them intact. Its Maildir keeps the date in the mtime
/// (the file name carries the time of writing), its mbox in the `From ` line and the
/// flags in Status/X-Status.
#[test]
fn import_what_python_mailbox_wrote() {
    let x = Xmta::plain("b.test", "127.0.0.167");
    x.add_user("bob@b.test");
    let dir = x.dir.path();
    let script = r#"
import mailbox, sys, time
base = 1600000000
md = mailbox.Maildir(sys.argv[1], create=True)
mb = mailbox.mbox(sys.argv[2], create=True)
flags_md = ["", "S", "RS", "FS", "D", "PS", "ST", "DFPRST"]
flags_mb = ["", "R", "RA", "RF", "T", "RD", "O", "RAFTD"]
for i in range(40):
    text = "From: p%d@py.test\nTo: bob@b.test\nSubject: msg-%d\n\nFrom the start of a line\nbody %d\n" % (i, i, i)
    m = mailbox.MaildirMessage(text)
    m.set_subdir("cur")
    m.set_flags(flags_md[i % 8])
    m.set_date(base + i * 3600)
    md.add(m)
    n = mailbox.mboxMessage(text)
    n.set_flags(flags_mb[i % 8])
    n.set_from("p%d@py.test" % i, time.gmtime(base + i * 60))
    mb.add(n)
mb.flush()
"#;
    let md = dir.join("Maildir");
    let mbox = dir.join("py.mbox");
    let st = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&md)
        .arg(&mbox)
        .status()
        .expect("python3");
    assert!(st.success());
    let o = x.cmd(
        &["import", "maildir", md.to_str().unwrap(), "bob@b.test"],
        b"",
    );
    assert!(
        out_of(&o).contains("imported 40 messages"),
        "{}",
        out_of(&o)
    );
    let o = x.cmd(
        &[
            "import",
            "mbox",
            mbox.to_str().unwrap(),
            "bob@b.test",
            "--folder",
            "Junk",
        ],
        b"",
    );
    assert!(
        out_of(&o).contains("imported 40 messages"),
        "{}",
        out_of(&o)
    );
    let inbox = read_store(&x.data_dir(), "bob@b.test", "INBOX");
    let junk = read_store(&x.data_dir(), "bob@b.test", "Junk");
    let mb_flags = |s: &str| -> Vec<String> {
        let mut v = Vec::new();
        for (c, f) in [
            ('R', "\\Seen"),
            ('A', "\\Answered"),
            ('F', "\\Flagged"),
            ('T', "\\Draft"),
            ('D', "\\Deleted"),
        ] {
            if s.contains(c) {
                v.push(f.to_string());
            }
        }
        v.sort();
        v
    };
    let flags_md = ["", "S", "RS", "FS", "D", "PS", "ST", "DFPRST"];
    let flags_mb = ["", "R", "RA", "RF", "T", "RD", "O", "RAFTD"];
    for i in 0..40usize {
        assert_eq!(
            inbox[&i],
            (info_flags(flags_md[i % 8]), 1_600_000_000 + i as i64 * 3600),
            "maildir msg-{i}"
        );
        assert_eq!(
            junk[&i],
            (mb_flags(flags_mb[i % 8]), 1_600_000_000 + i as i64 * 60),
            "mbox msg-{i}"
        );
    }
    // Python quoted the body's "From " line (mboxo); the import restores it.
    let store = xmta::store::Store::open(&x.data_dir().join("xmta.redb")).unwrap();
    let uid = store.messages("bob@b.test", "Junk").unwrap()[0].uid;
    let body = String::from_utf8(
        store
            .message_body("bob@b.test", "Junk", uid)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(
        body.contains("\r\n\r\nFrom the start of a line\r\n"),
        "{body:?}"
    );
}

/// The registry check (only with a `[registry]` zone; that section's typed config comes
/// with the registry feature, so the section is read from the file as it stands).
#[test]
fn check_registry_listing() {
    let dns = Dns::start(
        "127.0.0.168",
        &[
            ("a.test.reg.test", "127.0.0.2"),
            ("s.test.reg.test", "127.0.0.4"),
            ("p.test.reg.test", "127.0.0.3"),
        ],
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verdict = |domain: &str, registry: &str| {
        let base = format!(
            "[server]\ndomains = [\"{domain}\"]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"{}\"]\n",
            dir.path().display(),
            dns.addr
        );
        let mut cfg = xmta::config::Config::parse(&base, "test").unwrap();
        let file = dir.path().join(format!("{domain}.toml"));
        std::fs::write(&file, format!("{base}{registry}")).unwrap();
        cfg.source = file.display().to_string();
        rt.block_on(xmta::ops::check::registry(&cfg))
            .map(|l| l.to_string())
    };
    let zone = "[registry]\nzone = \"reg.test\"\n";
    assert_eq!(verdict("a.test", ""), None);
    let l = verdict("a.test", "[registry]\n").unwrap();
    assert!(l.starts_with("PASS registry: no registry.zone"), "{l}");
    let l = verdict("a.test", zone).unwrap();
    assert!(l.starts_with("PASS registry: listed in reg.test"), "{l}");
    let l = verdict("s.test", zone).unwrap();
    assert!(
        l.starts_with("FAIL registry: suspended") && l.contains("s.test.reg.test."),
        "{l}"
    );
    let l = verdict("p.test", zone).unwrap();
    assert!(l.starts_with("WARN registry: provisional"), "{l}");
    let l = verdict("n.test", zone).unwrap();
    assert!(
        l.starts_with("WARN registry: not listed") && l.contains("n.test.reg.test."),
        "{l}"
    );
}
