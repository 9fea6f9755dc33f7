//! [`DeploymentConfig`]: a cluster's nodes and how to run them, loaded from TOML and checked
//! whole before any process starts.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{Preset, backups::BackupConfig};

/// A deployment: the cluster's name, its timing preset, its nodes, and how rollouts and
/// backups run. Paths are relative to the directory of the file it was loaded from.
///
/// ```toml
/// cluster_name = "orders"
/// environment = "production"       # production, development or testing
/// binary = "/usr/local/bin/iroh-raft"
///
/// [rollout]
/// max_lag = 100                    # entries behind the leader a restarted node may be
/// node_timeout = "60s"             # to start, catch up and pass its readiness checks
/// drain_timeout = "5s"             # for clients to leave a node before it is stopped
///
/// [backup]                         # optional: scheduled backups, taken by the leader
/// schedule = "0 2 * * *"
/// target = "/var/backups/orders"   # or s3://bucket/prefix
/// retention = 7
///
/// [[nodes]]
/// id = 1
/// bind = "10.0.0.1:7001"
/// data_dir = "/var/lib/iroh-raft/node-1"
/// metrics_addr = "10.0.0.1:9464"   # /metrics, /livez, /readyz
/// resources = { max_open_files = 65536, max_memory_mb = 2048 }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeploymentConfig {
    /// The cluster's name (letters, digits, `-` and `_`): names its state directory.
    pub cluster_name: String,
    /// The nodes' timing preset.
    pub environment: Preset,
    /// The `iroh-raft` binary the nodes run.
    pub binary: PathBuf,
    /// Where the manager keeps its state (the admin ticket, which binary each node runs, the
    /// nodes' logs). Default: `.<cluster_name>.cluster` beside the config file.
    pub state_dir: PathBuf,
    /// The nodes, the first one founds the cluster.
    pub nodes: Vec<NodeConfig>,
    /// Rolling updates and node starts.
    pub rollout: RolloutConfig,
    /// Scheduled backups, if any (every node is given them; the leader takes them).
    pub backup: Option<BackupSettings>,
}

/// One node of a deployment.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Its Raft id (not 0; an id a removed member had is never given again).
    pub id: u64,
    /// The address it binds for the cluster's traffic (a fixed port: members remember it).
    pub bind: SocketAddr,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Where it serves `/metrics`, `/livez` and `/readyz`, if anywhere.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// Limits the local launcher applies to its process.
    #[serde(default)]
    pub resources: ResourceLimits,
}

impl NodeConfig {
    /// A node with no metrics listener and no limits.
    pub fn new(id: u64, bind: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            bind,
            data_dir: data_dir.into(),
            metrics_addr: None,
            resources: ResourceLimits::default(),
        }
    }

    /// With a metrics listener.
    pub fn metrics_addr(mut self, addr: SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }
}

/// Process limits (the local launcher sets them as rlimits; under systemd use `LimitNOFILE=`
/// and `MemoryMax=`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ResourceLimits {
    /// Open files (`RLIMIT_NOFILE`).
    #[serde(default)]
    pub max_open_files: Option<u64>,
    /// Heap and other private writable memory, in MiB (`RLIMIT_DATA`): allocations beyond it
    /// fail and the node stops.
    #[serde(default)]
    pub max_memory_mb: Option<u64>,
}

/// How a rolling update and a node start proceed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RolloutConfig {
    /// A restarted node counts as caught up within this many entries of the leader's log.
    pub max_lag: u64,
    /// How long a node may take to start, catch up and pass its readiness checks (and a
    /// stopped node to exit before it is killed).
    pub node_timeout: Duration,
    /// How long a rolling update waits for management clients to leave a node (they move to
    /// the leader on their own) before it stops the node anyway.
    pub drain_timeout: Duration,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            max_lag: 100,
            node_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Scheduled backups of a deployment (see [`BackupConfig`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BackupSettings {
    /// A cron expression in UTC.
    pub schedule: String,
    /// A directory or `s3://bucket/prefix`.
    pub target: String,
    /// How many to keep.
    #[serde(default = "default_retention")]
    pub retention: usize,
    /// With an `s3://` target: an S3-compatible endpoint.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
}

fn default_retention() -> usize {
    7
}

/// A configuration refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DeploymentConfigError {
    /// The field, as a path into the file (`nodes[2].bind`), or `toml` for a syntax error.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> DeploymentConfigError {
    DeploymentConfigError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster_name: String,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    binary: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    nodes: Vec<NodeConfig>,
    #[serde(default)]
    rollout: Option<RawRollout>,
    #[serde(default)]
    backup: Option<BackupSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    #[serde(default)]
    max_lag: Option<u64>,
    #[serde(default)]
    node_timeout: Option<String>,
    #[serde(default)]
    drain_timeout: Option<String>,
}

/// `500ms`, `30s`, `10m`, `24h`, `7d`: more than zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("'{s}' is not a duration like 500ms, 30s, 10m, 24h or 7d");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| invalid())?;
    let millis: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    if n == 0 {
        return Err(format!("'{s}': the duration must be more than zero"));
    }
    let millis = n.checked_mul(millis).ok_or_else(invalid)?;
    Ok(Duration::from_millis(millis))
}

