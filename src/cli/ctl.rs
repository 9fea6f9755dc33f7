//! `iroh-raft ctl` and `iroh-raft kv`: the management client on the command line.
//!
//! Human tables by default, `--json` for scripts. The CLI's own identity key lives in a file it
//! creates on first use (`--key-dir`, default `$IROH_RAFT_CLI_DIR` or
//! `$HOME/.config/iroh-raft`). Exit codes: 0 done, 1 failed (the cluster answered with an
//! error, or a write's outcome is unknown: its connection was lost after sending), 2 bad usage,
//! 3 refused (not admitted, or not allowed), 4 unreachable (no member answered in time).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use iroh_raft::{
    ClusterEvent, EventItem, KvCommand, KvResponse, Ticket, TicketRole,
    mgmt::{ClientError, IrohRaftManagementClient},
    net::load_or_create_secret_key,
};
use serde_json::json;

use super::node::parse_duration;

/// Where and how to reach the cluster.
#[derive(clap::Args, Debug)]
pub(crate) struct Connect {
    /// An admin or read-only ticket (`iroh-raft node --bootstrap` writes one to DIR/admin-ticket).
    #[arg(long, value_name = "TICKET")]
    cluster: Ticket,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Directory of the CLI's identity key (created on first use).
    #[arg(long, value_name = "DIR", global = true)]
    key_dir: Option<PathBuf>,
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
    /// Leader, term, commit and applied index, every member with its role and lag.
    Status,
    /// Quorum, healthy voters, storage, this node's role and lag.
    Health,
    /// Members with their roles and addresses.
    Members,
    /// Remove a member (the leader hands over first if it is the one removed).
    RemoveMember {
        /// Its raft id.
        id: u64,
    },
    /// Hand leadership to a voter (default: the most up-to-date one).
    TransferLeader {
        /// The voter.
        id: Option<u64>,
    },
    /// Take a snapshot on the node the CLI talks to.
    Snapshot,
    /// Print events as they happen (Ctrl-C to stop).
    Watch,
    /// Mint a ticket signed by a member.
    Ticket {
        /// join, admin or read-only.
        #[arg(long)]
        role: TicketRole,
        /// How long it stays valid (30s, 10m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        expires: Duration,
    },
}

/// Options of `iroh-raft kv`.
#[derive(clap::Args, Debug)]
pub(crate) struct KvArgs {
    #[command(flatten)]
    connect: Connect,
    #[command(subcommand)]
    command: KvCmd,
}

#[derive(clap::Subcommand, Debug)]
enum KvCmd {
    /// Set KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Read KEY (linearizable).
    Get {
        /// The key.
        key: String,
    },
    /// Delete KEY.
    Delete {
        /// The key.
        key: String,
    },
}

