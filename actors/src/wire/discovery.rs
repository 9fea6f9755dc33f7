//! Messages and framing of the discovery protocol; the specification is in the [`super`]
//! module doc.

use rkyv::{Archive, Deserialize, Serialize, rancor, util::AlignedVec};

/// ALPN of the discovery protocol.
pub const DISCOVERY_ALPN: &[u8] = b"iroh-raft-discovery/0";

/// Version carried in every request.
pub const DISCOVERY_VERSION: u32 = 1;

/// Largest discovery message (64 KiB): a ticket and a membership list fit many times over.
pub const MAX_DISCOVERY_FRAME: usize = 64 * 1024;

/// What a newcomer asks.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum DiscoveryRequest {
    /// Join the cluster.
    Join {
        /// [`DISCOVERY_VERSION`].
        version: u32,
        /// The ticket, as printed.
        ticket: String,
        /// The newcomer's direct socket addresses, as strings.
        addrs: Vec<String>,
        /// Stay a learner instead of being promoted to voter.
        learner: bool,
    },
}

/// A member of the cluster as the discovery protocol describes it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DiscoveryMember {
    /// Raft id.
    pub id: u64,
    /// Endpoint id (public key bytes).
    pub key: [u8; 32],
    /// Direct socket addresses, as strings.
    pub addrs: Vec<String>,
}

/// Why a member refused a newcomer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The ticket does not parse.
    Malformed,
    /// The signature does not check (forged or tampered).
    BadSignature,
    /// The ticket is for another cluster.
    WrongCluster,
    /// The member that issued the ticket is no longer a member.
    IssuerNotMember,
    /// The ticket has expired.
    Expired,
    /// The ticket's role does not allow joining.
    WrongRole,
    /// The newcomer's key belongs to a removed member.
    Removed,
    /// The protocol version is not spoken here.
    Version,
    /// The cluster could not add it (no leader, timeout, learner not catching up).
    Failed,
}

/// A member's answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum DiscoveryResponse {
    /// Added as a learner with this id; the node may start.
    Accepted {
        /// The newcomer's Raft id.
        id: u64,
        /// The cluster's id.
        cluster_id: [u8; 16],
        /// Current members (the newcomer included).
        members: Vec<DiscoveryMember>,
    },
    /// Caught up, and promoted to voter unless it asked to stay a learner.
    Joined {
        /// Log index of the last membership change for it.
        index: u64,
    },
    /// Refused; nothing more follows.
    Refused {
        /// The reason, for programs.
        kind: RefusalKind,
        /// The reason, for people.
        message: String,
    },
}

/// Why a discovery message could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryWireError {
    /// The stream failed or ended early.
    #[error("discovery stream failed: {0}")]
    Io(String),
    /// A length above [`MAX_DISCOVERY_FRAME`].
    #[error("discovery message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The bytes are not a valid message.
    #[error("discovery message does not decode: {0}")]
    Malformed(String),
}

/// Anything rkyv can archive into a frame (both protocols' messages).
pub trait Archivable:
    for<'a> Serialize<
    rancor::Strategy<
        rkyv::ser::Serializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::ser::sharing::Share,
        >,
        rancor::Error,
    >,
>
{
}

impl<T> Archivable for T where
    T: for<'a> Serialize<
        rancor::Strategy<
            rkyv::ser::Serializer<
                AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::ser::sharing::Share,
            >,
            rancor::Error,
        >,
    >
{
}

/// Anything that decodes, validated, from a frame's archive (both protocols' messages).
pub(crate) trait Decodable:
    Archive<
        Archived: for<'a> rkyv::bytecheck::CheckBytes<
            rkyv::api::high::HighValidator<'a, rancor::Error>,
        > + Deserialize<Self, rkyv::api::high::HighDeserializer<rancor::Error>>,
    > + Sized
{
}

impl<T> Decodable for T where
    T: Archive<
        Archived: for<'a> rkyv::bytecheck::CheckBytes<
            rkyv::api::high::HighValidator<'a, rancor::Error>,
        > + Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
    >
{
}

