//! Where each piece of the model lives in the table: the set (or map) of a grant, a DNAT entry or
//! a protected port, and its key as typed fields. Both the `nft` script and the netlink encoder
//! are built from these fields, so the two always agree.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use jitgate_enforce::{DnatKey, DnatTarget, ElemOp, GrantKey, Protected, L4};

use crate::{
    NftError, MAP_DNAT4, MAP_DNAT4_NET, SET_ALLOW4, SET_ALLOW4_NET, SET_ALLOW6, SET_ALLOW6_NET, SET_CUT, SET_GW_ALLOW4,
    SET_GW_ALLOW4_NET, SET_GW_CUT, SET_GW_PROTECTED, SET_PROTECTED,
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
    match (key.dest, key.source) {
        (None, IpNet::V4(_)) => {
            let (set, src) = source_set(&key.source, SET_ALLOW4, SET_ALLOW4_NET);
            Ok(Elem { set, key: [src].into_iter().chain(tail).collect(), data: None })
        }
        (None, IpNet::V6(_)) => {
            let (set, src) = source_set(&key.source, SET_ALLOW6, SET_ALLOW6_NET);
            Ok(Elem { set, key: [src].into_iter().chain(tail).collect(), data: None })
        }
        (Some(IpAddr::V4(dest)), IpNet::V4(_)) => {
            let (set, src) = source_set(&key.source, SET_GW_ALLOW4, SET_GW_ALLOW4_NET);
            Ok(Elem { set, key: [src, Field::V4(dest)].into_iter().chain(tail).collect(), data: None })
        }
        (Some(IpAddr::V4(dest)), IpNet::V6(_)) => {
            Err(format!("grant from IPv6 source {} to IPv4 address {dest}: no packet can match", key.source))
        }
        (Some(IpAddr::V6(dest)), _) => Err(format!("gateway grant to {dest}: gateway mode supports IPv4 only")),
    }
}

pub(crate) fn dnat_elem(key: &DnatKey, target: Option<&DnatTarget>) -> Result<Elem, String> {
    let IpNet::V4(_) = key.source else {
        return Err(format!("DNAT from {}: gateway mode supports IPv4 only", key.source));
    };
    let data = match target {
        None => None,
        Some(DnatTarget { addr: IpAddr::V4(a), port }) => Some(vec![Field::V4(*a), Field::Port(*port)]),
        Some(DnatTarget { addr: IpAddr::V6(a), .. }) => {
            return Err(format!("DNAT to {a}: gateway mode supports IPv4 only"));
        }
    };
    let (set, src) = source_set(&key.source, MAP_DNAT4, MAP_DNAT4_NET);
    Ok(Elem { set, key: vec![src, Field::Proto(key.proto), Field::Port(key.public_port)], data })
}

/// The sets a protected port goes into: the protected set, and the cut set when sessions end
/// with their grant.
pub(crate) fn protected_elem(p: &Protected) -> Result<(&'static str, &'static str, Vec<Field>), String> {
    let tail = [Field::Proto(p.proto), Field::Port(p.port)];
    match p.dest {
        None => Ok((SET_PROTECTED, SET_CUT, tail.to_vec())),
        Some(IpAddr::V4(a)) => Ok((SET_GW_PROTECTED, SET_GW_CUT, [Field::V4(a)].into_iter().chain(tail).collect())),
        Some(IpAddr::V6(a)) => Err(format!("protected port on {a}: gateway mode supports IPv4 only")),
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
        assert!(grant_set(&gk("2001:db8::1/128", Some("10.9.0.2"), 22)).is_err());
        assert!(grant_set(&gk("10.0.0.1/32", Some("fd00::2"), 22)).is_err());
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
