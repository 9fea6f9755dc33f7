//! Backups on the command line: `ctl snapshot save FILE`, `snapshot status FILE` and
//! `restore FILE --data-dir D`.
//!
//! Progress bars go to stderr and only when it is a terminal (never with `--json`).

use std::{
    io::IsTerminal,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use iroh_raft::{
    KeyValueStore, RaftCluster, TicketRole,
    backup::{self, BackupInfo},
};
use serde_json::json;

use super::{
    ctl::{Cli, Failure, print_one},
    node::{parse_positive_duration, write_file},
};

/// A progress bar of bytes on stderr, hidden when stderr is not a terminal or output is JSON.
pub(crate) fn bytes_bar(json: bool, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if json || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// `ctl snapshot save FILE`: streams a consistent backup from a member into `FILE.part`, checks
/// its hash on the way and the whole file once written, then renames it to `FILE`.
pub(crate) async fn save(cli: &Cli, file: &Path, json: bool) -> Result<(), Failure> {
    let failed = |message: String| Failure { code: 1, message };
    let part = part_path(file);
    let out = tokio::fs::File::create(&part)
        .await
        .map_err(|e| failed(format!("creating {}: {e}", part.display())))?;
    let bar = bytes_bar(json, "saving");
    let saved = cli
        .call()
        .backup(tokio::io::BufWriter::new(out), |done, all| {
            bar.set_length(all);
            bar.set_position(done);
        })
        .await;
    bar.finish_and_clear();
    let saved = match saved {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e.into());
        }
    };
    // What is on disk is what counts: read it back whole, then make it the file.
    let verified = tokio::task::spawn_blocking({
        let part = part.clone();
        move || -> Result<BackupInfo, String> {
            let f = std::fs::File::open(&part).map_err(|e| e.to_string())?;
            f.sync_all().map_err(|e| e.to_string())?;
            backup::verify_file(&part, |_, _| {}).map_err(|e| e.to_string())
        }
    })
    .await
    .map_err(|e| failed(e.to_string()))
    .and_then(|r| r.map_err(|e| failed(format!("the saved file does not verify: {e}"))));
    let info = match verified {
        Ok(info) if info.hash == saved.hash => info,
        Ok(_) => {
            let _ = std::fs::remove_file(&part);
            return Err(failed(
                "the saved file's hash differs from the one received".into(),
            ));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, file).map_err(|e| {
        failed(format!(
            "renaming {} to {}: {e}",
            part.display(),
            file.display()
        ))
    })?;
    // The rename itself is durable only once the directory is.
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    super::node::sync_dir(&parent).map_err(|e| failed(format!("{e:#}")))?;
    print_one(json, info_json(file, &info), || {
        format!(
            "saved {} (index {}, term {}, {} bytes, blake3 {})",
            file.display(),
            info.header.index,
            info.header.term,
            info.file_size,
            info.hash_hex()
        )
    });
    Ok(())
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    file.with_file_name(name)
}

/// A backup's description, for `--json`.
pub(crate) fn info_json(file: &Path, info: &BackupInfo) -> serde_json::Value {
    let members: Vec<_> = info
        .members
        .iter()
        .map(|m| {
            let addrs: Vec<String> = m.addr.ip_addrs().map(|a| a.to_string()).collect();
            json!({ "id": m.node_id, "endpoint": m.addr.id.to_string(), "addrs": addrs })
        })
        .collect();
    json!({
        "file": file.display().to_string(),
        "verified": true,
        "format_version": info.format_version,
        "index": info.header.index,
        "term": info.header.term,
        "cluster_id": info.cluster_id().to_string(),
        "voters": info.header.voters,
        "learners": info.header.learners,
        "members": members,
        "source_node": info.header.source_node,
        "created_unix_ms": info.header.created_unix_ms,
        "state_bytes": info.state_size,
        "file_bytes": info.file_size,
        "blake3": info.hash_hex(),
    })
}

/// Options of `iroh-raft snapshot`.
#[derive(clap::Args, Debug)]
pub(crate) struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(clap::Subcommand, Debug)]
enum SnapshotCommand {
    /// Read a backup file through and verify it (format version, size, blake3 hash); print
    /// its index, term, members and size. Exit 1 when it does not verify.
    Status {
        /// The backup file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `iroh-raft snapshot status FILE`.
pub(crate) async fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let SnapshotCommand::Status { file, json } = args.command;
    let bar = bytes_bar(json, "verifying");
    let verified = tokio::task::spawn_blocking({
        let (file, bar) = (file.clone(), bar.clone());
        move || {
            backup::verify_file(&file, |done, all| {
                bar.set_length(all);
                bar.set_position(done);
            })
        }
    })
    .await?;
    bar.finish_and_clear();
    let info = verified.with_context(|| format!("{} does not verify", file.display()))?;
    if json {
        println!("{}", info_json(&file, &info));
        return Ok(());
    }
    let members: Vec<String> = info
        .members
        .iter()
        .map(|m| {
            let role = if info.header.voters.contains(&m.node_id) {
                "voter"
            } else {
                "learner"
            };
            format!("{} ({role}, {})", m.node_id, m.addr.id.fmt_short())
        })
        .collect();
    println!("file        {}", file.display());
    println!(
        "verified    yes (format version {}, blake3 {})",
        info.format_version,
        info.hash_hex()
    );
    println!("index       {}", info.header.index);
    println!("term        {}", info.header.term);
    println!("cluster     {}", info.cluster_id());
    println!("members     {}", members.join(", "));
    let taken = chrono::DateTime::from_timestamp_millis(info.header.created_unix_ms as i64)
        .map_or_else(|| "an unknown time".into(), |t| t.to_rfc3339());
    println!("taken on    node {} at {taken}", info.header.source_node);
    println!(
        "size        {} bytes ({} bytes of state)",
        info.file_size, info.state_size
    );
    Ok(())
}

/// Options of `iroh-raft restore`.
#[derive(clap::Args, Debug)]
pub(crate) struct RestoreArgs {
    /// The backup file (`iroh-raft ctl snapshot save` writes one).
    file: PathBuf,
    /// The new node's data dir: must be empty or missing (with --member, it may hold the key
    /// `iroh-raft keygen` wrote, and nothing else).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address the new node will bind (ip:port; port 0 picks one, remembered for its starts).
    /// With --member, the address its own --member entry gives.
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// The new node's raft id (with --member, one of theirs).
    #[arg(long, default_value = "1")]
    node_id: u64,
    /// Every founding member of the new cluster, like etcd's --initial-cluster: repeat it per
    /// member, the same list on each (ID=ENDPOINT-ID@IP:PORT; the endpoint id is what
    /// `iroh-raft keygen --data-dir D` printed for that member's dir). Without it, the node is
    /// the only member and others join by ticket.
    #[arg(long = "member", value_name = "ID=ENDPOINT@IP:PORT")]
    members: Vec<String>,
    /// How long the tickets it prints stay valid (30s, 10m, 24h, 7d).
    #[arg(long, default_value = "7d", value_parser = parse_positive_duration)]
    ticket_ttl: Duration,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `iroh-raft restore FILE --data-dir D`: verifies the backup, then writes a data dir for a
/// new one-member cluster holding its state (a new cluster id, a new key), with a join and an
/// admin ticket, like `--bootstrap`. Start it with `iroh-raft node --data-dir D`; more members
/// join it by ticket.
pub(crate) async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    let members = parse_members(&args.members)?;
    // With founding members given, the dir may hold this member's key (from `keygen`).
    let allowed: &[&str] = if members.is_empty() {
        &[]
    } else {
        &[iroh_raft::net::SECRET_KEY_FILE]
    };
    let foreign = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .any(|e| !allowed.contains(&e.file_name().to_string_lossy().as_ref())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    if foreign {
        return Err(backup::BackupError::NotEmpty { path: dir.clone() }.into());
    }
    let bind = match (
        members.iter().find(|(id, _)| *id == args.node_id),
        args.bind,
    ) {
        (None, _) if !members.is_empty() => {
            anyhow::bail!(
                "--node-id {} is not one of the --member entries",
                args.node_id
            )
        }
        (Some((_, addr)), given) => {
            let own = addr.0.ip_addrs().next().copied().with_context(|| {
                format!(
                    "--member {}: give the address it will bind (ID=ENDPOINT@IP:PORT)",
                    args.node_id
                )
            })?;
            if given.is_some_and(|g| g != own) {
                anyhow::bail!("--bind differs from this node's --member address {own}");
            }
            own
        }
        (None, given) => given.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
    };
    let bar = bytes_bar(args.json, "restoring");
    let progress = bar.clone();
    let built = RaftCluster::builder()
        .data_dir(dir)
        .node_id(args.node_id)
        .bind_address(bind)
        .peers(members.clone())
        .state_machine_factory(KeyValueStore::new)
        .restore_from(&args.file)
        .restore_progress(move |done, all| {
            progress.set_length(all);
            progress.set_position(done);
        })
        .build()
        .await;
    bar.finish_and_clear();
    let cluster = built.with_context(|| format!("restoring {}", args.file.display()))?;
    let bound = super::node::bound_address(&cluster, bind);
    write_file(
        &dir.join(super::node::CONF_FILE),
        &format!("bind={bound}\nnode={}\n", cluster.node_id()),
    )?;
    let mut tickets = Vec::new();
    for (role, file) in [
        (TicketRole::Join, "ticket"),
        (TicketRole::Admin, "admin-ticket"),
    ] {
        let ticket = cluster.ticket(role, args.ticket_ttl).await?;
        write_file(&dir.join(file), &format!("{ticket}\n"))?;
        tickets.push((role, ticket));
    }
    cluster
        .shutdown()
        .await
        .context("closing the restored node")?;
    // Verified by the build; only its header is read again, for the report.
    let header = std::fs::File::open(&args.file)
        .map_err(anyhow::Error::from)
        .and_then(|f| Ok(backup::BackupReader::open(f)?.header().clone()))?;
    let cluster_id = tickets.first().map(|(_, t)| t.cluster_id.to_string());
    if args.json {
        let mut value = json!({
            "file": args.file.display().to_string(),
            "index": header.index,
            "term": header.term,
            "data_dir": dir.display().to_string(),
            "node_id": args.node_id,
            "bind": bound.to_string(),
            "cluster_id": cluster_id,
        });
        for (role, t) in &tickets {
            value[format!("{role}_ticket")] = json!(t.to_string());
        }
        println!("{value}");
    } else {
        println!(
            "restored index {} (term {}) into {} as node {} of a new cluster {}; start it \
             with: iroh-raft node --data-dir {}",
            header.index,
            header.term,
            dir.display(),
            args.node_id,
            cluster_id.unwrap_or_default(),
            dir.display()
        );
        for (role, t) in &tickets {
            println!("{role} ticket: {t}");
        }
    }
    Ok(())
}

/// `ID=ENDPOINT@IP:PORT` entries.
fn parse_members(given: &[String]) -> anyhow::Result<Vec<(u64, iroh_raft::PeerAddr)>> {
    given
        .iter()
        .map(|m| {
            let (id, addr) = m
                .split_once('=')
                .with_context(|| format!("--member {m}: expected ID=ENDPOINT@IP:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .with_context(|| format!("--member {m}: '{id}' is not a raft id"))?;
            let addr = addr
                .parse()
                .with_context(|| format!("--member {m}: not ENDPOINT@IP:PORT"))?;
            Ok((id, addr))
        })
        .collect()
}

/// Options of `iroh-raft keygen`.
#[derive(clap::Args, Debug)]
pub(crate) struct KeygenArgs {
    /// The data dir to hold the key (created if missing; an existing key is kept).
    #[arg(long)]
    data_dir: PathBuf,
}

/// `iroh-raft keygen --data-dir D`: the node's key, created once; prints its endpoint id.
pub(crate) fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let key = iroh_raft::net::load_or_create_secret_key(&args.data_dir)?;
    println!("{}", key.public());
    Ok(())
}
