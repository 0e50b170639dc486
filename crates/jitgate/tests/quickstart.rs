//! `jitgate quickstart` runs to its end, and leaves no namespace, process or file behind —
//! neither when it finishes nor when it is interrupted (SIGINT).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

/// The namespaces and the work directory a quickstart announced in its first lines.
fn announced(out: &str) -> (Vec<String>, String) {
    let names = out
        .lines()
        .nth(1)
        .expect("namespace line")
        .split_whitespace()
        .filter(|w| w.starts_with("jgqs"))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(names.len(), 3, "{out}");
    let dir = out.lines().find_map(|l| l.trim().strip_prefix("work directory ")).expect("work directory").to_owned();
    (names, dir)
}

/// Fails when any of `names` is still a namespace, `dir` still exists, or a process still
/// mentions `dir` on its command line or in its environment (every process the quickstart
/// starts has its profile, under `dir`, in JITGATE_CONFIG).
fn nothing_left(names: &[String], dir: &str) {
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for n in names {
        assert!(!list.contains(n.as_str()), "namespace {n} left behind:\n{list}");
    }
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        for what in ["cmdline", "environ"] {
            if let Ok(text) = std::fs::read(entry.path().join(what)) {
                let text = String::from_utf8_lossy(&text).replace('\0', " ");
                assert!(!text.contains(dir), "a process was left behind ({}): {text}", entry.path().display());
            }
        }
    }
}

fn available(test: &str) -> bool {
    match jitgate_netns::unavailable() {
        Some(why) => {
            jitgate_netns::skip(test, &why);
            false
        }
        None => true,
    }
}

#[test]
fn the_quickstart_closes_opens_and_closes_a_port_and_leaves_nothing() {
    if !available("the_quickstart_closes_opens_and_closes_a_port_and_leaves_nothing") {
        return;
    }
    let out = Command::new(BIN).args(["quickstart", "--seconds", "2"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let (names, dir) = announced(&stdout);
    // Closed, open from my address only, closed at expiry.
    let order = [
        "port 22 of the VM is OPEN from workstation",
        "port 22 of the VM is closed from workstation",
        "open on every enforcement point",
        "port 22 of the VM is OPEN from workstation",
        "port 22 of the VM is closed from elsewhere",
        "port 22 of the VM is closed from workstation",
        "Revoked  Expired",
    ];
    let mut rest: &str = &stdout;
    for want in order {
        let at = rest.find(want).unwrap_or_else(|| panic!("{want:?} missing (in order):\n{stdout}"));
        rest = &rest[at + want.len()..];
    }
    nothing_left(&names, &dir);
}

#[test]
fn an_interrupted_quickstart_leaves_nothing() {
    if !available("an_interrupted_quickstart_leaves_nothing") {
        return;
    }
    // Ctrl-C in a terminal signals the whole process group; `kill -INT PID` only the quickstart.
    interrupt(true);
    interrupt(false);
}

fn interrupt(whole_group: bool) {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(BIN)
        .args(["quickstart", "--seconds", "30"])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    // Interrupt while the port is open: server, agent, listener and namespaces all live.
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "ended early:\n{seen}");
        seen.push_str(&line);
        if line.starts_with("== 6.") {
            break;
        }
    }
    let (names, dir) = announced(&seen);
    let target = if whole_group { format!("-{}", child.id()) } else { child.id().to_string() };
    let sent = Command::new("kill").args(["-INT", "--", &target]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the quickstart did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "an interrupted quickstart fails");
    nothing_left(&names, &dir);
}
