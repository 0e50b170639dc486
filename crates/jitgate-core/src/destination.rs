//! Where the server may send webhooks: the deny list that keeps webhooks from being a
//! server-side request forgery tool, and the rules for a webhook URL's parts.
//!
//! Every address is first put into its canonical form (an IPv4-mapped IPv6 address such as
//! `::ffff:169.254.169.254` is the IPv4 address it carries; the NAT64 and 6to4 forms are judged
//! by the IPv4 address they embed), then refused when it lies in a range that is not the public
//! internet — loopback, link-local, private, shared (CGNAT), unspecified, multicast, broadcast,
//! reserved, documentation — unless the operator allowed a range that contains it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is not a public destination: what it is and the range it lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedRange {
    pub kind: &'static str,
    pub range: &'static str,
}

/// A destination refused by the deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The address as it was given (or resolved).
    pub address: IpAddr,
    pub kind: &'static str,
    pub range: &'static str,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is a {} address ({}); webhooks are only sent to public addresses unless the operator allows the range",
            self.address, self.kind, self.range
        )
    }
}

/// The address an IPv4-mapped IPv6 address stands for; any other address unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

const V4_DENIED: [(u32, u8, &str, &str); 16] = [
    (0x0000_0000, 8, "unspecified (\"this network\")", "0.0.0.0/8"),
    (0x0a00_0000, 8, "private", "10.0.0.0/8"),
    (0x6440_0000, 10, "shared (carrier-grade NAT)", "100.64.0.0/10"),
    (0x7f00_0000, 8, "loopback", "127.0.0.0/8"),
    (0xa9fe_0000, 16, "link-local", "169.254.0.0/16"),
    (0xac10_0000, 12, "private", "172.16.0.0/12"),
    (0xc000_0000, 24, "IETF protocol assignment", "192.0.0.0/24"),
    (0xc000_0200, 24, "documentation", "192.0.2.0/24"),
    (0xc058_6300, 24, "6to4 relay anycast", "192.88.99.0/24"),
    (0xc0a8_0000, 16, "private", "192.168.0.0/16"),
    (0xc612_0000, 15, "benchmarking", "198.18.0.0/15"),
    (0xc633_6400, 24, "documentation", "198.51.100.0/24"),
    (0xcb00_7100, 24, "documentation", "203.0.113.0/24"),
    (0xe000_0000, 4, "multicast", "224.0.0.0/4"),
    (0xffff_ffff, 32, "broadcast", "255.255.255.255/32"),
    (0xf000_0000, 4, "reserved", "240.0.0.0/4"),
];

fn v4_denied(ip: Ipv4Addr) -> Option<DeniedRange> {
    let bits = u32::from(ip);
    V4_DENIED.iter().find_map(|&(net, len, kind, range)| {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
        (bits & mask == net).then_some(DeniedRange { kind, range })
    })
}

const V6_DENIED: [(u128, u8, &str, &str); 11] = [
    (0, 128, "unspecified", "::/128"),
    (1, 128, "loopback", "::1/128"),
    (0, 96, "IPv4-compatible (deprecated)", "::/96"),
    (0x0064_ff9b_0001 << 80, 48, "local-use NAT64", "64:ff9b:1::/48"),
    (0x0100 << 112, 64, "discard-only", "100::/64"),
    (0x2001_0db8 << 96, 32, "documentation", "2001:db8::/32"),
    (0x3fff << 112, 20, "documentation", "3fff::/20"),
    (0xfc << 120, 7, "unique local (private)", "fc00::/7"),
    (0xfe80 << 112, 10, "link-local", "fe80::/10"),
    (0xfec0 << 112, 10, "site-local (deprecated)", "fec0::/10"),
    (0xff << 120, 8, "multicast", "ff00::/8"),
];

fn v6_denied(ip: Ipv6Addr) -> Option<DeniedRange> {
    let bits = u128::from(ip);
    // Forms that carry an IPv4 address are judged by it: NAT64 (64:ff9b::/96) reaches the IPv4
    // address through a translator, 6to4 (2002::/16) through a relay.
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return v4_denied(Ipv4Addr::from(bits as u32));
    }
    if bits >> 112 == 0x2002 {
        return v4_denied(Ipv4Addr::from((bits >> 80) as u32));
    }
    V6_DENIED.iter().find_map(|&(net, len, kind, range)| {
        let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
        (bits & mask == net).then_some(DeniedRange { kind, range })
    })
}

/// The non-public range `ip` (in canonical form) lies in, if any.
pub fn denied_range(ip: IpAddr) -> Option<DeniedRange> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_denied(v4),
        IpAddr::V6(v6) => v6_denied(v6),
    }
}

/// Whether the server may connect to `ip`: a public address, or one inside a range the operator
/// allowed (checked on the canonical form, so allowing `127.0.0.0/8` also allows
/// `::ffff:127.0.0.1`).
pub fn check(ip: IpAddr, allowed: &[IpNet]) -> Result<(), Blocked> {
    let canon = canonical(ip);
    if allowed.iter().any(|n| n.contains(&canon) || n.contains(&ip)) {
        return Ok(());
    }
    match denied_range(canon) {
        Some(d) => Err(Blocked { address: ip, kind: d.kind, range: d.range }),
        None => Ok(()),
    }
}

