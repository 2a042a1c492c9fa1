//! Helpers for the operations tests (tests/ops.rs): a private dnsmasq on a chosen port,
//! certificates with chosen names and validity, a Maildir generator, a Prometheus scrape,
//! and an `xmta serve` child whose exit status the test sees.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{BIN, Xmta, free_port};

/// A dnsmasq that answers only the records it is given (NXDOMAIN for the rest of .test).
pub struct Dns {
    pub addr: SocketAddr,
    child: Child,
}

impl Dns {
    /// `a`: (name, ipv4); `srv`: (domain, target, port) for `_xmpp-server._tcp`.
    pub fn start(ip: &str, a: &[(&str, &str)], srv: &[(&str, &str, u16)]) -> Dns {
        let port = free_port(ip);
        let mut args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            "--no-daemon".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-poll".into(),
            "--bind-interfaces".into(),
            "--conf-file=/dev/null".into(),
            "--pid-file=".into(),
            "--user=root".into(),
            "--local=/test/".into(),
            format!("--listen-address={ip}"),
            format!("--port={port}"),
        ];
        for (name, addr) in a {
            args.push(format!("--host-record={name},{addr}"));
        }
        for (domain, target, p) in srv {
            args.push(format!(
                "--srv-host=_xmpp-server._tcp.{domain},{target},{p},0,10"
            ));
        }
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("dnsmasq is not installed (scripts/test installs dnsmasq-base)");
        let mut child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dnsmasq");
        let addr: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("dnsmasq exited: {st}");
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Dns { addr, child }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for `names`, valid from `from_year` to `to_year` (Jan 1st).
pub fn cert(
    dir: &Path,
    tag: &str,
    names: &[&str],
    from_year: i32,
    to_year: i32,
) -> (PathBuf, PathBuf) {
    use rcgen::{CertificateParams, DnType, KeyPair, date_time_ymd};
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    p.not_before = date_time_ymd(from_year, 1, 1);
    p.not_after = date_time_ymd(to_year, 1, 1);
    p.distinguished_name.push(DnType::CommonName, names[0]);
    let key = KeyPair::generate().expect("key");
    let c = p.self_signed(&key).expect("self-signed");
    let cp = dir.join(format!("{tag}.pem"));
    let kp = dir.join(format!("{tag}.key"));
    std::fs::write(&cp, c.pem()).expect("write cert");
    std::fs::write(&kp, key.serialize_pem()).expect("write key");
    (cp, kp)
}

pub fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    1970 + (secs / 31_556_952) as i32
}

/// Runs `xmta check` with `config`; returns (exit code, stdout).
pub fn check(config: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("check")
        .output()
        .expect("xmta check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// GET `path` from an HTTP server; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of one sample line (`name{labels}`) of a Prometheus text page.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

/// `xmta serve` for `x`'s config as a child of the test (so it sees the exit status);
/// waits for the s2s port and the admin socket.
pub fn spawn_serve(x: &Xmta) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(x.log_path())
        .expect("log");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&x.config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn serve");
    let sock = x.data_dir().join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("serve exited at start ({st}):\n{}", x.log_tail(40));
        }
        if TcpStream::connect_timeout(&x.addr, Duration::from_millis(200)).is_ok()
            && std::os::unix::net::UnixStream::connect(&sock).is_ok()
        {
            return child;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not come up:\n{}",
            x.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child on drop (also on panic).
pub struct Guard(pub Option<Child>);

impl Guard {
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.0 {
            let st = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status()
                .expect("kill");
            assert!(st.success());
        }
    }

    /// Waits up to `secs` for the exit; its status.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let mut c = self.0.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = c.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("did not exit within {secs} s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The flags of message `i` in generated Maildirs: a mix of every letter.
pub fn maildir_info(i: usize) -> &'static str {
    const INFOS: [&str; 8] = ["", "S", "RS", "FS", "D", "PS", "ST", "DFPRST"];
    INFOS[i % INFOS.len()]
}

pub fn info_flags(info: &str) -> Vec<String> {
    let mut v: Vec<String> = info
        .chars()
        .map(|c| {
            match c {
                'D' => "\\Draft",
                'F' => "\\Flagged",
                'P' => "$Forwarded",
                'R' => "\\Answered",
                'S' => "\\Seen",
                'T' => "\\Deleted",
                _ => unreachable!(),
            }
            .to_string()
        })
        .collect();
    v.sort();
    v
}

/// A Maildir of `n` messages (subject `msg-<i>`); returns (i, date, info) per message.
/// Every 7th file has a name without a time (its date is the file's mtime); every 5th is
/// in new/ without flags.
pub fn make_maildir(dir: &Path, n: usize) -> Vec<(usize, i64, &'static str)> {
    for s in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(s)).expect("mkdir");
    }
    let mut out = Vec::new();
    let base = 1_700_000_000i64;
    for i in 0..n {
        let date = base + (i as i64) * 97;
        let body = format!(
            "From: someone{i}@old.example\nTo: bob@b.test\nSubject: msg-{i}\nMessage-ID: <{i}@old.example>\nDate: Tue, 14 Nov 2023 22:13:20 +0000\n\nbody {i}\n"
        );
        let (sub, info) = if i % 5 == 0 {
            ("new", "")
        } else {
            ("cur", maildir_info(i))
        };
        let stem = if i % 7 == 0 {
            format!("imported-{i}")
        } else {
            format!("{date}.M{i}P1.oldhost")
        };
        let name = if sub == "cur" {
            format!("{stem}:2,{info}")
        } else {
            stem
        };
        let p = dir.join(sub).join(name);
        std::fs::write(&p, body).expect("write");
        if i % 7 == 0 {
            let f = std::fs::File::options().write(true).open(&p).expect("open");
            f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(date as u64))
                .expect("mtime");
        }
        out.push((i, date, info));
    }
    out
}
