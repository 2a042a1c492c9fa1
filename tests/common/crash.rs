//! Helpers for the crash tests (tests/crash.rs): a seeded RNG, an LMTP load generator that
//! records exactly which messages were acknowledged (250 to the final dot), a TCP relay that
//! cuts the connections it carries at random byte offsets, a tmpfs mount that is unmounted
//! on drop (also on panic), and the "every acknowledged message exactly once" check.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Xmta;

/// The run's seed: `XMTA_CRASH_SEED` if set, else from the clock. Printed so that a failing
/// run can be repeated.
pub fn seed() -> u64 {
    let seed = match std::env::var("XMTA_CRASH_SEED") {
        Ok(s) => s.trim().parse().expect("XMTA_CRASH_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64,
    };
    eprintln!("crash test seed: {seed} (set XMTA_CRASH_SEED={seed} to repeat)");
    seed
}

/// xorshift64*: small, seeded, good enough to pick kill points.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// A message whose Subject (and Message-ID) is `token`, with a text body of about `size`
/// bytes in 76-character lines (never starting with a dot, so no dot-stuffing is needed).
pub fn text_message(from: &str, to: &str, token: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {token}\r\nMessage-ID: <{token}@crash.test>\r\nDate: Tue, 01 Dec 2026 08:00:00 +0000\r\n\r\n"
    )
    .into_bytes();
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x: u32 = token.bytes().fold(7, |h, b| h.wrapping_mul(31) ^ b as u32);
    let mut line = 0;
    while m.len() < size {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        m.push(alphabet[(x >> 16) as usize % alphabet.len()]);
        line += 1;
        if line == 76 {
            m.extend_from_slice(b"\r\n");
            line = 0;
        }
    }
    m.extend_from_slice(b"\r\n");
    m
}

/// One SMTP/LMTP client connection (no TLS, no AUTH).
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
    lmtp: bool,
}

impl Client {
    /// Connects, reads the greeting and sends LHLO (`lmtp`) or EHLO.
    pub fn connect(addr: SocketAddr, lmtp: bool) -> std::io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
            lmtp,
        };
        c.expect(220)?;
        let hello = if lmtp { "LHLO" } else { "EHLO" };
        c.w.write_all(format!("{hello} crash.test\r\n").as_bytes())?;
        c.expect(250)?;
        Ok(c)
    }

    fn reply(&mut self) -> std::io::Result<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, text));
            }
        }
    }

    fn expect(&mut self, code: u16) -> std::io::Result<()> {
        let (got, text) = self.reply()?;
        if got == code {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "expected {code}, got {text}"
            )))
        }
    }

    /// One transaction with one recipient: the final reply code (250 = acknowledged), or an
    /// I/O error (connection lost: not acknowledged). A refusal before DATA is returned as its
    /// code.
    pub fn send(&mut self, from: &str, to: &str, message: &[u8]) -> std::io::Result<u16> {
        self.w
            .write_all(format!("MAIL FROM:<{from}>\r\n").as_bytes())?;
        let (c, _) = self.reply()?;
        if c != 250 {
            self.w.write_all(b"RSET\r\n")?;
            self.reply()?;
            return Ok(c);
        }
        self.w.write_all(format!("RCPT TO:<{to}>\r\n").as_bytes())?;
        let (c, _) = self.reply()?;
        if c != 250 {
            self.w.write_all(b"RSET\r\n")?;
            self.reply()?;
            return Ok(c);
        }
        self.w.write_all(b"DATA\r\n")?;
        let (c, _) = self.reply()?;
        if c != 354 {
            return Ok(c);
        }
        self.w.write_all(message)?;
        self.w.write_all(b".\r\n")?;
        // LMTP: one reply per recipient; there is one.
        let _ = self.lmtp;
        let (c, _) = self.reply()?;
        Ok(c)
    }
}

/// What a load generator did: tokens acknowledged (250) and tokens attempted (sent at least
/// partly; they may or may not arrive, but never twice).
#[derive(Default)]
pub struct Tally {
    pub acked: Vec<String>,
    pub attempted: Vec<String>,
    pub refused: usize,
}

