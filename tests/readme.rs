//! The README's commands, run for real (issue 8 item 7: every command in the README is run
//! by a test or by CI).
//!
//! Every fenced ```` ```sh ```` block of README.md (read at test time) is preceded by an
//! HTML comment `<!-- readme-test: NAME -->`; each NAME has a test below that builds the
//! fixture the block assumes, runs the block with bash (`set -e -o pipefail`, so any
//! failing command fails the test) in a temp dir, and checks what the block promises.
//! A block without a known NAME, or a NAME without its block, fails `every_sh_block_is_tested`.
//! Inline `` `xmta ...` `` commands in the prose are checked against `--help` (subcommands
//! and flags exist).
//!
//! Mechanical substitutions (all of them; nothing else in a block is changed):
//! - `xmta` (on PATH) and `target/release/xmta` (in a fake checkout) are a wrapper script
//!   that runs this build's binary (`CARGO_BIN_EXE_xmta`) and records each call's
//!   arguments, output and exit status for the assertions.
//! - `cargo build --release` is a no-op and `cargo run --release -- ARGS` runs `xmta ARGS`
//!   (a shell function): cargo test already built the binary; a release build is too slow.
//! - `sleep N` is a shell function that polls instead of sleeping: every server started in
//!   the background so far has its admin socket up (so its listeners are bound), and every
//!   running server's outbound queue is empty (mail sent before it has been delivered).
//! - `date +%F` prints 2026-12-01, the day the README's restore line names, so the backup
//!   line writes the file the restore line reads.
//! - `/tmp/qs`, `/etc/xmta`, `/backups` are directories in the temp dir; `HOME` is a temp
//!   dir holding generated `Maildir` and `mbox` fixtures; addresses `127.0.0.1:PORT` are
//!   127.0.1.16x with free ports (this test's addresses). `example.org` stays: the
//!   fixture configs serve it, and a private dnsmasq answers its SRV/A records.
//! - Lines listed in `SKIPPED_LINES` are removed, with the reason given there.

mod common;

use common::ops::{Dns, cert, this_year};
use common::{BIN, free_port};
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Block lines the test does not run, and why.
const SKIPPED_LINES: &[(&str, &str, &str)] = &[(
    "two-commands",
    "scripts/test",
    "the whole suite, this test included: CI runs it (.ci/run calls exactly scripts/test)",
)];

/// Commands in README prose (not in sh blocks) that no test can run, and why; the
/// inline-command check skips them. (`xmta ...` inline commands are all checked.)
const PROSE_NOT_RUN: &[(&str, &str)] = &[
    (
        "certbot certonly -d example.org",
        "needs a public domain and Let's Encrypt",
    ),
    (
        "systemctl reload",
        "needs systemd; SIGHUP is tested in tests/ops.rs",
    ),
];

const README_BLOCKS: &[&str] = &[
    "two-commands",
    "quick-start",
    "using-it",
    "deploying",
    "operations",
];

struct Block {
    name: String,
    line: usize,
    text: String,
}

fn readme() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&p).expect("read README.md")
}

/// The ```sh blocks with the name from the `<!-- readme-test: NAME -->` comment on the
/// nearest non-blank line before them ("" when there is none).
fn sh_blocks() -> Vec<Block> {
    let text = readme();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_end() == "```sh" {
            let name = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .and_then(|l| {
                    l.trim()
                        .strip_prefix("<!-- readme-test:")
                        .and_then(|r| r.strip_suffix("-->"))
                })
                .map(|n| n.trim().to_string())
                .unwrap_or_default();
            let start = i + 1;
            let mut j = start;
            while j < lines.len() && lines[j].trim_end() != "```" {
                j += 1;
            }
            assert!(j < lines.len(), "README.md:{}: unclosed ```sh block", i + 1);
            out.push(Block {
                name,
                line: i + 1,
                text: lines[start..j].join("\n") + "\n",
            });
            i = j;
        }
        i += 1;
    }
    out
}

