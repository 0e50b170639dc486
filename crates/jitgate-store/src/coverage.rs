//! The conformance suite covers the whole store: every method of the store traits is called in
//! `src/conformance/` and has a row in the table of the suite's module documentation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::path::Path;

const TRAITS: [&str; 7] =
    ["PolicyStore", "AgentStore", "IdentityStore", "AuditStore", "WebhookStore", "ReplicaStore", "SessionStore"];

/// The methods of each store trait, as declared in `lib.rs`.
fn trait_methods(lib: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in lib.lines() {
        if let Some(rest) = line.strip_prefix("pub trait ") {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            current = TRAITS.contains(&name.as_str()).then_some(name);
            continue;
        }
        if line == "}" {
            current = None;
            continue;
        }
        let (Some(t), Some(rest)) = (&current, line.trim_start().strip_prefix("async fn ")) else { continue };
        let method: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        out.push((t.clone(), method));
    }
    out
}

#[test]
fn every_store_method_has_a_conformance_case_and_a_row_in_its_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let methods = trait_methods(&lib);
    for t in TRAITS {
        assert!(methods.iter().filter(|(m, _)| m == t).count() >= 3, "{t} was not found in lib.rs");
        let at = lib.find("pub trait Store:").expect("the Store trait");
        let combined = lib[at..].split('{').next().unwrap_or_default();
        assert!(combined.contains(t), "Store combines {t}");
    }
    let mut suite = String::new();
    let mut files: Vec<_> = std::fs::read_dir(src.join("conformance")).expect("conformance").flatten().collect();
    files.sort_by_key(|e| e.file_name());
    for f in files {
        suite.push_str(&std::fs::read_to_string(f.path()).expect("read"));
    }
    let table = std::fs::read_to_string(src.join("conformance/mod.rs")).expect("mod.rs");
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("//! | `")).collect();
    let uncalled: Vec<_> = methods.iter().filter(|(_, m)| !suite.contains(&format!(".{m}("))).collect();
    assert!(uncalled.is_empty(), "methods no conformance case calls: {uncalled:?}");
    let unlisted: Vec<_> =
        methods.iter().filter(|(_, m)| !rows.iter().any(|r| r.starts_with(&format!("//! | `{m}` |")))).collect();
    assert!(unlisted.is_empty(), "methods without a row in the conformance table: {unlisted:?}");
    // Each row names cases that exist and run.
    let run_all = &table[table.find("pub async fn run_all").expect("run_all")..];
    for row in rows {
        let cases = row.split('|').nth(2).unwrap_or("");
        for case in cases.split('`').skip(1).step_by(2) {
            let helper = ["put", "register"].contains(&case);
            assert!(
                helper || run_all.contains(&format!("    {case}(store).await;")),
                "the table names `{case}`, which run_all does not run"
            );
        }
    }
}

#[test]
fn the_parser_sees_every_method() {
    let lib = "pub trait PolicyStore: Send {\n    /// doc\n    async fn a(&self);\n    async fn b(\n        &self,\n    );\n}\nfn c() {}\n";
    let got = trait_methods(lib);
    assert_eq!(got, [("PolicyStore".to_string(), "a".to_string()), ("PolicyStore".into(), "b".into())]);
}
