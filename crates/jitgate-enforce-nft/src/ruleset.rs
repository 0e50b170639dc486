//! The `nft -f -` script that replaces our table in one transaction.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use jitgate_enforce::{Desired, Mode};

use crate::elements::{dnat_elem, fields_text, grant_elem, protected_elem};
use crate::{
    CHAIN_FORWARD, CHAIN_GW_DNAT4, CHAIN_GW_DNAT6, CHAIN_GW_FORWARD4, CHAIN_GW_FORWARD6, CHAIN_INPUT, CHAIN_INPUT4,
    CHAIN_INPUT6, CHAIN_PREROUTING, FAMILY, MAP_DNAT4, MAP_DNAT4_NET, MAP_DNAT6, MAP_DNAT6_NET, PRIORITY_FORWARD,
    PRIORITY_INPUT, PRIORITY_PREROUTING, SET_ALLOW4, SET_ALLOW4_NET, SET_ALLOW6, SET_ALLOW6_NET, SET_CUT,
    SET_GW_ALLOW4, SET_GW_ALLOW4_NET, SET_GW_ALLOW6, SET_GW_ALLOW6_NET, SET_GW_CUT, SET_GW_CUT6, SET_GW_PROTECTED,
    SET_GW_PROTECTED6, SET_PROTECTED, TABLE,
};

const TYPE_HOST_PORT: &str = "inet_proto . inet_service";
const TYPE_ALLOW4: &str = "ipv4_addr . inet_proto . inet_service";
const TYPE_ALLOW6: &str = "ipv6_addr . inet_proto . inet_service";
const TYPE_GW_PORT: &str = "ipv4_addr . inet_proto . inet_service";
const TYPE_GW_ALLOW4: &str = "ipv4_addr . ipv4_addr . inet_proto . inet_service";
const TYPE_DNAT4: &str = "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service";
const TYPE_GW_PORT6: &str = "ipv6_addr . inet_proto . inet_service";
const TYPE_GW_ALLOW6: &str = "ipv6_addr . ipv6_addr . inet_proto . inet_service";
const TYPE_DNAT6: &str = "ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service";

/// The names and types of one address family's part of a gateway table.
struct GwFamily {
    nfproto: &'static str,
    /// The payload keyword: `ip` or `ip6`.
    ip: &'static str,
    bits: u8,
    mask: fn(u8) -> IpAddr,
    protected: &'static str,
    cut: &'static str,
    allow: &'static str,
    allow_net: &'static str,
    dnat: &'static str,
    dnat_net: &'static str,
    forward: &'static str,
    dnat_chain: &'static str,
    port_type: &'static str,
    allow_type: &'static str,
    dnat_type: &'static str,
}

const GW4: GwFamily = GwFamily {
    nfproto: "ipv4",
    ip: "ip",
    bits: 32,
    mask: mask4,
    protected: SET_GW_PROTECTED,
    cut: SET_GW_CUT,
    allow: SET_GW_ALLOW4,
    allow_net: SET_GW_ALLOW4_NET,
    dnat: MAP_DNAT4,
    dnat_net: MAP_DNAT4_NET,
    forward: CHAIN_GW_FORWARD4,
    dnat_chain: CHAIN_GW_DNAT4,
    port_type: TYPE_GW_PORT,
    allow_type: TYPE_GW_ALLOW4,
    dnat_type: TYPE_DNAT4,
};

const GW6: GwFamily = GwFamily {
    nfproto: "ipv6",
    ip: "ip6",
    bits: 128,
    mask: mask6,
    protected: SET_GW_PROTECTED6,
    cut: SET_GW_CUT6,
    allow: SET_GW_ALLOW6,
    allow_net: SET_GW_ALLOW6_NET,
    dnat: MAP_DNAT6,
    dnat_net: MAP_DNAT6_NET,
    forward: CHAIN_GW_FORWARD6,
    dnat_chain: CHAIN_GW_DNAT6,
    port_type: TYPE_GW_PORT6,
    allow_type: TYPE_GW_ALLOW6,
    dnat_type: TYPE_DNAT6,
};

/// Whether the state needs the gateway part of the table (forward and NAT chains).
pub(crate) fn wants_gateway(desired: &Desired) -> bool {
    desired.mode == Mode::Gateway
        || !desired.dnat.is_empty()
        || desired.protected.iter().any(|p| p.dest.is_some())
        || desired.grants.keys().any(|k| k.dest.is_some())
}

