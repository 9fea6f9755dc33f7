//! One lane of a management connection: its calls run concurrently inside the lane's task, its
//! replies leave in batches, and the connection's limits (subscriptions, bytes of requests in
//! progress) are enforced here.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{
    ClusterEvent, EventItem, StateMachine,
    wire::{
        CloseCode, MgmtBatch, MgmtCall, MgmtErrorKind, MgmtReader, MgmtReply, MgmtRequest,
        MgmtResponse, MgmtRole,
    },
};
use futures_util::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use iroh::endpoint::{RecvStream, SendStream};
use kameo::actor::ActorRef;
use tokio::sync::mpsc;
use tracing::{Instrument, warn};

use super::{
    super::{
        actor::{MAX_SUBSCRIPTIONS, MgmtActor},
        messages::{OpenSubscription, SubscriptionEnded},
    },
    MgmtProtocol, RemoteWatcher,
    answer::{node_down, read_error},
    error, tell_from_drop,
};
use crate::{calls::NodeCalls, trace::TraceContext};

/// Request streams (lanes) one connection may have open at once; a lane beyond it is refused.
pub(super) const MAX_LANES: usize = 64;

/// Calls one lane may have in progress; beyond it the lane is not read (the client's stream
/// flow control pushes back) until one completes.
const MAX_LANE_CALLS: usize = 1024;

/// Bytes of requests one connection may have in progress over all its lanes (each running
/// call holds its decoded request); beyond it its lanes are not read until calls complete.
const CONNECTION_BYTES: usize = 64 * 1024 * 1024;

/// How often a lane held back by [`CONNECTION_BYTES`] looks again.
const BUDGET_RECHECK: Duration = Duration::from_millis(10);

/// What one connection's lanes share.
#[derive(Clone)]
pub(super) struct Limits {
    /// Bytes of requests in progress (touched per call: kept here, not in the MgmtActor).
    bytes: Arc<AtomicUsize>,
    /// The connection's id in the MgmtActor's registry, which counts its subscriptions.
    connection: u64,
}

impl Limits {
    /// Fresh limits for the admitted connection `connection`.
    pub(super) fn new(connection: u64) -> Self {
        Self {
            bytes: Arc::new(AtomicUsize::new(0)),
            connection,
        }
    }
}

/// An open subscription, counted by the MgmtActor until its task ends.
struct Subscribed<S: StateMachine> {
    mgmt: ActorRef<MgmtActor<S>>,
    connection: u64,
}

impl<S: StateMachine> Drop for Subscribed<S> {
    fn drop(&mut self) {
        let connection = self.connection;
        tell_from_drop(&self.mgmt, SubscriptionEnded { connection });
    }
}

/// Bytes counted against a connection's budget while a call runs.
struct Held {
    counter: Arc<AtomicUsize>,
    bytes: usize,
}

