//! Cluster membership: who the members are (Raft id, endpoint id, last known addresses), who was
//! removed, and the changes that move between memberships.
//!
//! Raft's own configuration (voters, learners, joint state) lives in raft-rs's `ConfState`;
//! [`Membership`] adds what raft-rs does not know: each member's iroh endpoint, and the
//! tombstones of removed members, whose ids and keys may never come back. It changes only when a
//! `ConfChangeV2` entry is applied (the endpoints of added members travel in the change's
//! context), so every node derives the same membership from the log; a snapshot carries it in a
//! header before the state machine's bytes.

use std::{collections::BTreeMap, io, net::SocketAddr};

use iroh::{EndpointAddr, EndpointId};
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
};
use serde::{Deserialize, Serialize};

use crate::{consistency::ApplyHash, storage::Member, types::NodeId};

/// Members and tombstones, and the id of the cluster they belong to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    cluster_id: [u8; 16],
    members: BTreeMap<NodeId, EndpointAddr>,
    removed: BTreeMap<NodeId, EndpointId>,
}

/// What a member is in the current configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MemberRole {
    /// Votes and counts towards quorum.
    Voter,
    /// Receives the log, does not vote.
    Learner,
    /// Leaving: votes only in the outgoing half of a joint configuration.
    Outgoing,
}

/// One member as reported to callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Raft id.
    pub node_id: NodeId,
    /// Endpoint id and last known addresses.
    pub addr: EndpointAddr,
    /// Voter or learner.
    pub role: MemberRole,
}

/// How a connecting endpoint relates to the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A current member, with its Raft id.
    Member(NodeId),
    /// A removed member: refused for good.
    Removed(NodeId),
    /// Not known.
    Unknown,
}

/// A change a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MembershipChange {
    /// Add a non-voting member that receives the log.
    AddLearner {
        /// Its Raft id.
        id: NodeId,
        /// Its endpoint id and addresses.
        addr: EndpointAddr,
    },
    /// Add a voter (or promote the learner with this id).
    AddVoter {
        /// Its Raft id.
        id: NodeId,
        /// Its endpoint id and addresses.
        addr: EndpointAddr,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Remove a member (voter or learner). Removing the leader hands leadership over first.
    Remove {
        /// The member.
        id: NodeId,
    },
    /// Swap a voter for a new one in one joint-consensus step.
    Replace {
        /// The voter leaving.
        old: NodeId,
        /// The new voter's Raft id.
        id: NodeId,
        /// Its endpoint id and addresses.
        addr: EndpointAddr,
    },
    /// Give a member new addresses (its role and key stay; a new key is a new member: use
    /// [`MembershipChange::Replace`]). Replicated like any change: every node dials the member
    /// at the new addresses from then on.
    UpdateAddress {
        /// The member.
        id: NodeId,
        /// Its endpoint id (unchanged) and new addresses.
        addr: EndpointAddr,
    },
}

