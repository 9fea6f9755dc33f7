//! A linearizability checker for the KV store's history (Wing & Gong's algorithm with the
//! memoisation of Lowe / porcupine), partitioned per key: each key is an independent register
//! with compare-and-swap. Ops whose outcome is unknown (timed out, interrupted) may take effect at
//! any point after their invocation, or never.

use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put(String),
    Get,
    Cas {
        expected: Option<String>,
        new: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Put {
        previous: Option<String>,
    },
    Get(Option<String>),
    Cas {
        applied: bool,
        previous: Option<String>,
    },
    /// The client does not know whether the op took effect.
    Unknown,
}

/// One client operation. `call` and `ret` are positions in one global order of events, so "ret
/// of A < call of B" means A finished before B started.
#[derive(Clone, Debug)]
pub struct Event {
    pub client: usize,
    pub key: String,
    pub op: Op,
    pub call: u64,
    pub ret: Option<u64>,
    pub output: Output,
}

type State = Option<String>;

/// The register's next state if `op` with this output can happen in `state`.
fn step(state: &State, op: &Op, out: &Output) -> Option<State> {
    match (op, out) {
        (Op::Put(v), Output::Put { previous }) => (previous == state).then(|| Some(v.clone())),
        (Op::Put(v), Output::Unknown) => Some(Some(v.clone())),
        (Op::Get, Output::Get(v)) => (v == state).then(|| state.clone()),
        (Op::Cas { expected, new }, out) => {
            let applies = expected == state;
            let next = if applies { new.clone() } else { state.clone() };
            match out {
                Output::Cas { applied, previous } => {
                    (*applied == applies && previous == state).then_some(next)
                }
                Output::Unknown => Some(next),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Values are unique per write, so an unknown write whose value nobody ever observed (no read
/// returned it, no write saw it as the previous value) can only be linearized after everything
/// that observed the register, which is the same as not at all: such writes are left out. This
/// keeps the search small when a fault leaves many writes in doubt.
fn observed(history: &[Event]) -> HashSet<&str> {
    let mut seen = HashSet::new();
    for e in history {
        let v = match &e.output {
            Output::Get(v) | Output::Put { previous: v } | Output::Cas { previous: v, .. } => v,
            Output::Unknown => &None,
        };
        if let Some(v) = v {
            seen.insert(v.as_str());
        }
    }
    seen
}

fn written(op: &Op) -> Option<&str> {
    match op {
        Op::Put(v) => Some(v),
        Op::Cas { new, .. } => new.as_deref(),
        Op::Get => None,
    }
}

/// Checks every key; on failure returns the key and its operations.
pub fn check(history: &[Event]) -> Result<(), String> {
    let seen = observed(history);
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history {
        let unobserved_unknown =
            e.output == Output::Unknown && written(&e.op).is_none_or(|v| !seen.contains(v));
        if !unobserved_unknown {
            by_key.entry(&e.key).or_default().push(e);
        }
    }
    for (key, ops) in by_key {
        let Some(ok) = check_register(&ops) else {
            return Err(format!(
                "the check of key {key:?} ({} operations) exceeded its search budget",
                ops.len()
            ));
        };
        if !ok {
            let mut lines: Vec<String> = ops
                .iter()
                .map(|e| {
                    format!(
                        "  client {} [{}..{}] {:?} -> {:?}",
                        e.client,
                        e.call,
                        e.ret.map_or("?".into(), |r| r.to_string()),
                        e.op,
                        e.output
                    )
                })
                .collect();
            lines.sort();
            return Err(format!(
                "history of key {key:?} is not linearizable:\n{}",
                lines.join("\n")
            ));
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
}

/// States the search may memoise before giving up (a failed check, not a pass).
const SEARCH_BUDGET: usize = 2_000_000;

/// `Some(linearizable)`, or `None` if the search exceeded [`SEARCH_BUDGET`].
fn check_register(ops: &[&Event]) -> Option<bool> {
    // Events in real-time order.
    let mut entries: Vec<(u64, Entry)> = Vec::new();
    for (i, e) in ops.iter().enumerate() {
        entries.push((
            e.call,
            Entry {
                op: i,
                is_call: true,
            },
        ));
        if let Some(r) = e.ret {
            entries.push((
                r,
                Entry {
                    op: i,
                    is_call: false,
                },
            ));
        }
    }
    entries.sort_by_key(|(t, _)| *t);
    let entries: Vec<Entry> = entries.into_iter().map(|(_, e)| e).collect();
    let n = entries.len();
    let mut removed = vec![false; n];
    let mut call_pos = vec![0; ops.len()];
    let mut ret_pos = vec![None; ops.len()];
    for (pos, e) in entries.iter().enumerate() {
        if e.is_call {
            call_pos[e.op] = pos;
        } else {
            ret_pos[e.op] = Some(pos);
        }
    }
    let mut returns_left = ret_pos.iter().filter(|r| r.is_some()).count();
    let words = ops.len().div_ceil(64);
    let mut bits = vec![0u64; words];
    let mut state: State = None;
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let next = |removed: &[bool], from: usize| (from..n).find(|&i| !removed[i]);
    let mut cur = next(&removed, 0);
    loop {
        if returns_left == 0 {
            return Some(true);
        }
        if seen.len() > SEARCH_BUDGET {
            return None;
        }
        let Some(pos) = cur else {
            // Only unknown ops' calls are left after a return we could not pass: backtrack.
            match stack.pop() {
                Some((op, prev)) => {
                    undo(
                        op,
                        prev,
                        &mut state,
                        &mut bits,
                        &mut removed,
                        &call_pos,
                        &ret_pos,
                        &mut returns_left,
                    );
                    cur = next(&removed, call_pos[op] + 1);
                    continue;
                }
                None => return Some(false),
            }
        };
        let entry = entries[pos];
        if entry.is_call {
            let e = ops[entry.op];
            if let Some(new_state) = step(&state, &e.op, &e.output) {
                let mut new_bits = bits.clone();
                new_bits[entry.op / 64] |= 1 << (entry.op % 64);
                if seen.insert((new_bits.clone(), new_state.clone())) {
                    stack.push((entry.op, state.clone()));
                    state = new_state;
                    bits = new_bits;
                    removed[pos] = true;
                    if let Some(r) = ret_pos[entry.op] {
                        removed[r] = true;
                        returns_left -= 1;
                    }
                    cur = next(&removed, 0);
                    continue;
                }
            }
            cur = next(&removed, pos + 1);
        } else {
            // This op had to be linearized before now: undo the last choice.
            match stack.pop() {
                Some((op, prev)) => {
                    undo(
                        op,
                        prev,
                        &mut state,
                        &mut bits,
                        &mut removed,
                        &call_pos,
                        &ret_pos,
                        &mut returns_left,
                    );
                    cur = next(&removed, call_pos[op] + 1);
                }
                None => return Some(false),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn undo(
    op: usize,
    prev: State,
    state: &mut State,
    bits: &mut [u64],
    removed: &mut [bool],
    call_pos: &[usize],
    ret_pos: &[Option<usize>],
    returns_left: &mut usize,
) {
    *state = prev;
    bits[op / 64] &= !(1 << (op % 64));
    removed[call_pos[op]] = false;
    if let Some(r) = ret_pos[op] {
        removed[r] = false;
        *returns_left += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(client: usize, op: Op, call: u64, ret: Option<u64>, output: Output) -> Event {
        Event {
            client,
            key: "k".into(),
            op,
            call,
            ret,
            output,
        }
    }

    fn s(v: &str) -> Option<String> {
        Some(v.into())
    }

    #[test]
    fn accepts_a_concurrent_history() {
        let h = vec![
            ev(
                0,
                Op::Put("a".into()),
                0,
                Some(3),
                Output::Put { previous: None },
            ),
            ev(1, Op::Get, 1, Some(2), Output::Get(s("a"))),
            ev(1, Op::Get, 4, Some(5), Output::Get(s("a"))),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn rejects_a_stale_read() {
        let h = vec![
            ev(
                0,
                Op::Put("a".into()),
                0,
                Some(1),
                Output::Put { previous: None },
            ),
            ev(
                0,
                Op::Put("b".into()),
                2,
                Some(3),
                Output::Put { previous: s("a") },
            ),
            ev(1, Op::Get, 4, Some(5), Output::Get(s("a"))),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let base = ev(
            0,
            Op::Put("a".into()),
            0,
            Some(1),
            Output::Put { previous: None },
        );
        let unknown = ev(1, Op::Put("b".into()), 2, None, Output::Unknown);
        for seen in [s("a"), s("b")] {
            let h = vec![
                base.clone(),
                unknown.clone(),
                ev(2, Op::Get, 10, Some(11), Output::Get(seen)),
            ];
            assert!(check(&h).is_ok());
        }
        // But it cannot take effect before it was invoked.
        let h = vec![
            base,
            ev(2, Op::Get, 1, Some(2), Output::Get(s("b"))),
            ev(1, Op::Put("b".into()), 3, None, Output::Unknown),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn compare_and_swap_outcomes_are_checked() {
        let h = vec![
            ev(
                0,
                Op::Put("a".into()),
                0,
                Some(1),
                Output::Put { previous: None },
            ),
            ev(
                1,
                Op::Cas {
                    expected: s("a"),
                    new: s("b"),
                },
                2,
                Some(3),
                Output::Cas {
                    applied: true,
                    previous: s("a"),
                },
            ),
            ev(
                2,
                Op::Cas {
                    expected: s("a"),
                    new: s("c"),
                },
                4,
                Some(5),
                Output::Cas {
                    applied: true,
                    previous: s("a"),
                },
            ),
        ];
        assert!(
            check(&h).is_err(),
            "two CAS from the same value cannot both apply"
        );
    }
}
