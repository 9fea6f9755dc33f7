//! Black-box chaos, as an operator would cause it: five `iroh-raft node` processes with the
//! Production preset (fsync on), three clients putting, compare-and-swapping and reading
//! through the management client, and a nemesis that kills nodes with SIGKILL, pauses the
//! leader with SIGSTOP for longer than an election timeout, and takes a minority and then a
//! majority of the nodes down. The clients' history must be linearizable (the simulation's
//! checker); the final reads come after every write completed, so an acknowledged write that
//! was lost fails the check too. Every node must be running, with no corruption alarm, at the
//! end. `chaos_short` runs four rounds; `chaos_soak` (ignored) runs `CHAOS_ROUNDS` (40).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use iroh_raft::{
    Ticket,
    mgmt::{ClientOptions, IrohRaftManagementClient},
};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    kv_history::{self, History},
    linearizability::{self, Op},
    support::{Cluster, WAIT, client_of, signal, spawn_with},
};

const KEYS: usize = 8;
const CLIENTS: usize = 3;

/// Each client's pause between operations: about 20 a second each, enough to see every fault
/// from many sides, and a history per key small enough to check in seconds (the check's cost
/// grows steeply with the operations per key left in doubt).
const PACE: Duration = Duration::from_millis(50);

/// A client's calls give up after this (a majority down makes writes wait).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn chaos_short() {
    run(4, 0xc4a0_5000);
}

/// `CHAOS_ROUNDS=40 cargo test --release --test processes chaos_soak -- --ignored --nocapture`
/// (`CHAOS_SEED` picks the schedule).
#[test]
#[ignore]
fn chaos_soak() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    run(
        env("CHAOS_ROUNDS", 40) as usize,
        env("CHAOS_SEED", 0xc4a0_5001),
    );
}

fn run(rounds: usize, seed: u64) {
    let mut cluster = Cluster::start_with(5, "production");
    let ticket: Ticket = cluster.admin.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (ticket, history, stop) = (ticket.clone(), history.clone(), stop.clone());
            rt.spawn(client(id, ticket, seed, history, stop))
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..rounds {
        let fault = round % 4;
        eprintln!("chaos round {round}: {}", FAULTS[fault]);
        nemesis(&mut cluster, &rt, &ticket, &mut rng, fault);
        cluster.leader();
    }

    stop.store(true, Ordering::SeqCst);
    let ops: usize = rt.block_on(async {
        let mut ops = 0;
        for c in clients {
            ops += c.await.unwrap();
        }
        ops
    });
    // Every node is still running, and none raised a corruption alarm.
    for p in &mut cluster.procs {
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "node {} exited",
            p.id
        );
    }
    rt.block_on(final_reads(&ticket, &history));
    rt.block_on(no_alarms(&ticket));
    let events = history.events.lock().unwrap().clone();
    eprintln!(
        "chaos: {rounds} rounds, {ops} operations attempted, {} recorded",
        events.len()
    );
    // A history with no acknowledged write is trivially linearizable: the cluster must have
    // served through the faults.
    let acked_writes = events
        .iter()
        .filter(|e| !matches!(e.op, Op::Get) && e.ret.is_some())
        .count();
    assert!(
        acked_writes >= rounds,
        "only {acked_writes} acknowledged writes in {rounds} rounds"
    );
    if let Err(e) = linearizability::check(&events) {
        panic!("the history is not linearizable (seed {seed}): {e}");
    }
}

const FAULTS: [&str; 4] = [
    "SIGKILL one node, restart it",
    "SIGSTOP the leader past an election timeout",
    "a minority (two nodes) down, then back",
    "a majority (three nodes) down, then back",
];

