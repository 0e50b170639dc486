//! The settings file of `jitgate serve` and `jitgate agent`: every flag of those commands may
//! also be given in a TOML file (`--config FILE`, or `JITGATE_CONFIG_FILE`), as a top-level key
//! named like the flag with `-` written `_` (`data_dir = "/var/lib/jitgate"`, `tls_san = ["a",
//! "b"]`, `server_timing = true`). A flag wins over its `JITGATE_…` variable, which wins over the
//! file, which wins over the default.
//!
//! A value from the file is handed to clap as if it had been typed (`--data-dir=/var/lib/jitgate`),
//! after the command line and the environment were looked at: it passes the same value parser,
//! the same `requires` and conflicts, and becomes the same typed field. Before that the file is
//! checked key by key, so that a mistake names the file and the key: an unknown key (with the
//! closest known one), a value of the wrong TOML type, a value the flag's parser refuses.

mod print;
mod reference;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

pub use print::render;
pub use reference::{reference, README_END, README_START};

/// The commands that read a config file (`agent` only when it runs an agent, not for its
/// subcommands such as `agent token create`).
pub const COMMANDS: [&str; 2] = ["serve", "agent"];
/// The id of the `--config` flag.
pub const CONFIG: &str = "config";
/// The id of the `--print-config` flag.
pub const PRINT_CONFIG: &str = "print_config";
/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "JITGATE_CONFIG_FILE";

/// A config file that cannot be used; each names the file, and the key when one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the config file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("the config file {}: unknown key `{key}` (`jitgate {command}` has no flag --{}){}", path.display(), key.replace('_', "-"), suggest(suggestion))]
    UnknownKey { path: PathBuf, key: String, command: String, suggestion: Option<String> },
    #[error("the config file {}: key `{key}` must be {expected}, not {found}", path.display())]
    WrongType { path: PathBuf, key: String, expected: &'static str, found: &'static str },
    #[error("the config file {}: key `{key}`: {message}", path.display())]
    Invalid { path: PathBuf, key: String, message: String },
    #[error("the config file {}: key `{key}` cannot be set in a config file (give --{} on the command line)", path.display(), key.replace('_', "-"))]
    NotInFile { path: PathBuf, key: String },
}

fn suggest(s: &Option<String>) -> String {
    s.as_ref().map(|k| format!("; did you mean `{k}`?")).unwrap_or_default()
}

/// Why the command line could not be parsed.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own error (usage, `--help`, `--version` …): `exit()` prints it.
    Clap(clap::Error),
    Config(ConfigError),
}

impl From<clap::Error> for ParseError {
    fn from(e: clap::Error) -> Self {
        ParseError::Clap(e)
    }
}

impl From<ConfigError> for ParseError {
    fn from(e: ConfigError) -> Self {
        ParseError::Config(e)
    }
}

/// Where the settings of a `serve` or `agent` command line came from.
#[derive(Debug, Clone)]
pub struct Effective {
    /// `serve` or `agent`.
    pub command: String,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    /// The ids of the settings whose value is the file's.
    pub from_file: BTreeSet<String>,
    /// `--print-config` was given.
    pub print: bool,
}

/// Parses `argv` with `cmd`, filling what neither the command line nor the environment gives
/// from the config file. Returns the matches, and for `serve` and `agent` where each setting
/// came from.
pub fn parse(cmd: Command, argv: Vec<OsString>) -> Result<(ArgMatches, Option<Effective>), ParseError> {
    // First look, with no argument required (one may come from the file).
    let first = match relaxed(cmd.clone()).try_get_matches_from(argv.clone()) {
        Ok(m) => m,
        Err(_) => return Ok((cmd.try_get_matches_from(argv)?, None)),
    };
    let Some((name, sub)) = first.subcommand() else { return Ok((cmd.try_get_matches_from(argv)?, None)) };
    let Some(command) = COMMANDS.iter().find(|c| **c == name) else {
        return Ok((cmd.try_get_matches_from(argv)?, None));
    };
    if sub.subcommand_name().is_some() || sub.try_get_one::<bool>(PRINT_CONFIG).is_err() {
        return Ok((cmd.try_get_matches_from(argv)?, None));
    }
    let print = sub.get_flag(PRINT_CONFIG);
    let file = sub.get_one::<PathBuf>(CONFIG).cloned();
    let mut from_file = BTreeSet::new();
    let mut argv = argv;
    if let (Some(path), Some(sub_cmd)) = (&file, cmd.find_subcommand(command)) {
        let table = load(path)?;
        for (key, value) in &table {
            let arg = file_arg(sub_cmd, path, command, key)?;
            let values = values_of(arg, path, key, value)?;
            for v in &values {
                check(arg, v).map_err(|message| ConfigError::Invalid {
                    path: path.clone(),
                    key: key.clone(),
                    message,
                })?;
            }
            if matches!(sub.value_source(key), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
                continue;
            }
            from_file.insert(key.clone());
            argv.extend(as_flags(arg, &values));
        }
    }
    // `--print-config` shows the settings even when a required one is missing.
    let parser = if print { relaxed(cmd) } else { cmd };
    let matches = parser.try_get_matches_from(argv)?;
    Ok((matches, Some(Effective { command: (*command).to_owned(), file, from_file, print })))
}

