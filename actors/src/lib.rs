//! The runtime of [iroh-raft](https://docs.rs/iroh-raft): kameo actors that drive raft-rs over
//! iroh QUIC with a durable redb log. Most users want the `iroh-raft` facade; this crate is for
//! those who spawn and supervise the actors themselves or mount the protocol on their own router.
//!
//! # Map of the runtime
//!
//! ```text
//!  RaftCluster (facade) ─┐
//!  mgmt lanes ───────────┼─ NodeCalls ──ask──▶ RaftActor ──try_send Outbound──▶ PeerActor ──QUIC uni stream──▶ peer
//!  MgmtActor workflows ──┘    │                 │  ▲   ▲                                                       │
//!        ▲                    │ subscribe       │  │   └──tell Inbound── RaftProtocol (ALPN iroh-raft/3) ◀────┘
//!        │ Admit, Join, …     ▼                 │  │
//!  MgmtProtocol / DiscoveryProtocol   EventBus ◀─┘  └──watch PersistProgress── StorageActor (own thread, redb)
//!  (ALPNs iroh-raft-mgmt/0,                     │        └─flume PersistBatch──────▲
//!   iroh-raft-discovery/0)            Facts ◀───┘ (watches: membership, leadership, liveness)
//! ```
//!
//! | actor | owns | receives | sends |
//! |---|---|---|---|
//! | [`RaftActor`] | the `Driver` (raft-rs `RawNode` + in-memory log mirror), the user's [`StateMachine`], the applied [`Membership`], pending proposals, membership changes, transfers and reads, the PeerActor table, the replica consistency check (running hash of applied entries, peers' checkpoints), the highest incarnation seen per peer | `Propose`, `Query`, `LinearizableQuery`, `ChangeMembership`, `TransferLeadership`, `GetMembers`, `GetStatus`, `TriggerSnapshot` through [`NodeCalls`] (the facade, management lanes, MgmtActor workflows), `Shutdown` from the node; [`peer::Inbound`] (Raft messages, forwards, checkpoints), [`PeerHello`] (ask: may this incarnation of a peer talk to us? a peer that restarted is redialled), [`NotHeard`] (a peer closed its connection with `NoAnswer`: our connection to it is likely dead, redial it) and [`peer::SnapshotReceived`] from the protocol handler; `PeerUnreachable` (with "the peer refused us for good": removed, or stale incarnation) and [`peer::SnapshotSent`] (with a corruption found reading our snapshot) from PeerActors; `SnapshotDone` from its snapshot writer; persist progress on a watch | `Outbound` batches (Raft messages, forwards, replies, checkpoints) to PeerActors (`try_send`: never blocks); `PersistBatch`es to the StorageActor (bounded flume: waits when the disk is behind); `Fence` when it finds its data corrupt or stale; the applied membership, the leadership (leader, term, role: once per Ready round when changed) and its fatal error on the [`Facts`] watches; events to the EventBus (`try_send`) |
//! | [`StorageActor`] | the redb [`LogDb`] (the file itself is shared through a [`DbHandle`] so a restarted actor reopens it, and snapshot readers read it) | `PersistBatch`es (flume, drained in groups: one write transaction per group); `Recover` from a (re)starting RaftActor; `NewSnapshotId`, `WriteChunk`, `CommitSnapshot`, `DiscardSnapshot` from the snapshot writer and the protocol handler; `Fence` from the RaftActor; `Flush`, `Close` at shutdown | the highest persisted Ready number, or the storage failure (watch: never blocks) |
//! | [`PeerActor`] (one per peer sent to) | the outgoing iroh connection, its consensus stream, and the task of its control lane (votes, heartbeats, their answers and `TimeoutNow` on a QUIC stream of their own fed by a queue of their own, so appends and snapshot chunks never hold them up) | `Outbound` batches (the RaftActor's peer table first takes the control messages out into the lane's queue), `StopPeer`, `Reconnect` (`NoAnswer`: a leader or candidate heard nothing from the peer for an election timeout, the connection may be dead without QUIC knowing, and the close code tells the peer so; `Stale`: the peer restarted or told us it hears nothing from us) | frames on the wire; `PeerUnreachable` (with the forwarded proposals it could not send); peer events |
//! | [`EventBus`] | a bounded broadcast ring, and the last [`EVENT_BUFFER`] events numbered per run (random epoch per start) | `Publish`, `Subscribe`, `SubscribeFrom` (resume after the last event seen) | [`ClusterEvent`]s to subscribers (slow ones are told what they missed) |
//! | [`mgmt::MgmtActor`] | the management plane's state and decisions: admission (the applied membership from [`Facts`], the allowlist, tickets signed with the node's key), the registry of admitted connections (per key, at most [`mgmt::MAX_CONNECTIONS_PER_KEY`]; counted in the `iroh_raft_mgmt_clients` gauge, which a rolling update waits on to drain a node) and their subscriptions (at most [`mgmt::MAX_SUBSCRIPTIONS`] each), and the running membership workflows (join: add learner → catch up → promote; remove with a leadership hand-off; replace), each in a task it owns and aborts when it stops | `Admit` / `Disconnected` from management connection tasks; `OpenSubscription` / `SubscriptionEnded` from lanes; `MintTicket`; `Join`, `Remove`, `Replace` from lanes, the facade and the discovery handler (the same change asked again waits on the running one); `WorkflowDone` from its tasks; `GetMgmtState` | through its workflow tasks, the same [`NodeCalls`] to the RaftActor a lane makes |
//! | [`NodeSupervisor`] | the StorageActor, RaftActor and MgmtActor as children (`RestForOne`, in that order), the node's liveness watch | link deaths; `Children`; liveness changes (a fatal error) | restarts: a crashed child is restarted from durable state (the RaftActor asks the StorageActor to `Recover`, then replays the log into a fresh state machine; without a state-machine factory it is not restarted, and the error says so); after [`MAX_RESTARTS`] within [`RESTART_WINDOW`], or when the node fails for good (removed, storage failure, corrupt or stale data), it publishes the [`FatalError`] on the [`Facts`] liveness and a `NodeStopped` event, stops its children and stops itself *abnormally* with that error ([`node_failure`] gives it back to a parent) |
//!
//! Three protocol handlers run on every node, none of them an actor (each connection is a task
//! of its own); [`Node::start`] builds them and an application mounts them on its own iroh
//! `Router` under their ALPNs:
//! - [`RaftProtocol`], consensus ([`wire::ALPN`]): see below.
//! - [`mgmt::MgmtProtocol`], management ([`wire::MGMT_ALPN`]: operators and remote
//!   applications): a connection task reads the client's Hello and asks the MgmtActor to admit
//!   it, then serves each of its lanes (pipelined request streams) in a task of its own; the
//!   calls of a lane run concurrently inside that task through [`NodeCalls`], sending the
//!   RaftActor the same messages the facade sends, and their replies leave in batches stamped
//!   with the leader read from the [`Facts`]. No request waits behind another in the
//!   MgmtActor's mailbox: only admission, subscriptions, tickets and workflows go there.
//!   Streamed calls run in a task of their own each and send their replies to the lane:
//!   event subscriptions (from the EventBus), backups (from the snapshot store) and remote
//!   watches, which run the application's [`mgmt::RemoteWatcher`] on the state machine
//!   (a RaftActor `Query`) once, then again after each `Applied` event (the built-in KV
//!   store's watcher answers from the change history it keeps per member).
//! - [`DiscoveryProtocol`], joins by ticket ([`wire::DISCOVERY_ALPN`]): checks the newcomer's
//!   ticket, adds it as a learner, answers with its id and the membership, then asks the
//!   MgmtActor to run its join.
//!
//! [`NodeCalls`] is the one place a call's semantics live (its deadline, which failures it
//! retries, how a failed `ask` maps onto the caller's typed error); the facade's `RaftCluster`,
//! the lanes and the workflows all call through it. [`Facts`] holds the watch channels of what
//! many parts read: the applied membership and the leadership (written by the RaftActor), and
//! the node's liveness (a fatal error from the RaftActor or the supervisor, or a shutdown).
//! Nobody keeps a copy of these fed by events.
//!
//! [`RaftProtocol`] is not an actor: it is the iroh `ProtocolHandler` whose per-connection
//! future admits by the membership the RaftActor publishes on a watch (a removed member's key
//! gets [`wire::CloseCode::Removed`], an unknown one `NotAMember`; an open connection is closed as
//! soon as its peer is removed), validates frames and forwards them to the RaftActor.
//!
//! [`Node::start`] wires these together. An application that runs its own kameo supervision
//! tree gives the [`NodeSpec`] a [`SupervisorParent`]: the NodeSupervisor becomes a child of the
//! application's actor (`RestartPolicy::Never`: the node restarts its own actors, and a node
//! that stopped for good is started again, not restarted by the parent; the parent should use
//! `OneForOne`), and the parent's `on_link_died` receives the node's abnormal stop. Do not await
//! [`Node::shutdown`] inside that parent's own handlers: it stops the supervisor, whose stop
//! completes only once the parent has handled it.
//!
//! # Metrics and health
//! [`NodeMetrics`] (built by [`Node::start`], one per node) holds one [`iroh_metrics`] group
//! per owner of the facts it counts, each written on the path where the fact happens, with
//! atomics only (no lock, no message): the RaftActor's `ConsensusMetrics` (gauges set once per
//! Ready round: leadership, term, commit and applied index, pending proposals, log size;
//! leader changes; failed proposals by reason, counted where they are answered; proposal
//! latency; snapshot save and install), the StorageActor's `StorageMetrics` (group commit
//! duration and size, the file's size, and the start of the write in progress), the
//! PeerActors' and the protocol handler's `PeerMetrics` (per peer as the `peer` label: bytes,
//! frames, send failures, reconnects, the connection's round-trip estimate, the path it sends
//! on now (`peer_relayed`: through a relay or direct, and `peer_path_changes`), snapshot sends),
//! the EventBus's `EventMetrics` and the management plane's `MgmtMetrics` (requests by kind
//! and outcome, admission refusals by reason). Their registry is the node's: the facade adds
//! iroh's endpoint metrics, an application its own. The liveness and readiness checks are
//! [`NodeCalls::livez`] / [`NodeCalls::readyz`]; the facade serves them and the metrics over
//! HTTP, and the management protocol over its ALPN (`Metrics`, `Probe`).
//!
//! # Traces
//! With the `otel` feature a proposal carries the W3C trace context of the caller's span
//! ([`TraceContext`]): [`NodeCalls`] opens `propose`, the `Propose` message and a forward to
//! the leader carry the context, the leader opens `append` under it and puts it into the
//! entry's context after the 24-byte proposal identity, the StorageActor's group commit of
//! traced entries is a `persist` span linked to each (a PeerActor's send of them a
//! `replicate` span, likewise), and every node that applies the entry
//! opens `apply` under it. A management call carries its caller's context too, and the lane
//! serves it in a `serve` span under it. Without the feature nothing is captured and entries do
//! not grow.
//!
//! # One write, end to end
//! 1. The facade encodes the command and [`NodeCalls`] `ask`s the RaftActor with `Propose`,
//!    carrying the caller's deadline; the reply is delegated and kept in the pending table under
//!    a proposal id that also goes into the entry context, and the RaftActor alone decides the
//!    proposal's fate, a timeout included. A follower forwards the command to the leader
//!    (`Frame::Forward`).
//! 2. When the mailbox drains, one Ready round: the leader sends appends at once, queues one
//!    `PersistBatch` (all new entries of the round) and advances raft-rs asynchronously.
//! 3. The StorageActor writes every queued batch in one redb transaction (fsynced when needed)
//!    and publishes the highest Ready number; the RaftActor calls `on_persist_ready` and sends
//!    the messages that had to wait for durability.
//! 4. Once a quorum has the entry durable it is committed; the RaftActor applies it and the node
//!    whose proposal id is in the context answers the caller.
//!
//! # Membership
//! - The membership (raft id → endpoint id and addresses, plus tombstones of removed members,
//!   and the cluster id) is derived from the log: it changes only when a `ConfChangeV2` entry is
//!   applied (added members' endpoints ride in the change's context), and a snapshot carries it
//!   in a header before the state machine's bytes. Founding members start from a bootstrap
//!   snapshot at index 1; a joining node starts empty and gets a snapshot from the leader (a
//!   fresh one, if the current one predates it: raft-rs refuses a snapshot whose configuration
//!   lacks the receiver).
//! - `ChangeMembership` is validated against the applied membership on the leader (a follower
//!   forwards it as a [`wire::Frame::Forward`] of kind membership) and proposed as one change:
//!   joint consensus when it touches two members, left automatically. One change at a time; a
//!   promotion can require the learner to be within a lag of the leader's log.
//! - A node applying its own removal, or refused by a peer with `Removed` (tombstones are
//!   permanent, so that proves the removal was committed), stops with `FatalError::Removed`.
//! - `TransferLeadership` runs raft-rs's transfer on the leader (forwarded likewise) and answers
//!   once this node sees the new leader.
//! - Newcomers join with a signed [`Ticket`] over the discovery ALPN ([`wire`] specifies it);
//!   the [`DiscoveryProtocol`] serves it and the MgmtActor drives catch-up and promotion.
//!
//! # Snapshots and compaction
//! - Taking one: once `max_log_entries` entries were applied since the last snapshot (or on
//!   `TriggerSnapshot`), the RaftActor captures the state machine (`StateMachine::snapshot`,
//!   meant to be cheap) and a blocking task writes the capture out through a [`SnapshotWriter`]
//!   as 1 MiB `WriteChunk`s to the StorageActor, then `CommitSnapshot` makes it current and
//!   purges the log up to `snapshot_trailing_entries` behind it, in one durable transaction. The
//!   RaftActor keeps appending and committing meanwhile; when the writer reports back
//!   (`SnapshotDone`) it compacts its in-memory log the same way.
//! - Sending one: when raft-rs needs to send a follower entries it no longer has, it emits a
//!   `MsgSnapshot` with the current snapshot's metadata; the RaftActor hands the PeerActor a
//!   [`peer::SnapshotOffer`], and the PeerActor streams the chunks from redb on a second stream
//!   of its connection ([`wire`] has the frames), reporting [`peer::SnapshotSent`].
//! - Receiving one: the protocol handler stores the chunks through the StorageActor as they
//!   arrive, checks size and CRC, then sends the RaftActor a [`peer::SnapshotReceived`]; the
//!   RaftActor steps the `MsgSnapshot`, and when raft-rs accepts it restores the state machine
//!   from the stored chunks ([`SnapshotReader`]) and persists it with the Ready: the snapshot
//!   replaces the whole log, including any divergent uncommitted tail.
//! - Restart: the RaftActor restores the current snapshot, then raft-rs replays the log after it.
//!
//! # Backups
//! [`NodeCalls::backup`] runs outside the actors: a ReadIndex round (a `LinearizableQuery`)
//! fixes the point, `TriggerSnapshot` makes the RaftActor take a snapshot at or after it (the
//! usual snapshot path: appends and commits go on), and a blocking task reads that snapshot
//! from redb through [`DbHandle::pinned_snapshot`] (one read transaction held for the whole
//! read, so a newer snapshot committed meanwhile cannot delete its chunks) and writes it as a
//! [`backup`] file into a bounded channel of 256 KiB pieces. The facade writes the pieces to
//! the caller's writer; a management lane sends them as `BackupPiece` replies on a stream of
//! their own (admin only). A node streams at most two backups at once (a semaphore in
//! [`NodeCalls`]; more wait). [`backup::restore_into`] writes a new node's log from a verified
//! file, before the node starts, committing the node in one durable transaction. Scheduled backups are a task of the facade's that calls the
//! same [`NodeCalls::backup`] on the leader.
//!
//! # Integrity
//! Nothing is served that was not verified, and nothing damaged is skipped:
//! - Every stored record (log entries, hard state, membership, snapshot metadata and chunks)
//!   carries a CRC-32 over its table, key and bytes, checked whenever it is read; redb checks
//!   its page checksums at every open and commits in two phases, so a damaged last commit is an
//!   error rather than a silent roll-back. At start-up the records must also agree with each
//!   other (terms never go down, the commit index is within the log) before raft-rs sees them.
//!   A mismatch is a typed [`Corruption`] naming the table and index.
//! - A committed entry that does not decode stops the node (proposals from remote clients must
//!   decode before they enter the log, so only damage or a foreign writer can cause one).
//! - The replica consistency check: each node chains a blake3 hash over every entry it applies
//!   (a snapshot's header carries the hash at its index) and every ten heartbeats sends each
//!   member a checkpoint `(applied index, hash)`. A node whose hash is outvoted by a majority
//!   of voters at the same index (or, with no majority either way, differs from the leader's)
//!   stops; the others raise [`ClusterEvent::ReplicaDiverged`] and report it in their status.
//! - Stale data dirs: the Hello of every stream carries the sender's durable incarnation, and a
//!   peer that has seen a higher one refuses it ([`wire::CloseCode::StaleIncarnation`]); a
//!   leader's heartbeat whose commit index is beyond our log means we lost entries we
//!   acknowledged. Either stops the node with [`FatalError::StaleDataDir`] before raft-rs acts.
//! - A node that stops for corruption or a stale data dir fences its data dir (a durable mark):
//!   it refuses to start from it again until the operator removes the member, empties the dir and
//!   joins it anew ([`Corruption::RECOVERY`]).
//! - Forwarded proposals carry the follower's term and are appended only in that term: once the
//!   follower applies an entry of a later term, an unapplied forward never will be, and its
//!   caller learns at once that it is safe to retry ([`ProposeError::LeaderChanged`]).
//!
//! # Streams
//! One QUIC connection per direction per pair of members: one unidirectional stream on it
//! carries the consensus frames, and each snapshot transfer opens one more (see [`wire`]). A
//! join is one bidirectional stream on a connection of the discovery ALPN.
//!
//! # Across NATs
//! [`IrohDialer::with_relays`] dials every peer through the cluster's relays as well as at its
//! direct addresses, so members behind NATs reach each other through a relay until iroh's hole
//! punching finds a direct path; the PeerActor reads the connection's selected path
//! ([`Link::path`]) with its round-trip estimate and counts every move. Tickets name the relays
//! ([`Ticket::relays`]), and the MgmtActor signs the ones it issues with them.
//!
//! # Leaving leadership
//! Besides raft-rs's check-quorum (one look per election timeout at whether each voter was
//! heard since the last look), the RaftActor steps its leader down when two ticks in a row find
//! that no quorum of voters has answered for an election timeout: a leader cut off from the
//! majority stops taking writes about one election timeout later, not up to two.
//!
//! # In one process
//! [`MemoryNetwork`] is a [`Dialer`] whose links are channels into the receiving node's
//! [`RaftProtocol`] (`serve_link`: the same admission, Hello check and frame validation as a
//! QUIC connection), and [`LogDb::in_memory`] keeps the log in redb's in-memory backend: the
//! facade's `in_memory` builder option runs a node with both, no sockets and no files.
//!
//! # Seams for simulation
//! The PeerActor reaches its peer through [`Dialer`] / [`Link`]; all timing is `tokio::time`;
//! election jitter comes from a seeded RNG in the `Driver` ([`NodeConfig::rng_seed`]); the
//! caller picks [`StorageSpawn`]; every `select!` is `biased` and no behaviour depends on
//! `HashMap` order.
#![deny(missing_docs, rustdoc::broken_intra_doc_links, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backup;
mod calls;
mod config;
mod consistency;
mod discovery;
mod driver;
mod error;
mod events;
mod facts;
mod membership;
pub mod metrics;
pub mod mgmt;
mod node;
pub mod peer;
mod raft_actor;
mod state_machine;
mod storage;
mod supervisor;
mod ticket;
pub mod trace;
mod types;
pub mod wire;

