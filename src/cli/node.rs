//! `iroh-raft node`: one node per process with the built-in KV store.
//!
//! - `--bootstrap` founds a one-node cluster and prints a join ticket and an admin ticket (also
//!   written to `DIR/ticket` and `DIR/admin-ticket`);
//! - `--join TICKET` joins a running cluster (learner, then promoted once caught up);
//! - with neither, an existing node restarts from its data dir, on the address it used before
//!   (kept in `DIR/node.conf`).
//!
//! SIGTERM and Ctrl-C shut the node down gracefully. A node that learns it was removed from the
//! cluster exits with status 0 (restarting it would be refused anyway); a node that stops for
//! good otherwise (storage failure, corrupt data, its supervisor gave up) exits non-zero with
//! the reason on stderr.
//!
//! A failed `--join` leaves the data dir as it found it, unless a member had already admitted
//! the node: then the dir holds that node, and running the same command again finishes the
//! join (see `iroh_raft::JOIN_PENDING_FILE`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use iroh_raft::{BuildError, FatalError, KeyValueStore, Preset, RaftCluster, Ticket, TicketRole};

/// Options of `iroh-raft node`.
#[derive(clap::Args, Debug)]
pub(crate) struct NodeArgs {
    /// The node's data dir (redb log, secret key, tickets, node.conf).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to bind (ip:port; port 0 picks one). Remembered for restarts.
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// Found a new one-node cluster.
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// With --bootstrap: the founding node's Raft id (default 1). A joining node is given its
    /// id by the cluster (or keeps the one a member registered for its key beforehand).
    #[arg(long, requires = "bootstrap", value_parser = clap::value_parser!(u64).range(1..))]
    node_id: Option<u64>,
    /// Disaster recovery, when a quorum is lost for good: turn this node into a one-member
    /// cluster at its last applied state (a new cluster id; its key and id kept), then run as
    /// that cluster's node; others join it by ticket. Entries it held but had not applied
    /// (committed elsewhere or not) are dropped: it prints how many. The old log is kept
    /// beside it as raft.redb.before-force-new-cluster-SECONDS.
    #[arg(long, conflicts_with_all = ["join", "bootstrap"])]
    force_new_cluster: bool,
    /// Join the cluster this ticket names.
    #[arg(long, value_name = "TICKET")]
    join: Option<Ticket>,
    /// With --join: stay a learner (receives the log, does not vote).
    #[arg(long, requires = "join")]
    learner: bool,
    /// Timing preset: production, development or testing.
    #[arg(long, default_value = "production", value_parser = parse_preset)]
    preset: Preset,
    /// Announce this node on the local network (mDNS) as a member of the cluster with this
    /// name, for `iroh_raft::lan::find_members`.
    #[arg(long, value_name = "NAME")]
    lan_name: Option<String>,
    /// How long the tickets printed at --bootstrap stay valid (e.g. 30s, 10m, 24h, 7d).
    #[arg(long, default_value = "7d", value_parser = parse_positive_duration)]
    ticket_ttl: Duration,
    /// Scheduled backups (taken by the leader): a cron expression in UTC, five fields ("0 2 *
    /// * *": 02:00 daily) or six with seconds first.
    #[arg(long, value_name = "CRON", requires = "backup_target")]
    backup_schedule: Option<String>,
    /// Where scheduled backups go: a directory, or s3://bucket/prefix (credentials and region
    /// from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
    #[arg(
        long,
        value_name = "DIR|s3://BUCKET/PREFIX",
        requires = "backup_schedule"
    )]
    backup_target: Option<iroh_raft::backups::BackupTarget>,
    /// How many scheduled backups to keep (older ones are deleted once a new one verified).
    #[arg(long, value_name = "N", default_value = "7")]
    backup_retention: usize,
    /// With an s3:// target: the endpoint of an S3-compatible store (http:// allowed).
    #[arg(long, value_name = "URL")]
    backup_s3_endpoint: Option<String>,
    /// A relay server of the cluster's, for members behind NATs (repeat for several), e.g.
    /// https://relay.example.com: members reach each other through it until hole punching finds
    /// a direct path. Give every member the same relays. Tickets name them, and a node that
    /// joins with such a ticket and no --relay uses the ticket's. Remembered for restarts.
    #[arg(long, value_name = "URL")]
    relay: Vec<iroh::RelayUrl>,
    /// PEM file of CA certificates to trust for the relays' TLS, besides the usual web roots (a
    /// relay with a private CA's or a self-signed certificate). Remembered for restarts.
    #[arg(long, value_name = "FILE")]
    relay_ca: Option<PathBuf>,
    /// Congestion controller of the node's QUIC connections: cubic (default) or bbr (keeps
    /// throughput up on long links with random packet loss).
    #[arg(long, value_name = "cubic|bbr", default_value = "cubic")]
    congestion: iroh_raft::net::CongestionControl,
    /// Serve /metrics (Prometheus), /livez, /readyz and /health over HTTP on this address
    /// (ip:port; port 0 picks one, printed on the `ready` line as metrics=…).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Export traces (one per proposal, across nodes) over OTLP/HTTP to this collector URL
    /// (e.g. http://127.0.0.1:4318).
    #[cfg(feature = "otel")]
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// With --otlp-endpoint: the share of new traces recorded (0.0 to 1.0).
    #[cfg(feature = "otel")]
    #[arg(
        long,
        value_name = "RATIO",
        default_value = "1.0",
        requires = "otlp_endpoint"
    )]
    otlp_sampling: f64,
}