/// `cmd` with no argument of `serve` or `agent` required.
fn relaxed(mut cmd: Command) -> Command {
    for name in COMMANDS {
        if cmd.find_subcommand(name).is_some() {
            cmd = cmd.mut_subcommand(name, |s| s.mut_args(|a| a.required(false)));
        }
    }
    cmd
}

/// The settings a config file may hold for `cmd`: its own long flags but `--config` and
/// `--print-config`.
pub fn settings(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| {
        let id = a.get_id().as_str();
        a.get_long().is_some() && !a.is_global_set() && !matches!(id, CONFIG | PRINT_CONFIG | "help" | "version")
    })
}

/// The file's top-level table.
fn load(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax { path: path.to_owned(), message: e.to_string() })
}

/// The flag a key of the file sets, or why there is none.
fn file_arg<'c>(cmd: &'c Command, path: &Path, command: &str, key: &str) -> Result<&'c Arg, ConfigError> {
    if let Some(arg) = settings(cmd).find(|a| a.get_id().as_str() == key) {
        return Ok(arg);
    }
    if matches!(key, CONFIG | PRINT_CONFIG) {
        return Err(ConfigError::NotInFile { path: path.to_owned(), key: key.to_owned() });
    }
    let suggestion = closest(key, settings(cmd).map(|a| a.get_id().as_str()));
    Err(ConfigError::UnknownKey { path: path.to_owned(), key: key.to_owned(), command: command.to_owned(), suggestion })
}

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A switch: `true` or `false`.
    Bool,
    /// A repeatable flag: an array (or one value).
    List,
    /// One value.
    Scalar,
}

pub(crate) fn kind(arg: &Arg) -> Kind {
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => Kind::Bool,
        ArgAction::Append => Kind::List,
        _ => Kind::Scalar,
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// The text of a single value: strings as they are, numbers as written.
fn scalar_text(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// The values of a key, as text for the flag's parser.
fn values_of(arg: &Arg, path: &Path, key: &str, value: &toml::Value) -> Result<Vec<String>, ConfigError> {
    let wrong =
        |expected, found| ConfigError::WrongType { path: path.to_owned(), key: key.to_owned(), expected, found };
    match kind(arg) {
        Kind::Bool => match value {
            toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
            other => Err(wrong("true or false", type_name(other))),
        },
        Kind::List => match value {
            toml::Value::Array(items) => {
                items.iter().map(|i| scalar_text(i).ok_or_else(|| wrong("an array of strings", type_name(i)))).collect()
            }
            other => scalar_text(other).map(|s| vec![s]).ok_or_else(|| wrong("an array of strings", type_name(other))),
        },
        Kind::Scalar => {
            scalar_text(value).map(|s| vec![s]).ok_or_else(|| wrong("a string or a number", type_name(value)))
        }
    }
}

/// The command-line form of a file's values: `--long=value` (a value may start with `-`), a
/// switch only when true.
fn as_flags(arg: &Arg, values: &[String]) -> Vec<OsString> {
    let long = arg.get_long().unwrap_or_default();
    match kind(arg) {
        Kind::Bool if values.iter().any(|v| v == "true") => vec![format!("--{long}").into()],
        Kind::Bool => vec![],
        _ => values.iter().map(|v| format!("--{long}={v}").into()).collect(),
    }
}

/// Runs `value` through the flag's own value parser; the parser's message when it refuses.
fn check(arg: &Arg, value: &str) -> Result<(), String> {
    if kind(arg) == Kind::Bool {
        return Ok(());
    }
    let mut probe =
        Arg::new("value").long("value").action(ArgAction::Append).value_parser(arg.get_value_parser().clone());
    if let Some(d) = arg.get_value_delimiter() {
        probe = probe.value_delimiter(d);
    }
    let probe_cmd = Command::new("jitgate").no_binary_name(true).arg(probe);
    match probe_cmd.try_get_matches_from([format!("--value={value}")]) {
        Ok(_) => Ok(()),
        Err(e) => Err(parser_message(&e, value)),
    }
}

/// What a value parser said, without clap's framing.
fn parser_message(e: &clap::Error, value: &str) -> String {
    let bad = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => value.to_owned(),
    };
    match e.kind() {
        ErrorKind::ValueValidation => match std::error::Error::source(e) {
            Some(why) => format!("invalid value '{bad}': {why}"),
            None => format!("invalid value '{bad}'"),
        },
        ErrorKind::InvalidValue => match e.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) => {
                format!("invalid value '{bad}' (possible values: {})", valid.join(", "))
            }
            _ => format!("invalid value '{bad}'"),
        },
        _ => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_owned()
        }
    }
}

/// The known key closest to `key`, when one is close enough to be a likely typo.
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> Option<String> {
    let key = key.to_ascii_lowercase().replace('-', "_");
    let limit = (key.chars().count() / 3).max(2);
    known
        .map(|k| (distance(&key, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.to_owned())
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
