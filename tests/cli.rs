//! The command line with and without a running server, and config errors.

mod common;

use common::*;

#[test]
fn commands_work_without_a_server_and_the_queue_survives_into_serve() {
    let (mut a, mut b) = pair("127.0.0.34", "127.0.0.35", "", "");
    // No server runs: the commands open the store themselves.
    a.add_user("alice@a.test");
    a.add_user("carol@a.test");
    let users = String::from_utf8(a.ok(&["user", "list"], b"")).unwrap();
    assert_eq!(users, "alice@a.test\ncarol@a.test\n");
    let out = a.cmd(
        &["user", "add", "alice@a.test", "--password-stdin"],
        b"pw\n",
    );
    assert!(!out.status.success(), "a duplicate user is an error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = a.cmd(
        &["user", "add", "x@elsewhere.test", "--password-stdin"],
        b"pw\n",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a domain this server serves"));
    a.ok(&["user", "del", "carol@a.test"], b"");
    assert_eq!(
        String::from_utf8(a.ok(&["user", "list"], b"")).unwrap(),
        "alice@a.test\n"
    );

    // A local send is stored at once; a remote one is queued.
    a.send(
        "alice@a.test",
        &["alice@a.test"],
        b"Subject: note to self\n\nremember\n",
    );
    let mbox = a.mailbox("alice@a.test");
    assert_eq!(mbox.len(), 1);
    assert_eq!(mbox[0].subject, "note to self");
    let stored = a.show("alice@a.test", mbox[0].uid);
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.contains("\r\n\r\nremember\r\n"),
        "LF input becomes CRLF: {text:?}"
    );
    assert!(
        text.contains("Message-ID: <") && text.contains("Date: "),
        "submission adds Date and Message-ID: {text}"
    );

    b.start();
    b.add_user("bob@b.test");
    a.send(
        "alice@a.test",
        &["bob@b.test"],
        &message("alice@a.test", "bob@b.test", "queued-offline", "x"),
    );
    let q = a.queue();
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(
        q[0].contains("bob@b.test") && q[0].contains("not tried yet"),
        "{q:?}"
    );

    // Refusals give a reason and a non-zero exit.
    for (args, why) in [
        (
            vec!["send", "--from", "alice@a.test", "nobody@a.test"],
            "no such local user",
        ),
        (
            vec!["send", "--from", "mallory@b.test", "alice@a.test"],
            "not in a domain this server serves",
        ),
        (
            vec!["send", "--from", "alice@a.test", "not an address"],
            "bad recipient address",
        ),
        (
            vec!["mailbox", "show", "alice@a.test", "99"],
            "no message with uid 99",
        ),
    ] {
        let out = a.cmd(&args, b"Subject: x\n\ny\n");
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }

    // Now the server starts and sends what was queued while it was down.
    a.start();
    b.wait_for("the queued mail", 30, || b.mailbox("bob@b.test").len() == 1);
    // With the server running the same commands go through its admin socket.
    a.add_user("dave@a.test");
    assert!(
        String::from_utf8(a.ok(&["user", "list"], b""))
            .unwrap()
            .contains("dave@a.test")
    );
    a.wait_for("a's queue to empty", 30, || a.queue().is_empty());
}

#[test]
fn a_bad_config_names_file_key_and_reason_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[server]\ndomains = [\"a.test\"]\n[s2s]\ntls = \"maybe\"\n",
            "tls",
        ),
        ("[server]\ndomains = []\n", "server.domains"),
        (
            "[server]\ndomains = [\"a.test\"]\n[s2s]\nmax_stanza_bytes = 100\n",
            "s2s.max_stanza_bytes",
        ),
        (
            "[server]\ndomains = [\"a.test\"]\n[s2s]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"\n",
            "s2s.cert",
        ),
        ("[server]\ndomains = [\"a.test\"]\nlisten = 1\n", "listen"),
        ("[server\n", "TOML"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
        if *key != "TOML" {
            assert!(err.contains(key), "names the key {key}: {err}");
        }
        assert!(err.starts_with("xmta: "), "one error message: {err}");
    }
    let out = std::process::Command::new(BIN)
        .args(["--config", "/nonexistent/xmta.toml", "serve"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/xmta.toml"));
}

#[test]
fn queue_flush_retries_deferred_mail_now() {
    let (mut a, mut b) = pair("127.0.2.110", "127.0.2.111", "", "");
    // A backoff of an hour: without the flush the mail would wait that long.
    let cfg = std::fs::read_to_string(&a.config).unwrap();
    let cfg = cfg
        .replace("retry_initial_secs = 1", "retry_initial_secs = 3600")
        .replace("retry_max_secs = 2", "retry_max_secs = 7200");
    std::fs::write(&a.config, cfg).unwrap();
    let out = a.cmd(&["queue", "flush"], b"");
    assert!(!out.status.success(), "flush needs the running server");
    assert!(String::from_utf8_lossy(&out.stderr).contains("while the server runs"));
    a.start();
    a.add_user("alice@a.test");
    // b.test is down: the first attempt fails and the item waits for its next try.
    let m = message("alice@a.test", "bob@b.test", "flushed", "hi");
    a.send("alice@a.test", &["bob@b.test"], &m);
    a.wait_for("a failed first attempt", 30, || {
        a.queue()
            .iter()
            .any(|l| l.contains("pending (") && !l.contains("not tried yet"))
    });
    b.start();
    b.add_user("bob@b.test");
    let out = String::from_utf8(a.ok(&["queue", "flush"], b"")).unwrap();
    assert!(out.contains("1 queued item(s) made due now"), "{out}");
    b.wait_for("the flushed mail", 20, || {
        !b.mailbox("bob@b.test").is_empty()
    });
    a.wait_for("the queue to empty", 20, || a.queue().is_empty());
}