/// Validates and decodes one frame's archive (already in an aligned buffer).
pub(crate) fn decode_framed<T: Decodable>(archive: &[u8]) -> Result<T, DiscoveryWireError> {
    rkyv::from_bytes::<T, rancor::Error>(archive)
        .map_err(|e| DiscoveryWireError::Malformed(e.to_string()))
}

/// One frame (`u32` LE length, then the rkyv archive) of at most `max` bytes: the framing the
/// discovery and management protocols share.
pub(crate) fn encode_framed<T: Archivable>(
    msg: &T,
    max: usize,
) -> Result<Vec<u8>, DiscoveryWireError> {
    let bytes = rkyv::to_bytes::<rancor::Error>(msg)
        .map_err(|e| DiscoveryWireError::Malformed(e.to_string()))?;
    if bytes.len() > max {
        return Err(DiscoveryWireError::TooLarge(bytes.len()));
    }
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(out)
}

/// Reads one frame of at most `max` bytes; `Ok(None)` when the stream ended cleanly first.
pub(crate) async fn read_framed(
    recv: &mut iroh::endpoint::RecvStream,
    max: usize,
) -> Result<Option<AlignedVec>, DiscoveryWireError> {
    use iroh::endpoint::ReadExactError;
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(DiscoveryWireError::Io(e.to_string())),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(DiscoveryWireError::TooLarge(len));
    }
    let mut bytes = AlignedVec::with_capacity(len);
    bytes.resize(len, 0);
    recv.read_exact(&mut bytes)
        .await
        .map_err(|e| DiscoveryWireError::Io(e.to_string()))?;
    Ok(Some(bytes))
}

/// Encodes one framed discovery message.
pub fn encode_discovery<T: Archivable>(msg: &T) -> Result<Vec<u8>, DiscoveryWireError> {
    encode_framed(msg, MAX_DISCOVERY_FRAME)
}

async fn read_discovery(
    recv: &mut iroh::endpoint::RecvStream,
) -> Result<AlignedVec, DiscoveryWireError> {
    read_framed(recv, MAX_DISCOVERY_FRAME)
        .await?
        .ok_or_else(|| DiscoveryWireError::Io("the stream ended before a message".into()))
}

/// Reads one framed [`DiscoveryRequest`].
pub async fn read_request(
    recv: &mut iroh::endpoint::RecvStream,
) -> Result<DiscoveryRequest, DiscoveryWireError> {
    decode_framed(&read_discovery(recv).await?)
}

/// Reads one framed [`DiscoveryResponse`].
pub async fn read_response(
    recv: &mut iroh::endpoint::RecvStream,
) -> Result<DiscoveryResponse, DiscoveryWireError> {
    decode_framed(&read_discovery(recv).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let req = DiscoveryRequest::Join {
            version: DISCOVERY_VERSION,
            ticket: "irohraft1abc".into(),
            addrs: vec!["127.0.0.1:5000".into()],
            learner: false,
        };
        let framed = encode_discovery(&req).unwrap();
        let mut payload = AlignedVec::<16>::new();
        payload.extend_from_slice(&framed[4..]);
        assert_eq!(
            rkyv::from_bytes::<DiscoveryRequest, rancor::Error>(&payload).unwrap(),
            req
        );
        let resp = DiscoveryResponse::Refused {
            kind: RefusalKind::Expired,
            message: "expired".into(),
        };
        let framed = encode_discovery(&resp).unwrap();
        let mut payload = AlignedVec::<16>::new();
        payload.extend_from_slice(&framed[4..]);
        assert_eq!(
            rkyv::from_bytes::<DiscoveryResponse, rancor::Error>(&payload).unwrap(),
            resp
        );
        let mut garbage = AlignedVec::<16>::new();
        garbage.extend_from_slice(&[0xff; 40]);
        assert!(rkyv::from_bytes::<DiscoveryResponse, rancor::Error>(&garbage).is_err());
    }
}
