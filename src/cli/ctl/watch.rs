//! `ctl watch`: events as they happen, of the node the CLI talks to or (`--cluster-wide`) of
//! every member, one line each: `TIME  node N  KIND  key=value...`, or with `--json` one object
//! per line, `{"time", "node", "seq", "kind", ...fields}` with flat fields and snake_case kinds.
//!
//! Each member's subscription is followed by a future of its own, all run together by this
//! task: a line is printed whole as it arrives, tagged with the node whose stream it came from.
//! A stream that ends or fails is resumed after the last event seen ([`RESUME_TRIES`] times in
//! a row at most); trouble goes to stderr, events to stdout.

use std::{collections::BTreeSet, fmt::Write as _, time::Duration};

use chrono::{DateTime, FixedOffset, Local, SecondsFormat};
use futures_util::{StreamExt, future::join_all, stream::FuturesUnordered};
use iroh_raft::{
    ClusterEvent, EventItem, NodeId,
    actors::wire::endpoint_addr_from_wire,
    mgmt::{ClientError, EventSubscription, IrohRaftManagementClient},
};
use serde_json::{Value, json};

use super::{Cli, Failure};

/// Options of `ctl watch`.
#[derive(clap::Args, Debug)]
pub(crate) struct WatchArgs {
    /// Watch every member (one subscription each, asked of the member itself), not only the
    /// node the CLI talks to; each line names the node that reported it.
    #[arg(long)]
    cluster_wide: bool,
    /// Show `applied` events too (one per Ready round of each node: many).
    #[arg(long)]
    applied: bool,
}

/// Resumes of a member's stream in a row that get no event before the watch gives up on it.
const RESUME_TRIES: u32 = 5;

/// The wait before the first resume; doubled at each try (0.5 s to 8 s: a member that restarts
/// is usually back within that, and one that is gone costs 15 s of retries).
const RESUME_BACKOFF: Duration = Duration::from_millis(500);

/// Width of the kind column: the longest kind (`membership-changed`, `snapshot-installed`).
const KIND_WIDTH: usize = 18;

/// How lines are printed.
#[derive(Clone, Copy, Debug)]
struct Format {
    json: bool,
    /// Print `applied` events.
    applied: bool,
}

/// How often `--cluster-wide` asks for the membership, to watch members that joined since.
const MEMBERS_REFRESH: Duration = Duration::from_secs(5);

