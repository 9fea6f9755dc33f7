//! Cluster tickets: signed capabilities that let their holder join, administer or read a cluster.
//! This module owns their encoding, signing and checking; it does no IO. A member issues a ticket
//! with its endpoint's secret key, and whoever admits a newcomer (the protocol handler, the facade)
//! parses the ticket and calls [`Ticket::check`] against the current membership.
//!
//! In short, a ticket is a capability with the members' keys as trust root, no shared secret: it
//! is honoured while its signature checks, its issuer is still a member and it has not expired,
//! and it proves nothing about who holds it, so its role is all it grants. The full trust model
//! and the format are documented on [`Ticket`], where users of the crate see them (this module
//! is private).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::{BASE32_NOPAD, BASE32_NOPAD_NOCASE, HEXLOWER, HEXLOWER_PERMISSIVE};
use iroh::{EndpointAddr, EndpointId, RelayUrl, SecretKey, Signature};
use serde::{Deserialize, Serialize};

/// What every printed ticket of format 1 starts with (a ticket without relays).
const PREFIX: &str = "irohraft1";

/// What every printed ticket of format 2 starts with (a ticket naming the cluster's relays).
const PREFIX_V2: &str = "irohraft2";

/// Signed before a format-1 ticket's body, so the signature means "this is an iroh-raft ticket"
/// and nothing else signed with the same key can be replayed as one.
const DOMAIN: &[u8] = b"iroh-raft ticket v1\0";

/// The same for format 2: a format-1 signature never verifies as a format-2 ticket (relays
/// cannot be added to a ticket after it was signed) and the other way round.
const DOMAIN_V2: &[u8] = b"iroh-raft ticket v2\0";

/// The most relay URLs a ticket may name: 8.
pub const MAX_TICKET_RELAYS: usize = 8;

/// The longest relay URL a ticket may carry, in bytes.
const MAX_RELAY_URL_LEN: usize = 512;

/// The longest ticket text [`Ticket::from_str`] reads, in bytes: 16 KiB. A ticket of
/// [`MAX_TICKET_MEMBERS`] members with a few addresses each is a few KiB, so this only bounds
/// the work done on hostile input.
pub const MAX_TICKET_LEN: usize = 16 * 1024;

/// The most members a ticket may list: 64. Raft clusters are a handful of voters; a ticket only
/// needs enough of them to reach one, and the bound keeps parsing cheap.
pub const MAX_TICKET_MEMBERS: usize = 64;

/// The identity of a cluster, chosen at random when it is created; tickets name it so that one
/// cluster's ticket is refused by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub [u8; 16]);

impl ClusterId {
    /// A fresh id from the thread-local cryptographic RNG.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for ClusterId {
    /// 32 lowercase hex characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&HEXLOWER.encode(&self.0))
    }
}

impl FromStr for ClusterId {
    type Err = ParseError;

    /// Reads 32 hex characters (either case), as printed by `Display`.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError::new(s, "a cluster id (32 hex characters)");
        let bytes = HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .map_err(|_| err())?;
        bytes.try_into().map(Self).map_err(|_| err())
    }
}

/// What a ticket lets its holder do.
///
/// The variant order is part of the ticket format: add new roles at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TicketRole {
    /// Join the cluster as a member.
    Join,
    /// Everything: join, change membership, read.
    Admin,
    /// Read the cluster's state without becoming a member.
    ReadOnly,
}

impl fmt::Display for TicketRole {
    /// `join`, `admin` or `read-only`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TicketRole::Join => "join",
            TicketRole::Admin => "admin",
            TicketRole::ReadOnly => "read-only",
        })
    }
}

impl FromStr for TicketRole {
    type Err = ParseError;

    /// Reads `join`, `admin` or `read-only`, as printed by `Display`.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "join" => Ok(TicketRole::Join),
            "admin" => Ok(TicketRole::Admin),
            "read-only" => Ok(TicketRole::ReadOnly),
            _ => Err(ParseError::new(
                s,
                "a ticket role (join, admin or read-only)",
            )),
        }
    }
}

/// A string that is not a [`ClusterId`] or a [`TicketRole`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not {expected}")]
pub struct ParseError {
    input: String,
    expected: &'static str,
}

