//! Deterministic simulation of real iroh-raft nodes (the same RaftActor, StorageActor, driver
//! and protocol handler as production; only the network and the disk are simulated) on one
//! paused-time tokio thread. One seed fixes every delay, loss, crash and client operation.
//!
//! Each scenario runs many seeds: a fault schedule while clients read and write, with Raft's
//! safety properties checked every 10 ms of virtual time; then the faults stop, the cluster must
//! converge within a bound, and the clients' history must be linearizable.
//!
//! Replay a failing seed: `SIM_SEED=<seed> cargo test --test simulation <scenario> -- --exact
//! --nocapture`. More seeds: `SIM_SEEDS=<n>`. The soak: `cargo test --release --test simulation
//! soak -- --ignored --nocapture` (10,000 seeds).
//!
//! Why not madsim: kameo calls tokio directly (spawn, timers, links), so under `--cfg madsim` it
//! panics with "there is no reactor running"; using madsim would mean forking kameo. Paused tokio
//! time on a current-thread runtime gives the same determinism for our own code, with the
//! simulated network written here.

mod client;
mod cluster;
mod disk;
mod invariants;
mod linearizability;
mod net;

use std::{future::Future, pin::Pin, time::Duration};

use client::Clients;
use cluster::Sim;
use iroh_raft::actors::{
    ChangeMembership, GetMembers, MembershipChange, MembershipRefusal, NodeId, ProposeError, Role,
    StartError, StorageError,
};
use kameo::error::SendError;
use net::{Chaos, fnv};
use rand::Rng;

type Faults = for<'a> fn(&'a mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// What one seed produced; two runs of a seed must produce the same.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    trace: u64,
    ops: usize,
    leader_terms: usize,
    committed: u64,
    reached: u64,
}

struct Scenario {
    name: &'static str,
    nodes: u64,
    clients: usize,
    faults: Faults,
}

/// Seeds each scenario runs in a plain `cargo test` (at least 1,000 fault schedules in all);
/// `SIM_SEEDS` overrides it.
const SEEDS_PER_SCENARIO: u64 = 80;

fn seeds(name: &str) -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_PER_SCENARIO);
    let mut base = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut base, name.as_bytes());
    (0..count).map(|i| base.wrapping_add(i)).collect()
}

