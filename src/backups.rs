//! Scheduled backups ([`BackupConfig`], the builder's `.backups(..)`): on a cron schedule, the
//! leader saves a consistent backup to a directory or an S3-compatible bucket, reads it back
//! and checks its hash, and only then deletes the oldest ones beyond the retention count.
//!
//! A task of the node's (stopped with it) runs the schedule: at each time, if this node leads,
//! it runs one backup to the end before it looks at the schedule again, so two never overlap
//! (a run longer than the interval skips the times it overlapped). Followers skip. Failures are
//! logged and counted (`iroh_raft_backup_*` metrics); consensus never waits for a backup: the
//! snapshot it reads is written by the usual snapshot path and read pinned, off the actors.
//!
//! Objects are named `PREFIX/backup-<cluster id>-<unix ms, 13 digits>-<index>.irbk`, so that a
//! cluster's names sort by time; retention looks only at names of that shape with its own
//! cluster id (clusters sharing a prefix never delete each other's), and never deletes the one
//! it just wrote (a leader whose clock is behind would otherwise give it the oldest name).

use std::{
    path::PathBuf,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use iroh_metrics::{Counter, Gauge, MetricsGroup};
use iroh_raft_actors::{
    ClusterId, NodeCalls, Role, StateMachine,
    backup::{self, BackupError, HashCheck, SavedBackup},
};
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart, path::Path as ObjectPath};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Where scheduled backups go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupTarget {
    /// A directory on this node's machine (created if missing).
    Dir(PathBuf),
    /// A bucket of an S3-compatible store, under a prefix (`s3://bucket/prefix`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix (may be empty).
        prefix: String,
        /// How to reach the store.
        options: S3Options,
    },
}

/// How to reach an S3-compatible store. `Default` reads the usual environment variables
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`); a field set here wins over them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Options {
    /// The endpoint (e.g. `http://127.0.0.1:9000` for a MinIO or moto server); AWS if unset.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` if unset anywhere).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Allow a plain `http://` endpoint.
    pub allow_http: bool,
    /// Retries of a failed request (2 if unset).
    pub max_retries: Option<usize>,
}

impl FromStr for BackupTarget {
    type Err = String;

    /// `s3://bucket[/prefix]` or a directory path.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("'{s}': the bucket is missing (s3://bucket/prefix)"));
            }
            return Ok(BackupTarget::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
                options: S3Options::default(),
            });
        }
        if s.is_empty() {
            return Err("an empty backup target".into());
        }
        Ok(BackupTarget::Dir(PathBuf::from(s)))
    }
}

impl std::fmt::Display for BackupTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupTarget::Dir(d) => write!(f, "{}", d.display()),
            BackupTarget::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Scheduled backups: when, how many to keep, where.
#[derive(Clone, Debug)]
pub struct BackupConfig {
    /// A cron expression in UTC: the standard five fields (`"0 2 * * *"`: at 02:00 every
    /// day), or six with seconds first (`"*/10 * * * * *"`).
    pub schedule: String,
    /// How many backups to keep (at least 1): older ones are deleted once a new one verified.
    pub retention: usize,
    /// Where they go.
    pub target: BackupTarget,
}

/// Why a backup configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupConfigError {
    /// The schedule is not a cron expression.
    #[error("backup schedule '{schedule}': {reason}")]
    Schedule {
        /// What was given.
        schedule: String,
        /// What the parser said.
        reason: String,
    },
    /// Retention 0 would delete every backup.
    #[error("backup retention must be at least 1")]
    Retention,
    /// The target store could not be set up.
    #[error("backup target {target}: {reason}")]
    Target {
        /// The target.
        target: String,
        /// Why.
        reason: String,
    },
}

/// The scheduled backups' metrics (`iroh_raft_backup_*`).
#[derive(Debug, MetricsGroup)]
#[metrics(name = "iroh_raft_backup", default)]
pub struct BackupMetrics {
    /// Scheduled backups saved and verified.
    pub successes: Counter,
    /// Scheduled backups that failed (nothing older was deleted).
    pub failures: Counter,
    /// When the last one succeeded (seconds since the Unix epoch; 0: never).
    pub last_success_unix_seconds: Gauge,
    /// How long the last successful one took, upload and read-back included (milliseconds).
    pub last_duration_ms: Gauge,
    /// The size of the last successful one (bytes).
    pub last_size_bytes: Gauge,
    /// The log index the last successful one covers.
    pub last_index: Gauge,
}

/// A checked [`BackupConfig`]: the parsed schedule and the store.
pub(crate) struct Schedule {
    cron: croner::Cron,
    retention: usize,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    target: String,
    /// For a directory target: the directory, whose new files are fsynced (the local store
    /// renames them into place without).
    dir: Option<PathBuf>,
}