impl ParseError {
    fn new(input: &str, expected: &'static str) -> Self {
        Self {
            input: input.to_owned(),
            expected,
        }
    }
}

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// The text is not a ticket at all: wrong prefix, bad base32, cut short, too long, or
    /// holding an invalid key. The string says which.
    #[error("not a valid iroh-raft ticket ({0}); copy the whole ticket again")]
    Malformed(String),
    /// The signature does not verify against the issuer it names: the ticket was forged or
    /// altered after it was issued.
    #[error("ticket signature does not verify: it was forged or altered after it was issued")]
    BadSignature,
    /// The ticket is for another cluster.
    #[error("ticket is for cluster {found}, but this is cluster {expected}")]
    WrongCluster {
        /// The cluster the ticket was checked against.
        expected: ClusterId,
        /// The cluster the ticket names.
        found: ClusterId,
    },
    /// The issuer has been removed from the cluster, which revokes its tickets.
    #[error(
        "ticket was issued by {issuer}, which is no longer a member; \
         ask a current member for a new ticket"
    )]
    IssuerNotMember {
        /// The issuer's endpoint id.
        issuer: String,
    },
    /// The ticket's expiry has passed.
    #[error("ticket expired at unix time {expired_at}; ask a member for a new ticket")]
    Expired {
        /// When the ticket stopped being valid, in unix seconds.
        expired_at: u64,
    },
}

fn malformed(why: impl Into<String>) -> TicketError {
    TicketError::Malformed(why.into())
}

/// A signed capability for one cluster.
///
/// # Trust model
/// There is no shared cluster secret: the members' iroh keys are the trust root. A member issues
/// a ticket by signing it with its endpoint's secret key, and a node honours a ticket while
/// 1. its ed25519 signature verifies against the `issuer` key it names,
/// 2. it names this cluster,
/// 3. its issuer is still a current member (removing a member revokes every ticket it issued), and
/// 4. it has not expired (it is valid while `now < expires_at`).
///
/// [`Ticket::check`] runs exactly these checks, in this order. A ticket is a bearer capability:
/// holding one proves nothing about who the holder is, since anyone who sees the string can
/// present it. What it grants is its [`TicketRole`] and nothing tied to an identity, so keep
/// expiries short and treat the string like a password.
///
/// # Format
/// The printable form is `irohraft1` followed by the unpadded base32 (lowercase when printed,
/// either case when parsed) of the postcard encoding of, in order: the cluster id (16 bytes),
/// the members (each an endpoint id and its direct socket addresses), the role (a variant index:
/// the variant order of [`TicketRole`] is part of the format), `expires_at` (unix seconds), the
/// issuer's endpoint id, and the 64-byte signature. The signature covers
/// `b"iroh-raft ticket v1\0"` followed by the postcard encoding of every field but itself; the
/// domain separator keeps a ticket signature from ever being valid for another message signed
/// with the same endpoint key.
///
/// A ticket of a cluster that runs with relays ([`Ticket::relays`] not empty) is printed in
/// format 2: `irohraft2`, then the same encoding with the relay URLs (as strings, at most
/// [`MAX_TICKET_RELAYS`]) after the members, signed under `b"iroh-raft ticket v2\0"`. A
/// ticket without relays is always printed in format 1, so releases that only read format 1
/// read it. Custom addresses are not part of a ticket.
///
/// Parsing reads at most [`MAX_TICKET_LEN`] bytes of text and [`MAX_TICKET_MEMBERS`] members,
/// reports anything it cannot read as [`TicketError::Malformed`], and never panics.
///
/// Changing any public field afterwards makes [`Ticket::verify_signature`] fail (relay URLs or
/// custom addresses added to `members` are the exception: only [`Ticket::relays`] are part of
/// a ticket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The cluster this ticket is for.
    pub cluster_id: ClusterId,
    /// Members to dial, by endpoint id and direct socket addresses.
    pub members: Vec<EndpointAddr>,
    /// The relays the cluster's members are reachable through (empty: none, direct addresses
    /// only). A newcomer with no relays of its own uses these, and dials every member through
    /// them as well as at its direct addresses.
    pub relays: Vec<RelayUrl>,
    /// What the ticket grants.
    pub role: TicketRole,
    /// The ticket is valid while the time is before this, in unix seconds.
    pub expires_at: u64,
    /// The member that signed the ticket.
    pub issuer: EndpointId,
    signature: Signature,
}

