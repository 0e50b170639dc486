//! Where each piece of the model lives in the table: the set (or map) of a grant, a DNAT entry or
//! a protected port, and its key as typed fields. Both the `nft` script and the netlink encoder
//! are built from these fields, so the two always agree.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use jitgate_enforce::{DnatKey, DnatTarget, ElemOp, GrantKey, Protected, L4};

use crate::{
    NftError, MAP_DNAT4, MAP_DNAT4_NET, MAP_DNAT6, MAP_DNAT6_NET, SET_ALLOW4, SET_ALLOW4_NET, SET_ALLOW6,
    SET_ALLOW6_NET, SET_CUT, SET_GW_ALLOW4, SET_GW_ALLOW4_NET, SET_GW_ALLOW6, SET_GW_ALLOW6_NET, SET_GW_CUT,
    SET_GW_CUT6, SET_GW_PROTECTED, SET_GW_PROTECTED6, SET_PROTECTED,
};

/// One component of a concatenated key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Proto(L4),
    Port(u16),
}

impl Field {
    /// The kernel's layout: every component of a concatenation takes a multiple of 4 bytes
    /// (one 32-bit register), the value first, zero padding after; ports in network order.
    pub(crate) fn push_bytes(&self, out: &mut Vec<u8>) {
        match self {
            Field::V4(a) => out.extend_from_slice(&a.octets()),
            Field::V6(a) => out.extend_from_slice(&a.octets()),
            Field::Proto(p) => out.extend_from_slice(&[p.number(), 0, 0, 0]),
            Field::Port(p) => {
                out.extend_from_slice(&p.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
        }
    }

    /// nft's syntax for the value.
    pub(crate) fn push_text(&self, out: &mut String) {
        let _ = match self {
            Field::V4(a) => write!(out, "{a}"),
            Field::V6(a) => write!(out, "{a}"),
            Field::Proto(p) => write!(out, "{}", p.name()),
            Field::Port(p) => write!(out, "{p}"),
        };
    }
}

pub(crate) fn fields_bytes(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.len() * 4);
    for f in fields {
        f.push_bytes(&mut out);
    }
    out
}

pub(crate) fn fields_text(fields: &[Field]) -> String {
    let mut out = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(" . ");
        }
        f.push_text(&mut out);
    }
    out
}

/// An element of one of our sets or maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Elem {
    pub set: String,
    pub key: Vec<Field>,
    /// The value, for maps.
    pub data: Option<Vec<Field>>,
}

fn addr_field(a: IpAddr) -> Field {
    match a {
        IpAddr::V4(a) => Field::V4(a),
        IpAddr::V6(a) => Field::V6(a),
    }
}

/// The set for a source range: the exact set for a full-length prefix, else the set of its
/// prefix length; the key component is the network address.
fn source_set(source: &IpNet, exact: &str, net_prefix: &str) -> (String, Field) {
    let len = source.prefix_len();
    let set = if len == source.max_prefix_len() { exact.to_string() } else { format!("{net_prefix}{len}") };
    (set, addr_field(source.network()))
}

/// The set that holds a grant (see the crate docs for the routing rules).
pub fn grant_set(key: &GrantKey) -> Result<String, NftError> {
    grant_elem(key).map(|e| e.set).map_err(NftError::Unsupported)
}

/// The map that holds a DNAT entry.
pub fn dnat_map(key: &DnatKey) -> Result<String, NftError> {
    dnat_elem(key, None).map(|e| e.set).map_err(NftError::Unsupported)
}

pub(crate) fn grant_elem(key: &GrantKey) -> Result<Elem, String> {
    let tail = [Field::Proto(key.proto), Field::Port(key.port)];
    let (exact, net, dest) = match (key.dest, key.source) {
        (None, IpNet::V4(_)) => (SET_ALLOW4, SET_ALLOW4_NET, None),
        (None, IpNet::V6(_)) => (SET_ALLOW6, SET_ALLOW6_NET, None),
        (Some(IpAddr::V4(dest)), IpNet::V4(_)) => (SET_GW_ALLOW4, SET_GW_ALLOW4_NET, Some(Field::V4(dest))),
        (Some(IpAddr::V6(dest)), IpNet::V6(_)) => (SET_GW_ALLOW6, SET_GW_ALLOW6_NET, Some(Field::V6(dest))),
        (Some(dest), source) => return Err(mixed("grant from", &source, "to", dest)),
    };
    let (set, src) = source_set(&key.source, exact, net);
    Ok(Elem { set, key: [src].into_iter().chain(dest).chain(tail).collect(), data: None })
}