/// Prints events until Ctrl-C. Exit 1 once every stream is lost for good.
pub(super) async fn run(cli: &Cli, args: WatchArgs, json: bool) -> Result<(), Failure> {
    let format = Format {
        json,
        applied: args.applied,
    };
    let watches = if args.cluster_wide {
        members(cli, &BTreeSet::new()).await?
    } else {
        // The first subscription is bounded by --timeout, and fails with its exit code.
        let events = cli.call().subscribe().await?;
        let client = cli.fresh();
        let node = client.session().await.map_or(0, |(id, _)| id);
        vec![(Watch::new(node, client), Some(events))]
    };
    let mut known: BTreeSet<NodeId> = watches.iter().map(|(w, _)| w.node).collect();
    // Every node watched at some point (a member given up on is looked for again).
    let mut ever = known.clone();
    let mut clients: Vec<_> = watches.iter().map(|(w, _)| w.client.clone()).collect();
    let mut following: FuturesUnordered<_> = watches
        .into_iter()
        .map(|(w, first)| w.follow(first, format))
        .collect();
    let mut refresh = tokio::time::interval(MEMBERS_REFRESH);
    refresh.tick().await;
    let result = loop {
        tokio::select! {
            ended = following.next() => {
                // Given up on: found again (at its addresses then) if it is still a member.
                if let Some(node) = ended {
                    known.remove(&node);
                }
                if following.is_empty() {
                    break Err(Failure {
                        code: 1,
                        message: "every event stream was lost".into(),
                    });
                }
            }
            // Members that joined since: watched too, from when they are found.
            _ = refresh.tick(), if args.cluster_wide => {
                let Ok(new) = members(cli, &known).await else { continue };
                for (w, first) in new {
                    match ever.insert(w.node) {
                        true => eprintln!("node {}: a new member: watching it too", w.node),
                        false => eprintln!("node {}: watching it again", w.node),
                    }
                    known.insert(w.node);
                    clients.push(w.client.clone());
                    following.push(w.follow(first, format));
                }
            }
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    // A pinned client has an endpoint of its own: closed, not dropped with its connection open.
    join_all(clients.iter().map(|c| c.close())).await;
    result
}

/// A watch of every member the connected one knows but `known`, each through a client of its
/// own (they subscribe when followed: one that is down is retried like a lost stream). Each
/// subscription may take `--timeout`, however long ago the command started. Fails when no
/// member could be had at all (the first time only: `known` is empty).
async fn members(
    cli: &Cli,
    known: &BTreeSet<NodeId>,
) -> Result<Vec<(Watch, Option<EventSubscription>)>, Failure> {
    let client = cli.fresh();
    let status = client.status().await?;
    let timeout = client.timeout();
    let mut watches = Vec::new();
    for m in status.members.iter().filter(|m| !known.contains(&m.id)) {
        let Some(addr) = endpoint_addr_from_wire(&m.key, &m.addrs) else {
            eprintln!("node {}: not watched: invalid endpoint id", m.id);
            continue;
        };
        match cli.pinned_for(addr, timeout).await {
            Ok(client) => watches.push((Watch::new(m.id, client), None)),
            Err(e) => eprintln!("node {}: not watched: {e}", m.id),
        }
    }
    if watches.is_empty() && known.is_empty() {
        return Err(Failure {
            code: 1,
            message: "no member to watch".into(),
        });
    }
    Ok(watches)
}

/// One member's stream and where it got to.
struct Watch {
    /// The node its lines are tagged with.
    node: NodeId,
    /// Its calls may take `--timeout` each.
    client: IrohRaftManagementClient,
    /// The run of the member's event bus, and the last event number seen (0: none yet).
    epoch: u64,
    last_seq: u64,
}

impl Watch {
    fn new(node: NodeId, client: IrohRaftManagementClient) -> Self {
        Self {
            node,
            client,
            epoch: 0,
            last_seq: 0,
        }
    }

    /// Prints the member's events; resumes its stream when it ends or fails, waiting longer
    /// each time, until [`RESUME_TRIES`] tries in a row got nothing. Returns the node.
    async fn follow(mut self, mut events: Option<EventSubscription>, format: Format) -> NodeId {
        let mut tries = 0;
        loop {
            let why = match events.take() {
                Some(mut sub) => {
                    // Another run's numbering (the node restarted) starts where it is now.
                    (self.epoch, self.last_seq) = (sub.epoch, sub.last_seq);
                    let (delivered, why) = self.print(&mut sub, format).await;
                    if delivered {
                        tries = 0;
                    }
                    why
                }
                None => match self.resume().await {
                    Ok(sub) => {
                        events = Some(sub);
                        continue;
                    }
                    Err(e @ (ClientError::Refused { .. } | ClientError::Forbidden(_))) => {
                        eprintln!("node {}: not watched: {e}", self.node);
                        return self.node;
                    }
                    Err(e) => e.to_string(),
                },
            };
            tries += 1;
            if tries > RESUME_TRIES {
                eprintln!("node {}: {why}; given up", self.node);
                return self.node;
            }
            let wait = RESUME_BACKOFF * 2u32.pow(tries - 1);
            eprintln!("node {}: {why}; retrying in {wait:?}", self.node);
            tokio::time::sleep(wait).await;
        }
    }

    /// A subscription after the last event seen (from now on if none was).
    async fn resume(&mut self) -> Result<EventSubscription, ClientError> {
        let sub = self.client.resume(self.epoch, self.last_seq).await?;
        // Without --cluster-wide the client may have moved to another member.
        let node = self.client.session().await.map_or(self.node, |(id, _)| id);
        if node != self.node {
            eprintln!("node {}: now watching node {node}, from now on", self.node);
        } else if self.epoch != 0 && sub.epoch != self.epoch {
            eprintln!("node {node}: restarted: its events from now on (some may be lost)");
        }
        self.node = node;
        Ok(sub)
    }

    /// Prints items until the stream ends; whether it delivered any, and why it ended.
    async fn print(&mut self, sub: &mut EventSubscription, format: Format) -> (bool, String) {
        let mut delivered = false;
        loop {
            let item = match sub.next().await {
                None => return (delivered, "the stream ended".into()),
                // An event this CLI cannot read (a newer node): the stream goes on.
                Some(Err(ClientError::Codec(e))) => {
                    eprintln!("node {}: event {} unreadable: {e}", self.node, sub.last_seq);
                    continue;
                }
                Some(Err(e)) => return (delivered, e.to_string()),
                Some(Ok(item)) => item,
            };
            delivered = true;
            self.last_seq = sub.last_seq;
            let now = Local::now().fixed_offset();
            if let Some(line) = line(now, self.node, sub.last_seq, &item, format) {
                println!("{line}");
            }
        }
    }
}

/// One item as printed, or `None` for an `applied` event not asked for.
fn line(
    time: DateTime<FixedOffset>,
    node: NodeId,
    seq: u64,
    item: &EventItem,
    format: Format,
) -> Option<String> {
    let (kind, fields) = match item {
        EventItem::Missed(n) => ("missed", vec![("count", json!(n))]),
        EventItem::Event(ClusterEvent::Applied { .. }) if !format.applied => return None,
        EventItem::Event(ev) => describe(ev),
    };
    if format.json {
        let time = Value::from(time.to_rfc3339_opts(SecondsFormat::Millis, false));
        let mut out = format!(r#"{{"time":{time},"node":{node},"seq":{seq},"kind":"{kind}""#);
        for (key, value) in &fields {
            let _ = write!(out, r#","{key}":{value}"#);
        }
        out.push('}');
        return Some(out);
    }
    let kind = kind.replace('_', "-");
    let rest = match item {
        EventItem::Missed(n) => format!("{n} events not seen (this watch fell behind)"),
        EventItem::Event(_) => fields
            .iter()
            .map(|(key, value)| format!("{key}={}", human(value)))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let time = time.format("%H:%M:%S%.3f");
    let node = format!("node {node}");
    let out = format!("{time}  {node:<7}  {kind:<KIND_WIDTH$}  {rest}");
    Some(out.trim_end().to_string())
}

/// An event's kind (snake_case) and its fields, with the names both outputs use. The event's
/// own `node` of a role change or a stop is the reporting node, already on the line.
fn describe(ev: &ClusterEvent) -> (&'static str, Vec<(&'static str, Value)>) {
    use ClusterEvent as E;
    match ev {
        E::LeaderElected { new_leader, term } => (
            "leader_elected",
            vec![("leader", json!(new_leader)), ("term", json!(term))],
        ),
        E::RoleChanged { role, term, .. } => (
            "role_changed",
            vec![("role", json!(role.name())), ("term", json!(term))],
        ),
        E::Applied { index } => ("applied", vec![("index", json!(index))]),
        E::SnapshotTaken { index } => ("snapshot_taken", vec![("index", json!(index))]),
        E::SnapshotInstalled { index } => ("snapshot_installed", vec![("index", json!(index))]),
        E::MembershipChanged { voters, learners } => (
            "membership_changed",
            vec![("voters", json!(voters)), ("learners", json!(learners))],
        ),
        E::PeerConnected { peer } => ("peer_connected", vec![("peer", json!(peer))]),
        E::PeerDisconnected { peer, reason } => (
            "peer_disconnected",
            vec![("peer", json!(peer)), ("reason", json!(reason))],
        ),
        E::NodeStopped {
            removed, reason, ..
        } => (
            "node_stopped",
            vec![("removed", json!(removed)), ("reason", json!(reason))],
        ),
        E::ReplicaDiverged { node, index } => (
            "replica_diverged",
            vec![("member", json!(node)), ("index", json!(index))],
        ),
        // A kind this CLI does not know yet: shown as Rust prints it.
        other => ("unknown", vec![("event", json!(format!("{other:?}")))]),
    }
}

/// A field's value in a human line: lists comma-separated (`-` when empty), text quoted as in
/// JSON unless it is one plain word.
fn human(value: &Value) -> String {
    match value {
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(human).collect::<Vec<_>>().join(","),
        Value::String(s)
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            s.clone()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh_raft::Role;

    const HUMAN: Format = Format {
        json: false,
        applied: false,
    };
    const JSON: Format = Format {
        json: true,
        applied: false,
    };

    fn at() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2025-03-04T10:15:02.118+01:00").unwrap()
    }

    fn human_line(ev: ClusterEvent) -> String {
        line(at(), 2, 17, &EventItem::Event(ev), HUMAN).unwrap()
    }

    /// With `applied` events shown.
    fn json_line(ev: ClusterEvent) -> Value {
        let all = Format {
            json: true,
            applied: true,
        };
        let text = line(at(), 2, 17, &EventItem::Event(ev), all).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Every kind, as a human line and as a JSON line (`None`: not printed by default).
    fn every_kind() -> Vec<(ClusterEvent, Option<&'static str>, Value)> {
        use ClusterEvent as E;
        let head = |kind: &str| json!({"time": "2025-03-04T10:15:02.118+01:00", "node": 2, "seq": 17, "kind": kind});
        let with = |kind: &str, fields: Value| {
            let mut v = head(kind);
            for (k, f) in fields.as_object().unwrap() {
                v[k] = f.clone();
            }
            v
        };
        vec![
            (
                E::LeaderElected {
                    new_leader: 3,
                    term: 5,
                },
                Some("10:15:02.118  node 2   leader-elected      leader=3 term=5"),
                with("leader_elected", json!({"leader": 3, "term": 5})),
            ),
            (
                E::RoleChanged {
                    node: 2,
                    role: Role::PreCandidate,
                    term: 5,
                },
                Some("10:15:02.118  node 2   role-changed        role=pre-candidate term=5"),
                with("role_changed", json!({"role": "pre-candidate", "term": 5})),
            ),
            (
                E::Applied { index: 40 },
                None,
                with("applied", json!({"index": 40})),
            ),
            (
                E::SnapshotTaken { index: 41 },
                Some("10:15:02.118  node 2   snapshot-taken      index=41"),
                with("snapshot_taken", json!({"index": 41})),
            ),
            (
                E::SnapshotInstalled { index: 42 },
                Some("10:15:02.118  node 2   snapshot-installed  index=42"),
                with("snapshot_installed", json!({"index": 42})),
            ),
            (
                E::MembershipChanged {
                    voters: vec![1, 2, 3],
                    learners: vec![],
                },
                Some("10:15:02.118  node 2   membership-changed  voters=1,2,3 learners=-"),
                with(
                    "membership_changed",
                    json!({"voters": [1, 2, 3], "learners": []}),
                ),
            ),
            (
                E::PeerConnected { peer: 3 },
                Some("10:15:02.118  node 2   peer-connected      peer=3"),
                with("peer_connected", json!({"peer": 3})),
            ),
            (
                E::PeerDisconnected {
                    peer: 3,
                    reason: "timed out: \"idle\"".into(),
                },
                Some(
                    r#"10:15:02.118  node 2   peer-disconnected   peer=3 reason="timed out: \"idle\"""#,
                ),
                with(
                    "peer_disconnected",
                    json!({"peer": 3, "reason": "timed out: \"idle\""}),
                ),
            ),
            (
                E::NodeStopped {
                    node: 2,
                    removed: true,
                    reason: "removed".into(),
                },
                Some("10:15:02.118  node 2   node-stopped        removed=true reason=removed"),
                with(
                    "node_stopped",
                    json!({"removed": true, "reason": "removed"}),
                ),
            ),
            (
                E::ReplicaDiverged { node: 3, index: 9 },
                Some("10:15:02.118  node 2   replica-diverged    member=3 index=9"),
                with("replica_diverged", json!({"member": 3, "index": 9})),
            ),
        ]
    }

    #[test]
    fn every_kind_prints_as_a_line_and_as_flat_json() {
        for (ev, human, json) in every_kind() {
            match human {
                Some(expected) => assert_eq!(human_line(ev.clone()), expected),
                None => assert_eq!(
                    line(at(), 2, 17, &EventItem::Event(ev.clone()), HUMAN),
                    None
                ),
            }
            assert_eq!(json_line(ev), json);
        }
    }

    #[test]
    fn applied_events_show_only_when_asked_for() {
        let applied = EventItem::Event(ClusterEvent::Applied { index: 40 });
        assert_eq!(line(at(), 2, 17, &applied, HUMAN), None);
        assert_eq!(line(at(), 2, 17, &applied, JSON), None);
        let asked = Format {
            json: false,
            applied: true,
        };
        assert_eq!(
            line(at(), 2, 17, &applied, asked).as_deref(),
            Some("10:15:02.118  node 2   applied             index=40")
        );
    }

    #[test]
    fn missed_events_say_how_many_on_which_node() {
        let missed = EventItem::Missed(5);
        assert_eq!(
            line(at(), 12, 30, &missed, HUMAN).as_deref(),
            Some(
                "10:15:02.118  node 12  missed              5 events not seen (this watch fell behind)"
            )
        );
        let json: Value =
            serde_json::from_str(&line(at(), 12, 30, &missed, JSON).unwrap()).unwrap();
        assert_eq!(
            json,
            json!({"time": "2025-03-04T10:15:02.118+01:00", "node": 12, "seq": 30, "kind": "missed", "count": 5})
        );
    }

    #[test]
    fn json_keeps_time_node_seq_kind_first() {
        let text = line(at(), 2, 17, &EventItem::Missed(1), JSON).unwrap();
        assert!(
            text.starts_with(
                r#"{"time":"2025-03-04T10:15:02.118+01:00","node":2,"seq":17,"kind":"missed""#
            ),
            "{text}"
        );
    }
}
