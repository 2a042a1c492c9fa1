//! Private Postfix 3.7, smtp-sink and dnsmasq instances for the Postfix tests.
//!
//! Postfix: `main.cf` and a minimal `master.cf` (no chroot) in a temp dir, its own
//! `queue_directory` and `data_directory` there, `maillog_file` in the dir (postlogd),
//! `inet_interfaces = 127.0.0.1` (Postfix insists on an interface address; 127.0.0.x other
//! than .1 is not one) while the smtpd service in master.cf listens on the test's own
//! `IP:PORT`. Started with `postfix -c DIR start` (as root); dropping the handle runs
//! `postfix -c DIR stop` and then kills the master pid from its pid file, and only it.
//!
//! smtp-sink: `smtp-sink -u postfix -d DIR/%M. IP:PORT 64` dumps each transaction into a
//! file. dnsmasq: authoritative for `.test` (unknown names NXDOMAIN), no upstream, serving
//! the SRV records a test gives it on its own port.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = PathBuf::from(d).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed (scripts/test installs postfix, swaks, dnsmasq-base)");
}

pub fn wait_port(addr: SocketAddr, secs: u64, what: &str, tail: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr}:\n{}",
            tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn open_dir(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

pub struct Postfix {
    pub dir: tempfile::TempDir,
    /// The smtpd listener.
    pub smtp: SocketAddr,
    etc: PathBuf,
    running: bool,
}

/// The services a relay needs; none chrooted, so lookups and paths work as configured.
const MASTER_CF: &str = "\
SMTPD_ADDR inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

impl Postfix {
    /// Starts a Postfix whose smtpd listens on `ip` (a free port). `main_extra` is appended
    /// to main.cf (it may name `ETC/` for files of `files`, written into the config dir).
    pub fn start(ip: &str, main_extra: &str, files: &[(&str, &str)]) -> Postfix {
        let dir = tempfile::Builder::new()
            .prefix("postfix-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        open_dir(&root);
        let etc = root.join("etc");
        let queue = root.join("queue");
        let data = root.join("data");
        for d in [&etc, &queue, &data] {
            std::fs::create_dir_all(d).expect("mkdir");
            open_dir(d);
        }
        // Postfix wants its data directory owned by mail_owner (the queue by root).
        let st = Command::new("chown")
            .arg("postfix")
            .arg(&data)
            .status()
            .expect("chown");
        assert!(st.success(), "chown postfix {}", data.display());
        let port = super::free_port(ip);
        let smtp: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
        let main_extra = main_extra.replace("ETC/", &format!("{}/", etc.display()));
        let main = format!(
            "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
lmtp_host_lookup = native
smtp_host_lookup = native
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C
biff = no
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
{main_extra}
",
            queue = queue.display(),
            data = data.display(),
            root = root.display(),
        );
        std::fs::write(etc.join("main.cf"), main).expect("main.cf");
        std::fs::write(
            etc.join("master.cf"),
            MASTER_CF.replace("SMTPD_ADDR", &smtp.to_string()),
        )
        .expect("master.cf");
        for (name, text) in files {
            std::fs::write(etc.join(name), text).expect("map file");
        }
        let mut p = Postfix {
            dir,
            smtp,
            etc,
            running: false,
        };
        let out = p.postfix(&["start"]);
        p.running = true;
        assert!(
            out.status.success(),
            "postfix start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            p.maillog()
        );
        wait_port(smtp, 20, "postfix smtpd", || p.maillog());
        p
    }

    fn postfix(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("postfix"))
            .arg("-c")
            .arg(&self.etc)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run postfix")
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Waits until the maillog contains `what`.
    pub fn wait_log(&self, what: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.maillog().contains(what) {
            assert!(
                Instant::now() < deadline,
                "postfix log never showed {what:?}:\n{}",
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- postfix maillog ---\n{}", self.maillog());
        }
        if !self.running {
            return;
        }
        let pid = self.master_pid();
        let _ = self.postfix(&["stop"]);
        if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

/// `smtp-sink` dumping every transaction into a file under its dir.
pub struct SmtpSink {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    child: Child,
}

impl SmtpSink {
    pub fn start(ip: &str) -> SmtpSink {
        let dir = tempfile::Builder::new()
            .prefix("smtp-sink-")
            .tempdir()
            .expect("tempdir");
        let dumps = dir.path().join("dumps");
        std::fs::create_dir_all(&dumps).expect("mkdir");
        open_dir(dir.path());
        std::fs::set_permissions(&dumps, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let port = super::free_port(ip);
        let addr: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
        let child = Command::new(bin("smtp-sink"))
            .arg("-u")
            .arg("postfix")
            .arg("-d")
            .arg(format!("{}/%M.", dumps.display()))
            .arg(addr.to_string())
            .arg("64")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp-sink");
        let s = SmtpSink { dir, addr, child };
        wait_port(addr, 10, "smtp-sink", String::new);
        s
    }

    /// The contents of every dumped transaction.
    pub fn dumps(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("dumps")) {
            for e in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path()) {
                    out.push(s);
                }
            }
        }
        out
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private dnsmasq answering `_xmpp-server._tcp` SRV records and NXDOMAIN for the rest
/// of `.test`.
pub struct Dnsmasq {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// `srv`: (domain, target host, port).
    pub fn start(ip: &str, srv: &[(&str, &str, u16)]) -> Dnsmasq {
        Dnsmasq::launch(ip, srv, true)
    }

    /// A dnsmasq that knows nothing and has no upstream: it answers REFUSED to every
    /// query (a DNS failure, as opposed to NXDOMAIN).
    pub fn refusing(ip: &str) -> Dnsmasq {
        Dnsmasq::launch(ip, &[], false)
    }

    fn launch(ip: &str, srv: &[(&str, &str, u16)], authoritative: bool) -> Dnsmasq {
        let dir = tempfile::Builder::new()
            .prefix("dnsmasq-")
            .tempdir()
            .expect("tempdir");
        let port = super::free_port(ip);
        let addr: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
        let mut args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            "--no-daemon".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-poll".into(),
            "--bind-interfaces".into(),
            "--conf-file=/dev/null".into(),
            "--user=root".into(),
            format!("--listen-address={ip}"),
            format!("--port={port}"),
            format!("--pid-file={}/pid", dir.path().display()),
        ];
        if authoritative {
            args.push("--local=/test/".into());
        }
        for (domain, target, p) in srv {
            args.push(format!(
                "--srv-host=_xmpp-server._tcp.{domain},{target},{p},0,10"
            ));
        }
        let child = Command::new(bin("dnsmasq"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let d = Dnsmasq {
            addr,
            child,
            _dir: dir,
        };
        wait_port(addr, 10, "dnsmasq", String::new);
        d
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `message` (CRLF line ends) with swaks through `server`; panics unless swaks
/// succeeds.
pub fn swaks(server: SocketAddr, from: &str, to: &[&str], message: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new(bin("swaks"))
        .arg("--server")
        .arg(server.ip().to_string())
        .arg("--port")
        .arg(server.port().to_string())
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(to.join(","))
        .arg("--helo")
        .arg("client.test")
        .arg("--data")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run swaks");
    if let Some(mut si) = child.stdin.take() {
        // swaks ends the data with CRLF "." CRLF itself: the message's own final line end
        // would otherwise arrive as an extra empty line.
        let m = message.strip_suffix(b"\r\n").unwrap_or(message);
        si.write_all(m).expect("swaks stdin");
    }
    let out = child.wait_with_output().expect("swaks output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "swaks failed:\n{text}");
    text
}
