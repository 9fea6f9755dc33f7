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
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
