//! Throwaway network namespaces and veth pairs, for the kernel tests of `jitgate-enforce-nft`,
//! the end-to-end tests and `jitgate bench open-latency`/`kernel`. Every namespace is deleted when
//! its guard drops, even when a test fails; names are unique per process and call, so tests run
//! in parallel.
//!
//! Work can reach a namespace two ways: a process started through [`Netns::cmd`] (`ip netns exec`),
//! or a closure run by [`Netns::run`] on a short-lived thread that has `setns`'d into it — sockets
//! opened there (netlink, TCP, UDP) stay in that namespace for their whole life, and the calling
//! thread never moves.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub mod promtool;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (pid and counter in hex), short enough that
/// `jva` + it stays within the 15 characters of an interface name.
pub fn unique() -> String {
    format!("{:x}{:x}", std::process::id() & 0xfffff, COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output().map_err(|e| io::Error::new(e.kind(), format!("running {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// A test that cannot run here: prints why and returns, so the caller returns early; under
/// `CI=true` it fails instead, so that a skip never hides a missing install step in `.ci/run`.
///
/// # Panics
/// Under `CI=true`, always.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run: {why}. CI=true requires it; .ci/run must install what it needs");
    }
    // Written to the process's stderr itself, not through `eprintln!`, which the test harness
    // captures and shows only for failures: a skip must be seen in the output of `cargo test`.
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// Why namespace tests cannot run here, if they cannot: not root, or `ip`/`nft` missing.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (network namespaces and nftables)".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool).arg("-V").output().is_ok()
            || Command::new(tool).arg("--version").output().is_ok()
            || ["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(tool).is_file());
        if !found {
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
    /// A new namespace named `jg<tag><unique>`, with `lo` up and IPv6 duplicate address
    /// detection off.
    pub fn new(tag: &str) -> io::Result<Self> {
        let name = format!("jg{tag}{}", unique());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // IPv6 addresses valid at once: a link-local address finishing duplicate address
        // detection a second or two after its link came up is an address change in the middle
        // of a test (Chromium, for one, fails the requests in flight on it: ERR_NETWORK_CHANGED).
        // Best effort: a kernel without IPv6 has nothing to detect.
        for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
            let _ = ns.sysctl(key, "0");
        }
        Ok(ns)
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// The prefix that runs a program in this namespace.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// `ip -n NS …`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        run(Command::new("ip").args(["-n", &self.name]).args(args)).map(|_| ())
    }

    /// A program run inside the namespace, which must succeed; returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let out = run(self.cmd(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]).map(|_| ())
    }

    /// Adds an address in CIDR form to `dev` (IPv6 without duplicate address detection, so it is
    /// usable at once).
    pub fn addr(&self, dev: &str, cidr: &str) -> io::Result<()> {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"])
        } else {
            self.ip(&["-4", "addr", "add", cidr, "dev", dev])
        }
    }

    /// Runs `f` on a thread inside this namespace; fails when the thread cannot enter it. A
    /// panic in `f` goes on in the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| io::Error::other(format!("setns {path}: {e}")))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Joins two namespaces with a veth pair, both ends up and without addresses. Returns the
/// interface names (in `a`, in `b`).
pub fn veth_pair(a: &Netns, b: &Netns) -> io::Result<(String, String)> {
    let id = unique();
    let (ia, ib) = (format!("jva{id}"), format!("jvb{id}"));
    run(Command::new("ip")
        .args(["link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns", &b.name]))?;
    a.ip(&["link", "set", &ia, "up"])?;
    b.ip(&["link", "set", &ib, "up"])?;
    Ok((ia, ib))
}

/// Joins two namespaces with a veth pair and one address on each end, in CIDR form
/// (`10.9.0.1/24`). Returns the interface names (in `a`, in `b`).
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> io::Result<(String, String)> {
    let (ia, ib) = veth_pair(a, b)?;
    a.addr(&ia, a_addr)?;
    b.addr(&ib, b_addr)?;
    Ok((ia, ib))
}

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Starts a command with stdout piped (to read a readiness line) and stderr inherited.
    pub fn spawn(mut cmd: Command) -> io::Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {cmd:?}: {e}")))?;
        Ok(KillOnDrop(child))
    }

    /// Waits until the process prints a line containing `needle` on stdout.
    pub fn wait_for_line(&mut self, needle: &str) -> io::Result<String> {
        use std::io::{BufRead, BufReader};
        let stdout = self.0.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::Error::other(format!("the process ended before printing {needle:?}")));
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
