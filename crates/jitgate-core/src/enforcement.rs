//! What the control plane tells an enforcement point: the ports it must keep closed and the
//! grants it must open, with their absolute end times (the wire layer turns them into remaining
//! durations).

use std::net::IpAddr;

use time::OffsetDateTime;

use crate::invalid::Invalid;
use crate::policy::{OsType, Protocol, SourceSpec};

/// Where an agent enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentMode {
    /// On the VM itself (Azure's NSG case).
    Host,
    /// On a gateway in front of VMs (Azure's firewall case), with DNAT.
    Gateway,
    /// A cloud connector: enforces through the cloud's own firewall (security groups), with
    /// nothing on the instances; it registers the VMs it finds (`PUT /agent/v1/inventory`).
    Cloud,
}

impl AgentMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Host => "host",
            AgentMode::Gateway => "gateway",
            AgentMode::Cloud => "cloud",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("host") {
            Some(AgentMode::Host)
        } else if s.eq_ignore_ascii_case("gateway") {
            Some(AgentMode::Gateway)
        } else if s.eq_ignore_ascii_case("cloud") {
            Some(AgentMode::Cloud)
        } else {
            None
        }
    }
}

/// A port the enforcement point keeps closed except for grants. `address` is the VM's inner
/// address behind a gateway, `None` on the host itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcedPort {
    pub vm_id: String,
    pub address: Option<IpAddr>,
    pub protocol: Protocol,
    pub number: u16,
    pub cut_sessions: bool,
    pub mapped_port: Option<u16>,
}

/// A live grant for the enforcement point to open until `end_time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcedGrant {
    pub request_id: i64,
    pub vm_id: String,
    pub address: Option<IpAddr>,
    pub protocol: Protocol,
    pub number: u16,
    pub sources: SourceSpec,
    pub end_time: OffsetDateTime,
    pub mapped_port: Option<u16>,
}

/// The whole desired state of one enforcement point at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcementState {
    pub revision: u64,
    pub mode: AgentMode,
    pub ports: Vec<EnforcedPort>,
    pub grants: Vec<EnforcedGrant>,
}

/// Builds an agent's state VM by VM, as a store reads it: each VM's protected ports, then its
/// live grants. A grant of a port that is no longer protected (its policy changed) opens nothing
/// and is left out.
#[derive(Debug, Default)]
pub struct StateBuilder {
    ports: Vec<EnforcedPort>,
    grants: Vec<EnforcedGrant>,
    protected: std::collections::HashSet<u16>,
}

impl StateBuilder {
    /// Starts the next VM: the ports protected so far were another VM's.
    pub fn next_vm(&mut self) {
        self.protected.clear();
    }

    /// A protected port of the current VM.
    pub fn port(&mut self, port: EnforcedPort) {
        self.protected.insert(port.number);
        self.ports.push(port);
    }

    /// A live grant of the current VM, kept only when its port is protected.
    pub fn grant(&mut self, grant: EnforcedGrant) {
        if self.protected.contains(&grant.number) {
            self.grants.push(grant);
        }
    }

    /// The state at `revision`.
    pub fn build(self, revision: u64, mode: AgentMode) -> EnforcementState {
        EnforcementState { revision, mode, ports: self.ports, grants: self.grants }
    }
}

/// The most an agent may send in each field of a join or a report. Anything from an agent is
/// stored, audited and shown to operators, so every field is bounded.
pub mod limits {
    /// A join or report body, in bytes.
    pub const BODY_BYTES: usize = 64 * 1024;
    /// A join token, in characters (ours are 47).
    pub const JOIN_TOKEN: usize = 256;
    /// The host name an agent reports.
    pub const HOSTNAME: usize = 255;
    /// How many addresses one join may carry.
    pub const ADDRESSES: usize = 64;
    /// The text of one address (the longest IPv6 text form is 45 characters).
    pub const ADDRESS_TEXT: usize = 45;
    /// `nftablesError` as stored and shown.
    pub const REPORT_ERROR: usize = 500;
    /// How much of a refused value an error message quotes.
    pub const QUOTE: usize = 64;
}

