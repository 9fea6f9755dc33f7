//! [`StorageActor`]: owns the [`LogDb`], group-commits persist batches, confirms on a watch.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use kameo::{
    Actor,
    actor::{ActorRef, WeakActorRef},
    error::ActorStopReason,
    mailbox::{MailboxReceiver, Signal},
    message::{Context, Message},
};
use tokio::sync::watch;
use tracing::{Span, debug, error, info_span, warn};

use super::{DbHandle, LogDb, MAX_BATCHES_PER_COMMIT, PersistBatch, Recovered, SnapshotRecord};
use crate::{error::StorageError, metrics::NodeMetrics, trace::TraceContext, types::NodeId};

/// How often the database file's size is read for `iroh_raft_db_size_bytes` (at most).
const DB_SIZE_EVERY: Duration = Duration::from_millis(500);

/// What the StorageActor has made durable so far, published after every commit.
#[derive(Clone, Debug, Default)]
pub struct PersistProgress {
    /// Highest Ready number whose batch is persisted (every lower number is too).
    pub number: u64,
    /// Set once a write failed; the actor accepts no further writes after that.
    pub failure: Option<Arc<StorageError>>,
}

/// What the StorageActor is started (and restarted) with.
#[derive(Debug, Clone)]
pub struct StorageArgs {
    /// The open database.
    pub db: DbHandle,
    /// Persist batches from the RaftActor, in Ready order.
    pub requests: flume::Receiver<PersistBatch>,
    /// Where progress is published.
    pub progress: watch::Sender<PersistProgress>,
    /// Whether batches that need it are fsynced.
    pub fsync: bool,
    /// The node's id, for log spans.
    pub node_id: NodeId,
    /// Where commit durations, batch sizes and the file size are recorded.
    pub metrics: Arc<NodeMetrics>,
}

/// Owns the node's redb database. Persist batches arrive on a flume channel and are written in
/// groups (every batch waiting when a commit starts goes into that commit); control messages
/// (flush) arrive on the kameo mailbox.
#[derive(Debug)]
pub struct StorageActor {
    /// `None` once closed at shutdown.
    db: Option<LogDb>,
    requests: flume::Receiver<PersistBatch>,
    progress: watch::Sender<PersistProgress>,
    fsync: bool,
    failed: bool,
    group: Vec<PersistBatch>,
    span: Span,
    metrics: Arc<NodeMetrics>,
    /// The database file, for its size.
    path: PathBuf,
    node_id: NodeId,
    /// When its size was last read.
    sized_at: Option<Instant>,
}

impl StorageActor {
    fn new(args: StorageArgs) -> Result<Self, StorageError> {
        let path = args.db.path().to_owned();
        Ok(Self {
            db: Some(LogDb::from_handle(args.db)?),
            requests: args.requests,
            progress: args.progress,
            fsync: args.fsync,
            failed: false,
            group: Vec::with_capacity(MAX_BATCHES_PER_COMMIT),
            span: info_span!("storage", node = args.node_id),
            metrics: args.metrics,
            path,
            sized_at: None,
            node_id: args.node_id,
        })
    }

