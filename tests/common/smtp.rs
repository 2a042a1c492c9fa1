//! Helpers for the SMTP gateway tests: a raw SMTP client for scripted dialogs, Python
//! (smtplib) scripts, a private dnsmasq, and "good sessions" that must keep delivering
//! while another connection misbehaves.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::Xmta;

/// Runs a Python script (argv: the given args) and returns its stdout; fails on a non-zero
/// exit.
pub fn python(script: &str, args: &[&str]) -> String {
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

/// A raw SMTP client: sends bytes exactly as given, reads replies line by line.
pub struct SmtpRaw {
    pub sock: TcpStream,
    buf: Vec<u8>,
    /// Everything received so far (for failure messages).
    pub log: String,
}

impl SmtpRaw {
    /// Connects without reading the greeting.
    pub fn connect_quiet(addr: SocketAddr) -> SmtpRaw {
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        SmtpRaw {
            sock,
            buf: Vec::new(),
            log: String::new(),
        }
    }

    /// Connects and reads the 220 greeting.
    pub fn connect(addr: SocketAddr) -> SmtpRaw {
        let mut s = SmtpRaw::connect_quiet(addr);
        let (code, text) = s.reply(10).expect("greeting");
        assert_eq!(code, 220, "{text}");
        s
    }

    pub fn send(&mut self, data: &[u8]) {
        // The server may have closed first; that is what some dialogs test.
        let _ = self.sock.write_all(data);
    }

    /// One complete (possibly multi-line) reply: (code, all text lines joined by "\n").
    /// `None` on EOF or when nothing complete arrived within `secs`.
    pub fn reply(&mut self, secs: u64) -> Option<(u16, String)> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut lines = Vec::new();
        loop {
            while let Some(p) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=p).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    let code = lines[0].get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                    return Some((code, lines.join("\n")));
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            let mut b = [0u8; 8192];
            match self.sock.read(&mut b) {
                Ok(0) => return None,
                Ok(n) => {
                    self.log.push_str(&String::from_utf8_lossy(&b[..n]));
                    self.buf.extend_from_slice(&b[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// Sends one command line (CRLF added) and returns the reply code and text.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply(10)
            .unwrap_or_else(|| panic!("no reply to {line:?}; got so far: {}", self.log))
    }

    /// True once the server has closed the connection within `secs` (any further input
    /// is collected into `log`).
    pub fn closed_within(&mut self, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut b = [0u8; 8192];
        while Instant::now() < deadline {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(n) => {
                    self.log.push_str(&String::from_utf8_lossy(&b[..n]));
                    self.buf.extend_from_slice(&b[..n]);
                }
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
}

/// A complete, well-behaved SMTP session delivering one message `subject` from a foreign
/// sender to `rcpt`; asserts every reply.
pub fn good_session(addr: SocketAddr, rcpt: &str, subject: &str) {
    let mut s = SmtpRaw::connect(addr);
    assert_eq!(s.cmd("EHLO good.example").0, 250, "{}", s.log);
    assert_eq!(
        s.cmd("MAIL FROM:<good@elsewhere.example>").0,
        250,
        "{}",
        s.log
    );
    assert_eq!(s.cmd(&format!("RCPT TO:<{rcpt}>")).0, 250, "{}", s.log);
    assert_eq!(s.cmd("DATA").0, 354, "{}", s.log);
    let m = super::message("good@elsewhere.example", rcpt, subject, "A good message.");
    s.send(&m);
    let (code, text) = s.cmd(".");
    assert_eq!(code, 250, "{text}");
    assert_eq!(s.cmd("QUIT").0, 221);
}

/// Runs `bad` on a fresh connection (greeted, after EHLO) while a good session delivers in
/// parallel, with one good message accepted before; then checks both good messages are in
/// `rcpt`'s mailbox (besides `extra_expected` others `bad` delivered on purpose).
pub fn with_good_sessions(
    x: &Xmta,
    addr: SocketAddr,
    rcpt: &str,
    tag: &str,
    extra_expected: usize,
    bad: impl FnOnce(&mut SmtpRaw),
) {
    let before = format!("{tag}-before");
    let during = format!("{tag}-during");
    good_session(addr, rcpt, &before);
    let mut s = SmtpRaw::connect(addr);
    assert_eq!(s.cmd("EHLO bad.example").0, 250, "{}", s.log);
    let r = rcpt.to_string();
    let d = during.clone();
    let parallel = std::thread::spawn(move || good_session(addr, &r, &d));
    bad(&mut s);
    parallel
        .join()
        .expect("the parallel good session delivered");
    let subjects: Vec<String> = x.mailbox(rcpt).into_iter().map(|m| m.subject).collect();
    assert!(subjects.contains(&before), "{subjects:?}");
    assert!(subjects.contains(&during), "{subjects:?}");
    let ours = subjects.iter().filter(|s| s.starts_with(tag)).count();
    assert_eq!(ours, 2 + extra_expected, "{subjects:?}");
}

/// A private dnsmasq on a loopback address: no system config, no upstream, no hosts file.
pub struct Dnsmasq(std::process::Child);

impl Dnsmasq {
    pub fn start(ip: &str, port: u16, args: &[String]) -> Dnsmasq {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("dnsmasq is installed by scripts/test (package dnsmasq-base)");
        let child = Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-daemon",
                "--bind-interfaces",
                "--conf-file=/dev/null",
                "--user=root",
                "--local=/test/",
            ])
            .arg(format!("--listen-address={ip}"))
            .arg(format!("--port={port}"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let addr: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Dnsmasq(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
