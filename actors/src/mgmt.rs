//! The management plane, served by every node for operators and remote applications: the
//! [`MgmtActor`], which owns its state and decisions (admission, the registry of connections and
//! subscriptions, tickets, the membership workflows), and the member side of the management
//! protocol ([`MgmtProtocol`], ALPN [`crate::wire::MGMT_ALPN`]), whose connection and lane tasks
//! run the requests. The protocol itself is specified in [`crate::wire`].
//!
//! | who | sends the MgmtActor | for |
//! |---|---|---|
//! | a connection task, after the client's Hello | `Admit` (ask), `Disconnected` (tell, when it closes) | the client's role, or the close code refusing it; the per-key connection limit |
//! | a lane, for a subscription | `OpenSubscription` (ask), `SubscriptionEnded` (tell) | the per-connection subscription limit |
//! | a lane, the facade (`RaftCluster::ticket`) | `MintTicket` (ask) | a ticket signed with the node's key |
//! | a lane, the facade, the discovery handler | `Join`, `Remove`, `Replace` (ask, delegated) | a workflow in a task the actor owns; the same change asked again waits on the running one |
//! | its own workflow tasks | `WorkflowDone` | answering every waiter |
//!
//! What does not go through it: proposals, reads, status, health, one-step membership changes
//! and leadership transfers go from the lanes straight to the RaftActor ([`crate::NodeCalls`]);
//! the leader stamped on every reply is read from the node's [`crate::Facts`].

mod actor;
mod admission;
mod messages;
mod server;

pub use actor::{
    MAX_CONNECTIONS_PER_KEY, MAX_SUBSCRIPTIONS, MGMT_MAILBOX, MgmtActor, MgmtArgs, MgmtOptions,
    Workflow,
};
pub use messages::{
    Admit, Admitted, Disconnected, GetMgmtState, Join, MgmtState, MintTicket, OpenSubscription,
    Remove, Replace, SubscriptionEnded,
};
pub use server::{MgmtProtocol, RemoteReader, RemoteWatcher, WatchStep};