/// Why a membership change was refused before it was proposed.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    thiserror::Error,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[non_exhaustive]
pub enum MembershipRefusal {
    /// The id belongs to a removed member; ids are never reused.
    #[error("node id {0} belonged to a removed member and cannot be reused")]
    RemovedId(NodeId),
    /// The endpoint key belongs to a removed member.
    #[error("endpoint {0} belonged to a removed member")]
    RemovedEndpoint(String),
    /// The id is already a member with another key.
    #[error("node id {id} is already a member with endpoint {endpoint}")]
    IdTaken {
        /// The id.
        id: NodeId,
        /// Its current endpoint.
        endpoint: String,
    },
    /// The endpoint key already belongs to another member.
    #[error("endpoint {endpoint} already belongs to member {id}")]
    EndpointTaken {
        /// The member that has it.
        id: NodeId,
        /// The endpoint.
        endpoint: String,
    },
    /// The id is not a member.
    #[error("node id {0} is not a member")]
    NotAMember(NodeId),
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ZeroId,
    /// Promote asked for a member that already votes.
    #[error("node {0} is already a voter")]
    AlreadyVoter(NodeId),
    /// The learner is too far behind the leader to be promoted yet.
    #[error("learner {id} is {lag} entries behind the leader")]
    NotCaughtUp {
        /// The learner.
        id: NodeId,
        /// How far behind it is.
        lag: u64,
    },
    /// The change would leave the cluster without voters.
    #[error("removing node {0} would leave no voter")]
    LastVoter(NodeId),
    /// A forwarded change did not decode (a peer running an incompatible version).
    #[error("the membership change did not decode")]
    Undecodable,
    /// Another membership change is still in progress (proposed, or a joint configuration not
    /// left yet): one at a time.
    #[error("another membership change is in progress; retry once it is applied")]
    InProgress,
    /// An address update named another key than the member's: keys are identities (replace
    /// the member to change it).
    #[error(
        "node {id} is endpoint {endpoint}: an address update keeps the key (replace the member to change it)"
    )]
    KeyChange {
        /// The member.
        id: NodeId,
        /// Its endpoint.
        endpoint: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Record {
    cluster_id: [u8; 16],
    members: Vec<(NodeId, [u8; 32], Vec<SocketAddr>)>,
    removed: Vec<(NodeId, [u8; 32])>,
}

fn addr_record(addr: &EndpointAddr) -> ([u8; 32], Vec<SocketAddr>) {
    (*addr.id.as_bytes(), addr.ip_addrs().copied().collect())
}

fn addr_from(id: [u8; 32], ips: Vec<SocketAddr>) -> Option<EndpointAddr> {
    let key = EndpointId::from_bytes(&id).ok()?;
    Some(
        ips.into_iter()
            .fold(EndpointAddr::new(key), |a, ip| a.with_ip_addr(ip)),
    )
}

/// Whether `id` is in the configuration at all (voter, learner, either half of a joint one).
pub(crate) fn in_conf(cs: &ConfState, id: NodeId) -> bool {
    cs.voters.contains(&id)
        || cs.learners.contains(&id)
        || cs.voters_outgoing.contains(&id)
        || cs.learners_next.contains(&id)
}

impl Membership {
    /// The membership the initial members of a new cluster start from. Its cluster id is derived
    /// from the members (ids and keys), so every initial member computes the same one.
    pub fn initial(members: &[Member]) -> Self {
        let cluster_id = derive_cluster_id(&[b"iroh-raft cluster id v1"], members);
        Self::new(cluster_id, members)
    }

    /// A membership of these members in cluster `cluster_id`, nobody removed.
    pub fn new(cluster_id: [u8; 16], members: &[Member]) -> Self {
        Self {
            cluster_id,
            members: members
                .iter()
                .map(|m| (m.node_id, m.addr.clone()))
                .collect(),
            removed: BTreeMap::new(),
        }
    }

    /// The cluster's id (all zeroes for a joining node that has not received the configuration).
    pub fn cluster_id(&self) -> [u8; 16] {
        self.cluster_id
    }

    /// Current members with their roles in `cs`.
    pub fn describe(&self, cs: &ConfState) -> Vec<MemberInfo> {
        self.members
            .iter()
            .map(|(&node_id, addr)| MemberInfo {
                node_id,
                addr: addr.clone(),
                role: if cs.voters.contains(&node_id) {
                    MemberRole::Voter
                } else if cs.voters_outgoing.contains(&node_id) {
                    MemberRole::Outgoing
                } else {
                    MemberRole::Learner
                },
            })
            .collect()
    }

    /// Whether `id` is a current member.
    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    /// How an endpoint that connects relates to the membership.
    pub fn admission(&self, endpoint: &EndpointId) -> Admission {
        if let Some(id) = self.admit(endpoint) {
            return Admission::Member(id);
        }
        match self.removed.iter().find(|(_, k)| *k == endpoint) {
            Some((&id, _)) => Admission::Removed(id),
            None => Admission::Unknown,
        }
    }

    /// The next unused Raft id (ids are never reused).
    pub fn next_free_id(&self) -> NodeId {
        let max_member = self.members.keys().next_back().copied().unwrap_or(0);
        let max_removed = self.removed.keys().next_back().copied().unwrap_or(0);
        max_member.max(max_removed) + 1
    }

    /// Current members with their addresses.
    pub fn members(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(&node_id, addr)| Member {
                node_id,
                addr: addr.clone(),
            })
            .collect()
    }

    /// The address of member `id`.
    pub fn addr(&self, id: NodeId) -> Option<&EndpointAddr> {
        self.members.get(&id)
    }

    /// The member that owns `endpoint`, if any (removed members own nothing).
    pub fn admit(&self, endpoint: &EndpointId) -> Option<NodeId> {
        self.members
            .iter()
            .find(|(_, a)| a.id == *endpoint)
            .map(|(&id, _)| id)
    }

    /// Whether `id` was removed.
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.removed.contains_key(&id)
    }

    /// Checks a new member's id and key against members and tombstones.
    fn check_new(&self, id: NodeId, addr: &EndpointAddr) -> Result<(), MembershipRefusal> {
        if id == 0 {
            return Err(MembershipRefusal::ZeroId);
        }
        if self.removed.contains_key(&id) {
            return Err(MembershipRefusal::RemovedId(id));
        }
        if self.removed.values().any(|k| *k == addr.id) {
            return Err(MembershipRefusal::RemovedEndpoint(addr.id.to_string()));
        }
        if let Some(current) = self.members.get(&id).filter(|a| a.id != addr.id) {
            return Err(MembershipRefusal::IdTaken {
                id,
                endpoint: current.id.to_string(),
            });
        }
        if let Some(other) = self.admit(&addr.id).filter(|&o| o != id) {
            return Err(MembershipRefusal::EndpointTaken {
                id: other,
                endpoint: addr.id.to_string(),
            });
        }
        Ok(())
    }

    /// Turns a request into the raft-rs change to propose (its context carries the endpoints of
    /// added members).
    pub fn to_conf_change(
        &self,
        change: &MembershipChange,
        cs: &ConfState,
    ) -> Result<ConfChangeV2, MembershipRefusal> {
        if !cs.voters_outgoing.is_empty() {
            return Err(MembershipRefusal::InProgress);
        }
        let last_voter = |id: NodeId| {
            if cs.voters == [id] {
                Err(MembershipRefusal::LastVoter(id))
            } else {
                Ok(())
            }
        };
        let single = |change_type, node_id| {
            let mut c = ConfChangeSingle::default();
            c.set_change_type(change_type);
            c.node_id = node_id;
            c
        };
        let member = |id| {
            self.members
                .contains_key(&id)
                .then_some(())
                .ok_or(MembershipRefusal::NotAMember(id))
        };
        let (changes, added) = match change {
            MembershipChange::AddLearner { id, addr } => {
                self.check_new(*id, addr)?;
                (
                    vec![single(ConfChangeType::AddLearnerNode, *id)],
                    vec![(*id, addr.clone())],
                )
            }
            MembershipChange::AddVoter { id, addr } => {
                self.check_new(*id, addr)?;
                (
                    vec![single(ConfChangeType::AddNode, *id)],
                    vec![(*id, addr.clone())],
                )
            }
            MembershipChange::Promote { id } => {
                member(*id)?;
                if cs.voters.contains(id) {
                    return Err(MembershipRefusal::AlreadyVoter(*id));
                }
                (vec![single(ConfChangeType::AddNode, *id)], vec![])
            }
            MembershipChange::Remove { id } => {
                member(*id)?;
                last_voter(*id)?;
                (vec![single(ConfChangeType::RemoveNode, *id)], vec![])
            }
            MembershipChange::UpdateAddress { id, addr } => {
                let current = self
                    .members
                    .get(id)
                    .ok_or(MembershipRefusal::NotAMember(*id))?;
                if current.id != addr.id {
                    return Err(MembershipRefusal::KeyChange {
                        id: *id,
                        endpoint: current.id.to_string(),
                    });
                }
                // The member's own role again: raft-rs leaves the configuration as it is, and
                // the context carries the new addresses.
                let kind = match cs.voters.contains(id) {
                    true => ConfChangeType::AddNode,
                    false => ConfChangeType::AddLearnerNode,
                };
                (vec![single(kind, *id)], vec![(*id, addr.clone())])
            }
            MembershipChange::Replace { old, id, addr } => {
                member(*old)?;
                if !cs.voters.contains(old) {
                    return Err(MembershipRefusal::NotAMember(*old));
                }
                self.check_new(*id, addr)?;
                (
                    vec![
                        single(ConfChangeType::AddNode, *id),
                        single(ConfChangeType::RemoveNode, *old),
                    ],
                    vec![(*id, addr.clone())],
                )
            }
        };
        let mut cc = ConfChangeV2::default();
        // Several changes at once go through a joint configuration that raft-rs leaves on its own.
        cc.set_transition(ConfChangeTransition::Auto);
        cc.set_changes(changes.into());
        let record: Vec<(NodeId, [u8; 32], Vec<SocketAddr>)> = added
            .iter()
            .map(|(id, addr)| {
                let (k, ips) = addr_record(addr);
                (*id, k, ips)
            })
            .collect();
        cc.context = postcard::to_allocvec(&record)
            .expect("plain records")
            .into();
        Ok(cc)
    }

    /// Applies a committed change whose result is the configuration `cs`: added members get
    /// their endpoints from the change's context; members no longer in the configuration at all
    /// (a joint one keeps leaving voters until it is left) become tombstones.
    pub fn apply(&mut self, cc: &ConfChangeV2, cs: &ConfState) {
        let added: Vec<(NodeId, [u8; 32], Vec<SocketAddr>)> =
            postcard::from_bytes(&cc.context).unwrap_or_default();
        for (id, key, ips) in added {
            if self.removed.contains_key(&id) {
                continue;
            }
            if let Some(addr) = addr_from(key, ips) {
                self.members.insert(id, addr);
            }
        }
        let gone: Vec<NodeId> = self
            .members
            .keys()
            .filter(|&&id| !in_conf(cs, id))
            .copied()
            .collect();
        for id in gone {
            if let Some(addr) = self.members.remove(&id) {
                self.removed.insert(id, addr.id);
            }
        }
    }

    /// Writes the membership (snapshot header).
    pub fn write_to(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let record = Record {
            cluster_id: self.cluster_id,
            members: self
                .members
                .iter()
                .map(|(&id, a)| {
                    let (k, ips) = addr_record(a);
                    (id, k, ips)
                })
                .collect(),
            removed: self
                .removed
                .iter()
                .map(|(&id, k)| (id, *k.as_bytes()))
                .collect(),
        };
        let bytes = postcard::to_allocvec(&record).map_err(io::Error::other)?;
        out.write_all(&(bytes.len() as u32).to_le_bytes())?;
        out.write_all(&bytes)
    }

    /// Reads what [`Self::write_to`] wrote.
    pub fn read_from(input: &mut dyn io::Read) -> io::Result<Self> {
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > 64 * 1024 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "membership record too large",
            ));
        }
        let mut bytes = vec![0; len];
        input.read_exact(&mut bytes)?;
        let r: Record = postcard::from_bytes(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "membership record holds an invalid key",
            )
        };
        let mut members = BTreeMap::new();
        for (id, key, ips) in r.members {
            members.insert(id, addr_from(key, ips).ok_or_else(bad)?);
        }
        let mut removed = BTreeMap::new();
        for (id, key) in r.removed {
            removed.insert(id, EndpointId::from_bytes(&key).map_err(|_| bad())?);
        }
        Ok(Self {
            cluster_id: r.cluster_id,
            members,
            removed,
        })
    }
}