/// The preset a name stands for.
pub fn parse_preset(s: &str) -> Result<Preset, String> {
    match s {
        "production" => Ok(Preset::Production),
        "development" => Ok(Preset::Development),
        "testing" => Ok(Preset::Testing),
        _ => Err(format!(
            "unknown preset '{s}': expected production, development or testing"
        )),
    }
}

/// The name of a preset, as the node's `--preset` takes it.
pub(crate) fn preset_name(p: Preset) -> &'static str {
    match p {
        Preset::Development => "development",
        Preset::Testing => "testing",
        Preset::Production => "production",
    }
}

impl DeploymentConfig {
    /// Reads and checks a TOML file (see [`Self::check`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DeploymentConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| refuse("file", format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        // Absolute: the manager's state and the processes it finds by their data dirs must
        // not depend on the directory a command runs in.
        let base = std::path::absolute(base)
            .map_err(|e| refuse("file", format!("{}: {e}", path.display())))?;
        Self::from_toml(&text, &base)
    }

    /// Parses and checks TOML text; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, DeploymentConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().to_owned();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            refuse("toml", format!("{message}{at}"))
        })?;
        let environment = match raw.environment.as_deref() {
            None => Preset::Production,
            Some(s) => parse_preset(s).map_err(|m| refuse("environment", m))?,
        };
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let binary = match raw.binary {
            Some(b) => resolve(b),
            None => default_binary().map_err(|m| refuse("binary", m))?,
        };
        let state_dir = match raw.state_dir {
            Some(d) => resolve(d),
            None => base.join(format!(".{}.cluster", raw.cluster_name)),
        };
        let mut rollout = RolloutConfig::default();
        if let Some(r) = raw.rollout {
            if let Some(lag) = r.max_lag {
                rollout.max_lag = lag;
            }
            if let Some(t) = r.node_timeout {
                rollout.node_timeout =
                    parse_duration(&t).map_err(|m| refuse("rollout.node_timeout", m))?;
            }
            if let Some(t) = r.drain_timeout {
                rollout.drain_timeout =
                    parse_duration(&t).map_err(|m| refuse("rollout.drain_timeout", m))?;
            }
        }
        let nodes = raw
            .nodes
            .into_iter()
            .map(|mut n| {
                n.data_dir = resolve(n.data_dir);
                n
            })
            .collect();
        let backup = raw.backup.map(|mut b| {
            if !b.target.starts_with("s3://") {
                b.target = resolve(PathBuf::from(&b.target)).display().to_string();
            }
            b
        });
        let config = Self {
            cluster_name: raw.cluster_name,
            environment,
            binary,
            state_dir,
            nodes,
            rollout,
            backup,
        };
        config.check()?;
        Ok(config)
    }

    /// Checks everything that can be checked before a process starts: the name, unique ids,
    /// ports and data dirs, fixed ports, data dirs that can be written, the binary, the
    /// backup schedule and target.
    pub fn check(&self) -> Result<(), DeploymentConfigError> {
        let name = &self.cluster_name;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(refuse(
                "cluster_name",
                format!("'{name}': use letters, digits, '-' and '_' (not empty)"),
            ));
        }
        if self.nodes.is_empty() {
            return Err(refuse("nodes", "no node: add at least one [[nodes]] table"));
        }
        check_binary(&self.binary).map_err(|m| refuse("binary", m))?;
        let mut ids = HashMap::new();
        let mut ports: HashMap<SocketAddr, String> = HashMap::new();
        let mut dirs = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let at = |f: &str| format!("nodes[{i}].{f}");
            self.check_node(node).map_err(|(f, m)| refuse(at(f), m))?;
            if let Some(j) = ids.insert(node.id, i) {
                return Err(refuse(
                    at("id"),
                    format!("id {} is also nodes[{j}]'s", node.id),
                ));
            }
            for (field, addr) in [
                ("bind", Some(node.bind)),
                ("metrics_addr", node.metrics_addr),
            ] {
                let Some(addr) = addr else { continue };
                if let Some(other) = ports.insert(addr, at(field)) {
                    return Err(refuse(at(field), format!("{addr} is also {other}")));
                }
            }
            let dir = normal(&node.data_dir);
            if let Some(j) = dirs.insert(dir, i) {
                return Err(refuse(
                    at("data_dir"),
                    format!("{} is also nodes[{j}]'s", node.data_dir.display()),
                ));
            }
        }
        if let Some(b) = &self.backup {
            b.check().map_err(|m| refuse("backup", m))?;
        }
        Ok(())
    }

    /// Checks one node on its own (the caller adds the field's index).
    pub(crate) fn check_node(&self, node: &NodeConfig) -> Result<(), (&'static str, String)> {
        if node.id == 0 {
            return Err(("id", "0 is not a node id".into()));
        }
        if node.bind.port() == 0 {
            return Err((
                "bind",
                format!(
                    "{}: give a fixed port (members remember the address a node joined on)",
                    node.bind
                ),
            ));
        }
        if node.bind.ip().is_unspecified() {
            return Err((
                "bind",
                format!(
                    "{}: give the address members reach the node on, not a wildcard",
                    node.bind
                ),
            ));
        }
        if let Some(m) = node.metrics_addr
            && m.port() == 0
        {
            return Err(("metrics_addr", format!("{m}: give a fixed port")));
        }
        check_writable(&node.data_dir).map_err(|m| ("data_dir", m))?;
        if node.resources.max_open_files == Some(0) || node.resources.max_memory_mb == Some(0) {
            return Err((
                "resources",
                "a limit of 0 would stop the node at once".into(),
            ));
        }
        Ok(())
    }
}

