//! Config reload (SIGHUP) helpers: edit a running Xmta's config file, signal it, and wait
//! for the log line that says what the reload did (never a fixed sleep).

use std::process::Command;

use super::Xmta;

/// The reload's log lines (see `reload_config` in src/server.rs).
pub const RELOADED: &str = "SIGHUP: config reloaded";
pub const NOT_LOADED: &str = "SIGHUP: the config does not load";
pub const NOT_HOLDING: &str = "SIGHUP: the config does not hold";

/// Replaces the first `from` in the config file by `to` (which must be there).
pub fn edit_config(x: &Xmta, from: &str, to: &str) {
    let cfg = std::fs::read_to_string(&x.config).expect("config");
    assert!(cfg.contains(from), "{from:?} not in {}", cfg);
    std::fs::write(&x.config, cfg.replacen(from, to, 1)).expect("config");
}

/// Sends SIGHUP to the running `xmta serve` and waits until the log has one more `line`.
pub fn hup_and_wait(x: &Xmta, line: &str) {
    let before = x.log().matches(line).count();
    let pid = x.child.as_ref().expect("running").id();
    let st = Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(st.success());
    x.wait_for(line, 10, || x.log().matches(line).count() > before);
}

/// Edits the config and reloads it; the reload must succeed.
pub fn reload(x: &Xmta, from: &str, to: &str) {
    edit_config(x, from, to);
    hup_and_wait(x, RELOADED);
}