fn run_seed(s: &Scenario, seed: u64) -> Outcome {
    if std::env::var_os("SIM_VERBOSE").is_some() {
        eprintln!("{} seed {seed}", s.name);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    match rt.block_on(run(s, seed)) {
        Ok(o) => o,
        Err(e) => panic!(
            "scenario {} failed with seed {seed}: {e}\nreplay: SIM_SEED={seed} cargo test --test simulation {} -- --exact --nocapture",
            s.name, s.name
        ),
    }
}

async fn run(s: &Scenario, seed: u64) -> Result<Outcome, String> {
    let mut sim = Sim::with_spares(seed, s.nodes, SPARES, |_| {}).await;
    sim.converge(Duration::from_secs(10)).await?;
    let clients = (s.clients > 0)
        .then(|| Clients::spawn(sim.handles.clone(), sim.ids.clone(), seed, s.clients, 3));
    (s.faults)(&mut sim).await?;
    let history = match clients {
        Some(c) => Some(c.stop().await),
        None => None,
    };
    // The faults stop: heal, resume, restart; the cluster must then converge.
    sim.net.heal_all();
    sim.net.set_chaos(Chaos::calm());
    for id in sim.ids.clone() {
        sim.net.set_paused(id, false);
    }
    sim.restart_all().await;
    sim.converge(Duration::from_secs(30)).await?;
    let mut trace = sim.net.trace();
    let mut ops = 0;
    if let Some(history) = history {
        let events = history.events.lock().unwrap().clone();
        ops = events.len();
        linearizability::check(&events)?;
        for e in &events {
            fnv(&mut trace, format!("{e:?}").as_bytes());
        }
    }
    let outcome = Outcome {
        trace,
        ops,
        leader_terms: sim.leader_terms(),
        committed: sim.committed_index(),
        reached: sim.reached,
    };
    sim.shutdown().await;
    Ok(outcome)
}

fn run_scenario(s: Scenario) {
    let seeds = seeds(s.name);
    let (mut ops, mut terms, mut reached) = (0, 0, 0);
    for &seed in &seeds {
        let o = run_seed(&s, seed);
        ops += o.ops;
        terms += o.leader_terms;
        reached += o.reached;
    }
    eprintln!(
        "{}: {} seeds, {ops} client operations checked, {terms} leader terms, {reached} times \
         its faults reached their point",
        s.name,
        seeds.len()
    );
    // Scenarios whose fault may find nothing to act on (no value on disk yet, leadership moved)
    // must still act on most seeds: a scenario that never reached its point would pass while
    // checking nothing.
    if let Some(share) = must_reach(s.name)
        && seeds.len() >= 20
    {
        assert!(
            reached as f64 >= share * seeds.len() as f64,
            "{}: its faults reached their point in only {reached} of {} seeds",
            s.name,
            seeds.len()
        );
    }
}

/// The share of seeds in which a scenario's faults must reach their point.
fn must_reach(name: &str) -> Option<f64> {
    match name {
        // A stored value damaged and refused at restart.
        "disk_corruption_is_refused_never_served" => Some(0.25),
        // Both phases of silent links run to their check.
        "silent_link_is_redialled" => Some(0.5),
        _ => None,
    }
}

async fn leader(sim: &Sim) -> Option<NodeId> {
    sim.views()
        .await
        .into_iter()
        .filter(|(_, _, v)| v.status.role == Role::Leader)
        .max_by_key(|(_, _, v)| v.status.term)
        .map(|(id, _, _)| id)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Identities beyond the founders that a scenario may bring in.
const SPARES: u64 = 2;

/// Proposes a membership change through whichever node leads, retrying through faults for up
/// to 20 s of virtual time. `done` recognises a refusal that means an earlier attempt already
/// went through. Returns whether the change is known applied.
async fn change_membership(
    sim: &mut Sim,
    change: MembershipChange,
    max_lag: Option<u64>,
    done: fn(&MembershipRefusal) -> bool,
) -> Result<bool, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if let Some(l) = leader(sim).await {
            let node = sim.handles.lock().unwrap().get(&l).cloned();
            if let Some(node) = node {
                let asked = node
                    .raft
                    .ask(ChangeMembership {
                        change: change.clone(),
                        max_lag,
                    })
                    .reply_timeout(Duration::from_secs(1))
                    .await;
                match asked {
                    Ok(_) => return Ok(true),
                    Err(SendError::HandlerError(ProposeError::Membership(r))) if done(&r) => {
                        return Ok(true);
                    }
                    _ => {}
                }
            }
        }
        sim.run_for(ms(50)).await?;
    }
    Ok(false)
}

/// After the faults: the membership the leader applied decides who is checked from now on.
/// Nodes it removed, and spares it never added, are retired.
async fn settle_membership(sim: &mut Sim) -> Result<(), String> {
    sim.net.heal_all();
    sim.net.set_chaos(Chaos::calm());
    sim.restart_all().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(l) = leader(sim).await {
            let node = sim.handles.lock().unwrap().get(&l).cloned();
            if let Some(node) = node
                && let Ok(view) = node.raft.ask(GetMembers).await
                && view
                    .members
                    .iter()
                    .all(|m| m.role != iroh_raft::MemberRole::Outgoing)
                && let Ok(status) = node.raft.ask(iroh_raft::actors::GetStatus).await
                && status.applied_index == status.commit_index
            {
                let members: Vec<NodeId> = view.members.iter().map(|m| m.node_id).collect();
                if std::env::var_os("SIM_VERBOSE").is_some() {
                    eprintln!(
                        "membership settled: {members:?} (checked before: {:?})",
                        sim.ids
                    );
                }
                for id in sim.ids.clone() {
                    if !members.contains(&id) {
                        sim.retire(id);
                    }
                }
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err("membership did not settle".into());
        }
        sim.run_for(ms(50)).await?;
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

fn initial_election_faults(
    sim: &mut Sim,
) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move { sim.run_for(ms(1000)).await })
}

#[test]
fn initial_election() {
    run_scenario(Scenario {
        name: "initial_election",
        nodes: 3,
        clients: 3,
        faults: initial_election_faults,
    });
}

