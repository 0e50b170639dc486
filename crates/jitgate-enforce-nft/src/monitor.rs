//! Watching nftables for changes others make to `table inet jitgate`: a netlink socket in the
//! nftables multicast group (`NFNLGRP_NFTABLES`), the one `nft monitor` reads.
//!
//! The kernel tells every committed transaction to that group: one message per object it
//! created or deleted (tables, chains, rules, sets, elements — attribute 1 of each names its
//! table), then `NFT_MSG_NEWGEN` with the new generation and the committing process. Each
//! message's header carries the netlink port of the socket that sent the transaction. Our own
//! changes come from our socket (element batches) or from the `nft` processes we run (a
//! replacement; `nft` binds its socket to its own pid as port): those ports are [`Own`] and
//! ignored. A generation in which anyone else touched our table rings the alarm, once, when its
//! `NEWGEN` arrives — at once, no polling. When the kernel drops events because the socket's
//! buffer is full (`ENOBUFS`), what was lost is unknown and the alarm rings too.
//!
//! The parsing is pure ([`parse_events`], [`Generations`]) and unit-tested; [`Monitor`] is the
//! thread around the socket.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use jitgate_enforce::{Alarm, Tampered};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::net::sockopt;

use crate::netlink::{messages, u16_at, u32_at, Message, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NLA_TYPE_MASK};
use crate::{NftError, FAMILY, TABLE};

/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
pub const NFNLGRP_NFTABLES: u32 = 7;
// linux/netfilter/nf_tables.h
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_ID: u16 = 1;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;
/// Attribute 1 of every object message (`NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_SET_TABLE` …).
const NFTA_OBJECT_TABLE: u16 = 1;
const ENOBUFS: i32 = 105;
/// Room for the events of a large batch of our own (each element is told, ~100 bytes).
const RECV_BUFFER: usize = 16 << 20;
/// How many of our latest `nft` processes are remembered as ours.
const CHILDREN: usize = 16;

/// One message of the nftables multicast group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An object was created or deleted: its message type (without the subsystem), the port of
    /// the socket that sent the change, and whether it is in `table inet jitgate`.
    Object { ty: u16, port: u32, ours: bool },
    /// A transaction was committed: the port that sent it, the new generation, and the process
    /// that committed it (as the kernel names it).
    Generation { port: u32, id: u32, pid: Option<u32>, process: Option<String> },
}

impl Event {
    /// `table inet jitgate` deleted (by a flush, a `delete table`, or a replacement).
    pub fn deletes_our_table(&self) -> bool {
        matches!(self, Event::Object { ty: NFT_MSG_DELTABLE, ours: true, .. })
    }

    /// `table inet jitgate` created (by a replacement, or anyone's `add table`).
    pub fn creates_our_table(&self) -> bool {
        matches!(self, Event::Object { ty: NFT_MSG_NEWTABLE, ours: true, .. })
    }

    /// The netlink port of the socket that sent the change.
    pub fn port(&self) -> u32 {
        match self {
            Event::Object { port, .. } | Event::Generation { port, .. } => *port,
        }
    }
}

/// The events in one datagram of the multicast group; other messages are skipped.
pub fn parse_events(buf: &[u8]) -> Result<Vec<Event>, String> {
    let mut out = Vec::new();
    for Message { ty, bytes, .. } in messages(buf)? {
        if ty >> 8 != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        let port = u32_at(bytes, 12).unwrap_or(0);
        let family = bytes.get(16).copied().unwrap_or(0);
        let attrs = attributes(bytes.get(20..).unwrap_or(&[]));
        let attr = |t: u16| attrs.iter().find(|(ty, _)| *ty == t).map(|(_, d)| *d);
        let msg = ty & 0xff;
        if msg == NFT_MSG_NEWGEN {
            out.push(Event::Generation {
                port,
                id: attr(NFTA_GEN_ID).and_then(be32).unwrap_or(0),
                pid: attr(NFTA_GEN_PROC_PID).and_then(be32),
                process: attr(NFTA_GEN_PROC_NAME).map(c_string),
            });
        } else {
            let ours = family == NFPROTO_INET && attr(NFTA_OBJECT_TABLE).map(c_string).as_deref() == Some(TABLE);
            out.push(Event::Object { ty: msg, port, ours });
        }
    }
    Ok(out)
}

