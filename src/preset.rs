//! [`Preset`]: documented starting points for timing and durability.

use std::time::Duration;

/// Starting points for timing and durability. Every value can be overridden on the builder.
///
/// | preset | heartbeat | election timeout | fsync | request timeout | snapshot every |
/// |---|---|---|---|---|---|
/// | `Development` | 100 ms | 1 s | off | 10 s | 10,000 entries |
/// | `Testing` | 25 ms | 300 ms | off | 5 s | 5,000 entries |
/// | `Production` (default) | 100 ms | 700 ms | on, every write Raft needs durable | 10 s | 100,000 entries |
///
/// Election timeouts are drawn from `[t, 2t)`, so with `Production` a follower campaigns
/// 0.7–1.4 s after the last heartbeat of a leader that died: a new leader within ~1.5 s
/// (etcd's defaults are 100 ms and 1 s, so 1–2 s). The price is idle traffic: each follower
/// gets ten heartbeats a second and answers each (about 20 small frames a second per follower,
/// twice what a 200 ms heartbeat costs).
///
/// Every preset keeps 1,000 entries in the log behind each snapshot. A snapshot rewrites the
/// whole state, so its interval trades disk writes (state size per interval) against log size
/// and restart replay time; 100,000 is etcd's default too.
///
/// With fsync off, writes reach redb but stay in the process's memory until a durable commit
/// (a snapshot, the shutdown): a crash of the process or the machine loses acknowledged writes.
/// A node that restarts without entries it had acknowledged is refused by its leader's commit
/// index ([`crate::FatalError::StaleDataDir`]) and must join again empty. Use it for tests and
/// local development only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Preset {
    /// Moderate timeouts, no fsync.
    Development,
    /// Fast timeouts for tests on one machine, no fsync.
    Testing,
    /// Conservative timeouts, fsync on every write Raft needs durable.
    #[default]
    Production,
}

impl Preset {
    pub(crate) fn heartbeat(self) -> Duration {
        match self {
            Preset::Development => Duration::from_millis(100),
            Preset::Testing => Duration::from_millis(25),
            Preset::Production => Duration::from_millis(100),
        }
    }

    pub(crate) fn election_timeout(self) -> Duration {
        match self {
            Preset::Development => Duration::from_secs(1),
            Preset::Testing => Duration::from_millis(300),
            Preset::Production => Duration::from_millis(700),
        }
    }

    pub(crate) fn fsync(self) -> bool {
        matches!(self, Preset::Production)
    }

    pub(crate) fn max_log_entries(self) -> u64 {
        match self {
            Preset::Development => 10_000,
            Preset::Testing => 5_000,
            Preset::Production => 100_000,
        }
    }

    pub(crate) fn request_timeout(self) -> Duration {
        match self {
            Preset::Testing => Duration::from_secs(5),
            _ => Duration::from_secs(10),
        }
    }
}
