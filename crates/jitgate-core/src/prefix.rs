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
    /// Parses `*`, `10.0.0.4`, `10.0.0.0/24`, `2001:db8::1` or `2001:db8::/32`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t == "*" {
            return Ok(SourcePrefix { text: "*".into(), net: None });
        }
        let net = if t.contains('/') {
            let net: IpNet = t.parse().map_err(|_| Self::error(text))?;
            // A range written with host bits (10.0.0.7/24) means the network that contains them.
            net.trunc()
        } else {
            let ip: IpAddr = t.parse().map_err(|_| Self::error(text))?;
            IpNet::from(ip)
        };
        Ok(SourcePrefix { text: t.to_owned(), net: Some(net) })
    }

    fn error(text: &str) -> String {
        format!("'{text}' is not '*', an IP address or a CIDR range such as 10.0.0.0/24")
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
        assert_eq!(p("10.0.0.7/24").canonical(), "10.0.0.0/24");
        assert_eq!(p("10.0.0.7/24").text(), "10.0.0.7/24");
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
}