/// Everything in `desired` that this backend cannot express (a gateway entry that mixes the
/// address families: an IPv6 source towards an IPv4 VM, or the reverse), as messages. [`crate::NftFirewall::replace`] refuses a state with any; [`ruleset`] leaves such
/// entries out (as comments).
pub(crate) fn unsupported(desired: &Desired) -> Vec<String> {
    let mut out = Vec::new();
    for k in desired.grants.keys() {
        if let Err(e) = grant_elem(k) {
            out.push(e);
        }
    }
    for (k, (t, _)) in &desired.dnat {
        if let Err(e) = dnat_elem(k, Some(t)) {
            out.push(e);
        }
    }
    out
}

/// An `nft -f -` script that atomically replaces `table inet jitgate` with `desired`.
///
/// The script adds the table (so that the delete cannot fail), deletes it and declares it again
/// with its sets, chains and elements; nft sends all of it as one transaction. Grants and DNAT
/// entries carry their remaining lifetime at `now` as `timeout Nms` (rounded down, so never
/// longer than the deadline; at most [`crate::MAX_TIMEOUT`]); what has ended (less than 1 ms left) is left out. Entries that the
/// backend cannot express (mixed address families in gateway mode) are left out as comments; `replace` refuses
/// them before it gets here. The gateway part is present in gateway mode and whenever the state
/// holds a gateway entry.
pub fn ruleset(desired: &Desired, now: Instant) -> String {
    let gateway = wants_gateway(desired);
    let mut elems: BTreeMap<String, SetElems> = BTreeMap::new();
    let mut skipped = Vec::new();
    for p in &desired.protected {
        let (set, cut, key) = protected_elem(p);
        let text = fields_text(&key);
        if p.cut_sessions {
            elems.entry(cut.to_string()).or_default().insert(text.clone(), None, None);
        }
        elems.entry(set.to_string()).or_default().insert(text, None, None);
    }
    let remaining_ms = |end: Instant| {
        let ms = end.saturating_duration_since(now).min(crate::MAX_TIMEOUT).as_millis();
        (ms > 0).then_some(ms)
    };
    for (k, end) in &desired.grants {
        let Some(ms) = remaining_ms(*end) else { continue };
        match grant_elem(k) {
            Ok(e) => elems.entry(e.set).or_default().insert(fields_text(&e.key), Some(ms), None),
            Err(e) => skipped.push(e),
        }
    }
    for (k, (target, end)) in &desired.dnat {
        let Some(ms) = remaining_ms(*end) else { continue };
        match dnat_elem(k, Some(target)) {
            Ok(e) => {
                let data = e.data.as_deref().map(fields_text);
                elems.entry(e.set).or_default().insert(fields_text(&e.key), Some(ms), data);
            }
            Err(e) => skipped.push(e),
        }
    }

    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# jitgate: {FAMILY} {TABLE}, {} mode; generated, replaced as a whole", desired.mode.as_str());
    for s in &skipped {
        let _ = writeln!(w, "# left out (not supported): {}", s.replace('\n', " "));
    }
    let _ = writeln!(w, "table {FAMILY} {TABLE}");
    let _ = writeln!(w, "delete table {FAMILY} {TABLE}");
    let _ = writeln!(w, "table {FAMILY} {TABLE} {{");

    set(w, &mut elems, "set", SET_PROTECTED, TYPE_HOST_PORT, false);
    set(w, &mut elems, "set", SET_CUT, TYPE_HOST_PORT, false);
    set(w, &mut elems, "set", SET_ALLOW4, TYPE_ALLOW4, true);
    for len in 0..32 {
        set(w, &mut elems, "set", &format!("{SET_ALLOW4_NET}{len}"), TYPE_ALLOW4, true);
    }
    set(w, &mut elems, "set", SET_ALLOW6, TYPE_ALLOW6, true);
    for len in 0..128 {
        set(w, &mut elems, "set", &format!("{SET_ALLOW6_NET}{len}"), TYPE_ALLOW6, true);
    }

    let _ = writeln!(w, "\tchain {CHAIN_INPUT} {{");
    let _ = writeln!(w, "\t\ttype filter hook input priority {PRIORITY_INPUT}; policy accept;");
    let _ = writeln!(w, "\t\tiif \"lo\" accept");
    let _ = writeln!(w, "\t\tmeta l4proto . th dport != @{SET_PROTECTED} accept");
    let _ = writeln!(w, "\t\tmeta l4proto . th dport != @{SET_CUT} ct state established,related accept");
    let _ = writeln!(w, "\t\tmeta nfproto ipv4 jump {CHAIN_INPUT4}");
    let _ = writeln!(w, "\t\tmeta nfproto ipv6 jump {CHAIN_INPUT6}");
    let _ = writeln!(w, "\t\tdrop");
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w, "\tchain {CHAIN_INPUT4} {{");
    let _ = writeln!(w, "\t\tip saddr . meta l4proto . th dport @{SET_ALLOW4} accept");
    for len in allow_order(32) {
        let _ = writeln!(w, "\t\tip saddr & {} . meta l4proto . th dport @{SET_ALLOW4_NET}{len} accept", mask4(len));
    }
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w, "\tchain {CHAIN_INPUT6} {{");
    let _ = writeln!(w, "\t\tip6 saddr . meta l4proto . th dport @{SET_ALLOW6} accept");
    for len in allow_order(128) {
        let _ = writeln!(w, "\t\tip6 saddr & {} . meta l4proto . th dport @{SET_ALLOW6_NET}{len} accept", mask6(len));
    }
    let _ = writeln!(w, "\t}}");

    if gateway {
        for f in [&GW4, &GW6] {
            set(w, &mut elems, "set", f.protected, f.port_type, false);
            set(w, &mut elems, "set", f.cut, f.port_type, false);
            set(w, &mut elems, "set", f.allow, f.allow_type, true);
            for len in 0..f.bits {
                set(w, &mut elems, "set", &format!("{}{len}", f.allow_net), f.allow_type, true);
            }
            set(w, &mut elems, "map", f.dnat, f.dnat_type, true);
            for len in 0..f.bits {
                set(w, &mut elems, "map", &format!("{}{len}", f.dnat_net), f.dnat_type, true);
            }
        }

        let _ = writeln!(w, "\tchain {CHAIN_FORWARD} {{");
        let _ = writeln!(w, "\t\ttype filter hook forward priority {PRIORITY_FORWARD}; policy accept;");
        for f in [&GW4, &GW6] {
            let _ = writeln!(w, "\t\tmeta nfproto {} jump {}", f.nfproto, f.forward);
        }
        let _ = writeln!(w, "\t}}");
        for f in [&GW4, &GW6] {
            let (ip, mask) = (f.ip, f.mask);
            let _ = writeln!(w, "\tchain {} {{", f.forward);
            let _ = writeln!(w, "\t\t{ip} daddr . meta l4proto . th dport != @{} accept", f.protected);
            let _ = writeln!(
                w,
                "\t\t{ip} daddr . meta l4proto . th dport != @{} ct state established,related accept",
                f.cut
            );
            let _ = writeln!(w, "\t\t{ip} saddr . {ip} daddr . meta l4proto . th dport @{} accept", f.allow);
            for len in allow_order(f.bits) {
                let _ = writeln!(
                    w,
                    "\t\t{ip} saddr & {} . {ip} daddr . meta l4proto . th dport @{}{len} accept",
                    mask(len),
                    f.allow_net
                );
            }
            let _ = writeln!(w, "\t\tdrop");
            let _ = writeln!(w, "\t}}");
        }
        let _ = writeln!(w, "\tchain {CHAIN_PREROUTING} {{");
        let _ = writeln!(w, "\t\ttype nat hook prerouting priority {PRIORITY_PREROUTING}; policy accept;");
        for f in [&GW4, &GW6] {
            let _ = writeln!(w, "\t\tmeta nfproto {} fib daddr type local jump {}", f.nfproto, f.dnat_chain);
        }
        let _ = writeln!(w, "\t}}");
        for f in [&GW4, &GW6] {
            let ip = f.ip;
            let _ = writeln!(w, "\tchain {} {{", f.dnat_chain);
            let _ = writeln!(w, "\t\tdnat {ip} to {ip} saddr . meta l4proto . th dport map @{}", f.dnat);
            for len in dnat_order(f.bits) {
                let _ = writeln!(
                    w,
                    "\t\tdnat {ip} to {ip} saddr & {} . meta l4proto . th dport map @{}{len}",
                    (f.mask)(len),
                    f.dnat_net
                );
            }
            let _ = writeln!(w, "\t}}");
        }
    }
    let _ = writeln!(w, "}}");
    out
}

