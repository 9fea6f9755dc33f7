//! The driver is tested by asserting the effects of its Ready rounds, with messages delivered by
//! hand: no actors, no network, no disk.

use raft::eraftpb::{ConfState, Message, MessageType};

use super::{Driver, Effects, InitialLog, ProposeRefused};
use crate::{config::NodeConfig, types::Role};

fn driver(id: u64, voters: &[u64], seed: u64) -> Driver {
    driver_with(NodeConfig::new(id), voters, seed)
}

fn driver_with(mut config: NodeConfig, voters: &[u64], seed: u64) -> Driver {
    config.rng_seed = Some(seed);
    let cs = ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    };
    let log = InitialLog {
        conf_state: cs,
        ..Default::default()
    };
    Driver::new(&config, log, 0).unwrap()
}

/// Runs one Ready round and confirms its persistence at once (an instant disk).
fn round(d: &mut Driver) -> Effects {
    let fx = d.ready().expect("a ready round");
    d.on_persisted(fx.number);
    if let Some(last) = fx.committed.last() {
        d.advance_apply_to(last.index);
    }
    fx
}

#[test]
fn a_single_voter_elects_itself_and_commits_after_persisting() {
    let mut d = driver(1, &[1], 7);
    d.campaign().unwrap();
    let fx = d.ready().unwrap();
    assert_eq!(fx.role_change, Some((Role::Leader, Some(1))));
    let batch = fx
        .persist
        .as_ref()
        .expect("term, vote and the leader's first entry");
    assert!(batch.must_sync);
    assert_eq!(
        batch.hard_state.as_ref().map(|hs| (hs.term, hs.vote)),
        Some((1, 1))
    );
    assert_eq!(
        batch.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1]
    );
    // Nothing is committed before the leader's own write is durable.
    assert!(fx.committed.is_empty());
    d.on_persisted(fx.number);
    let fx = d.ready().unwrap();
    assert_eq!(
        fx.committed.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(
        fx.persist.and_then(|b| b.hard_state).map(|hs| hs.commit),
        Some(1)
    );
}

/// Delivers every message in `msgs` to its driver.
fn deliver(nodes: &mut [Driver], msgs: Vec<Message>) {
    for m in msgs {
        nodes[m.to as usize - 1].step(m).unwrap();
    }
}

/// Runs rounds on every node, delivering all messages, until nothing is left to do.
fn settle(nodes: &mut [Driver]) {
    for _ in 0..50 {
        let mut msgs = Vec::new();
        for d in nodes.iter_mut() {
            while d.has_ready() {
                let fx = round(d);
                msgs.extend(fx.send_now);
                msgs.extend(fx.send_after_persist);
            }
        }
        if msgs.is_empty() {
            return;
        }
        deliver(nodes, msgs);
    }
    panic!("cluster did not settle");
}

#[test]
fn leader_replicates_before_its_own_write_and_followers_ack_after_theirs() {
    let mut nodes: Vec<Driver> = (1..=3).map(|id| driver(id, &[1, 2, 3], id)).collect();
    nodes[0].campaign().unwrap();
    settle(&mut nodes);
    assert_eq!(nodes[0].role(), Role::Leader);
    assert_eq!(nodes[1].leader(), Some(1));

    let (index, term) = nodes[0].propose(vec![1; 16], b"cmd".to_vec()).unwrap();
    let fx = nodes[0].ready().unwrap();
    // The append leaves with the persist batch still in flight (Raft thesis 10.2.1).
    let appends: Vec<u64> = fx
        .send_now
        .iter()
        .filter(|m| m.msg_type == MessageType::MsgAppend)
        .map(|m| m.to)
        .collect();
    assert_eq!(appends, vec![2, 3]);
    assert_eq!(fx.persist.as_ref().unwrap().entries[0].index, index);

    // A follower's acknowledgement waits for its own write.
    let append = fx.send_now.into_iter().find(|m| m.to == 2).unwrap();
    nodes[1].step(append).unwrap();
    let follower = nodes[1].ready().unwrap();
    assert!(follower.send_now.is_empty());
    assert_eq!(follower.persist.as_ref().unwrap().entries[0].term, term);
    assert_eq!(follower.send_after_persist.len(), 1);
    assert_eq!(
        follower.send_after_persist[0].msg_type,
        MessageType::MsgAppendResponse
    );

    // Once the follower's write and the leader's are durable, the entry commits.
    nodes[1].on_persisted(follower.number);
    nodes[0].on_persisted(fx.number);
    deliver(&mut nodes, follower.send_after_persist);
    let fx = round(&mut nodes[0]);
    assert_eq!(fx.committed.last().map(|e| e.index), Some(index));
}

#[test]
fn followers_refuse_proposals_with_a_leader_hint() {
    let mut nodes: Vec<Driver> = (1..=3).map(|id| driver(id, &[1, 2, 3], id)).collect();
    assert_eq!(
        nodes[1].propose(vec![], vec![1]),
        Err(ProposeRefused::NotLeader(None))
    );
    nodes[0].campaign().unwrap();
    settle(&mut nodes);
    assert_eq!(
        nodes[1].propose(vec![], vec![1]),
        Err(ProposeRefused::NotLeader(Some(1)))
    );
}

#[test]
fn a_lease_read_is_confirmed_without_asking_the_followers() {
    let mut nodes: Vec<Driver> = (1..=3)
        .map(|id| {
            let mut config = NodeConfig::new(id);
            config.lease_reads = true;
            driver_with(config, &[1, 2, 3], id)
        })
        .collect();
    nodes[0].campaign().unwrap();
    settle(&mut nodes);
    nodes[0].read_index(b"lease".to_vec());
    let fx = round(&mut nodes[0]);
    let commit = nodes[0].status().commit;
    let states: Vec<_> = fx
        .read_states
        .iter()
        .map(|rs| (rs.request_ctx.clone(), rs.index))
        .collect();
    assert_eq!(states, vec![(b"lease".to_vec(), commit)]);
    assert!(fx.send_now.is_empty() && fx.send_after_persist.is_empty());
}

#[test]
fn read_index_is_confirmed_by_a_quorum() {
    let mut nodes: Vec<Driver> = (1..=3).map(|id| driver(id, &[1, 2, 3], id)).collect();
    nodes[0].campaign().unwrap();
    settle(&mut nodes);
    nodes[1].read_index(b"r1".to_vec());
    let mut confirmed = Vec::new();
    for _ in 0..10 {
        let mut msgs = Vec::new();
        for d in nodes.iter_mut() {
            while d.has_ready() {
                let fx = round(d);
                confirmed.extend(
                    fx.read_states
                        .into_iter()
                        .map(|rs| (rs.request_ctx, rs.index)),
                );
                msgs.extend(fx.send_now);
                msgs.extend(fx.send_after_persist);
            }
        }
        deliver(&mut nodes, msgs);
    }
    let commit = nodes[0].status().commit;
    assert_eq!(confirmed, vec![(b"r1".to_vec(), commit)]);
}

#[test]
fn election_jitter_follows_the_seed() {
    let timeouts = |seed: u64| {
        let mut d = driver(1, &[1, 2, 3], seed);
        let mut out = Vec::new();
        for _ in 0..200 {
            d.tick();
            out.push(d.raw.raft.randomized_election_timeout());
        }
        out
    };
    assert_eq!(timeouts(5), timeouts(5));
    assert_ne!(timeouts(5), timeouts(6));
}
