//! IMAP test helpers: an xmta with its IMAP listener on, running real client programs
//! (Python imaplib, mbsync, mutt, fetchmail) with a deadline, and a raw IMAP line client
//! for bad-input dialogs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{Spec, Xmta, free_port};

/// The `[imap]` section for a plaintext listener on `ip` (plus `more` keys).
pub fn imap_extra(ip: &str, more: &str) -> (String, SocketAddr) {
    let port = free_port(ip);
    let addr: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
    (
        format!("[imap]\nlisten = [\"{addr}\"]\nallow_plaintext_auth = true\n{more}\n"),
        addr,
    )
}

/// A started xmta for `domain` on `ip` with IMAP on, and the IMAP address.
pub fn imap_server(domain: &str, ip: &str, more: &str) -> (Xmta, SocketAddr) {
    let (extra, addr) = imap_extra(ip, more);
    let mut x = Xmta::new(Spec {
        domain,
        ip,
        routes: vec![],
        extra: &extra,
        s2s_extra: "",
    });
    x.start();
    (x, addr)
}

/// Waits for `child` at most `secs` (reading its output meanwhile, so a chatty child
/// cannot block on a full pipe); kills it on timeout and panics.
pub fn wait_child(child: Child, secs: u64, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            let out = rx.recv().ok().and_then(Result::ok);
            let (o, e) = out.map(|o| (o.stdout, o.stderr)).unwrap_or_default();
            panic!(
                "{what} did not finish in {secs} s\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
        }
    }
}

/// Runs a command to completion within `secs`; panics (with its output) if it fails.
pub fn run_ok(cmd: &mut Command, secs: u64, what: &str) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let out = wait_child(child, secs, what);
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a Python script (`python3 -c`) with arguments; returns its stdout.
pub fn python(script: &str, args: &[&str], secs: u64) -> String {
    let out = run_ok(
        Command::new("python3").arg("-c").arg(script).args(args),
        secs,
        "python3",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Python script started with piped stdin/stdout, for scripts that talk to the test.
pub struct PyChild {
    pub child: Option<Child>,
    pub stdout: BufReader<std::process::ChildStdout>,
}

impl PyChild {
    pub fn start(script: &str, args: &[&str]) -> PyChild {
        let mut child = Command::new("python3")
            .arg("-u")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        PyChild {
            child: Some(child),
            stdout,
        }
    }

    /// The next line the script prints (panics after `secs` or at its end).
    pub fn line(&mut self, secs: u64) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut line = String::new();
        // BufReader has no timeout: read on this thread, watchdog kills the child.
        let pid = self.child.as_ref().map(|c| c.id());
        let watchdog = std::thread::spawn(move || {
            if rx.recv_timeout(Duration::from_secs(secs)).is_err()
                && let Some(pid) = pid
            {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        });
        let n = self.stdout.read_line(&mut line).expect("read");
        let _ = tx.send(());
        let _ = watchdog.join();
        if n == 0 {
            let err = self.finish_err();
            panic!("python ended early:\n{err}");
        }
        line.trim_end().to_owned()
    }

    fn finish_err(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        let _ = child.kill();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.wait();
        err
    }

    pub fn send(&mut self, s: &str) {
        if let Some(c) = self.child.as_mut()
            && let Some(stdin) = c.stdin.as_mut()
        {
            let _ = stdin.write_all(s.as_bytes());
            let _ = stdin.flush();
        }
    }

    /// Waits for the script's end; panics if it failed.
    pub fn finish(mut self, secs: u64) -> String {
        let child = self.child.take().expect("child");
        let out = wait_child(child, secs, "python3");
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        assert!(
            out.status.success(),
            "python failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        rest
    }
}

impl Drop for PyChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw IMAP client: sends lines, reads responses up to a tagged reply.
pub struct ImapRaw {
    pub sock: TcpStream,
    reader: BufReader<TcpStream>,
}

impl ImapRaw {
    pub fn connect(addr: SocketAddr) -> ImapRaw {
        let sock = TcpStream::connect(addr).expect("connect imap");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = BufReader::new(sock.try_clone().expect("clone"));
        let mut c = ImapRaw { sock, reader };
        let greeting = c.read_line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c
    }

    pub fn read_line(&mut self) -> String {
        let mut buf = Vec::new();
        self.reader.read_until(b'\n', &mut buf).expect("read line");
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Whether the server closed the connection (EOF) within `secs`.
    pub fn closed_within(&mut self, secs: u64) -> bool {
        self.sock
            .set_read_timeout(Some(Duration::from_secs(secs)))
            .expect("timeout");
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match self.reader.read_until(b'\n', &mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write");
    }

    /// Sends `tag cmd` and returns all lines up to and including the tagged one.
    pub fn cmd(&mut self, tag: &str, cmd: &str) -> Vec<String> {
        self.send_raw(format!("{tag} {cmd}\r\n").as_bytes());
        self.until_tag(tag)
    }

    pub fn until_tag(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line();
            assert!(!line.is_empty(), "connection closed; got {lines:?}");
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    pub fn login(&mut self, user: &str) {
        let r = self.cmd("l1", &format!("LOGIN {user} secret"));
        assert!(r.last().expect("reply").starts_with("l1 OK"), "{r:?}");
    }
}

/// Writes `content` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write file");
    p
}