/// Every field but the signature, in the form that is signed and sent.
#[derive(Serialize, Deserialize)]
struct Body {
    cluster_id: ClusterId,
    members: Vec<([u8; 32], Vec<SocketAddr>)>,
    role: TicketRole,
    expires_at: u64,
    issuer: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct Wire {
    body: Body,
    signature: Signature,
}

/// Format 2's body: format 1's with the relay URLs after the members.
#[derive(Serialize, Deserialize)]
struct BodyV2 {
    cluster_id: ClusterId,
    members: Vec<([u8; 32], Vec<SocketAddr>)>,
    relays: Vec<String>,
    role: TicketRole,
    expires_at: u64,
    issuer: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct WireV2 {
    body: BodyV2,
    signature: Signature,
}

impl Ticket {
    /// Signs a ticket with `secret`; the issuer is `secret`'s public key, which must be a member
    /// of the cluster for the ticket to be honoured.
    ///
    /// Only the members' endpoint ids and direct socket addresses are kept. Times before the
    /// unix epoch count as the epoch, and fractions of a second are dropped. A ticket listing
    /// more than [`MAX_TICKET_MEMBERS`] members is signed but will not parse back.
    pub fn issue(
        secret: &SecretKey,
        cluster_id: ClusterId,
        members: Vec<EndpointAddr>,
        role: TicketRole,
        expires_at: SystemTime,
    ) -> Ticket {
        Self::issue_with_relays(secret, cluster_id, members, Vec::new(), role, expires_at)
    }

    /// [`Ticket::issue`] for a cluster whose members are also reachable through `relays`
    /// (printed in format 2 when there are any). Only the first [`MAX_TICKET_RELAYS`] are kept.
    pub fn issue_with_relays(
        secret: &SecretKey,
        cluster_id: ClusterId,
        members: Vec<EndpointAddr>,
        relays: Vec<RelayUrl>,
        role: TicketRole,
        expires_at: SystemTime,
    ) -> Ticket {
        let mut unique: Vec<RelayUrl> = Vec::new();
        for r in relays {
            if unique.len() < MAX_TICKET_RELAYS && !unique.contains(&r) {
                unique.push(r);
            }
        }
        let relays = unique;
        let members = members
            .iter()
            .map(|a| {
                a.ip_addrs()
                    .fold(EndpointAddr::new(a.id), |b, ip| b.with_ip_addr(*ip))
            })
            .collect();
        let mut ticket = Ticket {
            cluster_id,
            members,
            relays,
            role,
            expires_at: unix_secs(expires_at),
            issuer: secret.public(),
            signature: Signature::from_bytes(&[0; Signature::LENGTH]),
        };
        ticket.signature = secret.sign(&ticket.signed_bytes());
        ticket
    }

    /// Checks that `issuer` signed exactly this ticket.
    pub fn verify_signature(&self) -> Result<(), TicketError> {
        self.issuer
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| TicketError::BadSignature)
    }

    /// `members` with the ticket's relays added to each member's addresses: what to dial.
    pub fn members_via_relays(&self) -> Vec<EndpointAddr> {
        self.members
            .iter()
            .map(|m| crate::wire::with_relays(m.clone(), &self.relays))
            .collect()
    }

    /// The domain separator of the ticket's format followed by the postcard encoding of its
    /// body.
    fn signed_bytes(&self) -> Vec<u8> {
        let bytes = if self.relays.is_empty() {
            postcard::to_extend(&self.body(), DOMAIN.to_vec())
        } else {
            postcard::to_extend(&self.body_v2(), DOMAIN_V2.to_vec())
        };
        bytes.expect("plain records")
    }

    fn body_v2(&self) -> BodyV2 {
        let Body {
            cluster_id,
            members,
            role,
            expires_at,
            issuer,
        } = self.body();
        BodyV2 {
            cluster_id,
            members,
            relays: self.relays.iter().map(|r| r.to_string()).collect(),
            role,
            expires_at,
            issuer,
        }
    }

