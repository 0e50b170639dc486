//! Source address prefixes: `*` (any source), one IP address, or a CIDR range, IPv4 or IPv6.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// A source prefix with the text it was written as (echoed back unchanged on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePrefix {
    text: String,
    /// `None` means any source (`*`).
    net: Option<IpNet>,
}

impl SourcePrefix {
    /// Parses `*`, `10.0.0.4`, `10.0.0.0/24`, `2001:db8::1` or `2001:db8::/32`, strictly: no
    /// leading zeros in an IPv4 octet or in the prefix length (`010.0.0.0/8`, `10.0.0.1/08` are
    /// refused, as Azure refuses them), and no host bits beside a prefix length (`10.0.0.1/24` is
    /// refused with the network it would mean). What is kept is the canonical text
    /// (`2001:DB8::1` becomes `2001:db8::1`), so agents and webhooks see one spelling.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t == "*" {
            return Ok(SourcePrefix::any());
        }
        let (addr, len) = match t.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (t, None),
        };
        // The standard parser refuses leading zeros in IPv4 octets and every other odd form.
        let ip: IpAddr = addr.parse().map_err(|_| Self::error(text))?;
        let Some(len) = len else {
            return Ok(Self::from_ip(ip));
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let canonical_len =
            !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) && (len == "0" || !len.starts_with('0'));
        let bits = len.parse::<u8>().ok().filter(|b| canonical_len && *b <= max).ok_or_else(|| {
            format!("'{}': the prefix length must be a number from 0 to {max} without leading zeros", Self::shown(text))
        })?;
        let net = IpNet::new(ip, bits).map_err(|_| Self::error(text))?;
        if net.trunc() != net {
            return Err(format!(
                "'{}' has host bits set after the /{bits} prefix; write the network {} or the single address {}",
                Self::shown(text),
                net.trunc(),
                ip
            ));
        }
        Ok(SourcePrefix { text: net.to_string(), net: Some(net) })
    }

    /// Reads a prefix stored by an earlier version, which kept the text as the caller wrote it
    /// (host bits and all): lenient, for data already accepted, never for input.
    pub fn parse_stored(text: &str) -> Result<Self, String> {
        if let Ok(p) = Self::parse(text) {
            return Ok(SourcePrefix { text: text.trim().to_owned(), ..p });
        }
        let t = text.trim();
        let net: IpNet = t.parse().map_err(|_| Self::error(text))?;
        Ok(SourcePrefix { text: t.to_owned(), net: Some(net.trunc()) })
    }

    fn shown(text: &str) -> String {
        crate::ids::shown(text)
    }

    fn error(text: &str) -> String {
        format!("'{}' is not '*', an IP address or a CIDR range such as 10.0.0.0/24", Self::shown(text))
    }

    /// The prefix of exactly one address.
    pub fn from_ip(ip: IpAddr) -> Self {
        SourcePrefix { text: ip.to_string(), net: Some(IpNet::from(ip)) }
    }

    pub fn any() -> Self {
        SourcePrefix { text: "*".into(), net: None }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The network, `None` for any source.
    pub fn net(&self) -> Option<IpNet> {
        self.net
    }

    pub fn is_any(&self) -> bool {
        self.net.is_none()
    }

    /// Whether every address of `other` is inside `self`.
    pub fn covers(&self, other: &SourcePrefix) -> bool {
        match (self.net, other.net) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(outer), Some(inner)) => outer.contains(&inner),
        }
    }

    /// A canonical form for comparing sources (`10.0.0.7` and `10.0.0.7/32` compare equal).
    pub fn canonical(&self) -> String {
        match self.net {
            None => "*".into(),
            Some(n) => n.to_string(),
        }
    }
}