fn leader_crash_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        for _ in 0..3 {
            sim.run_for(ms(200)).await?;
            let Some(l) = leader(sim).await else { continue };
            sim.crash(l);
            let down = sim.rng.random_range(100..600);
            sim.run_for(ms(down)).await?;
            sim.start(l).await;
        }
        sim.run_for(ms(300)).await
    })
}

#[test]
fn re_election_after_leader_crash() {
    run_scenario(Scenario {
        name: "re_election_after_leader_crash",
        nodes: 3,
        clients: 3,
        faults: leader_crash_faults,
    });
}

fn old_leader_rejoins_faults(
    sim: &mut Sim,
) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        sim.run_for(ms(200)).await?;
        if let Some(l) = leader(sim).await {
            let ids = sim.ids.clone();
            sim.net.isolate(l, &ids);
            sim.run_for(ms(800)).await?;
            sim.net.heal_all();
        }
        sim.run_for(ms(500)).await
    })
}

#[test]
fn partitioned_old_leader_rejoins() {
    run_scenario(Scenario {
        name: "partitioned_old_leader_rejoins",
        nodes: 3,
        clients: 3,
        faults: old_leader_rejoins_faults,
    });
}

fn minority_leader_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        sim.run_for(ms(200)).await?;
        let Some(l) = leader(sim).await else {
            return sim.run_for(ms(500)).await;
        };
        // The leader and one follower on one side, the other three on the other.
        let buddy = *sim.ids.iter().find(|&&id| id != l).unwrap();
        let minority = [l, buddy];
        for &a in &minority {
            for &b in sim.ids.iter().filter(|id| !minority.contains(id)) {
                sim.net.cut(a, b);
                sim.net.cut(b, a);
            }
        }
        sim.run_for(ms(1200)).await?;
        sim.net.heal_all();
        sim.run_for(ms(500)).await
    })
}

#[test]
fn leader_isolated_in_a_minority() {
    run_scenario(Scenario {
        name: "leader_isolated_in_a_minority",
        nodes: 5,
        clients: 3,
        faults: minority_leader_faults,
    });
}

fn one_way_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        sim.run_for(ms(200)).await?;
        let Some(l) = leader(sim).await else {
            return sim.run_for(ms(500)).await;
        };
        let outbound = sim.rng.random_bool(0.5);
        for &other in sim.ids.clone().iter().filter(|&&o| o != l) {
            if outbound {
                sim.net.cut(l, other);
            } else {
                sim.net.cut(other, l);
            }
        }
        sim.run_for(ms(1000)).await?;
        sim.net.heal_all();
        sim.run_for(ms(500)).await
    })
}

#[test]
fn one_way_isolation() {
    run_scenario(Scenario {
        name: "one_way_isolation",
        nodes: 3,
        clients: 3,
        faults: one_way_faults,
    });
}

/// The leader's view of how far `follower`'s log matches its own, and its commit index.
async fn match_of(sim: &Sim, leader: NodeId, follower: NodeId) -> Option<(u64, u64)> {
    let node = sim.handles.lock().unwrap().get(&leader).cloned()?;
    let view = node.raft.ask(GetMembers).await.ok()?;
    let status = node.raft.ask(iroh_raft::actors::GetStatus).await.ok()?;
    let matched = view.matched.iter().find(|(id, _)| *id == follower)?.1;
    Some((matched, status.commit_index))
}

/// The nodes other than `l`, in a random order.
fn others_of(sim: &mut Sim, l: NodeId) -> Vec<NodeId> {
    let mut others: Vec<NodeId> = sim.ids.iter().copied().filter(|&o| o != l).collect();
    if sim.rng.random_bool(0.5) {
        others.reverse();
    }
    others
}

