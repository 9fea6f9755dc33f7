//! `iroh-raft ctl`: the management client on the command line (and what `kv` shares with it).
//!
//! Human tables by default, `--json` for scripts. The CLI's own identity key lives in a file it
//! creates on first use (`--key-dir`, default `$IROH_RAFT_CLI_DIR` or
//! `$HOME/.config/iroh-raft`). A command takes at most `--timeout` (default 10 s) in all,
//! finding a member included; members are dialled at once, so members that are down cost
//! nothing while another one answers.
//!
//! Exit codes: 0 done; 1 failed: the cluster answered with an error, a write's outcome is
//! unknown (it was sent and no answer came: it may or may not be applied), or a read got no
//! answer in time; 2 bad usage (a value too large is refused before anything is sent); 3
//! refused (not admitted, or not allowed); 4 unreachable: no member admitted the CLI in time,
//! and nothing was sent.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use iroh_raft::{
    Ticket, TicketRole,
    actors::wire::{MgmtErrorKind, endpoint_addr_from_wire},
    mgmt::{ClientError, ClientOptions, IrohRaftManagementClient},
    net::load_or_create_secret_key,
};
use serde_json::json;

use super::node::parse_positive_duration;

mod endpoint;
mod health;
mod member;
mod status;
mod watch;

/// Where and how to reach the cluster.
#[derive(clap::Args, Debug)]
pub(crate) struct Connect {
    /// An admin or read-only ticket (`iroh-raft node --bootstrap` writes one to DIR/admin-ticket).
    #[arg(long, value_name = "TICKET")]
    cluster: Ticket,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Directory of the CLI's identity key (created on first use).
    #[arg(long, value_name = "DIR", global = true)]
    key_dir: Option<PathBuf>,
    /// The longest the whole command may take, finding a member included (500ms, 3s, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_positive_duration)]
    pub(crate) timeout: Duration,
    /// Aim the command at this member (its raft id) rather than at whichever answers first
    /// (writes are still forwarded to the leader by it).
    #[arg(long, value_name = "ID", global = true)]
    endpoint: Option<u64>,
    /// Reach the members through this relay (repeat for several; default: the relays the
    /// ticket names, if any).
    #[arg(long, value_name = "URL", global = true)]
    relay: Vec<iroh::RelayUrl>,
    /// PEM file of CA certificates to trust for the relays' TLS, besides the usual web roots.
    #[arg(long, value_name = "FILE", global = true)]
    relay_ca: Option<PathBuf>,
}

impl Connect {
    /// The relays the command's clients use.
    fn relays(&self) -> Result<iroh_raft::net::Relays, Failure> {
        iroh_raft::net::Relays::with_ca_file(self.relay.clone(), self.relay_ca.as_deref()).map_err(
            |e| Failure {
                code: 2,
                message: e.to_string(),
            },
        )
    }
}

/// Options of `iroh-raft ctl`.
#[derive(clap::Args, Debug)]
pub(crate) struct CtlArgs {
    #[command(flatten)]
    connect: Connect,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CtlCommand {
    /// Leader, term, commit and applied index; every member with its role, and the leader's
    /// view of it: match index, lag behind the leader's log, last contact.
    Status,
    /// Every member's liveness and readiness checks (what its /livez and /readyz run), one
    /// row each, then quorum, storage and corruption as the answering member sees them. Exit
    /// 1 when a member is not live or not ready.
    Health,
    /// The answering member's metrics (OpenMetrics text, what its /metrics serves).
    Metrics,
    /// Members with their roles and addresses (`member list`).
    #[command(hide = true)]
    Members,
    /// Remove a member (`member remove`).
    #[command(hide = true)]
    RemoveMember {
        /// Its raft id.
        id: u64,
    },
    /// Membership: list, add (as a learner or a voter), promote, update-address, remove.
    Member {
        #[command(subcommand)]
        action: member::MemberAction,
    },
    /// Every member's own status or health, asked of each member: one row each.
    Endpoint {
        #[command(subcommand)]
        action: endpoint::EndpointAction,
    },
    /// Hand leadership to a voter (default: the most up-to-date one).
    TransferLeader {
        /// The voter.
        #[arg(conflicts_with = "away_from")]
        id: Option<u64>,
        /// Only if this node leads: hand its leadership to the most up-to-date other voter
        /// (what a node's stop hook runs; nothing happens when another node leads).
        #[arg(long, value_name = "ID")]
        away_from: Option<u64>,
    },
    /// Take a snapshot on the node the CLI talks to; `snapshot save FILE` saves a backup.
    Snapshot {
        #[command(subcommand)]
        action: Option<SnapshotAction>,
    },
    /// Print events as they happen (Ctrl-C to stop).
    Watch(watch::WatchArgs),
    /// Mint a ticket signed by a member.
    Ticket {
        /// join, admin or read-only.
        #[arg(long)]
        role: TicketRole,
        /// How long it stays valid (30s, 10m, 24h, 7d; more than zero).
        #[arg(long, default_value = "24h", value_parser = parse_positive_duration)]
        expires: Duration,
    },
}

#[derive(clap::Subcommand, Debug)]
enum SnapshotAction {
    /// Save a consistent backup of the cluster to FILE (written as FILE.part, verified, then
    /// renamed): it holds every write acknowledged before the command. The member it comes
    /// from takes a snapshot; writes go on meanwhile. --timeout bounds finding a member; the
    /// transfer may take longer.
    Save {
        /// Where to write it.
        file: PathBuf,
    },
}

/// A failure with the exit code it maps to.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        // 4 promises that nothing was sent; everything that may have reached a node is 1.
        let code = match e {
            ClientError::Refused { .. } | ClientError::Forbidden(_) => 3,
            ClientError::Unreachable { .. } => 4,
            ClientError::TooLarge { .. } => 2,
            _ => 1,
        };
        let message = match e {
            // The node could not finish it (it timed out or stopped there).
            ClientError::Failed {
                kind: MgmtErrorKind::Unknown,
                message,
            } => format!("outcome unknown: {message}"),
            e => e.to_string(),
        };
        Failure { code, message }
    }
}