fn attributes(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16_at(b, 0).unwrap_or(0) as usize;
        let ty = u16_at(b, 2).unwrap_or(0) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[crate::netlink::align4(len).min(b.len())..];
    }
    out
}

fn be32(d: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(..4)?.try_into().ok()?))
}

fn c_string(d: &[u8]) -> String {
    String::from_utf8_lossy(d.split(|b| *b == 0).next().unwrap_or(&[])).into_owned()
}

/// The netlink ports whose changes are our own: the firewall's socket and the `nft` processes
/// it ran (the latest [`CHILDREN`]).
#[derive(Debug, Default)]
pub struct Own {
    socket: u32,
    children: VecDeque<u32>,
}

impl Own {
    pub fn new(socket: u32) -> Self {
        Own { socket, children: VecDeque::new() }
    }

    /// An `nft` process of ours: recorded before it is given its script, so before it commits.
    pub fn child(&mut self, pid: u32) {
        if self.children.len() == CHILDREN {
            self.children.pop_front();
        }
        self.children.push_back(pid);
    }

    pub fn is_ours(&self, port: u32) -> bool {
        port == self.socket || self.children.contains(&port)
    }
}

/// Shared between the firewall (which records its `nft` processes) and its monitor.
pub type SharedOwn = Arc<Mutex<Own>>;

pub(crate) fn lock_own(o: &SharedOwn) -> MutexGuard<'_, Own> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// Follows the events generation by generation and says which ones someone else used to
/// change our table.
#[derive(Debug, Default)]
pub struct Generations {
    /// Foreign changes to our table in the generation being told: (type, count).
    changes: Vec<(u16, usize)>,
}

impl Generations {
    /// Takes one event; at the end of a generation in which someone else touched our table,
    /// says what happened.
    pub fn feed(&mut self, event: &Event, own: &Own) -> Option<Tampered> {
        match event {
            Event::Object { ty, port, ours } => {
                if *ours && !own.is_ours(*port) {
                    match self.changes.iter_mut().find(|(t, _)| t == ty) {
                        Some((_, n)) => *n += 1,
                        None => self.changes.push((*ty, 1)),
                    }
                }
                None
            }
            Event::Generation { id, pid, process, .. } => {
                let changes = std::mem::take(&mut self.changes);
                if changes.is_empty() {
                    return None;
                }
                let what = if changes.iter().any(|(t, _)| *t == NFT_MSG_DELTABLE) {
                    format!("table {FAMILY} {TABLE} deleted")
                } else {
                    let list: Vec<String> = changes.iter().map(|(t, n)| format!("{n} × {}", verb(*t))).collect();
                    format!("table {FAMILY} {TABLE} changed ({})", list.join(", "))
                };
                let by = match (process, pid) {
                    (Some(p), Some(pid)) => format!(" by {p} (pid {pid})"),
                    (None, Some(pid)) => format!(" by pid {pid}"),
                    _ => String::new(),
                };
                Some(Tampered { what: format!("{what}{by}, generation {id}") })
            }
        }
    }

    /// Events were lost: whatever was being told is unknown.
    pub fn lost(&mut self) -> Tampered {
        self.changes.clear();
        Tampered { what: "nftables events were lost (the watch's buffer overflowed)".into() }
    }
}

fn verb(ty: u16) -> &'static str {
    match ty {
        NFT_MSG_NEWTABLE => "table updated",
        NFT_MSG_NEWCHAIN => "chain added",
        NFT_MSG_DELCHAIN => "chain deleted",
        NFT_MSG_NEWRULE => "rule added",
        NFT_MSG_DELRULE => "rule deleted",
        NFT_MSG_NEWSET => "set added",
        NFT_MSG_DELSET => "set deleted",
        NFT_MSG_NEWSETELEM => "element added",
        NFT_MSG_DELSETELEM => "element deleted",
        _ => "other change",
    }
}

