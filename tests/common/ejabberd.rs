//! A private ejabberd 23.01 instance for interop tests.
//!
//! Everything it owns lives in one temp dir (config, mnesia spool, logs, pid file, its
//! own `inetrc`, hosts and resolv.conf), chowned to the `ejabberd` user that
//! `ejabberdctl` runs the node as. Isolation:
//! - Listeners (c2s 5222, s2s 5269, and optionally an XEP-0114 component listener) on
//!   one 127.0.0.x address only.
//! - Erlang distribution on a fixed free port of 127.0.0.1 (`ERL_DIST_PORT`,
//!   `inet_dist_use_interface`), so no epmd is started and nothing listens on other
//!   interfaces; a node name unique per instance and a random cookie (`-setcookie`), so
//!   `ejabberdctl` talks to this node only.
//! - DNS: ejabberd asks SRV through Erlang's resolver and A/AAAA through glibc. The node
//!   runs under `unshare -m` with a private /etc/hosts (localhost and the host name) and
//!   /etc/resolv.conf (a private dnsmasq on loopback) bind-mounted in that mount
//!   namespace only; its `inetrc` points Erlang's resolver at the same files. The
//!   dnsmasq has no upstream, no hosts file, answers only what the test gives it and
//!   NXDOMAIN for the rest of `.test`.
//!
//! Dropping the handle (also on panic) kills, by pid, what it started: the processes
//! below its `unshare` child (ejabberdctl, su, beam.smp and its port programs), the beam
//! process named by the node's pid file, and the dnsmasq; it waits for its children and,
//! on panic, prints the s2s-related tail of ejabberd's log and dnsmasq's query log.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// TLS material for ejabberd: its certificate and key for the domain, and the CA it uses
/// to check peers' certificates.
pub struct EjabberdTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ca: &'a Path,
    /// `s2s_use_starttls`: "optional" or "required".
    pub s2s_starttls: &'a str,
}

/// An `ejabberd_service` (XEP-0114) listener on the instance's address, for one
/// component domain.
pub struct EjabberdService<'a> {
    pub port: u16,
    /// The component's domain (a `hosts` entry of the listener).
    pub jid: &'a str,
    pub password: &'a str,
    /// The listener's `max_stanza_size`; None leaves ejabberd's default.
    pub max_stanza_size: Option<usize>,
}

pub struct EjabberdSpec<'a> {
    /// Address of ejabberd's listeners.
    pub ip: &'a str,
    /// Address of its private dnsmasq (port 53: glibc's resolv.conf has no port).
    pub dns_ip: &'a str,
    pub domain: &'a str,
    /// A records served by the private DNS: (name, ipv4). Empty slices (here and in
    /// `srv`) leave every peer unresolvable; [`Ejabberd::restart_dns`] can add records.
    pub a: &'a [(&'a str, &'a str)],
    /// `_xmpp-server._tcp` SRV records: (domain, target host, port).
    pub srv: &'a [(&'a str, &'a str, u16)],
    pub tls: Option<EjabberdTls<'a>>,
    /// An XEP-0114 component listener.
    pub service: Option<EjabberdService<'a>>,
}

pub struct Ejabberd {
    pub domain: String,
    pub ip: String,
    /// The component listener's port, if any.
    pub service_port: Option<u16>,
    pub node: String,
    pub dir: tempfile::TempDir,
    dns_ip: String,
    child: Option<Child>,
    dns: Option<Child>,
}

fn bin(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = PathBuf::from(d).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} is not installed (scripts/test installs ejabberd, dnsmasq-base; unshare is util-linux)"
    );
}

