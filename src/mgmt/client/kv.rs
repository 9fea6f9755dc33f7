//! The built-in KV store through the management client: typed commands, reads and watches
//! (what `iroh-raft kv` uses).

use super::{ClientError, IrohRaftManagementClient};
use crate::kv::{KeyValue, KvCommand, KvQuery, KvResponse, RangeResult, Txn};

impl IrohRaftManagementClient {
    /// Replicates a KV command and returns the store's response.
    pub async fn kv(&self, command: KvCommand) -> Result<KvResponse, ClientError> {
        self.propose(&command).await
    }

    /// Sets `key` to `value`.
    pub async fn kv_put(&self, key: &str, value: &str) -> Result<KvResponse, ClientError> {
        self.kv(KvCommand::Set {
            key: key.into(),
            value: value.into(),
        })
        .await
    }

    /// Deletes `key`.
    pub async fn kv_delete(&self, key: &str) -> Result<KvResponse, ClientError> {
        self.kv(KvCommand::Delete { key: key.into() }).await
    }

    /// Deletes every key that starts with `prefix`.
    pub async fn kv_delete_prefix(&self, prefix: &str) -> Result<KvResponse, ClientError> {
        self.kv(KvCommand::DeletePrefix {
            prefix: prefix.into(),
        })
        .await
    }

    /// Sets `key` to `new` (`None`: deletes it) only if its value is `expected` (`None`:
    /// absent); the response's `applied` says whether it was.
    pub async fn kv_cas(
        &self,
        key: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<KvResponse, ClientError> {
        self.kv(KvCommand::CompareAndSwap {
            key: key.into(),
            expected: expected.map(Into::into),
            new: new.map(Into::into),
        })
        .await
    }

    /// Runs a transaction: its compares, then its success or failure operations, atomically.
    pub async fn kv_txn(&self, txn: Txn) -> Result<KvResponse, ClientError> {
        self.kv(KvCommand::Txn(txn)).await
    }

    /// Reads a query of the store (linearizable).
    pub async fn kv_query(&self, query: &KvQuery) -> Result<RangeResult, ClientError> {
        let answer = self.read_encoded(query.encode()).await?;
        postcard::from_bytes(&answer).map_err(|e| ClientError::Codec(e.to_string()))
    }

    /// Reads `key` with its revisions (linearizable).
    pub async fn kv_get(&self, key: &str) -> Result<Option<KeyValue>, ClientError> {
        let query = KvQuery::Get { key: key.into() };
        Ok(self.kv_query(&query).await?.kvs.into_iter().next())
    }

    /// Reads the keys from `from` up to `to` (exclusive; `None`: to the end), at most `limit`
    /// (0: as many as one answer holds), in key order (linearizable).
    pub async fn kv_range(
        &self,
        from: &str,
        to: Option<&str>,
        limit: u64,
    ) -> Result<RangeResult, ClientError> {
        let query = KvQuery::Range {
            from: from.into(),
            to: to.map(Into::into),
            limit,
        };
        self.kv_query(&query).await
    }

    /// Reads the keys that start with `prefix`, at most `limit` (0: as many as one answer
    /// holds), in key order (linearizable).
    pub async fn kv_prefix(&self, prefix: &str, limit: u64) -> Result<RangeResult, ClientError> {
        let query = KvQuery::Prefix {
            prefix: prefix.into(),
            limit,
        };
        self.kv_query(&query).await
    }
}
