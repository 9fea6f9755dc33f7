//! The calls on a node that its [`MgmtActor`](crate::mgmt::MgmtActor) answers: the multi-step
//! membership workflows and tickets. Each is one `ask` and the mapping of a failed one onto the
//! caller's typed error.

use std::time::Duration;

use iroh::EndpointAddr;

use super::Node;
use crate::{
    calls::JoinOptions,
    error::{ProposeError, ReadError},
    mgmt::{Join, MintTicket, Remove, Replace},
    state_machine::StateMachine,
    ticket::{Ticket, TicketRole},
    types::NodeId,
};

impl<S: StateMachine> Node<S> {
    /// Adds `id` as a learner, waits until its log is within `options.max_lag` entries of the
    /// leader's, then promotes it; the same join asked again while it runs waits on it. A
    /// learner that does not catch up within `options.timeout` is left a learner and the call
    /// fails with [`crate::MembershipRefusal::NotCaughtUp`].
    pub async fn join(
        &self,
        id: NodeId,
        addr: EndpointAddr,
        options: JoinOptions,
    ) -> Result<u64, ProposeError> {
        let join = Join { id, addr, options };
        let joined = self.mgmt.ask(join).await;
        joined.map_err(|e| self.calls.propose_failed(e))
    }

    /// Removes a member. Removing the leader hands leadership to the most up-to-date other
    /// voter first. The removed node stops once it learns of its removal, and its endpoint id is
    /// refused from then on; its id is never reused. Returns the change's index — or 0 when this
    /// node removed itself and stopped before the change was applied here (it was committed: a
    /// member told it so).
    pub async fn remove_member(&self, id: NodeId) -> Result<u64, ProposeError> {
        let removed = self.mgmt.ask(Remove { id }).await;
        removed.map_err(|e| self.calls.propose_failed(e))
    }

    /// Swaps voter `old` for a new voter in one joint-consensus step, handing leadership over
    /// first if `old` leads.
    pub async fn replace(
        &self,
        old: NodeId,
        id: NodeId,
        addr: EndpointAddr,
    ) -> Result<u64, ProposeError> {
        let replaced = self.mgmt.ask(Replace { old, id, addr }).await;
        replaced.map_err(|e| self.calls.propose_failed(e))
    }

    /// A ticket signed by this node's key: `role` is what it grants, `valid_for` how long.
    pub async fn ticket(&self, role: TicketRole, valid_for: Duration) -> Result<Ticket, ReadError> {
        let minted = self.mgmt.ask(MintTicket { role, valid_for }).await;
        minted.map_err(|e| self.calls.read_failed(e))
    }
}
