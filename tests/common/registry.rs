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

/// A TCP relay between a sender and `target` that records both directions: what an
/// on-path observer of a plaintext s2s stream sees (for key replay tests).
pub struct Relay {
    pub addr: SocketAddr,
    /// Client-to-server and server-to-client bytes of all connections, in order.
    pub up: std::sync::Arc<std::sync::Mutex<String>>,
    pub down: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Relay {
    pub fn start(ip: &str, target: SocketAddr) -> Relay {
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(Mutex::new(String::new()));
        let down = Arc::new(Mutex::new(String::new()));
        let (u, d) = (up.clone(), down.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for (from, to, log) in [
                    (client.try_clone(), server.try_clone(), u.clone()),
                    (server.try_clone(), client.try_clone(), d.clone()),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 65536];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            log.lock()
                                .unwrap()
                                .push_str(&String::from_utf8_lossy(&buf[..n]));
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Relay { addr, up, down }
    }

    pub fn up(&self) -> String {
        self.up.lock().unwrap().clone()
    }
    pub fn down(&self) -> String {
        self.down.lock().unwrap().clone()
    }
}

/// A raw s2s client that has done STARTTLS, presenting `cert` and trusting `ca`.
pub struct TlsRaw {
    pub s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    pub got: String,
}

impl TlsRaw {
    /// Opens a stream `from` -> `to`, STARTTLS with (cert, key), and reads the features of
    /// the restarted stream.
    pub fn connect(
        addr: SocketAddr,
        from: &str,
        to: &str,
        cert: &Path,
        key: &Path,
        ca: &Path,
    ) -> TlsRaw {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let mut raw = super::Raw::connect(addr);
        raw.send(&stream_header(from, to));
        assert!(
            raw.read_until(10, |s| s.contains("</stream:features>")),
            "{}",
            raw.got
        );
        assert!(
            raw.got.contains("<starttls"),
            "no STARTTLS offered: {}",
            raw.got
        );
        raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert!(
            raw.read_until(10, |s| s.contains("<proceed")),
            "{}",
            raw.got
        );
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        let name = ServerName::try_from(to.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        // Finish the handshake on a blocking socket first: with the short read timeout
        // used for polling, a slow server would make it fail half-way.
        let mut sock = raw.sock;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).expect("TLS handshake");
        }
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut t = TlsRaw {
            s: rustls::StreamOwned::new(conn, sock),
            got: String::new(),
        };
        t.send(&stream_header(from, to));
        assert!(
            t.read_until(10, |s| s.contains("</stream:features>")),
            "no features over TLS: {}",
            t.got
        );
        t
    }

    /// Encrypts and writes `s` without reading (a read could time out and lose the data).
    pub fn send(&mut self, s: &str) {
        use std::io::Write;
        let _ = self.s.conn.writer().write_all(s.as_bytes());
        while self.s.conn.wants_write() {
            if self.s.conn.write_tls(&mut self.s.sock).is_err() {
                // A peer may close first; that is what some dialogs test.
                return;
            }
        }
    }

    /// Reads until `pred` holds, EOF or `secs` pass; true if pred held.
    pub fn read_until(&mut self, secs: u64, pred: impl Fn(&str) -> bool) -> bool {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 65536];
        loop {
            if pred(&self.got) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            match self.s.read(&mut buf) {
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
}

pub fn stream_header(from: &str, to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{from}' to='{to}' version='1.0'>"
    )
}

/// A complete one-chunk mail stanza from `from` (an address) to `to`, as a raw s2s peer
/// sends it.
pub fn mail_stanza(from: &str, to: &str, id: &str) -> String {
    use base64::Engine;
    let msg = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: raw-{id}\r\nMessage-ID: <{id}@test>\r\n\r\nhi\r\n"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(msg.as_bytes());
    let digest = xmta::mta::payload::sha256_hex(msg.as_bytes());
    let from_domain = from.split('@').nth(1).unwrap_or(from);
    let to_domain = to.split('@').nth(1).unwrap_or(to);
    format!(
        "<message from='{from_domain}' to='{to_domain}' id='s-{id}' type='normal'><mail xmlns='urn:xmpp:mta:0' id='{id}' size='{}' sha256='{digest}'><envelope><mail-from>{from}</mail-from><rcpt-to>{to}</rcpt-to></envelope><data>{b64}</data></mail></message>",
        msg.len()
    )
}
