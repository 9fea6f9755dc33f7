//! The sans-IO layer: [`Driver`] wraps raft-rs's `RawNode` and turns each Ready round into an
//! [`Effects`] value (messages to send now, a batch to persist, messages to send once it is
//! durable, entries to apply, read confirmations, role changes). It never awaits, owns no
//! channel and knows no actor, so it is tested by asserting the effects it returns. It is the
//! ground floor: it imports nothing from storage, the node or the actors (only the config and
//! the plain types), and owns the types of its effects ([`Persist`]).
//!
//! Election jitter comes from a seeded RNG owned by the driver (raft-rs would draw it from
//! `thread_rng`), so a simulation with a fixed seed is reproducible.

mod core;
mod effects;
mod logger;
mod mem_log;

pub(crate) use self::core::{Driver, InitialLog, ProposeRefused};
pub(crate) use effects::{Effects, Persist};

#[cfg(test)]
mod tests;
