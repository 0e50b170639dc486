//! The nftables backend of jitgate: it owns `table inet jitgate` and changes nothing else.
//!
//! Two ways in, both atomic:
//! - [`NftFirewall::replace`] runs `nft -f -` with the script from [`ruleset`]: the whole table
//!   (sets, chains, elements with their remaining timeouts) is deleted and re-created in one
//!   transaction, so there is no moment where a protected port is open to everyone.
//! - [`NftFirewall::apply`] sends one nfnetlink batch built by [`encode_batch`] (one
//!   `NEWSETELEM`/`DESTROYSETELEM` message per set, all in one transaction) and waits for the
//!   kernel's acknowledgements. This is the hot path: no process is spawned.
//!
//! # The table
//! Host mode (the host's own ports, input hook):
//! ```text
//! table inet jitgate {
//!   set protected { type inet_proto . inet_service; }                   # Protected {proto, port}
//!   set cut       { type inet_proto . inet_service; }                   # ... with cut_sessions
//!   set allow4    { type ipv4_addr . inet_proto . inet_service; flags timeout; }  # /32 sources
//!   set allow4net_N { ... same type ...; flags timeout; }  # one per prefix length N = 0..=31
//!   set allow6 / allow6net_N (N = 0..=127)                 # the same for IPv6
//!   chain input { type filter hook input priority filter - 10; policy accept;
//!     iif "lo" accept
//!     meta l4proto . th dport != @protected accept
//!     meta l4proto . th dport != @cut ct state established,related accept
//!     meta nfproto ipv4 jump input4
//!     meta nfproto ipv6 jump input6
//!     drop }
//!   chain input4 {
//!     ip saddr . meta l4proto . th dport @allow4 accept
//!     ip saddr & 0.0.0.0 . meta l4proto . th dport @allow4net_0 accept
//!     ip saddr & 255.255.255.254 . meta l4proto . th dport @allow4net_31 accept
//!     ...                                                  # down to allow4net_1
//!   }
//!   chain input6 { ... }
//! }
//! ```
//! **Why one hash set per prefix length, not one interval set for all ranges.** The kernel's
//! interval sets for concatenations (pipapo) refuse overlapping elements (`EEXIST` for
//! `10.0.0.0/16 . tcp . 22` while `10.0.0.0/24 . tcp . 22` is in the set). Two live grants with
//! nested source ranges for the same port are legitimate, and a refused element would fail the
//! whole batch. Ranges of the *same* prefix length never partially overlap, so a hash set per
//! prefix length, looked up with the source masked to that length, holds any mix of grants. A
//! masked hash lookup is O(1) and an update costs what an exact element costs (pipapo updates
//! clone the match table: ~1.2 ms at 100k elements). The rules are walked only by packets to
//! protected ports that are not part of an established session (or of any session on a port
//! that cuts sessions): at most 33 lookups for IPv4, 129 for IPv6.
//!
//! Gateway mode adds the same for IPv4 and for IPv6, one family beside the other (a packet is
//! only ever checked against the sets of its own family; there is no NAT64):
//! ```text
//!   set gw_protected  { type ipv4_addr . inet_proto . inet_service; }  # vm address . proto . port
//!   set gw_cut        { ... }
//!   set gw_allow4 / gw_allow4net_N { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags timeout; }
//!   map dnat4 / dnat4net_N { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags timeout; }
//!   set gw_protected6 { type ipv6_addr . inet_proto . inet_service; }  # the same for IPv6 VMs
//!   set gw_cut6       { ... }
//!   set gw_allow6 / gw_allow6net_N { type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags timeout; }
//!   map dnat6 / dnat6net_N { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; flags timeout; }
//!   chain forward { type filter hook forward priority filter - 10; policy accept;
//!     meta nfproto ipv4 jump gw_forward4
//!     meta nfproto ipv6 jump gw_forward6 }
//!   chain gw_forward4 {
//!     ip daddr . meta l4proto . th dport != @gw_protected accept
//!     ip daddr . meta l4proto . th dport != @gw_cut ct state established,related accept
//!     ip saddr . ip daddr . meta l4proto . th dport @gw_allow4 accept
//!     ip saddr & MASK . ip daddr . meta l4proto . th dport @gw_allow4net_N accept   # N = 0, 31..=1
//!     drop }
//!   chain gw_forward6 {
//!     ip6 daddr . meta l4proto . th dport != @gw_protected6 accept
//!     ip6 daddr . meta l4proto . th dport != @gw_cut6 ct state established,related accept
//!     ip6 saddr . ip6 daddr . meta l4proto . th dport @gw_allow6 accept
//!     ip6 saddr & MASK . ip6 daddr . meta l4proto . th dport @gw_allow6net_N accept  # N = 0, 127..=1
//!     drop }
//!   chain prerouting { type nat hook prerouting priority dstnat; policy accept;
//!     meta nfproto ipv4 fib daddr type local jump gw_dnat4
//!     meta nfproto ipv6 fib daddr type local jump gw_dnat6 }
//!   chain gw_dnat4 {
//!     dnat ip to ip saddr . meta l4proto . th dport map @dnat4
//!     dnat ip to ip saddr & MASK . meta l4proto . th dport map @dnat4net_N   # longest prefix first
//!   }
//!   chain gw_dnat6 {
//!     dnat ip6 to ip6 saddr . meta l4proto . th dport map @dnat6
//!     dnat ip6 to ip6 saddr & MASK . meta l4proto . th dport map @dnat6net_N # longest prefix first
//!   }
//! ```
//! The forward check sees the translated destination, so a DNAT'ed connection needs a grant
//! for (source, vm address, proto, vm port) as well as the DNAT element. The IPv6 part is there
//! in every gateway table, used or not, so that the first IPv6 grant is an element batch like
//! any other, never a rebuild of the table. An IPv4 packet ends in `gw_forward4` (every path
//! there has a verdict), so the IPv6 rules cost IPv4 forwarding nothing; in the NAT chain an
//! IPv4 connection that no DNAT element maps meets one more `meta nfproto` comparison. A mixed
//! entry (an IPv6 source towards an IPv4 VM, or the reverse) cannot match any packet and is
//! refused as not expressible.

