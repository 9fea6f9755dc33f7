//! [`Preset`]: documented starting points for timing and durability.

use std::time::Duration;

/// Starting points for timing and durability. Every value can be overridden on the builder.
///
/// | preset | heartbeat | election timeout | fsync | request timeout |
/// |---|---|---|---|---|
/// | `Development` | 100 ms | 1 s | off | 10 s |
/// | `Testing` | 25 ms | 300 ms | off | 5 s |
/// | `Production` (default) | 200 ms | 2 s | on, every write Raft needs durable | 10 s |
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

    pub(crate) fn request_timeout(self) -> Duration {
        match self {
            Preset::Testing => Duration::from_secs(5),
            _ => Duration::from_secs(10),
        }
    }
}