fn block(name: &str) -> String {
    let b = sh_blocks();
    let found: Vec<&Block> = b.iter().filter(|b| b.name == name).collect();
    assert_eq!(found.len(), 1, "README.md needs one block named {name}");
    let mut text = found[0].text.clone();
    for (n, line, _why) in SKIPPED_LINES {
        if *n == name {
            let before = text.clone();
            text = text
                .lines()
                .filter(|l| l.trim() != *line)
                .collect::<Vec<_>>()
                .join("\n")
                + "\n";
            assert_ne!(before, text, "skipped line {line:?} is no longer in {name}");
        }
    }
    text
}

/// One recorded `xmta` call of a block.
#[derive(Debug)]
struct Call {
    args: Vec<String>,
    out: String,
    err: String,
    rc: i32,
}

/// A temp dir with the wrapper, the shell prelude and the processes a block started.
struct Sandbox {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

const WRAPPER: &str = r#"#!/usr/bin/env bash
# readme test: runs the real xmta, recording each call (serve: its pid, then exec).
S=__STATE__
for a in "$@"; do
  if [ "$a" = serve ]; then echo "$$ $PWD $*" >> "$S/serving"; exec "__REAL__" "$@"; fi
done
exec 9>>"$S/lock"; flock 9
n=$(( $(cat "$S/count" 2>/dev/null || echo 0) + 1 )); echo $n > "$S/count"
flock -u 9
d="$S/calls/$(printf %04d $n)"; mkdir -p "$d"
printf '%s\n' "$@" > "$d/args"
"__REAL__" "$@" >"$d/out" 2>"$d/err"; rc=$?
cat "$d/out"; cat "$d/err" >&2
echo $rc > "$d/rc"
exit $rc
"#;

const PRELUDE: &str = r#"set -e -o pipefail
export PATH="__SANDBOX__/bin:$PATH" HOME="__SANDBOX__/home"
S="__SANDBOX__/state"
cargo() {
  case "$*" in
    "build --release") return 0 ;;
    "run --release -- "*) shift 3; xmta "$@" ;;
    *) echo "readme test: unexpected cargo $*" >&2; return 1 ;;
  esac
}
date() { if [ "$*" = "+%F" ]; then echo 2026-12-01; else command date "$@"; fi; }
# The README sleeps to let servers start and mail arrive; poll for exactly that instead.
sleep() {
  local end=$((SECONDS + 30)) p pid cwd rest cfg dd
  for p in $(jobs -p); do
    until grep -q "^$p " "$S/serving" 2>/dev/null || ! kill -0 "$p" 2>/dev/null; do
      [ $SECONDS -lt $end ] || { echo "readme test: job $p did not start" >&2; return 1; }
      command sleep 0.02
    done
  done
  [ -f "$S/serving" ] || return 0
  while read -r pid cwd rest; do
    kill -0 "$pid" 2>/dev/null || continue
    set -- $rest; cfg=config/xmta.toml
    while [ $# -gt 0 ]; do [ "$1" = --config ] && cfg=$2; shift; done
    case "$cfg" in /*) ;; *) cfg="$cwd/$cfg" ;; esac
    dd=$(sed -n 's/^data_dir *= *"\(.*\)"$/\1/p' "$cfg")
    case "$dd" in /*) ;; *) dd="$cwd/$dd" ;; esac
    until [ -S "$dd/admin.sock" ]; do
      kill -0 "$pid" 2>/dev/null || { echo "readme test: server $pid exited" >&2; return 1; }
      [ $SECONDS -lt $end ] || { echo "readme test: $dd/admin.sock missing" >&2; return 1; }
      command sleep 0.02
    done
    until [ -z "$("__REAL__" --config "$cfg" queue list)" ]; do
      [ $SECONDS -lt $end ] || { echo "readme test: queue of $cfg not empty" >&2; return 1; }
      command sleep 0.05
    done
  done < "$S/serving"
}
"#;

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("xmta-readme-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        for d in ["bin", "state/calls", "home", "repo/target/release"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        let wrapper = WRAPPER
            .replace("__STATE__", &root.join("state").display().to_string())
            .replace("__REAL__", BIN);
        for p in ["bin/xmta", "repo/target/release/xmta"] {
            let p = root.join(p);
            std::fs::write(&p, &wrapper).expect("wrapper");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        Sandbox { dir, child: None }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn root(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// Starts bash on prelude + `script` in `cwd` (its own process group).
    fn spawn(&mut self, cwd: &Path, script: &str) {
        let prelude = PRELUDE
            .replace("__SANDBOX__", &self.root())
            .replace("__REAL__", BIN);
        let file = self.path("state/script.sh");
        std::fs::write(&file, format!("{prelude}\n{script}")).expect("script");
        let out = std::fs::File::create(self.path("state/stdout")).expect("stdout");
        let err = std::fs::File::create(self.path("state/stderr")).expect("stderr");
        let child = Command::new("bash")
            .arg(&file)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("bash");
        self.child = Some(child);
    }

    /// Waits for the script's exit; panics (with its output) unless it exits 0.
    fn finish(&mut self, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let child = self.child.as_mut().expect("spawned");
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "block still running after {secs} s:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = None;
        assert!(
            status.success(),
            "block failed ({status}):\n{}",
            self.output()
        );
        std::fs::read_to_string(self.path("state/stdout")).expect("stdout")
    }

    fn run(&mut self, cwd: &Path, script: &str) -> String {
        self.spawn(cwd, script);
        self.finish(60)
    }

    fn output(&self) -> String {
        let o = std::fs::read_to_string(self.path("state/stdout")).unwrap_or_default();
        let e = std::fs::read_to_string(self.path("state/stderr")).unwrap_or_default();
        format!("--- stdout\n{o}--- stderr\n{e}")
    }

    fn calls(&self) -> Vec<Call> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.path("state/calls"))
            .expect("calls")
            .map(|e| e.expect("entry").path())
            .collect();
        dirs.sort();
        dirs.iter()
            .map(|d| {
                let r = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
                Call {
                    args: r("args").lines().map(str::to_string).collect(),
                    out: r("out"),
                    err: r("err"),
                    rc: r("rc").trim().parse().unwrap_or(-1),
                }
            })
            .collect()
    }

    /// The one call whose arguments (after an optional `--config FILE`) start with `args`.
    fn call(&self, args: &[&str]) -> Call {
        let mut found: Vec<Call> = self
            .calls()
            .into_iter()
            .filter(|c| {
                let a: Vec<&str> = c.args.iter().map(String::as_str).collect();
                let a = if a.first() == Some(&"--config") {
                    &a[2..]
                } else {
                    &a[..]
                };
                a.starts_with(args)
            })
            .collect();
        assert_eq!(found.len(), 1, "one call {args:?}: {:#?}", self.calls());
        found.remove(0)
    }

    /// (pid, args) of the servers the blocks started.
    fn serving(&self) -> Vec<(u32, String)> {
        std::fs::read_to_string(self.path("state/serving"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (pid, rest) = l.split_once(' ')?;
                Some((pid.parse().ok()?, rest.to_string()))
            })
            .collect()
    }
}

/// Is `pid` still our xmta (not exited, not a reused pid)?
fn is_our_xmta(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.starts_with(BIN.as_bytes()))
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Still running: its process group (bash and what it started) is ours.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.wait();
        }
        for (pid, _) in self.serving() {
            if is_our_xmta(pid) {
                signal(pid, "TERM");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (pid, _) in self.serving() {
            while is_our_xmta(pid) {
                if Instant::now() > deadline {
                    signal(pid, "KILL");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn assert_ok(c: &Call) {
    assert_eq!(c.rc, 0, "{}: {c:#?}", c.err);
}

/// A minimal config for example.org with data under `data` (relative to the cwd).
fn example_config(ip: &str, port: u16, dns: &Dns) -> String {
    format!(
        "[server]\ndomains = [\"example.org\"]\ndata_dir = \"data\"\n\
         [s2s]\nlisten = [\"{ip}:{}\"]\ntls = \"off\"\n\
         [public]\nhostname = \"xmpp.example.org\"\n\
         [dns]\nnameservers = [\"{}\"]\n",
        port, dns.addr
    )
}

#[test]
fn every_sh_block_is_tested() {
    let names: Vec<String> = sh_blocks()
        .iter()
        .map(|b| {
            assert!(
                README_BLOCKS.contains(&b.name.as_str()),
                "README.md:{}: a ```sh block without a known `<!-- readme-test: NAME -->` \
                 comment before it ({:?}); add a test for it in tests/readme.rs",
                b.line,
                b.name
            );
            b.name.clone()
        })
        .collect();
    for n in README_BLOCKS {
        assert_eq!(
            names.iter().filter(|m| m == n).count(),
            1,
            "README.md has no (or more than one) block {n}"
        );
    }
    let text = readme();
    for (cmd, why) in PROSE_NOT_RUN {
        assert!(
            text.contains(&format!("`{cmd}")),
            "{cmd:?} ({why}) is no longer in README.md: remove it from PROSE_NOT_RUN"
        );
    }
}

/// "The two commands": `cargo run --release -- serve` on the default config serves.
/// Substitution: the default config is config/xmta.toml (the file the binary embeds),
/// copied into a fake checkout with its `127.0.0.1:5269` replaced by this test's address.
#[test]
fn two_commands_serve_on_the_default_config() {
    let mut sb = Sandbox::new();
    let ip = "127.0.1.161";
    let port = free_port(ip);
    let default =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/xmta.toml"))
            .expect("config/xmta.toml");
    assert!(default.contains("\"127.0.0.1:5269\""), "{default}");
    let repo = sb.path("repo");
    std::fs::create_dir_all(repo.join("config")).expect("mkdir");
    std::fs::write(
        repo.join("config/xmta.toml"),
        default.replace("127.0.0.1:5269", &format!("{ip}:{port}")),
    )
    .expect("config");
    let script = block("two-commands");
    assert!(script.contains("cargo run --release -- serve"), "{script}");
    sb.spawn(&repo, &script);
    // It serves: the s2s port answers and the admin socket is under ./data.
    let deadline = Instant::now() + Duration::from_secs(30);
    let sock = repo.join("data/admin.sock");
    while TcpStream::connect((ip, port)).is_err()
        || std::os::unix::net::UnixStream::connect(&sock).is_err()
    {
        assert!(
            sb.child
                .as_mut()
                .expect("bash")
                .try_wait()
                .expect("wait")
                .is_none(),
            "serve exited:\n{}",
            sb.output()
        );
        assert!(Instant::now() < deadline, "no listener:\n{}", sb.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    let serving = sb.serving();
    assert_eq!(serving.len(), 1, "{serving:?}");
    assert!(serving[0].1.ends_with("serve"), "{serving:?}");
    // SIGTERM: it exits 0 (README, Operations: Signals), and so does the block.
    signal(serving[0].0, "TERM");
    sb.finish(30);
    assert!(repo.join("data/xmta.redb").exists());
}

#[test]
fn quick_start_delivers_alice_mail_to_bob() {
    let mut sb = Sandbox::new();
    let ip = "127.0.1.162";
    let (pa, pb) = (free_port(ip), free_port(ip));
    let mut script = block("quick-start");
    for (from, to) in [
        ("/tmp/qs", sb.path("qs").display().to_string()),
        ("127.0.0.1", ip.to_string()),
        ("15269", pa.to_string()),
        ("25269", pb.to_string()),
    ] {
        assert!(script.contains(from), "quick start no longer has {from}");
        script = script.replace(from, &to);
    }
    let out = sb.run(&sb.path("repo"), &script);
    for c in [
        &["user", "add", "alice@a.test"][..],
        &["user", "add", "bob@b.test"],
        &["send", "--from", "alice@a.test", "bob@b.test"],
    ] {
        assert_ok(&sb.call(c));
    }
    let list = sb.call(&["mailbox", "list", "bob@b.test"]);
    assert_ok(&list);
    let lines: Vec<&str> = list.out.lines().collect();
    assert_eq!(lines.len(), 1, "{list:#?}");
    let f: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(f[0], "1", "{f:?}");
    assert_eq!(f[3], "alice@a.test", "{f:?}");
    assert_eq!(f[4], "hi", "{f:?}");
    assert!(
        out.ends_with(&list.out),
        "the block ends with bob's listing:\n{out}"
    );
    assert_eq!(sb.serving().len(), 2);
}

fn using_it_fixture(sb: &Sandbox, ip: &str, dns: &Dns) -> PathBuf {
    let work = sb.path("work");
    std::fs::create_dir_all(work.join("config")).expect("mkdir");
    let config = example_config(ip, free_port(ip), dns);
    std::fs::write(work.join("config/xmta.toml"), config).expect("config");
    std::fs::write(
        work.join("message.eml"),
        "From: alice@example.org\nTo: bob@example.net\nSubject: readme test\n\nhello\n",
    )
    .expect("message");
    work
}

fn check_using_it(sb: &Sandbox) {
    assert_ok(&sb.call(&["user", "add", "alice@example.org", "--password-stdin"]));
    let l = sb.call(&["user", "list"]);
    assert_ok(&l);
    assert_eq!(l.out, "alice@example.org\n", "{l:#?}");
    let s = sb.call(&["send"]);
    assert_ok(&s);
    assert!(s.out.contains("stored for alice@example.org"), "{s:#?}");
    assert!(s.out.contains("for bob@example.net"), "{s:#?}");
    let m = sb.call(&["mailbox", "list", "alice@example.org"]);
    assert_ok(&m);
    assert_eq!(m.out.lines().count(), 1, "{m:#?}");
    assert!(
        m.out.starts_with("1\t") && m.out.contains("\treadme test"),
        "{m:#?}"
    );
    let show = sb.call(&["mailbox", "show", "alice@example.org", "1"]);
    assert_ok(&show);
    assert!(
        show.out.contains("Subject: readme test\r\n") && show.out.contains("\r\n\r\nhello\r\n"),
        "{show:#?}"
    );
    let q = sb.call(&["queue", "list"]);
    assert_ok(&q);
    assert!(
        q.out.contains("alice@example.org\tbob@example.net"),
        "{q:#?}"
    );
    assert_ok(&sb.call(&["user", "del", "alice@example.org"]));
}

/// "Using it" without a server: the commands open the store themselves.
#[test]
fn using_it_without_a_server() {
    let mut sb = Sandbox::new();
    let dns = Dns::start("127.0.1.163", &[], &[]);
    let work = using_it_fixture(&sb, "127.0.1.164", &dns);
    sb.run(&work, &block("using-it"));
    check_using_it(&sb);
    let after = Command::new(BIN)
        .args(["user", "list"])
        .current_dir(&work)
        .output()
        .expect("user list");
    assert!(
        after.status.success() && after.stdout.is_empty(),
        "{after:?}"
    );
}

/// "Using it" with `xmta serve` running: the same commands go over the admin socket.
/// The fixture routes example.net to a closed port, so bob's copy stays queued.
#[test]
fn using_it_with_a_server() {
    let mut sb = Sandbox::new();
    let ip = "127.0.1.165";
    let dns = Dns::start("127.0.1.166", &[], &[]);
    let work = using_it_fixture(&sb, ip, &dns);
    let closed = free_port(ip);
    let cfg = work.join("config/xmta.toml");
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(&format!(
        "[s2s.routes]\n\"example.net\" = \"{ip}:{closed}\"\n"
    ));
    std::fs::write(&cfg, &text).expect("config");
    // Started through the wrapper so that the sandbox stops it (also on failure).
    sb.spawn(&work, "xmta serve & sleep 1\n");
    sb.finish(60);
    assert_eq!(sb.serving().len(), 1);
    assert!(work.join("data/admin.sock").exists());
    sb.run(&work, &block("using-it"));
    check_using_it(&sb);
    let (pid, _) = sb.serving()[0];
    assert!(is_our_xmta(pid), "the server still runs");
}

#[test]
fn deploying_for_a_real_domain() {
    let mut sb = Sandbox::new();
    let ip = "127.0.1.167";
    let (s2s, lmtp, map) = (free_port(ip), free_port(ip), free_port(ip));
    let dns = Dns::start(
        "127.0.1.168",
        &[("xmpp.example.org", ip)],
        &[("example.org", "xmpp.example.org", s2s)],
    );
    let etc = sb.path("etc/xmta");
    std::fs::create_dir_all(&etc).expect("mkdir");
    let y = this_year();
    let (c, k) = cert(&etc, "example.org", &["example.org"], y - 1, y + 1);
    let config = format!(
        "[server]\ndomains = [\"example.org\"]\ndata_dir = \"{data}\"\n\
         [s2s]\nlisten = [\"{ip}:{s2s}\"]\ntls = \"required\"\ncert = \"{c}\"\nkey = \"{k}\"\n\
         [public]\nhostname = \"xmpp.example.org\"\n\
         [dns]\nnameservers = [\"{dns}\"]\n\
         [smtp]\nlmtp = \"{ip}:{lmtp}\"\n\
         [postfix]\nsocketmap = \"{ip}:{map}\"\n",
        data = sb.path("var/lib/xmta").display(),
        c = c.display(),
        k = k.display(),
        dns = dns.addr,
    );
    std::fs::write(etc.join("xmta.toml"), config).expect("config");
    let script = block("deploying");
    assert!(script.contains("/etc/xmta"), "{script}");
    let script = script.replace("/etc/xmta", &etc.display().to_string());
    sb.run(&sb.path("home"), &script);

    let d = sb.call(&["dns-records", "example.org"]);
    assert_ok(&d);
    assert!(
        d.out.lines().any(|l| l
            == format!("_xmpp-server._tcp.example.org. 3600 IN SRV 5 10 {s2s} xmpp.example.org.")),
        "{d:#?}"
    );
    let ch = sb.call(&["check"]);
    assert_eq!(ch.rc, 0, "no FAIL: {ch:#?}");
    check_lines(&ch.out);
    assert!(ch.out.contains("PASS dns example.org"), "{}", ch.out);
    assert!(ch.out.contains("PASS certificate"), "{}", ch.out);
    let p = sb.call(&["postfix-config"]);
    assert_ok(&p);
    assert!(p.out.contains("relay_domains = example.org\n"), "{}", p.out);
    assert!(
        p.out.contains(&format!(
            "transport_maps = socketmap:inet:{ip}:{map}:transport\n"
        )),
        "{}",
        p.out
    );
    assert!(
        p.out.contains(&format!("lmtp:inet:{ip}:{lmtp}")),
        "{}",
        p.out
    );
}

/// Every line of `xmta check` is PASS, WARN or FAIL; no FAIL.
fn check_lines(out: &str) {
    assert!(!out.is_empty());
    for l in out.lines() {
        assert!(
            l.starts_with("PASS ") || l.starts_with("WARN "),
            "{l:?} in\n{out}"
        );
    }
}

#[test]
fn operations_check_import_backup_restore() {
    let mut sb = Sandbox::new();
    let ip = "127.0.1.169";
    let port = free_port(ip);
    // check's DNS line passes only when the SRV record points here.
    let dns = Dns::start(
        "127.0.1.170",
        &[("xmpp.example.org", ip)],
        &[("example.org", "xmpp.example.org", port)],
    );
    let work = sb.path("work");
    std::fs::create_dir_all(work.join("config")).expect("mkdir");
    let config = example_config(ip, port, &dns);
    std::fs::write(work.join("config/xmta.toml"), &config).expect("config");
    // Fixtures: alice exists; ~/Maildir (12 messages) and ~/mbox (3 messages).
    let add = Command::new(BIN)
        .args(["user", "add", "alice@example.org", "--password-stdin"])
        .current_dir(&work)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(b"pw\n")?;
            c.wait()
        })
        .expect("user add");
    assert!(add.success());
    common::ops::make_maildir(&sb.path("home/Maildir"), 12);
    let mut mbox = String::new();
    for i in 0..3 {
        mbox.push_str(&format!(
            "From alice@example.org Tue Nov 14 22:13:2{i} 2023\nFrom: alice@example.org\n\
             Subject: sent-{i}\nStatus: RO\n\nsent {i}\n\n"
        ));
    }
    std::fs::write(sb.path("home/mbox"), mbox).expect("mbox");
    std::fs::create_dir_all(sb.path("backups")).expect("mkdir");
    let script = block("operations");
    assert!(script.contains("/backups/"), "{script}");
    let script = script.replace("/backups/", &format!("{}/", sb.path("backups").display()));
    sb.run(&work, &script);

    let ch = sb.call(&["check"]);
    assert_eq!(ch.rc, 0, "{ch:#?}");
    check_lines(&ch.out);
    assert!(ch.out.contains("PASS dns example.org"), "{}", ch.out);
    let d = sb.call(&["dns-records", "example.org"]);
    assert_ok(&d);
    assert!(
        d.out
            .contains(&format!("IN SRV 5 10 {port} xmpp.example.org.")),
        "{d:#?}"
    );
    let m = sb.call(&["import", "maildir"]);
    assert_ok(&m);
    assert!(
        m.args
            .contains(&sb.path("home/Maildir").display().to_string()),
        "{m:#?}"
    );
    let mb = sb.call(&["import", "mbox"]);
    assert_ok(&mb);
    let b = sb.call(&["backup"]);
    assert_ok(&b);
    let file = sb.path("backups/xmta-2026-12-01.redb");
    assert!(file.exists(), "{b:#?}");
    let r = sb.call(&["restore"]);
    assert_ok(&r);
    // The restored store has the imported mail.
    let inbox = Command::new(BIN)
        .args(["mailbox", "list", "alice@example.org"])
        .current_dir(&work)
        .output()
        .expect("mailbox list");
    assert!(inbox.status.success(), "{inbox:?}");
    assert_eq!(String::from_utf8_lossy(&inbox.stdout).lines().count(), 12);
}

/// Inline `xmta ...` commands in the prose: each subcommand and flag exists.
#[test]
fn inline_commands_exist() {
    let text = readme();
    let mut checked = BTreeMap::new();
    for span in text.split('`').skip(1).step_by(2) {
        let Some(rest) = span.strip_prefix("xmta ") else {
            continue;
        };
        let mut path: Vec<String> = Vec::new();
        let mut flags = Vec::new();
        let mut descending = true;
        for tok in rest.split_whitespace() {
            if tok.starts_with("--") {
                flags.push(tok.split('=').next().unwrap_or(tok).to_string());
            } else if descending && tok.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                let help = help(&path);
                if subcommands(&help).contains(&tok.to_string()) {
                    path.push(tok.to_string());
                } else {
                    descending = false;
                }
            } else {
                descending = false;
            }
        }
        assert!(!path.is_empty(), "`xmta {rest}`: no such subcommand");
        let h = help(&path);
        for f in &flags {
            assert!(h.contains(f.as_str()), "`xmta {rest}`: no flag {f} in\n{h}");
        }
        checked.insert(path.join(" "), flags);
    }
    for must in [
        "dns-records",
        "check",
        "postfix-config",
        "user add",
        "registry zonefile",
    ] {
        assert!(checked.contains_key(must), "{checked:?}");
    }
}

fn help(path: &[String]) -> String {
    let out = Command::new(BIN)
        .args(path)
        .arg("--help")
        .output()
        .expect("help");
    assert!(out.status.success(), "xmta {path:?} --help: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn subcommands(help: &str) -> Vec<String> {
    help.split("Commands:")
        .nth(1)
        .map(|s| s.split("Options:").next().unwrap_or(""))
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every ```toml block is a valid config (or, without `[server]`, a valid fragment of one):
/// `xmta --config BLOCK postfix-config` accepts it, so a renamed or misspelled key fails
/// (`deny_unknown_fields`). Substitutions: `[server] domains = ["example.org"]` is put
/// before a fragment without `[server]`; `/etc/xmta` is a temp dir; the certificate and
/// key files the block names are generated (loading a config reads them).
#[test]
fn toml_blocks_are_valid_config() {
    let text = readme();
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path().join("etc/xmta");
    std::fs::create_dir_all(&etc).expect("mkdir");
    let y = this_year();
    let (c, k) = cert(dir.path(), "gen", &["example.org"], y - 1, y + 1);
    let mut n = 0;
    for (i, part) in text.split("```toml\n").enumerate().skip(1) {
        let body = part.split("```").next().expect("block");
        let mut body = body.replace("/etc/xmta", &etc.display().to_string());
        if !body.contains("[server]") {
            body = format!("[server]\ndomains = [\"example.org\"]\n{body}");
        }
        for line in body.lines() {
            let mut kv = line.splitn(2, '=');
            let (Some(key), Some(val)) = (kv.next(), kv.next()) else {
                continue;
            };
            let src = match key.trim() {
                "cert" => &c,
                "key" => &k,
                _ => continue,
            };
            let path = val.trim().split('"').nth(1).expect("quoted path");
            std::fs::copy(src, dir.path().join(path)).expect("cert fixture");
        }
        let file = dir.path().join(format!("block{i}.toml"));
        std::fs::write(&file, &body).expect("write");
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&file)
            .arg("postfix-config")
            .current_dir(dir.path())
            .output()
            .expect("postfix-config");
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "README toml block {i} is not a valid config:\n{body}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert!(n >= 4, "{n} toml blocks");
}