/// Connections go silent: they lose everything, and their sender does not know (a QUIC
/// connection to a peer's previous process). First a follower's connection to the leader: the
/// follower hears the leader and never campaigns, so only the leader sees the silence; it closes
/// its own connection with `NoAnswer` and the follower, told so, redials: the leader must hear
/// the follower's log advance again. Then one follower's connection to the other, and the leader
/// crashes: the survivors elect only once the candidate, hearing no answers, redials.
fn silent_link_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        sim.run_for(ms(200)).await?;
        let Some(l) = leader(sim).await else {
            return sim.run_for(ms(500)).await;
        };
        let others = others_of(sim, l);
        sim.net.silence(others[0], l);
        sim.run_for(ms(100)).await?;
        let target = match match_of(sim, l, others[0]).await {
            Some((_, commit)) => commit,
            None => return sim.run_for(ms(500)).await, // leadership moved meanwhile
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut caught_up = false;
        loop {
            sim.run_for(ms(50)).await?;
            match match_of(sim, l, others[0]).await {
                Some((matched, _)) if matched >= target => {
                    caught_up = true;
                    break;
                }
                Some(_) if tokio::time::Instant::now() > deadline => {
                    return Err(format!(
                        "leader {l} has not heard follower {} catch up to {target} within 3 s \
                         of the follower's link to it going silent",
                        others[0]
                    ));
                }
                Some(_) => {}
                None => break, // leadership moved: the silence was noticed another way
            }
        }
        let Some(l) = leader(sim).await else {
            return sim.run_for(ms(500)).await;
        };
        let others = others_of(sim, l);
        sim.net.silence(others[0], others[1]);
        sim.crash(l);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            sim.run_for(ms(50)).await?;
            if sim.leader_of_running().await.is_some() {
                sim.reached += u64::from(caught_up);
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "no leader among {others:?} 5 s after leader {l} crashed, with the link {} -> {} silent",
                    others[0], others[1]
                ));
            }
        }
        sim.run_for(ms(300)).await?;
        sim.start(l).await;
        sim.run_for(ms(300)).await
    })
}

#[test]
fn silent_link_is_redialled() {
    run_scenario(Scenario {
        name: "silent_link_is_redialled",
        nodes: 3,
        clients: 3,
        faults: silent_link_faults,
    });
}

fn figure_8_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        sim.net.set_chaos(Chaos::unreliable());
        for _ in 0..8 {
            // Let clients propose to the leader, then crash it before it can finish.
            let t = sim.rng.random_range(20..120);
            sim.run_for(ms(t)).await?;
            if let Some(l) = leader(sim).await {
                sim.crash(l);
                let down = sim.rng.random_range(50..300);
                sim.run_for(ms(down)).await?;
                sim.start(l).await;
            }
        }
        sim.run_for(ms(300)).await
    })
}

#[test]
fn figure_8() {
    run_scenario(Scenario {
        name: "figure_8",
        nodes: 5,
        clients: 3,
        faults: figure_8_faults,
    });
}

fn divergent_tail_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        sim.run_for(ms(200)).await?;
        let Some(l) = leader(sim).await else {
            return sim.run_for(ms(500)).await;
        };
        // The old leader keeps appending what clients send it, uncommitted, while the others
        // elect a new leader and commit far past the compaction window.
        let ids = sim.ids.clone();
        sim.net.isolate(l, &ids);
        sim.run_for(ms(2500)).await?;
        sim.net.heal_all();
        sim.run_for(ms(800)).await
    })
}

#[test]
fn follower_far_behind_with_a_divergent_tail() {
    run_scenario(Scenario {
        name: "follower_far_behind_with_a_divergent_tail",
        nodes: 3,
        clients: 4,
        faults: divergent_tail_faults,
    });
}

fn storm_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        sim.net.set_chaos(Chaos::unreliable());
        for _ in 0..10 {
            let id = sim.random_node();
            if sim.is_running(id) {
                sim.crash(id);
            } else {
                sim.start(id).await;
            }
            let t = sim.rng.random_range(20..250);
            sim.run_for(ms(t)).await?;
        }
        sim.run_for(ms(200)).await
    })
}

#[test]
fn crash_restart_storm() {
    run_scenario(Scenario {
        name: "crash_restart_storm",
        nodes: 5,
        clients: 3,
        faults: storm_faults,
    });
}

fn pause_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        for _ in 0..2 {
            sim.run_for(ms(200)).await?;
            let Some(l) = leader(sim).await else { continue };
            // Longer than an election timeout: the others elect a new leader meanwhile; the old
            // one resumes believing it still leads (the lease-read trap).
            sim.net.set_paused(l, true);
            sim.run_for(ms(600)).await?;
            sim.net.set_paused(l, false);
        }
        sim.run_for(ms(300)).await
    })
}

#[test]
fn process_pause_longer_than_an_election_timeout() {
    run_scenario(Scenario {
        name: "process_pause_longer_than_an_election_timeout",
        nodes: 3,
        clients: 3,
        faults: pause_faults,
    });
}