    /// Writes `first` and every batch already queued behind it (up to the group limit) in one
    /// transaction, then publishes the highest Ready number.
    fn write_group(&mut self, first: PersistBatch) {
        self.group.push(first);
        while self.group.len() < MAX_BATCHES_PER_COMMIT {
            match self.requests.try_recv() {
                Ok(batch) => self.group.push(batch),
                Err(_) => break,
            }
        }
        let durable = self.fsync && self.group.iter().any(|b| b.must_sync);
        let number = self.group.last().map_or(0, |b| b.number);
        let entries: usize = self.group.iter().map(|b| b.entries.len()).sum();
        // With the `otel` feature, a commit of traced proposals is a `persist` span linked to
        // each (a root of its own: it serves many proposals).
        let contexts = self.group.iter().flat_map(|b| &b.entries);
        let span = TraceContext::linked_span(
            contexts.map(|e| &e.context[..]),
            || tracing::info_span!(parent: None, "persist", node = self.node_id, entries),
        );
        let _entered = span.as_ref().map(tracing::Span::enter);
        let started = Instant::now();
        let timer = self.metrics.write_started();
        let result = match self.db.as_mut() {
            Some(db) => db.write(&self.group, durable),
            None => Err(StorageError::Closed),
        };
        drop(timer);
        let storage = &self.metrics.storage;
        if result.is_ok() {
            storage
                .disk_commit_duration_seconds
                .observe(started.elapsed().as_secs_f64());
            if entries > 0 {
                storage.persist_batch_entries.observe(entries as f64);
            }
        }
        if self.sized_at.is_none_or(|t| t.elapsed() >= DB_SIZE_EVERY) {
            self.sized_at = Some(Instant::now());
            if let Ok(meta) = std::fs::metadata(&self.path) {
                storage.db_size_bytes.set(meta.len() as i64);
            }
        }
        debug!(
            batches = self.group.len(),
            number, durable, "group committed"
        );
        self.group.clear();
        match result {
            Ok(()) => self.progress.send_modify(|p| p.number = number),
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: StorageError) {
        self.metrics.storage.disk_commit_failures.inc();
        error!(error = %e, "storage write failed; this node stops accepting writes");
        self.failed = true;
        let e = Arc::new(e);
        self.progress.send_modify(|p| p.failure = Some(e));
    }

    /// Writes everything queued, then makes it all durable.
    fn flush(&mut self) -> Result<(), Arc<StorageError>> {
        while !self.failed {
            match self.requests.try_recv() {
                Ok(batch) => self.write_group(batch),
                Err(_) => break,
            }
        }
        if let Some(e) = &self.progress.borrow().failure {
            return Err(e.clone());
        }
        let Some(db) = self.db.as_mut() else {
            return Err(Arc::new(StorageError::Closed));
        };
        if let Err(e) = db.flush() {
            self.fail(e);
            return Err(self.progress.borrow().failure.clone().expect("just set"));
        }
        Ok(())
    }
}

impl Actor for StorageActor {
    type Args = StorageArgs;
    type Error = Arc<StorageError>;

    async fn on_start(args: Self::Args, _: ActorRef<Self>) -> Result<Self, Self::Error> {
        Self::new(args).map_err(Arc::new)
    }

    async fn next(
        &mut self,
        _: WeakActorRef<Self>,
        mailbox_rx: &mut MailboxReceiver<Self>,
    ) -> Result<Option<Signal<Self>>, Self::Error> {
        loop {
            if self.failed || self.requests.is_disconnected() && self.requests.is_empty() {
                return Ok(mailbox_rx.recv().await);
            }
            tokio::select! {
                biased;
                signal = mailbox_rx.recv() => return Ok(signal),
                batch = self.requests.recv_async() => {
                    if let Ok(batch) = batch {
                        let span = self.span.clone();
                        span.in_scope(|| self.write_group(batch));
                    }
                }
            }
        }
    }

    async fn on_stop(
        &mut self,
        _: WeakActorRef<Self>,
        _: ActorStopReason,
    ) -> Result<(), Self::Error> {
        // Whatever reached us is made durable before the database closes; then this actor lets
        // go of it, so the file is free once the stop is complete.
        let _ = self.flush();
        self.db = None;
        Ok(())
    }
}

/// Ask the StorageActor to write everything queued and fsync it.
#[derive(Debug)]
pub struct Flush;

impl Message<Flush> for StorageActor {
    type Reply = Result<(), Arc<StorageError>>;

    async fn handle(&mut self, _: Flush, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        self.flush()
    }
}

/// Write everything queued, fsync it, restart the Ready numbering at 0, count a new incarnation
/// and read back the whole durable state: what a (re)starting RaftActor builds itself from.
#[derive(Debug)]
pub struct Recover;

impl Message<Recover> for StorageActor {
    type Reply = Result<Recovered, Arc<StorageError>>;

    async fn handle(&mut self, _: Recover, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        self.flush()?;
        self.progress.send_modify(|p| p.number = 0);
        let db = self.db.as_mut().ok_or(StorageError::Closed)?;
        let incarnation = db.next_incarnation().map_err(Arc::new)?;
        let mut recovered = db.recover().map_err(Arc::new)?;
        recovered.incarnation = incarnation;
        Ok(recovered)
    }
}

/// Fence the data dir: the node found it corrupt or stale, and it must never serve from it
/// again (see [`LogDb::fence`]). Best effort: a failing disk may not take the mark either.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Why (the fatal error, with what the operator should do).
    pub reason: String,
}