pub mod decode;
mod elements;
mod firewall;
mod inspect;
pub mod monitor;
mod netlink;
mod ruleset;

use jitgate_enforce::FirewallError;

pub use elements::{describe, dnat_map, grant_set};
pub use firewall::NftFirewall;
pub use inspect::{TableContents, TableName};
pub use netlink::encode_batch;
pub use ruleset::ruleset;

/// The longest timeout [`ruleset`] gives an element: a year. A longer lifetime (none that the
/// server gives: a grant lasts at most a day) is cut to it, so that no element makes `nft -f`
/// refuse the whole table (the kernel takes at most 2^64 ns). Cut, an element closes early,
/// never late. A netlink batch sends what it is given: the kernel refuses it whole, and the
/// agent then replaces the table.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// The table we own, in the `inet` family. Nothing outside it is ever touched.
pub const TABLE: &str = "jitgate";
/// The family of [`TABLE`].
pub const FAMILY: &str = "inet";

/// Host mode: the protected (proto . port) pairs.
pub const SET_PROTECTED: &str = "protected";
/// Host mode: the protected pairs whose sessions end with their grant.
pub const SET_CUT: &str = "cut";
/// Host mode: grants from exact IPv4 sources (`/32`).
pub const SET_ALLOW4: &str = "allow4";
/// Host mode: grants from IPv4 ranges, one set per prefix length: `allow4net_24` holds the /24s.
pub const SET_ALLOW4_NET: &str = "allow4net_";
/// Host mode: grants from exact IPv6 sources (`/128`).
pub const SET_ALLOW6: &str = "allow6";
/// Host mode: grants from IPv6 ranges, one set per prefix length: `allow6net_64` holds the /64s.
pub const SET_ALLOW6_NET: &str = "allow6net_";
/// Gateway mode: the protected (IPv4 vm address . proto . port) triples.
pub const SET_GW_PROTECTED: &str = "gw_protected";
/// Gateway mode: the protected IPv4 triples whose sessions end with their grant.
pub const SET_GW_CUT: &str = "gw_cut";
/// Gateway mode: grants from exact IPv4 sources to a VM address.
pub const SET_GW_ALLOW4: &str = "gw_allow4";
/// Gateway mode: grants from IPv4 ranges, one set per prefix length (`gw_allow4net_24`).
pub const SET_GW_ALLOW4_NET: &str = "gw_allow4net_";
/// Gateway mode: DNAT from an exact IPv4 source and public port to a VM address and port.
pub const MAP_DNAT4: &str = "dnat4";
/// Gateway mode: DNAT from IPv4 ranges, one map per prefix length (`dnat4net_24`).
pub const MAP_DNAT4_NET: &str = "dnat4net_";
/// Gateway mode: the protected (IPv6 vm address . proto . port) triples.
pub const SET_GW_PROTECTED6: &str = "gw_protected6";
/// Gateway mode: the protected IPv6 triples whose sessions end with their grant.
pub const SET_GW_CUT6: &str = "gw_cut6";
/// Gateway mode: grants from exact IPv6 sources to an IPv6 VM address.
pub const SET_GW_ALLOW6: &str = "gw_allow6";
/// Gateway mode: grants from IPv6 ranges, one set per prefix length (`gw_allow6net_64`).
pub const SET_GW_ALLOW6_NET: &str = "gw_allow6net_";
/// Gateway mode: DNAT from an exact IPv6 source and public port to an IPv6 VM address and port.
pub const MAP_DNAT6: &str = "dnat6";
/// Gateway mode: DNAT from IPv6 ranges, one map per prefix length (`dnat6net_64`).
pub const MAP_DNAT6_NET: &str = "dnat6net_";