/// The refusal of an entry that mixes the address families: no packet can match it, and the
/// gateway translates no family into the other (no NAT64).
fn mixed(what: &str, source: &IpNet, to: &str, dest: IpAddr) -> String {
    let family = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
    format!(
        "{what} {} source {source} {to} {} address {dest}: a gateway forwards each family to its own (no NAT64)",
        family(matches!(source, IpNet::V4(_))),
        family(dest.is_ipv4())
    )
}

pub(crate) fn dnat_elem(key: &DnatKey, target: Option<&DnatTarget>) -> Result<Elem, String> {
    let (exact, net) = match key.source {
        IpNet::V4(_) => (MAP_DNAT4, MAP_DNAT4_NET),
        IpNet::V6(_) => (MAP_DNAT6, MAP_DNAT6_NET),
    };
    let data = match target {
        None => None,
        Some(DnatTarget { addr: IpAddr::V4(a), port }) if key.source.addr().is_ipv4() => {
            Some(vec![Field::V4(*a), Field::Port(*port)])
        }
        Some(DnatTarget { addr: IpAddr::V6(a), port }) if key.source.addr().is_ipv6() => {
            Some(vec![Field::V6(*a), Field::Port(*port)])
        }
        Some(t) => return Err(mixed("DNAT from", &key.source, "to", t.addr)),
    };
    let (set, src) = source_set(&key.source, exact, net);
    Ok(Elem { set, key: vec![src, Field::Proto(key.proto), Field::Port(key.public_port)], data })
}

/// The sets a protected port goes into: the protected set, and the cut set when sessions end
/// with their grant.
pub(crate) fn protected_elem(p: &Protected) -> (&'static str, &'static str, Vec<Field>) {
    let tail = [Field::Proto(p.proto), Field::Port(p.port)];
    match p.dest {
        None => (SET_PROTECTED, SET_CUT, tail.to_vec()),
        Some(IpAddr::V4(a)) => (SET_GW_PROTECTED, SET_GW_CUT, [Field::V4(a)].into_iter().chain(tail).collect()),
        Some(IpAddr::V6(a)) => (SET_GW_PROTECTED6, SET_GW_CUT6, [Field::V6(a)].into_iter().chain(tail).collect()),
    }
}

/// The element an operation adds or deletes.
pub(crate) fn op_elem(op: &ElemOp) -> Result<Elem, String> {
    match op {
        ElemOp::AddGrant { key, .. } | ElemOp::DelGrant { key } => grant_elem(key),
        ElemOp::AddDnat { key, target, .. } => dnat_elem(key, Some(target)),
        ElemOp::DelDnat { key } => dnat_elem(key, None),
    }
}

