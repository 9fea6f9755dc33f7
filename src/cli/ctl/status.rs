//! `ctl status` and `ctl members`: the cluster as its leader sees it. Only the leader knows how
//! far each member's log matches its own and when it last heard from each; a follower's answer
//! is shown as such, with match and lag unknown, never as "lag 0".

use iroh_raft::actors::wire::{MgmtMember, MgmtStatus};
use serde_json::json;

use super::{Cli, Failure, hex};

/// The leader's status if it can be had within the deadline (else the first answer).
pub(super) async fn leader_view(cli: &Cli) -> Result<MgmtStatus, Failure> {
    let mut status = cli.call().status().await?;
    if status.leader != 0 && status.node_id != status.leader {
        // The first call moved the client to the leader if it could: ask there.
        if let Ok(s) = cli.call().status().await
            && s.node_id == s.leader
        {
            status = s;
        }
    }
    Ok(status)
}

/// How the leader sees a member.
struct Seen {
    /// Match index and lag, known only on the leader.
    progress: Option<(u64, u64)>,
    /// Milliseconds since the answering node heard from it (`None`: never).
    contact_ms: Option<u64>,
    /// `leader`, `ok`, `stale` (the leader has not heard from it within an election timeout),
    /// `corrupt` (its applied entries differ from the answering node's) or `?` (unknown: not
    /// the leader's answer).
    state: &'static str,
}

fn seen(s: &MgmtStatus, m: &MgmtMember) -> Seen {
    let on_leader = s.node_id == s.leader;
    let state = if m.diverged {
        "corrupt"
    } else if m.id == s.leader {
        "leader"
    } else if !on_leader {
        "?"
    } else if m.fresh {
        "ok"
    } else {
        "stale"
    };
    Seen {
        progress: on_leader.then_some((m.matched, m.lag)),
        contact_ms: (m.last_contact_ms != u64::MAX).then_some(m.last_contact_ms),
        state,
    }
}

pub(super) async fn print(cli: &Cli, json: bool, members_only: bool) -> Result<(), Failure> {
    let s = leader_view(cli).await?;
    let rows: Vec<_> = s.members.iter().map(|m| (m, seen(&s, m))).collect();
    if json {
        print_json(&s, &rows, members_only);
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
        if s.node_id != s.leader {
            println!("(not the leader's view: match and lag are known only to the leader)");
        }
        println!();
    }
    println!(
        "{:>4}  {:<9} {:<6} {:>8}  {:>8}  {:>9}  {:<16}  ADDRESSES",
        "ID", "ROLE", "STATE", "MATCH", "LAG", "CONTACT", "ENDPOINT"
    );
    for (m, seen) in &rows {
        let (matched, lag) = match seen.progress {
            Some((matched, lag)) => (matched.to_string(), lag.to_string()),
            None => ("-".into(), "-".into()),
        };
        let contact = match seen.contact_ms {
            _ if m.id == s.node_id => "-".into(),
            Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
            None => "never".into(),
        };
        println!(
            "{:>4}  {:<9} {:<6} {:>8}  {:>8}  {:>9}  {:<16}  {}",
            m.id,
            m.role,
            seen.state,
            matched,
            lag,
            contact,
            &hex(&m.key)[..16],
            m.addrs.join(",")
        );
    }
    Ok(())
}

fn print_json(s: &MgmtStatus, rows: &[(&MgmtMember, Seen)], members_only: bool) {
    let members: Vec<_> = rows
        .iter()
        .map(|(m, seen)| {
            json!({
                "id": m.id, "role": m.role, "endpoint": hex(&m.key), "addrs": m.addrs,
                "state": seen.state,
                "match_index": seen.progress.map(|p| p.0),
                "lag": seen.progress.map(|p| p.1),
                "last_contact_ms": seen.contact_ms,
            })
        })
        .collect();
    let out = if members_only {
        json!({ "members": members })
    } else {
        json!({
            "node": s.node_id, "cluster_id": hex(&s.cluster_id),
            "leader": (s.leader != 0).then_some(s.leader), "term": s.term,
            "commit_index": s.commit_index, "applied_index": s.applied_index,
            "role": s.role, "leaders_view": s.node_id == s.leader, "members": members,
        })
    };
    println!("{out}");
}
