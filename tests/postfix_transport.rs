//! Postfix integration (issue 3): the socketmap transport lookup server, driven by a raw
//! netstring client and by a real private Postfix 3.7 (`transport_maps =
//! socketmap:inet:...`), the static-transport alternative, and `xmta postfix-config`.
//! Mail goes swaks -> Postfix -> LMTP -> xmta a.test -> XMPP s2s -> xmta b.test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::postfix::{Dnsmasq, Postfix, swaks};
use common::*;

fn netstring(s: &str) -> String {
    format!("{}:{s},", s.len())
}

/// Reads one netstring reply (None when the server closed the connection).
fn read_reply(c: &mut TcpStream) -> Option<String> {
    let mut len = String::new();
    let mut b = [0u8; 1];
    loop {
        match c.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(_) if b[0] == b':' => break,
            Ok(_) => len.push(b[0] as char),
        }
    }
    let n: usize = len.parse().expect("length");
    let mut data = vec![0u8; n + 1];
    c.read_exact(&mut data).ok()?;
    assert_eq!(data.pop(), Some(b','), "netstring ends with a comma");
    Some(String::from_utf8(data).expect("utf8"))
}

fn ask(c: &mut TcpStream, req: &str) -> String {
    c.write_all(netstring(req).as_bytes()).expect("write");
    read_reply(c).expect("a reply")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).expect("connect socketmap");
    c.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    c
}

#[test]
fn socketmap_answers_and_limits() {
    // x.test has an SRV record, legacy.test has none (NXDOMAIN), b.test a static route.
    let dns = Dnsmasq::start("127.0.0.131", &[("x.test", "xmpp.x.test", 5269)]);
    let ip = "127.0.0.130";
    let lmtp = free_port(ip);
    let sm = free_port(ip);
    let extra = format!(
        "[smtp]\nlmtp = \"{ip}:{lmtp}\"\n\n[dns]\nnameservers = [\"{}\"]\n\n[postfix]\nsocketmap = \"{ip}:{sm}\"\nmax_request_bytes = 200\n",
        dns.addr
    );
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip,
        routes: vec![("b.test".into(), "127.0.0.129:5269".into())],
        extra: &extra,
        s2s_extra: "",
    });
    a.start();
    let addr: SocketAddr = format!("{ip}:{sm}").parse().unwrap();
    common::postfix::wait_port(addr, 10, "socketmap", || a.log_tail(20));
    let ok = format!("OK lmtp:inet:{ip}:{lmtp}");
    let mut c = connect(addr);
    // Postfix asks with full addresses, `*`, and sender addresses; bare domains work too.
    assert_eq!(ask(&mut c, "transport user@b.test"), ok, "static route");
    assert_eq!(ask(&mut c, "transport alice@A.TEST"), ok, "local domain");
    assert_eq!(ask(&mut c, "transport x.test"), ok, "SRV record");
    assert_eq!(ask(&mut c, "transport someone@x.test"), ok, "SRV (cached)");
    assert_eq!(ask(&mut c, "transport user@legacy.test"), "NOTFOUND ");
    assert_eq!(ask(&mut c, "transport *"), "NOTFOUND ");
    assert_eq!(ask(&mut c, "transport .b.test"), "NOTFOUND ");
    assert!(ask(&mut c, "other user@b.test").starts_with("PERM "));
    assert!(ask(&mut c, "transport").starts_with("PERM "));

    // Bad input closes that connection only; others keep working.
    let mut other = connect(addr);
    let mut bad = connect(addr);
    bad.write_all(b"5:abc").expect("write");
    bad.write_all(b"de;").expect("write");
    assert_eq!(read_reply(&mut bad), None, "malformed netstring closes");
    let mut long = connect(addr);
    long.write_all(format!("{}:", 201).as_bytes())
        .expect("write");
    assert_eq!(read_reply(&mut long), None, "over max_request_bytes closes");
    let mut junk = connect(addr);
    junk.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    assert_eq!(read_reply(&mut junk), None, "not a netstring closes");
    assert_eq!(ask(&mut other, "transport user@b.test"), ok);
    assert_eq!(ask(&mut c, "transport user@legacy.test"), "NOTFOUND ");
    assert!(a.is_running());
}

#[test]
fn socketmap_dns_failure_is_temp() {
    // A nameserver that refuses: the lookup fails, the answer is TEMP, not NOTFOUND.
    let dns = Dnsmasq::refusing("127.0.0.146");
    let ip = "127.0.0.145";
    let lmtp = free_port(ip);
    let sm = free_port(ip);
    let extra = format!(
        "[smtp]\nlmtp = \"{ip}:{lmtp}\"\n\n[dns]\nnameservers = [\"{}\"]\n\n[postfix]\nsocketmap = \"{ip}:{sm}\"\n",
        dns.addr
    );
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip,
        routes: vec![],
        extra: &extra,
        s2s_extra: "",
    });
    a.start();
    let addr: SocketAddr = format!("{ip}:{sm}").parse().unwrap();
    common::postfix::wait_port(addr, 10, "socketmap", || a.log_tail(20));
    let mut c = connect(addr);
    let r = ask(&mut c, "transport user@nowhere.test");
    assert!(r.starts_with("TEMP "), "{r}");
    // Not cached: the same question is asked again (and fails again).
    let r = ask(&mut c, "transport user@nowhere.test");
    assert!(r.starts_with("TEMP "), "{r}");
}