fn nemesis(
    cluster: &mut Cluster,
    rt: &tokio::runtime::Runtime,
    ticket: &Ticket,
    rng: &mut StdRng,
    fault: usize,
) {
    let pick = |rng: &mut StdRng, n: usize| {
        let mut all: Vec<usize> = (0..cluster.procs.len()).collect();
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(all.remove(rng.random_range(0..all.len())));
        }
        out
    };
    let down = |rng: &mut StdRng| Duration::from_millis(rng.random_range(500..2000));
    match fault {
        0 => {
            let victims = pick(rng, 1);
            kill_and_restart(cluster, &victims, down(rng));
        }
        1 => {
            let leader = rt.block_on(leader_of(ticket));
            let p = cluster.proc(leader);
            signal(p, "STOP");
            std::thread::sleep(Duration::from_millis(1500));
            signal(p, "CONT");
        }
        2 => {
            let victims = pick(rng, 2);
            kill_and_restart(cluster, &victims, down(rng));
        }
        _ => {
            let victims = pick(rng, 3);
            kill_and_restart(cluster, &victims, Duration::from_secs(2));
        }
    }
}

/// SIGKILLs the nodes at these positions, keeps them down for `down`, and restarts each from
/// its data dir alone (its address and membership come from there).
fn kill_and_restart(cluster: &mut Cluster, at: &[usize], down: Duration) {
    for &i in at {
        signal(&cluster.procs[i], "KILL");
        cluster.procs[i].child.wait().unwrap();
    }
    std::thread::sleep(down);
    for &i in at {
        cluster.procs[i] = spawn_with(cluster.dirs[i].path(), &[], "production");
    }
}

/// The leader, as some member reports it.
async fn leader_of(ticket: &Ticket) -> u64 {
    let client = client_of(ticket.members.clone(), ticket).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no leader within {WAIT:?}"
        );
        if let Ok(s) = client.status().await
            && s.leader != 0
        {
            client.close().await;
            return s.leader;
        }
        // No leader yet: ask again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One client: random operations on a few keys until told to stop; returns how many it tried.
async fn client(
    id: usize,
    ticket: Ticket,
    seed: u64,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> usize {
    let options = ClientOptions::default().timeout(CALL_TIMEOUT);
    let client = IrohRaftManagementClient::new(ticket.members.clone(), Some(&ticket), options)
        .await
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64 + 1) << 32);
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(PACE).await;
        n += 1;
        let key = format!("k{}", rng.random_range(0..KEYS));
        let value = format!("c{id}-{n}");
        let op = match rng.random_range(0..10) {
            0..=3 => Op::Get,
            4..=7 => Op::Put(value.clone()),
            _ => Op::Cas {
                expected: rng
                    .random_bool(0.5)
                    .then(|| format!("c{}-{}", rng.random_range(0..CLIENTS), n - 1)),
                new: Some(value.clone()),
            },
        };
        kv_history::perform(&client, &history, id, key, op).await;
    }
    client.close().await;
    n
}

/// After every client stopped: one linearizable read of every key, which must see every
/// acknowledged write.
async fn final_reads(ticket: &Ticket, history: &History) {
    let client = client_of(ticket.members.clone(), ticket).await;
    kv_history::final_reads(&client, history, CLIENTS, KEYS).await;
    client.close().await;
}

/// Every node, asked on its own, reports no corruption alarm and is not stopped.
async fn no_alarms(ticket: &Ticket) {
    let client = client_of(ticket.members.clone(), ticket).await;
    let status = client.status().await.expect("the cluster answers");
    client.close().await;
    for member in &status.members {
        let addr = ticket
            .members
            .iter()
            .find(|a| a.id.as_bytes() == &member.key)
            .expect("the ticket names every member");
        // The first call of a client that knows one member goes to that member.
        let client = client_of(vec![addr.clone()], ticket).await;
        let health = client.health().await.expect("every node answers");
        client.close().await;
        assert_eq!(health.node_id, member.id);
        assert!(
            health.data_corruption.is_empty() && health.stopped.is_none(),
            "node {}: {health:?}",
            health.node_id
        );
    }
}
