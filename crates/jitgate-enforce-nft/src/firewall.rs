//! The thin I/O layer: the netlink socket and the `nft` process.

use std::collections::HashSet;
use std::io::{ErrorKind, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jitgate_enforce::{
    Alarm, Desired, DnatKey, DnatTarget, ElemOp, Firewall, FirewallError, GrantKey, Mode, Protected, L4,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use rustix::net::sockopt;

use crate::elements::{describe, op_elem};
use crate::inspect::{
    elements_in, encode_get_elements, encode_get_sets, encode_get_tables, parse_replies, set_of, table_of, Reply,
    TableContents, TableName,
};
use crate::monitor::{lock_own, Monitor, Own, SharedOwn};
use crate::netlink::{encode, encode_delete_table, encode_probe, parse_acks, Ack, Batch};
use crate::ruleset::{ruleset, unsupported};
use crate::NftError;

/// How long to wait for the kernel's acknowledgements. The kernel processes a batch while it
/// is being sent, so they are normally queued before `send` returns.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// The send buffer bounds the size of one batch (a batch must be one datagram): 64 MiB is
/// about 1.8 million IPv4 elements. Raising it past `wmem_max` needs CAP_NET_ADMIN, which
/// programming nftables needs anyway.
const SEND_BUFFER: usize = 64 << 20;
const RECV_BUFFER: usize = 4 << 20;
const ENOENT: i32 = 2;
const EPERM: i32 = 1;
const EMSGSIZE: i32 = 90;

/// Where `nft` may live when it is not on `PATH` (e.g. `/usr/sbin` for a non-login shell).
const NFT_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];

/// A `NETLINK_NETFILTER` socket in the network namespace where it was opened, and the
/// sequence counter of its batches.
///
/// [`NftFirewall::replace`] and [`NftFirewall::usable`] run the `nft` binary, which works in
/// the network namespace of the *calling thread*: call them from the namespace the socket was
/// opened in.
pub struct NftFirewall {
    socket: Socket,
    seq: u32,
    /// The netlink ports of our own changes (this socket, our `nft` processes).
    own: SharedOwn,
    /// Watching for changes others make (see [`NftFirewall::watch`]).
    monitor: Option<Monitor>,
}

impl std::fmt::Debug for NftFirewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftFirewall")
            .field("seq", &self.seq)
            .field("watching", &self.monitor.is_some())
            .finish_non_exhaustive()
    }
}

fn sock(what: &'static str) -> impl FnOnce(std::io::Error) -> NftError {
    move |source| NftError::Socket { what, source }
}