/// The base chain on the input hook (host mode).
pub const CHAIN_INPUT: &str = "input";
/// Regular chain: the IPv4 allow lookups of [`CHAIN_INPUT`].
pub const CHAIN_INPUT4: &str = "input4";
/// Regular chain: the IPv6 allow lookups of [`CHAIN_INPUT`].
pub const CHAIN_INPUT6: &str = "input6";
/// The base chain on the forward hook (gateway mode).
pub const CHAIN_FORWARD: &str = "forward";
/// Regular chain: the IPv4 checks of [`CHAIN_FORWARD`].
pub const CHAIN_GW_FORWARD4: &str = "gw_forward4";
/// Regular chain: the IPv6 checks of [`CHAIN_FORWARD`].
pub const CHAIN_GW_FORWARD6: &str = "gw_forward6";
/// The base NAT chain on the prerouting hook (gateway mode).
pub const CHAIN_PREROUTING: &str = "prerouting";
/// Regular chain: the IPv4 DNAT lookups of [`CHAIN_PREROUTING`].
pub const CHAIN_GW_DNAT4: &str = "gw_dnat4";
/// Regular chain: the IPv6 DNAT lookups of [`CHAIN_PREROUTING`].
pub const CHAIN_GW_DNAT6: &str = "gw_dnat6";

/// Priority of [`CHAIN_INPUT`]: just before the usual `filter` chains.
pub const PRIORITY_INPUT: &str = "filter - 10";
/// Priority of [`CHAIN_FORWARD`].
pub const PRIORITY_FORWARD: &str = "filter - 10";
/// Priority of [`CHAIN_PREROUTING`].
pub const PRIORITY_PREROUTING: &str = "dstnat";

/// Why programming nftables failed: which step, and what nft or the kernel said.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The `nft` binary could not be found or started.
    #[error("cannot run nft: {0}")]
    NftMissing(String),
    /// `nft -f -` ran and failed; its standard error says why.
    #[error("`nft -f -` failed ({status}) while {what}: {stderr}")]
    Nft { what: &'static str, status: String, stderr: String },
    /// A system call on the netlink socket failed.
    #[error("netlink socket: {what}: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a message of the batch; nothing of the batch was applied.
    #[error("netlink: the kernel refused {what}: {} (errno {errno}){}", errno_text(*.errno), .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kernel { what: String, errno: i32, message: Option<String> },
    /// The kernel's answer did not make sense (missing or malformed acknowledgements).
    #[error("netlink: {0}")]
    Protocol(String),
    /// The desired state or operation cannot be expressed by this backend.
    #[error("not supported by the nftables backend: {0}")]
    Unsupported(String),
}

impl From<NftError> for FirewallError {
    /// What cannot be expressed stays [`FirewallError::Unsupported`] (with the same text);
    /// everything else is a failed change that keeps the [`NftError`] as its source.
    fn from(e: NftError) -> Self {
        match e {
            NftError::Unsupported(_) => FirewallError::Unsupported(e.to_string()),
            e => FirewallError::Failed(Box::new(e)),
        }
    }
}

/// The system's text for an errno, without Rust's " (os error N)" suffix.
pub(crate) fn errno_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}