/// Whether a character is unsafe to store or echo: control characters and the Unicode
/// formatting characters that reorder or hide text (bidi overrides, zero-width marks).
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Untrusted text made safe to store and show: unsafe characters become spaces, runs of
/// whitespace one space, and at most `max` characters are kept (a cut ends in `…`).
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut space = false;
    for c in text.chars() {
        let c = if unsafe_char(c) || c.is_whitespace() { ' ' } else { c };
        if c == ' ' {
            if space || out.is_empty() {
                continue;
            }
            space = true;
        } else {
            space = false;
        }
        if count == max {
            out.truncate(out.trim_end().len());
            out.push('…');
            return out;
        }
        out.push(c);
        count += 1;
    }
    out.truncate(out.trim_end().len());
    out
}

/// A refused value as an error message quotes it: escaped and short, like every name from outside
/// ([`crate::ids::shown_max`]).
pub fn quote(text: &str) -> String {
    crate::ids::shown_max(text, limits::QUOTE)
}

/// What an agent reports about nftables, as stored and shown to operators.
pub fn report_error(text: &str) -> String {
    printable(text, limits::REPORT_ERROR)
}

/// A join body as received.
#[derive(Debug, Clone, Default)]
pub struct JoinDraft {
    pub join_token: String,
    pub name: String,
    pub mode: String,
    pub os_type: String,
    pub addresses: Vec<String>,
    pub public_address: Option<String>,
    pub hostname: String,
    /// The name is the host's name, not one the operator gave.
    pub name_is_hostname: bool,
}

/// A join whose every field is checked and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedJoin {
    pub join_token: String,
    pub agent: JoiningAgent,
}

/// What a joining agent says about itself, checked and bounded: what the store records of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoiningAgent {
    /// The VM name (host mode), the gateway's name (gateway mode) or the connector's (cloud mode).
    pub name: String,
    pub mode: AgentMode,
    pub os_type: OsType,
    pub addresses: Vec<IpAddr>,
    pub public_address: Option<IpAddr>,
    pub hostname: String,
    /// `name` is the host's name, not one the operator gave: a join token made for one VM
    /// (host mode) joins as that VM instead.
    pub name_is_hostname: bool,
}

/// The code of a malformed join.
pub const INVALID_JOIN: &str = "InvalidJoinRequest";

/// Checks every field of a join; messages quote refused values only in part.
pub fn check_join(draft: JoinDraft) -> Result<CheckedJoin, Invalid> {
    let bad = |field: &str, m: String| Invalid::input(INVALID_JOIN, Some(field.to_owned()), m);
    let token = draft.join_token.trim();
    if token.is_empty() || token.chars().count() > limits::JOIN_TOKEN {
        return Err(Invalid::input("InvalidJoinToken", None, "the join token is unknown"));
    }
    let mode = AgentMode::parse(&draft.mode)
        .ok_or_else(|| bad("mode", format!("mode '{}' is not host, gateway or cloud", quote(&draft.mode))))?;
    let os_type = OsType::parse(&draft.os_type)
        .ok_or_else(|| bad("osType", format!("osType '{}' is not Linux or Windows", quote(&draft.os_type))))?;
    let name_ok = crate::ids::validate_vm_name(&draft.name).is_ok() && !draft.name.chars().any(unsafe_char);
    name_ok.then_some(()).ok_or_else(|| {
        bad(
            "name",
            format!("name '{}' must be 1 to 64 characters without spaces or control characters", quote(&draft.name)),
        )
    })?;
    if draft.addresses.len() > limits::ADDRESSES {
        return Err(bad(
            "addresses",
            format!("{} addresses were sent; at most {} are accepted", draft.addresses.len(), limits::ADDRESSES),
        ));
    }
    let address = |field: &str, a: &str| -> Result<IpAddr, Invalid> {
        if a.len() > limits::ADDRESS_TEXT {
            return Err(bad(field, format!("'{}' is not an IP address", quote(a))));
        }
        a.parse().map_err(|_| bad(field, format!("'{}' is not an IP address", quote(a))))
    };
    let mut addresses = Vec::with_capacity(draft.addresses.len());
    for (i, a) in draft.addresses.iter().enumerate() {
        let ip = address(&format!("addresses[{i}]"), a)?;
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    let public_address = draft.public_address.as_deref().map(|a| address("publicAddress", a)).transpose()?;
    if draft.hostname.chars().count() > limits::HOSTNAME || draft.hostname.chars().any(unsafe_char) {
        return Err(bad(
            "hostname",
            format!(
                "hostname '{}' must be at most {} characters without control characters",
                quote(&draft.hostname),
                limits::HOSTNAME
            ),
        ));
    }
    let agent = JoiningAgent {
        name: draft.name,
        mode,
        os_type,
        addresses,
        public_address,
        hostname: draft.hostname,
        name_is_hostname: draft.name_is_hostname,
    };
    Ok(CheckedJoin { join_token: token.to_owned(), agent })
}

/// One claim on a gateway's public port: `mapped_port`/`protocol` forwards to `vm`:`number`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedClaim {
    /// The policy holding the claim (its ARM id).
    pub policy: String,
    /// The VM's name.
    pub vm: String,
    pub number: u16,
    pub protocol: Protocol,
    pub mapped_port: u16,
    /// Where in the input the claim is (new claims only).
    pub target: Option<String>,
}

