//! How a value is written into a store's columns where the form is the store's own and not
//! the database's: the same in every backend, so that what one writes the other would read.

use std::net::IpAddr;

use jitgate_core::cloud::{CloudFacts, CloudState};
use jitgate_core::{SourcePrefix, SourceSpec};

/// The stored form of one source prefix (`*`, an address or a prefix).
const SINGLE: &str = "single";
/// The stored form of a list of prefixes.
const MULTI: &str = "multi";

/// Sources are stored as their form (`single`/`multi`) and their texts, one per line.
pub fn encode_sources(s: &SourceSpec) -> (&'static str, String) {
    let form = match s {
        SourceSpec::Single(_) => SINGLE,
        SourceSpec::Multiple(_) => MULTI,
    };
    let texts: Vec<&str> = s.prefixes().iter().map(SourcePrefix::text).collect();
    (form, texts.join("\n"))
}

/// The sources [`encode_sources`] stored; what does not parse is named in the error.
pub fn decode_sources(form: &str, texts: &str) -> Result<SourceSpec, String> {
    match form {
        SINGLE => Ok(SourceSpec::Single(SourcePrefix::parse_stored(texts)?)),
        MULTI => Ok(SourceSpec::Multiple(texts.split('\n').map(SourcePrefix::parse_stored).collect::<Result<_, _>>()?)),
        other => Err(format!("source form {other}")),
    }
}

/// The stored form of a cloud VM's facts (and its public address): JSON with fixed keys.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredCloud {
    provider: String,
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    vpc_id: Option<String>,
    #[serde(default)]
    security_groups: Vec<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    public_address: Option<String>,
}

/// A cloud VM's facts and public address as one column.
pub fn encode_cloud(facts: &CloudFacts, public_address: Option<IpAddr>) -> String {
    let stored = StoredCloud {
        provider: facts.provider.clone(),
        instance_id: facts.instance_id.clone(),
        vpc_id: facts.vpc_id.clone(),
        security_groups: facts.security_groups.clone(),
        display_name: facts.display_name.clone(),
        public_address: public_address.map(|a| a.to_string()),
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

/// What [`encode_cloud`] stored, with the columns beside it: the VM's [`CloudState`].
pub fn decode_cloud(
    text: &str,
    unsupported_reason: Option<String>,
    failure: Option<String>,
) -> Result<CloudState, String> {
    let s: StoredCloud = serde_json::from_str(text).map_err(|e| format!("cloud facts: {e}"))?;
    let public_address =
        s.public_address.map(|a| a.parse().map_err(|_| format!("cloud public address {a}"))).transpose()?;
    Ok(CloudState {
        facts: CloudFacts {
            provider: s.provider,
            instance_id: s.instance_id,
            vpc_id: s.vpc_id,
            security_groups: s.security_groups,
            display_name: s.display_name,
        },
        public_address,
        unsupported_reason,
        failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_facts_round_trip_through_their_stored_form() {
        let facts = CloudFacts {
            provider: "aws".into(),
            instance_id: Some("i-0123456789abcdef0".into()),
            vpc_id: None,
            security_groups: vec!["sg-1".into(), "sg-2".into()],
            display_name: Some("web \"one\"".into()),
        };
        let ip: IpAddr = "203.0.113.9".parse().expect("ip");
        let state = decode_cloud(&encode_cloud(&facts, Some(ip)), Some("r".into()), None).expect("decodes");
        assert_eq!((state.facts, state.public_address, state.unsupported_reason), (facts, Some(ip), Some("r".into())));
        assert!(decode_cloud("{", None, None).is_err());
    }

    #[test]
    fn sources_round_trip_through_their_stored_form() {
        let one = SourceSpec::Single(SourcePrefix::parse("10.0.0.0/24").expect("a prefix"));
        let many = SourceSpec::Multiple(vec![
            SourcePrefix::parse("10.0.0.0/24").expect("a prefix"),
            SourcePrefix::parse("192.0.2.7").expect("an address"),
        ]);
        for spec in [one, many] {
            let (form, texts) = encode_sources(&spec);
            assert_eq!(decode_sources(form, &texts).expect("decodes"), spec);
        }
        assert_eq!(encode_sources(&SourceSpec::Single(SourcePrefix::any())).0, "single");
        assert!(decode_sources("other", "*").expect_err("unknown form").contains("other"));
        assert!(decode_sources("multi", "10.0.0.0/24\nnonsense").is_err());
    }
}