/// A short human description of an operation, as used in error messages.
pub fn describe(op: &ElemOp) -> String {
    let grant = |k: &GrantKey| match k.dest {
        None => format!("{} -> {}/{}", k.source, k.proto.name(), k.port),
        Some(d) => format!("{} -> {d} {}/{}", k.source, k.proto.name(), k.port),
    };
    let dnat = |k: &DnatKey| format!("{} {}/{}", k.source, k.proto.name(), k.public_port);
    let set = op_elem(op).map(|e| e.set).unwrap_or_else(|_| "none".into());
    match op {
        ElemOp::AddGrant { key, timeout } => {
            format!("add grant {} timeout {}ms (set {set})", grant(key), timeout.as_millis())
        }
        ElemOp::DelGrant { key } => format!("delete grant {} (set {set})", grant(key)),
        ElemOp::AddDnat { key, target, timeout } => format!(
            "add dnat {} to {} timeout {}ms (map {set})",
            dnat(key),
            match target.addr {
                IpAddr::V4(a) => format!("{a}:{}", target.port),
                IpAddr::V6(a) => format!("[{a}]:{}", target.port),
            },
            timeout.as_millis()
        ),
        ElemOp::DelDnat { key } => format!("delete dnat {} (map {set})", dnat(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gk(src: &str, dest: Option<&str>, port: u16) -> GrantKey {
        GrantKey {
            source: src.parse().expect("net"),
            dest: dest.map(|d| d.parse().expect("addr")),
            proto: L4::Tcp,
            port,
        }
    }

    #[test]
    fn grants_are_routed_by_dest_family_and_prefix_length() {
        assert_eq!(grant_set(&gk("10.0.0.1/32", None, 22)).ok().as_deref(), Some("allow4"));
        assert_eq!(grant_set(&gk("10.0.0.0/24", None, 22)).ok().as_deref(), Some("allow4net_24"));
        assert_eq!(grant_set(&gk("0.0.0.0/0", None, 22)).ok().as_deref(), Some("allow4net_0"));
        assert_eq!(grant_set(&gk("2001:db8::1/128", None, 22)).ok().as_deref(), Some("allow6"));
        assert_eq!(grant_set(&gk("2001:db8::/64", None, 22)).ok().as_deref(), Some("allow6net_64"));
        assert_eq!(grant_set(&gk("10.0.0.1/32", Some("10.9.0.2"), 22)).ok().as_deref(), Some("gw_allow4"));
        assert_eq!(grant_set(&gk("10.0.0.0/8", Some("10.9.0.2"), 22)).ok().as_deref(), Some("gw_allow4net_8"));
        assert_eq!(grant_set(&gk("2001:db8::1/128", Some("fd00::2"), 22)).ok().as_deref(), Some("gw_allow6"));
        assert_eq!(grant_set(&gk("2001:db8::/48", Some("fd00::2"), 22)).ok().as_deref(), Some("gw_allow6net_48"));
        assert_eq!(grant_set(&gk("::/0", Some("fd00::2"), 22)).ok().as_deref(), Some("gw_allow6net_0"));
    }

    #[test]
    fn mixed_families_are_refused_in_words() {
        let e = grant_set(&gk("2001:db8::1/128", Some("10.9.0.2"), 22)).expect_err("IPv6 to IPv4");
        assert_eq!(
            e.to_string(),
            "not supported by the nftables backend: grant from IPv6 source 2001:db8::1/128 to IPv4 address \
             10.9.0.2: a gateway forwards each family to its own (no NAT64)"
        );
        let e = grant_set(&gk("10.0.0.1/32", Some("fd00::2"), 22)).expect_err("IPv4 to IPv6");
        assert!(e.to_string().contains("IPv4 source 10.0.0.1/32 to IPv6 address fd00::2"), "{e}");
        let key = DnatKey { source: "10.0.0.1/32".parse().expect("net"), proto: L4::Tcp, public_port: 50022 };
        let target = DnatTarget { addr: "fd00::2".parse().expect("addr"), port: 22 };
        let e = dnat_elem(&key, Some(&target)).expect_err("IPv4 DNAT to IPv6");
        assert!(e.contains("DNAT from IPv4 source 10.0.0.1/32 to IPv6 address fd00::2"), "{e}");
        let six = DnatKey { source: "2001:db8::1/128".parse().expect("net"), ..key };
        let e = dnat_elem(&six, Some(&DnatTarget { addr: "10.9.0.2".parse().expect("addr"), port: 22 }))
            .expect_err("IPv6 DNAT to IPv4");
        assert!(e.contains("DNAT from IPv6 source 2001:db8::1/128 to IPv4 address 10.9.0.2"), "{e}");
        // A delete names no target: the map follows the source's family.
        assert_eq!(dnat_map(&key).ok().as_deref(), Some("dnat4"));
    }

    #[test]
    fn ipv6_gateway_entries_are_keyed_like_ipv4_ones() {
        let e = grant_elem(&gk("2001:db8:1:2::77/64", Some("fd00::2"), 22)).expect("elem");
        assert_eq!(e.set, "gw_allow6net_64");
        assert_eq!(fields_text(&e.key), "2001:db8:1:2:: . fd00::2 . tcp . 22");
        assert_eq!(fields_bytes(&e.key).len(), 16 + 16 + 4 + 4);
        let key = DnatKey { source: "2001:db8::5/128".parse().expect("net"), proto: L4::Tcp, public_port: 50022 };
        let target = DnatTarget { addr: "fd00::2".parse().expect("addr"), port: 22 };
        let e = dnat_elem(&key, Some(&target)).expect("elem");
        assert_eq!(e.set, "dnat6");
        assert_eq!(fields_text(&e.key), "2001:db8::5 . tcp . 50022");
        assert_eq!(e.data.as_deref().map(fields_text).as_deref(), Some("fd00::2 . 22"));
        let ranged = DnatKey { source: "2001:db8::/32".parse().expect("net"), ..key };
        assert_eq!(dnat_map(&ranged).ok().as_deref(), Some("dnat6net_32"));
        let p =
            Protected { dest: Some("fd00::2".parse().expect("addr")), proto: L4::Udp, port: 53, cut_sessions: true };
        let (set, cut, fields) = protected_elem(&p);
        assert_eq!((set, cut, fields_text(&fields).as_str()), ("gw_protected6", "gw_cut6", "fd00::2 . udp . 53"));
    }

    #[test]
    fn a_range_key_is_its_network_address() {
        let e = grant_elem(&gk("10.1.2.77/24", None, 22)).expect("elem");
        assert_eq!(fields_text(&e.key), "10.1.2.0 . tcp . 22");
        assert_eq!(fields_bytes(&e.key), [10, 1, 2, 0, 6, 0, 0, 0, 0, 22, 0, 0]);
    }

    #[test]
    fn descriptions_name_the_set() {
        let op = ElemOp::DelGrant { key: gk("10.0.0.0/24", None, 22) };
        assert_eq!(describe(&op), "delete grant 10.0.0.0/24 -> tcp/22 (set allow4net_24)");
    }
}