    /// Checks everything that makes a ticket honoured, given the cluster this node belongs to,
    /// the current time, and whether an endpoint is a current member.
    ///
    /// The signature is checked first: nothing an unsigned ticket says is worth reporting.
    /// This does not look at the role; ask [`Ticket::allows`] for that.
    pub fn check(
        &self,
        expected_cluster: &ClusterId,
        now: SystemTime,
        is_member: impl Fn(&EndpointId) -> bool,
    ) -> Result<(), TicketError> {
        self.verify_signature()?;
        if self.cluster_id != *expected_cluster {
            return Err(TicketError::WrongCluster {
                expected: *expected_cluster,
                found: self.cluster_id,
            });
        }
        if !is_member(&self.issuer) {
            return Err(TicketError::IssuerNotMember {
                issuer: self.issuer.to_string(),
            });
        }
        if unix_secs(now) >= self.expires_at {
            return Err(TicketError::Expired {
                expired_at: self.expires_at,
            });
        }
        Ok(())
    }

    /// Whether this ticket's role covers `needed`: `Admin` covers every role, any other role
    /// only itself.
    pub fn allows(&self, needed: TicketRole) -> bool {
        self.role == TicketRole::Admin || self.role == needed
    }

    fn body(&self) -> Body {
        Body {
            cluster_id: self.cluster_id,
            members: self
                .members
                .iter()
                .map(|a| (*a.id.as_bytes(), a.ip_addrs().copied().collect()))
                .collect(),
            role: self.role,
            expires_at: self.expires_at,
            issuer: *self.issuer.as_bytes(),
        }
    }

