//! Requests waiting on the Raft log: proposals waiting to be applied, reads waiting for their
//! ReadIndex confirmation and then for the state machine to catch up.
//!
//! A proposal is identified by `(origin node, session, proposal id)`, carried in its entry's
//! context, so the node that took the request recognises the entry when it applies it, whichever
//! node led. The session is the node's incarnation, durably counted at every start: entries a
//! previous incarnation proposed may still be committed after a restart, and their ids must not
//! be mistaken for the new incarnation's.
//! Once the proposal's index is known, an applied entry at that index with another context
//! proves it was overwritten: it fails with `Dropped` (certainly not applied), never a guess.

use std::collections::BTreeMap;

use kameo::reply::ReplySender;

use super::transfers::TransferWait;
use crate::{
    error::{ProposeError, ReadError, TransferError},
    state_machine::StateMachine,
    types::NodeId,
};

/// Everything the RaftActor owes an answer to, by kind. Ids come from one counter, so a
/// reply from the leader (keyed by id) finds its request whichever kind it is.
pub(super) struct Requests<S: StateMachine> {
    /// Commands taken by this node and not yet answered.
    pub(super) proposals: Proposals<S::Response>,
    /// Membership changes taken by this node and not yet answered (the change's index).
    pub(super) changes: Proposals<u64>,
    /// Linearizable reads waiting for their ReadIndex and then for the applied index.
    pub(super) reads: Reads<S>,
    /// Leadership transfers waiting to be seen through.
    pub(super) transfers: Vec<TransferWait>,
    next_id: u64,
}

impl<S: StateMachine> Requests<S> {
    pub(super) fn new() -> Self {
        Self {
            proposals: Proposals::new(),
            changes: Proposals::new(),
            reads: Reads::new(),
            transfers: Vec::new(),
            next_id: 0,
        }
    }

    /// A fresh request id.
    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Fails the requests whose deadline (in ticks) has passed. Transfers are judged
    /// separately: they need the driver's view of the leader.
    pub(super) fn expire(&mut self, now: u64) {
        self.proposals.expire(now);
        self.changes.expire(now);
        self.reads.expire(now);
    }

    /// Entries applied up to a term: forwards made in an earlier term are settled.
    pub(super) fn forwarded_before(&mut self, term: u64) {
        self.proposals.forwarded_before(term);
        self.changes.forwarded_before(term);
    }

    /// Answers everything waiting: the node cannot serve any more.
    pub(super) fn fail_all(&mut self, propose: impl Fn() -> ProposeError, read: ReadError) {
        self.proposals.fail_all(&propose);
        self.changes.fail_all(&propose);
        for t in std::mem::take(&mut self.transfers) {
            t.fail(TransferError::Unavailable(propose()));
        }
        self.reads.fail_all(read);
    }
}

/// Encodes the entry context that identifies a proposal.
pub(crate) fn encode_context(origin: NodeId, session: u64, id: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(24);
    ctx.extend_from_slice(&origin.to_le_bytes());
    ctx.extend_from_slice(&session.to_le_bytes());
    ctx.extend_from_slice(&id.to_le_bytes());
    ctx
}

/// Decodes an entry context written by [`encode_context`].
pub(crate) fn decode_context(ctx: &[u8]) -> Option<(NodeId, u64, u64)> {
    let word = |i: usize| {
        ctx.get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    Some((word(0)?, word(1)?, word(2)?))
}

pub(crate) type ProposeReply<R> = ReplySender<Result<R, ProposeError>>;

/// Where a proposal this node took went.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Taken {
    /// Appended to this node's log (it leads) at this index.
    Appended(u64),
    /// Forwarded to the leader of this term.
    Forwarded(u64),
}

struct PendingProposal<R: Send + 'static> {
    reply: ProposeReply<R>,
    index: Option<u64>,
    deadline: u64,
    /// The term it was forwarded in, for a proposal this node forwarded to a leader.
    forwarded_in: Option<u64>,
}

/// Proposals taken by this node and not yet answered.
pub(crate) struct Proposals<R: Send + 'static> {
    by_id: BTreeMap<u64, PendingProposal<R>>,
    by_index: BTreeMap<u64, u64>,
    /// The term of the last entry applied ([`Self::forwarded_before`] looks again only when it
    /// grows: a forward is tagged with the term it was sent in, never below this one).
    applied_term: u64,
}

