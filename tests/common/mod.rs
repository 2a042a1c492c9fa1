//! Test harness: real xmta processes on loopback addresses, each with its own temp dir,
//! config and ports. Processes are killed when the handle drops (also on test failure),
//! and their logs are printed when a test panics.

#![allow(dead_code)]

pub mod c2s;
pub mod crash;
pub mod dovecot;
pub mod ejabberd;
pub mod imap;
pub mod ops;
pub mod postfix;
pub mod prosody;
pub mod registry;
pub mod reload;
pub mod smtp;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_xmta");

/// A free TCP port on `ip` (bound and released; tests use distinct IPs to avoid clashes).
pub fn free_port(ip: &str) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind for a free port");
    l.local_addr().expect("local addr").port()
}

pub struct Xmta {
    pub name: String,
    pub domain: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
}

pub struct Spec<'a> {
    pub domain: &'a str,
    pub ip: &'a str,
    /// (domain, "ip:port") static routes.
    pub routes: Vec<(String, String)>,
    /// Extra TOML appended to the sections (already with headers).
    pub extra: &'a str,
    pub s2s_extra: &'a str,
}

impl Xmta {
    pub fn new(spec: Spec<'_>) -> Xmta {
        let dir = tempfile::Builder::new()
            .prefix(&format!("xmta-{}-", spec.domain))
            .tempdir()
            .expect("tempdir");
        let port = free_port(spec.ip);
        let addr: SocketAddr = format!("{}:{port}", spec.ip).parse().expect("addr");
        let mut routes = String::new();
        for (d, t) in &spec.routes {
            routes.push_str(&format!("\"{d}\" = \"{t}\"\n"));
        }
        let cfg = format!(
            r#"[server]
domains = ["{domain}"]
data_dir = "{data}"

[s2s]
listen = ["{addr}"]
tls = "off"
handshake_timeout_secs = 10
idle_timeout_secs = 60
{s2s_extra}

[s2s.routes]
{routes}

[delivery]
retry_initial_secs = 1
retry_max_secs = 2
receipt_timeout_secs = 10

[log]
level = "xmta=debug,info"

{extra}
"#,
            domain = spec.domain,
            data = dir.path().join("data").display(),
            s2s_extra = spec.s2s_extra,
            extra = spec.extra,
        );
        let config = dir.path().join("xmta.toml");
        std::fs::write(&config, cfg).expect("write config");
        Xmta {
            name: spec.domain.to_string(),
            domain: spec.domain.to_string(),
            dir,
            config,
            addr,
            child: None,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("xmta.log")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `xmta serve` and waits until its s2s port and admin socket answer.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn xmta serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let sock = self.data_dir().join("admin.sock");
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "{} exited at start ({status}):\n{}",
                    self.name,
                    self.log_tail(50)
                );
            }
            let port_up =
                TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok();
            let admin_up = std::os::unix::net::UnixStream::connect(&sock).is_ok();
            if port_up && admin_up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come up:\n{}",
                self.name,
                self.log_tail(50)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_sigterm(c.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs an xmta command against this server's config.
    pub fn cmd(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xmta");
        if let Some(mut si) = child.stdin.take() {
            let _ = si.write_all(stdin);
        }
        child.wait_with_output().expect("xmta output")
    }

    /// Runs a command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let out = self.cmd(args, stdin);
        assert!(
            out.status.success(),
            "xmta {args:?} failed: {}\n--- {} log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.name,
            self.log_tail(40)
        );
        out.stdout
    }

    pub fn add_user(&self, address: &str) {
        self.ok(&["user", "add", address, "--password-stdin"], b"secret\n");
    }

    pub fn send(&self, from: &str, rcpts: &[&str], message: &[u8]) {
        let mut args = vec!["send", "--from", from];
        args.extend_from_slice(rcpts);
        self.ok(&args, message);
    }

