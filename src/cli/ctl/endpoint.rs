//! `ctl endpoint status|health`: each member asked about itself (a client pinned to it), one
//! row each, like `etcdctl endpoint status --cluster`. `--endpoint ID` keeps one row.

use futures_util::future::join_all;
use iroh_raft::actors::wire::{MgmtMember, MgmtStatus, endpoint_addr_from_wire};
use serde_json::json;

use super::{Cli, Failure, hex};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum EndpointAction {
    /// Each member's own view: role, term, commit and applied index, lag, database size, last
    /// contact (the leader's), version. Exit 1 when a member did not answer.
    Status,
    /// Each member's liveness and readiness checks. Exit 1 when a member is not live or not
    /// ready.
    Health,
}

/// A member's answer about itself, or why there was none.
struct Row<'a> {
    member: &'a MgmtMember,
    answer: Result<MgmtStatus, String>,
}

async fn ask<'a>(cli: &Cli, member: &'a MgmtMember) -> Row<'a> {
    let answer = async {
        let addr = endpoint_addr_from_wire(&member.key, &member.addrs)
            .ok_or_else(|| "invalid endpoint id".to_string())?;
        let client = cli.pinned(addr).await.map_err(|e| e.to_string())?;
        let status = client.status().await.map_err(|e| e.to_string());
        client.close().await;
        status
    };
    Row {
        member,
        answer: answer.await,
    }
}

pub(super) async fn run(cli: &Cli, action: EndpointAction, json: bool) -> Result<(), Failure> {
    match action {
        EndpointAction::Health => super::health::print(cli, json, cli.endpoint).await,
        EndpointAction::Status => status(cli, json).await,
    }
}

async fn status(cli: &Cli, json: bool) -> Result<(), Failure> {
    // The leader's view gives lag and last contact; each member gives the rest.
    let view = super::status::leader_view(cli).await?;
    let on_leader = view.node_id == view.leader;
    let members: Vec<&MgmtMember> = view
        .members
        .iter()
        .filter(|m| cli.endpoint.is_none_or(|id| id == m.id))
        .collect();
    let rows = join_all(members.iter().map(|m| ask(cli, m))).await;
    let failed = rows.iter().filter(|r| r.answer.is_err()).count();
    if json {
        let out: Vec<_> = rows.iter().map(|r| row_json(r, on_leader)).collect();
        println!(
            "{}",
            json!({ "leader": (view.leader != 0).then_some(view.leader), "endpoints": out })
        );
    } else {
        println!(
            "{:>4}  {:<22} {:<9} {:>5} {:>8} {:>8} {:>6} {:>9} {:>9}  {:<8} ENDPOINT",
            "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "DB", "CONTACT", "VERSION"
        );
        for r in &rows {
            let m = r.member;
            let addr = m.addrs.first().map_or("-", String::as_str);
            let lag = if on_leader {
                m.lag.to_string()
            } else {
                "?".into()
            };
            let contact = contact(m, &view);
            match &r.answer {
                Ok(s) => println!(
                    "{:>4}  {:<22} {:<9} {:>5} {:>8} {:>8} {:>6} {:>9} {:>9}  {:<8} {}",
                    m.id,
                    addr,
                    s.role,
                    s.term,
                    s.commit_index,
                    s.applied_index,
                    lag,
                    size(s.db_size_bytes),
                    contact,
                    s.version,
                    &hex(&m.key)[..16]
                ),
                Err(e) => println!("{:>4}  {:<22} unreachable: {e}", m.id, addr),
            }
        }
        if !on_leader {
            println!("(no leader answered: lag and last contact are known only to the leader)");
        }
    }
    if failed > 0 {
        return Err(Failure {
            code: 1,
            message: format!("{failed} of {} members did not answer", rows.len()),
        });
    }
    Ok(())
}

fn contact(m: &MgmtMember, view: &MgmtStatus) -> String {
    if view.node_id != view.leader {
        "?".into()
    } else if m.id == view.node_id {
        "-".into()
    } else if m.last_contact_ms == u64::MAX {
        "never".into()
    } else {
        format!("{:.1}s ago", m.last_contact_ms as f64 / 1000.0)
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        0 => "-".into(),
        b if b < 1 << 20 => format!("{:.0} kB", b as f64 / 1e3),
        b => format!("{:.1} MB", b as f64 / 1e6),
    }
}

fn row_json(r: &Row<'_>, on_leader: bool) -> serde_json::Value {
    let m = r.member;
    let known = |v: u64| on_leader.then_some(v);
    let contact = (m.last_contact_ms != u64::MAX).then_some(m.last_contact_ms);
    match &r.answer {
        Ok(s) => json!({
            "id": m.id, "endpoint": hex(&m.key), "addrs": m.addrs, "member_role": m.role,
            "role": s.role, "term": s.term, "leader": (s.leader != 0).then_some(s.leader),
            "commit_index": s.commit_index, "applied_index": s.applied_index,
            "lag": known(m.lag), "db_size_bytes": s.db_size_bytes,
            "last_contact_ms": contact.and_then(known), "version": s.version, "error": null,
        }),
        Err(e) => json!({
            "id": m.id, "endpoint": hex(&m.key), "addrs": m.addrs, "member_role": m.role,
            "lag": known(m.lag), "last_contact_ms": contact.and_then(known), "error": e,
        }),
    }
}
