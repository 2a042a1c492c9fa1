//! Crash, cut-connection and disk-full tests (issue 7 item 3): under load, whatever happens
//! to the processes, the connection between them or the disk, every message acknowledged to
//! the client (LMTP/SMTP 250) ends up in the right mailbox exactly once, and nothing arrives
//! twice. Kill points and cut offsets come from a seeded RNG: the seed is printed, and
//! `XMTA_CRASH_SEED` repeats a run.
//!
//! Addresses: 127.0.1.1 to 127.0.1.40.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::crash::{Load, Relay, Rng, Tmpfs, check_exactly_once, seed, text_message};
use common::*;

const ALICE: &str = "alice@a.test";
const BOB: &str = "bob@b.test";

fn lmtp_extra(ip: &str) -> (String, SocketAddr) {
    let port = free_port(ip);
    (
        format!("[smtp]\nlmtp = \"{ip}:{port}\"\n"),
        format!("{ip}:{port}").parse().expect("addr"),
    )
}

/// Waits until a's queue is empty and b holds at least `n` messages for bob.
fn drain(a: &Xmta, b: &Xmta, n: usize, secs: u64) {
    b.wait_for("every acknowledged message at b", secs, || {
        b.mailbox(BOB).len() >= n
    });
    a.wait_for("a's queue to drain", secs, || a.queue().is_empty());
}

/// 20 rounds of SIGKILL under a steady LMTP load into a.test for bob@b.test: even rounds
/// kill the receiver (b.test), odd rounds the sender (a.test), each after a random number
/// of further acknowledgements plus a random delay. Every restart must come up (the store
/// opens) and answer an admin command.
#[test]
fn kill_rounds_lose_and_duplicate_nothing() {
    let t0 = Instant::now();
    let seed = seed();
    let mut rng = Rng::new(seed);
    let (extra_a, lmtp) = lmtp_extra("127.0.1.1");
    let (mut a, mut b) = pair("127.0.1.1", "127.0.1.2", &extra_a, "");
    a.start();
    b.start();
    a.add_user(ALICE);
    b.add_user(BOB);
    // Small messages of 1-20 kB from 4 parallel LMTP clients, until stopped.
    let load = Load::start(lmtp, "kill", 4, ALICE, BOB, move |w, n| {
        Some(1000 + (w * 7919 + n * 104_729) % 19_000)
    });
    let rounds = 20;
    for round in 0..rounds {
        let more = rng.range(5, 40) as usize;
        load.wait_acked(load.acked() + more, 60);
        std::thread::sleep(Duration::from_millis(rng.range(0, 150)));
        let victim = if round % 2 == 0 { &mut b } else { &mut a };
        victim.kill();
        victim.start();
        // The store opened and the server answers.
        victim.queue();
    }
    let tally = load.finish();
    drain(&a, &b, tally.acked.len(), 120);
    let o = check_exactly_once(&b, BOB, &tally.acked, &tally.attempted);
    eprintln!(
        "kill rounds: seed {seed}, {rounds} rounds, {} attempted, {} acknowledged, {} delivered, lost {}, duplicated {}, {:.1} s",
        tally.attempted.len(),
        o.acked,
        o.delivered,
        o.lost,
        o.duplicated,
        t0.elapsed().as_secs_f64()
    );
}

/// The s2s connection from a.test to b.test goes through a relay that cuts (FIN or RST) the
/// first 8 connections after a random number of bytes, also in the middle of 2 MB (chunked)
/// mails. a.test reconnects and everything acknowledged arrives exactly once. Dialback
/// verification (b.test to a.test) goes directly.
#[test]
fn cut_connections_lose_and_duplicate_nothing() {
    let t0 = Instant::now();
    let seed = seed();
    let (extra_a, lmtp) = lmtp_extra("127.0.1.4");
    let mut a = Xmta::new(Spec {
        domain: "a.test",
        ip: "127.0.1.4",
        routes: vec![],
        extra: &extra_a,
        s2s_extra: "",
    });
    let mut b = Xmta::new(Spec {
        domain: "b.test",
        ip: "127.0.1.5",
        routes: vec![("a.test".into(), a.addr.to_string())],
        extra: "",
        s2s_extra: "",
    });
    let relay = Relay::start("127.0.1.6", b.addr, seed, 8, (500, 2_500_000));
    set_route(&mut a, "b.test", &relay.addr.to_string());
    a.start();
    b.start();
    a.add_user(ALICE);
    b.add_user(BOB);
    // Worker 0: six 2 MB mails; workers 1 and 2: 60 small ones each.
    let load = Load::start(lmtp, "cut", 3, ALICE, BOB, |w, n| match w {
        0 => (n < 6).then_some(2_000_000),
        _ => (n < 60).then_some(500 + n * 97),
    });
    let tally = load.join();
    assert_eq!(tally.refused, 0, "a.test refused nothing");
    assert_eq!(
        tally.acked.len(),
        126,
        "a.test acknowledged every submission"
    );
    drain(&a, &b, tally.acked.len(), 120);
    let o = check_exactly_once(&b, BOB, &tally.acked, &tally.attempted);
    let cuts = relay.cuts();
    assert!(
        cuts >= 2,
        "the relay cut only {cuts} connections\n{}",
        a.log_tail(40)
    );
    eprintln!(
        "cut connections: seed {seed}, {cuts} cuts over {} relayed connections, {} acknowledged, {} delivered, lost {}, duplicated {}, {:.1} s",
        relay.connections.load(std::sync::atomic::Ordering::SeqCst),
        o.acked,
        o.delivered,
        o.lost,
        o.duplicated,
        t0.elapsed().as_secs_f64()
    );
}