    /// (uid, size, from, subject) lines of a mailbox.
    pub fn mailbox(&self, address: &str) -> Vec<MailboxLine> {
        let out = String::from_utf8(self.ok(&["mailbox", "list", address], b"")).expect("utf8");
        out.lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                MailboxLine {
                    uid: f[0].parse().expect("uid"),
                    size: f[1].parse().expect("size"),
                    from: f.get(3).unwrap_or(&"").to_string(),
                    subject: f.get(4).unwrap_or(&"").to_string(),
                }
            })
            .collect()
    }

    /// The subjects in a mailbox, sorted.
    pub fn subjects(&self, address: &str) -> Vec<String> {
        let mut s: Vec<String> = self
            .mailbox(address)
            .into_iter()
            .map(|l| l.subject)
            .collect();
        s.sort();
        s
    }

    pub fn show(&self, address: &str, uid: u32) -> Vec<u8> {
        self.ok(&["mailbox", "show", address, &uid.to_string()], b"")
    }

    pub fn queue(&self) -> Vec<String> {
        let out = String::from_utf8(self.ok(&["queue", "list"], b"")).expect("utf8");
        out.lines().map(str::to_string).collect()
    }

    /// Polls `cond` until it holds or `secs` pass.
    pub fn wait_for(&self, what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- {} log ---\n{}",
                self.name,
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Xmta {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log (tail) ---\n{}", self.name, self.log_tail(80));
        }
        self.kill();
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

#[derive(Debug, Clone)]
pub struct MailboxLine {
    pub uid: u32,
    pub size: u64,
    pub from: String,
    pub subject: String,
}

/// Two servers, a.test and b.test, routed to each other.
pub fn pair(ip_a: &str, ip_b: &str, extra_a: &str, extra_b: &str) -> (Xmta, Xmta) {
    pair_with(ip_a, ip_b, extra_a, extra_b, "", "")
}

pub fn pair_with(
    ip_a: &str,
    ip_b: &str,
    extra_a: &str,
    extra_b: &str,
    s2s_a: &str,
    s2s_b: &str,
) -> (Xmta, Xmta) {
    // Ports first, so each config can name the other's.
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip: ip_a,
        routes: vec![],
        extra: extra_a,
        s2s_extra: s2s_a,
    });
    let mut b = Xmta::new(Spec {
        domain: "b.test",
        ip: ip_b,
        routes: vec![],
        extra: extra_b,
        s2s_extra: s2s_b,
    });
    set_route(&mut a, "b.test", &b.addr.to_string());
    set_route(&mut b, "a.test", &a.addr.to_string());
    (a, b)
}

pub fn set_route(x: &mut Xmta, domain: &str, target: &str) {
    let cfg = std::fs::read_to_string(&x.config).expect("config");
    let cfg = cfg.replacen(
        "[s2s.routes]\n",
        &format!("[s2s.routes]\n\"{domain}\" = \"{target}\"\n"),
        1,
    );
    std::fs::write(&x.config, cfg).expect("config");
}