/// Parallel LMTP submissions into a server, one connection per worker, reconnecting after
/// every failure, until stopped or every worker sent its messages.
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    acked: Arc<AtomicUsize>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// `plan(worker, n)` gives the size of worker `worker`'s message number `n`, or `None`
    /// when that worker is done.
    pub fn start(
        addr: SocketAddr,
        prefix: &str,
        workers: usize,
        from: &str,
        to: &str,
        plan: impl Fn(usize, usize) -> Option<usize> + Send + Sync + 'static,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let acked = Arc::new(AtomicUsize::new(0));
        let plan = Arc::new(plan);
        let handles = (0..workers)
            .map(|w| {
                let (stop, tally, acked, plan) =
                    (stop.clone(), tally.clone(), acked.clone(), plan.clone());
                let (prefix, from, to) = (prefix.to_string(), from.to_string(), to.to_string());
                std::thread::spawn(move || {
                    let mut conn: Option<Client> = None;
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let Some(size) = plan(w, n) else { break };
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match Client::connect(addr, true) {
                                Ok(c) => conn.insert(c),
                                Err(_) => {
                                    // The server is down (being restarted): try again soon.
                                    std::thread::sleep(Duration::from_millis(20));
                                    continue;
                                }
                            },
                        };
                        let token = format!("{prefix}-{w}-{n}");
                        let m = text_message(&from, &to, &token, size);
                        tally.lock().unwrap().attempted.push(token.clone());
                        n += 1;
                        match c.send(&from, &to, &m) {
                            Ok(250) => {
                                tally.lock().unwrap().acked.push(token);
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(_) => tally.lock().unwrap().refused += 1,
                            Err(_) => conn = None,
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            acked,
            workers: handles,
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until `n` more messages than `from` were acknowledged.
    pub fn wait_acked(&self, at_least: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.acked() < at_least {
            assert!(
                Instant::now() < deadline,
                "load: only {} of {at_least} messages acknowledged in {secs} s",
                self.acked()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the workers (each finishes its current transaction) and returns the tally.
    pub fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.workers.drain(..) {
            h.join().expect("load worker");
        }
        std::mem::take(&mut *self.tally.lock().unwrap())
    }

    /// Waits for every worker to run out of messages, then returns the tally.
    pub fn join(mut self) -> Tally {
        for h in self.workers.drain(..) {
            h.join().expect("load worker");
        }
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The outcome of the exactly-once check.
#[derive(Debug)]
pub struct Outcome {
    pub acked: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
}

/// Checks `address`'s mailbox on `x`: every token in `acked` exactly once, nothing twice,
/// nothing that was never attempted. Panics with the details otherwise.
pub fn check_exactly_once(
    x: &Xmta,
    address: &str,
    acked: &[String],
    attempted: &[String],
) -> Outcome {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for l in x.mailbox(address) {
        *seen.entry(l.subject).or_default() += 1;
    }
    let lost: Vec<&String> = acked.iter().filter(|t| !seen.contains_key(*t)).collect();
    let dups: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let attempted: std::collections::HashSet<&String> = attempted.iter().collect();
    let strange: Vec<&String> = seen.keys().filter(|t| !attempted.contains(t)).collect();
    let outcome = Outcome {
        acked: acked.len(),
        delivered: seen.len(),
        lost: lost.len(),
        duplicated: dups.len(),
    };
    assert!(
        lost.is_empty() && dups.is_empty() && strange.is_empty(),
        "{outcome:?}\nlost: {lost:?}\nduplicated: {dups:?}\nnever sent: {strange:?}"
    );
    outcome
}

/// How the relay cuts a connection.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// shutdown(2) both ways: the peers see EOF.
    Fin,
    /// SO_LINGER 0 and close: the peers see a reset.
    Rst,
}

/// A TCP relay on `ip` forwarding to `target`. The first `cuts` connections are each cut
/// (both sides, FIN or RST at random) once a random number of bytes in `budget` went
/// through them from the client; later connections pass untouched.
pub struct Relay {
    pub addr: SocketAddr,
    pub cut: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(
        ip: &str,
        target: SocketAddr,
        seed: u64,
        cuts: usize,
        budget: (u64, u64),
    ) -> Relay {
        let listener = TcpListener::bind((ip, 0)).expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let cut = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (cut2, conns2, stop2) = (cut.clone(), connections.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            for (i, conn) in listener.incoming().enumerate() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                let plan = (i < cuts).then(|| {
                    let at = rng.range(budget.0, budget.1);
                    let how = if rng.next_u64().is_multiple_of(2) {
                        Cut::Fin
                    } else {
                        Cut::Rst
                    };
                    (at, how)
                });
                relay_conn(client, server, plan, cut2.clone());
            }
        });
        Relay {
            addr,
            cut,
            connections,
            stop,
        }
    }

    pub fn cuts(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn relay_conn(
    client: TcpStream,
    server: TcpStream,
    plan: Option<(u64, Cut)>,
    cuts: Arc<AtomicUsize>,
) {
    let (c2, s2) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let (c3, s3) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    // Client to server, counting bytes towards the cut.
    std::thread::spawn(move || {
        let (mut from, mut to) = (client, server);
        let mut sent = 0u64;
        let mut buf = [0u8; 16384];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut n = n;
            let mut cut_now = false;
            if let Some((at, _)) = plan
                && sent + n as u64 >= at
            {
                n = (at - sent) as usize;
                cut_now = true;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
            if cut_now {
                let how = plan.map(|p| p.1).unwrap_or(Cut::Fin);
                if let Cut::Rst = how {
                    for s in [&from, &to, &c3, &s3] {
                        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                    }
                }
                cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
    // Server to client.
    std::thread::spawn(move || {
        let (mut from, mut to) = (s2, c2);
        let mut buf = [0u8; 16384];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// A tmpfs of `size` mounted on `dir`, unmounted (lazily, so a process still using it does
/// not keep it) on drop, also on panic.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// `Err` with the reason when mounting is not possible here.
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Fills the filesystem with `ballast` until the disk is full; returns its size.
    pub fn fill(&self, ballast: &Path) -> u64 {
        let mut f = std::fs::File::create(ballast).expect("ballast");
        let chunk = vec![0x5au8; 4096];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("ballast: {e}"),
            }
        }
        let _ = f.sync_all();
        n
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
