//! A private Dovecot 2.3 (the reference IMAP server) with an LMTP and an IMAP listener on
//! the test's address: its own config, `base_dir`, `state_dir` and log in a temp dir, a
//! passwd-file passdb/userdb (plaintext passwords), Maildirs owned by `nobody`. Started with
//! `dovecot -c CONF` (it daemonizes); dropping the handle kills the master pid from its pid
//! file, and only it (its children exit with it). Mail is read back with Python's imaplib.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

pub struct Dovecot {
    pub dir: tempfile::TempDir,
    pub lmtp: SocketAddr,
    pub imap: SocketAddr,
    conf: PathBuf,
    running: bool,
}

pub const PASSWORD: &str = "secret";

impl Dovecot {
    /// Prepares (does not start) a Dovecot on `ip` knowing `users` (full addresses).
    pub fn new(ip: &str, users: &[&str]) -> Dovecot {
        let dir = tempfile::Builder::new()
            .prefix("dovecot-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for d in ["run", "state", "home"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        // Mail is written as nobody.
        std::fs::set_permissions(root.join("home"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let lmtp: SocketAddr = format!("{ip}:{}", super::free_port(ip)).parse().unwrap();
        let imap: SocketAddr = format!("{ip}:{}", super::free_port(ip)).parse().unwrap();
        let r = root.display();
        let mut passwd = String::new();
        for u in users {
            passwd.push_str(&format!(
                "{u}:{{PLAIN}}{PASSWORD}:65534:65534::{r}/home/{u}::\n"
            ));
        }
        std::fs::write(root.join("users"), passwd).expect("users");
        let conf = format!(
            r#"base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
protocols = imap lmtp
listen = {ip}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {r}/users
}}
service imap-login {{
  inet_listener imap {{
    address = {ip}
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {ip}
    port = {lmtp_port}
  }}
}}
service anvil {{
  chroot =
}}
"#,
            imap_port = imap.port(),
            lmtp_port = lmtp.port(),
        );
        let conf_path = root.join("dovecot.conf");
        std::fs::write(&conf_path, conf).expect("dovecot.conf");
        Dovecot {
            dir,
            lmtp,
            imap,
            conf: conf_path,
            running: false,
        }
    }

    pub fn start(&mut self) {
        // Dovecot daemonizes: its stdout/stderr must not be pipes we wait on.
        let status = Command::new("dovecot")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run dovecot");
        self.running = true;
        assert!(status.success(), "dovecot failed to start:\n{}", self.log());
        for a in [self.lmtp, self.imap] {
            super::postfix::wait_port(a, 20, "dovecot", || self.log());
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// Every message in `user`'s INBOX, read with imaplib (`BODY.PEEK[]`).
    pub fn fetch_all(&self, user: &str) -> Vec<Vec<u8>> {
        let script = r#"
import imaplib, sys, base64
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
m = imaplib.IMAP4(host, port)
m.login(user, pw)
typ, _ = m.select('INBOX', readonly=True)
assert typ == 'OK', typ
typ, data = m.uid('SEARCH', None, 'ALL')
for uid in data[0].split():
    typ, d = m.uid('FETCH', uid, '(BODY.PEEK[])')
    print(base64.b64encode(d[0][1]).decode())
m.logout()
"#;
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(self.imap.ip().to_string())
            .arg(self.imap.port().to_string())
            .arg(user)
            .arg(PASSWORD)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "imaplib failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                base64::engine::general_purpose::STANDARD
                    .decode(l.trim())
                    .expect("base64")
            })
            .collect()
    }

    fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("run/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- dovecot log ---\n{}", self.log());
        }
        if !self.running {
            return;
        }
        if let Some(pid) = self.master_pid() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::path::Path::new(&format!("/proc/{pid}")).exists()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}
