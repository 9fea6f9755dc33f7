//! The replica consistency check: every node keeps a running hash of the entries it applied,
//! members tell each other `(index, hash)` pairs, and a node whose history differs from the
//! cluster's stops before it serves or applies anything more. Pure logic, no IO: the RaftActor
//! feeds it applied entries and peers' checkpoints and acts on its [`Verdict`]s.
//!
//! # The hash
//! `h(i) = blake3(h(i-1) ‖ i ‖ term ‖ type ‖ context length ‖ context ‖ data)` over every entry
//! applied, starting from the hash a snapshot carries in its header (all zeros for a founding
//! member's bootstrap snapshot). Entries are replicated byte for byte, so every correct replica
//! computes the same `h(i)`; a replica that applied one different byte (a damaged record that
//! passed its checksum, a bug) differs at that index and at every later one. A restarted node
//! recomputes the chain as it replays its log, so damage on disk shows up as a different hash.
//!
//! # Comparing
//! Each node remembers its hashes at the last [`HISTORY`] applied indexes. Every few heartbeats
//! it sends each member its latest `(index, hash)`; a receiver compares it with its own hash at
//! that index (looked up, or kept until it applies that far). Divergence is permanent (a chain
//! never re-converges), so one disagreement with a peer marks that peer as diverged for good.
//!
//! # Deciding who is wrong
//! With `D` the voters seen to differ from this node and `n` the voters:
//! - if the voters that might share this node's history (`n − |D|`) are fewer than a majority,
//!   and this node is not the leader while the leader differs from it, or `|D|` itself is a
//!   majority: this node is the odd one out and stops ([`Verdict::SelfDiverged`]);
//! - otherwise the peers in `D` are reported ([`Verdict::PeerDiverged`]) and this node goes on.
//!
//! So in a cluster of three, one damaged node (leader or follower) stops itself once both others
//! disagree with it, and the other two keep serving; with only two voters reporting, the
//! leader's history wins.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raft::eraftpb::Entry;

use crate::types::NodeId;

/// A running hash of applied entries.
pub type ApplyHash = [u8; 32];

/// Applied indexes whose hashes a node remembers for comparison with peers' checkpoints.
pub(crate) const HISTORY: usize = 4096;

/// Peers' checkpoints kept while this node has not applied that far yet, per peer.
const PENDING_PER_PEER: usize = 8;

/// The hash of one more applied entry.
pub(crate) fn chain(prev: &ApplyHash, e: &Entry) -> ApplyHash {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&e.index.to_le_bytes());
    h.update(&e.term.to_le_bytes());
    h.update(&[e.entry_type as i32 as u8]);
    h.update(&(e.context.len() as u32).to_le_bytes());
    h.update(&e.context);
    h.update(&e.data);
    *h.finalize().as_bytes()
}

/// What the check concluded after new evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing new.
    Consistent,
    /// These peers' histories differ from this node's, which the cluster shares: alarm, go on.
    PeerDiverged {
        /// The peers newly found to differ, with the first index compared that differed.
        peers: Vec<(NodeId, u64)>,
    },
    /// This node's history differs from the cluster's at `index`: it must stop.
    SelfDiverged {
        /// The index compared.
        index: u64,
        /// The voters that differ from it.
        differ: Vec<NodeId>,
    },
}

/// One node's running hash, its recent history, and what it knows of its peers'.
#[derive(Debug)]
pub(crate) struct ConsistencyCheck {
    /// `(index, hash)` of the last applied entry; `None` while the chain is broken (entries were
    /// applied out of order, which only a snapshot install repairs).
    head: Option<(u64, ApplyHash)>,
    history: VecDeque<(u64, ApplyHash)>,
    /// Peers' checkpoints ahead of this node, by peer.
    pending: BTreeMap<NodeId, BTreeMap<u64, ApplyHash>>,
    /// Peers found to differ, with the index at which they were first seen to.
    diverged: BTreeMap<NodeId, u64>,
    /// Set once this node found itself diverged.
    stopped: bool,
}

impl ConsistencyCheck {
    /// A check starting after the entry at `index`, whose running hash is `hash` (`None`: not
    /// known until a snapshot brings one).
    pub(crate) fn new(start: Option<(u64, ApplyHash)>) -> Self {
        let mut this = Self {
            head: None,
            history: VecDeque::with_capacity(HISTORY),
            pending: BTreeMap::new(),
            diverged: BTreeMap::new(),
            stopped: false,
        };
        this.reset(start);
        this
    }

    /// A snapshot was installed: the chain continues from its hash (`None`: unknown until the
    /// next snapshot). What peers reported still holds; this node's own history before the
    /// snapshot is gone.
    pub(crate) fn reset(&mut self, start: Option<(u64, ApplyHash)>) {
        self.head = start;
        self.history.clear();
        if let Some((index, hash)) = start {
            self.remember(index, hash);
        }
    }

