//! Helpers for the registry, certificate-trust and s2s policy tests: a private dnsmasq on
//! a loopback address and a free port (no upstream, no hosts file, authoritative for the
//! zones it is given), a test CA that issues good, wrong-domain and expired certificates,
//! and a raw s2s client over TLS.
//!
//! The dnsmasq is killed by pid on drop (also on panic); on panic its query log is printed.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One record for dnsmasq.
pub enum Rec<'a> {
    /// `--host-record`: name -> IPv4.
    A(&'a str, &'a str),
    /// `--txt-record`.
    Txt(&'a str, &'a str),
    /// `--srv-host`: (service name, target, port).
    Srv(&'a str, &'a str, u16),
}

pub struct Dnsmasq {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Zones answered authoritatively (unknown names NXDOMAIN).
    zones: Vec<String>,
}

fn dnsmasq_bin() -> PathBuf {
    for d in ["/usr/sbin", "/usr/bin", "/usr/local/sbin"] {
        let p = Path::new(d).join("dnsmasq");
        if p.exists() {
            return p;
        }
    }
    panic!("dnsmasq is not installed (scripts/test installs dnsmasq-base)");
}

impl Dnsmasq {
    /// A dnsmasq on `ip` and a free port, authoritative for `zones`, serving `recs`.
    pub fn start(ip: &str, zones: &[&str], recs: &[Rec<'_>]) -> Dnsmasq {
        let port = super::free_port(ip);
        let mut d = Dnsmasq::stopped(ip, port, zones);
        d.restart(recs);
        d
    }

    /// The handle of a dnsmasq not yet running on `ip:port` (a dead registry until
    /// `restart`).
    pub fn stopped(ip: &str, port: u16, zones: &[&str]) -> Dnsmasq {
        Dnsmasq {
            addr: format!("{ip}:{port}").parse().expect("addr"),
            dir: tempfile::Builder::new()
                .prefix("xmta-dnsmasq-")
                .tempdir()
                .expect("tempdir"),
            child: None,
            zones: zones.iter().map(|z| z.to_string()).collect(),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// How many queries of `qtype` ("A", "TXT", "SRV") for `name` it has answered.
    pub fn queries(&self, qtype: &str, name: &str) -> usize {
        let pat = format!("query[{qtype}] {name} ");
        self.log().matches(&pat).count()
    }

    /// (Re)starts it with `recs`.
    pub fn restart(&mut self, recs: &[Rec<'_>]) {
        self.stop();
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
            "--log-queries".into(),
            format!("--log-facility={}", self.log_path().display()),
            format!("--listen-address={}", self.addr.ip()),
            format!("--port={}", self.addr.port()),
        ];
        for z in &self.zones {
            args.push(format!("--local=/{z}/"));
        }
        for r in recs {
            args.push(match r {
                Rec::A(name, ip) => format!("--host-record={name},{ip}"),
                Rec::Txt(name, text) => format!("--txt-record={name},\"{text}\""),
                Rec::Srv(name, target, port) => format!("--srv-host={name},{target},{port},0,10"),
            });
        }
        let child = Command::new(dnsmasq_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_err() {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("dnsmasq exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not listen on {}:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- dnsmasq {} (tail) ---\n{}",
                self.addr,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        self.stop();
    }
}

/// A `[registry]` section (appended as `extra`).
pub fn registry_section(zone: &str, policy: &str, dns: SocketAddr, more: &str) -> String {
    format!(
        "[registry]\nzone = \"{zone}\"\npolicy = \"{policy}\"\nnameservers = [\"{dns}\"]\nmin_ttl_secs = 1\nmax_ttl_secs = 60\ntimeout_secs = 1\n{more}\n"
    )
}

/// A test CA that keeps its key, so tests can issue certificates of every kind.
pub struct TestCa {
    pub dir: PathBuf,
    pub ca_path: PathBuf,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        bounded(&mut p, false);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("ca key");
        let issuer = CertifiedIssuer::self_signed(p, key).expect("ca cert");
        let ca_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_path, issuer.pem()).expect("write ca");
        TestCa {
            dir: dir.to_path_buf(),
            ca_path,
            issuer,
        }
    }

    /// A certificate for `names` (PEM cert and key paths named after `stem`); `expired`
    /// gives one whose validity ended last year.
    pub fn issue(&self, stem: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        bounded(&mut p, expired);
        p.distinguished_name.push(DnType::CommonName, names[0]);
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("sign");
        let cp = self.dir.join(format!("{stem}.pem"));
        let kp = self.dir.join(format!("{stem}.key"));
        std::fs::write(&cp, cert.pem()).expect("write cert");
        std::fs::write(&kp, key.serialize_pem()).expect("write key");
        (cp, kp)
    }
}

fn bounded(p: &mut rcgen::CertificateParams, expired: bool) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let year = 1970 + (secs / 31_556_952) as i32;
    if expired {
        p.not_before = rcgen::date_time_ymd(year - 3, 1, 1);
        p.not_after = rcgen::date_time_ymd(year - 1, 1, 1);
    } else {
        p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        p.not_after = rcgen::date_time_ymd(year + 5, 1, 1);
    }
}
