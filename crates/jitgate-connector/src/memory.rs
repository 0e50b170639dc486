//! The rules taken away from an instance's own security groups, remembered in tags on its
//! jitgate group (`jitgate:removed:1` …), so that disabling puts back exactly what was there even
//! when the connector's machine and its disk are gone.
//!
//! Each rule is one entry: `GROUP PROTOCOL FROM TO SOURCE [DESCRIPTION]`, fields separated by one
//! space, `-` for a missing port, `%`, space and `;` in a field escaped as `%25`, `%20` and `%3B`;
//! entries are packed into tag values joined by `;`, each value at most [`TAG_VALUE_MAX`]
//! characters. What does not fit in [`MAX_MEMORY_TAGS`] tags cannot be remembered, and the
//! connector then leaves the rule alone and reports the VM failing.

use std::collections::BTreeSet;

use jitgate_aws::Tag;

use crate::rules::{Proto, Rule, Source};

/// The prefix of the tags that hold removed rules.
pub const REMOVED_PREFIX: &str = "jitgate:removed:";
/// EC2's longest tag value, in characters.
pub const TAG_VALUE_MAX: usize = 256;
/// EC2 allows 50 tags per resource; the jitgate group keeps three of its own
/// (`jitgate:managed`, `jitgate:instance`, `jitgate:vm`).
pub const MAX_MEMORY_TAGS: usize = 47;

fn escape(field: &str) -> String {
    field.replace('%', "%25").replace(' ', "%20").replace(';', "%3B")
}

fn unescape(field: &str) -> String {
    field.replace("%3B", ";").replace("%20", " ").replace("%25", "%")
}