/// The elements of one set, in the order they came, without duplicates: two model entries can
/// be one element (e.g. `10.0.0.5/24` and `10.0.0.7/24` are both `10.0.0.0/24`); the longer
/// timeout wins.
#[derive(Default)]
struct SetElems {
    list: Vec<(String, Option<u128>, Option<String>)>,
    index: HashMap<String, usize>,
}

impl SetElems {
    fn insert(&mut self, key: String, ms: Option<u128>, data: Option<String>) {
        match self.index.get(&key) {
            Some(&i) => {
                let e = &mut self.list[i];
                if ms > e.1 {
                    e.1 = ms;
                    e.2 = data;
                }
            }
            None => {
                self.index.insert(key.clone(), self.list.len());
                self.list.push((key, ms, data));
            }
        }
    }
}

fn set(w: &mut String, elems: &mut BTreeMap<String, SetElems>, kind: &str, name: &str, ty: &str, timeout: bool) {
    let flags = if timeout { " flags timeout;" } else { "" };
    let Some(set) = elems.remove(name) else {
        let _ = writeln!(w, "\t{kind} {name} {{ type {ty};{flags} }}");
        return;
    };
    let _ = writeln!(w, "\t{kind} {name} {{");
    let _ = writeln!(w, "\t\ttype {ty}");
    if timeout {
        let _ = writeln!(w, "\t\tflags timeout");
    }
    let _ = writeln!(w, "\t\telements = {{");
    let last = set.list.len() - 1;
    for (i, (key, ms, data)) in set.list.iter().enumerate() {
        let _ = write!(w, "\t\t\t{key}");
        if let Some(ms) = ms {
            let _ = write!(w, " timeout {}", nft_time(*ms));
        }
        if let Some(data) = data {
            let _ = write!(w, " : {data}");
        }
        let _ = writeln!(w, "{}", if i == last { "" } else { "," });
    }
    let _ = writeln!(w, "\t\t}}");
    let _ = writeln!(w, "\t}}");
}

