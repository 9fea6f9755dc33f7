//! The `iroh-raft` binary.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod cli;

/// iroh-raft: replicated state machines over iroh QUIC.
#[derive(Parser, Debug)]
#[command(name = "iroh-raft", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a local cluster in this process: elect, write, lose the leader, re-elect, verify.
    Demo(cli::demo::DemoArgs),
    /// Run one node of a cluster in this process (built-in KV store): found a cluster with
    /// --bootstrap, join one with --join TICKET, or restart from --data-dir alone.
    Node(Box<cli::node::NodeArgs>),
    /// Operate a cluster over the management protocol (needs an admin or read-only ticket).
    /// Exit codes: 0 done, 1 failed, 2 bad usage, 3 refused, 4 unreachable.
    Ctl(Box<cli::ctl::CtlArgs>),
    /// Put, get (linearizable) and delete keys of the built-in KV store of a cluster.
    /// Exit codes: 0 done, 1 failed or not found, 2 bad usage, 3 refused, 4 unreachable.
    Kv(Box<cli::ctl::KvArgs>),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => cli::demo::run(args).await,
        Command::Node(args) => cli::node::run(*args).await,
        Command::Ctl(args) => {
            return match cli::ctl::run_ctl(*args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(f) => f.exit(),
            };
        }
        Command::Kv(args) => {
            return match cli::ctl::run_kv(*args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(f) => f.exit(),
            };
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
