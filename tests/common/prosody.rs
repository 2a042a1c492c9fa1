//! A private Prosody instance for interop tests: its own config, data, pid and log in a
//! temp dir, listening on one 127.0.0.x address, resolving peers through a hosts file
//! (lua-unbound), so nothing leaves loopback. Killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Prosody {
    pub domain: String,
    pub ip: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Where the Prosody binary is; tests that need it skip nothing: scripts/test installs it.
fn bin(name: &str) -> PathBuf {
    for d in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = PathBuf::from(d).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed (scripts/test installs the prosody and lua-unbound packages)");
}

impl Prosody {
    /// `hosts`: (ip, name) lines for Prosody's resolver; peers listen on port 5269.
    /// `extra`: more global config lines. `vhost_extra`: lines inside the VirtualHost.
    pub fn start(
        ip: &str,
        domain: &str,
        hosts: &[(&str, &str)],
        extra: &str,
        vhost_extra: &str,
    ) -> Prosody {
        let dir = tempfile::Builder::new()
            .prefix(&format!("prosody-{domain}-"))
            .tempdir()
            .expect("tempdir");
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        std::fs::create_dir_all(dir.path().join("certs")).expect("certs dir");
        let hosts_txt: String = hosts
            .iter()
            .map(|(ip, name)| format!("{ip} {name}\n"))
            .collect();
        std::fs::write(dir.path().join("hosts"), hosts_txt).expect("hosts");
        let cfg = format!(
            r#"run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
certificates = "{d}/certs"
log = {{ debug = "{d}/prosody.log" }}
interfaces = {{ "{ip}" }}
c2s_interfaces = {{ "{ip}" }}
s2s_interfaces = {{ "{ip}" }}
c2s_ports = {{ 5222 }}
s2s_ports = {{ 5269 }}
component_ports = {{ 5347 }}
component_interfaces = {{ "{ip}" }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "dialback"; "disco"; "ping"; "posix"; "tls"; "offline" }}
modules_disabled = {{ "s2s_bidi" }}
s2s_require_encryption = false
s2s_secure_auth = false
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
unbound = {{ resolvconf = false; hoststxt = "{d}/hosts"; options = {{ ["local-zone:"] = ". static" }} }}
{extra}
VirtualHost "{domain}"
{vhost_extra}
"#
        );
        std::fs::write(dir.path().join("prosody.cfg.lua"), cfg).expect("config");
        let mut p = Prosody {
            domain: domain.to_string(),
            ip: ip.to_string(),
            dir,
            child: None,
        };
        p.launch();
        p
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("prosody.cfg.lua")
    }

    pub fn launch(&mut self) {
        let out = std::fs::File::create(self.dir.path().join("stdout.log")).expect("stdout log");
        let child = Command::new(bin("prosody"))
            .arg("--config")
            .arg(self.config())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start prosody");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [5222u16, 5269] {
            let addr: std::net::SocketAddr = format!("{}:{port}", self.ip).parse().expect("addr");
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "prosody did not listen on {addr}:\n{}",
                    self.log_tail(40)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn register(&self, user: &str, password: &str) {
        let out = Command::new(bin("prosodyctl"))
            .arg("--config")
            .arg(self.config())
            .args(["register", user, &self.domain, password])
            .output()
            .expect("prosodyctl");
        assert!(
            out.status.success(),
            "prosodyctl register: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prosody.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let s = self.log();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- prosody {} log (tail) ---\n{}",
                self.domain,
                self.log_tail(80)
            );
        }
        self.stop();
    }
}