impl Failure {
    pub(crate) fn usage(message: String) -> Self {
        Failure { code: 2, message }
    }

    /// Prints the message; returns the exit code.
    pub(crate) fn report(self) -> i32 {
        eprintln!("error: {}", self.message);
        i32::from(self.code)
    }
}

fn key_dir(given: &Option<PathBuf>) -> PathBuf {
    if let Some(dir) = given {
        return dir.clone();
    }
    if let Some(dir) = std::env::var_os("IROH_RAFT_CLI_DIR") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".config").join("iroh-raft")
}

/// The command's client and its one deadline: every call gets what is left of `--timeout`.
pub(crate) struct Cli {
    client: IrohRaftManagementClient,
    deadline: Instant,
    /// The CLI's identity and ticket, for clients of one member each.
    key: iroh::SecretKey,
    ticket: Ticket,
    /// `--timeout`: what a watch's resubscription gets, long after the command's deadline.
    timeout: Duration,
    /// `--endpoint`: the member every call goes to.
    pub(crate) endpoint: Option<u64>,
    /// `--relay`, `--relay-ca`.
    relays: iroh_raft::net::Relays,
}

impl Cli {
    /// A client that has dialled nobody yet: the first call finds a member.
    pub(crate) async fn new(c: &Connect) -> Result<Self, Failure> {
        let deadline = Instant::now() + c.timeout;
        let key = load_or_create_secret_key(&key_dir(&c.key_dir)).map_err(|e| Failure {
            code: 1,
            message: format!("CLI identity: {e}"),
        })?;
        let relays = c.relays()?;
        let options = ClientOptions::default()
            .key(key.clone())
            .timeout(c.timeout)
            .relays(relays.clone());
        let members = c.cluster.members.clone();
        let client = IrohRaftManagementClient::new(members, Some(&c.cluster), options).await?;
        let mut cli = Self {
            client,
            deadline,
            key,
            ticket: c.cluster.clone(),
            timeout: c.timeout,
            endpoint: c.endpoint,
            relays,
        };
        if let Some(id) = c.endpoint {
            // Whoever answers first names the member's addresses; from then on only it is asked.
            let status = cli.call().status().await?;
            let member = status.members.iter().find(|m| m.id == id).ok_or_else(|| {
                Failure::usage(format!(
                    "--endpoint {id}: no such member (see `ctl member list`)"
                ))
            })?;
            let addr =
                endpoint_addr_from_wire(&member.key, &member.addrs).ok_or_else(|| Failure {
                    code: 1,
                    message: format!("member {id} has an invalid endpoint id"),
                })?;
            let pinned = cli.pinned(addr).await?;
            let found = std::mem::replace(&mut cli.client, pinned);
            found.close().await;
        }
        Ok(cli)
    }

    /// The client with the whole `--timeout` again (a watch resubscribing long after the
    /// command started).
    pub(crate) fn fresh(&self) -> IrohRaftManagementClient {
        self.client.with_timeout(self.timeout)
    }