/// b.test's data dir is a 8 MB tmpfs. With the disk filled by a ballast file, SMTP mail for
/// bob gets a 4xx at the end of DATA and s2s mail from a.test is deferred (it stays in a's
/// queue); mail stored before survives. Once the ballast is gone, the refused SMTP mail is
/// accepted on retry, the s2s mail arrives, and after a SIGKILL and restart b.test's store
/// opens and holds everything exactly once.
#[test]
fn disk_full_defers_and_recovers() {
    let t0 = Instant::now();
    let ip_b = "127.0.1.8";
    let mx_port = free_port(ip_b);
    let mx: SocketAddr = format!("{ip_b}:{mx_port}").parse().expect("addr");
    let extra_b = format!(
        "[smtp]\nlisten = [\"{mx}\"]\ntrusted_networks = [\"127.0.0.0/8\"]\nverify = false\n"
    );
    let (mut a, mut b) = pair("127.0.1.7", ip_b, "", &extra_b);
    let fs = match Tmpfs::mount(&b.data_dir(), "8m") {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("SKIPPED disk_full_defers_and_recovers: cannot mount a tmpfs here ({e})");
            return;
        }
    };
    a.start();
    b.start();
    a.add_user(ALICE);
    b.add_user(BOB);
    let carol = "carol@c.test";
    let mut acked: Vec<String> = Vec::new();
    let mut attempted: Vec<String> = Vec::new();
    let smtp = |token: &str, size: usize, attempted: &mut Vec<String>| -> u16 {
        attempted.push(token.to_string());
        let mut c = common::crash::Client::connect(mx, false).expect("smtp connect");
        c.send(carol, BOB, &text_message(carol, BOB, token, size))
            .expect("smtp transaction")
    };
    // Mail stored before the disk fills.
    for i in 0..3 {
        let t = format!("before-smtp-{i}");
        assert_eq!(smtp(&t, 2000, &mut attempted), 250);
        acked.push(t);
        let t = format!("before-s2s-{i}");
        a.send(ALICE, &[BOB], &text_message(ALICE, BOB, &t, 2000));
        attempted.push(t.clone());
        acked.push(t);
    }
    drain(&a, &b, 6, 30);

    let ballast = fs.dir.join("ballast");
    let filled = fs.fill(&ballast);
    eprintln!("disk full: ballast of {filled} bytes");
    // redb may still have free pages inside its file: send until the store runs out.
    let mut refused = None;
    for i in 0..40 {
        let t = format!("full-smtp-{i}");
        match smtp(&t, 300_000, &mut attempted) {
            250 => acked.push(t),
            code => {
                assert_eq!(code, 452, "a full disk is 452 4.3.1 (RFC 3463)");
                eprintln!("disk full: SMTP message {i} of 300 kB refused with {code}");
                refused = Some(t);
                break;
            }
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("no 4xx with a full disk\n{}", b.log_tail(40)));
    // s2s mail is deferred: it stays in a's queue over at least two attempts.
    let deferred_before = a.log().matches("delivery deferred").count();
    let t = "full-s2s".to_string();
    a.send(ALICE, &[BOB], &text_message(ALICE, BOB, &t, 300_000));
    attempted.push(t.clone());
    acked.push(t.clone());
    a.wait_for("a to defer the mail twice", 30, || {
        a.log().matches("delivery deferred").count() >= deferred_before + 2
    });
    assert_eq!(a.queue().len(), 1, "the deferred mail stays queued");
    assert!(
        !b.mailbox(BOB).iter().any(|l| l.subject == t),
        "not stored on a full disk"
    );
    // Space returns.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let deadline = Instant::now() + Duration::from_secs(30);
    let retried = format!("{refused}-retry");
    loop {
        match smtp(&retried, 300_000, &mut attempted) {
            250 => break,
            code => assert!(
                Instant::now() < deadline && (code == 451 || code == 452),
                "SMTP after the disk recovered: {code}\n{}",
                b.log_tail(40)
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    acked.push(retried);
    drain(&a, &b, acked.len(), 60);
    // After a SIGKILL the store opens cleanly and holds everything exactly once.
    b.kill();
    b.start();
    let o = check_exactly_once(&b, BOB, &acked, &attempted);
    eprintln!(
        "disk full: {} acknowledged, {} delivered, lost {}, duplicated {}, {:.1} s",
        o.acked,
        o.delivered,
        o.lost,
        o.duplicated,
        t0.elapsed().as_secs_f64()
    );
    drop(a);
    b.kill();
    // Unmount before b's temp dir is removed: a mount point cannot be, and would stay behind.
    drop(fs);
    drop(b);
}