/// The code of a gateway port claimed twice.
pub const MAPPED_PORT_IN_USE: &str = "MappedPortInUse";

/// A gateway's public ports are one namespace across all policies: refuses the first new claim
/// whose port is already held for an overlapping protocol, naming the holder.
pub fn check_mapped_ports(gateway: &str, new: &[MappedClaim], held: &[MappedClaim]) -> Result<(), Invalid> {
    for n in new {
        if let Some(h) = held.iter().find(|h| h.mapped_port == n.mapped_port && h.protocol.overlaps(n.protocol)) {
            let mut invalid = Invalid::conflict(
                MAPPED_PORT_IN_USE,
                format!(
                    "gateway '{gateway}' already forwards its port {}/{} to {}:{} (policy '{}'); \
                     a gateway's ports are shared by all policies: choose another mappedPort",
                    h.mapped_port,
                    h.protocol.as_str(),
                    h.vm,
                    h.number,
                    h.policy
                ),
            );
            invalid.target = n.target.clone();
            return Err(invalid);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_counts_only_on_a_port_its_vm_protects() {
        let port = |vm: &str, number| EnforcedPort {
            vm_id: vm.into(),
            address: None,
            protocol: Protocol::Tcp,
            number,
            cut_sessions: false,
            mapped_port: None,
        };
        let grant = |vm: &str, number| EnforcedGrant {
            request_id: 1,
            vm_id: vm.into(),
            address: None,
            protocol: Protocol::Tcp,
            number,
            sources: SourceSpec::Single(crate::SourcePrefix::any()),
            end_time: OffsetDateTime::UNIX_EPOCH,
            mapped_port: None,
        };
        let mut b = StateBuilder::default();
        b.next_vm();
        b.port(port("vm1", 22));
        b.grant(grant("vm1", 22));
        b.grant(grant("vm1", 80));
        b.next_vm();
        b.port(port("vm2", 3389));
        b.grant(grant("vm2", 22));
        let state = b.build(7, AgentMode::Gateway);
        assert_eq!((state.revision, state.mode, state.ports.len()), (7, AgentMode::Gateway, 2));
        assert_eq!(state.grants, vec![grant("vm1", 22)], "80 is not protected, and vm2 does not protect 22");
    }

    fn draft() -> JoinDraft {
        JoinDraft {
            join_token: "jgj_x".into(),
            name: "web1".into(),
            mode: "host".into(),
            os_type: "Linux".into(),
            addresses: vec!["10.0.0.4".into()],
            public_address: None,
            hostname: "web1".into(),
            name_is_hostname: false,
        }
    }

    fn refused(d: JoinDraft) -> Invalid {
        match check_join(d) {
            Err(e) => e,
            Ok(j) => panic!("accepted {j:?}"),
        }
    }

    #[test]
    fn every_join_field_is_bounded_and_messages_quote_little() {
        assert!(check_join(draft()).is_ok());
        let huge = "x".repeat(900_000);
        for (field, d) in [
            ("name", JoinDraft { name: huge.clone(), ..draft() }),
            ("mode", JoinDraft { mode: huge.clone(), ..draft() }),
            ("osType", JoinDraft { os_type: huge.clone(), ..draft() }),
            ("hostname", JoinDraft { hostname: huge.clone(), ..draft() }),
            ("addresses[0]", JoinDraft { addresses: vec![huge.clone()], ..draft() }),
            ("publicAddress", JoinDraft { public_address: Some(huge.clone()), ..draft() }),
            ("addresses", JoinDraft { addresses: vec!["10.0.0.1".into(); 65], ..draft() }),
            ("hostname", JoinDraft { hostname: "web\u{202e}1".into(), ..draft() }),
            ("name", JoinDraft { name: "web\n1".into(), ..draft() }),
        ] {
            let e = refused(d);
            assert_eq!(e.target.as_deref(), Some(field));
            assert!(e.message.len() < 300, "{field}: {} bytes", e.message.len());
        }
        let e = refused(JoinDraft { join_token: huge, ..draft() });
        assert_eq!(e.code, "InvalidJoinToken");
        let many = check_join(JoinDraft { addresses: vec!["10.0.0.1".into(); 64], ..draft() }).expect("64 are fine");
        assert_eq!(many.agent.addresses.len(), 1, "duplicates are kept once");
    }

    #[test]
    fn a_hostname_of_the_dns_maximum_joins_and_one_more_character_does_not() {
        let longest = "h".repeat(limits::HOSTNAME);
        let joined = check_join(JoinDraft { hostname: longest.clone(), ..draft() }).expect("255 characters");
        assert_eq!(joined.agent.hostname, longest);
        let e = refused(JoinDraft { hostname: format!("{longest}h"), ..draft() });
        assert_eq!(e.target.as_deref(), Some("hostname"));
    }

    #[test]
    fn printable_text_has_no_control_or_reordering_characters_and_is_bounded() {
        assert_eq!(printable("nft:\u{1b}[31m failed\r\n\tnow", 100), "nft: [31m failed now");
        assert_eq!(printable("a\u{202e}b", 10), "a b");
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(printable("  ab  ", 10), "ab");
        assert_eq!(quote("web\u{202e}1\n"), "web\\u{202e}1\\n", "a quoted value is escaped, not cleaned");
        assert_eq!(report_error(&"e".repeat(10_000)).chars().count(), limits::REPORT_ERROR + 1);
    }

    #[test]
    fn a_gateway_port_is_claimed_once_across_policies() {
        let claim = |policy: &str, vm: &str, protocol, mapped_port| MappedClaim {
            policy: policy.into(),
            vm: vm.into(),
            number: 22,
            protocol,
            mapped_port,
            target: Some("t".into()),
        };
        let held = [claim("default", "vm1", Protocol::Tcp, 52222)];
        let e = check_mapped_ports("gw1", &[claim("second", "vm2", Protocol::Tcp, 52222)], &held)
            .expect_err("claimed twice");
        assert_eq!((e.code, e.target.as_deref()), (MAPPED_PORT_IN_USE, Some("t")));
        assert!(e.message.contains("vm1:22") && e.message.contains("default"), "{}", e.message);
        assert!(check_mapped_ports("gw1", &[claim("second", "vm2", Protocol::Any, 52222)], &held).is_err());
        assert!(check_mapped_ports("gw1", &[claim("second", "vm2", Protocol::Udp, 52222)], &held).is_ok());
        assert!(check_mapped_ports("gw1", &[claim("second", "vm2", Protocol::Tcp, 52223)], &held).is_ok());
    }
}
