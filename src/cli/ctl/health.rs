//! `ctl health`: every member's liveness and readiness checks, asked of each member itself (a
//! client pinned to it), then the quorum, storage and corruption view of the member the CLI
//! talks to.

use futures_util::future::join_all;
use iroh_raft::{
    actors::wire::{MgmtHealth, MgmtMember, MgmtProbe, endpoint_addr_from_wire},
    mgmt::ClientError,
};
use serde_json::json;

use super::{Cli, Failure};

/// One member's answers (or why there were none).
struct Row {
    id: u64,
    addr: String,
    live: Result<MgmtProbe, String>,
    ready: Result<MgmtProbe, String>,
}

fn passed(p: &Result<MgmtProbe, String>) -> bool {
    p.as_ref()
        .is_ok_and(|p| p.checks.iter().all(|c| c.failure.is_none()))
}

/// The failed checks (or the error), `; `-separated.
fn reasons(p: &Result<MgmtProbe, String>) -> Vec<String> {
    match p {
        Err(e) => vec![e.clone()],
        Ok(p) => iroh_raft::mgmt::failed_checks(p),
    }
}

async fn ask(cli: &Cli, m: &MgmtMember) -> Row {
    let addr = m.addrs.first().cloned().unwrap_or_default();
    let Some(endpoint) = endpoint_addr_from_wire(&m.key, &m.addrs) else {
        let bad = Err("invalid endpoint id".to_string());
        return Row {
            id: m.id,
            addr,
            live: bad.clone(),
            ready: bad,
        };
    };
    let answered = async {
        let client = cli.pinned(endpoint).await?;
        // Both within the one deadline the client has: a member that did not answer the first
        // is not asked again.
        let live = client.probe(false).await;
        let ready = match &live {
            Ok(_) => client.probe(true).await,
            Err(e) => Err(e.clone()),
        };
        client.close().await;
        Ok::<_, ClientError>((live, ready))
    };
    let text = |e: ClientError| e.to_string();
    match answered.await {
        Ok((live, ready)) => Row {
            id: m.id,
            addr,
            live: live.map_err(text),
            ready: ready.map_err(text),
        },
        Err(e) => Row {
            id: m.id,
            addr,
            live: Err(e.to_string()),
            ready: Err(e.to_string()),
        },
    }
}

/// Every member's rows (only member `only`'s when given).
pub(super) async fn print(cli: &Cli, json: bool, only: Option<u64>) -> Result<(), Failure> {
    let status = cli.call().status().await?;
    let view: Option<MgmtHealth> = cli.call().health().await.ok();
    let members = status
        .members
        .iter()
        .filter(|m| only.is_none_or(|id| id == m.id));
    let rows = join_all(members.map(|m| ask(cli, m))).await;
    let unhealthy = rows
        .iter()
        .filter(|r| !passed(&r.live) || !passed(&r.ready))
        .count();
    if json {
        let members: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "id": r.id, "addr": r.addr, "live": passed(&r.live), "ready": passed(&r.ready),
                    "reasons": reasons(&r.live).into_iter().chain(reasons(&r.ready)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let view = view.as_ref().map(|h| {
            json!({
                "node": h.node_id, "quorum_available": h.quorum_available,
                "healthy_voters": h.healthy_voters, "voters": h.voters,
                "storage_ok": h.storage_ok, "role": h.role, "apply_lag": h.apply_lag,
                "data_corruption": h.data_corruption, "stopped": h.stopped,
            })
        });
        println!("{}", json!({ "members": members, "view": view }));
    } else {
        println!(
            "{:<6} {:<24} {:<5} {:<6} REASON",
            "ID", "ADDRESS", "LIVE", "READY"
        );
        for r in &rows {
            let mut why = reasons(&r.live);
            why.extend(reasons(&r.ready));
            why.dedup();
            println!(
                "{:<6} {:<24} {:<5} {:<6} {}",
                r.id,
                r.addr,
                if passed(&r.live) { "yes" } else { "NO" },
                if passed(&r.ready) { "yes" } else { "NO" },
                why.join("; ")
            );
        }
        if let Some(h) = &view {
            println!();
            println!("as node {} ({}) sees it:", h.node_id, h.role);
            println!(
                "  quorum available  {} ({}/{} voters heard from)",
                h.quorum_available,
                h.healthy_voters.len(),
                h.voters.len()
            );
            println!("  storage ok        {}", h.storage_ok);
            println!("  apply lag         {}", h.apply_lag);
            if h.data_corruption.is_empty() {
                println!("  data corruption   none");
            } else {
                println!("  data corruption   ALARM: members {:?}", h.data_corruption);
            }
            if let Some(why) = &h.stopped {
                println!("  stopped           {why}");
            }
        }
    }
    if unhealthy > 0 {
        return Err(Failure {
            code: 1,
            message: format!("{unhealthy} of {} members unhealthy", rows.len()),
        });
    }
    Ok(())
}
