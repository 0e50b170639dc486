//! Every file of every target's committed corpus (`fuzz/corpus/<target>/`) and every crash the
//! fuzzer found (`fuzz/regressions/<target>/`), replayed through the target: an ordinary test,
//! so that `cargo test` keeps what fuzzing found fixed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::path::{Path, PathBuf};

use jitgate_fuzz_targets::{target, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted (none when it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.expect("directory entry").path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    out.retain(|p| p.file_name().is_some_and(|n| n != "README.md" && n != ".gitkeep"));
    out.sort();
    out
}

/// Runs `name` over its corpus and regressions; a failure names the file.
fn replay(name: &str) {
    let run = target(name).expect("a known target");
    let corpus = files(&fuzz_dir().join("corpus").join(name));
    assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ has no seed");
    let regressions = files(&fuzz_dir().join("regressions").join(name));
    for file in corpus.iter().chain(&regressions) {
        let data = std::fs::read(file).expect("read");
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{name}: {} fails: {why}", file.display());
        }
    }
}

#[test]
fn every_corpus_directory_is_a_target_and_every_target_has_one() {
    for kind in ["corpus", "regressions"] {
        for entry in std::fs::read_dir(fuzz_dir().join(kind)).expect("fuzz directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                assert!(target(&name).is_some(), "fuzz/{kind}/{name} names no target");
            }
        }
    }
    for (name, _) in TARGETS {
        assert!(fuzz_dir().join("corpus").join(name).is_dir(), "no fuzz/corpus/{name}");
        let bin = fuzz_dir().join("src/bin").join(format!("{name}.rs"));
        assert!(bin.is_file(), "no fuzz binary {}", bin.display());
    }
}

macro_rules! replays {
    ($($name:ident),* $(,)?) => {
        $(#[test]
        fn $name() {
            replay(stringify!($name));
        })*

        #[test]
        fn every_target_is_replayed() {
            let replayed = [$(stringify!($name)),*];
            for (name, _) in TARGETS {
                assert!(replayed.contains(name), "{name} has no replay test");
            }
        }
    };
}

replays!(
    policy_put,
    initiate,
    duration,
    datetime,
    prefix,
    arm_id,
    role_definition,
    agent_messages,
    cloud_reports,
    jwt,
    netlink,
    netlink_answers,
);
