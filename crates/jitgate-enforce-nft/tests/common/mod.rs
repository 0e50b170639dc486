//! Kernel-test helpers over `jitgate-netns`.
//!
//! Every test makes its own namespaces and veth pairs (`jitgate_netns`: names unique to the
//! process and the call, deleted on drop, also when the test fails), so tests run in parallel.
//! Work "inside" a namespace runs on a short-lived thread that has `setns`'d into it
//! ([`TestNs::inside`]): sockets opened there stay in that namespace for their whole life. The
//! test's own thread never moves. Setup failures panic here: they end the test that met them.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jitgate_enforce_nft::NftFirewall;
pub use jitgate_netns::Netns;

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
    if let Some(why) = jitgate_netns::unavailable() {
        return Some(why);
    }
    let probe = match Netns::new("probe") {
        Ok(ns) => ns,
        Err(e) => return Some(format!("no network namespace: {e}")),
    };
    match probe.run(NftFirewall::usable) {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("nftables not usable: {e}")),
        Err(e) => Some(format!("cannot enter a namespace: {e}")),
    }
}

/// Returns early from a test, with the reason printed, when the kernel tests cannot run.
#[macro_export]
macro_rules! require_kernel {
    () => {
        if let Some(reason) = common::skip_reason() {
            jitgate_netns::skip(module_path!(), &reason);
            return;
        }
    };
}

/// A new namespace, which must be made.
pub fn netns(tag: &str) -> Netns {
    Netns::new(tag).unwrap_or_else(|e| panic!("namespace {tag}: {e}"))
}

/// A veth pair between two namespaces, both ends up; returns the interface names (`a` side,
/// `b` side).
pub fn veth(a: &Netns, b: &Netns) -> (String, String) {
    jitgate_netns::veth_pair(a, b).unwrap_or_else(|e| panic!("veth: {e}"))
}

/// Adds an address (IPv6 without duplicate address detection, so it is usable at once).
pub fn addr(ns: &Netns, dev: &str, cidr: &str) {
    ns.addr(dev, cidr).unwrap_or_else(|e| panic!("{cidr} on {dev}: {e}"));
}

/// What the kernel tests do in a namespace, panicking on setup failures.
pub trait TestNs {
    /// Runs `f` on a thread inside the namespace.
    fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T;
    /// `ip -n NAME …`, which must succeed.
    fn must_ip(&self, args: &[&str]);
    /// A command inside the namespace, which must succeed; returns its stdout.
    fn must_exec(&self, cmd: &str, args: &[&str]) -> String;
    fn must_sysctl(&self, key: &str, value: &str);
    /// Opens the firewall in this namespace.
    fn firewall(&self) -> NftFirewall;
    /// `nft -j list set inet jitgate NAME`, parsed.
    fn list_set(&self, set: &str) -> serde_json::Value;
    /// The elements of one of our sets, as nft's JSON shows them.
    fn elements(&self, set: &str) -> Vec<serde_json::Value>;
    fn has_table(&self) -> bool;
}

impl TestNs for Netns {
    fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.run(f).unwrap_or_else(|e| panic!("{e}"))
    }

    fn must_ip(&self, args: &[&str]) {
        self.ip(args).unwrap_or_else(|e| panic!("{e}"));
    }

    fn must_exec(&self, cmd: &str, args: &[&str]) -> String {
        self.exec(cmd, args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn must_sysctl(&self, key: &str, value: &str) {
        self.sysctl(key, value).unwrap_or_else(|e| panic!("{e}"));
    }

    fn firewall(&self) -> NftFirewall {
        self.inside(NftFirewall::open).expect("open netlink socket")
    }

    fn list_set(&self, set: &str) -> serde_json::Value {
        let out = self.must_exec("nft", &["-j", "list", "set", "inet", "jitgate", set]);
        serde_json::from_str(&out).expect("nft -j output")
    }

    fn elements(&self, set: &str) -> Vec<serde_json::Value> {
        let v = self.list_set(set);
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("set").or_else(|| o.get("map")))
            .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn has_table(&self) -> bool {
        self.must_exec("nft", &["list", "tables"]).contains("jitgate")
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
            let (tcp, udp) = ns.inside(move || {
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
    ns.inside(move || {
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
    let sock = ns.inside(move || UdpSocket::bind(bind).expect("bind udp"));
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