fn snapshot_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        sim.net.set_chaos(Chaos::unreliable());
        for _ in 0..3 {
            // A follower down long enough that the leader compacts past it (64-entry snapshots).
            let Some(l) = leader(sim).await else {
                sim.run_for(ms(200)).await?;
                continue;
            };
            let victim = *sim.ids.iter().find(|&&id| id != l).unwrap();
            sim.crash(victim);
            let t = sim.rng.random_range(600..1500);
            sim.run_for(ms(t)).await?;
            sim.start(victim).await;
            sim.run_for(ms(400)).await?;
        }
        Ok(())
    })
}

#[test]
fn snapshot_install_under_faults() {
    run_scenario(Scenario {
        name: "snapshot_install_under_faults",
        nodes: 3,
        clients: 4,
        faults: snapshot_faults,
    });
}

fn disk_failure_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        sim.run_for(ms(200)).await?;
        let victim = sim.random_node();
        sim.fail_disk(victim);
        sim.run_for(ms(800)).await?;
        // The dead node comes back on a replaced disk holding what was synced.
        sim.replace_failed_disks(&[victim]).await;
        sim.run_for(ms(500)).await
    })
}

#[test]
fn disk_failure_and_replacement() {
    run_scenario(Scenario {
        name: "disk_failure_and_replacement",
        nodes: 3,
        clients: 3,
        faults: disk_failure_faults,
    });
}

fn disk_corruption_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        sim.run_for(ms(300)).await?;
        // Any node, the leader included: a digit of a stored value changed while it was down.
        let victim = sim.random_node();
        if !sim.crash_and_damage(victim) {
            return sim.run_for(ms(300)).await;
        }
        sim.run_for(ms(100)).await?;
        let started = sim.try_start(victim).await;
        if std::env::var_os("SIM_VERBOSE").is_some() {
            eprintln!("node {victim} damaged; start: {started:?}");
        }
        match started {
            // The damage hit a stale copy in a free page: the node serves, and every invariant
            // (committed entries never differ between nodes) is checked on it as before.
            Ok(()) => {}
            // Damage it holds is refused with a typed corruption, never served or skipped; the
            // node stays down and the others carry on.
            Err(StartError::Storage(e)) if matches!(*e, StorageError::Corrupt(_)) => {
                sim.retire(victim);
                sim.reached += 1;
            }
            Err(e) => {
                return Err(format!(
                    "node {victim} refused to start for another reason: {e}"
                ));
            }
        }
        sim.run_for(ms(500)).await
    })
}

#[test]
fn disk_corruption_is_refused_never_served() {
    run_scenario(Scenario {
        name: "disk_corruption_is_refused_never_served",
        nodes: 3,
        clients: 3,
        faults: disk_corruption_faults,
    });
}

fn idle_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let terms = sim.leader_terms();
        let before = sim.net.raft_frames();
        sim.run_for(ms(2000)).await?;
        let frames = sim.net.raft_frames() - before;
        // Heartbeats only: every 10 ms the leader sends one to each follower and gets an answer.
        let budget = 2000 / 10 * 2 * (sim.ids.len() as u64 - 1);
        if frames > budget * 3 / 2 {
            return Err(format!(
                "idle cluster sent {frames} Raft frames in 2 s, budget {budget}"
            ));
        }
        if sim.leader_terms() != terms {
            return Err("an idle cluster held an election".into());
        }
        Ok(())
    })
}

fn churn_faults(sim: &mut Sim) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        sim.net.set_chaos(Chaos::unreliable());
        // Grow: node 4 joins as a learner and is promoted once within 32 entries.
        sim.join(4).await;
        let addr = sim.addr(4);
        let learner = MembershipChange::AddLearner { id: 4, addr };
        if change_membership(sim, learner, None, |_| false).await? {
            let promote = MembershipChange::Promote { id: 4 };
            change_membership(sim, promote, Some(32), |r| {
                matches!(r, MembershipRefusal::AlreadyVoter(_))
            })
            .await?;
        }
        // A member crashes and comes back meanwhile.
        let bounce = sim.random_node();
        sim.crash(bounce);
        let t = sim.rng.random_range(100..400);
        sim.run_for(ms(t)).await?;
        sim.start(bounce).await;
        // Shrink: remove any voter, the leader included (raft-level: no handover first).
        let victim = sim.random_node();
        let remove = MembershipChange::Remove { id: victim };
        if change_membership(sim, remove, None, |r| {
            matches!(r, MembershipRefusal::NotAMember(_))
        })
        .await?
        {
            sim.retire(victim);
        }
        // Replace a voter by node 5 in one joint step.
        sim.join(5).await;
        let old = sim.random_node();
        if old != 5 {
            let addr = sim.addr(5);
            let replace = MembershipChange::Replace { old, id: 5, addr };
            if change_membership(sim, replace, None, |_| false).await? {
                sim.retire(old);
            }
        }
        sim.run_for(ms(300)).await?;
        settle_membership(sim).await
    })
}

