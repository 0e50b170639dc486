//! The jitgate binary: parses the command line and runs the chosen command. Thin by design:
//! `serve` picks the store, prepares TLS and the first admin token, and calls
//! `jitgate_server::run`.

mod agent;
mod bench_authz;
#[cfg(feature = "aws")]
mod bench_connector;
mod bench_cpu;
mod bench_enforce;
mod bench_floor;
mod bench_fwknop;
mod bench_initiate;
mod bench_inventory;
mod bench_portal;
mod bench_replicas;
mod bench_restore;
mod bench_rules;
mod bench_soak;
mod bench_soak_report;
mod bench_soak_watch;
mod common;
mod connector;
mod doctor;
mod quickstart;
mod secrets;
mod serve;
mod storage;
mod yardstick;

use clap::{ArgMatches, CommandFactory, FromArgMatches};

use jitgate_api_types::audit::AuditVerifyOut;

use jitgate_cli::access::AccessCommand;
use jitgate_cli::agent::{AgentCommand, TokenCommand};
use jitgate_cli::audit::{AuditCommand, VerifyArgs};
use jitgate_cli::bench::BenchCommand;
use jitgate_cli::config::ParseError;
use jitgate_cli::policy::PolicyCommand;
use jitgate_cli::secrets::SecretsCommand;
use jitgate_cli::{Cli, CliError, Command};

/// A client command's result, as the binary reports it.
fn client_result<T>(r: Result<T, CliError>) -> anyhow::Result<T> {
    r.map_err(Into::into)
}

/// The `--vm` and `--port` values of `policy set`, in command-line order (a port belongs to the
/// VM before it).
fn policy_set_order(m: &ArgMatches) -> Vec<(bool, String)> {
    let Some(set) = m.subcommand_matches("policy").and_then(|p| p.subcommand_matches("set")) else { return vec![] };
    let mut all: Vec<(usize, bool, String)> = Vec::new();
    for (id, is_vm) in [("vms", true), ("ports", false)] {
        if let (Some(idx), Some(vals)) = (set.indices_of(id), set.get_many::<String>(id)) {
            all.extend(idx.zip(vals).map(|(i, v)| (i, is_vm, v.clone())));
        }
    }
    all.sort_by_key(|x| x.0);
    all.into_iter().map(|(_, vm, v)| (vm, v)).collect()
}

