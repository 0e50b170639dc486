//! Network-namespace helpers for the kernel tests.
//!
//! Every test makes its own namespaces and veth pairs with names unique to the process and the
//! test (`jg<pid>x<n>…`), so tests run in parallel; a guard deletes them on drop, also when the
//! test fails. Work "inside" a namespace runs on a short-lived thread that has `setns`'d into it:
//! sockets opened there (netlink, TCP, UDP) stay in that namespace for their whole life, and a
//! process spawned from that thread (`nft`) starts in it. The test's own thread never moves.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jitgate_enforce_nft::NftFirewall;

/// How long a connection attempt may take before the port counts as closed (our rules drop).
pub const CLOSED_WAIT: Duration = Duration::from_millis(400);
/// How long a connection attempt may take when the port should be open.
pub const OPEN_WAIT: Duration = Duration::from_secs(3);

/// Why the kernel tests cannot run here, if they cannot (checked once per process).
pub fn skip_reason() -> Option<String> {
    static REASON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    REASON.get_or_init(check).clone()
}

fn check() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool).arg("-V").output().is_ok()
            || ["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(tool).is_file());
        if !found {
            return Some(format!("`{tool}` not found"));
        }
    }
    let probe = Netns::new("probe");
    if let Err(e) = probe.run(NftFirewall::usable) {
        return Some(format!("nftables not usable: {e}"));
    }
    None
}

/// Returns early from a test, with the reason printed, when the kernel tests cannot run.
#[macro_export]
macro_rules! require_kernel {
    () => {
        if let Some(reason) = common::skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `jg<pid>x<n><tag>` (at most 15 characters for
/// short tags, the limit for interface names).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("jg{}x{n}{tag}", std::process::id())
}

fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME …`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// A command inside the namespace, which must succeed; returns its stdout.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, cmd];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&run("ip", &all).stdout).into_owned()
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Opens the firewall in this namespace.
    pub fn firewall(&self) -> NftFirewall {
        self.run(NftFirewall::open).expect("open netlink socket")
    }

    /// `nft -j list set inet jitgate NAME`, parsed.
    pub fn list_set(&self, set: &str) -> serde_json::Value {
        let out = self.exec("nft", &["-j", "list", "set", "inet", "jitgate", set]);
        serde_json::from_str(&out).expect("nft -j output")
    }

    /// The elements of one of our sets, as nft's JSON shows them.
    pub fn elements(&self, set: &str) -> Vec<serde_json::Value> {
        let v = self.list_set(set);
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("set").or_else(|| o.get("map")))
            .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    pub fn has_table(&self) -> bool {
        self.exec("nft", &["list", "tables"]).contains("jitgate")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A veth pair between two namespaces; returns the interface names (`a` side, `b` side).
pub fn veth(a: &Netns, b: &Netns) -> (String, String) {
    let base = unique("");
    let (ia, ib) = (format!("{base}a"), format!("{base}b"));
    run("ip", &["link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns", &b.name]);
    a.ip(&["link", "set", &ia, "up"]);
    b.ip(&["link", "set", &ib, "up"]);
    (ia, ib)
}

/// Adds an address (IPv6 without duplicate address detection, so it is usable at once).
pub fn addr(ns: &Netns, dev: &str, cidr: &str) {
    if cidr.contains(':') {
        ns.ip(&["addr", "add", cidr, "dev", dev, "nodad"]);
    } else {
        ns.ip(&["addr", "add", cidr, "dev", dev]);
    }
}

/// A server that echoes what it receives, on TCP and UDP, until dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    pub fn start(ns: &Netns, addrs: &[SocketAddr]) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &addr in addrs {
            let (tcp, udp) = ns.run(move || {
                let tcp = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
                let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
                (tcp, udp)
            });
            tcp.set_nonblocking(true).expect("nonblocking");
            let s = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((c, _)) => {
                            let s = s.clone();
                            conns.push(std::thread::spawn(move || echo_tcp(c, &s)));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                        Err(_) => break,
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            }));
            udp.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            let s = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        Echo { stop, threads }
    }
}

fn echo_tcp(mut c: TcpStream, stop: &AtomicBool) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens a TCP connection from `ns` (from `src` when given) to `dst`.
pub fn tcp_connect(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr, wait: Duration) -> Option<TcpStream> {
    ns.run(move || {
        let sock = socket2::Socket::new(socket2::Domain::for_address(dst), socket2::Type::STREAM, None).ok()?;
        if let Some(src) = src {
            sock.bind(&SocketAddr::new(src, 0).into()).expect("bind source");
        }
        sock.connect_timeout(&dst.into(), wait).ok()?;
        Some(TcpStream::from(sock))
    })
}

/// Whether data still goes both ways on an established connection.
pub fn echoes(stream: &mut TcpStream, wait: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(wait));
    if stream.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match stream.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    &buf == b"ping"
}

/// Whether a new TCP connection from `ns` (and `src`) to `dst` gets through and echoes.
pub fn tcp_open(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr) -> bool {
    match tcp_connect(ns, src, dst, OPEN_WAIT) {
        Some(mut s) => echoes(&mut s, OPEN_WAIT),
        None => false,
    }
}

/// Whether a new TCP connection attempt fails (our rules drop: it times out).
pub fn tcp_closed(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr) -> bool {
    match tcp_connect(ns, src, dst, CLOSED_WAIT) {
        Some(mut s) => !echoes(&mut s, CLOSED_WAIT),
        None => true,
    }
}

/// Whether a UDP datagram from `ns` to `dst` is echoed within `wait` (a few tries).
pub fn udp_echoes(ns: &Netns, dst: SocketAddr, wait: Duration, tries: u32) -> bool {
    let bind: SocketAddr =
        if dst.is_ipv4() { "0.0.0.0:0".parse().expect("addr") } else { "[::]:0".parse().expect("addr") };
    let sock = ns.run(move || UdpSocket::bind(bind).expect("bind udp"));
    sock.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 16];
    for _ in 0..tries {
        let _ = sock.send_to(b"ping", dst);
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if &buf[..n] == b"ping" {
                return true;
            }
        }
    }
    false
}

/// Polls `cond` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
