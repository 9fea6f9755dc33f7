//! Raft's safety properties, checked against every live node's state after each step.

use std::collections::BTreeMap;

use iroh_raft::actors::{LogView, NodeId, Role};

/// What the checker remembers between steps.
#[derive(Default)]
pub struct Invariants {
    /// The leader seen in each term.
    leaders: BTreeMap<u64, NodeId>,
    /// Every entry ever seen committed on any node: index → (term, content hash).
    committed: BTreeMap<u64, (u64, u64)>,
    /// Last observation per (node, incarnation): term, commit, applied.
    progress: BTreeMap<(NodeId, u64), (u64, u64, u64)>,
    /// Highest term seen per node, across restarts (term is durable).
    terms: BTreeMap<NodeId, u64>,
}

impl Invariants {
    /// Checks one step's observations: `(node, incarnation, view)` for every live node.
    pub fn check(&mut self, views: &[(NodeId, u64, LogView)]) -> Result<(), String> {
        for (id, inc, v) in views {
            let s = &v.status;
            // Election safety: at most one leader per term.
            if s.role == Role::Leader {
                if let Some(&other) = self.leaders.get(&s.term)
                    && other != *id
                {
                    return Err(format!(
                        "election safety: nodes {other} and {id} both led term {}",
                        s.term
                    ));
                }
                self.leaders.insert(s.term, *id);
            }
            // Monotonic progress within an incarnation; term durable across restarts.
            let now = (s.term, s.commit_index, s.applied_index);
            if let Some(&(t, c, a)) = self.progress.get(&(*id, *inc))
                && (now.0 < t || now.1 < c || now.2 < a)
            {
                return Err(format!(
                    "node {id}: term/commit/applied went back from {:?} to {now:?}",
                    (t, c, a)
                ));
            }
            self.progress.insert((*id, *inc), now);
            let max_term = self.terms.entry(*id).or_insert(0);
            if s.term < *max_term {
                return Err(format!(
                    "node {id}: term went back from {max_term} to {} across a restart",
                    s.term
                ));
            }
            *max_term = s.term;
            if !(s.snapshot_index <= s.applied_index && s.applied_index <= s.commit_index) {
                return Err(format!(
                    "node {id}: snapshot {} <= applied {} <= commit {} does not hold",
                    s.snapshot_index, s.applied_index, s.commit_index
                ));
            }
            // Committed entries never change (state machine safety, nothing committed lost).
            for &(index, term, hash) in &v.entries {
                if index > s.commit_index {
                    break;
                }
                match self.committed.get(&index) {
                    Some(&seen) if seen != (term, hash) => {
                        return Err(format!(
                            "node {id}: committed entry {index} is {:?}, but {seen:?} was committed there before",
                            (term, hash)
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.committed.insert(index, (term, hash));
                    }
                }
            }
        }
        log_matching(views)?;
        self.leader_completeness(views)
    }

    /// The newest leader holds every entry committed so far (from its first index on).
    fn leader_completeness(&self, views: &[(NodeId, u64, LogView)]) -> Result<(), String> {
        let Some((id, _, v)) = views
            .iter()
            .filter(|(_, _, v)| v.status.role == Role::Leader)
            .max_by_key(|(_, _, v)| v.status.term)
        else {
            return Ok(());
        };
        let held: BTreeMap<u64, (u64, u64)> =
            v.entries.iter().map(|&(i, t, h)| (i, (t, h))).collect();
        let first = v.status.first_index;
        for (&index, &entry) in self.committed.range(first..) {
            if entry.0 > v.status.term {
                continue;
            }
            match held.get(&index) {
                Some(&mine) if mine == entry => {}
                other => {
                    return Err(format!(
                        "leader completeness: leader {id} (term {}) has {other:?} at committed index {index}, expected {entry:?}",
                        v.status.term
                    ));
                }
            }
        }
        Ok(())
    }

    /// Distinct terms that had a leader.
    pub fn leader_terms(&self) -> usize {
        self.leaders.len()
    }

    /// Highest committed index seen.
    pub fn committed_index(&self) -> u64 {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }
}

/// Log matching: two logs with an entry of the same index and term are identical up to it.
fn log_matching(views: &[(NodeId, u64, LogView)]) -> Result<(), String> {
    for (i, (a, _, va)) in views.iter().enumerate() {
        let la: BTreeMap<u64, (u64, u64)> =
            va.entries.iter().map(|&(i, t, h)| (i, (t, h))).collect();
        for (b, _, vb) in &views[i + 1..] {
            let lb: BTreeMap<u64, (u64, u64)> =
                vb.entries.iter().map(|&(i, t, h)| (i, (t, h))).collect();
            // The highest index where both hold an entry of the same term.
            let Some(top) = la
                .iter()
                .rev()
                .find(|(idx, (t, _))| lb.get(idx).is_some_and(|(tb, _)| tb == t))
                .map(|(idx, _)| *idx)
            else {
                continue;
            };
            for (idx, ea) in la.range(..=top) {
                if let Some(eb) = lb.get(idx)
                    && ea != eb
                {
                    return Err(format!(
                        "log matching: nodes {a} and {b} agree at index {top} but differ at {idx}: {ea:?} vs {eb:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}