impl BackupConfig {
    /// Parses the schedule and builds the store (no I/O: an unreachable store is found at the
    /// first backup, logged and counted).
    pub(crate) fn check(&self) -> Result<Schedule, BackupConfigError> {
        let cron = croner::parser::CronParser::new()
            .parse(&self.schedule)
            .map_err(|e| BackupConfigError::Schedule {
                schedule: self.schedule.clone(),
                reason: e.to_string(),
            })?;
        if self.retention == 0 {
            return Err(BackupConfigError::Retention);
        }
        let target = self.target.to_string();
        let failed = |reason: String| BackupConfigError::Target {
            target: target.clone(),
            reason,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match &self.target {
            BackupTarget::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| failed(e.to_string()))?;
                (Arc::new(store), ObjectPath::default())
            }
            BackupTarget::S3 {
                bucket,
                prefix,
                options,
            } => {
                let store = s3_store(bucket, options).map_err(|e| failed(e.to_string()))?;
                (Arc::new(store), ObjectPath::from(prefix.as_str()))
            }
        };
        let dir = match &self.target {
            BackupTarget::Dir(d) => Some(d.clone()),
            BackupTarget::S3 { .. } => None,
        };
        Ok(Schedule {
            cron,
            retention: self.retention,
            store,
            prefix,
            target,
            dir,
        })
    }
}

/// An S3 client on the ring-based rustls stack the rest of the crate uses.
pub fn s3_store(
    bucket: &str,
    options: &S3Options,
) -> object_store::Result<object_store::aws::AmazonS3> {
    // reqwest is built without a crypto provider of its own: use ring, once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &options.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &options.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    let retry = object_store::RetryConfig {
        max_retries: options.max_retries.unwrap_or(2),
        retry_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    // The client options carry `allow_http` too: set together, or one resets the other.
    let client = object_store::ClientOptions::new()
        .with_allow_http(options.allow_http)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120));
    builder
        .with_retry(retry)
        .with_client_options(client)
        .build()
}

/// Starts the schedule on `calls`' node; the task ends when the handle is aborted.
pub(crate) fn spawn<S: StateMachine>(
    calls: NodeCalls<S>,
    schedule: Schedule,
    metrics: Arc<BackupMetrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut after = chrono::Utc::now();
        loop {
            let next = match schedule.cron.find_next_occurrence(&after, false) {
                Ok(next) => next,
                Err(e) => {
                    warn!(error = %e, "backup schedule has no next time; scheduled backups stop");
                    return;
                }
            };
            let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            after = next;
            if calls.fatal_error().is_some() || calls.facts().is_shut_down() {
                return;
            }
            if calls.facts().leadership().borrow().role != Role::Leader {
                continue;
            }
            let started = Instant::now();
            match schedule.run(&calls).await {
                Ok((saved, deleted)) => {
                    let took = started.elapsed();
                    metrics.successes.inc();
                    metrics
                        .last_success_unix_seconds
                        .set(unix_ms() as i64 / 1000);
                    metrics.last_duration_ms.set(took.as_millis() as i64);
                    metrics.last_size_bytes.set(saved.file_size as i64);
                    metrics.last_index.set(saved.index as i64);
                    info!(
                        target = %schedule.target,
                        index = saved.index,
                        bytes = saved.file_size,
                        deleted,
                        took_ms = took.as_millis() as u64,
                        "scheduled backup saved and verified"
                    );
                }
                Err(e) => {
                    metrics.failures.inc();
                    warn!(target = %schedule.target, error = %e, "scheduled backup failed");
                }
            }
            // A run that overran the next times skips them rather than running back to back.
            after = after.max(chrono::Utc::now());
        }
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a scheduled backup failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("the store: {0}")]
    Store(#[from] object_store::Error),
    #[error("reading it back: {0}")]
    ReadBack(String),
}

