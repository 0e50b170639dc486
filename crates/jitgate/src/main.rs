//! The jitgate binary: parses the command line and runs the chosen command. Thin by design:
//! `serve` picks the store, prepares TLS and the first admin token, and calls
//! `jitgate_server::run`.

mod agent;
mod bench_authz;
mod bench_enforce;
mod common;
mod serve;

use clap::Parser;

use jitgate_cli::access::AccessCommand;
use jitgate_cli::agent::{AgentCommand, TokenCommand};
use jitgate_cli::bench::BenchCommand;
use jitgate_cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jitgate: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Bench(args) => match args.command {
                None => jitgate_cli::bench::run(args.initiate).await,
                Some(BenchCommand::Initiate(a)) => jitgate_cli::bench::run(a).await,
                Some(BenchCommand::OpenLatency(a)) => bench_enforce::open_latency(a).await,
                Some(BenchCommand::Kernel(a)) => bench_enforce::kernel(a).await,
                Some(BenchCommand::Inner(a)) => bench_enforce::inner(a).await,
                Some(BenchCommand::Authz(a)) => bench_authz::run(a).await,
            },
            Command::Agent(args) => match args.command {
                Some(AgentCommand::Token { command: TokenCommand::Create(a) }) => {
                    jitgate_cli::agent::token_create(a).await
                }
                None => agent::run(args.run).await,
            },
            Command::Probe(args) => match jitgate_cli::probe::run(args).await {
                Ok(0) => Ok(()),
                Ok(code) => std::process::exit(code),
                Err(e) => Err(e),
            },
            Command::Role(args) => jitgate_cli::role::run(args).await,
            Command::Access(args) => match args.command {
                AccessCommand::Revoke(a) => jitgate_cli::access::revoke(a).await,
                AccessCommand::Request(a) => jitgate_cli::access::request(a).await,
            },
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jitgate: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
