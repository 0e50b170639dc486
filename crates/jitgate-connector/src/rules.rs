//! Security group ingress rules as the connector reasons about them: one source per rule, keyed
//! exactly as EC2 keys them (group, protocol, ports, source; the description is not part of the
//! key), and the arithmetic of protected ports over them (does a rule allow one, what is left of
//! it without them).

use std::collections::BTreeSet;

use ipnet::IpNet;
use jitgate_aws::{IpPermission, IpRange};

/// An IP protocol as a rule names it, normalised (`6` and `tcp` are the same protocol).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// `-1`: every protocol, every port.
    All,
    /// Any other protocol number, as EC2 wrote it.
    Other(String),
}

impl Proto {
    /// Reads EC2's spelling (`tcp`, `6`, `-1` …).
    pub fn parse(text: &str) -> Proto {
        match text.trim().to_ascii_lowercase().as_str() {
            "tcp" | "6" => Proto::Tcp,
            "udp" | "17" => Proto::Udp,
            "icmp" | "1" => Proto::Icmp,
            "icmpv6" | "58" => Proto::Icmpv6,
            "-1" | "all" => Proto::All,
            other => Proto::Other(other.to_owned()),
        }
    }

    /// EC2's spelling.
    pub fn as_ec2(&self) -> &str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmpv6 => "icmpv6",
            Proto::All => "-1",
            Proto::Other(s) => s,
        }
    }

    /// jitgate's spelling of a port protocol (`TCP`, `UDP`).
    pub fn as_jitgate(&self) -> &str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            other => other.as_ec2(),
        }
    }

    /// Whether the protocol has ports (TCP and UDP).
    pub fn has_ports(&self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }
}

/// Who a rule lets in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// An IPv4 or IPv6 range (kept as its network: host bits cleared).
    Cidr(IpNet),
    /// Another security group (`sg-…`).
    Group(String),
    /// A managed prefix list (`pl-…`).
    PrefixList(String),
}

impl Source {
    /// The source as EC2 writes it (`10.0.0.0/8`, `sg-…`, `pl-…`).
    pub fn text(&self) -> String {
        match self {
            Source::Cidr(net) => net.to_string(),
            Source::Group(g) | Source::PrefixList(g) => g.clone(),
        }
    }

    /// Reads what [`Source::text`] wrote.
    pub fn parse(text: &str) -> Option<Source> {
        if text.starts_with("sg-") {
            Some(Source::Group(text.to_owned()))
        } else if text.starts_with("pl-") {
            Some(Source::PrefixList(text.to_owned()))
        } else {
            text.parse::<IpNet>().ok().map(|n| Source::Cidr(n.trunc()))
        }
    }

    fn is_v6(&self) -> bool {
        matches!(self, Source::Cidr(IpNet::V6(_)))
    }
}

/// One ingress rule with one source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub group_id: String,
    pub proto: Proto,
    /// The first port (TCP/UDP), the ICMP type, or nothing for `-1`.
    pub from: Option<i32>,
    /// The last port (TCP/UDP), the ICMP code, or nothing for `-1`.
    pub to: Option<i32>,
    pub source: Source,
    pub description: Option<String>,
}

/// What EC2 tells two rules apart by: everything but the description.
pub type RuleKey = (String, Proto, Option<i32>, Option<i32>, Source);

/// A protected port: its protocol (TCP or UDP) and number.
pub type Port = (Proto, u16);

const ALL_PORTS: (i32, i32) = (0, 65_535);

impl Rule {
    pub fn key(&self) -> RuleKey {
        (self.group_id.clone(), self.proto.clone(), self.from, self.to, self.source.clone())
    }

    /// The port range of a TCP or UDP rule (a missing bound or `-1` means all ports).
    fn port_range(&self) -> (i32, i32) {
        match (self.from, self.to) {
            (Some(f), Some(t)) if f >= 0 && t >= 0 => (f, t),
            _ => ALL_PORTS,
        }
    }

