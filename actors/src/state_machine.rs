//! The [`StateMachine`] trait: the one piece of the runtime that users write.

use std::{
    io,
    sync::{Arc, Mutex},
};

use serde::{Serialize, de::DeserializeOwned};

/// A deterministic state machine replicated by Raft.
///
/// Every node applies the same commands in the same order, so `apply` must depend on nothing but
/// `self` and the command: no clocks, no randomness, no I/O, no `HashMap` iteration order that
/// leaks into a response. It runs on the node's RaftActor, so it should be quick; reads run there
/// too, as closures over `&self` (see the facade's `query`), which is how a read sees the state
/// without copying it.
///
/// `apply` is synchronous on purpose: an `async` apply would let a slow command stall the
/// consensus loop at an arbitrary point and makes deterministic simulation harder.
///
/// `Command` and `Response` only need serde derives; commands travel between nodes and to disk
/// inside log entries, responses travel to remote clients.
pub trait StateMachine: Send + 'static {
    /// What clients propose.
    type Command: Serialize + DeserializeOwned + Send + 'static;
    /// What a proposer gets back once its command is applied.
    type Response: Serialize + DeserializeOwned + Send + 'static;

    /// Applies one committed command and returns the proposer's response. Domain failures
    /// ("insufficient funds") belong in `Response`, not in a panic.
    fn apply(&mut self, command: Self::Command) -> Self::Response;

    /// A point-in-time view of the state that can be written out while the node goes on
    /// applying (a clone, an `Arc` of a persistent structure, a database snapshot handle).
    type Snapshot: WriteSnapshot;

    /// Captures the state as of the last applied command. It runs on the Raft loop, so it should
    /// be cheap; writing the view out ([`WriteSnapshot::write_to`]) happens on another thread
    /// while the node keeps appending and committing.
    fn snapshot(&self) -> Self::Snapshot;

    /// Replaces the whole state with the one read from `input` (written by the snapshot's
    /// `write_to`). An error leaves the node unable to continue: the snapshot was checksummed
    /// before this is called, so an error here is a bug in the state machine.
    fn restore(&mut self, input: &mut dyn io::Read) -> io::Result<()>;
}

/// Writes a captured state out. The size need not be known in advance: the runtime streams what
/// is written in bounded chunks to disk (and to followers that need it).
pub trait WriteSnapshot: Send + 'static {
    /// Writes the whole captured state to `out`.
    fn write_to(self, out: &mut dyn io::Write) -> io::Result<()>;
}

/// Where a (re)starting RaftActor gets its empty state machine: the instance given at build time
/// for the first start, then the factory (if any) for every restart after a crash.
pub struct StateMachineSource<S> {
    first: Arc<Mutex<Option<S>>>,
    factory: Option<Arc<dyn Fn() -> S + Send + Sync>>,
}

impl<S> Clone for StateMachineSource<S> {
    fn clone(&self) -> Self {
        Self {
            first: self.first.clone(),
            factory: self.factory.clone(),
        }
    }
}

impl<S> std::fmt::Debug for StateMachineSource<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineSource")
            .field("restartable", &self.factory.is_some())
            .finish()
    }
}

impl<S> StateMachineSource<S> {
    /// One instance: the node cannot rebuild its state machine after a RaftActor crash, so a
    /// crash is fatal.
    pub fn instance(sm: S) -> Self {
        Self {
            first: Arc::new(Mutex::new(Some(sm))),
            factory: None,
        }
    }

    /// A factory: every (re)start gets a fresh state machine and replays the log into it.
    pub fn factory(f: impl Fn() -> S + Send + Sync + 'static) -> Self {
        Self {
            first: Arc::new(Mutex::new(None)),
            factory: Some(Arc::new(f)),
        }
    }

    /// Whether a crashed RaftActor can be restarted with a fresh state machine (a factory).
    pub fn restartable(&self) -> bool {
        self.factory.is_some()
    }

    /// The state machine for the next start, if there is one.
    pub fn take(&self) -> Option<S> {
        // The mutex only hands the first instance over once; it is never held across anything.
        let first = self.first.lock().map(|mut g| g.take()).unwrap_or(None);
        first.or_else(|| self.factory.as_ref().map(|f| f()))
    }
}