/// The host part of a webhook URL, as the URL parser gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    Ip(IpAddr),
    Domain(&'a str),
}

/// What the operator allows for webhook destinations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Plain `http://` URLs (default: https only).
    pub allow_http: bool,
    /// Ranges exempt from the deny list.
    pub allowed: Vec<IpNet>,
}

/// The longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Checks a webhook URL's parts when the webhook is created: the scheme (https, or http when
/// allowed), no credentials in the URL, a host, and — when the host is a literal address or a
/// name that always means this machine (`localhost`) — an allowed destination. Names are
/// resolved and checked again at every delivery.
pub fn check_url(scheme: &str, has_userinfo: bool, host: Option<Host<'_>>, rules: &Rules) -> Result<(), String> {
    match scheme {
        "https" => {}
        "http" if rules.allow_http => {}
        "http" => {
            return Err(
                "plain http:// is refused: webhooks carry signed request data, use https:// (or start the server with --webhook-allow-http)"
                    .into(),
            )
        }
        other => return Err(format!("the scheme '{other}' is not https")),
    }
    if has_userinfo {
        return Err(
            "credentials in the URL (user:password@) are refused; the signature authenticates the server".into()
        );
    }
    let allowed = |ip: IpAddr| check(ip, &rules.allowed).map_err(|b| b.to_string());
    match host {
        None => Err("the URL has no host".into()),
        Some(Host::Ip(ip)) => allowed(ip),
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d.is_empty() {
                return Err("the URL has no host".into());
            }
            // RFC 6761: these names always mean this machine, whatever DNS says.
            if d == "localhost" || d.ends_with(".localhost") {
                allowed(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
                allowed(IpAddr::V6(Ipv6Addr::LOCALHOST))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn non_public_ranges_are_denied_in_every_form() {
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:a9fe:a9fe::1", "link-local"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("3fff::1", "documentation"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "unspecified (\"this network\")"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.1", "documentation"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("::127.0.0.1", "IPv4-compatible (deprecated)"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique local (private)"),
            ("fc00::1", "unique local (private)"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
        ] {
            let d = denied_range(ip(addr)).unwrap_or_else(|| panic!("{addr} should be denied"));
            assert_eq!(d.kind, kind, "{addr}");
            assert!(check(ip(addr), &[]).is_err(), "{addr}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for addr in
            ["1.1.1.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "169.255.0.1", "2606:4700::1111", "::ffff:1.1.1.1"]
        {
            assert_eq!(denied_range(ip(addr)), None, "{addr}");
            assert!(check(ip(addr), &[]).is_ok(), "{addr}");
        }
    }

    #[test]
    fn allowed_ranges_exempt_their_addresses_only() {
        let allowed = [net("127.0.0.0/8"), net("10.20.0.0/16")];
        assert!(check(ip("127.0.0.1"), &allowed).is_ok());
        assert!(check(ip("::ffff:127.0.0.1"), &allowed).is_ok(), "the canonical form is what counts");
        assert!(check(ip("10.20.1.1"), &allowed).is_ok());
        assert!(check(ip("10.21.1.1"), &allowed).is_err());
        assert!(check(ip("169.254.169.254"), &allowed).is_err());
        assert!(check(ip("::1"), &allowed).is_err(), "IPv6 loopback is another range");
    }

    #[test]
    fn urls_need_https_no_credentials_and_an_allowed_literal_host() {
        let strict = Rules::default();
        let public = Some(Host::Ip(ip("203.0.114.1")));
        assert!(check_url("https", false, public, &strict).is_ok());
        assert!(check_url("https", false, Some(Host::Domain("hooks.example.com")), &strict).is_ok());
        assert!(check_url("http", false, public, &strict).unwrap_err().contains("http://"));
        assert!(check_url("ftp", false, public, &strict).is_err());
        assert!(check_url("https", true, public, &strict).unwrap_err().contains("credentials"));
        assert!(check_url("https", false, None, &strict).is_err());
        assert!(check_url("https", false, Some(Host::Ip(ip("169.254.169.254"))), &strict).is_err());
        assert!(check_url("https", false, Some(Host::Domain("LocalHost.")), &strict).is_err());
        assert!(check_url("https", false, Some(Host::Domain("a.localhost")), &strict).is_err());
        let lax = Rules { allow_http: true, allowed: vec![net("127.0.0.0/8"), net("::1/128")] };
        assert!(check_url("http", false, Some(Host::Ip(ip("127.0.0.1"))), &lax).is_ok());
        assert!(check_url("http", false, Some(Host::Domain("localhost")), &lax).is_ok());
        assert!(check_url("http", true, Some(Host::Ip(ip("127.0.0.1"))), &lax).is_err(), "credentials never");
    }
}