    /// Whether this rule lets traffic reach `port`.
    pub fn allows(&self, port: &Port) -> bool {
        match &self.proto {
            Proto::All => true,
            p if *p == port.0 && p.has_ports() => {
                let (f, t) = self.port_range();
                f <= i32::from(port.1) && i32::from(port.1) <= t
            }
            _ => false,
        }
    }

    /// Whether this rule lets traffic reach any of `ports`.
    pub fn allows_any(&self, ports: &BTreeSet<Port>) -> bool {
        ports.iter().any(|p| self.allows(p))
    }

    /// What is left of this rule without `ports`: itself when it allows none of them; else the
    /// rules that allow everything it allowed but those ports. A TCP or UDP range is cut around
    /// them; an all-traffic rule becomes TCP and UDP rules around them and an ICMP rule (ICMPv6
    /// for an IPv6 source): other IP protocols it allowed are not kept while a port is protected.
    pub fn without(&self, ports: &BTreeSet<Port>) -> Vec<Rule> {
        if !self.allows_any(ports) {
            return vec![self.clone()];
        }
        match &self.proto {
            Proto::All => {
                let mut out = Vec::new();
                for proto in [Proto::Tcp, Proto::Udp] {
                    out.extend(self.ranges_without(&proto, ALL_PORTS, ports));
                }
                let icmp = if self.source.is_v6() { Proto::Icmpv6 } else { Proto::Icmp };
                out.push(Rule { proto: icmp, from: Some(-1), to: Some(-1), ..self.clone() });
                out
            }
            proto => self.ranges_without(proto, self.port_range(), ports),
        }
    }

    /// `range` of `proto` without the protected ports of that protocol, as rules like this one.
    fn ranges_without(&self, proto: &Proto, range: (i32, i32), ports: &BTreeSet<Port>) -> Vec<Rule> {
        let mut out = Vec::new();
        let mut start = range.0;
        let cuts = ports.iter().filter(|(p, _)| p == proto).map(|(_, n)| i32::from(*n));
        for cut in cuts.filter(|c| *c >= range.0 && *c <= range.1) {
            if cut > start {
                out.push(Rule { proto: proto.clone(), from: Some(start), to: Some(cut - 1), ..self.clone() });
            }
            start = cut + 1;
        }
        if start <= range.1 {
            out.push(Rule { proto: proto.clone(), from: Some(start), to: Some(range.1), ..self.clone() });
        }
        out
    }

    /// Whether `self` is a piece of `original`: the same group, source and description, and
    /// allowing nothing `original` did not (what [`Rule::without`] makes of it, or itself).
    pub fn is_piece_of(&self, original: &Rule) -> bool {
        if self.group_id != original.group_id
            || self.source != original.source
            || self.description != original.description
        {
            return false;
        }
        if self.key() == original.key() {
            return true;
        }
        match (&original.proto, &self.proto) {
            (Proto::All, p) if p.has_ports() => true,
            (Proto::All, Proto::Icmp | Proto::Icmpv6) => self.from == Some(-1) && self.to == Some(-1),
            (o, p) if o == p && o.has_ports() => {
                let (of, ot) = original.port_range();
                let (f, t) = self.port_range();
                of <= f && t <= ot
            }
            _ => false,
        }
    }

    /// The rule as one EC2 permission.
    pub fn permission(&self) -> IpPermission {
        let mut p = IpPermission {
            protocol: self.proto.as_ec2().to_owned(),
            from_port: if self.proto == Proto::All { None } else { self.from },
            to_port: if self.proto == Proto::All { None } else { self.to },
            ipv4_ranges: vec![],
            ipv6_ranges: vec![],
            source_groups: vec![],
            prefix_lists: vec![],
        };
        match &self.source {
            Source::Cidr(net) => {
                let range = IpRange { cidr: net.to_string(), description: self.description.clone() };
                match net {
                    IpNet::V4(_) => p.ipv4_ranges.push(range),
                    IpNet::V6(_) => p.ipv6_ranges.push(range),
                }
            }
            Source::Group(g) => p.source_groups.push(g.clone()),
            Source::PrefixList(l) => p.prefix_lists.push(l.clone()),
        }
        p
    }
}

