//! Remote watches: [`WatchStream`] (a node's remote watcher's encoded changes) and [`KvWatch`]
//! (the built-in KV store's changes, decoded, resumable from a revision).

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh_raft_actors::{
    NodeId,
    wire::{MgmtErrorKind, MgmtReader, MgmtRequest, MgmtResponse},
};

use super::{ClientError, IrohRaftManagementClient};
use crate::kv::{WatchBatch, WatchQuery};

/// The changes a member's remote watcher streams, on a lane of their own.
pub struct WatchStream {
    node_id: NodeId,
    recv: RecvStream,
    reader: MgmtReader,
    _send: SendStream,
    _conn: Connection,
}

impl WatchStream {
    /// The member that serves the stream.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The next encoded changes, or `None` once the member ended the stream. An error ends it
    /// (the member stopped, the connection was lost, or the watcher refused to go on).
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, ClientError>> {
        let response = self
            .reader
            .next_reply(&mut self.recv)
            .await
            .map(|r| r.map(|r| r.response));
        match response {
            Ok(Some(MgmtResponse::Changes { bytes })) => Some(Ok(bytes)),
            Ok(Some(MgmtResponse::Error { kind, message, .. })) => {
                Some(Err(ClientError::Failed { kind, message }))
            }
            Ok(Some(_)) | Ok(None) => None,
            Err(e) => Some(Err(ClientError::Failed {
                kind: MgmtErrorKind::Unknown,
                message: format!("the watch stream was lost: {e}"),
            })),
        }
    }
}

/// A watch on keys of the built-in KV store ([`IrohRaftManagementClient::kv_watch`]).
///
/// Changes come in revision order, each revision whole (a transaction's changes together).
/// After an error, watch again from [`Self::next_revision`] (through any member): nothing is
/// skipped and nothing seen is repeated, unless that member no longer keeps that revision, which
/// it says ("no longer kept"): then re-read and watch from the revision of that read.
pub struct KvWatch {
    stream: WatchStream,
    next_revision: u64,
}

impl KvWatch {
    /// The member that serves the watch.
    pub fn node_id(&self) -> NodeId {
        self.stream.node_id
    }

    /// The next batch of changes; `None` once the member ended the stream.
    pub async fn next(&mut self) -> Option<Result<WatchBatch, ClientError>> {
        let bytes = match self.stream.next().await? {
            Ok(bytes) => bytes,
            Err(e) => return Some(Err(e)),
        };
        let batch: WatchBatch = match postcard::from_bytes(&bytes) {
            Ok(batch) => batch,
            Err(e) => return Some(Err(ClientError::Codec(e.to_string()))),
        };
        match batch.events.last() {
            Some(last) => self.next_revision = last.kv.mod_revision + 1,
            // An empty batch (the first one) says where the watch starts.
            None => self.next_revision = self.next_revision.max(batch.revision + 1),
        }
        Some(Ok(batch))
    }

    /// The first revision not seen yet: where to resume (0 until the member said where the
    /// watch starts).
    pub fn next_revision(&self) -> u64 {
        self.next_revision
    }
}

impl IrohRaftManagementClient {
    /// Streams what the member's remote watcher answers `query` with (for the built-in KV
    /// store, prefer [`Self::kv_watch`]). The stream has a lane of its own and counts as one of
    /// the connection's subscriptions.
    pub async fn watch(&self, query: Vec<u8>) -> Result<WatchStream, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (conn, send, mut recv, node_id) = self
            .own_lane(MgmtRequest::Watch { query }, deadline)
            .await?;
        let mut reader = MgmtReader::new();
        let confirmed = tokio::time::timeout_at(deadline, reader.next_reply(&mut recv))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?;
        match confirmed.map(|r| r.map(|r| r.response)) {
            Ok(Some(MgmtResponse::Watching)) => Ok(WatchStream {
                node_id,
                recv,
                reader,
                _send: send,
                _conn: conn,
            }),
            Ok(Some(MgmtResponse::Error { kind, message, .. })) => {
                Err(ClientError::Failed { kind, message })
            }
            other => Err(ClientError::Failed {
                kind: MgmtErrorKind::Unknown,
                message: format!("watch not confirmed: {other:?}"),
            }),
        }
    }

    /// Watches `query.key` (or every key under it with `query.prefix`) from
    /// `query.start_revision` (0: from the next change).
    pub async fn kv_watch(&self, query: &WatchQuery) -> Result<KvWatch, ClientError> {
        let bytes = postcard::to_allocvec(query).map_err(|e| ClientError::Codec(e.to_string()))?;
        let stream = self.watch(bytes).await?;
        Ok(KvWatch {
            stream,
            next_revision: query.start_revision,
        })
    }
}