pub use calls::{
    BACKUP_PIECE, BackupStream, CHECK_TIMEOUT, HealthCheck, HealthReport, HealthStatus,
    JoinOptions, LIVEZ_CHECKS, NodeCalls, RAFT_STALL, READY_MAX_LAG, READYZ_CHECKS, STUCK_WRITE,
    Transferred,
};
pub use config::{NodeConfig, StorageSpawn, TICKS_PER_HEARTBEAT};
pub use consistency::ApplyHash;
pub use discovery::{DiscoveryProtocol, member_to_wire};
pub use error::{
    CodecError, Corruption, CorruptionKind, DataLocation, FatalError, ProposeError, ReadError,
    SnapshotError, StaleEvidence, StartError, StorageError, TransferError,
};
pub use events::{
    ClusterEvent, EVENT_BUFFER, EVENT_MAILBOX, EventBus, EventItem, EventStream, Publish,
    Subscribe, SubscribeFrom,
};
pub use facts::{Facts, Liveness};
/// The metrics crate our registry comes from, for applications that register their own.
pub use iroh_metrics;
pub use membership::{
    Admission, MemberInfo, MemberRole, Membership, MembershipChange, MembershipRefusal,
    SnapshotHeader, read_snapshot_header, write_snapshot_header,
};
pub use metrics::NodeMetrics;
pub use node::{Bootstrap, Node, NodeSpec, check_or_bootstrap};
pub use peer::{Dialer, IrohDialer, Link, LinkPath, MemoryNetwork, PeerActor, RaftProtocol};
pub use raft_actor::{
    CHECKPOINT_HEARTBEATS, ChangeMembership, GetMembers, GetStatus, InspectLog, LinearizableQuery,
    LogView, MAX_MESSAGES_PER_READY, MembersView, NotHeard, PeerHello, Propose, Query,
    RAFT_MAILBOX, RaftActor, RaftArgs, Shutdown, TransferLeadership, TriggerSnapshot,
};
pub use state_machine::{StateMachine, StateMachineSource, WriteSnapshot};
pub use storage::{
    Close, CommitSnapshot, DB_CACHE_SIZE, DbHandle, DiscardSnapshot, FORMAT_VERSION, Fence, Flush,
    Identity, LogDb, MAX_BATCHES_PER_COMMIT, Member, NewSnapshotId, PERSIST_QUEUE, PersistBatch,
    PersistProgress, Recover, Recovered, SNAPSHOT_CHUNK, SnapshotReader, SnapshotRecord,
    SnapshotWriter, StorageActor, StorageArgs, WriteChunk,
};
pub use supervisor::{
    Children, MAX_RESTARTS, NodeSupervisor, RESTART_WINDOW, SupervisorArgs, SupervisorParent,
    node_failure,
};
pub use ticket::{
    ClusterId, MAX_TICKET_LEN, MAX_TICKET_MEMBERS, MAX_TICKET_RELAYS, ParseError, Ticket,
    TicketError, TicketRole,
};
pub use trace::{TraceContext, sample_proposal, set_sampling};
pub use types::{Leadership, NodeId, NodeStatus, Role};
