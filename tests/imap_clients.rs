//! The IMAP bridge with real mail clients: mbsync (isync) mirrors a 1000-message folder and
//! syncs flags both ways, mutt reads a message in batch mode, fetchmail fetches it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::imap::*;
use common::message;

/// Appends `n` messages with pipelined non-synchronizing literals (LITERAL+).
const SEED: &str = r#"
import socket, sys, time, threading
host, port, user, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
CONNS = 8
def seed(first, count, errors):
    try:
        s = socket.create_connection((host, port))
        f = s.makefile('rb')
        f.readline()
        s.sendall(b'l LOGIN %s secret\r\n' % user.encode())
        while not f.readline().startswith(b'l '): pass
        out = []
        for i in range(first, first + count):
            m = (b'From: sender%d@x.test\r\nTo: %s\r\nSubject: message %d\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m%d@x.test>\r\n\r\n' % (i, user.encode(), i, i)) + b'body line\r\n' * 40
            out.append(b'a%d APPEND INBOX {%d+}\r\n%s\r\n' % (i, len(m), m))
        s.sendall(b''.join(out))
        done = 0
        while done < count:
            l = f.readline()
            if not l: raise SystemExit('closed')
            if l.startswith(b'a'):
                assert b' OK [APPENDUID ' in l, l
                done += 1
    except BaseException as e:
        errors.append(e)
