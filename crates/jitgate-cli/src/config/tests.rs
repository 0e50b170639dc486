#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches};

use super::*;
use crate::{Cli, Command as Cmd, ServeArgs, TlsMode};

/// A config file in a temporary directory (removed with the guard).
struct File {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn file(text: &str) -> File {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jitgate.toml");
    std::fs::write(&path, text).unwrap();
    File { _dir: dir, path }
}

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once("jitgate").chain(args.iter().copied()).map(OsString::from).collect()
}

fn parsed(args: &[&str]) -> Result<(Cli, Option<Effective>), ParseError> {
    let (m, eff) = parse(Cli::command(), argv(args))?;
    Ok((Cli::from_arg_matches(&m).map_err(ParseError::Clap)?, eff))
}

fn serve(args: &[&str]) -> (Box<ServeArgs>, Effective) {
    match parsed(args) {
        Ok((Cli { command: Cmd::Serve(s), .. }, Some(eff))) => (s, eff),
        Ok(other) => panic!("not serve: {:?}", other.0.command),
        Err(e) => panic!("{args:?}: {}", error_text(e)),
    }
}

fn error_text(e: ParseError) -> String {
    match e {
        ParseError::Clap(e) => e.render().to_string(),
        ParseError::Config(e) => e.to_string(),
    }
}

fn config_error(args: &[&str]) -> String {
    match parsed(args) {
        Ok((cli, _)) => panic!("{args:?} was accepted: {:?}", cli.command),
        Err(e) => error_text(e),
    }
}

const FILE: &str = r#"
listen = "127.0.0.1:9443"
list_page_size = 7
server_timing = true
tls_san = ["a.example", "10.0.0.1"]
tls = "off"
"#;

#[test]
fn the_file_fills_what_the_command_line_does_not_give() {
    let f = file(FILE);
    let (s, eff) = serve(&["serve", "--config", f.path.to_str().unwrap()]);
    assert_eq!(s.listen.to_string(), "127.0.0.1:9443");
    assert_eq!(s.list_page_size, 7);
    assert!(s.server_timing);
    assert_eq!(s.tls_san, ["a.example", "10.0.0.1"]);
    assert_eq!(s.tls, TlsMode::Off);
    // Defaults stay where the file says nothing.
    assert_eq!(s.data_dir, PathBuf::from("./jitgate-data"));
    assert_eq!(eff.file.as_deref(), Some(f.path.as_path()));
    let from_file: Vec<&str> = eff.from_file.iter().map(String::as_str).collect();
    assert_eq!(from_file, ["list_page_size", "listen", "server_timing", "tls", "tls_san"]);
}

#[test]
fn a_flag_wins_over_the_file_for_a_string_a_number_a_bool_and_a_list() {
    let f = file(FILE);
    let (s, eff) = serve(&[
        "serve",
        "--config",
        f.path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:1",
        "--list-page-size",
        "9",
        "--tls-san",
        "flag.example",
        "--server-timing",
        "--tls",
        "on",
    ]);
    assert_eq!(s.listen.to_string(), "127.0.0.1:1");
    assert_eq!(s.list_page_size, 9);
    assert_eq!(s.tls_san, ["flag.example"], "a list from a flag replaces the file's");
    assert!(s.server_timing);
    assert_eq!(s.tls, TlsMode::On);
    assert!(eff.from_file.is_empty(), "{:?}", eff.from_file);
}

#[test]
fn without_a_file_nothing_changes() {
    let (s, eff) = serve(&["serve", "--listen", "127.0.0.1:2"]);
    assert_eq!(s.listen.to_string(), "127.0.0.1:2");
    assert!(eff.file.is_none() && eff.from_file.is_empty());
    // Other commands are not touched.
    let (cli, eff) = parsed(&["vm", "list", "--url", "https://a"]).unwrap();
    assert!(eff.is_none());
    assert!(matches!(cli.command, Cmd::Vm(_)));
}

