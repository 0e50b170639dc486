//! `--print-config`: the effective settings as TOML that `--config` reads back, each with where
//! its value came from, secrets masked.

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

use super::{kind, settings, Effective, Kind};

/// What replaces a secret.
pub const MASK: &str = "********";

/// The effective settings of `eff.command` in `matches` (parsed with `cmd`), as TOML.
pub fn render(cmd: &Command, matches: &ArgMatches, eff: &Effective) -> String {
    let mut out = format!(
        "# jitgate {}: the effective settings (a flag wins over its environment variable, which wins\n\
         # over the config file, which wins over the default). Secrets are masked.\n",
        eff.command
    );
    match &eff.file {
        Some(f) => out.push_str(&format!("# config file: {}\n", f.display())),
        None => out.push_str("# config file: none (--config FILE or JITGATE_CONFIG_FILE)\n"),
    }
    let (Some(sub), Some(m)) = (cmd.find_subcommand(&eff.command), matches.subcommand_matches(&eff.command)) else {
        return out;
    };
    for arg in settings(sub) {
        out.push_str(&line(arg, m, eff));
        out.push('\n');
    }
    out
}

/// One setting: `key = value  # source`, or a comment when it has no value.
fn line(arg: &Arg, m: &ArgMatches, eff: &Effective) -> String {
    let id = arg.get_id().as_str();
    let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
    let source = if eff.from_file.contains(id) {
        "file".to_owned()
    } else {
        match m.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => format!("env {}", env.as_deref().unwrap_or("")),
            Some(ValueSource::DefaultValue) => "default".to_owned(),
            _ => return format!("# {id} is not set"),
        }
    };
    let raw: Vec<String> =
        m.get_raw(id).map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect()).unwrap_or_default();
    let secret = arg.is_hide_env_values_set();
    let raw: Vec<String> = if secret { raw.iter().map(|v| mask(v)).collect() } else { raw };
    let value = match kind(arg) {
        Kind::Bool => raw.last().map(|v| (v == "true").to_string()).unwrap_or_else(|| "false".into()),
        Kind::List => format!("[{}]", raw.iter().map(|v| string(v)).collect::<Vec<_>>().join(", ")),
        Kind::Scalar => {
            let v = raw.last().cloned().unwrap_or_default();
            if is_numeric(arg) && v.parse::<i64>().is_ok_and(|n| n.to_string() == v) {
                v
            } else {
                string(&v)
            }
        }
    };
    let masked = if secret { ", masked" } else { "" };
    format!("{id} = {value}  # {source}{masked}")
}

/// A TOML string.
fn string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Whether a flag takes a number (its default is one).
pub(crate) fn is_numeric(arg: &Arg) -> bool {
    let defaults = arg.get_default_values();
    !defaults.is_empty() && defaults.iter().all(|d| d.to_str().is_some_and(|s| s.parse::<i64>().is_ok()))
}

/// A secret with its secret part replaced: the password of a URL (`postgres://u:****@h/db`),
/// or the whole value.
pub fn mask(value: &str) -> String {
    if value.is_empty() {
        return String::new();
    }
    if let Some((scheme, rest)) = value.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        // The query may carry a password too (`?password=`): its value is masked as well.
        let tail = mask_query(tail);
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:{MASK}@{host}{tail}");
            }
        }
        return format!("{scheme}://{authority}{tail}");
    }
    MASK.to_owned()
}

/// `?password=…` (and any other parameter naming a secret) masked.
fn mask_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else { return tail.to_owned() };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _))
                if ["password", "secret", "token", "key"].iter().any(|s| k.to_ascii_lowercase().contains(s)) =>
            {
                format!("{k}={MASK}")
            }
            _ => p.to_owned(),
        })
        .collect();
    format!("{path}?{}", params.join("&"))
}
