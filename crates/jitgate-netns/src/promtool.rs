//! `promtool check metrics` (Debian's `prometheus` package) on a metrics exposition, for the
//! tests of the server's and the agent's `/metrics`.

use std::io::Write;
use std::process::{Command, Stdio};

/// Checks `exposition` with `promtool check metrics`: `true` when it passed; `false` when
/// promtool is not installed (the test was skipped with [`crate::skip`], which fails under
/// `CI=true`).
///
/// # Panics
/// When promtool finds a problem (its report is the message), or cannot be run.
pub fn check(test: &str, exposition: &str) -> bool {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::skip(test, "needs `promtool` (apt-get install prometheus)");
            return false;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(exposition.as_bytes()) {
            panic!("writing to promtool: {e}");
        }
    }
    let out = match child.wait_with_output() {
        Ok(out) => out,
        Err(e) => panic!("waiting for promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\non:\n{exposition}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}
