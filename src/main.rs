//! The `iroh-raft` binary.

use std::io::IsTerminal;

use clap::{CommandFactory, Parser, Subcommand};
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
    /// Exit codes: 0 done; 1 failed, or outcome unknown (a write was sent and got no answer:
    /// it may be applied), or no answer in time; 2 bad usage; 3 refused; 4 unreachable (no
    /// member admitted the CLI within --timeout: nothing was sent).
    Ctl(Box<cli::ctl::CtlArgs>),
    /// The built-in KV store of a cluster, etcdctl's verbs: put, get (a key or --prefix;
    /// linearizable), range, delete, cas, txn, watch. Exit codes: 0 done; 1 failed, not found,
    /// or outcome unknown (a write was sent and got no answer: it may be applied); 2 bad usage
    /// (a value too large: nothing sent); 3 refused; 4 unreachable (nothing was sent); 5 a
    /// compare-and-swap found another value (nothing changed).
    Kv(Box<cli::kv::KvArgs>),
    /// Inspect backup files: `snapshot status FILE` verifies one and prints what it holds.
    /// Exit codes: 0 verified; 1 it does not verify (the reason is printed); 2 bad usage.
    Snapshot(cli::backup::SnapshotArgs),
    /// Write a data dir for a new cluster from a backup (offline, like `etcdutl snapshot
    /// restore`): the backup is verified before anything is written, the data dir must be
    /// empty. One member by default (others join by ticket), or every founding member with
    /// --member (run it per member). Start each with `iroh-raft node --data-dir D`.
    Restore(Box<cli::backup::RestoreArgs>),
    /// Run a deployment of local node processes from a TOML file (`-f cluster.toml`): up,
    /// status, rolling-update --binary PATH, add ID, remove ID, down. Exit codes: 0 done; 1
    /// failed (the reason is printed; a rolling update says which node and what it left); 2
    /// bad usage.
    Cluster(Box<cli::cluster::ClusterArgs>),
    /// Create a node's key in its data dir (kept if there is one) and print its endpoint id:
    /// what `restore --member` needs of every founding member beforehand.
    Keygen(cli::backup::KeygenArgs),
    /// Print the completion script of a shell (bash, zsh, fish, elvish, powershell), e.g.
    /// `iroh-raft completions bash > ~/.local/share/bash-completion/completions/iroh-raft`.
    Completions(cli::docs::CompletionsArgs),
    /// Print the man page of iroh-raft (roff), or with --out DIR write one page per command
    /// and subcommand there (iroh-raft.1, iroh-raft-ctl.1, ...).
    Man(cli::docs::ManArgs),
}

/// Prints a parse error and exits: help and version go to stdout with status 0, anything else
/// to stderr with status 2 and the usage line of the (sub)command it is about (clap leaves it
/// out of some errors, such as a value that does not parse).
fn usage_error(e: clap::Error) -> ! {
    use clap::{CommandFactory, error::ErrorKind};
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || matches!(
            e.kind(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        )
    {
        e.exit()
    }
    let text = e.render().to_string();
    eprint!("{text}");
    if !text.contains("Usage:") {
        // The deepest subcommand the arguments name.
        let mut cmd = Cli::command();
        cmd.build();
        let mut path = vec![cmd.get_name().to_owned()];
        for arg in std::env::args().skip(1) {
            if let Some(sub) = cmd.find_subcommand(&arg).cloned() {
                path.push(arg);
                cmd = sub;
            }
        }
        let mut cmd = cmd.bin_name(path.join(" "));
        eprintln!("\n{}", cmd.render_usage());
    }
    exit_now(2)
}

/// Ends the process at once with `code`: what QUIC may still wait for (acknowledgements from
/// members that are down, dials that lost the race; closes were given their grace period) is of
/// no use to a process that is done, and a runtime shutdown would drop endpoints mid-close.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// Log lines to stderr (`RUST_LOG`, default `warn`); with `node --otlp-endpoint`, traces too.
fn init_tracing(cli: &Cli) {
    #[cfg(feature = "otel")]
    if let Command::Node(args) = &cli.command
        && let Some(otlp) = args.otlp()
    {
        if let Err(e) = iroh_raft::telemetry::init_otlp(&otlp) {
            eprintln!("error: {e}");
            exit_now(2);
        }
        return;
    }
    let _ = cli;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[tokio::main]
async fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e));
    init_tracing(&cli);
    let result = match cli.command {
        Command::Demo(args) => cli::demo::run(args).await,
        Command::Node(args) => cli::node::run(*args).await,
        Command::Ctl(args) => exit_now(client_code(cli::ctl::run_ctl(*args).await)),
        Command::Kv(args) => exit_now(client_code(cli::kv::run_kv(*args).await)),
        Command::Snapshot(args) => cli::backup::snapshot(args).await,
        Command::Restore(args) => cli::backup::restore(*args).await,
        Command::Keygen(args) => cli::backup::keygen(args),
        Command::Cluster(args) => cli::cluster::run(*args).await,
        Command::Completions(args) => {
            cli::docs::completions(Cli::command(), args, &mut std::io::stdout())
        }
        Command::Man(args) => cli::docs::man(Cli::command(), args, &mut std::io::stdout()),
    };
    match result {
        Ok(()) => exit_now(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_now(1)
        }
    }
}

fn client_code(result: Result<(), cli::ctl::Failure>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(f) => f.report(),
    }
}