impl BackupSettings {
    /// Checks the settings the way the node will: the schedule parses, the target is valid,
    /// retention is at least 1.
    fn check(&self) -> Result<(), String> {
        let target = self.target.parse()?;
        BackupConfig {
            schedule: self.schedule.clone(),
            retention: self.retention,
            target,
        }
        .check()
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

/// `path` with `.` components dropped, for comparing data dirs.
fn normal(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// The `iroh-raft` binary beside the running one (or the running one itself, when it is it).
fn default_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("no binary given, and {e}"))?;
    if me.file_stem().is_some_and(|s| s == "iroh-raft") {
        return Ok(me);
    }
    let mut dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    // Tests and examples run from target/*/deps or target/*/examples.
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    Ok(dir.join("iroh-raft"))
}

/// The binary exists and may be run.
pub(crate) fn check_binary(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(format!("{} is not executable", path.display()));
        }
    }
    Ok(())
}

/// The data dir (or the nearest existing directory above it, which will hold it) accepts a
/// new file: tried by creating and removing one.
fn check_writable(dir: &Path) -> Result<(), String> {
    let existing = dir
        .ancestors()
        .find(|d| d.as_os_str().is_empty() || d.exists())
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .unwrap_or(Path::new("."));
    if !existing.is_dir() {
        return Err(format!(
            "{}: {} is not a directory",
            dir.display(),
            existing.display()
        ));
    }
    let probe = existing.join(format!(".iroh-raft-write-check-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "{}: cannot write in {}: {e}",
            dir.display(),
            existing.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid file of two nodes under `dir`, with `binary` an executable that exists.
    fn valid(dir: &Path) -> String {
        let binary = std::env::current_exe().unwrap();
        format!(
            "cluster_name = \"c1\"\nenvironment = \"testing\"\nbinary = \"{}\"\n\n\
             [[nodes]]\nid = 1\nbind = \"127.0.0.1:7001\"\ndata_dir = \"{d}/n1\"\n\
             metrics_addr = \"127.0.0.1:9001\"\n\n\
             [[nodes]]\nid = 2\nbind = \"127.0.0.1:7002\"\ndata_dir = \"{d}/n2\"\n",
            binary.display(),
            d = dir.display()
        )
    }

    fn refused(text: &str, dir: &Path) -> DeploymentConfigError {
        DeploymentConfig::from_toml(text, dir).expect_err("refused")
    }

    #[test]
    fn a_valid_file_loads_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = DeploymentConfig::from_toml(&valid(dir.path()), dir.path()).unwrap();
        assert_eq!(c.environment, Preset::Testing);
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.rollout, RolloutConfig::default());
        assert_eq!(c.state_dir, dir.path().join(".c1.cluster"));
    }

    #[test]
    fn relative_paths_are_the_file_s_directory_s() {
        let dir = tempfile::tempdir().unwrap();
        let text = valid(dir.path()).replace(&format!("{}/n1", dir.path().display()), "n1");
        let c = DeploymentConfig::from_toml(&text, dir.path()).unwrap();
        assert_eq!(c.nodes[0].data_dir, dir.path().join("n1"));
    }

    #[test]
    fn bad_files_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ok = valid(d);
        let cases = [
            (
                ok.replace("data_dir", "data_dri"),
                "toml",
                "unknown field `data_dri`",
            ),
            (
                ok.replace("\"testing\"", "\"prod\""),
                "environment",
                "unknown preset 'prod'",
            ),
            (
                ok.replace("id = 2", "id = 1"),
                "nodes[1].id",
                "also nodes[0]'s",
            ),
            (
                ok.replace("id = 2", "id = 0"),
                "nodes[1].id",
                "0 is not a node id",
            ),
            (
                ok.replace("7002", "7001"),
                "nodes[1].bind",
                "is also nodes[0].bind",
            ),
            (
                ok.replace("7002", "9001"),
                "nodes[1].bind",
                "also nodes[0].metrics_addr",
            ),
            (ok.replace("7002", "0"), "nodes[1].bind", "fixed port"),
            (
                ok.replace("127.0.0.1:7002", "0.0.0.0:7002"),
                "nodes[1].bind",
                "wildcard",
            ),
            (
                ok.replace("/n2", "/n1"),
                "nodes[1].data_dir",
                "also nodes[0]'s",
            ),
            (
                ok.replace("cluster_name = \"c1\"", "cluster_name = \"a b\""),
                "cluster_name",
                "letters",
            ),
            (
                ok.replace("bind = \"127.0.0.1:7002\"", "bind = \"localhost\""),
                "toml",
                "invalid",
            ),
            (
                format!("{ok}\n[rollout]\nnode_timeout = \"1 minute\"\n"),
                "rollout.node_timeout",
                "duration",
            ),
            (
                format!(
                    "{ok}\n[backup]\nschedule = \"every day\"\ntarget = \"{}/b\"\n",
                    d.display()
                ),
                "backup",
                "schedule",
            ),
            (
                ok.replace(
                    &std::env::current_exe().unwrap().display().to_string(),
                    "/nonexistent/iroh-raft",
                ),
                "binary",
                "No such file",
            ),
            ("cluster_name = \"c1\"\n".to_owned(), "nodes", "no node"),
        ];
        for (text, field, says) in cases {
            let e = refused(&text, d);
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(says), "{e}");
        }
    }

    #[test]
    fn a_data_dir_that_cannot_be_written_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Under a regular file: nothing can be created there, whoever runs this.
        std::fs::write(d.join("file"), "").unwrap();
        let text = valid(d).replace(
            &format!("{}/n2", d.display()),
            &format!("{}/file/n2", d.display()),
        );
        let e = refused(&text, d);
        assert_eq!(e.field, "nodes[1].data_dir", "{e}");
        assert!(e.message.contains("not a directory"), "{e}");
        // A directory without write permission (root may write anyway: then it loads).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let locked = d.join("locked");
            std::fs::create_dir(&locked).unwrap();
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
            let text = valid(d).replace(
                &format!("{}/n2", d.display()),
                &format!("{}/locked/n2", d.display()),
            );
            let root = std::fs::File::create(locked.join("probe")).is_ok();
            match DeploymentConfig::from_toml(&text, d) {
                Err(e) => {
                    assert!(!root);
                    assert_eq!(e.field, "nodes[1].data_dir", "{e}");
                    assert!(e.message.contains("cannot write"), "{e}");
                }
                Ok(_) => assert!(root, "a locked data dir was accepted"),
            }
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5").is_err());
    }
}