#[test]
fn an_unknown_key_is_named_with_the_file_and_the_closest_known_key() {
    let f = file("data_dri = \"/var/lib/jitgate\"\n");
    let e = config_error(&["serve", "--config", f.path.to_str().unwrap()]);
    assert!(e.contains("unknown key `data_dri`"), "{e}");
    assert!(e.contains(f.path.to_str().unwrap()), "{e}");
    assert!(e.contains("did you mean `data_dir`?"), "{e}");
    // A flag's own spelling is refused too, pointing at the key.
    let f = file("max-body-bytes = 2048\n");
    let e = config_error(&["serve", "--config", f.path.to_str().unwrap()]);
    assert!(e.contains("unknown key `max-body-bytes`") && e.contains("did you mean `max_body_bytes`?"), "{e}");
    // Nothing close: no suggestion. A section is a key like any other.
    let f = file("[serve]\nlisten = \"127.0.0.1:1\"\n");
    let e = config_error(&["serve", "--config", f.path.to_str().unwrap()]);
    assert!(e.contains("unknown key `serve`") && !e.contains("did you mean"), "{e}");
    // An agent's key is unknown to serve.
    let f = file("state_dir = \"/var/lib/jitgate-agent\"\n");
    let e = config_error(&["serve", "--config", f.path.to_str().unwrap()]);
    assert!(e.contains("unknown key `state_dir`"), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_key() {
    for (text, key, expected, found) in [
        ("listen = { host = \"a\" }", "listen", "a string or a number", "a table"),
        ("tls_san = [{ a = 1 }]", "tls_san", "an array of strings", "a table"),
        ("server_timing = \"yes\"", "server_timing", "true or false", "a string"),
        ("data_dir = true", "data_dir", "a string or a number", "a boolean"),
        ("list_page_size = [1, 2]", "list_page_size", "a string or a number", "an array"),
    ] {
        let f = file(text);
        let e = config_error(&["serve", "--config", f.path.to_str().unwrap()]);
        assert!(e.contains(&format!("key `{key}` must be {expected}, not {found}")), "{text}: {e}");
        assert!(e.contains(f.path.to_str().unwrap()), "{e}");
    }
}

#[test]
fn a_value_the_flags_parser_refuses_gives_its_message_with_the_key() {
    for (text, key, says) in [
        ("listen = \"nowhere\"", "listen", "invalid value 'nowhere'"),
        ("list_page_size = 0", "list_page_size", "0 is not in 1..=1000"),
        ("tls = \"maybe\"", "tls", "possible values: on, off"),
        ("header_timeout = \"soon\"", "header_timeout", "'soon' is not a time"),
        ("rate_limit_join = \"5/day\"", "rate_limit_join", "is not a rate"),
    ] {
        let f = file(text);
        let e = config_error(&["serve", "--config", f.path.to_str().unwrap()]);
        assert!(e.contains(&format!("key `{key}`: ")) && e.contains(says), "{text}: {e}");
    }
}

#[test]
fn broken_files_and_settings_that_belong_on_the_command_line() {
    let f = file("listen = \n");
    let e = config_error(&["serve", "--config", f.path.to_str().unwrap()]);
    assert!(e.contains("is not valid TOML") && e.contains(f.path.to_str().unwrap()), "{e}");
    let e = config_error(&["serve", "--config", "/nonexistent/jitgate.toml"]);
    assert!(e.contains("cannot read the config file /nonexistent/jitgate.toml"), "{e}");
    let f = file("config = \"/etc/other.toml\"\n");
    let e = config_error(&["serve", "--config", f.path.to_str().unwrap()]);
    assert!(e.contains("key `config` cannot be set in a config file"), "{e}");
}

#[test]
fn a_file_value_meets_the_same_rules_as_the_flag() {
    // --tls-cert requires --tls-key: from the file as from the command line.
    let f = file("tls_cert = \"/etc/jitgate/cert.pem\"\n");
    let e = config_error(&["serve", "--config", f.path.to_str().unwrap()]);
    assert!(e.contains("--tls-key"), "{e}");
    let f = file("tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n");
    let (s, _) = serve(&["serve", "--config", f.path.to_str().unwrap()]);
    assert_eq!(s.tls_key.as_deref(), Some(std::path::Path::new("/k.pem")));
    // A value that starts with '-' is a value, and a comma list in a string splits as on the
    // command line.
    let f = file("oidc_issuer = \"-x\"\noidc_audience = \"a\"\ntrusted_proxy = \"10.0.0.0/8,10.1.0.0/16\"\n");
    let (s, _) = serve(&["serve", "--config", f.path.to_str().unwrap()]);
    assert_eq!(s.oidc_issuer.as_deref(), Some("-x"));
    assert_eq!(s.trusted_proxy, ["10.0.0.0/8", "10.1.0.0/16"]);
}

#[test]
fn the_agent_reads_its_file_and_a_required_setting_may_come_from_it() {
    let f = file(
        "state_dir = \"/var/lib/jitgate-agent\"\nserver = [\"https://a:8443\", \"https://b:8443\"]\nmode = \"gateway\"\npoll_seconds = 5\nlog_format = \"json\"\n",
    );
    let (cli, eff) = parsed(&["agent", "--config", f.path.to_str().unwrap()]).unwrap();
    let Cmd::Agent(a) = cli.command else { panic!("agent") };
    assert_eq!(a.run.state_dir.as_deref(), Some(std::path::Path::new("/var/lib/jitgate-agent")));
    assert_eq!(a.run.server, ["https://a:8443", "https://b:8443"]);
    assert_eq!(a.run.mode, crate::agent::AgentMode::Gateway);
    assert_eq!((a.run.poll_seconds, a.run.log_format), (5, crate::LogFormat::Json));
    assert_eq!(eff.unwrap().command, "agent");
    // Still required when nothing gives it.
    let f = file("mode = \"host\"\n");
    let e = config_error(&["agent", "--config", f.path.to_str().unwrap()]);
    assert!(e.contains("--state-dir"), "{e}");
    // A serve key is unknown to the agent.
    let f = file("state_dir = \"/x\"\nlisten = \"127.0.0.1:1\"\n");
    let e = config_error(&["agent", "--config", f.path.to_str().unwrap()]);
    assert!(e.contains("unknown key `listen`") && e.contains("jitgate agent"), "{e}");
    // The agent's subcommands take no config file.
    assert!(parsed(&["agent", "list", "--config", f.path.to_str().unwrap()]).is_err());
}

/// The `key = value` lines of a `--print-config` output, without their comments.
fn values(printed: &str) -> Vec<String> {
    printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split("  #").next().unwrap_or_default().to_owned())
        .collect()
}

fn printed(args: &[&str]) -> String {
    let (m, eff) = parse(Cli::command(), argv(args)).unwrap_or_else(|e| panic!("{}", error_text(e)));
    let eff = eff.expect("serve or agent");
    assert!(eff.print);
    render(&Cli::command(), &m, &eff)
}

#[test]
fn print_config_shows_sources_masks_secrets_and_reads_back() {
    let f =
        file("list_page_size = 7\ndatabase_url = \"postgres://jit:s3cret-pw@db.example:5432/jit?sslmode=require\"\n");
    let out = printed(&["serve", "--config", f.path.to_str().unwrap(), "--print-config", "--listen", "127.0.0.1:1"]);
    assert!(!out.contains("s3cret-pw"), "{out}");
    assert!(
        out.contains("database_url = \"postgres://jit:********@db.example:5432/jit?sslmode=require\"  # file, masked"),
        "{out}"
    );
    assert!(out.contains("list_page_size = 7  # file\n"), "{out}");
    assert!(out.contains("listen = \"127.0.0.1:1\"  # flag\n"), "{out}");
    assert!(out.contains("data_dir = \"./jitgate-data\"  # default\n"), "{out}");
    assert!(out.contains("server_timing = false  # default\n"), "{out}");
    assert!(out.contains("tls_san = []  # default\n") || out.contains("# tls_san is not set"), "{out}");
    assert!(out.contains("# tls_cert is not set\n"), "{out}");
    assert!(!out.contains("print_config") && !out.contains("\nconfig ="), "{out}");
    // The output is valid input, and gives the same settings.
    let again = file(&out);
    let out2 = printed(&["serve", "--config", again.path.to_str().unwrap(), "--print-config"]);
    assert_eq!(values(&out), values(&out2));
    assert!(out2.contains("listen = \"127.0.0.1:1\"  # file\n"), "{out2}");
}

#[test]
fn print_config_of_the_agent_masks_its_join_token() {
    let out = printed(&["agent", "--print-config", "--join-token", "jgj_secret", "--server", "https://a,https://b"]);
    assert!(!out.contains("jgj_secret"), "{out}");
    assert!(out.contains("join_token = \"********\"  # flag, masked"), "{out}");
    assert!(out.contains("server = [\"https://a\", \"https://b\"]  # flag"), "{out}");
    assert!(out.contains("# state_dir is not set"), "{out}");
    assert!(out.contains("poll_seconds = 30  # default"), "{out}");
}

#[test]
fn secrets_are_masked_but_their_shape_kept() {
    assert_eq!(print::mask("postgres://u:p@h:5432/db"), "postgres://u:********@h:5432/db");
    assert_eq!(print::mask("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(print::mask("postgres://h/db?user=u&password=p"), "postgres://h/db?user=u&password=********");
    assert_eq!(print::mask("jgj_abc"), "********");
    assert_eq!(print::mask(""), "");
}

#[test]
fn every_setting_has_its_environment_variable() {
    let cli = Cli::command();
    let mut missing = Vec::new();
    for name in COMMANDS {
        let sub = cli.find_subcommand(name).unwrap();
        for arg in settings(sub) {
            let want = format!("JITGATE_{}", arg.get_id().as_str().to_ascii_uppercase());
            if arg.get_env().and_then(|e| e.to_str()) != Some(want.as_str()) {
                missing.push(format!("jitgate {name} --{}: want {want}", arg.get_long().unwrap_or_default()));
            }
        }
        let config = sub.get_arguments().find(|a| a.get_id() == CONFIG).unwrap();
        assert_eq!(config.get_env().and_then(|e| e.to_str()), Some(CONFIG_ENV));
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn closest_keys() {
    let known = ["data_dir", "database_url", "listen", "tls_san"];
    assert_eq!(closest("data_dri", known.into_iter()).as_deref(), Some("data_dir"));
    assert_eq!(closest("Listen", known.into_iter()).as_deref(), Some("listen"));
    assert_eq!(closest("tls-san", known.into_iter()).as_deref(), Some("tls_san"));
    assert_eq!(closest("frobnicate", known.into_iter()), None);
}

/// README.md's config reference is the one the code renders; `JITGATE_UPDATE_README=1` writes it.
#[test]
fn readme_config_reference_is_generated_from_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let start = readme.find(README_START).expect("README.md has the config reference's start marker");
    let end = readme.find(README_END).expect("README.md has the config reference's end marker");
    let body_start = start + README_START.len() + 1;
    let current = &readme[body_start..end];
    let want = format!("\n{}", reference(&Cli::command()));
    if current != want {
        if std::env::var_os("JITGATE_UPDATE_README").is_some() {
            let updated = format!("{}{want}{}", &readme[..body_start], &readme[end..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        panic!(
            "README.md's config reference differs from the code; regenerate it with\n  \
             JITGATE_UPDATE_README=1 cargo test -p jitgate-cli --lib readme"
        );
    }
}
