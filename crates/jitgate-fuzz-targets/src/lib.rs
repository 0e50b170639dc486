//! The fuzz targets of jitgate: one function per kind of input jitgate reads from outside, each
//! taking any bytes and checking its own invariants with `assert!` (a failed assertion, like any
//! other panic, is a crash the fuzzer keeps). Every target must hold for every input:
//!
//! - it never panics on its own (no input crashes a parser or a decision);
//! - what it accepts, printed again, is read back as the same value (parse → print → parse);
//! - what it decides stays inside its rules (a grant within its policy, a window within its
//!   maximum, a cleaned name clean);
//! - for netlink, the decoder reads back from `encode_batch()` exactly the operations given,
//!   normalised as the kernel keeps them.
//!
//! The AFL++ harness (`fuzz/`, one binary per target) and the corpus replay test
//! (`tests/corpus.rs`, every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`)
//! call the same functions, found by name in [`TARGETS`].

mod agent;
mod bodies;
mod cloud;
mod jwt;
mod netlink;
mod text;

pub use agent::agent_messages;
pub use bodies::{initiate, policy_put, role_definition};
pub use cloud::cloud_reports;
pub use jwt::jwt;
pub use netlink::{netlink, netlink_answers};
pub use text::{arm_id, datetime, duration, prefix};

/// A fuzz target: any bytes in, a panic when an invariant does not hold.
pub type Target = fn(&[u8]);

/// Every target, by the name of its directory under `fuzz/corpus/` and of its fuzz binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("policy_put", policy_put),
    ("initiate", initiate),
    ("duration", duration),
    ("datetime", datetime),
    ("prefix", prefix),
    ("arm_id", arm_id),
    ("role_definition", role_definition),
    ("agent_messages", agent_messages),
    ("cloud_reports", cloud_reports),
    ("jwt", jwt),
    ("netlink", netlink),
    ("netlink_answers", netlink_answers),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The longest error message a parser of names, times and addresses may give, whatever the
/// length of its input: they quote what they refuse only in part (at most a few hundred
/// characters, escaped), so that a long input never makes a long answer or log line.
pub(crate) const MESSAGE_LIMIT: usize = 4096;

/// Splits `data` at its first `\n` (the rest is empty when there is none).
pub(crate) fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