/// Magic and version at the start of every snapshot: `b"IRS"` + format 2.
const SNAPSHOT_MAGIC: [u8; 4] = *b"IRS\x02";

/// What every snapshot starts with, before the state machine's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The membership as of the snapshot's index.
    pub membership: Membership,
    /// The running hash of every entry applied up to the snapshot's index (the replica
    /// consistency check continues from it); `None` if the node that took it had lost track.
    pub applied_hash: Option<ApplyHash>,
    /// Whether state machine bytes follow (a bootstrap snapshot has none: the state machine
    /// starts empty).
    pub has_state: bool,
}

/// A cluster id every member computes alike: blake3 of `context`, then each member's id and
/// key in id order, cut to 16 bytes.
pub(crate) fn derive_cluster_id(context: &[&[u8]], members: &[Member]) -> [u8; 16] {
    let mut sorted: Vec<(NodeId, [u8; 32])> = members
        .iter()
        .map(|m| (m.node_id, *m.addr.id.as_bytes()))
        .collect();
    sorted.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    for part in context {
        hasher.update(part);
    }
    for (id, key) in &sorted {
        hasher.update(&id.to_le_bytes());
        hasher.update(key);
    }
    let mut cluster_id = [0u8; 16];
    cluster_id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    cluster_id
}