t = time.time()
errors = []
threads = [threading.Thread(target=seed, args=(k * n // CONNS, n // CONNS, errors)) for k in range(CONNS)]
for th in threads: th.start()
for th in threads: th.join()
assert not errors, errors
print('%d appended in %.2f s' % (n, time.time() - t))
"#;

/// Prints the flags of the messages with the given subjects: "subject flags".
const FLAGS: &str = r#"
import imaplib, sys, re
host, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
M = imaplib.IMAP4(host, port)
M.login(user, 'secret')
M.select('INBOX', readonly=True)
for subject in sys.argv[4:]:
    typ, data = M.search(None, 'HEADER', 'Message-ID', '"<m%s@x.test>"' % subject.split()[-1])
    nums = data[0].split()
    assert len(nums) == 1, (subject, data)
    typ, data = M.fetch(nums[0], '(FLAGS)')
    print(subject, re.search(rb'FLAGS \((.*?)\)', data[0]).group(1).decode())
M.logout()
"#;

/// Sets a flag on the message with the given subject.
const SET_FLAG: &str = r#"
import imaplib, sys
host, port, user, subject, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
M = imaplib.IMAP4(host, port)
M.login(user, 'secret')
M.select('INBOX')
typ, data = M.search(None, 'HEADER', 'Message-ID', '"<m%s@x.test>"' % subject.split()[-1])
assert len(data[0].split()) == 1, data
typ, data = M.store(data[0].split()[0], '+FLAGS', flag)
assert typ == 'OK', data
M.logout()
"#;

fn maildir_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The maildir file whose Subject header is `subject`.
fn file_with_subject(dir: &Path, subject: &str) -> std::path::PathBuf {
    let needle = format!("Subject: {subject}\n");
    maildir_files(dir)
        .into_iter()
        .find(|p| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).contains(&needle))
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no maildir file with {subject}"))
}

fn mbsync(rc: &Path) -> String {
    let out = run_ok(
        Command::new("mbsync").arg("-c").arg(rc).arg("-V").arg("-a"),
        120,
        "mbsync",
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Issue 4: mbsync pulls a 1000-message folder completely (bytes as stored), a second run
/// transfers nothing new, and flags set in one client show in the other (both ways).
#[test]
fn mbsync_mirrors_a_thousand_messages() {
    let (x, addr) = imap_server("m.test", "127.0.0.99", "");
    x.add_user("u@m.test");
    let port = addr.port().to_string();
    let seeded = python(SEED, &["127.0.0.99", &port, "u@m.test", "1000"], 60);
    eprintln!("{seeded}");
    assert_eq!(x.mailbox("u@m.test").len(), 1000);

    let dir = tempfile::tempdir().expect("tempdir");
    let mail = dir.path().join("mail");
    std::fs::create_dir_all(&mail).expect("mail dir");
    let rc = write_file(
        dir.path(),
        "mbsyncrc",
        format!(
            "FSync no\n\nIMAPAccount xmta\nHost 127.0.0.99\nPort {port}\nUser u@m.test\nPass secret\nSSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore remote\nAccount xmta\n\n\
             MaildirStore local\nPath {m}/\nInbox {m}/INBOX\n\n\
             Channel mirror\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Near\nSync All\nSyncState *\nExpunge None\n",
            m = mail.display()
        )
        .as_bytes(),
    );
    let t = Instant::now();
    let first = mbsync(&rc);
    eprintln!("first mbsync run: {:.2} s", t.elapsed().as_secs_f64());
    let inbox = mail.join("INBOX");
    let files = maildir_files(&inbox);
    assert_eq!(files.len(), 1000, "{first}");
    // Every message arrived with the bytes the store holds.
    // (mbsync writes maildir files with LF line ends and adds its X-TUID header.)
    let uid = x
        .mailbox("u@m.test")
        .iter()
        .find(|l| l.subject == "message 499")
        .expect("message 499")
        .uid;
    let stored = String::from_utf8(x.show("u@m.test", uid)).expect("utf8");
    let got = std::fs::read(file_with_subject(&inbox, "message 499")).expect("read");
    let got: String = String::from_utf8(got)
        .expect("utf8")
        .lines()
        .filter(|l| !l.starts_with("X-TUID: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(got, stored.replace("\r\n", "\n"));

    // A second run transfers nothing new: the same files, and one FETCH (of the flags).
    let fetches = || x.log().matches("command=\"FETCH\"").count();
    let before = maildir_files(&inbox);
    let fetched = fetches();
    assert!(
        fetched >= 1000,
        "{fetched} FETCH commands for 1000 messages"
    );
    let second = mbsync(&rc);
    assert_eq!(maildir_files(&inbox), before, "{second}");
    assert_eq!(fetches() - fetched, 1, "{second}");

    // Far to near: a flag set over IMAP by another client shows in the maildir.
    python(
        SET_FLAG,
        &["127.0.0.99", &port, "u@m.test", "message 7", "(\\Flagged)"],
        30,
    );
    mbsync(&rc);
    let f = file_with_subject(&inbox, "message 7");
    let name = f.file_name().expect("name").to_string_lossy().into_owned();
    assert!(
        name.rsplit_once(":2,")
            .is_some_and(|(_, fl)| fl.contains('F')),
        "{name}"
    );

    // Near to far: a message marked seen in the maildir is \Seen for other IMAP clients.
    let f = file_with_subject(&inbox, "message 9");
    let name = f.file_name().expect("name").to_string_lossy().into_owned();
    let (base, flags) = name.rsplit_once(":2,").unwrap_or((&name, ""));
    let mut flags: Vec<char> = flags.chars().collect();
    flags.push('S');
    flags.sort();
    let new_name = format!("{base}:2,{}", flags.iter().collect::<String>());
    std::fs::rename(&f, inbox.join("cur").join(new_name)).expect("rename");
    mbsync(&rc);
    let out = python(
        FLAGS,
        &[
            "127.0.0.99",
            &port,
            "u@m.test",
            "message 9",
            "message 7",
            "message 8",
        ],
        30,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("\\Seen"), "{out}");
    assert!(lines[1].contains("\\Flagged"), "{out}");
    assert!(
        !lines[2].contains("\\Seen") && !lines[2].contains("\\Flagged"),
        "{out}"
    );
}

/// Issue 4: mutt (in batch mode, on a pseudo-terminal from `script`) reads a message over
/// IMAP and pipes it out whole; fetchmail then fetches the same message to an MDA.
#[test]
fn mutt_reads_and_fetchmail_fetches() {
    let (x, addr) = imap_server("t.test", "127.0.0.100", "");
    x.add_user("u@t.test");
    let m = message(
        "a@b.test",
        "u@t.test",
        "mutt-test",
        "Hello mutt and fetchmail.",
    );
    x.send("u@t.test", &["u@t.test"], &m);
    let stored = String::from_utf8(x.show("u@t.test", 1)).expect("utf8");
    let dir = tempfile::tempdir().expect("tempdir");

    // mutt: pipe the first message of INBOX to a file, then quit.
    let out = dir.path().join("mutt.eml");
    let rc = write_file(
        dir.path(),
        "muttrc",
        format!(
            "set folder=\"imap://u%40t.test:secret@{addr}/\"\nset spoolfile=\"+INBOX\"\n\
             set ssl_starttls=no\nset ssl_force_tls=no\nset imap_passive=no\nset mail_check=0\n\
             set wait_key=no\nset quit=yes\nset pipe_decode=no\nset header_cache=\"\"\n\
             set message_cachedir=\"\"\nset record=\"\"\nset move=no\n"
        )
        .as_bytes(),
    );
    let mutt = format!(
        "mutt -n -F {} -e 'push \"<pipe-message>cat > {}<enter><quit>\"'",
        rc.display(),
        out.display()
    );
    run_ok(
        Command::new("script")
            .arg("-qec")
            .arg(&mutt)
            .arg("/dev/null")
            .env("TERM", "xterm")
            .env("HOME", dir.path()),
        60,
        "mutt",
    );
    let got = std::fs::read_to_string(&out).expect("mutt wrote nothing");
    assert_eq!(got, stored.replace("\r\n", "\n"));

    // fetchmail: one poll, no daemon, keep the message, deliver it to a file.
    let fm_out = dir.path().join("fetchmail.eml");
    let fmrc = write_file(
        dir.path(),
        "fetchmailrc",
        format!(
            "set no syslog\npoll {ip} service {port} protocol IMAP auth password\n  \
             user \"u@t.test\" password \"secret\"\n  sslproto ''\n  keep\n  \
             mda \"/bin/sh -c 'cat >> {out}'\"\n",
            ip = addr.ip(),
            port = addr.port(),
            out = fm_out.display()
        )
        .as_bytes(),
    );
    let mut perms = std::fs::metadata(&fmrc).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&fmrc, perms).expect("chmod");
    run_ok(
        Command::new("fetchmail")
            .arg("-f")
            .arg(&fmrc)
            .arg("--idfile")
            .arg(dir.path().join("fetchids"))
            .arg("--nodetach")
            .env("HOME", dir.path()),
        60,
        "fetchmail",
    );
    let got = std::fs::read_to_string(&fm_out).expect("fetchmail delivered nothing");
    // fetchmail puts its Received line on top; the message follows as stored.
    let (trace, rest) = got.split_once("From: a@b.test\n").expect("message");
    assert!(trace.starts_with("Received: from "), "{got}");
    let expected = stored.replace("\r\n", "\n");
    let expected = expected
        .strip_prefix("From: a@b.test\n")
        .unwrap_or(&expected);
    assert_eq!(rest.trim_end(), expected.trim_end());
    // fetchmail marked it seen, and kept it.
    assert_eq!(x.mailbox("u@t.test").len(), 1);
    assert!(x.log().contains("command=\"STORE\""));
}
