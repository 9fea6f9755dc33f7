//! A partition at the IP level: five `iroh-raft node` processes (Production preset, fsync on),
//! each on a host of its own with 5 ms links, and clients on a sixth host. The leader and one
//! follower are cut off from the other three by iptables rules in the router. The old leader
//! must step down (check-quorum), the three must elect a leader of their own and serve, every
//! write sent to the old leader meanwhile must fail or be reported unknown (none may be
//! acknowledged while it is cut off), and after healing every node converges. The clients'
//! history is checked with the simulation's linearizability checker, final reads included, so
//! an acknowledged write that was lost fails the check too.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use iroh::EndpointAddr;
use iroh_raft::{
    Ticket,
    mgmt::{ClientOptions, IrohRaftManagementClient},
};

use crate::{
    kv_history::{self, History},
    lab::{Host, Lab, Link},
    linearizability::{self, Event, Op},
    nodes::{NetCluster, WAIT, block_on_in, status_of},
};

const KEYS: usize = 6;
/// Clients that follow the leader, and one more that only ever talks to the first leader.
const CLIENTS: usize = 3;
const PINNED: usize = CLIENTS;
const PACE: Duration = Duration::from_millis(40);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The Production preset's election timeout.
const ELECTION: Duration = Duration::from_millis(700);

#[test]
fn a_leader_cut_off_in_a_minority_steps_down_and_nothing_acknowledged_is_lost() {
    let mut lab = Lab::new();
    let hosts: Vec<Host> = (1..=5).map(|i| lab.host(&format!("n{i}"))).collect();
    let client_host = lab.host("client");
    lab.set_all_links(Link {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(1),
        loss: 0.0,
    });
    let cluster = NetCluster::start(&hosts, &["--preset".into(), "production".into()]);
    let ticket = cluster.admin.clone();
    let addr_of = |id: u64| cluster.node(id).addr();

    let leader = wait_leader(
        &client_host,
        &cluster,
        &cluster.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
    );
    let old = cluster.node(leader);
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let minority = [old.id, follower.id];
    let majority: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| !minority.contains(id))
        .collect();
    eprintln!("leader {leader}; cutting off {minority:?} from {majority:?}");

    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let cut_at = Arc::new(AtomicU64::new(u64::MAX));
    let healed_at = Arc::new(AtomicU64::new(u64::MAX));
    let workers = {
        let (history, stop, ticket) = (history.clone(), stop.clone(), ticket.clone());
        let old_addr = addr_of(leader);
        client_host.spawn_in(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for id in 0..=CLIENTS {
                    let pinned = (id == PINNED).then(|| old_addr.clone());
                    tasks.push(tokio::spawn(client(
                        id,
                        ticket.clone(),
                        pinned,
                        history.clone(),
                        stop.clone(),
                    )));
                }
                let mut ops = 0;
                for t in tasks {
                    ops += t.await.unwrap();
                }
                ops
            })
        })
    };
    let acked = |history: &History| {
        history
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| !matches!(e.op, Op::Get) && e.ret.is_some())
            .count()
    };
    wait_until("writes acknowledged before the partition", || {
        acked(&history) >= 10
    });

    // Cut the leader and one follower off from the other three.
    let side =
        |ids: &[u64]| -> Vec<&Host> { ids.iter().map(|id| &cluster.node(*id).host).collect() };
    cut_at.store(history.tick(), Ordering::SeqCst);
    let cut = Instant::now();
    lab.partition(&side(&minority), &side(&majority));

    // The old leader steps down by itself: it no longer hears from a majority.
    let stepped_down = wait_for(&format!("node {leader} to step down"), || {
        status_of(
            &client_host,
            &ticket,
            addr_of(leader),
            Duration::from_secs(1),
        )
        .is_some_and(|s| s.role != "leader")
    });
    let step_down = cut.elapsed();
    // The majority elects a leader of its own and serves writes.
    let new_leader = wait_leader(&client_host, &cluster, &majority);
    let elected = cut.elapsed();
    assert!(majority.contains(&new_leader));
    let before = acked(&history);
    wait_until("writes acknowledged by the majority's leader", || {
        acked(&history) >= before + 10
    });
    eprintln!(
        "partition: old leader stepped down after {step_down:?} (election timeout {ELECTION:?}), \
         node {new_leader} elected after {elected:?}"
    );
    let _ = stepped_down;

    // Heal: every node follows one leader, the clients go on, and once they stop every node
    // applies the same entries.
    healed_at.store(history.tick(), Ordering::SeqCst);
    lab.heal();
    let all: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let statuses = || -> Option<Vec<_>> {
        all.iter()
            .map(|id| status_of(&client_host, &ticket, addr_of(*id), Duration::from_secs(1)))
            .collect()
    };
    wait_for("every node to follow one leader after healing", || {
        statuses().is_some_and(|s| s[0].leader != 0 && s.iter().all(|x| x.leader == s[0].leader))
    });
    let before = acked(&history);
    wait_until("writes acknowledged after healing", || {
        acked(&history) >= before + 5
    });
    stop.store(true, Ordering::SeqCst);
    let ops = workers.join().unwrap();
    wait_for("every node to apply the same entries", || {
        statuses().is_some_and(|s| s.iter().all(|x| x.applied_index == s[0].applied_index))
    });
    let history_for_reads = history.clone();
    let ticket_for_reads = ticket.clone();
    block_on_in(&client_host, move || async move {
        final_reads(&ticket_for_reads, &history_for_reads).await
    });
    let events = history.events.lock().unwrap().clone();

    // No write sent to the cut-off leader was acknowledged while it was cut off.
    let (cut, healed) = (
        cut_at.load(Ordering::SeqCst),
        healed_at.load(Ordering::SeqCst),
    );
    let acked_while_cut: Vec<&Event> = events
        .iter()
        .filter(|e| e.client == PINNED && !matches!(e.op, Op::Get))
        .filter(|e| e.call > cut && e.ret.is_some_and(|r| r < healed))
        .collect();
    assert!(
        acked_while_cut.is_empty(),
        "writes acknowledged by a leader cut off in a minority: {acked_while_cut:?}"
    );
    let pinned_tried = events
        .iter()
        .filter(|e| e.client == PINNED && e.call > cut && e.call < healed)
        .count();
    eprintln!(
        "partition: {ops} operations attempted, {} recorded, {} acknowledged writes, \
         {pinned_tried} calls to the cut-off leader",
        events.len(),
        acked(&history)
    );
    if let Err(e) = linearizability::check(&events) {
        panic!("the history is not linearizable: {e}");
    }
    drop(cluster);
    drop(lab);
}