/// A failure with the exit code it maps to.
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Refused { .. } | ClientError::Forbidden(_) => 3,
            ClientError::Unreachable { .. } | ClientError::Timeout(_) => 4,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl Failure {
    pub(crate) fn exit(self) -> ExitCode {
        eprintln!("error: {}", self.message);
        ExitCode::from(self.code)
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

async fn connect(c: &Connect) -> Result<IrohRaftManagementClient, Failure> {
    let key = load_or_create_secret_key(&key_dir(&c.key_dir)).map_err(|e| Failure {
        code: 1,
        message: format!("CLI identity: {e}"),
    })?;
    let members = c.cluster.members.clone();
    Ok(IrohRaftManagementClient::connect_with(Some(key), members, Some(&c.cluster)).await?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) async fn run_ctl(args: CtlArgs) -> Result<(), Failure> {
    let client = connect(&args.connect).await?;
    let json = args.connect.json;
    let result = ctl(&client, args.command, json).await;
    client.close().await;
    result
}

async fn ctl(
    client: &IrohRaftManagementClient,
    cmd: CtlCommand,
    json: bool,
) -> Result<(), Failure> {
    match cmd {
        CtlCommand::Status | CtlCommand::Members => {
            let members_only = matches!(cmd, CtlCommand::Members);
            let s = client.status().await?;
            let members: Vec<_> = s
                .members
                .iter()
                .map(|m| {
                    json!({
                        "id": m.id, "role": m.role, "endpoint": hex(&m.key), "addrs": m.addrs,
                        "match_index": m.matched, "lag": m.lag,
                        "last_contact_ms": (m.last_contact_ms != u64::MAX).then_some(m.last_contact_ms),
                    })
                })
                .collect();
            if json {
                let out = if members_only {
                    json!({ "members": members })
                } else {
                    json!({
                        "node": s.node_id, "cluster_id": hex(&s.cluster_id),
                        "leader": (s.leader != 0).then_some(s.leader), "term": s.term,
                        "commit_index": s.commit_index, "applied_index": s.applied_index,
                        "role": s.role, "members": members,
                    })
                };
                println!("{out}");
                return Ok(());
            }
            if !members_only {
                let leader = if s.leader == 0 {
                    "none".into()
                } else {
                    s.leader.to_string()
                };
                println!("cluster   {}", hex(&s.cluster_id));
                println!("leader    {leader}   term {}", s.term);
                println!(
                    "node {} ({})   commit {}   applied {}",
                    s.node_id, s.role, s.commit_index, s.applied_index
                );
                println!();
            }
            println!(
                "{:>4}  {:<9} {:>8}  {:>8}  {:<16}  ADDRESSES",
                "ID", "ROLE", "MATCH", "LAG", "ENDPOINT"
            );
            for m in &s.members {
                println!(
                    "{:>4}  {:<9} {:>8}  {:>8}  {:<16}  {}",
                    m.id,
                    m.role,
                    m.matched,
                    m.lag,
                    &hex(&m.key)[..16],
                    m.addrs.join(",")
                );
            }
        }
        CtlCommand::Health => {
            let h = client.health().await?;
            if json {
                println!(
                    "{}",
                    json!({
                        "node": h.node_id, "quorum_available": h.quorum_available,
                        "healthy_voters": h.healthy_voters, "voters": h.voters,
                        "storage_ok": h.storage_ok, "role": h.role, "apply_lag": h.apply_lag,
                    })
                );
            } else {
                println!("node {} ({})", h.node_id, h.role);
                println!("quorum available  {}", h.quorum_available);
                println!(
                    "healthy voters    {}/{} {:?}",
                    h.healthy_voters.len(),
                    h.voters.len(),
                    h.healthy_voters
                );
                println!("storage ok        {}", h.storage_ok);
                println!("apply lag         {}", h.apply_lag);
            }
        }
        CtlCommand::RemoveMember { id } => {
            let index = client.remove_member(id).await?;
            print_one(json, json!({ "removed": id, "index": index }), || {
                format!("removed node {id} (index {index})")
            });
        }
        CtlCommand::TransferLeader { id } => {
            let (leader, took) = client.transfer_leader(id).await?;
            print_one(
                json,
                json!({ "leader": leader, "elapsed_ms": took.as_millis() as u64 }),
                || format!("node {leader} leads (after {took:.0?})"),
            );
        }
        CtlCommand::Snapshot => {
            let index = client.snapshot().await?;
            print_one(json, json!({ "snapshot_index": index }), || {
                format!("snapshot at index {index}")
            });
        }
        CtlCommand::Ticket { role, expires } => {
            let ticket = client.mint_ticket(role, expires).await?;
            print_one(
                json,
                json!({ "ticket": ticket.to_string(), "role": role.to_string(), "expires_at": ticket.expires_at }),
                || ticket.to_string(),
            );
        }
        CtlCommand::Watch => {
            let mut events = client.subscribe().await?;
            loop {
                let item = tokio::select! {
                    item = events.next() => item,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                match item {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(EventItem::Missed(n))) => {
                        print_one(json, json!({ "missed": n }), || {
                            format!("… missed {n} events")
                        })
                    }
                    Some(Ok(EventItem::Event(ev))) => print_event(json, events.last_seq, &ev),
                }
            }
        }
    }
    Ok(())
}

fn print_one(json: bool, value: serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

fn print_event(json: bool, seq: u64, ev: &ClusterEvent) {
    if json {
        let value = serde_json::to_value(ev).unwrap_or(serde_json::Value::Null);
        println!("{}", json!({ "seq": seq, "event": value }));
    } else {
        println!("{seq:>6}  {ev:?}");
    }
}

pub(crate) async fn run_kv(args: KvArgs) -> Result<(), Failure> {
    let client = connect(&args.connect).await?;
    let json = args.connect.json;
    let result = async {
        match args.command {
            KvCmd::Put { key, value } => {
                let cmd = KvCommand::Set {
                    key: key.clone(),
                    value,
                };
                let r: KvResponse = client.propose(&cmd).await?;
                print_one(json, json!({ "key": key, "previous": r.previous }), || {
                    "ok".into()
                });
            }
            KvCmd::Delete { key } => {
                let r: KvResponse = client
                    .propose(&KvCommand::Delete { key: key.clone() })
                    .await?;
                print_one(
                    json,
                    json!({ "key": key, "previous": r.previous }),
                    || match r.previous {
                        Some(_) => "deleted".into(),
                        None => "not found".into(),
                    },
                );
            }
            KvCmd::Get { key } => {
                let value: Option<String> = client.read(&key).await?;
                if json {
                    println!("{}", json!({ "key": key, "value": value }));
                } else {
                    match value {
                        Some(v) => println!("{v}"),
                        None => {
                            return Err(Failure {
                                code: 1,
                                message: format!("{key}: not found"),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    client.close().await;
    result
}