impl NftFirewall {
    /// Opens a `NETLINK_NETFILTER` socket in the current network namespace.
    pub fn open() -> Result<Self, NftError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(sock("socket(NETLINK_NETFILTER)"))?;
        let local = socket.bind_auto().map_err(sock("bind"))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(sock("connect"))?;
        // Acks without a copy of the request, with the kernel's message and the offset of the
        // attribute it refused (to name the operation).
        socket.set_cap_ack(true).map_err(sock("setsockopt(NETLINK_CAP_ACK)"))?;
        socket.set_ext_ack(true).map_err(sock("setsockopt(NETLINK_EXT_ACK)"))?;
        if sockopt::set_socket_send_buffer_size_force(&socket, SEND_BUFFER).is_err() {
            sockopt::set_socket_send_buffer_size(&socket, SEND_BUFFER)
                .map_err(|e| NftError::Socket { what: "setsockopt(SO_SNDBUF)", source: e.into() })?;
        }
        if sockopt::set_socket_recv_buffer_size_force(&socket, RECV_BUFFER).is_err() {
            sockopt::set_socket_recv_buffer_size(&socket, RECV_BUFFER)
                .map_err(|e| NftError::Socket { what: "setsockopt(SO_RCVBUF)", source: e.into() })?;
        }
        sockopt::set_socket_timeout(&socket, sockopt::Timeout::Recv, Some(ACK_TIMEOUT))
            .map_err(|e| NftError::Socket { what: "setsockopt(SO_RCVTIMEO)", source: e.into() })?;
        let seq = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1);
        let own = Arc::new(Mutex::new(Own::new(local.port_number())));
        Ok(NftFirewall { socket, seq, own, monitor: None })
    }

    /// Whether nftables can be programmed here: the `nft` binary is present, a dry run
    /// (`nft -c`) of our table with an element of every kind passes, and the kernel takes
    /// `NFT_MSG_DESTROYSETELEM` (Linux ≥ 6.3) from us. `Err` says what is missing.
    pub fn usable() -> Result<(), FirewallError> {
        let unusable = |e: NftError| FirewallError::Unusable(e.to_string());
        let nft = nft_binary()
            .ok_or_else(|| FirewallError::Unusable("the nft binary was not found (PATH, /usr/sbin, /sbin)".into()))?;
        let now = Instant::now();
        run_nft(&nft, &["-c", "-f", "-"], &ruleset(&sample_state(now), now), "checking the table (nft -c)", |_| {})
            .map_err(unusable)?;
        let mut fw = NftFirewall::open().map_err(unusable)?;
        let batch = encode_probe(fw.seq);
        fw.seq = batch.next_seq;
        let acks = fw.transact(&batch).map_err(unusable)?;
        match acks.iter().find(|a| a.errno != 0 && a.errno != ENOENT) {
            None => Ok(()),
            Some(a) if a.errno == EPERM => {
                Err(FirewallError::Unusable("netlink: operation not permitted (CAP_NET_ADMIN needed)".into()))
            }
            Some(a) => Err(FirewallError::Unusable(format!(
                "the kernel refused NFT_MSG_DESTROYSETELEM ({}); Linux 6.3 or later is needed",
                crate::errno_text(a.errno)
            ))),
        }
    }

    /// Replaces `table inet jitgate` with `desired` in one transaction (`nft -f -` with
    /// [`ruleset`]). Refuses, before touching anything, a state with entries this backend
    /// cannot express (gateway entries that mix IPv4 and IPv6: there is no NAT64).
    pub fn replace(&mut self, desired: &Desired, now: Instant) -> Result<(), NftError> {
        let bad = unsupported(desired);
        if !bad.is_empty() {
            return Err(NftError::Unsupported(bad.join("; ")));
        }
        let nft = nft_binary().ok_or_else(|| NftError::NftMissing("not found (PATH, /usr/sbin, /sbin)".into()))?;
        let own = &self.own;
        run_nft(&nft, &["-f", "-"], &ruleset(desired, now), "replacing the table", |pid| lock_own(own).child(pid))
    }

    /// Starts watching nftables in the network namespace of the calling thread (call it from
    /// the one the firewall was opened in): `alarm` rings, from the watch's own thread, after
    /// every transaction in which someone else changed `table inet jitgate` (deleted it, flushed
    /// the ruleset, changed a chain, rule, set or element), and when events were lost. Our own
    /// changes through this firewall never ring it. A second call only replaces the alarm. The
    /// watch stops when the firewall is dropped.
    pub fn watch(&mut self, alarm: Alarm) -> Result<(), NftError> {
        match &self.monitor {
            Some(m) => *m.alarm.lock().unwrap_or_else(|p| p.into_inner()) = alarm,
            None => self.monitor = Some(Monitor::start(self.own.clone(), alarm)?),
        }
        Ok(())
    }

    /// Applies `ops` in one netlink batch and waits for the kernel's acknowledgements: either
    /// all of them take effect or none does. An error names the refused operation.
    pub fn apply(&mut self, ops: &[ElemOp]) -> Result<(), NftError> {
        if ops.is_empty() {
            return Ok(());
        }
        for op in ops {
            op_elem(op).map_err(|e| NftError::Unsupported(format!("{}: {e}", describe(op))))?;
        }
        let batch = encode(ops, self.seq);
        self.seq = batch.next_seq;
        let acks = self.transact(&batch)?;
        // Prefer an error that names a message (and so an operation) over one for the batch.
        let failed = acks
            .iter()
            .find(|a| a.errno != 0 && a.seq != batch.begin_seq)
            .or_else(|| acks.iter().find(|a| a.errno != 0));
        match failed {
            None => Ok(()),
            Some(a) => Err(NftError::Kernel {
                what: batch.describe(ops, a.seq, a.offset),
                errno: a.errno,
                message: a.message.clone(),
            }),
        }
    }

    /// Deletes our table if it exists (one netlink batch).
    pub fn remove(&mut self) -> Result<(), NftError> {
        let batch = encode_delete_table(self.seq);
        self.seq = batch.next_seq;
        let acks = self.transact(&batch)?;
        match acks.iter().find(|a| a.errno != 0 && a.errno != ENOENT) {
            None => Ok(()),
            Some(a) => Err(NftError::Kernel {
                what: batch.describe(&[], a.seq, None),
                errno: a.errno,
                message: a.message.clone(),
            }),
        }
    }

    /// Every table the kernel holds, in every family (a netlink dump: it works when nftables
    /// is there and this process may use it).
    pub fn tables(&mut self) -> Result<Vec<TableName>, NftError> {
        let seq = self.next_seq();
        let replies = self.dump(&encode_get_tables(seq), seq, "listing tables")?;
        Ok(replies.iter().filter_map(table_of).collect())
    }

    /// What `table inet jitgate` holds (its sets with their element counts, expired elements
    /// not counted), or `None` when there is no such table.
    pub fn inspect(&mut self) -> Result<Option<TableContents>, NftError> {
        let seq = self.next_seq();
        let sets: Vec<String> = match self.dump(&encode_get_sets(seq), seq, "listing the sets of our table") {
            Ok(replies) => replies.iter().filter_map(set_of).collect(),
            Err(NftError::Kernel { errno: ENOENT, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut contents = TableContents::default();
        for set in sets {
            let seq = self.next_seq();
            let replies = self.dump(&encode_get_elements(seq, &set), seq, "listing the elements of a set")?;
            contents.sets.push((set, replies.iter().map(elements_in).sum()));
        }
        Ok(Some(contents))
    }

    fn next_seq(&mut self) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        seq
    }

    /// Sends one dump request and reads its answer to the end (`NLMSG_DONE`).
    fn dump(&mut self, request: &[u8], seq: u32, what: &'static str) -> Result<Vec<Reply>, NftError> {
        self.socket.send(request, 0).map_err(|source| NftError::Socket { what: "send", source })?;
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => return Err(NftError::Socket { what: "recv (a dump)", source }),
            }
            for reply in parse_replies(&buf, seq).map_err(NftError::Protocol)? {
                match reply {
                    Reply::Done => return Ok(out),
                    Reply::Error(errno) => {
                        return Err(NftError::Kernel { what: what.to_owned(), errno, message: None });
                    }
                    object => out.push(object),
                }
            }
        }
    }

    /// Sends one batch and collects the acknowledgements of its messages (and an error for the
    /// batch as a whole, if any).
    fn transact(&mut self, batch: &Batch) -> Result<Vec<Ack>, NftError> {
        let sent = self.socket.send(&batch.bytes, 0).map_err(|e| {
            if e.raw_os_error() == Some(EMSGSIZE) {
                NftError::Protocol(format!(
                    "batch of {} bytes is larger than the socket's send buffer",
                    batch.bytes.len()
                ))
            } else {
                NftError::Socket { what: "send", source: e }
            }
        })?;
        if sent != batch.bytes.len() {
            return Err(NftError::Protocol(format!("sent {sent} of {} bytes", batch.bytes.len())));
        }
        let mut pending: HashSet<u32> = batch.messages.iter().map(|m| m.seq).collect();
        let mut acks = Vec::new();
        let mut failed = false;
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        while !pending.is_empty() {
            buf.clear();
            // After an error the kernel has queued everything it will send: drain, don't wait.
            let flags = if failed { rustix::net::RecvFlags::DONTWAIT.bits() as i32 } else { 0 };
            match self.socket.recv(&mut buf, flags) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    return Err(NftError::Socket {
                        what: "recv (acknowledgements lost: the batch's outcome is unknown)",
                        source: e,
                    })
                }
            }
            for ack in parse_acks(&buf).map_err(NftError::Protocol)? {
                if pending.remove(&ack.seq) || ack.seq == batch.begin_seq {
                    failed |= ack.errno != 0;
                    acks.push(ack);
                }
                // Anything else is a late answer to an earlier batch: ignore it.
            }
        }
        if !failed && !pending.is_empty() {
            return Err(NftError::Protocol(format!(
                "no acknowledgement for {} of {} messages within {ACK_TIMEOUT:?}",
                pending.len(),
                batch.messages.len()
            )));
        }
        Ok(acks)
    }
}