/// Waits until `cond` holds, or fails after [`WAIT`].
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    wait_for(what, cond);
}

fn wait_for(what: &str, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// A leader among `among` that a member of `among` reports.
fn wait_leader(host: &Host, cluster: &NetCluster, among: &[u64]) -> u64 {
    let start = Instant::now();
    loop {
        for id in among {
            if let Some(s) = status_of(
                host,
                &cluster.admin,
                cluster.node(*id).addr(),
                Duration::from_secs(1),
            ) && among.contains(&s.leader)
                && s.role == "leader"
            {
                return s.leader;
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "no leader among {among:?}; logs:\n{}",
            cluster.log_tails(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One client: puts, compare-and-swaps and linearizable reads on a few keys until told to
/// stop. `pinned`: talk to that member only (the first leader), never follow the leader.
async fn client(
    id: usize,
    ticket: Ticket,
    pinned: Option<EndpointAddr>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> usize {
    let options = ClientOptions::default().timeout(CALL_TIMEOUT);
    let (members, options) = match pinned {
        Some(addr) => (vec![addr], options.pinned()),
        None => (ticket.members.clone(), options),
    };
    let client = IrohRaftManagementClient::new(members, Some(&ticket), options)
        .await
        .unwrap();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(PACE).await;
        n += 1;
        let key = format!("k{}", (id * 7 + n) % KEYS);
        let value = format!("c{id}-{n}");
        let op = match n % 5 {
            0 | 1 => Op::Get,
            2 | 3 => Op::Put(value.clone()),
            _ => Op::Cas {
                expected: Some(format!("c{id}-{}", n - 2)),
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
    let options = ClientOptions::default().timeout(WAIT);
    let client = IrohRaftManagementClient::new(ticket.members.clone(), Some(ticket), options)
        .await
        .unwrap();
    kv_history::final_reads(&client, history, CLIENTS + 1, KEYS).await;
    client.close().await;
}