    /// The latest `(index, hash)`, what this node tells its peers.
    pub(crate) fn head(&self) -> Option<(u64, ApplyHash)> {
        self.head
    }

    /// The hash after the entry at `index`, if remembered.
    pub(crate) fn hash_at(&self, index: u64) -> Option<ApplyHash> {
        let (first, _) = *self.history.front()?;
        let pos = usize::try_from(index.checked_sub(first)?).ok()?;
        self.history
            .get(pos)
            .filter(|(i, _)| *i == index)
            .map(|(_, h)| *h)
    }

    /// Peers seen to differ from this node, with the first index at which they did.
    pub(crate) fn diverged_peers(&self) -> &BTreeMap<NodeId, u64> {
        &self.diverged
    }

    fn remember(&mut self, index: u64, hash: ApplyHash) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((index, hash));
    }

    /// Chains one applied entry. Entries must come in index order right after the head; a gap
    /// breaks the chain until the next [`Self::reset`] (nothing is compared meanwhile).
    pub(crate) fn applied(&mut self, e: &Entry) {
        let Some((index, hash)) = self.head else {
            return;
        };
        if e.index != index + 1 {
            self.head = None;
            self.history.clear();
            return;
        }
        let next = chain(&hash, e);
        self.head = Some((e.index, next));
        self.remember(e.index, next);
    }

    /// Compares the checkpoints peers sent that this node has now applied far enough to check.
    /// Call after applying; `voters` and `leader` are the current configuration's.
    /// Whether peers' checkpoints wait for this node to apply further.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub(crate) fn check_pending(
        &mut self,
        voters: &[NodeId],
        me: NodeId,
        leader: Option<NodeId>,
    ) -> Verdict {
        let applied = self.head.map_or(0, |(i, _)| i);
        let mut due = Vec::new();
        for (&peer, points) in &mut self.pending {
            while let Some(entry) = points.first_entry() {
                if *entry.key() > applied {
                    break;
                }
                let (index, hash) = entry.remove_entry();
                due.push((peer, index, hash));
            }
        }
        self.pending.retain(|_, p| !p.is_empty());
        let mut newly = Vec::new();
        for (peer, index, hash) in due {
            if self.compare(peer, index, hash) {
                newly.push((peer, index));
            }
        }
        self.decide(newly, voters, me, leader)
    }

    /// A peer's checkpoint arrived.
    pub(crate) fn peer_checkpoint(
        &mut self,
        peer: NodeId,
        index: u64,
        hash: ApplyHash,
        voters: &[NodeId],
        me: NodeId,
        leader: Option<NodeId>,
    ) -> Verdict {
        let applied = self.head.map_or(0, |(i, _)| i);
        if index > applied {
            let points = self.pending.entry(peer).or_default();
            points.insert(index, hash);
            while points.len() > PENDING_PER_PEER {
                points.pop_first();
            }
            return Verdict::Consistent;
        }
        let newly = if self.compare(peer, index, hash) {
            vec![(peer, index)]
        } else {
            Vec::new()
        };
        self.decide(newly, voters, me, leader)
    }

    /// True if `peer` is newly seen to differ.
    fn compare(&mut self, peer: NodeId, index: u64, hash: ApplyHash) -> bool {
        match self.hash_at(index) {
            Some(ours) if ours != hash && !self.diverged.contains_key(&peer) => {
                self.diverged.insert(peer, index);
                true
            }
            _ => false,
        }
    }

    fn decide(
        &mut self,
        newly: Vec<(NodeId, u64)>,
        voters: &[NodeId],
        me: NodeId,
        leader: Option<NodeId>,
    ) -> Verdict {
        if newly.is_empty() || self.stopped {
            return Verdict::Consistent;
        }
        let voters: BTreeSet<NodeId> = voters.iter().copied().collect();
        let differ: Vec<NodeId> = self
            .diverged
            .keys()
            .copied()
            .filter(|p| voters.contains(p) && *p != me)
            .collect();
        let majority = voters.len() / 2 + 1;
        let could_agree = voters.len() - differ.len();
        let leader_differs = leader.is_some_and(|l| l != me && differ.contains(&l));
        let outvoted = differ.len() >= majority;
        let minority_against_leader = could_agree < majority && leader_differs;
        if outvoted || minority_against_leader {
            self.stopped = true;
            let index = newly.iter().map(|&(_, i)| i).max().unwrap_or(0);
            return Verdict::SelfDiverged { index, differ };
        }
        Verdict::PeerDiverged { peers: newly }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term: 1,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    /// Three replicas applying 1..=10 from a bootstrap at 1; `damaged` applies a different
    /// entry 5.
    fn replicas(damaged: NodeId) -> BTreeMap<NodeId, ConsistencyCheck> {
        (1..=3)
            .map(|id| {
                let mut c = ConsistencyCheck::new(Some((1, [0; 32])));
                for i in 2..=10 {
                    let data: &[u8] = if id == damaged && i == 5 { b"x" } else { b"v" };
                    c.applied(&entry(i, data));
                }
                (id, c)
            })
            .collect()
    }

    fn tell(
        r: &mut BTreeMap<NodeId, ConsistencyCheck>,
        from: NodeId,
        to: NodeId,
        leader: NodeId,
    ) -> Verdict {
        let (index, hash) = r[&from].head().unwrap();
        r.get_mut(&to)
            .unwrap()
            .peer_checkpoint(from, index, hash, &[1, 2, 3], to, Some(leader))
    }

    #[test]
    fn equal_histories_agree() {
        let mut r = replicas(0);
        for (from, to) in [(1, 2), (2, 3), (3, 1)] {
            assert_eq!(tell(&mut r, from, to, 1), Verdict::Consistent);
        }
    }

    #[test]
    fn a_damaged_follower_stops_once_outvoted_and_the_others_report_it() {
        let mut r = replicas(3);
        // The damaged follower hears the leader first: one voter against it is no majority yet.
        assert_eq!(
            tell(&mut r, 1, 3, 1),
            Verdict::PeerDiverged {
                peers: vec![(1, 10)]
            }
        );
        assert_eq!(
            tell(&mut r, 2, 3, 1),
            Verdict::SelfDiverged {
                index: 10,
                differ: vec![1, 2]
            }
        );
        // The healthy ones only report it.
        assert_eq!(
            tell(&mut r, 3, 1, 1),
            Verdict::PeerDiverged {
                peers: vec![(3, 10)]
            }
        );
        assert_eq!(tell(&mut r, 2, 1, 1), Verdict::Consistent);
    }

    #[test]
    fn a_damaged_leader_stops_itself_and_the_followers_keep_going() {
        let mut r = replicas(1);
        // Followers each see the leader differ, but could still be a majority together.
        assert_eq!(
            tell(&mut r, 1, 2, 1),
            Verdict::PeerDiverged {
                peers: vec![(1, 10)]
            }
        );
        assert_eq!(
            tell(&mut r, 1, 3, 1),
            Verdict::PeerDiverged {
                peers: vec![(1, 10)]
            }
        );
        // The leader: one follower against it is not yet a majority ...
        assert_eq!(
            tell(&mut r, 2, 1, 1),
            Verdict::PeerDiverged {
                peers: vec![(2, 10)]
            }
        );
        // ... two are.
        assert_eq!(
            tell(&mut r, 3, 1, 1),
            Verdict::SelfDiverged {
                index: 10,
                differ: vec![2, 3]
            }
        );
    }

    #[test]
    fn a_checkpoint_ahead_is_compared_once_applied() {
        let mut behind = ConsistencyCheck::new(Some((1, [0; 32])));
        let mut ahead = ConsistencyCheck::new(Some((1, [0; 32])));
        for i in 2..=20 {
            ahead.applied(&entry(i, if i == 7 { b"x" } else { b"v" }));
        }
        let (index, hash) = ahead.head().unwrap();
        assert_eq!(
            behind.peer_checkpoint(2, index, hash, &[1, 2], 1, Some(2)),
            Verdict::Consistent
        );
        for i in 2..=19 {
            behind.applied(&entry(i, b"v"));
        }
        assert_eq!(
            behind.check_pending(&[1, 2], 1, Some(2)),
            Verdict::Consistent
        );
        behind.applied(&entry(20, b"v"));
        // Two voters, the leader differs: the follower's history loses.
        assert_eq!(
            behind.check_pending(&[1, 2], 1, Some(2)),
            Verdict::SelfDiverged {
                index: 20,
                differ: vec![2]
            }
        );
    }

    #[test]
    fn a_gap_breaks_the_chain_until_a_snapshot() {
        let mut c = ConsistencyCheck::new(Some((1, [0; 32])));
        c.applied(&entry(3, b"v"));
        assert_eq!(c.head(), None);
        assert_eq!(
            c.peer_checkpoint(2, 1, [1; 32], &[1, 2, 3], 1, Some(2)),
            Verdict::Consistent
        );
        c.reset(Some((9, [7; 32])));
        assert_eq!(c.head(), Some((9, [7; 32])));
        assert_eq!(c.hash_at(9), Some([7; 32]));
    }

    #[test]
    fn history_is_bounded() {
        let mut c = ConsistencyCheck::new(Some((0, [0; 32])));
        for i in 1..=(HISTORY as u64 + 10) {
            c.applied(&entry(i, b"v"));
        }
        assert_eq!(c.hash_at(5), None);
        assert!(c.hash_at(HISTORY as u64 + 10).is_some());
        assert!(c.hash_at(11).is_some());
    }
}