impl Held {
    fn new(counter: &Arc<AtomicUsize>, bytes: usize) -> Self {
        counter.fetch_add(bytes, Ordering::Relaxed);
        Self {
            counter: counter.clone(),
            bytes,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Replies a lane holds before its handlers wait for the client to read (small, so that a
/// subscriber that reads slowly is soon told what it missed instead of buffering events).
const LANE_QUEUE: usize = 64;

/// A lane writes up to this many bytes of replies at once.
const WRITE_BATCH: usize = 64 * 1024;

impl<S: StateMachine> MgmtProtocol<S> {
    /// Serves one lane. Calls run concurrently inside this task (no task per call: a commit
    /// that answers hundreds of proposals at once wakes this task once, and their replies go
    /// out in one write); a subscription runs in a task of its own and sends its events here.
    pub(super) async fn lane(
        self,
        role: MgmtRole,
        mut tx: SendStream,
        mut rx: RecvStream,
        limits: Limits,
    ) {
        let (events_out, mut events) = mpsc::channel::<MgmtReply>(LANE_QUEUE);
        let mut events_out = Some(events_out);
        let mut running: FuturesUnordered<BoxFuture<'static, MgmtReply>> = FuturesUnordered::new();
        let mut reader = MgmtReader::new();
        let mut batch = MgmtBatch::new();
        let stopped = tx.stopped();
        tokio::pin!(stopped);
        // Open while a subscription of this lane may still send events.
        let mut events_open = true;
        loop {
            let reading = events_out.is_some();
            if !reading && running.is_empty() && !events_open {
                break;
            }
            let room = limits.bytes.load(Ordering::Relaxed) < CONNECTION_BYTES;
            let first = tokio::select! {
                call = reader.next_call(&mut rx), if reading && room && running.len() < MAX_LANE_CALLS => {
                    match call {
                        Ok(Some(MgmtCall { id, request, trace })) if id != 0 => {
                            let held = Held::new(&limits.bytes, reader.last_len());
                            let out = events_out.as_ref().expect("reading");
                            let call = (id, request, trace);
                            if let Some(call) = self.start(role, call, held, &limits, out) {
                                running.push(call);
                            }
                            continue;
                        }
                        // The client finished its side: answer what is running, then finish.
                        Ok(None) => {
                            events_out = None;
                            continue;
                        }
                        // The lane's framing is lost (or a call used the reserved id 0): say
                        // why (id 0 names the lane), stop reading it, and end it once the calls
                        // already read are answered.
                        other => {
                            events_out = None;
                            let _ = rx.stop(CloseCode::ProtocolViolation.to_varint());
                            let why = match other {
                                Err(e) => e.to_string(),
                                _ => "call id 0 is reserved".to_string(),
                            };
                            MgmtReply { id: 0, leader: 0, response: error(MgmtErrorKind::Malformed, why, None) }
                        }
                    }
                }
                Some(reply) = running.next(), if !running.is_empty() => reply,
                reply = events.recv(), if events_open => match reply {
                    Some(reply) => reply,
                    None => {
                        events_open = false;
                        continue;
                    }
                },
                // Over the connection's byte budget: look again once other lanes had a moment
                // to finish calls (this lane's own completions wake it anyway).
                _ = tokio::time::sleep(BUDGET_RECHECK), if reading && !room => continue,
                _ = &mut stopped => return,
            };
            // Everything else that is ready goes in the same write.
            let leader = self.leader();
            fill_batch(&mut batch, first, leader, &mut running, &mut events);
            if tx.write_all(batch.bytes()).await.is_err() {
                return;
            }
        }
        let _ = tx.finish();
    }

    /// Starts one call: a subscription in a task of its own that sends its events to `out`
    /// (`None` returned), anything else as a future for the lane to run.
    fn start(
        &self,
        role: MgmtRole,
        (id, request, trace): (u64, MgmtRequest, Option<TraceContext>),
        held: Held,
        limits: &Limits,
        out: &mpsc::Sender<MgmtReply>,
    ) -> Option<BoxFuture<'static, MgmtReply>> {
        if matches!(request, MgmtRequest::Backup) {
            drop(held);
            let (out, cluster) = (out.clone(), self.cluster());
            let requests = self.calls.metrics().mgmt.mgmt_requests.clone();
            tokio::spawn(async move {
                let response = match (cluster, role) {
                    (Some(_), MgmtRole::ReadOnly) => Some(error(
                        MgmtErrorKind::Forbidden,
                        "a backup needs an admin client",
                        None,
                    )),
                    (Some(cluster), MgmtRole::Admin) => backup(&cluster, id, &out).await,
                    (None, _) => Some(node_down()),
                };
                let outcome = match &response {
                    Some(MgmtResponse::Error { kind, .. }) => kind.name(),
                    _ => "ok",
                };
                let labels = crate::metrics::RequestLabels {
                    kind: "backup",
                    outcome,
                };
                requests.get_or_create(&labels).inc();
                send_last(&out, id, response).await;
            });
            return None;
        }
        let stream = match request {
            MgmtRequest::Subscribe { epoch, after } => Streamed::Events { epoch, after },
            MgmtRequest::Watch { query } => match &self.watcher {
                Some(watcher) => Streamed::Changes {
                    watcher: watcher.clone(),
                    query: query.into(),
                },
                None => {
                    drop(held);
                    let response = error(
                        MgmtErrorKind::Unsupported,
                        "this node serves no remote watches",
                        None,
                    );
                    let reply = reply_to(id, response);
                    return Some(async move { reply }.boxed());
                }
            },
            request => {
                let this = self.clone();
                // A traced caller's call is served as part of its trace.
                let span = match trace {
                    Some(t) => {
                        let kind = request.kind_name();
                        let span = tracing::info_span!("serve", node = self.calls.node_id(), kind);
                        t.adopt(&span);
                        span
                    }
                    None => tracing::Span::none(),
                };
                return Some(
                    async move {
                        let response = this.answer(role, request).await;
                        drop(held);
                        reply_to(id, response)
                    }
                    .instrument(span)
                    .boxed(),
                );
            }
        };
        drop(held);
        let (out, cluster, mgmt) = (out.clone(), self.cluster(), self.mgmt.clone());
        let connection = limits.connection;
        tokio::spawn(async move {
            let open = mgmt.ask(OpenSubscription { connection }).await;
            let response = match (cluster, open) {
                (Some(_), Ok(false)) => {
                    let why = format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection");
                    Some(error(MgmtErrorKind::Refused, why, None))
                }
                (Some(cluster), Ok(true)) => {
                    // Counted from here: released when this task ends, however it ends.
                    let _subscribed = Subscribed { mgmt, connection };
                    match stream {
                        Streamed::Events { epoch, after } => {
                            subscribe(&cluster, id, epoch, after, &out).await
                        }
                        Streamed::Changes { watcher, query } => {
                            watch(&cluster, &watcher, query, id, &out).await
                        }
                    }
                }
                _ => Some(node_down()),
            };
            send_last(&out, id, response).await;
        });
        None
    }
}

/// A reply to call `id` (the lane stamps the leader when it sends it).
fn reply_to(id: u64, response: MgmtResponse) -> MgmtReply {
    MgmtReply {
        id,
        leader: 0,
        response,
    }
}

/// A call answered by a stream of replies from a task of its own, counted as a subscription.
enum Streamed<S: StateMachine> {
    /// The node's events.
    Events { epoch: u64, after: u64 },
    /// The state machine's changes through the node's remote watcher.
    Changes {
        watcher: RemoteWatcher<S>,
        query: Arc<[u8]>,
    },
}

/// Sends the answer that ends a streamed call `id`, if it has one (a stream whose client went
/// away has none).
async fn send_last(out: &mpsc::Sender<MgmtReply>, id: u64, response: Option<MgmtResponse>) {
    if let Some(response) = response {
        let _ = out.send(reply_to(id, response)).await;
    }
}

/// Frames `first` and every other reply already waiting (up to [`WRITE_BATCH`] bytes) into
/// `batch`, each stamped with `leader`.
fn fill_batch(
    batch: &mut MgmtBatch,
    first: MgmtReply,
    leader: u64,
    running: &mut FuturesUnordered<BoxFuture<'static, MgmtReply>>,
    events: &mut mpsc::Receiver<MgmtReply>,
) {
    batch.clear();
    push_reply(batch, first, leader);
    while batch.len() < WRITE_BATCH {
        // Polling with a no-op waker is fine: the lane's select polls `running` again, with its
        // own waker, before the task sleeps.
        if let Some(Some(reply)) = running.next().now_or_never() {
            push_reply(batch, reply, leader);
        } else if let Ok(reply) = events.try_recv() {
            push_reply(batch, reply, leader);
        } else {
            break;
        }
    }
}

/// Frames a reply, stamped with the leader this node knows of, into the batch; an answer too
/// large to send becomes an error for its call, `Unknown`: the call ran (a write may be applied)
/// and only its answer is lost.
fn push_reply(batch: &mut MgmtBatch, mut reply: MgmtReply, leader: u64) {
    reply.leader = leader;
    if let Err(e) = batch.push(&reply) {
        warn!(error = %e, "management answer does not encode");
        let response = error(
            MgmtErrorKind::Unknown,
            format!("the call ran, but its answer {e}"),
            None,
        );
        let fallback = MgmtReply {
            id: reply.id,
            leader: reply.leader,
            response,
        };
        if let Err(e) = batch.push(&fallback) {
            warn!(error = %e, "management error does not encode");
        }
    }
}

/// Streams a backup as replies to call `id`: started, the pieces, the end; `Some` is the
/// answer when it failed (before or while streaming: the client discards what it received).
async fn backup<S: StateMachine>(
    cluster: &NodeCalls<S>,
    id: u64,
    out: &mpsc::Sender<MgmtReply>,
) -> Option<MgmtResponse> {
    let reply = |response| reply_to(id, response);
    let mut stream = match cluster.backup(true).await {
        Ok(s) => s,
        Err(e) => return Some(backup_error(&e)),
    };
    let started = MgmtResponse::BackupStarted {
        index: stream.header.index,
        term: stream.header.term,
        file_size: stream.file_size(),
    };
    if out.send(reply(started)).await.is_err() {
        return None;
    }
    loop {
        let piece = tokio::select! {
            piece = stream.next() => piece,
            _ = out.closed() => return None,
        };
        let response = match piece {
            Some(Ok(bytes)) => MgmtResponse::BackupPiece { bytes },
            Some(Err(e)) => return Some(backup_error(&e)),
            None => return Some(MgmtResponse::BackupEnd),
        };
        // Waits while the client reads slowly: the node reads the snapshot no faster.
        if out.send(reply(response)).await.is_err() {
            return None;
        }
    }
}

fn backup_error(e: &crate::backup::BackupError) -> MgmtResponse {
    use crate::backup::BackupError as B;
    let kind = match e {
        B::NoConsistentPoint(_) => MgmtErrorKind::Unavailable,
        B::NodeStopped(_) => MgmtErrorKind::NodeDown,
        _ => MgmtErrorKind::Refused,
    };
    error(kind, e.to_string(), None)
}

/// Streams events as replies to call `id` until the client stops reading; `Some` is the
/// answer when the subscription could not start.
async fn subscribe<S: StateMachine>(
    cluster: &NodeCalls<S>,
    id: u64,
    epoch: u64,
    after: u64,
    out: &mpsc::Sender<MgmtReply>,
) -> Option<MgmtResponse> {
    let events = if epoch == 0 {
        cluster.subscribe().await
    } else {
        cluster.subscribe_from(epoch, after).await
    };
    let mut events = match events {
        Ok(e) => e,
        Err(e) => return Some(read_error(&e)),
    };
    let subscribed = MgmtResponse::Subscribed {
        epoch: events.epoch(),
        after: events.last_seq(),
    };
    if out.send(reply_to(id, subscribed)).await.is_err() {
        return None;
    }
    loop {
        // Wait for the next event, or for the lane's writer to go (the client went away).
        let item = tokio::select! {
            item = events.next() => item,
            _ = out.closed() => None,
        };
        let Some(item) = item else { break };
        let response = match item {
            EventItem::Event(ev) => match postcard::to_allocvec(&ev) {
                Ok(event) => MgmtResponse::Event {
                    seq: events.last_seq(),
                    event,
                },
                Err(_) => continue,
            },
            EventItem::Missed(count) => MgmtResponse::Missed { count },
        };
        // Waits while the client reads slowly: the event bus then reports what it dropped.
        if out.send(reply_to(id, response)).await.is_err() {
            break;
        }
    }
    None
}

/// Streams a remote watch as replies to call `id`: the watcher's first step, then one after
/// every apply on this node (at once while it says there is more), until the client stops
/// reading or the watcher fails; `Some` is the answer that ends it.
async fn watch<S: StateMachine>(
    cluster: &NodeCalls<S>,
    watcher: &RemoteWatcher<S>,
    query: Arc<[u8]>,
    id: u64,
    out: &mpsc::Sender<MgmtReply>,
) -> Option<MgmtResponse> {
    let reply = |response| reply_to(id, response);
    // Subscribed before the first step: an apply after that step wakes the next one.
    let mut events = match cluster.subscribe().await {
        Ok(e) => e,
        Err(e) => return Some(read_error(&e)),
    };
    let mut cursor = None;
    let mut confirmed = false;
    loop {
        let (watcher, query, at) = (watcher.clone(), query.clone(), cursor);
        let step = match cluster.query(move |sm| watcher(sm, &query, at)).await {
            Ok(Ok(step)) => step,
            Ok(Err(why)) => return Some(error(MgmtErrorKind::Refused, why, None)),
            Err(e) => return Some(read_error(&e)),
        };
        if !confirmed {
            confirmed = true;
            if out.send(reply(MgmtResponse::Watching)).await.is_err() {
                return None;
            }
        }
        if let Some(bytes) = step.changes {
            // Waits while the client reads slowly: the watcher's cursor holds its place.
            if out
                .send(reply(MgmtResponse::Changes { bytes }))
                .await
                .is_err()
            {
                return None;
            }
        }
        cursor = Some(step.cursor);
        if step.more {
            continue;
        }
        // The next apply (or a snapshot installed, or events missed: look again anyway).
        loop {
            let item = tokio::select! {
                item = events.next() => item,
                _ = out.closed() => return None,
            };
            match item {
                None => return Some(node_down()),
                Some(EventItem::Event(
                    ClusterEvent::Applied { .. } | ClusterEvent::SnapshotInstalled { .. },
                ))
                | Some(EventItem::Missed(_)) => break,
                Some(EventItem::Event(ClusterEvent::NodeStopped { .. })) => {
                    return Some(node_down());
                }
                Some(_) => {}
            }
        }
    }
}