    fn from_wire_v2(wire: WireV2) -> Result<Self, TicketError> {
        let BodyV2 {
            cluster_id,
            members,
            relays,
            role,
            expires_at,
            issuer,
        } = wire.body;
        if relays.is_empty() || relays.len() > MAX_TICKET_RELAYS {
            return Err(malformed(format!(
                "{} relays in a format-2 ticket, 1 to {MAX_TICKET_RELAYS} are accepted",
                relays.len()
            )));
        }
        let relays = relays
            .iter()
            .map(|r| {
                if r.len() > MAX_RELAY_URL_LEN {
                    return Err(malformed("a relay URL longer than 512 bytes"));
                }
                r.parse::<RelayUrl>()
                    .map_err(|e| malformed(format!("relay URL {r:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let body = Body {
            cluster_id,
            members,
            role,
            expires_at,
            issuer,
        };
        let mut ticket = Self::from_wire(Wire {
            body,
            signature: wire.signature,
        })?;
        ticket.relays = relays;
        Ok(ticket)
    }

    fn from_wire(wire: Wire) -> Result<Self, TicketError> {
        let Body {
            cluster_id,
            members,
            role,
            expires_at,
            issuer,
        } = wire.body;
        if members.len() > MAX_TICKET_MEMBERS {
            return Err(malformed(format!(
                "{} members, at most {MAX_TICKET_MEMBERS} are accepted",
                members.len()
            )));
        }
        let key = |bytes: &[u8; 32], what: &str| {
            EndpointId::from_bytes(bytes)
                .map_err(|_| malformed(format!("{what} is not a valid key")))
        };
        let members = members
            .into_iter()
            .map(|(id, ips)| {
                let addr = EndpointAddr::new(key(&id, "a member's endpoint id")?);
                Ok(ips.into_iter().fold(addr, |a, ip| a.with_ip_addr(ip)))
            })
            .collect::<Result<_, TicketError>>()?;
        Ok(Ticket {
            cluster_id,
            members,
            relays: Vec::new(),
            role,
            expires_at,
            issuer: key(&issuer, "the issuer's endpoint id")?,
            signature: wire.signature,
        })
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl fmt::Display for Ticket {
    /// `irohraft1` (or `irohraft2` with relays) and lowercase unpadded base32; see [`Ticket`]
    /// for the format.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, bytes) = if self.relays.is_empty() {
            let wire = Wire {
                body: self.body(),
                signature: self.signature,
            };
            (PREFIX, postcard::to_allocvec(&wire))
        } else {
            let wire = WireV2 {
                body: self.body_v2(),
                signature: self.signature,
            };
            (PREFIX_V2, postcard::to_allocvec(&wire))
        };
        let text = BASE32_NOPAD
            .encode(&bytes.expect("plain records"))
            .to_ascii_lowercase();
        write!(f, "{prefix}{text}")
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    /// Reads a ticket as printed by `Display` (in either case). Only the encoding is checked
    /// here: call [`Ticket::check`] before honouring it.
    fn from_str(s: &str) -> Result<Self, TicketError> {
        if s.len() > MAX_TICKET_LEN {
            return Err(malformed(format!(
                "{} bytes long, at most {MAX_TICKET_LEN} are accepted",
                s.len()
            )));
        }
        let after = |prefix: &str| {
            s.get(..prefix.len())
                .filter(|p| p.eq_ignore_ascii_case(prefix))
                .and_then(|_| s.get(prefix.len()..))
        };
        let (payload, v2) = match (after(PREFIX), after(PREFIX_V2)) {
            (Some(p), _) => (p, false),
            (None, Some(p)) => (p, true),
            (None, None) => {
                return Err(malformed(format!(
                    "it does not start with {PREFIX:?} or {PREFIX_V2:?}"
                )));
            }
        };
        let bytes = BASE32_NOPAD_NOCASE
            .decode(payload.as_bytes())
            .map_err(|e| malformed(format!("bad base32: {e}")))?;
        let trailing = |rest: &[u8]| {
            if rest.is_empty() {
                Ok(())
            } else {
                Err(malformed(format!(
                    "{} unexpected trailing bytes",
                    rest.len()
                )))
            }
        };
        let cut = |e: postcard::Error| malformed(format!("cut short or corrupted: {e}"));
        if v2 {
            let (wire, rest) = postcard::take_from_bytes::<WireV2>(&bytes).map_err(cut)?;
            trailing(rest)?;
            Ticket::from_wire_v2(wire)
        } else {
            let (wire, rest) = postcard::take_from_bytes::<Wire>(&bytes).map_err(cut)?;
            trailing(rest)?;
            Ticket::from_wire(wire)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    const EXPIRY: u64 = 1_790_000_000;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    fn addr(seed: u8) -> EndpointAddr {
        EndpointAddr::new(key(seed).public())
            .with_ip_addr(([127, 0, 0, 1], 7000 + u16::from(seed)).into())
            .with_ip_addr("[::1]:9000".parse().unwrap())
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const CLUSTER: ClusterId = ClusterId([7; 16]);

    fn ticket(role: TicketRole) -> Ticket {
        let members = vec![addr(1), addr(2), addr(3)];
        Ticket::issue(&key(1), CLUSTER, members, role, at(EXPIRY))
    }

    fn members_1_to_3(id: &EndpointId) -> bool {
        (1..=3).any(|s| key(s).public() == *id)
    }

    fn check(t: &Ticket, now: u64) -> Result<(), TicketError> {
        t.check(&CLUSTER, at(now), members_1_to_3)
    }

    #[test]
    fn round_trips_through_its_string() {
        let t = ticket(TicketRole::Join);
        let s = t.to_string();
        assert!(s.starts_with("irohraft1"));
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_eq!(s.parse::<Ticket>(), Ok(t.clone()));
        assert_eq!(s.to_ascii_uppercase().parse::<Ticket>(), Ok(t.clone()));
        assert_eq!(t.members, vec![addr(1), addr(2), addr(3)]);
        assert_eq!(check(&t, EXPIRY - 1), Ok(()));
    }

    fn relay(n: u8) -> RelayUrl {
        format!("https://relay{n}.example.com").parse().unwrap()
    }

    #[test]
    fn a_ticket_with_relays_is_format_2_and_signed_over_them() {
        let members = vec![addr(1), addr(2)];
        let t = Ticket::issue_with_relays(
            &key(1),
            CLUSTER,
            members,
            vec![relay(1), relay(2)],
            TicketRole::Join,
            at(EXPIRY),
        );
        let s = t.to_string();
        assert!(s.starts_with("irohraft2"), "{s}");
        let repeated = Ticket::issue_with_relays(
            &key(1),
            CLUSTER,
            vec![addr(1)],
            vec![relay(1), relay(2), relay(1)],
            TicketRole::Join,
            at(EXPIRY),
        );
        assert_eq!(
            repeated.relays,
            vec![relay(1), relay(2)],
            "each relay named once"
        );
        let back: Ticket = s.parse().unwrap();
        assert_eq!(back, t);
        assert_eq!(back.relays, vec![relay(1), relay(2)]);
        assert_eq!(check(&back, EXPIRY - 1), Ok(()));
        // Every member is dialled through the relays too.
        for m in back.members_via_relays() {
            assert_eq!(m.relay_urls().count(), 2);
            assert_eq!(m.ip_addrs().count(), 2);
        }
        // Relays cannot be added, removed or changed after signing.
        let tampers: [fn(&mut Ticket); 3] = [
            |t| t.relays.push(relay(3)),
            |t| t.relays[0] = relay(3),
            |t| t.relays.clear(),
        ];
        for tamper in tampers {
            let mut forged = t.clone();
            tamper(&mut forged);
            let reparsed: Ticket = forged.to_string().parse().unwrap();
            assert_eq!(reparsed.verify_signature(), Err(TicketError::BadSignature));
        }
        // Without relays the same ticket is format 1, readable by older releases.
        assert!(
            ticket(TicketRole::Join)
                .to_string()
                .starts_with("irohraft1")
        );
    }

    #[test]
    fn a_format_2_ticket_with_bad_relays_is_malformed() {
        let body = |relays: Vec<String>| BodyV2 {
            cluster_id: CLUSTER,
            members: vec![(*key(1).public().as_bytes(), vec![])],
            relays,
            role: TicketRole::Join,
            expires_at: EXPIRY,
            issuer: *key(1).public().as_bytes(),
        };
        let text = |body: BodyV2| {
            let wire = WireV2 {
                body,
                signature: Signature::from_bytes(&[0; 64]),
            };
            let bytes = postcard::to_allocvec(&wire).unwrap();
            format!(
                "{PREFIX_V2}{}",
                BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
            )
        };
        for relays in [
            vec![],
            vec!["not a url".to_string()],
            vec![format!("https://{}.example.com", "a".repeat(600))],
            (0..9)
                .map(|i| format!("https://r{i}.example.com"))
                .collect(),
        ] {
            let parsed = text(body(relays.clone())).parse::<Ticket>();
            assert!(
                matches!(parsed, Err(TicketError::Malformed(_))),
                "{relays:?}: {parsed:?}"
            );
        }
    }

    #[test]
    fn cluster_ids_and_roles_round_trip() {
        let id = ClusterId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse(), Ok(id));
        assert_ne!(ClusterId::random(), id);
        assert!("0123".parse::<ClusterId>().is_err());
        assert!("zz".repeat(16).parse::<ClusterId>().is_err());
        for role in [TicketRole::Join, TicketRole::Admin, TicketRole::ReadOnly] {
            assert_eq!(role.to_string().parse(), Ok(role));
        }
        assert_eq!(TicketRole::ReadOnly.to_string(), "read-only");
        assert!("Admin".parse::<TicketRole>().is_err());
    }

    #[test]
    fn tampering_with_any_field_breaks_the_signature() {
        let tampers: [fn(&mut Ticket); 6] = [
            |t| t.cluster_id.0[0] ^= 1,
            |t| t.members.push(addr(9)),
            |t| t.members[0] = addr(9),
            |t| t.role = TicketRole::Admin,
            |t| t.expires_at += 1,
            |t| t.issuer = key(2).public(),
        ];
        for tamper in tampers {
            let mut t = ticket(TicketRole::Join);
            tamper(&mut t);
            assert_eq!(t.verify_signature(), Err(TicketError::BadSignature));
            let reparsed: Ticket = t.to_string().parse().unwrap();
            assert_eq!(check(&reparsed, 0), Err(TicketError::BadSignature));
        }
    }

    #[test]
    fn signed_by_another_key_than_the_issuer_is_bad() {
        let mut t = ticket(TicketRole::Admin);
        t.signature = key(2).sign(&t.signed_bytes());
        assert_eq!(t.issuer, key(1).public());
        assert_eq!(check(&t, 0), Err(TicketError::BadSignature));
    }

    #[test]
    fn checks_cluster_then_membership_then_expiry() {
        let t = ticket(TicketRole::Join);
        let other = ClusterId([8; 16]);
        assert_eq!(
            t.check(&other, at(EXPIRY), |_| false),
            Err(TicketError::WrongCluster {
                expected: other,
                found: CLUSTER
            })
        );
        let not_member = t.check(&CLUSTER, at(EXPIRY), |id| *id != key(1).public());
        assert_eq!(
            not_member,
            Err(TicketError::IssuerNotMember {
                issuer: key(1).public().to_string()
            })
        );
        let expired = Err(TicketError::Expired { expired_at: EXPIRY });
        assert_eq!(check(&t, EXPIRY), expired);
        assert_eq!(check(&t, EXPIRY + 1), expired);
        assert_eq!(
            t.check(
                &CLUSTER,
                at(EXPIRY) - Duration::from_millis(1),
                members_1_to_3
            ),
            Ok(())
        );
        assert!(
            not_member
                .unwrap_err()
                .to_string()
                .contains("no longer a member")
        );
    }

    #[test]
    fn malformed_text_is_refused() {
        let valid = ticket(TicketRole::Join).to_string();
        let too_long = format!("irohraft1{}", "a".repeat(MAX_TICKET_LEN));
        for s in [
            "",
            "irohraft1",
            "irohraft",
            "hello",
            "irohraft1!!!",
            "irohraft1ab",
            "é",
            &too_long,
        ] {
            assert!(
                matches!(s.parse::<Ticket>(), Err(TicketError::Malformed(_))),
                "{s:?}"
            );
        }
        for len in 0..valid.len() {
            let res = valid.get(..len).map(str::parse::<Ticket>);
            assert!(matches!(res, Some(Err(TicketError::Malformed(_)))), "{len}");
        }
        assert!(matches!(
            format!("{valid}aa").parse::<Ticket>(),
            Err(TicketError::Malformed(_))
        ));
    }

    #[test]
    fn a_flipped_character_is_malformed_or_unsigned() {
        let valid = ticket(TicketRole::Join).to_string();
        for i in 0..valid.len() {
            let mut bytes = valid.clone().into_bytes();
            bytes[i] = if bytes[i] == b'q' { b'r' } else { b'q' };
            let flipped = String::from_utf8(bytes).unwrap();
            match flipped.parse::<Ticket>() {
                Err(TicketError::Malformed(_)) => {}
                Ok(t) => assert_eq!(t.verify_signature(), Err(TicketError::BadSignature), "{i}"),
                Err(e) => panic!("position {i}: {e}"),
            }
        }
    }

    #[test]
    fn too_many_members_or_a_bad_key_is_malformed() {
        let members = (0..=MAX_TICKET_MEMBERS as u8).map(addr).collect();
        let big = Ticket::issue(&key(1), CLUSTER, members, TicketRole::Join, at(EXPIRY));
        assert!(matches!(
            big.to_string().parse::<Ticket>(),
            Err(TicketError::Malformed(_))
        ));

        let bad_key = (0..=u8::MAX)
            .map(|b| [b; 32])
            .find(|k| EndpointId::from_bytes(k).is_err())
            .unwrap();
        let mut body = ticket(TicketRole::Join).body();
        body.issuer = bad_key;
        let wire = Wire {
            body,
            signature: Signature::from_bytes(&[0; 64]),
        };
        let text = format!(
            "{PREFIX}{}",
            BASE32_NOPAD.encode(&postcard::to_allocvec(&wire).unwrap())
        );
        assert!(matches!(
            text.parse::<Ticket>(),
            Err(TicketError::Malformed(_))
        ));
    }

    #[test]
    fn allows_matrix() {
        use TicketRole::*;
        let all = [Join, Admin, ReadOnly];
        for role in all {
            let t = ticket(role);
            for needed in all {
                let expected = role == Admin || role == needed;
                assert_eq!(t.allows(needed), expected, "{role} allows {needed}");
            }
        }
        assert!(!ticket(ReadOnly).allows(Join));
        assert!(!ticket(Join).allows(Admin));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC*", tail in "[a-z2-7]{0,300}") {
            let _ = s.parse::<Ticket>();
            let _ = format!("irohraft1{tail}").parse::<Ticket>();
            let _ = s.parse::<ClusterId>();
        }
    }
}