/// Every rule of a group's permissions, one source each. A range EC2 wrote that is no CIDR is
/// left out (it cannot be matched or restored).
pub fn flatten(group_id: &str, permissions: &[IpPermission]) -> Vec<Rule> {
    let mut out = Vec::new();
    for p in permissions {
        let proto = Proto::parse(&p.protocol);
        let (from, to) = if proto == Proto::All { (None, None) } else { (p.from_port, p.to_port) };
        let rule = |source: Source, description: Option<String>| Rule {
            group_id: group_id.to_owned(),
            proto: proto.clone(),
            from,
            to,
            source,
            description: description.filter(|d| !d.is_empty()),
        };
        for r in p.ipv4_ranges.iter().chain(&p.ipv6_ranges) {
            if let Ok(net) = r.cidr.parse::<IpNet>() {
                out.push(rule(Source::Cidr(net.trunc()), r.description.clone()));
            }
        }
        out.extend(p.source_groups.iter().map(|g| rule(Source::Group(g.clone()), None)));
        out.extend(p.prefix_lists.iter().map(|l| rule(Source::PrefixList(l.clone()), None)));
    }
    out
}

/// Rules as permissions, one each (EC2 takes any mix in one call).
pub fn permissions(rules: &[Rule]) -> Vec<IpPermission> {
    rules.iter().map(Rule::permission).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(from: i32, to: i32) -> Rule {
        Rule {
            group_id: "sg-1".into(),
            proto: Proto::Tcp,
            from: Some(from),
            to: Some(to),
            source: Source::Cidr("10.0.0.0/8".parse().unwrap()),
            description: Some("office".into()),
        }
    }

    fn ports(list: &[(Proto, u16)]) -> BTreeSet<Port> {
        list.iter().cloned().collect()
    }

    fn ranges(rules: &[Rule]) -> Vec<(Proto, Option<i32>, Option<i32>)> {
        rules.iter().map(|r| (r.proto.clone(), r.from, r.to)).collect()
    }

    #[test]
    fn protocols_read_as_ec2_writes_them() {
        assert_eq!(Proto::parse("6"), Proto::Tcp);
        assert_eq!(Proto::parse("TCP"), Proto::Tcp);
        assert_eq!(Proto::parse("17"), Proto::Udp);
        assert_eq!(Proto::parse("-1"), Proto::All);
        assert_eq!(Proto::parse("47"), Proto::Other("47".into()));
        assert_eq!(Proto::Other("47".into()).as_ec2(), "47");
    }

    #[test]
    fn a_range_is_cut_around_protected_ports() {
        let r = tcp(0, 65_535);
        let left = r.without(&ports(&[(Proto::Tcp, 22), (Proto::Tcp, 3389), (Proto::Udp, 53)]));
        assert_eq!(
            ranges(&left),
            [
                (Proto::Tcp, Some(0), Some(21)),
                (Proto::Tcp, Some(23), Some(3388)),
                (Proto::Tcp, Some(3390), Some(65_535))
            ]
        );
        assert!(left.iter().all(|l| l.description.as_deref() == Some("office") && l.is_piece_of(&r)));
        assert!(tcp(22, 22).without(&ports(&[(Proto::Tcp, 22)])).is_empty());
        assert_eq!(ranges(&tcp(22, 23).without(&ports(&[(Proto::Tcp, 22)]))), [(Proto::Tcp, Some(23), Some(23))]);
        assert_eq!(ranges(&tcp(0, 22).without(&ports(&[(Proto::Tcp, 0)]))), [(Proto::Tcp, Some(1), Some(22))]);
        assert_eq!(
            ranges(&tcp(65_534, 65_535).without(&ports(&[(Proto::Tcp, 65_535)]))),
            [(Proto::Tcp, Some(65_534), Some(65_534))]
        );
    }

    #[test]
    fn a_rule_that_allows_no_protected_port_stays_whole() {
        let r = tcp(80, 443);
        assert_eq!(r.without(&ports(&[(Proto::Tcp, 22), (Proto::Udp, 443)])), vec![r.clone()]);
        assert!(!r.allows(&(Proto::Udp, 443)));
        assert!(r.allows(&(Proto::Tcp, 443)));
    }

    #[test]
    fn an_all_traffic_rule_becomes_tcp_udp_and_icmp_around_the_ports() {
        let all = Rule { proto: Proto::All, from: None, to: None, ..tcp(0, 0) };
        assert!(all.allows(&(Proto::Udp, 9)));
        let left = all.without(&ports(&[(Proto::Tcp, 22)]));
        assert_eq!(
            ranges(&left),
            [
                (Proto::Tcp, Some(0), Some(21)),
                (Proto::Tcp, Some(23), Some(65_535)),
                (Proto::Udp, Some(0), Some(65_535)),
                (Proto::Icmp, Some(-1), Some(-1))
            ]
        );
        assert!(left.iter().all(|l| l.is_piece_of(&all)));
        let v6 = Rule { source: Source::Cidr("2001:db8::/32".parse().unwrap()), ..all.clone() };
        assert_eq!(v6.without(&ports(&[(Proto::Udp, 53)])).last().map(|r| r.proto.clone()), Some(Proto::Icmpv6));
    }

    #[test]
    fn pieces_are_told_by_group_source_description_and_range() {
        let r = tcp(0, 100);
        assert!(tcp(0, 21).is_piece_of(&r));
        assert!(r.is_piece_of(&r));
        assert!(!tcp(0, 101).is_piece_of(&r));
        assert!(!Rule { description: None, ..tcp(0, 21) }.is_piece_of(&r));
        assert!(!Rule { group_id: "sg-2".into(), ..tcp(0, 21) }.is_piece_of(&r));
        assert!(!Rule { proto: Proto::Udp, ..tcp(0, 21) }.is_piece_of(&r));
    }

    #[test]
    fn permissions_round_trip_through_flatten() {
        let rules = vec![
            tcp(22, 22),
            Rule { source: Source::Cidr("2001:db8::/32".parse().unwrap()), description: None, ..tcp(1, 2) },
            Rule { source: Source::Group("sg-9".into()), description: None, ..tcp(3, 4) },
            Rule { source: Source::PrefixList("pl-9".into()), description: None, ..tcp(5, 6) },
            Rule { proto: Proto::All, from: None, to: None, description: None, ..tcp(0, 0) },
        ];
        let back: Vec<Rule> =
            permissions(&rules).iter().flat_map(|p| flatten("sg-1", std::slice::from_ref(p))).collect();
        assert_eq!(back, rules);
        assert_eq!(permissions(&rules[4..])[0].from_port, None);
    }

    #[test]
    fn flatten_clears_host_bits_and_drops_what_is_no_cidr() {
        let p = IpPermission {
            protocol: "6".into(),
            from_port: Some(22),
            to_port: Some(22),
            ipv4_ranges: vec![
                IpRange { cidr: "10.1.2.3/8".into(), description: Some(String::new()) },
                IpRange { cidr: "nonsense".into(), description: None },
            ],
            ipv6_ranges: vec![],
            source_groups: vec![],
            prefix_lists: vec![],
        };
        let rules = flatten("sg-1", &[p]);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].source.text(), "10.0.0.0/8");
        assert_eq!(rules[0].description, None);
        assert_eq!(Source::parse("sg-12"), Some(Source::Group("sg-12".into())));
        assert_eq!(Source::parse("x"), None);
    }
}
