//! The README's reference of every setting, rendered from the command tree so it cannot drift
//! (a test compares README.md with it; `JITGATE_UPDATE_README=1 cargo test -p jitgate-cli --lib
//! readme` writes it).

use clap::{Arg, Command};

use super::{kind, print::is_numeric, settings, Kind, COMMANDS};

/// The line before the generated reference in README.md.
pub const README_START: &str = "<!-- config reference: generated from the code by `JITGATE_UPDATE_README=1 cargo test -p jitgate-cli --lib readme`; do not edit -->";
/// The line after it.
pub const README_END: &str = "<!-- end of the config reference -->";

/// One table per command (`serve`, `agent`): key, flag, environment variable, default, meaning.
pub fn reference(cmd: &Command) -> String {
    let mut out = String::new();
    for name in COMMANDS {
        let Some(sub) = cmd.find_subcommand(name) else { continue };
        out.push_str(&format!("#### `jitgate {name}`\n\n"));
        out.push_str("| key | flag | environment | default | meaning |\n|---|---|---|---|---|\n");
        for arg in settings(sub) {
            out.push_str(&row(arg));
        }
        out.push('\n');
    }
    out
}

fn row(arg: &Arg) -> String {
    let id = arg.get_id().as_str();
    let flag = arg.get_long().map(|l| format!("`--{l}`")).unwrap_or_default();
    let env = arg.get_env().map(|e| format!("`{}`", e.to_string_lossy())).unwrap_or_default();
    let mut defaults: Vec<String> = arg.get_default_values().iter().map(|d| d.to_string_lossy().into_owned()).collect();
    if let (Kind::List, Some(d)) = (kind(arg), arg.get_value_delimiter()) {
        defaults = defaults.iter().flat_map(|v| v.split(d).map(str::to_owned).collect::<Vec<_>>()).collect();
    }
    let default = match kind(arg) {
        Kind::Bool => "`false`".to_owned(),
        _ if defaults.is_empty() => String::new(),
        Kind::List => format!("`[{}]`", defaults.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", ")),
        Kind::Scalar if is_numeric(arg) => format!("`{}`", defaults.join(",")),
        Kind::Scalar => format!("`\"{}\"`", defaults.join(",")),
    };
    let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
    let mut meaning = help.trim().to_owned();
    if !meaning.ends_with(['.', '!', '?']) {
        meaning.push('.');
    }
    let possible: Vec<String> = arg.get_possible_values().iter().map(|p| p.get_name().to_owned()).collect();
    if !possible.is_empty() && kind(arg) != Kind::Bool {
        meaning.push_str(&format!(" One of: {}.", possible.join(", ")));
    }
    if kind(arg) == Kind::List {
        meaning.push_str(" In the file: an array.");
    }
    if arg.is_hide_env_values_set() {
        meaning.push_str(" A secret: `--print-config` masks it.");
    }
    format!("| `{id}` | {flag} | {env} | {default} | {} |\n", cell(&meaning))
}

/// Text for a Markdown table cell: one line, `|` escaped.
fn cell(text: &str) -> String {
    let one_line: Vec<&str> = text.split_whitespace().collect();
    one_line.join(" ").replace('|', "\\|")
}