#[test]
fn membership_churn_under_faults() {
    run_scenario(Scenario {
        name: "membership_churn_under_faults",
        nodes: 3,
        clients: 3,
        faults: churn_faults,
    });
}

#[test]
fn idle_cluster_message_budget() {
    run_scenario(Scenario {
        name: "idle_cluster_message_budget",
        nodes: 3,
        clients: 0,
        faults: idle_faults,
    });
}

/// Two runs of a seed give the same trace: every frame, every operation and its result.
#[test]
fn a_seed_replays_identically() {
    for (s, seed) in [
        (
            Scenario {
                name: "crash_restart_storm",
                nodes: 5,
                clients: 3,
                faults: storm_faults,
            },
            11,
        ),
        (
            Scenario {
                name: "figure_8",
                nodes: 5,
                clients: 3,
                faults: figure_8_faults,
            },
            12,
        ),
        (
            Scenario {
                name: "snapshot_install_under_faults",
                nodes: 3,
                clients: 4,
                faults: snapshot_faults,
            },
            13,
        ),
    ] {
        let a = run_seed(&s, seed);
        let b = run_seed(&s, seed);
        assert_eq!(a, b, "{} seed {seed} did not replay identically", s.name);
    }
}

/// 10,000 seeds across the scenarios: `cargo test --release --test simulation soak -- --ignored`.
#[test]
#[ignore]
fn soak() {
    let all: Vec<(&str, u64, usize, Faults)> = vec![
        ("initial_election", 3, 3, initial_election_faults),
        ("re_election_after_leader_crash", 3, 3, leader_crash_faults),
        (
            "partitioned_old_leader_rejoins",
            3,
            3,
            old_leader_rejoins_faults,
        ),
        (
            "leader_isolated_in_a_minority",
            5,
            3,
            minority_leader_faults,
        ),
        ("one_way_isolation", 3, 3, one_way_faults),
        ("silent_link_is_redialled", 3, 3, silent_link_faults),
        ("figure_8", 5, 3, figure_8_faults),
        (
            "follower_far_behind_with_a_divergent_tail",
            3,
            4,
            divergent_tail_faults,
        ),
        ("crash_restart_storm", 5, 3, storm_faults),
        (
            "process_pause_longer_than_an_election_timeout",
            3,
            3,
            pause_faults,
        ),
        ("snapshot_install_under_faults", 3, 4, snapshot_faults),
        ("disk_failure_and_replacement", 3, 3, disk_failure_faults),
        (
            "disk_corruption_is_refused_never_served",
            3,
            3,
            disk_corruption_faults,
        ),
    ];
    let total: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    for i in 0..total {
        let (name, nodes, clients, faults) = all[(i as usize) % all.len()];
        let seed = 0x5eed_0000_0000 + i;
        run_seed(
            &Scenario {
                name,
                nodes,
                clients,
                faults,
            },
            seed,
        );
        if i % 100 == 99 {
            eprintln!("soak: {} seeds done", i + 1);
        }
    }
}

/// Found by the soak (figure_8, seed 104372000260156): proposal ids restarted at 1 with every
/// incarnation of a node, so an entry proposed before a crash and committed after the restart
/// answered the new incarnation's proposal with the same id — a client's put on one key got the
/// response of a put on another. Proposal identities now carry a durably counted incarnation.
#[test]
fn regression_proposal_ids_reused_across_restarts() {
    let s = Scenario {
        name: "figure_8",
        nodes: 5,
        clients: 3,
        faults: figure_8_faults,
    };
    run_seed(&s, 104_372_000_260_156);
}