fn port(p: Option<i32>) -> String {
    p.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// One rule as one entry.
pub fn entry(rule: &Rule) -> String {
    let mut fields = vec![
        escape(&rule.group_id),
        escape(rule.proto.as_ec2()),
        port(rule.from),
        port(rule.to),
        escape(&rule.source.text()),
    ];
    if let Some(d) = &rule.description {
        fields.push(escape(d));
    }
    fields.join(" ")
}

/// Reads one entry; `None` when it is not one.
pub fn parse_entry(text: &str) -> Option<Rule> {
    let fields: Vec<&str> = text.split(' ').collect();
    if !(5..=6).contains(&fields.len()) {
        return None;
    }
    let num = |f: &str| -> Option<Option<i32>> {
        if f == "-" {
            Some(None)
        } else {
            f.parse::<i32>().ok().filter(|n| (-1..=65_535).contains(n)).map(Some)
        }
    };
    let group_id = unescape(fields[0]);
    if !group_id.starts_with("sg-") {
        return None;
    }
    Some(Rule {
        group_id,
        proto: Proto::parse(&unescape(fields[1])),
        from: num(fields[2])?,
        to: num(fields[3])?,
        source: Source::parse(&unescape(fields[4]))?,
        description: fields.get(5).map(|d| unescape(d)).filter(|d| !d.is_empty()),
    })
}

/// The tags that remember `rules`, numbered from 1, or why they cannot be remembered.
pub fn encode(rules: &BTreeSet<Rule>) -> Result<Vec<Tag>, String> {
    let mut values: Vec<String> = Vec::new();
    for rule in rules {
        let e = entry(rule);
        if e.chars().count() > TAG_VALUE_MAX {
            return Err(format!(
                "the rule {} {} of {} is too long to remember in a tag ({} characters, at most {TAG_VALUE_MAX}): shorten its description",
                rule.proto.as_ec2(),
                rule.source.text(),
                rule.group_id,
                e.chars().count()
            ));
        }
        let fits = values.last().is_some_and(|v| v.chars().count() + 1 + e.chars().count() <= TAG_VALUE_MAX);
        match values.last_mut() {
            Some(v) if fits => {
                v.push(';');
                v.push_str(&e);
            }
            _ => values.push(e),
        }
    }
    if values.len() > MAX_MEMORY_TAGS {
        return Err(format!(
            "{} rules would have to be removed from the instance's security groups, more than the {MAX_MEMORY_TAGS} tags of its jitgate group can remember: allow the protected ports through fewer rules",
            rules.len()
        ));
    }
    Ok(values.into_iter().enumerate().map(|(i, v)| Tag::new(format!("{REMOVED_PREFIX}{}", i + 1), v)).collect())
}

/// The rules remembered in `tags` (any order, duplicates once); entries that cannot be read are
/// counted in the second value.
pub fn decode(tags: &[Tag]) -> (BTreeSet<Rule>, usize) {
    let mut rules = BTreeSet::new();
    let mut bad = 0;
    for t in tags.iter().filter(|t| t.key.starts_with(REMOVED_PREFIX)) {
        for e in t.value.split(';').filter(|e| !e.is_empty()) {
            match parse_entry(e) {
                Some(r) => {
                    rules.insert(r);
                }
                None => bad += 1,
            }
        }
    }
    (rules, bad)
}

/// The memory tags' keys among `tags`.
pub fn keys(tags: &[Tag]) -> BTreeSet<String> {
    tags.iter().filter(|t| t.key.starts_with(REMOVED_PREFIX)).map(|t| t.key.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(n: i32, description: Option<&str>) -> Rule {
        Rule {
            group_id: "sg-0123456789abcdef0".into(),
            proto: Proto::Tcp,
            from: Some(n),
            to: Some(n + 10),
            source: Source::Cidr("203.0.113.0/24".parse().unwrap()),
            description: description.map(Into::into),
        }
    }

    #[test]
    fn entries_round_trip_with_every_kind_of_field() {
        let odd = "ssh; from 100% of the office  (x)";
        let all = [
            rule(22, Some(odd)),
            rule(22, None),
            Rule { proto: Proto::All, from: None, to: None, ..rule(0, None) },
            Rule { source: Source::Group("sg-1".into()), ..rule(1, None) },
            Rule { source: Source::PrefixList("pl-1".into()), ..rule(1, None) },
            Rule { source: Source::Cidr("2001:db8::/32".parse().unwrap()), ..rule(1, Some("v6")) },
            Rule { proto: Proto::Icmp, from: Some(-1), to: Some(-1), ..rule(1, None) },
        ];
        for r in all {
            let e = entry(&r);
            assert!(!e.contains(';'), "{e}");
            assert_eq!(parse_entry(&e), Some(r), "{e}");
        }
        assert_eq!(entry(&rule(22, Some("x"))), "sg-0123456789abcdef0 tcp 22 32 203.0.113.0/24 x");
    }

    #[test]
    fn rules_pack_into_bounded_tags_and_come_back() {
        let rules: BTreeSet<Rule> = (0..40).map(|n| rule(n, Some("office"))).collect();
        let tags = encode(&rules).unwrap();
        assert!(tags.len() < 40, "packed: {}", tags.len());
        assert!(tags.iter().all(|t| t.value.chars().count() <= TAG_VALUE_MAX));
        assert_eq!(tags[0].key, "jitgate:removed:1");
        let (back, bad) = decode(&tags);
        assert_eq!((back, bad), (rules, 0));
        assert!(encode(&BTreeSet::new()).unwrap().is_empty());
    }

    #[test]
    fn what_cannot_be_remembered_is_refused() {
        let long = "d".repeat(250);
        let one: BTreeSet<Rule> = [rule(1, Some(&long))].into();
        assert!(encode(&one).unwrap_err().contains("too long"));
        let many: BTreeSet<Rule> = (0..48).map(|n| rule(n, Some(&"d".repeat(150)))).collect();
        assert!(encode(&many).unwrap_err().contains("47 tags"));
    }

    #[test]
    fn unreadable_entries_are_counted_not_guessed() {
        let tags = [
            Tag::new("jitgate:removed:1", "garbage;sg-1 tcp 22 22 10.0.0.0/8;sg-1 tcp x 22 10.0.0.0/8"),
            Tag::new("Name", "sg-1 tcp 22 22 10.0.0.0/8"),
        ];
        let (rules, bad) = decode(&tags);
        assert_eq!((rules.len(), bad), (1, 2));
        assert_eq!(keys(&tags), BTreeSet::from(["jitgate:removed:1".to_owned()]));
    }
}
