//! The RaftActor's persistence part ([`Persistence`]): the bounded queue of persist batches to
//! the StorageActor, the watch on which it confirms them, and the Ready rounds waiting for that
//! confirmation with the messages that may only leave once their round is durable.

use std::{collections::VecDeque, sync::Arc};

use raft::eraftpb::Message;
use tokio::sync::watch;

use crate::{
    error::StorageError,
    storage::{PersistBatch, PersistProgress},
};

/// A Ready round whose persistence is not confirmed yet.
struct InFlight {
    number: u64,
    /// False for a round that wrote nothing: it completes as soon as every earlier one has.
    stored: bool,
    /// Messages that may leave once it is durable.
    messages: Vec<Message>,
}

/// What became of a round handed to [`Persistence::queue`].
pub(super) enum Queued {
    /// Waiting for the StorageActor.
    Waiting,
    /// Nothing to wait for (it wrote nothing and no earlier round is pending): it is durable
    /// now, and these messages may leave.
    Durable(Vec<Message>),
    /// The StorageActor's queue is closed.
    Closed,
}

/// Persist batches out, confirmations in.
pub(super) struct Persistence {
    tx: flume::Sender<PersistBatch>,
    progress: watch::Receiver<PersistProgress>,
    /// The progress watch closed: the StorageActor is gone.
    gone: bool,
    in_flight: VecDeque<InFlight>,
}

impl Persistence {
    pub(super) fn new(
        tx: flume::Sender<PersistBatch>,
        progress: watch::Receiver<PersistProgress>,
    ) -> Self {
        Self {
            tx,
            progress,
            gone: false,
            in_flight: VecDeque::new(),
        }
    }

    /// Queues round `number`'s batch (waiting while the StorageActor is behind: the bounded
    /// queue is where a slow disk pushes back), holding `after` until it is durable.
    pub(super) async fn queue(
        &mut self,
        number: u64,
        batch: Option<PersistBatch>,
        after: Vec<Message>,
    ) -> Queued {
        let stored = batch.is_some();
        if let Some(batch) = batch {
            if self.tx.send_async(batch).await.is_err() {
                return Queued::Closed;
            }
        } else if self.in_flight.is_empty() {
            return Queued::Durable(after);
        }
        self.in_flight.push_back(InFlight {
            number,
            stored,
            messages: after,
        });
        Queued::Waiting
    }

    /// Waits for the StorageActor's next confirmation; `false` once it is gone (then never
    /// again).
    pub(super) async fn changed(&mut self) -> bool {
        if self.gone {
            return std::future::pending().await;
        }
        let ok = self.progress.changed().await.is_ok();
        self.gone = !ok;
        ok
    }

    /// The rounds the latest confirmation completes: the highest such number and the messages
    /// they release, in order; or the storage failure.
    pub(super) fn confirmed(&mut self) -> Result<Option<(u64, Vec<Message>)>, Arc<StorageError>> {
        let (number, failure) = {
            let p = self.progress.borrow_and_update();
            (p.number, p.failure.clone())
        };
        if let Some(e) = failure {
            return Err(e);
        }
        let mut done = None;
        let mut released = Vec::new();
        while let Some(f) = self.in_flight.front() {
            if f.stored && f.number > number {
                break;
            }
            let f = self.in_flight.pop_front().expect("front exists");
            if released.is_empty() {
                released = f.messages;
            } else {
                released.extend(f.messages);
            }
            done = Some(f.number);
        }
        Ok(done.map(|n| (n, released)))
    }
}