fn wait_port(addr: SocketAddr, deadline: Instant, what: &str, tail: impl Fn() -> String) {
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr}:\n{}",
            tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Ejabberd {
    pub fn start(spec: EjabberdSpec<'_>) -> Ejabberd {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ejabberd-{}-", spec.domain))
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        for sub in ["spool", "logs", "certs", "contrib"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        let d = root.display().to_string();
        let ip = spec.ip;

        // Name resolution inside the node's mount namespace. The node resolves its own
        // host name at start: keep that off the DNS too.
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        std::fs::write(
            root.join("hosts"),
            format!("127.0.0.1 localhost {hostname}\n"),
        )
        .expect("hosts");
        std::fs::write(
            root.join("resolv.conf"),
            format!("nameserver {}\noptions timeout:1 attempts:2\n", spec.dns_ip),
        )
        .expect("resolv.conf");
        std::fs::write(
            root.join("inetrc"),
            format!(
                "{{lookup,[\"file\",\"native\"]}}.\n{{host,{{127,0,0,1}},[\"localhost\"]}}.\n{{file,resolv,\"{d}/resolv.conf\"}}.\n{{file,hosts,\"{d}/hosts\"}}.\n"
            ),
        )
        .expect("inetrc");

        let mut tls_cfg = String::from("s2s_use_starttls: false\n");
        if let Some(t) = &spec.tls {
            let c = root.join("certs").join("cert.pem");
            let k = root.join("certs").join("key.pem");
            let ca = root.join("certs").join("ca.pem");
            std::fs::copy(t.cert, &c).expect("copy cert");
            std::fs::copy(t.key, &k).expect("copy key");
            std::fs::copy(t.ca, &ca).expect("copy ca");
            tls_cfg = format!(
                "s2s_use_starttls: {}\ncertfiles:\n  - \"{}\"\n  - \"{}\"\nca_file: \"{}\"\n",
                t.s2s_starttls,
                c.display(),
                k.display(),
                ca.display()
            );
        }
        let mut service_cfg = String::new();
        if let Some(sv) = &spec.service {
            service_cfg = format!(
                "  -\n    port: {}\n    ip: \"{ip}\"\n    module: ejabberd_service\n",
                sv.port
            );
            if let Some(m) = sv.max_stanza_size {
                service_cfg.push_str(&format!("    max_stanza_size: {m}\n"));
            }
            service_cfg.push_str(&format!(
                "    hosts:\n      \"{}\":\n        password: \"{}\"\n",
                sv.jid, sv.password
            ));
        }
        let cfg = format!(
            r#"hosts:
  - "{domain}"
loglevel: debug
log_rotate_count: 0
hide_sensitive_log_data: false
listen:
  -
    port: 5222
    ip: "{ip}"
    module: ejabberd_c2s
    max_stanza_size: 262144
    access: c2s
    starttls_required: false
  -
    port: 5269
    ip: "{ip}"
    module: ejabberd_s2s_in
    max_stanza_size: 524288
{service_cfg}{tls_cfg}s2s_access: all
s2s_dns_timeout: 2
s2s_dns_retries: 1
auth_method: internal
auth_password_format: plain
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
modules:
  mod_disco: {{}}
  mod_roster: {{}}
  mod_ping: {{}}
  mod_s2s_dialback: {{}}
"#,
            domain = spec.domain,
        );
        std::fs::write(root.join("ejabberd.yml"), cfg).expect("ejabberd.yml");

        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let node = format!("xmta-e-{}-{n}@localhost", std::process::id());
        let cookie = format!("{:032x}", rand::random::<u128>());
        let dist_port = super::free_port("127.0.0.1");
        std::fs::write(
            root.join("ejabberdctl.cfg"),
            format!(
                r#"ERLANG_NODE={node}
ERL_DIST_PORT={dist_port}
ERL_OPTIONS="-setcookie {cookie} -kernel inet_dist_use_interface {{127,0,0,1}}"
EJABBERD_PID_PATH={d}/ejabberd.pid
CONTRIB_MODULES_PATH={d}/contrib
EJABBERD_BYPASS_WARNINGS=true
"#
            ),
        )
        .expect("ejabberdctl.cfg");

        // The node runs as user ejabberd.
        let st = Command::new("chown")
            .args(["-R", "ejabberd:ejabberd"])
            .arg(root)
            .status()
            .expect("chown");
        assert!(st.success(), "chown -R ejabberd {d}");

        // A leftover instance on these addresses would answer for us: refuse to start.
        let service_port = spec.service.as_ref().map(|s| s.port);
        let mut in_use = vec![
            format!("{ip}:5222"),
            format!("{ip}:5269"),
            format!("{}:53", spec.dns_ip),
        ];
        if let Some(p) = service_port {
            in_use.push(format!("{ip}:{p}"));
        }
        for addr in in_use {
            let addr: SocketAddr = addr.parse().expect("addr");
            assert!(
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
                "{addr} is already in use (a leftover ejabberd or dnsmasq?)"
            );
        }

        let mut e = Ejabberd {
            domain: spec.domain.to_string(),
            ip: ip.to_string(),
            service_port,
            node,
            dir,
            dns_ip: spec.dns_ip.to_string(),
            child: None,
            dns: None,
        };
        e.start_dns(spec.a, spec.srv);
        e.launch();
        e
    }

    /// Replaces the private DNS's records while ejabberd runs: stops the dnsmasq and
    /// starts a new one on the same address and port (appending to the same query log)
    /// serving `a` and `srv` (as in [`EjabberdSpec`]). The node keeps no memory of a
    /// failed lookup: its next lookup of the name asks the new dnsmasq.
    pub fn restart_dns(&mut self, a: &[(&str, &str)], srv: &[(&str, &str, u16)]) {
        if let Some(mut d) = self.dns.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        self.start_dns(a, srv);
    }

    fn start_dns(&mut self, a: &[(&str, &str)], srv: &[(&str, &str, u16)]) {
        let mut args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            "--no-daemon".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-poll".into(),
            "--bind-interfaces".into(),
            "--conf-file=/dev/null".into(),
            "--user=root".into(),
            // Authoritative for .test: unknown names are NXDOMAIN, never forwarded.
            "--local=/test/".into(),
            "--log-queries".into(),
            format!("--log-facility={}", self.dns_log().display()),
            format!("--listen-address={}", self.dns_ip),
            "--port=53".into(),
        ];
        for (name, ip) in a {
            args.push(format!("--host-record={name},{ip}"));
        }
        for (domain, target, port) in srv {
            args.push(format!(
                "--srv-host=_xmpp-server._tcp.{domain},{target},{port},0,10"
            ));
        }
        let child = Command::new(bin("dnsmasq"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        self.dns = Some(child);
        // It serves DNS over TCP on the same port.
        let addr: SocketAddr = format!("{}:53", self.dns_ip).parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        wait_port(addr, deadline, "dnsmasq", || self.dns_log_text());
        if let Some(c) = self.dns.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!("dnsmasq exited ({status}):\n{}", self.dns_log_text());
        }
    }

    fn ctl_args(&self) -> Vec<String> {
        let d = self.dir.path().display().to_string();
        vec![
            "--config-dir".into(),
            d.clone(),
            "--ctl-config".into(),
            format!("{d}/ejabberdctl.cfg"),
            "--logs".into(),
            format!("{d}/logs"),
            "--spool".into(),
            format!("{d}/spool"),
        ]
    }

    fn launch(&mut self) {
        let root = self.dir.path();
        let out = std::fs::File::create(root.join("stdout.log")).expect("stdout log");
        // In a private mount namespace: private hosts and resolv.conf over the real ones,
        // then ejabberdctl (which su's to ejabberd and execs erl in the foreground).
        let child = Command::new(bin("unshare"))
            .args(["--mount", "--propagation", "private", "--"])
            .arg("/bin/sh")
            .arg("-c")
            .arg(r#"h="$1"; r="$2"; shift 2; mount --bind "$h" /etc/hosts && mount --bind "$r" /etc/resolv.conf && exec "$@""#)
            .arg("sh")
            .arg(root.join("hosts"))
            .arg(root.join("resolv.conf"))
            .arg(bin("ejabberdctl"))
            .args(self.ctl_args())
            .arg("foreground")
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start ejabberd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(40);
        let ports = [5222u16, 5269].into_iter().chain(self.service_port);
        for port in ports {
            let addr: SocketAddr = format!("{}:{port}", self.ip).parse().expect("addr");
            while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
                if let Some(c) = self.child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    panic!(
                        "ejabberd exited at start ({status}):\n{}\n{}",
                        self.stdout_tail(40),
                        self.log_tail(40)
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "ejabberd did not listen on {addr}:\n{}\n{}",
                    self.stdout_tail(40),
                    self.log_tail(40)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Runs `ejabberdctl CMD ARGS...` against this node; returns (success, output).
    pub fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(bin("ejabberdctl"))
            .args(self.ctl_args())
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("ejabberdctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn register(&self, user: &str, password: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, text) = self.ctl(&["register", user, &self.domain, password]);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ejabberdctl register {user}: {text}\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn c2s_addr(&self) -> SocketAddr {
        format!("{}:5222", self.ip).parse().expect("addr")
    }

    pub fn s2s_addr(&self) -> SocketAddr {
        format!("{}:5269", self.ip).parse().expect("addr")
    }

    /// The component listener's address (the spec must have had a service).
    pub fn service_addr(&self) -> SocketAddr {
        let port = self.service_port.expect("no service listener configured");
        format!("{}:{port}", self.ip).parse().expect("addr")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("logs").join("ejabberd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// Waits until ejabberd's log (written by its logger with a delay) contains `pat`;
    /// returns the first line that does.
    pub fn wait_log(&self, pat: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let log = self.log();
            if let Some(l) = log.lines().find(|l| l.contains(pat)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "ejabberd's log has no {pat:?} after {secs} s:\n{}",
                self.s2s_log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `n` lines about s2s, XML on the wire, warnings and errors.
    pub fn s2s_log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("s2s")
                    || l.contains("service")
                    || l.contains("XML on stream")
                    || l.contains("[warning]")
                    || l.contains("[error]")
            })
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn stdout_tail(&self, n: usize) -> String {
        tail(
            &std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default(),
            n,
        )
    }

    fn dns_log(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.log")
    }

    /// dnsmasq's query log: what ejabberd asked.
    pub fn dns_log_text(&self) -> String {
        std::fs::read_to_string(self.dns_log()).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // What this handle started: the unshare'd shell turned ejabberdctl, and below
            // it su, sh, beam.smp and beam's port programs. su puts its child in a new
            // session, so a process-group kill would miss the node: kill the descendants
            // of our child by pid, and the beam pid from the node's pid file.
            let mut pids = descendants(c.id());
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("ejabberd.pid"))
                && let Ok(pid) = pid.trim().parse::<u32>()
                && !pids.contains(&pid)
            {
                pids.push(pid);
            }
            if !pids.is_empty() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .args(pids.iter().map(u32::to_string))
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut d) = self.dns.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// Pids of all live descendants of `root` (from /proc), children before grandchildren.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- ejabberd {} log (s2s tail) ---\n{}\n--- ejabberd {} log (tail) ---\n{}\n--- dnsmasq ---\n{}",
                self.domain,
                self.s2s_log_tail(80),
                self.domain,
                self.log_tail(20),
                tail(&self.dns_log_text(), 20)
            );
        }
        self.stop();
    }
}