pub fn message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test>\r\nDate: Tue, 01 Dec 2026 08:00:00 +0000\r\n\r\n{body}\r\n").into_bytes()
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// A raw TCP peer for scripted s2s dialogs.
pub struct Raw {
    pub sock: TcpStream,
    pub got: String,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Raw {
            sock,
            got: String::new(),
        }
    }

    pub fn send(&mut self, s: &str) {
        use std::io::Write as _;
        // A peer may close first; that is what some dialogs test.
        let _ = self.sock.write_all(s.as_bytes());
    }

    /// Reads until `pred(all input so far)` holds, EOF, or `secs` pass; true if pred held.
    pub fn read_until(&mut self, secs: u64, pred: impl Fn(&str) -> bool) -> bool {
        use std::io::Read as _;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 65536];
        loop {
            if pred(&self.got) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            match self.sock.read(&mut buf) {
                Ok(0) => return pred(&self.got),
                Ok(n) => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return pred(&self.got),
            }
        }
    }

    /// True once the peer has closed the connection (EOF or reset) within `secs`.
    pub fn closed_within(&mut self, secs: u64) -> bool {
        use std::io::Read as _;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            match self.sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Sends a stream header `from` -> `to` and reads the answer up to the features.
    pub fn open_stream(&mut self, from: &str, to: &str) -> String {
        self.send(&format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{from}' to='{to}' version='1.0'>"));
        assert!(
            self.read_until(10, |s| s.contains("</stream:features>")),
            "no features: {}",
            self.got
        );
        attr(&self.got, "stream:stream", "id").expect("stream id")
    }
}

/// The value of attribute `name` in the first `<tag ...>` of `s` (single or double quotes).
pub fn attr(s: &str, tag: &str, name: &str) -> Option<String> {
    let start = s.find(&format!("<{tag} "))?;
    let end = start + s[start..].find('>')?;
    let head = &s[start..end];
    for q in ['\'', '"'] {
        let pat = format!(" {name}={q}");
        if let Some(p) = head.find(&pat) {
            let v = &head[p + pat.len()..];
            return v.find(q).map(|e| v[..e].to_string());
        }
    }
    None
}

/// A scripted XMPP server for a domain the tests control ("evil.test"): it accepts every
/// stream, answers every dialback request with type='valid', and records what arrives.
pub struct FakePeer {
    pub addr: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl FakePeer {
    pub fn start(ip: &str, domain: &'static str) -> FakePeer {
        FakePeer::start_with(ip, domain, true)
    }

    /// `verify_valid = false`: every db:verify is answered type='invalid', like an
    /// authoritative server that does not know the key.
    pub fn start_with(ip: &str, domain: &'static str, verify_valid: bool) -> FakePeer {
        FakePeer::spawn(ip, domain, verify_valid, None)
    }

    /// Also answers disco#info with the mail feature (urn:xmpp:mta:0), over a stream of its
    /// own to `back` (the asking server's s2s address) as a server must, so that an xmta
    /// sends it mail stanzas. It never sends a receipt.
    pub fn start_mta(ip: &str, domain: &'static str, back: SocketAddr) -> FakePeer {
        FakePeer::spawn(ip, domain, true, Some(back))
    }

    fn spawn(
        ip: &str,
        domain: &'static str,
        verify_valid: bool,
        mta: Option<SocketAddr>,
    ) -> FakePeer {
        let listener = TcpListener::bind((ip, 0)).expect("bind fake peer");
        let addr = listener.local_addr().expect("addr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(sock) = conn else { return };
                let log = log2.clone();
                std::thread::spawn(move || fake_conn(sock, domain, log, verify_valid, mta));
            }
        });
        FakePeer { addr, log }
    }

    pub fn seen(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

fn fake_conn(
    sock: TcpStream,
    domain: &str,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    verify_valid: bool,
    mta: Option<SocketAddr>,
) {
    use std::io::{Read as _, Write as _};
    let mut sock = sock;
    let _ = sock.set_read_timeout(Some(Duration::from_secs(30)));
    let mut got = String::new();
    let mut buf = [0u8; 65536];
    let mut header_done = false;
    let mut pos = 0usize;
    loop {
        let n = match sock.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        log.lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(&buf[..n]));
        if !header_done {
            let Some(h) = got.find("<stream:stream") else {
                continue;
            };
            let Some(e) = got[h..].find('>') else {
                continue;
            };
            let peer = attr(&got[h..], "stream:stream", "from").unwrap_or_default();
            let _ = sock.write_all(format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{domain}' to='{peer}' id='fake-{n}' version='1.0'><stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>").as_bytes());
            header_done = true;
            pos = h + e + 1;
        }
        loop {
            let rest = &got[pos..];
            let tags: &[&str] = if mta.is_some() {
                &["<db:verify ", "<db:result ", "<iq "]
            } else {
                &["<db:verify ", "<db:result "]
            };
            let next = tags
                .iter()
                .filter_map(|t| rest.find(t).map(|i| (i, *t)))
                .min();
            let Some((i, tag)) = next else { break };
            let close = match tag {
                "<db:verify " => "</db:verify>",
                "<db:result " => "</db:result>",
                _ => "</iq>",
            };
            let Some(end) = rest[i..].find(close) else {
                break;
            };
            let el = &rest[i..i + end];
            let t = &tag[1..tag.len() - 1];
            let from = attr(el, t, "from").unwrap_or_default();
            let id = attr(el, t, "id").unwrap_or_default();
            let verdict = if verify_valid { "valid" } else { "invalid" };
            let answer = match t {
                "db:verify" => {
                    format!("<db:verify from='{domain}' to='{from}' id='{id}' type='{verdict}'/>")
                }
                "db:result" => format!("<db:result from='{domain}' to='{from}' type='valid'/>"),
                _ if el.contains("disco#info") && attr(el, t, "type").as_deref() == Some("get") => {
                    let answer = format!(
                        "<iq type='result' from='{domain}' to='{from}' id='{id}'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='server' type='im'/><feature var='urn:xmpp:mta:0'/></query></iq>"
                    );
                    if let Some(back) = mta {
                        let domain = domain.to_string();
                        std::thread::spawn(move || {
                            let mut r = Raw::connect(back);
                            r.open_stream(&domain, &from);
                            r.send(&format!(
                                "<db:result from='{domain}' to='{from}'>fake-key</db:result>"
                            ));
                            if r.read_until(15, |s| s.contains("type='valid'")) {
                                r.send(&answer);
                                // Keep the stream open while the test runs.
                                r.closed_within(120);
                            }
                        });
                    }
                    String::new()
                }
                _ => String::new(),
            };
            let _ = sock.write_all(answer.as_bytes());
            pos += i + end + close.len();
        }
    }
}

/// A test CA and a certificate for each domain, as PEM files in `dir`.
/// Returns the CA path and (cert, key) paths per domain. Valid from last year to five
/// years ahead: ejabberd 23.01 schedules a timer for each certificate's expiry and loads
/// none at all ("TLS failed: no_certfile") with rcgen's default not_after of 4096.
pub fn make_certs(dir: &Path, domains: &[&str]) -> (PathBuf, Vec<(PathBuf, PathBuf)>) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let year = 1970 + (secs / 31_556_952) as i32;
    let bounded = |p: &mut CertificateParams| {
        p.not_before = date_time_ymd(year - 1, 1, 1);
        p.not_after = date_time_ymd(year + 5, 1, 1);
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    bounded(&mut ca_params);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "xmta test CA");
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca cert");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).expect("write ca");
    let mut out = Vec::new();
    for d in domains {
        let mut p = CertificateParams::new(vec![d.to_string()]).expect("params");
        bounded(&mut p);
        p.distinguished_name.push(DnType::CommonName, *d);
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &ca).expect("sign");
        let cp = dir.join(format!("{d}.pem"));
        let kp = dir.join(format!("{d}.key"));
        std::fs::write(&cp, cert.pem()).expect("write cert");
        std::fs::write(&kp, key.serialize_pem()).expect("write key");
        out.push((cp, kp));
    }
    (ca_path, out)
}

