//! How a value is written into a store's columns where the form is the store's own and not
//! the database's: the same in every backend, so that what one writes the other would read.

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

#[cfg(test)]
mod tests {
    use super::*;

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