impl<R: Send + 'static> Proposals<R> {
    pub(crate) fn new() -> Self {
        Self {
            by_id: BTreeMap::new(),
            by_index: BTreeMap::new(),
            applied_term: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Tracks a proposal: `Appended(index)` when this node appended it itself,
    /// `Forwarded(term)` when it forwarded it to the leader of `term`.
    pub(crate) fn insert(&mut self, id: u64, reply: ProposeReply<R>, at: Taken, deadline: u64) {
        let (index, forwarded_in) = match at {
            Taken::Appended(index) => (Some(index), None),
            Taken::Forwarded(term) => (None, Some(term)),
        };
        if let Some(index) = index {
            self.by_index.insert(index, id);
        }
        self.by_id.insert(
            id,
            PendingProposal {
                reply,
                index,
                deadline,
                forwarded_in,
            },
        );
    }

    /// An entry of `term` was applied: proposals forwarded in an earlier term whose index is
    /// still unknown were never appended in their term, or were overwritten (an entry of that
    /// term that commits lies before this one, and would have been recognised when applied).
    /// They fail as safe to retry instead of waiting for their deadline.
    pub(crate) fn forwarded_before(&mut self, term: u64) {
        if term <= self.applied_term {
            return;
        }
        self.applied_term = term;
        self.fail_where(
            |p| p.index.is_none() && p.forwarded_in.is_some_and(|t| t < term),
            || ProposeError::LeaderChanged { term },
        );
    }

    /// Fails every proposal `stale` picks with `err()`.
    fn fail_where(
        &mut self,
        stale: impl Fn(&PendingProposal<R>) -> bool,
        err: impl Fn() -> ProposeError,
    ) {
        let ids: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, p)| stale(p))
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.fail(id, err());
        }
    }

    /// The leader appended a forwarded proposal at `index`.
    pub(crate) fn set_index(&mut self, id: u64, index: u64) {
        if let Some(p) = self.by_id.get_mut(&id) {
            p.index = Some(index);
            self.by_index.insert(index, id);
        }
    }

    /// Answers a proposal with an error.
    pub(crate) fn fail(&mut self, id: u64, err: ProposeError) {
        if let Some(p) = self.by_id.remove(&id) {
            if let Some(index) = p.index {
                self.by_index.remove(&index);
            }
            p.reply.send(Err(err));
        }
    }

    /// The entry at `index` was applied; `ours` is its proposal id if this node took it. Fails
    /// every tracked proposal whose index is at or below `index` but whose entry was another, and
    /// returns the reply sender of the applied proposal, if it is waiting here.
    pub(crate) fn applied(&mut self, index: u64, ours: Option<u64>) -> Option<ProposeReply<R>> {
        let found = ours.and_then(|id| self.by_id.remove(&id));
        if let Some(p) = &found
            && let Some(i) = p.index
        {
            self.by_index.remove(&i);
        }
        while let Some((&i, &id)) = self.by_index.first_key_value() {
            if i > index {
                break;
            }
            self.by_index.pop_first();
            if let Some(p) = self.by_id.remove(&id) {
                p.reply.send(Err(ProposeError::Dropped { index: i }));
            }
        }
        found.map(|p| p.reply)
    }

    /// Fails every proposal whose index is known and at or below `index`.
    pub(crate) fn fail_through(&mut self, index: u64, err: impl Fn() -> ProposeError) {
        while let Some((&i, &id)) = self.by_index.first_key_value() {
            if i > index {
                break;
            }
            self.by_index.pop_first();
            if let Some(p) = self.by_id.remove(&id) {
                p.reply.send(Err(err()));
            }
        }
    }

    /// Fails every forwarded proposal whose index is not known (a snapshot replaced the log: it
    /// may or may not be inside it).
    pub(crate) fn fail_unplaced(&mut self, err: impl Fn() -> ProposeError) {
        self.fail_where(|p| p.index.is_none(), err);
    }

    /// Fails every proposal whose deadline (in ticks) has passed.
    pub(crate) fn expire(&mut self, now: u64) {
        self.fail_where(|p| p.deadline <= now, || ProposeError::Timeout);
    }

    /// Fails everything.
    pub(crate) fn fail_all(&mut self, err: impl Fn() -> ProposeError) {
        self.by_index.clear();
        for (_, p) in std::mem::take(&mut self.by_id) {
            p.reply.send(Err(err()));
        }
    }
}