impl NodeArgs {
    /// The trace exporter these options ask for.
    #[cfg(feature = "otel")]
    pub(crate) fn otlp(&self) -> Option<iroh_raft::telemetry::OtlpOptions> {
        let endpoint = self.otlp_endpoint.clone()?;
        Some(iroh_raft::telemetry::OtlpOptions::new(endpoint).sampling_ratio(self.otlp_sampling))
    }
}

pub(crate) use iroh_raft::deployment::{parse_duration as parse_positive_duration, parse_preset};

pub(crate) use iroh_raft::CONF_FILE;

/// The relays (`relay=URL` lines) and relay CA file (`relay_ca=PATH`) a previous run recorded
/// in `node.conf`.
fn stored_relays(dir: &Path) -> anyhow::Result<(Vec<iroh::RelayUrl>, Option<PathBuf>)> {
    let path = dir.join(CONF_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let relays = text
        .lines()
        .filter_map(|l| l.strip_prefix("relay="))
        .map(|url| {
            url.trim()
                .parse()
                .with_context(|| format!("{}: relay={url} is not a relay URL", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let ca = text
        .lines()
        .find_map(|l| l.strip_prefix("relay_ca="))
        .map(|p| PathBuf::from(p.trim()));
    Ok((relays, ca))
}

/// The bind address a previous run recorded: in `node.conf`, or, for a node whose join did not
/// finish, in the pending mark (the address the cluster was given for it).
fn stored_bind(dir: &Path) -> anyhow::Result<Option<SocketAddr>> {
    for file in [CONF_FILE, iroh_raft::JOIN_PENDING_FILE] {
        let path = dir.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if let Some(addr) = text.lines().find_map(|l| l.strip_prefix("bind=")) {
            let addr = addr
                .trim()
                .parse()
                .with_context(|| format!("{}: invalid bind address '{addr}'", path.display()))?;
            return Ok(Some(addr));
        }
    }
    Ok(None)
}

/// The node a data dir's log holds, if any (a log without one is what an interrupted first
/// start leaves: the dir still counts as new).
fn stored_node(dir: &Path) -> anyhow::Result<Option<u64>> {
    let path = dir.join(iroh_raft::DB_FILE);
    let db = iroh_raft::actors::LogDb::open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let identity = db
        .identity()
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(identity.map(|i| i.node_id))
}

/// Refuses flags that do not fit what the data dir holds, with what to do instead.
fn check_data_dir(args: &NodeArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    let pending = dir.join(iroh_raft::JOIN_PENDING_FILE).exists();
    let has_log = dir.join(iroh_raft::DB_FILE).exists();
    if pending {
        if args.bootstrap || args.join.is_none() {
            bail!(
                "{} holds a node the cluster admitted whose join did not finish: run again with \
                 --join TICKET (a join ticket of that cluster) to finish it",
                dir.display()
            );
        }
        return Ok(());
    }
    if has_log
        && (args.bootstrap || args.join.is_some())
        && let Some(id) = stored_node(dir)?
    {
        bail!(
            "{} already holds node {id}; restart it with only --data-dir",
            dir.display()
        );
    }
    if !has_log && !args.bootstrap && args.join.is_none() {
        bail!(
            "{} holds no node: pass --bootstrap to found a cluster or --join TICKET to join one",
            dir.display()
        );
    }
    Ok(())
}

/// A failed start, with what the operator can do next.
fn start_failure(dir: &Path, e: BuildError) -> anyhow::Error {
    let dir = dir.display();
    match e {
        BuildError::JoinRefused { .. } => anyhow::anyhow!(
            "{e}\n{dir} was left as it was: get a valid join ticket from a member \
             (iroh-raft ctl --cluster ADMIN-TICKET ticket --role join) and run again"
        ),
        BuildError::JoinUnreachable { .. } => anyhow::anyhow!(
            "{e}\n{dir} was left as it was: run again once a member named in the ticket is \
             reachable (or with a ticket from a member that is)"
        ),
        BuildError::JoinOutcomeUnknown { .. } => anyhow::anyhow!(
            "{e}\n{dir} keeps only this node's key: run the same command again (same \
             --data-dir, a join ticket); a member that admitted the node recognises the key"
        ),
        BuildError::JoinIncomplete { node, .. } => anyhow::anyhow!(
            "{e}\n{dir} holds node {node}, a member of the cluster now: run the same command \
             again (same --data-dir, a join ticket) to finish joining; it comes back on the \
             address the cluster knows"
        ),
        e => anyhow::Error::new(e).context("starting the node"),
    }
}

/// A node that comes back on another address than the membership's (a recreated pod, a moved
/// VM, `--bind` changed) tells the cluster (`update_address` for itself, which it can send: it
/// dials out), retrying until the change applies. A wildcard address is not announced.
async fn announce_address(cluster: RaftCluster<KeyValueStore>, bound: SocketAddr) {
    if bound.ip().is_unspecified() {
        return;
    }
    let id = cluster.node_id();
    let mut wait = Duration::from_millis(200);
    loop {
        if let Ok(members) = cluster.members().await {
            // Not a member (yet): a joining node's address comes with its join.
            let Some(me) = members.members.iter().find(|m| m.node_id == id) else {
                return;
            };
            if me.addr.ip_addrs().any(|a| *a == bound) {
                return;
            }
            let addr = iroh::EndpointAddr::new(cluster.endpoint_id()).with_ip_addr(bound);
            match cluster.update_address(id, addr).await {
                Ok(index) => {
                    eprintln!("node {id} is now at {bound} (index {index})");
                    return;
                }
                // Refused, or the node stopped: asking again would not help.
                Err(
                    e @ (iroh_raft::ProposeError::Membership(_)
                    | iroh_raft::ProposeError::Fatal(_)
                    | iroh_raft::ProposeError::ShuttingDown),
                ) => {
                    tracing::warn!(error = %e, "could not announce this node's new address");
                    return;
                }
                // No leader yet, a timeout, an unknown outcome: the same change again is
                // harmless (an address the member already has changes nothing).
                Err(_) => {}
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// The address the node's endpoint bound for `bind` (its port when `bind` asked for any).
pub(crate) fn bound_address(cluster: &RaftCluster<KeyValueStore>, bind: SocketAddr) -> SocketAddr {
    cluster
        .endpoint()
        .map(|e| e.bound_sockets())
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.is_ipv4() == bind.is_ipv4())
        .unwrap_or(bind)
}

/// `node.conf`'s text: the bound address, the node id, and the relays.
fn node_conf(
    bound: SocketAddr,
    node: u64,
    relays: &[iroh::RelayUrl],
    relay_ca: Option<&Path>,
) -> String {
    let mut text = format!("bind={bound}\nnode={node}\n");
    for url in relays {
        text.push_str(&format!("relay={url}\n"));
    }
    if let Some(ca) = relay_ca {
        text.push_str(&format!("relay_ca={}\n", ca.display()));
    }
    text
}

pub(crate) fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

pub(crate) async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    let recovery = dir.join(RECOVERY_FILE);
    let recovered = dir.join(RECOVERED_FILE);
    // A recovery that stopped once its backup was written resumes from that backup (the same
    // file and members give the same new cluster: resuming is idempotent).
    let resuming = args.force_new_cluster && recovery.exists();
    if args.force_new_cluster && !resuming && recovered.exists() {
        bail!(
            "{} was already turned into a new cluster with --force-new-cluster (see {}): run \
             it without the flag. To force a new cluster from this node once more, remove \
             that file first.",
            dir.display(),
            recovered.display()
        );
    }
    if !resuming {
        check_data_dir(&args)?;
    }
    let bind = match args.bind {
        Some(b) => b,
        None => stored_bind(dir)?.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
    };
    let mut restore = None;
    if args.force_new_cluster {
        restore = Some(force_new_cluster(&args, bind, resuming).await?);
    }
    let mut builder = RaftCluster::builder()
        .data_dir(dir)
        .bind_address(bind)
        // A factory, so that a crashed RaftActor restarts from durable state with a fresh store.
        .state_machine_factory(KeyValueStore::new)
        .remote_reads(iroh_raft::kv::remote_query)
        .remote_watches(iroh_raft::kv::remote_watch)
        .preset(args.preset);
    if args.bootstrap {
        builder = builder.node_id(args.node_id.unwrap_or(1));
    }
    if let Some(node) = restore {
        builder = builder.node_id(node).restore_from(&recovery);
    }
    if let Some(name) = &args.lan_name {
        builder = builder.lan_discovery(name.clone());
    }
    if let Some(addr) = args.metrics_addr {
        builder = builder.metrics_addr(addr);
    }
    builder = builder.congestion_control(args.congestion);
    let (stored_urls, stored_ca) = stored_relays(dir)?;
    let mut relays = if args.relay.is_empty() {
        stored_urls
    } else {
        args.relay.clone()
    };
    let relay_ca = args
        .relay_ca
        .clone()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .or(stored_ca);
    for url in &relays {
        builder = builder.relay_url(url.clone());
    }
    if let Some(path) = &relay_ca {
        builder = builder.relay_ca_file(path);
    }
    if let (true, Some(ticket)) = (relays.is_empty(), &args.join) {
        relays = ticket.relays.clone();
    }
    if let (Some(schedule), Some(mut target)) =
        (args.backup_schedule.clone(), args.backup_target.clone())
    {
        if let (iroh_raft::backups::BackupTarget::S3 { options, .. }, Some(endpoint)) =
            (&mut target, &args.backup_s3_endpoint)
        {
            options.allow_http = endpoint.starts_with("http://");
            options.endpoint = Some(endpoint.clone());
        }
        builder = builder.backups(iroh_raft::backups::BackupConfig {
            schedule,
            retention: args.backup_retention,
            target,
        });
    }
    if let Some(ticket) = args.join.clone() {
        builder = builder.join_ticket(ticket);
        if args.learner {
            builder = builder.join_as_learner();
        }
    }
    let cluster = builder.build().await.map_err(|e| start_failure(dir, e))?;
    let bound = bound_address(&cluster, bind);
    write_file(
        &dir.join(CONF_FILE),
        &node_conf(bound, cluster.node_id(), &relays, relay_ca.as_deref()),
    )?;
    tokio::spawn(announce_address(cluster.clone(), bound));
    if restore.is_some() {
        // The mark first: a crash between the two resumes from the backup, idempotently.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        write_file(&recovered, &format!("recovered_at_unix={stamp}\n"))?;
        sync_dir(dir)?;
        std::fs::remove_file(&recovery)
            .with_context(|| format!("removing {}", recovery.display()))?;
        sync_dir(dir)?;
    }

    if args.bootstrap || restore.is_some() {
        for (role, file) in [
            (TicketRole::Join, "ticket"),
            (TicketRole::Admin, "admin-ticket"),
        ] {
            let ticket = cluster.ticket(role, args.ticket_ttl).await?;
            write_file(&dir.join(file), &format!("{ticket}\n"))?;
            println!("{role} ticket: {ticket}");
        }
    }
    let metrics = cluster
        .metrics_addr()
        .map(|a| format!(" metrics={a}"))
        .unwrap_or_default();
    println!(
        "ready node={} endpoint={} addr={bound}{metrics}",
        cluster.node_id(),
        cluster.endpoint_id(),
    );

    // Until a signal, or until the node stops for good on its own: removed from the cluster,
    // a storage failure or corrupt data, or its supervisor gave up restarting a crashed actor.
    let outcome = tokio::select! {
        _ = shutdown_signal() => None,
        stopped = cluster.stopped() => Some(stopped),
    };
    if outcome.is_none() {
        hand_over_leadership(&cluster).await;
    }
    let result = cluster.shutdown().await;
    let id = cluster.node_id();
    match outcome {
        None => {
            result.context("shutting down")?;
            eprintln!("node {id} shut down");
            Ok(())
        }
        Some(Some(FatalError::Removed { .. })) => {
            eprintln!("node {id} was removed from the cluster; exiting");
            Ok(())
        }
        Some(Some(e)) => bail!("node {id} stopped: {e}"),
        Some(None) => bail!("node {id} stopped"),
    }
}

/// The backup a `--force-new-cluster` restores from, in the data dir until the new cluster runs.
const RECOVERY_FILE: &str = "force-new-cluster.irbk";

/// Marks a data dir a `--force-new-cluster` completed in: the flag is refused there afterwards
/// (a unit that kept it would otherwise found a new cluster at every restart).
const RECOVERED_FILE: &str = "force-new-cluster.done";

/// Makes the renames and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Moves the data dir's log aside (kept for forensics); returns where it went.
fn move_log_aside(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let log = dir.join(iroh_raft::DB_FILE);
    if !log.exists() {
        return Ok(None);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let kept = dir.join(format!(
        "{}.before-force-new-cluster-{stamp}",
        iroh_raft::DB_FILE
    ));
    std::fs::rename(&log, &kept)
        .with_context(|| format!("moving the old log to {}", kept.display()))?;
    sync_dir(dir)?;
    Ok(Some(kept))
}

/// The first half of `--force-new-cluster`: starts the node from its data dir (it cannot
/// commit anything: no quorum), waits until it applied what it knows to be committed, writes
/// that state to the recovery backup, stops it and moves its log aside. Returns the node's id;
/// the caller restores it as a one-member cluster.
async fn force_new_cluster(
    args: &NodeArgs,
    bind: SocketAddr,
    resuming: bool,
) -> anyhow::Result<u64> {
    let dir = &args.data_dir;
    let recovery = dir.join(RECOVERY_FILE);
    if resuming {
        let header = std::fs::File::open(&recovery)
            .map_err(anyhow::Error::from)
            .and_then(|f| Ok(iroh_raft::backup::BackupReader::open(f)?.header().clone()))?;
        let kept = move_log_aside(dir)?;
        eprintln!(
            "force-new-cluster: resuming from {} (index {}){}",
            recovery.display(),
            header.index,
            kept.map(|k| format!("; the log that was there is kept as {}", k.display()))
                .unwrap_or_default()
        );
        return Ok(header.source_node);
    }
    let old = RaftCluster::builder()
        .data_dir(dir)
        .bind_address(bind)
        .state_machine_factory(KeyValueStore::new)
        .preset(args.preset)
        .build()
        .await
        .map_err(|e| start_failure(dir, e))?;
    let node = old.node_id();
    // Everything this node knows to be committed gets applied (replayed from its log).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = old.status().await?;
        if s.applied_index >= s.commit_index {
            break s;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "node {node} applied only up to {} of its commit index {} within 60 s",
                s.applied_index,
                s.commit_index
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let part = dir.join(format!("{RECOVERY_FILE}.part"));
    let out = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("creating {}", part.display()))?;
    let saved = old
        .backup_applied(tokio::io::BufWriter::new(out))
        .await
        .context("writing the node's applied state")?;
    old.shutdown().await.context("stopping the node")?;
    std::fs::File::open(&part)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", part.display()))?;
    std::fs::rename(&part, &recovery).with_context(|| format!("writing {}", recovery.display()))?;
    sync_dir(dir)?;
    let kept = move_log_aside(dir)?.context("the node's log vanished while it was recovered")?;
    for stale in ["ticket", "admin-ticket"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let dropped = status.last_index.saturating_sub(saved.index);
    let dropped = match dropped {
        0 => "none: its log held nothing beyond that index".to_owned(),
        n => format!(
            "{n} entries of its log after that index (indexes {}..={}), not known to it as \
             committed",
            saved.index + 1,
            status.last_index
        ),
    };
    eprintln!(
        "force-new-cluster: node {node} keeps its state at index {} (term {}): every entry it \
         had applied. Dropped: {dropped}. Lost, if there were any: writes the old cluster \
         committed after index {} that this node never received; and the old cluster's \
         tickets are not honoured. Old log kept as {}.",
        saved.index,
        saved.term,
        saved.index,
        kept.display()
    );
    Ok(node)
}

/// On a signal, a leader hands leadership to the most up-to-date voter before it stops (as etcd
/// does), so that a stop costs the cluster a transfer (milliseconds) instead of an election
/// timeout. Bounded: a transfer that does not finish in 5 s is given up and the node stops anyway.
async fn hand_over_leadership(cluster: &RaftCluster<KeyValueStore>) {
    let me = cluster.node_id();
    match cluster.status().await {
        Ok(s) if s.leader == Some(me) && s.voters.iter().any(|v| *v != me) => {}
        _ => return,
    }
    let transfer = cluster.calls().transfer_leadership(None);
    match tokio::time::timeout(Duration::from_secs(5), transfer).await {
        Ok(Ok(done)) => eprintln!("node {me} handed leadership to node {}", done.leader),
        Ok(Err(e)) => eprintln!("node {me} stops as leader: the handover failed: {e}"),
        Err(_) => eprintln!("node {me} stops as leader: the handover took more than 5 s"),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_conf_remembers_the_relays() {
        let dir = tempfile::tempdir().unwrap();
        let relays: Vec<iroh::RelayUrl> = vec![
            "https://relay1.example.com".parse().unwrap(),
            "https://relay2.example.com:8443".parse().unwrap(),
        ];
        let ca = Path::new("/etc/iroh-raft/relay-ca.pem");
        let text = node_conf(([10, 0, 0, 1], 7001).into(), 3, &relays, Some(ca));
        std::fs::write(dir.path().join(CONF_FILE), &text).unwrap();
        assert_eq!(
            stored_relays(dir.path()).unwrap(),
            (relays, Some(ca.to_owned()))
        );
        assert_eq!(
            stored_bind(dir.path()).unwrap(),
            Some(([10, 0, 0, 1], 7001).into())
        );
        // None recorded, none used; a damaged line is an error, not silently dropped.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(stored_relays(empty.path()).unwrap(), (Vec::new(), None));
        std::fs::write(
            dir.path().join(CONF_FILE),
            "bind=10.0.0.1:7001\nrelay=::nonsense\n",
        )
        .unwrap();
        assert!(stored_relays(dir.path()).is_err());
    }
}
