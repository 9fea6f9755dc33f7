//! [`EventSubscription`]: a node's events, streamed on a lane of their own.

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh_raft_actors::{
    ClusterEvent, EventItem,
    wire::{MgmtReader, MgmtResponse},
};

use super::ClientError;

/// A subscription to a node's events.
pub struct EventSubscription {
    pub(super) recv: RecvStream,
    pub(super) reader: MgmtReader,
    pub(super) _send: SendStream,
    pub(super) _conn: Connection,
    /// The run of the node's event bus the numbers belong to (pass it to
    /// [`IrohRaftManagementClient::resume`](super::IrohRaftManagementClient::resume)).
    pub epoch: u64,
    /// Number of the last event received (or reported missed).
    pub last_seq: u64,
}

impl EventSubscription {
    /// The next event, a "missed N" marker, or `None` once the node ended the stream.
    pub async fn next(&mut self) -> Option<Result<EventItem, ClientError>> {
        let response = self
            .reader
            .next_reply(&mut self.recv)
            .await
            .map(|r| r.map(|r| r.response));
        match response {
            Ok(Some(MgmtResponse::Event { seq, event })) => {
                self.last_seq = seq;
                Some(
                    postcard::from_bytes::<ClusterEvent>(&event)
                        .map(EventItem::Event)
                        .map_err(|e| ClientError::Codec(e.to_string())),
                )
            }
            Ok(Some(MgmtResponse::Missed { count })) => {
                self.last_seq += count;
                Some(Ok(EventItem::Missed(count)))
            }
            Ok(Some(MgmtResponse::Error { kind, message, .. })) => {
                Some(Err(ClientError::Failed { kind, message }))
            }
            Ok(Some(_)) | Ok(None) => None,
            // The subscription was running: not "nothing was sent".
            Err(e) => Some(Err(ClientError::Failed {
                kind: iroh_raft_actors::wire::MgmtErrorKind::Unknown,
                message: format!("the event stream was lost: {e}"),
            })),
        }
    }
}