/// A read closure: runs against the state machine, or is told why it cannot.
pub(crate) type ReadFn<S> = Box<dyn FnOnce(Result<&S, ReadError>) + Send>;

struct PendingRead<S> {
    run: ReadFn<S>,
    deadline: u64,
}

/// Linearizable reads in flight. Reads that arrive together share one ReadIndex round: each
/// round costs the leader a heartbeat to every follower (or, with a lease, nothing), so a burst
/// of readers costs one round, not one each.
pub(crate) struct Reads<S> {
    unconfirmed: BTreeMap<u64, PendingRead<S>>,
    /// Reads not in a round yet: taken since the last round was issued, or held back while a
    /// new leader has not committed in its term (raft-rs drops ReadIndex requests until then).
    waiting: Vec<u64>,
    /// ReadIndex rounds in flight, by the id their context carries: the reads each confirms.
    rounds: BTreeMap<u64, Vec<u64>>,
    confirmed: BTreeMap<(u64, u64), ReadFn<S>>,
}

impl<S> Reads<S> {
    pub(crate) fn new() -> Self {
        Self {
            unconfirmed: BTreeMap::new(),
            waiting: Vec::new(),
            rounds: BTreeMap::new(),
            confirmed: BTreeMap::new(),
        }
    }

    /// A read waiting for its ReadIndex; it fails with `LeadershipChanged` at `deadline` ticks.
    pub(crate) fn insert(&mut self, id: u64, run: ReadFn<S>, deadline: u64) {
        self.unconfirmed.insert(id, PendingRead { run, deadline });
        self.waiting.push(id);
    }

    /// Whether reads wait for a round.
    pub(crate) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Puts every waiting read into round `round`; false if none waited.
    pub(crate) fn start_round(&mut self, round: u64) -> bool {
        self.waiting.retain(|id| self.unconfirmed.contains_key(id));
        if self.waiting.is_empty() {
            return false;
        }
        self.rounds.insert(round, std::mem::take(&mut self.waiting));
        true
    }

    /// The leader confirmed round `round` at `index`: its reads may be served once `index` is
    /// applied.
    pub(crate) fn confirm(&mut self, round: u64, index: u64) {
        for id in self.rounds.remove(&round).unwrap_or_default() {
            if let Some(r) = self.unconfirmed.remove(&id) {
                self.confirmed.insert((index, id), r.run);
            }
        }
    }

    /// Serves every confirmed read whose index is applied.
    pub(crate) fn serve(&mut self, applied: u64, sm: &S) {
        while let Some(entry) = self.confirmed.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            entry.remove()(Ok(sm));
        }
    }

    /// Fails unconfirmed reads past their deadline.
    pub(crate) fn expire(&mut self, now: u64) {
        let expired: Vec<u64> = self
            .unconfirmed
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(r) = self.unconfirmed.remove(&id) {
                (r.run)(Err(ReadError::LeadershipChanged));
            }
        }
        let unconfirmed = &self.unconfirmed;
        self.rounds
            .retain(|_, ids| ids.iter().any(|id| unconfirmed.contains_key(id)));
    }

    /// Fails the reads that still wait for confirmation (leadership changed under them).
    pub(crate) fn fail_unconfirmed(&mut self, err: ReadError) {
        self.waiting.clear();
        self.rounds.clear();
        for (_, r) in std::mem::take(&mut self.unconfirmed) {
            (r.run)(Err(err.clone()));
        }
    }

    /// Fails everything.
    pub(crate) fn fail_all(&mut self, err: ReadError) {
        self.fail_unconfirmed(err.clone());
        for (_, f) in std::mem::take(&mut self.confirmed) {
            f(Err(err.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_round_trip() {
        assert_eq!(decode_context(&encode_context(3, 7, 99)), Some((3, 7, 99)));
        assert_eq!(decode_context(&[1, 2, 3]), None);
    }
}