    /// A client of the member at `addr` alone (it never moves to another), within what is
    /// left of the deadline.
    pub(crate) async fn pinned(
        &self,
        addr: iroh::EndpointAddr,
    ) -> Result<IrohRaftManagementClient, ClientError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.pinned_for(addr, left.max(Duration::from_millis(1)))
            .await
    }

    /// A client of the member at `addr` alone whose calls may take `timeout` each (a watch's,
    /// long after the command's deadline).
    pub(crate) async fn pinned_for(
        &self,
        addr: iroh::EndpointAddr,
        timeout: Duration,
    ) -> Result<IrohRaftManagementClient, ClientError> {
        let options = ClientOptions::default()
            .key(self.key.clone())
            .timeout(timeout)
            .relays(self.relays.clone())
            .pinned();
        IrohRaftManagementClient::new(vec![addr], Some(&self.ticket), options).await
    }

    /// The client, for one call within what is left of the deadline.
    pub(crate) fn call(&self) -> IrohRaftManagementClient {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.client.with_timeout(left.max(Duration::from_millis(1)))
    }

    /// Closes the client without waiting for members that are down.
    pub(crate) async fn close(self) {
        self.client.close().await;
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) async fn run_ctl(args: CtlArgs) -> Result<(), Failure> {
    let cli = Cli::new(&args.connect).await?;
    let json = args.connect.json;
    let result = ctl(&cli, args.command, json).await;
    cli.close().await;
    result
}

async fn ctl(cli: &Cli, cmd: CtlCommand, json: bool) -> Result<(), Failure> {
    match cmd {
        CtlCommand::Status => status::print(cli, json, false).await?,
        CtlCommand::Members => status::print(cli, json, true).await?,
        CtlCommand::Health => health::print(cli, json, cli.endpoint).await?,
        CtlCommand::Member { action } => member::run(cli, action, json).await?,
        CtlCommand::Endpoint { action } => endpoint::run(cli, action, json).await?,
        CtlCommand::Metrics => print!("{}", cli.call().metrics().await?),
        CtlCommand::RemoveMember { id } => {
            let index = cli.call().remove_member(id).await?;
            print_one(json, json!({ "removed": id, "index": index }), || {
                format!("removed node {id} (index {index})")
            });
        }
        CtlCommand::TransferLeader {
            id: None,
            away_from: Some(from),
        } => {
            let status = cli.call().status().await?;
            let leader = status.leader;
            if leader != from {
                print_one(
                    json,
                    json!({ "leader": leader, "transferred": false }),
                    || match leader {
                        0 => {
                            format!("node {from} does not lead (no leader is known): nothing to do")
                        }
                        _ => {
                            format!("node {from} does not lead (node {leader} does): nothing to do")
                        }
                    },
                );
                return Ok(());
            }
            // The most up-to-date other voter, named: if leadership moved meanwhile, it still
            // goes to a node other than `from`.
            let to = iroh_raft::mgmt::handover_target(&status, from).ok_or_else(|| Failure {
                code: 1,
                message: format!("node {from} leads and no other voter is reachable"),
            })?;
            let (leader, took) = cli.call().transfer_leader(Some(to)).await?;
            print_one(
                json,
                json!({ "leader": leader, "elapsed_ms": took.as_millis() as u64, "transferred": true }),
                || format!("node {leader} leads (after {took:.0?})"),
            );
        }
        CtlCommand::TransferLeader { id, .. } => {
            let (leader, took) = cli.call().transfer_leader(id).await?;
            print_one(
                json,
                json!({ "leader": leader, "elapsed_ms": took.as_millis() as u64 }),
                || format!("node {leader} leads (after {took:.0?})"),
            );
        }
        CtlCommand::Snapshot {
            action: Some(SnapshotAction::Save { file }),
        } => super::backup::save(cli, &file, json).await?,
        CtlCommand::Snapshot { action: None } => {
            let index = cli.call().snapshot().await?;
            print_one(json, json!({ "snapshot_index": index }), || {
                format!("snapshot at index {index}")
            });
        }
        CtlCommand::Ticket { role, expires } => {
            let ticket = cli.call().mint_ticket(role, expires).await?;
            print_one(
                json,
                json!({ "ticket": ticket.to_string(), "role": role.to_string(), "expires_at": ticket.expires_at }),
                || ticket.to_string(),
            );
        }
        CtlCommand::Watch(args) => watch::run(cli, args, json).await?,
    }
    Ok(())
}

pub(crate) fn print_one(json: bool, value: serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}
