//! Three node processes as members die and pause, through the CLI: a dead member shows as
//! stale in `ctl status` (the leader's view of it); members that are down at the head of a
//! ticket cost a command nothing; with the leader paused, a write exits 1 (outcome unknown: it
//! may yet be applied), never 4, which promises that nothing was sent.

use iroh_raft::{Ticket, TicketRole};

use crate::support::{Cluster, Out, black_hole, cli, cli_until, signal, ticket_from};

fn json(out: &Out) -> serde_json::Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or(serde_json::Value::Null)
}

fn member(status: &serde_json::Value, id: u64) -> serde_json::Value {
    status["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == id).cloned())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn dead_and_paused_members_as_the_cli_reports_them() {
    let mut c = Cluster::start(3);
    let (keys, admin) = (c.keys.path().to_owned(), c.admin.clone());
    let leader = c.leader();
    let ids: Vec<u64> = c.procs.iter().map(|p| p.id).collect();
    let victim = *ids.iter().find(|&&id| id != leader).unwrap();
    let alive = *ids
        .iter()
        .find(|&&id| id != leader && id != victim)
        .unwrap();
    let at = |id: u64| ids.iter().position(|&i| i == id).unwrap();

    // kill -9 a follower: the leader's status shows it stale, with its last contact.
    c.procs[at(victim)].child.kill().unwrap();
    c.procs[at(victim)].child.wait().unwrap();
    let status_args = ["ctl", "--cluster", &admin, "--json", "status"];
    let out = cli_until(&keys, &status_args, "the dead member shown stale", |o| {
        o.code == 0 && member(&json(o), victim)["state"] == "stale"
    });
    let status = json(&out);
    assert_eq!(status["leaders_view"], true, "{status}");
    assert_eq!(member(&status, leader)["state"], "leader", "{status}");
    assert_eq!(member(&status, alive)["state"], "ok", "{status}");
    let dead = member(&status, victim);
    assert!(dead["last_contact_ms"].as_u64().is_some(), "{dead}");
    assert!(dead["match_index"].as_u64().is_some(), "{dead}");
    assert!(dead["lag"].as_u64().is_some(), "{dead}");
    let (code, table, err) = cli(&keys, &["ctl", "--cluster", &admin, "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("stale"), "{table}");

    // `ctl health` asks every member itself: the dead one answers nothing (exit 1), the two
    // others are live and ready (they still make a quorum).
    let health = cli_until(
        &keys,
        &[
            "ctl",
            "--cluster",
            &admin,
            "--json",
            "--timeout",
            "5s",
            "health",
        ],
        "a health table",
        |o| json(o)["members"].as_array().is_some_and(|m| m.len() == 3),
    );
    assert_eq!(health.code, 1, "{}", health.stderr);
    assert!(
        health.stderr.contains("1 of 3 members unhealthy"),
        "{}",
        health.stderr
    );
    let rows = json(&health);
    for id in ids.iter().copied() {
        let row = member(&rows, id);
        let up = id != victim;
        assert_eq!(row["live"], up, "{rows}");
        assert_eq!(row["ready"], up, "{rows}");
    }
    assert_eq!(rows["view"]["quorum_available"], true, "{rows}");
    // The metrics of the member the CLI talks to, without the HTTP listener.
    let (code, metrics, err) = cli(&keys, &["ctl", "--cluster", &admin, "metrics"]);
    assert_eq!(code, 0, "{err}");
    assert!(metrics.contains("iroh_raft_has_leader 1"), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    // Two members that never answer at the head of the ticket, the dead one after them: a
    // status and a write within 3 s each.
    let like: Ticket = admin.parse().unwrap();
    let ((_hole1, a1), (_hole2, a2)) = (black_hole(), black_hole());
    let members = [vec![a1, a2], like.members.clone()].concat();
    let signer = c.dirs[at(leader)].path().to_owned();
    let dead_first = ticket_from(&signer, &like, members, TicketRole::Admin, 3600);
    for args in [&["status"][..], &["put", "dead-first", "ok"][..]] {
        let command = if args[0] == "status" { "ctl" } else { "kv" };
        let mut all = vec![command, "--cluster", &dead_first, "--timeout", "3s"];
        all.extend_from_slice(args);
        let (code, _, err) = cli(&keys, &all);
        assert_eq!(code, 0, "{all:?}: {err}");
    }

    // The leader pauses: one member dead, one paused, nothing can commit.
    signal(c.proc(leader), "STOP");
    let kv = |ticket: &str, timeout: &str, args: &[&str]| {
        let mut all = vec!["kv", "--cluster", ticket, "--timeout", timeout];
        all.extend_from_slice(args);
        cli(&keys, &all)
    };
    // A write reaches the live follower, which forwards it to the paused leader: it may be
    // applied once the leader resumes, so its outcome is unknown (1), never "unreachable" (4).
    let (code, _, err) = kv(&admin, "2s", &["put", "paused", "yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("outcome unknown") || err.contains("Unavailable"),
        "{err}"
    );
    // A read gets no answer in time: 1 (it has no effect), not 4, and never a stale "not found".
    let (code, _, err) = kv(&admin, "2s", &["get", "paused"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        !err.contains("not found"),
        "a read answered without the leader: {err}"
    );
    // Only the paused leader in the ticket: no member admits the CLI, nothing is sent: 4.
    let only_leader: Vec<_> = like
        .members
        .iter()
        .filter(|m| m.id == c.proc_endpoint(leader))
        .cloned()
        .collect();
    let alone = ticket_from(&signer, &like, only_leader, TicketRole::Admin, 3600);
    let (code, _, err) = kv(&alone, "1s", &["put", "alone", "no"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no member"), "{err}");
    signal(c.proc(leader), "CONT");

    // What became of the write whose outcome was unknown is the cluster's to say.
    let out = cli_until(
        &keys,
        &["kv", "--cluster", &admin, "get", "paused"],
        "a read",
        |o| o.code == 0 || o.stderr.contains("not found"),
    );
    eprintln!(
        "the write reported as outcome unknown was {}",
        if out.code == 0 {
            "applied after all"
        } else {
            "not applied"
        }
    );
    let (code, out, err) = kv(&admin, "10s", &["get", "alone"]);
    assert_eq!(
        (code, out.as_str()),
        (1, ""),
        "the unsent write was applied: {err}"
    );
    assert!(err.contains("not found"), "the read did not answer: {err}");
    c.procs.clear();
}