/// xmta a.test with an LMTP listener (and the socketmap when `socketmap`), b.test routed.
fn gateway(ip_a: &str, ip_b: &str, socketmap: bool) -> (Xmta, Xmta, SocketAddr, SocketAddr) {
    let lmtp: SocketAddr = format!("{ip_a}:{}", free_port(ip_a)).parse().unwrap();
    let sm: SocketAddr = format!("{ip_a}:{}", free_port(ip_a)).parse().unwrap();
    let mut extra_a = format!("[smtp]\nlmtp = \"{lmtp}\"\n");
    if socketmap {
        extra_a.push_str(&format!("\n[postfix]\nsocketmap = \"{sm}\"\n"));
    }
    let (mut a, mut b) = pair(ip_a, ip_b, &extra_a, "");
    a.start();
    b.start();
    a.add_user("alice@a.test");
    b.add_user("user@b.test");
    (a, b, lmtp, sm)
}

fn assert_arrived(b: &Xmta, sent: &[u8]) {
    b.wait_for("the mail in user@b.test's INBOX", 60, || {
        !b.mailbox("user@b.test").is_empty()
    });
    let list = b.mailbox("user@b.test");
    assert_eq!(list.len(), 1, "{list:?}");
    let stored = b.show("user@b.test", list[0].uid);
    let s = String::from_utf8_lossy(&stored).into_owned();
    assert!(
        stored.ends_with(sent),
        "the stored message must end with the exact bytes sent:\n{s}"
    );
    // Trace: Postfix's Received, then xmta a.test's LMTP Received, then b.test's XMPP one.
    assert!(s.contains("by postfix.test (Postfix)"), "{s}");
    assert!(s.contains("with LMTP"), "{s}");
    assert!(s.contains("with XMPP"), "{s}");
}

#[test]
fn postfix_socketmap_transport_to_xmpp() {
    let (a, b, _lmtp, sm) = gateway("127.0.0.133", "127.0.0.134", true);
    common::postfix::wait_port(sm, 10, "socketmap", || a.log_tail(20));
    // Postfix is configured with exactly the main.cf lines `xmta postfix-config` prints.
    let snippet = String::from_utf8(a.ok(&["postfix-config"], b"")).unwrap();
    let main_cf: String = snippet
        .split("# --- master.cf ---")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        main_cf.contains(&format!(
            "transport_maps = socketmap:inet:{}:{}:transport\n",
            sm.ip(),
            sm.port()
        )),
        "{snippet}"
    );
    let pf = Postfix::start("127.0.0.132", &main_cf, &[]);
    let m = message(
        "alice@a.test",
        "user@b.test",
        "via-postfix-socketmap",
        "Through Postfix, LMTP and XMPP.\r\n.leading dot survives\r\nend",
    );
    swaks(pf.smtp, "alice@a.test", &["user@b.test"], &m);
    assert_arrived(&b, &m);
    pf.wait_log("status=sent", 20);
    assert!(
        pf.maillog().contains(&format!("relay={}", sm.ip())),
        "{}",
        pf.maillog()
    );
    // The transport came from xmta's socketmap (Postfix itself has no route to b.test).
    assert!(
        a.log().contains("request=transport user@b.test"),
        "{}",
        a.log_tail(40)
    );
}

#[test]
fn postfix_static_transport_to_xmpp() {
    let (_a, b, lmtp, _) = gateway("127.0.0.136", "127.0.0.137", false);
    let table = format!("b.test lmtp:inet:{}:{}\n", lmtp.ip(), lmtp.port());
    let pf = Postfix::start(
        "127.0.0.135",
        "transport_maps = texthash:ETC/transport\n",
        &[("transport", &table)],
    );
    let m = message(
        "alice@a.test",
        "user@b.test",
        "via-postfix-static",
        "Static transport line.",
    );
    swaks(pf.smtp, "alice@a.test", &["user@b.test"], &m);
    assert_arrived(&b, &m);
    pf.wait_log("status=sent", 20);
}

#[test]
fn postfix_config_prints_the_lines() {
    let ip = "127.0.0.147";
    let extra = format!(
        "[smtp]\nlmtp = \"{ip}:2424\"\n\n[postfix]\nsocketmap = \"{ip}:7777\"\nmap_name = \"xmta\"\n"
    );
    let a = Xmta::new(Spec {
        domain: "a.test",
        ip,
        routes: vec![],
        extra: &extra,
        s2s_extra: "",
    });
    let out = String::from_utf8(a.ok(&["postfix-config"], b"")).unwrap();
    assert!(
        out.contains(&format!(
            "\ntransport_maps = socketmap:inet:{ip}:7777:xmta\n"
        )),
        "{out}"
    );
    assert!(out.contains("\nrelay_domains = a.test\n"), "{out}");
    assert!(
        out.contains(&format!("#   a.test lmtp:inet:{ip}:2424\n")),
        "{out}"
    );
    assert!(out.contains("\nlmtp      unix"), "{out}");
}
