//! [`ClientOptions`]: a client's identity and the time one call may take.

use std::time::Duration;

use iroh::SecretKey;

/// How long a call may take by default, finding a member included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How [`IrohRaftManagementClient::new`](super::IrohRaftManagementClient::new) sets a client up.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The client's identity (default: a fresh key).
    pub key: Option<SecretKey>,
    /// The longest one call may take, finding a member that admits the client included
    /// (default [`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// Stay on the members given (default false: the client learns the membership from
    /// status answers and moves to the leader). A pinned client of one member asks that
    /// member, and no other, for everything: per-member health, metrics, status.
    pub pinned: bool,
    /// Relays to reach the members through (default: none, or the ticket's relays when the
    /// client connects with a ticket that names some), and CAs to trust for them.
    pub relays: crate::net::Relays,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            key: None,
            timeout: DEFAULT_TIMEOUT,
            pinned: false,
            relays: crate::net::Relays::none(),
        }
    }
}

impl ClientOptions {
    /// Uses `key` as the client's identity.
    pub fn key(mut self, key: SecretKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the longest one call may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Reaches the members through `relays` (see [`ClientOptions::relays`]).
    pub fn relays(mut self, relays: crate::net::Relays) -> Self {
        self.relays = relays;
        self
    }

    /// Stays on the members given: never moves to the leader nor to learned members.
    pub fn pinned(mut self) -> Self {
        self.pinned = true;
        self
    }
}
