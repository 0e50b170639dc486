//! A check each backend runs on its schema migrations: every file of its `migrations/`
//! directory is listed, in order, named `NNNN_what.sql` with `NNNN` its version, the versions
//! numbered from 1 with none missing between.

use std::path::Path;

/// Panics naming the first migration (`(version, file name)`, in the order the backend applies
/// them) that breaks the rule, or a file of `dir` that is not listed.
pub fn assert_listed<'a>(dir: &Path, listed: impl IntoIterator<Item = (i64, &'a str)>) {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("migrations directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let listed: Vec<(i64, &str)> = listed.into_iter().collect();
    let names: Vec<&str> = listed.iter().map(|(_, name)| *name).collect();
    assert_eq!(files, names, "every migration file is listed, in order");
    for (i, (version, name)) in listed.iter().enumerate() {
        assert_eq!(*version, i as i64 + 1, "{name} is numbered in sequence");
        assert_eq!(name.get(..4).and_then(|n| n.parse::<i64>().ok()), Some(*version), "{name} carries its number");
        assert!(name.ends_with(".sql"), "{name} is an SQL file");
    }
}