/// A timeout as nft reads it: `Nms`, or `Ns` and `Nms` past eight digits of milliseconds (nft
/// refuses a part of a time with more: `100000000ms` is "value too large", `100000s` is not).
fn nft_time(ms: u128) -> String {
    if ms < 100_000_000 {
        return format!("{ms}ms");
    }
    match ms % 1000 {
        0 => format!("{}s", ms / 1000),
        rest => format!("{}s{rest}ms", ms / 1000),
    }
}

/// The order of the range lookups in the allow chains: `/0` (a policy's `*`, the most common
/// range) first, then from the longest prefix down. Any order gives the same verdict; this one
/// makes the common case short for ports whose every packet is checked.
fn allow_order(max: u8) -> impl Iterator<Item = u8> {
    std::iter::once(0).chain((1..max).rev())
}

/// The order of the DNAT lookups: longest prefix first, so the most specific entry wins.
fn dnat_order(max: u8) -> impl Iterator<Item = u8> {
    (0..max).rev()
}

fn mask4(len: u8) -> IpAddr {
    let bits = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    IpAddr::V4(Ipv4Addr::from(bits))
}

fn mask6(len: u8) -> IpAddr {
    let bits = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
    IpAddr::V6(Ipv6Addr::from(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_orders() {
        assert_eq!(allow_order(4).collect::<Vec<_>>(), [0, 3, 2, 1]);
        assert_eq!(allow_order(128).count(), 128);
        assert_eq!(dnat_order(32).next(), Some(31));
        assert_eq!(dnat_order(32).last(), Some(0));
        assert_eq!(dnat_order(128).next(), Some(127));
        assert_eq!(dnat_order(128).count(), 128);
    }

    #[test]
    fn masks() {
        assert_eq!(mask4(0).to_string(), "0.0.0.0");
        assert_eq!(mask4(24).to_string(), "255.255.255.0");
        assert_eq!(mask4(31).to_string(), "255.255.255.254");
        assert_eq!(mask6(0).to_string(), "::");
        assert_eq!(mask6(64).to_string(), "ffff:ffff:ffff:ffff::");
        assert_eq!(mask6(127).to_string(), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe");
    }
}