/// A socket in the nftables multicast group of the current network namespace.
pub struct EventSocket {
    socket: Socket,
    buf: Vec<u8>,
}

impl EventSocket {
    /// Joins `NFNLGRP_NFTABLES` in the network namespace of the calling thread.
    pub fn open() -> Result<Self, NftError> {
        let sock = |what: &'static str| move |source| NftError::Socket { what, source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(sock("socket(NETLINK_NETFILTER)"))?;
        socket.bind_auto().map_err(sock("bind"))?;
        socket.add_membership(NFNLGRP_NFTABLES).map_err(sock("joining NFNLGRP_NFTABLES"))?;
        if sockopt::set_socket_recv_buffer_size_force(&socket, RECV_BUFFER).is_err() {
            sockopt::set_socket_recv_buffer_size(&socket, RECV_BUFFER)
                .map_err(|e| NftError::Socket { what: "setsockopt(SO_RCVBUF)", source: e.into() })?;
        }
        Ok(EventSocket { socket, buf: Vec::with_capacity(256 * 1024) })
    }

    /// The next datagram's events; `Ok(None)` when events were lost (`ENOBUFS`). Blocks.
    pub fn receive(&mut self) -> Result<Option<Vec<Event>>, NftError> {
        loop {
            self.buf.clear();
            match self.socket.recv(&mut self.buf, 0) {
                Ok(_) => return parse_events(&self.buf).map(Some).map_err(NftError::Protocol),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(ENOBUFS) => return Ok(None),
                Err(source) => return Err(NftError::Socket { what: "recv (nftables events)", source }),
            }
        }
    }
}

/// The thread that reads the events and rings the alarm; stopped and joined on drop.
pub(crate) struct Monitor {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
    pub alarm: Arc<Mutex<Alarm>>,
}

impl Monitor {
    /// Opens the socket here (the calling thread's network namespace) and starts the thread.
    pub fn start(own: SharedOwn, alarm: Alarm) -> Result<Monitor, NftError> {
        let mut events = EventSocket::open()?;
        let stop = rustix::event::eventfd(0, EventfdFlags::CLOEXEC)
            .map_err(|e| NftError::Socket { what: "eventfd", source: e.into() })?;
        let stopped =
            stop.try_clone().map_err(|source| NftError::Socket { what: "duplicating the eventfd", source })?;
        let alarm = Arc::new(Mutex::new(alarm));
        let ring = alarm.clone();
        let thread = std::thread::Builder::new()
            .name("nft-monitor".into())
            .spawn(move || {
                let ring = |t: Tampered| {
                    let alarm = ring.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    alarm(t)
                };
                let mut generations = Generations::default();
                loop {
                    let mut fds = [PollFd::new(&events.socket, PollFlags::IN), PollFd::new(&stopped, PollFlags::IN)];
                    match rustix::event::poll(&mut fds, None) {
                        Ok(_) => {}
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(e) => {
                            ring(Tampered { what: format!("the watch of nftables stopped: poll: {e}") });
                            return;
                        }
                    }
                    if !fds[1].revents().is_empty() {
                        return;
                    }
                    match events.receive() {
                        Ok(Some(list)) => {
                            for event in &list {
                                let told = generations.feed(event, &lock_own(&own));
                                if let Some(t) = told {
                                    ring(t);
                                }
                            }
                        }
                        // Lost or unreadable: what the kernel told is unknown, so it rings.
                        Ok(None) | Err(NftError::Protocol(_)) => ring(generations.lost()),
                        Err(e) => {
                            ring(Tampered { what: format!("the watch of nftables stopped: {e}") });
                            return;
                        }
                    }
                }
            })
            .map_err(|source| NftError::Socket { what: "starting the watch's thread", source })?;
        Ok(Monitor { stop, thread: Some(thread), alarm })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
