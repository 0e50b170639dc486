//! A check each backend runs on its own sources: no status or reason of a grant is written into
//! them as a literal (the store binds the core values, so that the words live in `jitgate-core`
//! alone). "Pending" is also a state of the webhook outbox, so for that word only comparisons
//! with the grant columns are looked for.

use std::path::PathBuf;

use jitgate_core::initiate::{GrantStatus, StatusReason};

/// What may not appear in a backend's sources.
pub fn forbidden_grant_literals() -> Vec<String> {
    let statuses = [GrantStatus::Initiated, GrantStatus::Revoked, GrantStatus::Pending, GrantStatus::Scheduled];
    let reasons = [
        StatusReason::UserRequested,
        StatusReason::Expired,
        StatusReason::NewerRequestInitiated,
        StatusReason::PolicyDeleted,
        StatusReason::ApprovalRequired,
        StatusReason::Approved,
        StatusReason::Denied,
        StatusReason::ApprovalExpired,
    ];
    let words = statuses.iter().map(|s| s.as_str()).chain(reasons.iter().map(|r| r.as_str()));
    let q = '\'';
    let mut forbidden: Vec<String> = vec![
        format!("status = {q}"),
        format!("status IN ({q}"),
        format!("status_reason = {q}"),
        format!("g.status = {q}"),
    ];
    for w in words.filter(|w| *w != GrantStatus::Pending.as_str()) {
        forbidden.push(format!("{q}{w}{q}"));
        forbidden.push(format!("\"{w}\""));
    }
    forbidden
}

/// Panics naming the first file under `dirs` (with one of `extensions`) that writes a grant
/// status or reason as a literal; returns how many files were read.
pub fn assert_no_grant_literals(dirs: Vec<PathBuf>, extensions: &[&str]) -> usize {
    let forbidden = forbidden_grant_literals();
    let mut dirs = dirs;
    let mut checked = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| !extensions.iter().any(|x| e == *x)) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            for f in &forbidden {
                assert!(!text.contains(f.as_str()), "{} writes {f}", path.display());
            }
            checked += 1;
        }
    }
    checked
}
