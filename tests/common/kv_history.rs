//! The clients' shared record for the linearizability checker, and one recorded operation:
//! used by the process chaos test and the real-network partition test.

#![allow(dead_code)]

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use iroh_raft::{
    KvCommand, KvResponse,
    actors::wire::MgmtErrorKind,
    mgmt::{ClientError, IrohRaftManagementClient},
};

use crate::linearizability::{Event, Op, Output};

/// Every operation, ordered by one counter.
#[derive(Default)]
pub struct History {
    clock: AtomicU64,
    pub events: Mutex<Vec<Event>>,
}

impl History {
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
}

/// What an error says about a write: `None` if it certainly did not take effect (nothing was
/// sent, or the node refused it before proposing), else unknown.
pub fn write_outcome(e: &ClientError) -> Option<Output> {
    match e {
        ClientError::Unreachable { .. }
        | ClientError::Refused { .. }
        | ClientError::Forbidden(_)
        | ClientError::TooLarge { .. } => None,
        ClientError::Failed {
            kind:
                MgmtErrorKind::Unavailable
                | MgmtErrorKind::Refused
                | MgmtErrorKind::Malformed
                | MgmtErrorKind::Forbidden,
            ..
        } => None,
        _ => Some(Output::Unknown),
    }
}

/// Runs `op` on `key` through `client` (reads are linearizable) and records it as client
/// `id`'s, unless it certainly had no effect.
pub async fn perform(
    client: &IrohRaftManagementClient,
    history: &History,
    id: usize,
    key: String,
    op: Op,
) {
    let call = history.tick();
    let output = match &op {
        Op::Get => client
            .read::<String, Option<String>>(&key)
            .await
            .ok()
            .map(Output::Get),
        Op::Put(v) => {
            let cmd = KvCommand::Set {
                key: key.clone(),
                value: v.clone(),
            };
            match client.propose::<_, KvResponse>(&cmd).await {
                Ok(r) => Some(Output::Put {
                    previous: r.previous,
                }),
                Err(e) => write_outcome(&e),
            }
        }
        Op::Cas { expected, new } => {
            let cmd = KvCommand::CompareAndSwap {
                key: key.clone(),
                expected: expected.clone(),
                new: new.clone(),
            };
            match client.propose::<_, KvResponse>(&cmd).await {
                Ok(r) => Some(Output::Cas {
                    applied: r.applied,
                    previous: r.previous,
                }),
                Err(e) => write_outcome(&e),
            }
        }
    };
    let Some(output) = output else { return };
    let ret = (output != Output::Unknown).then(|| history.tick());
    history.events.lock().unwrap().push(Event {
        client: id,
        key,
        op,
        call,
        ret,
        output,
    });
}

/// One linearizable read of each key as client `id`, which must succeed (after the faults:
/// they must see every acknowledged write).
pub async fn final_reads(
    client: &IrohRaftManagementClient,
    history: &History,
    id: usize,
    keys: usize,
) {
    for k in 0..keys {
        let key = format!("k{k}");
        let call = history.tick();
        let value = client
            .read::<String, Option<String>>(&key)
            .await
            .expect("the healed cluster serves a linearizable read");
        let ret = history.tick();
        history.events.lock().unwrap().push(Event {
            client: id,
            key,
            op: Op::Get,
            call,
            ret: Some(ret),
            output: Output::Get(value),
        });
    }
}
