//! Concurrent clients running put / get / compare-and-swap against random nodes, recording a
//! history for the linearizability checker. Reads are linearizable (ReadIndex). A write whose
//! outcome is unknown (timeout, interruption) is recorded as unknown, never as failed; a write
//! that certainly did not happen (refused before it was appended) is left out.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use iroh_raft::{
    KeyValueStore, KvCommand, KvResponse,
    actors::{LinearizableQuery, Propose, ProposeError},
};
use kameo::error::SendError;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::task::JoinHandle;

use crate::{
    cluster::Handles,
    linearizability::{Event, Op, Output},
};

/// Shared by the clients: one global order of invocations and responses.
#[derive(Default)]
pub struct History {
    pub events: Mutex<Vec<Event>>,
    clock: AtomicU64,
}

impl History {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
}

pub struct Clients {
    pub history: Arc<History>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Clients {
    pub fn spawn(handles: Handles, ids: Vec<u64>, seed: u64, count: usize, keys: usize) -> Self {
        let history = Arc::new(History::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..count)
            .map(|c| {
                let client = Client {
                    id: c,
                    rng: StdRng::seed_from_u64(seed ^ 0xc11e_4700 ^ (c as u64) << 32),
                    handles: handles.clone(),
                    ids: ids.clone(),
                    keys,
                    history: history.clone(),
                    stop: stop.clone(),
                    n: 0,
                };
                tokio::spawn(client.run())
            })
            .collect();
        Self {
            history,
            stop,
            tasks,
        }
    }

    /// Stops the clients after their current operation.
    pub async fn stop(self) -> Arc<History> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        self.history
    }
}

struct Client {
    id: usize,
    rng: StdRng,
    handles: Handles,
    ids: Vec<u64>,
    keys: usize,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    n: u64,
}

impl Client {
    async fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let pause = Duration::from_millis(self.rng.random_range(0..10));
            tokio::time::sleep(pause).await;
            self.one().await;
        }
    }

    async fn one(&mut self) {
        let target = self.ids[self.rng.random_range(0..self.ids.len())];
        let Some(node) = self.handles.lock().unwrap().get(&target).cloned() else {
            return; // that node is down: nothing was invoked
        };
        let key = format!("k{}", self.rng.random_range(0..self.keys));
        self.n += 1;
        let value = format!("c{}-{}", self.id, self.n);
        let op = match self.rng.random_range(0..10) {
            0..=3 => Op::Get,
            4..=7 => Op::Put(value.clone()),
            _ => {
                let expected = (self.rng.random_bool(0.5)).then(|| {
                    format!(
                        "c{}-{}",
                        self.rng.random_range(0..3),
                        self.rng.random_range(1..self.n.max(2))
                    )
                });
                Op::Cas {
                    expected,
                    new: Some(value.clone()),
                }
            }
        };
        let call = self.history.tick();
        let output = match &op {
            Op::Get => {
                let k = key.clone();
                let read = node
                    .raft
                    .ask(LinearizableQuery(move |kv: &KeyValueStore| {
                        kv.get(&k).cloned()
                    }))
                    .reply_timeout(Duration::from_secs(2))
                    .await;
                match read {
                    Ok(v) => Some(Output::Get(v)),
                    Err(_) => None, // a failed read has no effect
                }
            }
            Op::Put(v) => {
                self.write(
                    &node,
                    KvCommand::Set {
                        key: key.clone(),
                        value: v.clone(),
                    },
                    false,
                )
                .await
            }
            Op::Cas { expected, new } => {
                let cmd = KvCommand::CompareAndSwap {
                    key: key.clone(),
                    expected: expected.clone(),
                    new: new.clone(),
                };
                self.write(&node, cmd, true).await
            }
        };
        let Some(output) = output else { return };
        let ret = (output != Output::Unknown).then(|| self.history.tick());
        self.history.events.lock().unwrap().push(Event {
            client: self.id,
            key,
            op,
            call,
            ret,
            output,
        });
    }

    /// `None`: certainly not applied (drop it); `Some(Unknown)`: may or may not have been.
    async fn write(
        &self,
        node: &crate::cluster::KvNode,
        cmd: KvCommand,
        cas: bool,
    ) -> Option<Output> {
        let data = postcard::to_allocvec(&cmd).unwrap();
        let r: Result<KvResponse, SendError<Propose, ProposeError>> = node
            .raft
            .ask(Propose::new(data))
            .reply_timeout(Duration::from_secs(2))
            .await;
        if std::env::var_os("SIM_VERBOSE").is_some() {
            eprintln!(
                "client {} {:?} via node {} -> {:?}",
                self.id,
                cmd,
                node.raft.id(),
                r.as_ref().map_err(|e| format!("{e:?}"))
            );
        }
        match r {
            Ok(resp) if cas => Some(Output::Cas {
                applied: resp.applied,
                previous: resp.previous,
            }),
            Ok(resp) => Some(Output::Put {
                previous: resp.previous,
            }),
            Err(SendError::HandlerError(e)) if e.is_safe_to_retry() => None,
            Err(SendError::ActorNotRunning(_)) => None,
            Err(_) => Some(Output::Unknown),
        }
    }
}
