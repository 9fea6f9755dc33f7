//! `iroh-raft cluster`: a deployment of local node processes from a TOML file (see
//! `iroh_raft::deployment`).

use std::path::PathBuf;

use anyhow::Context;
use iroh_raft::deployment::{
    ClusterManager, ClusterStatus, DeploymentConfig, DeploymentError, Progress,
};

/// Options of `iroh-raft cluster`.
#[derive(clap::Args, Debug)]
pub(crate) struct ClusterArgs {
    /// The deployment's TOML file.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        global = true,
        default_value = "cluster.toml"
    )]
    file: PathBuf,
    /// Print JSON instead of text (status, and the outcome of the others).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// Found the cluster with the first node and start every node of the file (each caught up
    /// and ready before the next); nodes already running are left alone, members that are
    /// down are restarted from their data dirs.
    Up,
    /// Every node: process, role, lag behind the leader, readiness. Exit 1 unless all are
    /// running, members and ready.
    Status,
    /// Restart every node on BINARY, one at a time, followers first and the leader last after
    /// a handover, each caught up and ready before the next; stops at the first failure and
    /// puts the old binary back on that node.
    RollingUpdate {
        /// The new `iroh-raft` binary.
        #[arg(long)]
        binary: PathBuf,
    },
    /// Start node ID (a [[nodes]] entry of the file that is not a member yet) and have it
    /// join as a voter.
    Add {
        /// Its id in the file.
        id: u64,
    },
    /// Remove node ID from the membership and stop it (its data dir is kept).
    Remove {
        /// Its id.
        id: u64,
    },
    /// Stop every node (followers first, the leader last); data dirs are kept, `up` starts
    /// them again.
    Down,
}

pub(crate) async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let config =
        DeploymentConfig::load(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let json = args.json;
    let mut manager = ClusterManager::new(config)
        .await?
        .on_progress(move |p: Progress| {
            if !json {
                match p.node {
                    Some(n) => eprintln!("node {n}: {}", p.message),
                    None => eprintln!("{}", p.message),
                }
            }
        });
    let result = command(&mut manager, args.command, json).await;
    manager.close().await;
    result
}

async fn command(
    manager: &mut ClusterManager,
    command: ClusterCommand,
    json: bool,
) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Up => {
            manager.bootstrap().await?;
            let status = manager.status().await?;
            print_status(&status, json);
            if let Some(t) = manager.admin_ticket() {
                eprintln!("admin ticket (iroh-raft ctl --cluster …): {t}");
            }
        }
        ClusterCommand::Status => {
            let status = manager.status().await?;
            print_status(&status, json);
            if !status.healthy() {
                anyhow::bail!("not every node is running, a member and ready");
            }
        }
        ClusterCommand::RollingUpdate { binary } => {
            let report = manager.rolling_update(&binary).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                let steps: Vec<String> = report
                    .durations
                    .iter()
                    .map(|(id, d)| format!("node {id} ({d:.1?})"))
                    .collect();
                println!("updated to {}: {}", binary.display(), steps.join(", "));
            }
        }
        ClusterCommand::Add { id } => {
            let node = manager
                .config()
                .nodes
                .iter()
                .find(|n| n.id == id)
                .cloned()
                .ok_or(DeploymentError::UnknownNode(id))
                .context("add the node to the file's [[nodes]] first")?;
            manager.add_node(node).await?;
            println!("node {id} is a voter, caught up and ready");
        }
        ClusterCommand::Remove { id } => {
            manager.remove_node(id).await?;
            println!(
                "node {id} removed and stopped; delete its [[nodes]] entry from the file (a \
                 removed id is never given again; its data dir was kept)"
            );
        }
        ClusterCommand::Down => {
            manager.stop().await?;
            println!("every node stopped");
        }
    }
    Ok(())
}

fn print_status(status: &ClusterStatus, json: bool) {
    if json {
        println!("{}", serde_json::to_string(status).unwrap_or_default());
        return;
    }
    println!(
        "cluster {}: leader {}, term {}, commit {}",
        status.name,
        status.leader.map_or("none".into(), |l| l.to_string()),
        status.term,
        status.commit_index
    );
    println!(
        "{:>4}  {:<7}  {:<8}  {:>6}  {:<5}  {:<21}  problems",
        "id", "process", "role", "lag", "ready", "address"
    );
    for n in &status.nodes {
        let role = match (&n.member, n.leader) {
            (_, true) => "leader".to_owned(),
            (Some(r), false) => r.clone(),
            (None, false) => "-".to_owned(),
        };
        println!(
            "{:>4}  {:<7}  {:<8}  {:>6}  {:<5}  {:<21}  {}",
            n.id,
            if n.running { "running" } else { "down" },
            role,
            n.lag.map_or("-".into(), |l| l.to_string()),
            match n.ready {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            n.bind.as_deref().unwrap_or("-"),
            n.problems.join("; ")
        );
    }
}
