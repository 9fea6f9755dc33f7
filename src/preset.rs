//! [`Preset`]: documented starting points for timing and durability.

use std::time::Duration;

/// Starting points for timing and durability. Every value can be overridden on the builder.
///
/// | preset | heartbeat | election timeout | fsync | request timeout | snapshot every |
/// |---|---|---|---|---|---|
/// | `Development` | 100 ms | 1 s | off | 10 s | 10,000 entries |
/// | `Testing` | 25 ms | 300 ms | off | 5 s | 5,000 entries |
/// | `Production` (default) | 200 ms | 2 s | on, every write Raft needs durable | 10 s | 100,000 entries |
///
/// Every preset keeps 1,000 entries in the log behind each snapshot. A snapshot rewrites the
/// whole state, so its interval trades disk writes (state size per interval) against log size
/// and restart replay time; 100,000 is etcd's default too.
///
/// With fsync off, writes reach redb but are made durable only at shutdown: a crash of the
/// machine (not just the process) can lose acknowledged writes. Use it for tests and local
/// development only.
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
            Preset::Production => Duration::from_millis(200),
        }
    }

    pub(crate) fn election_timeout(self) -> Duration {
        match self {
            Preset::Development => Duration::from_secs(1),
            Preset::Testing => Duration::from_millis(300),
            Preset::Production => Duration::from_secs(2),
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