impl fmt::Display for SourcePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SourcePrefix {
        SourcePrefix::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_any_addresses_and_ranges() {
        assert!(p("*").is_any());
        assert_eq!(p("10.0.0.4").canonical(), "10.0.0.4/32");
        assert_eq!(p("10.0.0.0/24").canonical(), "10.0.0.0/24");
        assert_eq!(p("10.0.0.4/32").text(), "10.0.0.4/32");
        assert_eq!(p(" 10.0.0.4 ").text(), "10.0.0.4");
        assert_eq!(p("2001:DB8:0::1").text(), "2001:db8::1", "IPv6 is kept in its canonical spelling");
        assert_eq!(p("0.0.0.0/0").canonical(), "0.0.0.0/0");
        assert_eq!(p("2001:db8::1").canonical(), "2001:db8::1/128");
        assert_eq!(p("2001:db8::/32").canonical(), "2001:db8::/32");
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in [
            "",
            "any",
            "Internet",
            "10.0.0",
            "10.0.0.0/33",
            "300.1.1.1",
            "10.0.0.0/",
            "::/129",
            "* "[..1].repeat(2).as_str(),
        ] {
            assert!(SourcePrefix::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn coverage_is_subset_matching() {
        assert!(p("*").covers(&p("10.1.2.3")));
        assert!(p("*").covers(&p("*")));
        assert!(!p("10.0.0.0/8").covers(&p("*")));
        assert!(p("10.0.0.0/24").covers(&p("10.0.0.0/24")));
        assert!(p("10.0.0.0/24").covers(&p("10.0.0.7")));
        assert!(p("10.0.0.0/24").covers(&p("10.0.0.128/25")));
        assert!(!p("10.0.0.0/24").covers(&p("10.0.0.0/23")));
        assert!(!p("10.0.0.0/24").covers(&p("10.0.1.1")));
        assert!(!p("10.0.0.0/8").covers(&p("2001:db8::1")));
        assert!(p("2001:db8::/32").covers(&p("2001:db8::1")));
    }

    #[test]
    fn refuses_non_canonical_spellings_and_host_bits() {
        for bad in [
            "010.0.0.0/8",
            "10.0.0.1/08",
            "10.0.0.010/32",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "0x0a.0.0.1",
            "10.1",
            "2130706433",
        ] {
            assert!(SourcePrefix::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let e = SourcePrefix::parse("10.0.0.1/24").expect_err("host bits");
        assert!(e.contains("10.0.0.0/24") && e.contains("10.0.0.1"), "{e}");
        assert!(SourcePrefix::parse("2001:db8::1/32").is_err());
        assert!(SourcePrefix::parse(&"1".repeat(70_000)).expect_err("long").len() < 300);
    }

    #[test]
    fn stored_prefixes_of_earlier_versions_still_load() {
        let old = SourcePrefix::parse_stored("10.0.0.7/24").expect("lenient");
        assert_eq!((old.text(), old.canonical().as_str()), ("10.0.0.7/24", "10.0.0.0/24"));
        assert_eq!(SourcePrefix::parse_stored("10.0.0.0/24").expect("strict form").text(), "10.0.0.0/24");
        assert_eq!(SourcePrefix::parse_stored("*").map(|p| p.is_any()), Ok(true));
        // A valid prefix in another spelling keeps the stored text, and means the same network.
        let upper = SourcePrefix::parse_stored(" 2001:DB8::1 ").expect("valid");
        assert_eq!((upper.text(), upper.net()), ("2001:DB8::1", p("2001:db8::1").net()));
    }

    #[test]
    fn a_refusal_names_the_text_and_the_accepted_forms() {
        for bad in ["any", "10.0.0", "10.0.0.0/33x"] {
            let e = SourcePrefix::parse(bad).expect_err(bad);
            if bad.contains('/') {
                assert!(e.contains("the prefix length must be a number from 0 to 32"), "{e}");
            } else {
                assert_eq!(e, format!("'{bad}' is not '*', an IP address or a CIDR range such as 10.0.0.0/24"));
            }
        }
        assert_eq!(
            SourcePrefix::parse_stored("nope").expect_err("not even lenient"),
            "'nope' is not '*', an IP address or a CIDR range such as 10.0.0.0/24"
        );
    }
}