/// The agent's view of nftables; [`NftError`]s become [`FirewallError`]s (see its `From`).
impl Firewall for NftFirewall {
    fn usable(&self) -> Result<(), FirewallError> {
        NftFirewall::usable()
    }

    fn replace(&mut self, desired: &Desired, now: Instant) -> Result<(), FirewallError> {
        NftFirewall::replace(self, desired, now).map_err(FirewallError::from)
    }

    fn apply(&mut self, ops: &[ElemOp]) -> Result<(), FirewallError> {
        NftFirewall::apply(self, ops).map_err(FirewallError::from)
    }

    fn watch(&mut self, alarm: Alarm) -> Result<(), FirewallError> {
        NftFirewall::watch(self, alarm).map_err(FirewallError::from)
    }
}

/// The `nft` binary: `JITGATE_NFT` when set (and then only that), else the first `nft` on the
/// PATH, in /usr/sbin or in /sbin.
fn nft_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("JITGATE_NFT") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(NFT_DIRS.iter().map(PathBuf::from)).map(|d| d.join("nft")).find(|p| p.is_file())
}

/// Runs `nft ARGS` with `script` on its standard input; `spawned` is told its pid before it is
/// given the script (so before it can commit anything).
fn run_nft(
    nft: &PathBuf,
    args: &[&str],
    script: &str,
    what: &'static str,
    spawned: impl FnOnce(u32),
) -> Result<(), NftError> {
    let mut child = Command::new(nft)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NftError::NftMissing(format!("{}: {e}", nft.display())))?;
    spawned(child.id());
    let stdin = child.stdin.take();
    let output = std::thread::scope(|s| {
        // Write from another thread so that a chatty nft cannot deadlock us.
        let writer = s.spawn(move || stdin.map(|mut i| i.write_all(script.as_bytes())));
        let output = child.wait_with_output();
        let _ = writer.join();
        output
    })
    .map_err(|e| NftError::NftMissing(format!("{}: {e}", nft.display())))?;
    if output.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    Err(NftError::Nft { what, status: output.status.to_string(), stderr })
}