impl Schedule {
    /// One backup: saved, read back and verified, then retention applied. Returns what was
    /// saved and how many old ones were deleted.
    async fn run<S: StateMachine>(
        &self,
        calls: &NodeCalls<S>,
    ) -> Result<(SavedBackup, usize), RunError> {
        let mut stream = calls.backup(true).await?;
        let cluster = ClusterId(stream.header.cluster_id).to_string();
        let name = format!(
            "backup-{cluster}-{:013}-{}.{}",
            unix_ms(),
            stream.header.index,
            backup::BACKUP_EXTENSION
        );
        let path = self.prefix.clone().join(name.as_str());
        let upload = self.store.put_multipart(&path).await?;
        let mut writer = WriteMultipart::new(upload);
        let mut check = HashCheck::new();
        let streamed: Result<(), RunError> = async {
            while let Some(piece) = stream.next().await {
                let piece = piece?;
                check.update(&piece);
                writer.wait_for_capacity(4).await?;
                writer.write(&piece);
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.finish().await?;
        let file_size = check.len();
        let saved = SavedBackup {
            index: stream.header.index,
            term: stream.header.term,
            file_size,
            hash: match check.finish() {
                Ok(h) => h,
                Err(e) => {
                    let _ = self.store.delete(&path).await;
                    return Err(e.into());
                }
            },
        };
        // Read back what the store holds, and verify it whole, before anything is deleted.
        if let Err(e) = self.read_back(&path, &saved).await {
            let _ = self.store.delete(&path).await;
            return Err(e);
        }
        if let Some(dir) = self.dir.clone() {
            let file = dir.join(path.as_ref());
            tokio::task::spawn_blocking(move || {
                std::fs::File::open(&file)?.sync_all()?;
                std::fs::File::open(&dir)?.sync_all()
            })
            .await
            .map_err(|e| RunError::ReadBack(e.to_string()))?
            .map_err(|e| RunError::ReadBack(format!("syncing the new file: {e}")))?;
        }
        // The backup is safe now: a failure to delete old ones is reported, not a failed backup.
        let deleted = match self.apply_retention(&cluster, &path).await {
            Ok(n) => n,
            Err(e) => {
                warn!(target = %self.target, error = %e, "deleting old backups failed");
                0
            }
        };
        Ok((saved, deleted))
    }

    async fn read_back(&self, path: &ObjectPath, saved: &SavedBackup) -> Result<(), RunError> {
        let got = self.store.get(path).await?;
        let stream = got.into_stream().map(|r| r.map_err(std::io::Error::other));
        let reader = tokio_util::io::StreamReader::new(stream);
        let verified = tokio::task::spawn_blocking(move || {
            let sync = tokio_util::io::SyncIoBridge::new(reader);
            backup::verify(std::io::BufReader::new(sync), |_, _| {})
        })
        .await
        .map_err(|e| RunError::ReadBack(e.to_string()))?;
        match verified {
            Ok(info) if info.hash == saved.hash && info.file_size == saved.file_size => Ok(()),
            Ok(_) => Err(RunError::ReadBack(
                "the stored object differs from what was uploaded".into(),
            )),
            Err(e) => Err(RunError::ReadBack(e.to_string())),
        }
    }

    /// Deletes this cluster's oldest backups beyond the retention count, never `newest` (the
    /// one just written and verified); returns how many.
    async fn apply_retention(&self, cluster: &str, newest: &ObjectPath) -> Result<usize, RunError> {
        let mut names = Vec::new();
        let mut listing = self.store.list(Some(&self.prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let ours = meta
                .location
                .filename()
                .and_then(backup_name)
                .is_some_and(|(c, ..)| c == cluster);
            if ours && meta.location != *newest {
                names.push(meta.location);
            }
        }
        names.sort_by_key(|p| p.filename().and_then(backup_name).map(|(_, ms, i)| (ms, i)));
        let excess = names.len().saturating_sub(self.retention - 1);
        for old in &names[..excess] {
            self.store.delete(old).await?;
        }
        Ok(excess)
    }
}

/// `backup-<32 hex digits>-<13 digits>-<digits>.irbk` as (cluster, ms, index).
fn backup_name(name: &str) -> Option<(&str, u64, u64)> {
    let rest = name.strip_prefix("backup-")?.strip_suffix(".irbk")?;
    let mut parts = rest.split('-');
    let (cluster, ms, index) = (parts.next()?, parts.next()?, parts.next()?);
    let hex_ok = cluster.len() == 32 && cluster.bytes().all(|b| b.is_ascii_hexdigit());
    if parts.next().is_some() || !hex_ok || ms.len() != 13 {
        return None;
    }
    Some((cluster, ms.parse().ok()?, index.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            "s3://b/some/prefix/".parse::<BackupTarget>().unwrap(),
            BackupTarget::S3 {
                bucket: "b".into(),
                prefix: "some/prefix".into(),
                options: S3Options::default()
            }
        );
        assert!("s3://".parse::<BackupTarget>().is_err());
        assert_eq!(
            "/var/backups".parse::<BackupTarget>().unwrap(),
            BackupTarget::Dir("/var/backups".into())
        );
    }

    #[test]
    fn schedules_and_retention_are_checked() {
        let config = |schedule: &str, retention| BackupConfig {
            schedule: schedule.into(),
            retention,
            target: BackupTarget::Dir(std::env::temp_dir()),
        };
        assert!(config("0 2 * * *", 3).check().is_ok());
        assert!(config("*/1 * * * * *", 3).check().is_ok());
        assert!(matches!(
            config("every day", 3).check(),
            Err(BackupConfigError::Schedule { .. })
        ));
        assert!(matches!(
            config("0 2 * * *", 0).check(),
            Err(BackupConfigError::Retention)
        ));
    }

    #[test]
    fn only_our_names_count_for_retention() {
        let c = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            backup_name(&format!("backup-{c}-1796217059744-42.irbk")),
            Some((c, 1796217059744, 42))
        );
        assert_eq!(
            backup_name(&format!("backup-{c}-1796217059744-42.irbk.part")),
            None
        );
        assert_eq!(backup_name(&format!("backup-{c}-17962-42.irbk")), None);
        assert_eq!(backup_name("backup-1796217059744-42.irbk"), None);
        assert_eq!(backup_name("notes.txt"), None);
    }
}