/// Replaces the `tls = ...` line of a server's config and adds certificate keys.
pub fn set_tls(x: &mut Xmta, mode: &str, cert: Option<(&Path, &Path)>, ca: Option<&Path>) {
    let mut cfg = std::fs::read_to_string(&x.config).expect("config");
    let mut lines = format!("tls = \"{mode}\"\n");
    if let Some((c, k)) = cert {
        lines.push_str(&format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            c.display(),
            k.display()
        ));
    }
    if let Some(ca) = ca {
        lines.push_str(&format!("ca = \"{}\"\n", ca.display()));
    }
    cfg = cfg.replacen("tls = \"off\"\n", &lines, 1);
    std::fs::write(&x.config, cfg).expect("config");
}

impl Xmta {
    /// A server for `domain` on a free port of `ip`, no routes, no extra config.
    pub fn plain(domain: &str, ip: &str) -> Xmta {
        Xmta::new(Spec {
            domain,
            ip,
            routes: vec![],
            extra: "",
            s2s_extra: "",
        })
    }

    /// A server for `domain` listening on port 5269 of `ip`: what a peer that finds it by
    /// A record alone (Prosody with a hosts file) connects to.
    pub fn on_default_port(domain: &str, ip: &str) -> Xmta {
        let mut x = Xmta::plain(domain, ip);
        x.use_default_port();
        x
    }

    /// Moves the s2s listener to port 5269 on the same address (where peers that resolve
    /// the domain by A record, like Prosody's dialback, connect).
    pub fn use_default_port(&mut self) {
        let ip = self.addr.ip();
        let cfg = std::fs::read_to_string(&self.config).expect("config");
        let cfg = cfg.replacen(
            &format!("listen = [\"{}\"]", self.addr),
            &format!("listen = [\"{ip}:5269\"]"),
            1,
        );
        std::fs::write(&self.config, cfg).expect("config");
        self.addr = format!("{ip}:5269").parse().expect("addr");
    }
}

/// About 2 MB: headers, then pseudo-random binary (every byte value), as a `binary` part.
pub fn two_mb(from: &str, to: &str, subject: &str, seed: u32) -> Vec<u8> {
    let mut m = format!("From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Tue, 01 Dec 2026 08:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n").into_bytes();
    let mut x = seed;
    for _ in 0..2_000_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        m.push((x >> 16) as u8);
    }
    m
}