/// Writes the header every snapshot starts with: magic, membership, applied hash, and whether
/// state machine bytes follow.
pub fn write_snapshot_header(out: &mut dyn io::Write, header: &SnapshotHeader) -> io::Result<()> {
    out.write_all(&SNAPSHOT_MAGIC)?;
    header.membership.write_to(out)?;
    match &header.applied_hash {
        Some(hash) => {
            out.write_all(&[1])?;
            out.write_all(hash)?;
        }
        None => out.write_all(&[0])?,
    }
    out.write_all(&[header.has_state as u8])
}

/// Reads a snapshot header; the state machine's bytes (if any) follow in `input`.
pub fn read_snapshot_header(input: &mut dyn io::Read) -> io::Result<SnapshotHeader> {
    let mut magic = [0u8; 4];
    input.read_exact(&mut magic)?;
    if magic != SNAPSHOT_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an iroh-raft snapshot of this format",
        ));
    }
    let membership = Membership::read_from(input)?;
    let mut flag = [0u8; 1];
    input.read_exact(&mut flag)?;
    let applied_hash = match flag[0] {
        0 => None,
        1 => {
            let mut hash = [0u8; 32];
            input.read_exact(&mut hash)?;
            Some(hash)
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot header: bad applied-hash flag",
            ));
        }
    };
    input.read_exact(&mut flag)?;
    Ok(SnapshotHeader {
        membership,
        applied_hash,
        has_state: flag[0] == 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(seed: u8) -> EndpointAddr {
        let key = iroh::SecretKey::from_bytes(&[seed; 32]).public();
        EndpointAddr::new(key).with_ip_addr(([127, 0, 0, 1], 7000 + seed as u16).into())
    }

    #[test]
    fn changes_apply_and_round_trip() {
        let mut m = Membership::initial(&[Member {
            node_id: 1,
            addr: addr(1),
        }]);
        let cs = |voters: Vec<u64>, learners: Vec<u64>| ConfState {
            voters,
            learners,
            ..Default::default()
        };
        let cc = m
            .to_conf_change(
                &MembershipChange::AddLearner {
                    id: 2,
                    addr: addr(2),
                },
                &cs(vec![1], vec![]),
            )
            .unwrap();
        m.apply(&cc, &cs(vec![1], vec![2]));
        assert_eq!(m.admit(&addr(2).id), Some(2));
        assert_eq!(
            m.describe(&cs(vec![1], vec![2]))[1].role,
            MemberRole::Learner
        );
        assert_eq!(
            m.to_conf_change(&MembershipChange::Remove { id: 1 }, &cs(vec![1], vec![2])),
            Err(MembershipRefusal::LastVoter(1))
        );
        let cc = m
            .to_conf_change(&MembershipChange::Remove { id: 2 }, &cs(vec![1], vec![2]))
            .unwrap();
        let cs = cs(vec![1], vec![]);
        m.apply(&cc, &cs);
        assert_eq!(m.admit(&addr(2).id), None);
        assert_eq!(m.admission(&addr(2).id), Admission::Removed(2));
        assert!(m.is_removed(2));
        assert_eq!(m.next_free_id(), 3);
        assert_eq!(
            m.to_conf_change(
                &MembershipChange::AddVoter {
                    id: 2,
                    addr: addr(3)
                },
                &cs
            ),
            Err(MembershipRefusal::RemovedId(2))
        );
        assert_eq!(
            m.to_conf_change(
                &MembershipChange::AddVoter {
                    id: 3,
                    addr: addr(2)
                },
                &cs
            ),
            Err(MembershipRefusal::RemovedEndpoint(addr(2).id.to_string()))
        );
        assert!(matches!(
            m.to_conf_change(
                &MembershipChange::AddVoter {
                    id: 1,
                    addr: addr(4)
                },
                &cs
            ),
            Err(MembershipRefusal::IdTaken { id: 1, .. })
        ));
        for applied_hash in [None, Some([7; 32])] {
            let header = SnapshotHeader {
                membership: m.clone(),
                applied_hash,
                has_state: true,
            };
            let mut buf = Vec::new();
            write_snapshot_header(&mut buf, &header).unwrap();
            buf.extend_from_slice(b"state");
            let mut input = buf.as_slice();
            assert_eq!(read_snapshot_header(&mut input).unwrap(), header);
            assert_eq!(input, b"state");
        }
    }

    #[test]
    fn only_flat_conf_changes_pass_the_wire_check() {
        use protobuf::Message as _;
        let m = Membership::initial(&[Member {
            node_id: 1,
            addr: addr(1),
        }]);
        let cs = ConfState {
            voters: vec![1, 2],
            ..Default::default()
        };
        let joint = m
            .to_conf_change(
                &MembershipChange::Replace {
                    old: 1,
                    id: 3,
                    addr: addr(3),
                },
                &cs,
            )
            .unwrap();
        assert_eq!(joint.get_changes().len(), 2);
        assert!(crate::wire::is_plain_conf_change(
            &joint.write_to_bytes().unwrap()
        ));
        let cc = m
            .to_conf_change(
                &MembershipChange::AddVoter {
                    id: 3,
                    addr: addr(3),
                },
                &cs,
            )
            .unwrap();
        let bytes = cc.write_to_bytes().unwrap();
        assert!(crate::wire::is_plain_conf_change(&bytes));
        assert!(crate::wire::is_plain_conf_change(&[])); // leaving a joint configuration
        // A group (wire type 3) nested in a change, a fixed64 field, an unknown field, truncation.
        assert!(!crate::wire::is_plain_conf_change(&[
            0x12, 0x02, 0x0b, 0x0c
        ]));
        assert!(!crate::wire::is_plain_conf_change(&[
            0x09, 0, 0, 0, 0, 0, 0, 0, 0
        ]));
        assert!(!crate::wire::is_plain_conf_change(&[0x20, 0x01]));
        assert!(!crate::wire::is_plain_conf_change(
            &bytes[..bytes.len() - 1]
        ));
        assert!(!crate::wire::is_plain_conf_change(&[0x08, 0xff]));
    }
}