fn main() -> std::process::ExitCode {
    // Flags, then JITGATE_… variables, then `serve`'s and `agent`'s config file, then defaults.
    let (matches, settings) = match jitgate_cli::config::parse(Cli::command(), std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(ParseError::Config(e)) => {
            eprintln!("jitgate: error: {e}");
            return std::process::ExitCode::from(jitgate_cli::output::exit::USAGE as u8);
        }
    };
    if let Some(settings) = settings.as_ref().filter(|s| s.print) {
        print!("{}", jitgate_cli::config::render(&Cli::command(), &matches, settings));
        return std::process::ExitCode::SUCCESS;
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let format = cli.output;
    let order = policy_set_order(&matches);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jitgate: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Quickstart(args) => quickstart::run(args).await,
            Command::Bench(args) => match args.command {
                None => bench_initiate::run(args.initiate).await,
                Some(BenchCommand::Initiate(a)) => bench_initiate::run(a).await,
                Some(BenchCommand::OpenLatency(a)) => bench_enforce::open_latency(a).await,
                Some(BenchCommand::Kernel(a)) => bench_enforce::kernel(a).await,
                Some(BenchCommand::Restore(a)) => bench_restore::run(a).await,
                Some(BenchCommand::Inner(a)) => bench_enforce::inner(a).await,
                Some(BenchCommand::Authz(a)) => bench_authz::run(a).await,
                Some(BenchCommand::Audit(a)) => bench_authz::audit(a).await,
                Some(BenchCommand::Portal(a)) => bench_portal::run(a).await,
                Some(BenchCommand::Inventory(a)) => bench_inventory::run(a).await,
                Some(BenchCommand::Replicas(a)) => bench_replicas::run(a).await,
                Some(BenchCommand::Soak(a)) => bench_soak::run(a).await,
                Some(BenchCommand::Rules(a)) => bench_rules::run(a).await,
                Some(BenchCommand::Fwknop(a)) => bench_fwknop::run(a).await,
                #[cfg(feature = "aws")]
                Some(BenchCommand::Connector(a)) => bench_connector::run(a).await,
                #[cfg(not(feature = "aws"))]
                Some(BenchCommand::Connector(_)) => {
                    anyhow::bail!("this jitgate was built without the AWS connector (cargo feature `aws`)")
                }
            },
            Command::Agent(args) => match args.command {
                Some(AgentCommand::Token { command: TokenCommand::Create(a) }) => {
                    client_result(jitgate_cli::agent::token_create(a).await)
                }
                Some(AgentCommand::Token { command: TokenCommand::List(a) }) => {
                    client_result(jitgate_cli::agent::token_list(a, format).await)
                }
                Some(AgentCommand::List(a)) => client_result(jitgate_cli::agent::list(a, format).await),
                Some(AgentCommand::Rm(a)) => client_result(jitgate_cli::agent::remove(a, format).await),
                Some(AgentCommand::Uninstall(a)) => agent::uninstall(a),
                None => agent::run(args.run).await,
            },
            Command::Connector(args) => connector::run(args).await,
            Command::Probe(args) => match jitgate_cli::probe::run(args).await {
                Ok(0) => Ok(()),
                Ok(code) => std::process::exit(code),
                Err(e) => Err(e.into()),
            },
            Command::Role(args) => client_result(jitgate_cli::role::run(args, format).await),
            Command::Connect(args) => match jitgate_cli::connect::run(args).await {
                Ok(0) => Ok(()),
                Ok(code) => std::process::exit(code),
                Err(e) => Err(e.into()),
            },
            Command::Policy(args) => match args.command {
                PolicyCommand::Set(a) => client_result(jitgate_cli::policy::set(a, format, order).await),
                PolicyCommand::Get(a) => client_result(jitgate_cli::policy::get(a, format).await),
                PolicyCommand::List(a) => client_result(jitgate_cli::policy::list(a, format).await),
                PolicyCommand::Delete(a) => client_result(jitgate_cli::policy::delete(a, format).await),
            },
            Command::Vm(args) => client_result(jitgate_cli::admin::vm(args, format).await),
            Command::Token(args) => client_result(jitgate_cli::admin::token(args, format).await),
            Command::Principal(args) => client_result(jitgate_cli::admin::principal(args, format).await),
            Command::Whoami(args) => client_result(jitgate_cli::admin::whoami(args, format).await),
            Command::Login(args) => client_result(jitgate_cli::admin::login(args).await),
            Command::Completions(args) => client_result(jitgate_cli::admin::completions(args)),
            Command::Man(args) => client_result(jitgate_cli::admin::man(args)),
            Command::Audit(args) => match args.command {
                AuditCommand::List(a) => client_result(jitgate_cli::audit::query(a, false).await),
                AuditCommand::Export(a) => client_result(jitgate_cli::audit::query(a, true).await),
                AuditCommand::Verify(a) => match audit_verify(a).await {
                    Ok(true) => Ok(()),
                    Ok(false) => std::process::exit(1),
                    Err(e) => Err(e),
                },
            },
            Command::Doctor(args) => match doctor::run(args).await {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => Err(e),
            },
            Command::Migrate(args) => storage::migrate(args).await,
            Command::Export(args) => storage::export(args).await,
            Command::Import(args) => match storage::import(args).await {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => Err(e),
            },
            Command::Backup(args) => match storage::backup(args).await {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => Err(e),
            },
            Command::Secrets(args) => match args.command {
                SecretsCommand::Rotate(a) => secrets::rotate(a).await,
                SecretsCommand::Generate => secrets::generate(),
            },
            Command::Access(args) => match args.command {
                AccessCommand::Revoke(a) => client_result(jitgate_cli::access::revoke(a, format).await),
                AccessCommand::Request(a) => client_result(jitgate_cli::access::request(a, format).await),
                AccessCommand::Approve(a) => client_result(jitgate_cli::access::decide(a, true, format).await),
                AccessCommand::Deny(a) => client_result(jitgate_cli::access::decide(a, false, format).await),
                AccessCommand::Extend(a) => client_result(jitgate_cli::access::extend(a, format).await),
                AccessCommand::List(a) => client_result(jitgate_cli::access::list(a, format).await),
            },
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jitgate: error: {e:#}");
            let api = e.chain().find_map(|c| match c.downcast_ref::<jitgate_client::ClientError>() {
                Some(jitgate_client::ClientError::Api { status, code, .. }) => Some((*status, code.as_str())),
                _ => None,
            });
            let api = api.or_else(|| match e.downcast_ref::<CliError>() {
                Some(CliError::Client(jitgate_client::ClientError::Api { status, code, .. })) => {
                    Some((*status, code.as_str()))
                }
                _ => None,
            });
            let chain: Vec<String> = e.chain().map(|c| format!("{c:?} {c}")).collect();
            if let Some(h) = jitgate_cli::output::hint(api, &chain.join(" ")) {
                eprintln!("hint: {h}");
            }
            let code =
                e.downcast_ref::<CliError>().map_or(jitgate_cli::output::exit::ERROR, jitgate_cli::output::exit_code);
            std::process::ExitCode::from(code as u8)
        }
    }
}

/// `jitgate audit verify`: offline on a data directory, or through the API. Prints the result;
/// returns whether the chain is intact.
async fn audit_verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let v = match &args.data_dir {
        Some(dir) => {
            let db = dir.join("jitgate.db");
            if !db.exists() {
                anyhow::bail!("no database at {}", db.display());
            }
            let v = jitgate_store_sqlite::verify_audit_file(&db)?;
            AuditVerifyOut {
                valid: v.valid,
                records: v.records,
                first_invalid: v.first_invalid,
                archived_through: v.archived_through,
            }
        }
        None => args.conn.connect()?.native().audit_verify().await.map_err(CliError::from)?,
    };
    if v.valid {
        println!("audit chain intact: {} records verified", v.records);
        Ok(true)
    } else {
        let first = v.first_invalid.map_or_else(|| "null".to_owned(), |n| n.to_string());
        println!("audit chain BROKEN: the first bad record is {first} ({} records verified before it)", v.records);
        Ok(false)
    }
}