/// A state with one element of every kind, for the dry run in [`NftFirewall::usable`].
fn sample_state(now: Instant) -> Desired {
    let end = now + Duration::from_secs(60);
    // Fixed literals that always parse (a unit test checks the sample holds every one).
    let net = |s: &str| s.parse::<ipnet::IpNet>().ok();
    let mut d = Desired::empty(Mode::Gateway);
    d.protected.insert(Protected { dest: None, proto: L4::Tcp, port: 22, cut_sessions: true });
    let vm4 = IpAddr::from([192, 0, 2, 10]);
    let vm6 = IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10]);
    for dest in [vm4, vm6] {
        d.protected.insert(Protected { dest: Some(dest), proto: L4::Udp, port: 53, cut_sessions: true });
    }
    for (source, dest) in [
        ("192.0.2.1/32", None),
        ("192.0.2.0/24", None),
        ("2001:db8::1/128", None),
        ("2001:db8::/64", None),
        ("192.0.2.1/32", Some(vm4)),
        ("0.0.0.0/0", Some(vm4)),
        ("2001:db8::1/128", Some(vm6)),
        ("::/0", Some(vm6)),
    ] {
        if let Some(source) = net(source) {
            d.grants.insert(GrantKey { source, dest, proto: L4::Tcp, port: 22 }, end);
        }
    }
    for (source, addr) in
        [("192.0.2.1/32", vm4), ("192.0.2.0/24", vm4), ("2001:db8::1/128", vm6), ("2001:db8::/64", vm6)]
    {
        if let Some(source) = net(source) {
            let target = DnatTarget { addr, port: 22 };
            d.dnat.insert(DnatKey { source, proto: L4::Tcp, public_port: 50022 }, (target, end));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dry_run_sample_holds_every_kind_of_element() {
        let d = sample_state(Instant::now());
        assert_eq!((d.protected.len(), d.grants.len(), d.dnat.len()), (3, 8, 4));
        assert!(unsupported(&d).is_empty(), "{:?}", unsupported(&d));
    }
}
