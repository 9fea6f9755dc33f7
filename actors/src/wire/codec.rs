//! Frame encoding: `u32` little-endian length, then the rkyv archive of a [`Frame`].

use rkyv::{rancor, util::AlignedVec};

use super::{CloseCode, Frame, MAX_FRAME_SIZE};
use crate::types::NodeId;

/// Why a received frame was refused. Each maps to the [`CloseCode`] the connection is closed with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A length prefix above [`MAX_FRAME_SIZE`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// [`MAX_FRAME_SIZE`].
        max: usize,
    },
    /// The payload is not a valid archive of [`Frame`].
    #[error("frame does not decode: {reason}")]
    Malformed {
        /// What bytecheck or a field check reported.
        reason: String,
    },
    /// The first frame of a stream was not a Hello, or a second Hello came.
    #[error("stream must start with exactly one Hello")]
    BadHello,
    /// Unknown protocol version.
    #[error("peer speaks protocol version {theirs}, we speak {ours}")]
    VersionMismatch {
        /// Version in the peer's Hello.
        theirs: u32,
        /// [`super::PROTOCOL_VERSION`].
        ours: u32,
    },
    /// A frame or message claimed a sender other than the authenticated one, or a receiver other
    /// than this node.
    #[error("message claims to be from {claimed} to {to}, but the stream is from {actual} to {me}")]
    WrongParty {
        /// The `from` in the frame.
        claimed: NodeId,
        /// The authenticated sender.
        actual: NodeId,
        /// The `to` in the frame.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
    /// The Hello's incarnation is below one already seen from the same member.
    #[error("node {from} sent incarnation {incarnation}, below one already seen: stale data dir")]
    StaleIncarnation {
        /// The sender.
        from: NodeId,
        /// The incarnation it sent.
        incarnation: u64,
    },
}

impl WireError {
    /// The close code a connection is closed with when this error occurs on it.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WireError::TooLarge { .. } => CloseCode::FrameTooLarge,
            WireError::Malformed { .. } => CloseCode::MalformedFrame,
            WireError::BadHello | WireError::WrongParty { .. } => CloseCode::ProtocolViolation,
            WireError::VersionMismatch { .. } => CloseCode::VersionMismatch,
            WireError::StaleIncarnation { .. } => CloseCode::StaleIncarnation,
        }
    }

    pub(crate) fn malformed(reason: impl std::fmt::Display) -> Self {
        WireError::Malformed {
            reason: reason.to_string(),
        }
    }
}

/// Appends one frame (length prefix and archive) to `out`.
///
/// Fails only if the frame would exceed [`MAX_FRAME_SIZE`]: the sender checks the same limit the
/// receiver enforces.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<(), WireError> {
    let bytes = rkyv::to_bytes::<rancor::Error>(frame).map_err(WireError::malformed)?;
    if bytes.len() > MAX_FRAME_SIZE {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_SIZE,
        });
    }
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Checks a declared frame length before anything is buffered.
pub(crate) fn check_len(len: u32) -> Result<usize, WireError> {
    let len = len as usize;
    if len > MAX_FRAME_SIZE {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME_SIZE,
        });
    }
    Ok(len)
}

/// Validates and decodes one frame payload (without its length prefix). Never panics, whatever
/// the bytes.
pub fn decode_frame(payload: &[u8]) -> Result<Frame, WireError> {
    check_len(u32::try_from(payload.len()).unwrap_or(u32::MAX))?;
    // rkyv needs the archive aligned; a copy into an aligned buffer is cheaper than the risk of
    // unvalidated access.
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    decode_aligned(&aligned)
}

/// Validates and decodes a payload already in an aligned buffer.
pub(crate) fn decode_aligned(payload: &AlignedVec<16>) -> Result<Frame, WireError> {
    rkyv::from_bytes::<Frame, rancor::Error>(payload).map_err(WireError::malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Hello, WireEntry, WireMessage};

    fn sample() -> Frame {
        Frame::Raft(vec![WireMessage {
            msg_type: 3,
            to: 2,
            from: 1,
            term: 7,
            entries: vec![WireEntry {
                entry_type: 0,
                term: 7,
                index: 9,
                data: b"hello".to_vec(),
                context: vec![1; 16],
            }],
            ..Default::default()
        }])
    }

    #[test]
    fn round_trip() {
        for frame in [
            sample(),
            Frame::Hello(Hello {
                version: 1,
                from: 1,
                to: 2,
                incarnation: 3,
            }),
            Frame::Checkpoint {
                index: 9,
                hash: [5; 32],
            },
        ] {
            let mut out = Vec::new();
            encode_frame(&frame, &mut out).unwrap();
            let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
            assert_eq!(len, out.len() - 4);
            assert_eq!(decode_frame(&out[4..]).unwrap(), frame);
        }
    }

    #[test]
    fn garbage_and_truncation_are_refused() {
        let mut out = Vec::new();
        encode_frame(&sample(), &mut out).unwrap();
        let payload = &out[4..];
        // The length prefix is what guarantees a whole frame; a truncated archive must still
        // never panic or read out of bounds, and most cuts are refused outright.
        let refused = (0..payload.len())
            .filter(|&cut| decode_frame(&payload[..cut]).is_err())
            .count();
        assert!(
            refused * 10 >= payload.len() * 9,
            "{refused} of {} cuts refused",
            payload.len()
        );
        assert!(decode_frame(&[]).is_err());
        assert!(decode_frame(&[0xff; 64]).is_err());
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        assert!(matches!(
            check_len(MAX_FRAME_SIZE as u32 + 1),
            Err(WireError::TooLarge { .. })
        ));
        assert_eq!(check_len(10).unwrap(), 10);
    }
}
