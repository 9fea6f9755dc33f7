//! Who may use the management plane: the decision the MgmtActor makes for each new connection
//! (members are admins, then the allowlist, then a ticket), as a pure function of the applied
//! membership, so it is tested without spawning anything.

use std::{collections::BTreeMap, time::SystemTime};

use iroh::EndpointId;

use crate::{
    membership::Membership,
    ticket::{ClusterId, Ticket, TicketError, TicketRole},
    wire::MgmtRole,
};

/// The role a client connecting from `remote` gets, or why it is refused (the cluster's answer:
/// another member would give the same).
pub(super) fn role_of(
    membership: &Membership,
    allowlist: &BTreeMap<EndpointId, MgmtRole>,
    remote: EndpointId,
    ticket: Option<&str>,
    now: SystemTime,
) -> Result<MgmtRole, String> {
    let members = membership.members();
    if members.iter().any(|m| m.addr.id == remote) {
        return Ok(MgmtRole::Admin);
    }
    if let Some(role) = allowlist.get(&remote) {
        return Ok(*role);
    }
    let ticket: Ticket = ticket
        .ok_or("not a member, not on the allowlist, and no ticket")?
        .parse()
        .map_err(|e: TicketError| e.to_string())?;
    ticket
        .check(&ClusterId(membership.cluster_id()), now, |k| {
            members.iter().any(|m| m.addr.id == *k)
        })
        .map_err(|e| e.to_string())?;
    match ticket.role {
        TicketRole::Admin => Ok(MgmtRole::Admin),
        TicketRole::ReadOnly => Ok(MgmtRole::ReadOnly),
        _ => Err(format!(
            "a {} ticket grants no management access",
            ticket.role
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iroh::{EndpointAddr, SecretKey};

    use super::*;
    use crate::storage::Member;

    fn membership(keys: &[&SecretKey]) -> Membership {
        let members: Vec<Member> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Member {
                node_id: i as u64 + 1,
                addr: EndpointAddr::new(k.public()),
            })
            .collect();
        Membership::new([7; 16], &members)
    }

    fn ticket(issuer: &SecretKey, cluster: [u8; 16], role: TicketRole, ttl: Duration) -> String {
        let members = vec![EndpointAddr::new(issuer.public())];
        Ticket::issue(
            issuer,
            ClusterId(cluster),
            members,
            role,
            SystemTime::now() + ttl,
        )
        .to_string()
    }

    #[test]
    fn members_are_admins_then_the_allowlist_then_tickets() {
        let (member, listed, stranger) = (
            SecretKey::generate(),
            SecretKey::generate(),
            SecretKey::generate(),
        );
        let m = membership(&[&member]);
        let allow = BTreeMap::from([(listed.public(), MgmtRole::ReadOnly)]);
        let now = SystemTime::now();
        let role =
            |remote: &SecretKey, t: Option<&str>| role_of(&m, &allow, remote.public(), t, now);
        assert_eq!(role(&member, None), Ok(MgmtRole::Admin));
        assert_eq!(role(&listed, None), Ok(MgmtRole::ReadOnly));
        assert!(role(&stranger, None).is_err());

        let hour = Duration::from_secs(3600);
        let admin = ticket(&member, [7; 16], TicketRole::Admin, hour);
        assert_eq!(role(&stranger, Some(&admin)), Ok(MgmtRole::Admin));
        let read = ticket(&member, [7; 16], TicketRole::ReadOnly, hour);
        assert_eq!(role(&stranger, Some(&read)), Ok(MgmtRole::ReadOnly));
        let join = ticket(&member, [7; 16], TicketRole::Join, hour);
        assert!(
            role(&stranger, Some(&join))
                .unwrap_err()
                .contains("no management access")
        );
        let other_cluster = ticket(&member, [8; 16], TicketRole::Admin, hour);
        assert!(role(&stranger, Some(&other_cluster)).is_err());
        let by_stranger = ticket(&stranger, [7; 16], TicketRole::Admin, hour);
        assert!(
            role(&listed, Some(&by_stranger)).is_ok(),
            "the allowlist comes first"
        );
        assert!(role(&stranger, Some(&by_stranger)).is_err());
        assert!(role(&stranger, Some("garbage")).is_err());
    }
}