impl Message<Fence> for StorageActor {
    type Reply = ();

    async fn handle(&mut self, msg: Fence, _: &mut Context<Self, ()>) {
        let written = match self.db.as_mut() {
            Some(db) => db.fence(&msg.reason),
            None => Err(StorageError::Closed),
        };
        match written {
            Ok(()) => error!(reason = %msg.reason, "data dir fenced: it will not serve again"),
            Err(e) => error!(error = %e, "could not fence the data dir"),
        }
    }
}

/// Write everything queued, fsync it and close this actor's database handle (shutdown). Later
/// writes fail with [`StorageError::Closed`].
#[derive(Debug)]
pub struct Close;

impl Message<Close> for StorageActor {
    type Reply = Result<(), Arc<StorageError>>;

    async fn handle(&mut self, _: Close, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let flushed = if self.db.is_some() {
            self.flush()
        } else {
            Ok(())
        };
        self.db = None;
        flushed
    }
}

impl StorageActor {
    fn db(&mut self) -> Result<&mut LogDb, Arc<StorageError>> {
        if self.failed {
            return Err(self
                .progress
                .borrow()
                .failure
                .clone()
                .unwrap_or_else(|| Arc::new(StorageError::Closed)));
        }
        self.db
            .as_mut()
            .ok_or_else(|| Arc::new(StorageError::Closed))
    }

    /// Runs a snapshot operation; a failure is a storage failure like any other write.
    fn snapshot_op<T>(
        &mut self,
        op: impl FnOnce(&mut LogDb) -> Result<T, StorageError>,
    ) -> Result<T, Arc<StorageError>> {
        let db = self.db()?;
        match op(db) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.fail(e);
                Err(self.progress.borrow().failure.clone().expect("just set"))
            }
        }
    }
}

/// Allocate a storage id for a snapshot about to be written or received.
#[derive(Debug, Clone, Copy)]
pub struct NewSnapshotId;

impl Message<NewSnapshotId> for StorageActor {
    type Reply = Result<u64, Arc<StorageError>>;

    async fn handle(
        &mut self,
        _: NewSnapshotId,
        _: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        Ok(self.db()?.new_snapshot_id())
    }
}

/// Store one chunk of a snapshot being written or received.
#[derive(Debug)]
pub struct WriteChunk {
    /// Snapshot storage id.
    pub id: u64,
    /// Chunk number, from 0.
    pub no: u32,
    /// At most [`super::SNAPSHOT_CHUNK`] bytes.
    pub bytes: Vec<u8>,
}

impl Message<WriteChunk> for StorageActor {
    type Reply = Result<(), Arc<StorageError>>;

    async fn handle(&mut self, c: WriteChunk, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        self.snapshot_op(|db| db.write_snapshot_chunk(c.id, c.no, &c.bytes))
    }
}

/// Make a fully written local snapshot current and purge the log it covers (durably).
#[derive(Debug)]
pub struct CommitSnapshot {
    /// The snapshot.
    pub record: SnapshotRecord,
    /// Log entries up to this `(index, term)` are dropped.
    pub purge_to: Option<(u64, u64)>,
}

impl Message<CommitSnapshot> for StorageActor {
    /// Whether it became current (false: a newer one already is).
    type Reply = Result<bool, Arc<StorageError>>;

    async fn handle(
        &mut self,
        c: CommitSnapshot,
        _: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        self.snapshot_op(|db| db.commit_snapshot(&c.record, c.purge_to))
    }
}

/// Delete the chunks of a snapshot that will not be used. Best effort, and sent with `tell`
/// (in kameo an `Err` answered to a `tell` stops the receiver): a failed discard leaves the
/// chunks behind as unused space and is logged, and the actor stays up. A failing disk fails
/// the next persist batch, which is where a storage failure is reported.
#[derive(Debug, Clone, Copy)]
pub struct DiscardSnapshot {
    /// Snapshot storage id.
    pub id: u64,
}

impl Message<DiscardSnapshot> for StorageActor {
    type Reply = ();

    async fn handle(&mut self, c: DiscardSnapshot, _: &mut Context<Self, ()>) {
        let result = match self.db() {
            Ok(db) => db.discard_snapshot(c.id).map_err(Arc::new),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            warn!(id = c.id, error = %e, "could not discard a snapshot's chunks; they stay unused");
        }
    }
}
