//! Throwaway network namespaces and veth pairs, for the end-to-end tests and
//! `jitgate bench open-latency`. Every namespace is deleted when its guard drops, even when a
//! test fails; names are unique per process so tests run in parallel.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    format!("{:x}{:x}", std::process::id() & 0xfffff, COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// Why namespace tests cannot run here, if they cannot: not root, or `ip`/`nft` missing.
pub fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("");
    if uid != "0" {
        return Some("needs root (network namespaces and nftables)".into());
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() && Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("needs `{tool}` (apt-get install iproute2 nftables)"));
        }
    }
    None
}

/// A network namespace that is deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let name = format!("jg{tag}{}", unique());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `ip -n NS …`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new("ip").args(["-n", &self.name]).args(args)).map(|_| ())
    }

    /// A sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        run(self.cmd("sysctl").args(["-q", "-w", &format!("{key}={value}")])).map(|_| ())
    }

    /// The prefix that runs a program in this namespace.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Joins two namespaces with a veth pair; addresses in CIDR form (`10.9.0.1/24`). Returns the
/// interface names (in `a`, in `b`).
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> anyhow::Result<(String, String)> {
    let id = unique();
    let (ia, ib) = (format!("jva{id}"), format!("jvb{id}"));
    run(Command::new("ip")
        .args(["link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns", &b.name]))?;
    for (ns, ifname, addr) in [(a, &ia, a_addr), (b, &ib, b_addr)] {
        let family = if addr.contains(':') { "-6" } else { "-4" };
        ns.ip(&[family, "addr", "add", addr, "dev", ifname, "nodad"])
            .or_else(|_| ns.ip(&[family, "addr", "add", addr, "dev", ifname]))?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok((ia, ib))
}

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Starts a command with stdout piped (to read a readiness line) and stderr inherited.
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(KillOnDrop(child))
    }

    /// Waits until the process prints a line containing `needle` on stdout.
    pub fn wait_for_line(&mut self, needle: &str) -> anyhow::Result<String> {
        use std::io::{BufRead, BufReader};
        let stdout = self.0.stdout.take().context("no stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("the process ended before printing {needle:?}");
            }
            if line.contains(needle) {
                // Keep draining stdout so the process never blocks on a full pipe.
                std::thread::spawn(move || {
                    let mut sink = String::new();
                    while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                        sink.clear();
                    }
                });
                return Ok(line.trim().to_owned());
            }
        }
    }

    /// Sends SIGKILL now.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill9();
    }
}
