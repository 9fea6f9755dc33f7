//! Process control for [`super::ClusterManager`]: the [`Launcher`] trait, and
//! [`LocalLauncher`], which runs `iroh-raft node` processes on this machine.

use std::{
    collections::HashMap,
    ffi::OsString,
    future::Future,
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::config::{NodeConfig, ResourceLimits};

/// How long a process gets after a SIGTERM the launcher sends on its own (a start that timed
/// out), and after a SIGKILL before it is reported as not stopping.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How a node process starts.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum StartMode {
    /// It founds the cluster (`--bootstrap --node-id ID --bind ADDR`).
    Bootstrap,
    /// It joins with this ticket (`--join TICKET --bind ADDR`); a member registered its key
    /// under its id beforehand.
    Join(String),
    /// It restarts from its data dir.
    Restart,
}

/// What a launcher is asked to start.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LaunchSpec {
    /// The node.
    pub node: NodeConfig,
    /// The binary to run.
    pub binary: PathBuf,
    /// How it starts.
    pub mode: StartMode,
    /// Every argument after the binary (`node --data-dir …`), start mode included.
    pub args: Vec<OsString>,
    /// How long it may take to print its `ready` line.
    pub timeout: Duration,
}

/// A node process that printed its `ready` line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Started {
    /// Its Raft id.
    pub node_id: u64,
    /// Its endpoint id (public key).
    pub endpoint: String,
    /// Its process id, where the launcher knows one.
    pub pid: Option<u32>,
}

/// Why a launcher could not start or stop a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The process could not be started.
    #[error("node {node}: could not run {binary}: {source}")]
    Spawn {
        /// The node.
        node: u64,
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exited before it was ready.
    #[error("node {node} exited before it was ready ({status}): {last_lines}")]
    Exited {
        /// The node.
        node: u64,
        /// Its exit status.
        status: String,
        /// The end of its log.
        last_lines: String,
    },
    /// It did not print its `ready` line in time (it was killed).
    #[error("node {node} was not ready within {timeout:?} (killed): {last_lines}")]
    NotReady {
        /// The node.
        node: u64,
        /// The bound.
        timeout: Duration,
        /// The end of its log.
        last_lines: String,
    },
    /// Reading or writing the launcher's files failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Runs node processes. [`LocalLauncher`] runs them on this machine; an implementation of its
/// own lets the same [`super::ClusterManager`] drive nodes that something else runs (ssh,
/// systemd, an orchestrator's API): cluster operations go through the management protocol, the
/// launcher only starts and stops processes. The manager reads and writes the nodes' data dirs
/// directly in two places (a new node's key, the founder's admin ticket), so they must be on
/// its file system.
pub trait Launcher: Send {
    /// Starts a node process and waits (up to `spec.timeout`) for its `ready node=ID
    /// endpoint=KEY …` line (a joining node prints it once it caught up and was promoted).
    fn start(
        &mut self,
        spec: LaunchSpec,
    ) -> impl Future<Output = Result<Started, LaunchError>> + Send;
    /// Stops node `id` gracefully (SIGTERM: a leader hands over, the node fsyncs and exits),
    /// killing it after `grace`. A node that is not running is not an error.
    fn stop(
        &mut self,
        id: u64,
        grace: Duration,
    ) -> impl Future<Output = Result<(), LaunchError>> + Send;
    /// Whether node `id`'s process runs.
    fn running(&mut self, id: u64) -> impl Future<Output = bool> + Send;
}

/// Runs `iroh-raft node` processes on this machine, each in a process group of its own (a
/// Ctrl-C at the terminal does not reach them), outliving the manager that started them.
///
/// In its directory: `node-ID.log` (the node's stderr, appended across restarts), `node-ID.out`
/// (the stdout of its latest start: tickets and the `ready` line), and `node-ID.pid`. A node
/// started by an earlier manager is found by its pid file, and only signalled if that process
/// is still an `iroh-raft node` of the same data dir.
#[derive(Debug)]
pub struct LocalLauncher {
    dir: PathBuf,
    data_dirs: HashMap<u64, PathBuf>,
    children: HashMap<u64, Child>,
}

impl LocalLauncher {
    /// A launcher keeping its files in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, LaunchError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| LaunchError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        Ok(Self {
            dir,
            data_dirs: HashMap::new(),
            children: HashMap::new(),
        })
    }

    /// Where node `id`'s stderr goes.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    fn out_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.out"))
    }

    fn pid_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.pid"))
    }

    /// Tells the launcher node `id`'s data dir (for nodes started by an earlier manager).
    pub fn adopt(&mut self, id: u64, data_dir: &Path) {
        self.data_dirs.insert(id, data_dir.to_owned());
    }

    /// The pid of node `id`'s process, if one runs: ours, or the one in its pid file when that
    /// process is still this node's.
    fn pid(&mut self, id: u64) -> Option<u32> {
        if let Some(child) = self.children.get_mut(&id) {
            return match child.try_wait() {
                Ok(None) => Some(child.id()),
                _ => {
                    self.children.remove(&id);
                    None
                }
            };
        }
        let pid: u32 = std::fs::read_to_string(self.pid_path(id))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let dir = self.data_dirs.get(&id)?;
        is_node_process(pid, dir).then_some(pid)
    }

    /// The last lines node `id` wrote to its log since byte `from` (its latest start).
    fn last_lines(&self, id: u64, from: u64) -> String {
        let text = std::fs::read(self.log_path(id)).unwrap_or_default();
        let from = usize::try_from(from).unwrap_or(0).min(text.len());
        let text = String::from_utf8_lossy(&text[from..]);
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        match tail.is_empty() {
            true => "(its log is empty)".into(),
            false => tail.join(" | "),
        }
    }

    fn io(what: String) -> impl FnOnce(std::io::Error) -> LaunchError {
        move |source| LaunchError::Io { what, source }
    }
}

/// Whether `pid` is an `iroh-raft node` process of `data_dir` (not a recycled pid).
fn is_node_process(pid: u32, data_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        && stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    {
        return false;
    }
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let dir = data_dir.as_os_str().as_encoded_bytes();
    args.iter().any(|a| *a == b"node")
        && args
            .windows(2)
            .any(|w| w[0] == b"--data-dir" && w[1] == dir)
}

#[cfg(unix)]
fn signal(pid: u32, kill: bool) {
    use rustix::process::{Pid, Signal, kill_process};
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, if kill { Signal::KILL } else { Signal::TERM });
    }
}

/// Sets the node's limits in the child before it runs the binary.
#[cfg(unix)]
fn apply_limits(command: &mut Command, limits: &ResourceLimits) {
    use std::os::unix::process::CommandExt;
    let files = limits.max_open_files;
    let data = limits.max_memory_mb.map(|mb| mb.saturating_mul(1 << 20));
    if files.is_none() && data.is_none() {
        return;
    }
    // SAFETY: the closure runs in the forked child before exec and only makes setrlimit
    // system calls (async-signal-safe); it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            use rustix::process::{Resource, Rlimit, setrlimit};
            for (resource, value) in [(Resource::Nofile, files), (Resource::Data, data)] {
                if let Some(v) = value {
                    let limit = Rlimit {
                        current: Some(v),
                        maximum: Some(v),
                    };
                    setrlimit(resource, limit).map_err(std::io::Error::from)?;
                }
            }
            Ok(())
        });
    }
}

impl Launcher for LocalLauncher {
    async fn start(&mut self, spec: LaunchSpec) -> Result<Started, LaunchError> {
        let id = spec.node.id;
        self.data_dirs.insert(id, spec.node.data_dir.clone());
        let out_path = self.out_path(id);
        let out = std::fs::File::create(&out_path)
            .map_err(Self::io(format!("creating {}", out_path.display())))?;
        let log_path = self.log_path(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Self::io(format!("opening {}", log_path.display())))?;
        let log_start = log.metadata().map_or(0, |m| m.len());
        let mut command = Command::new(&spec.binary);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
            apply_limits(&mut command, &spec.node.resources);
        }
        let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
            node: id,
            binary: spec.binary.clone(),
            source,
        })?;
        let pid = child.id();
        let pid_path = self.pid_path(id);
        if let Err(e) = std::fs::write(&pid_path, format!("{pid}\n")) {
            // Untracked, it could not be stopped later: not left running.
            let _ = child.kill();
            let _ = child.wait();
            return Err(Self::io(format!("writing {}", pid_path.display()))(e));
        }
        let deadline = tokio::time::Instant::now() + spec.timeout;
        let mut reader = ReadyLine::new(&out_path);
        loop {
            if let Some(started) = reader.poll() {
                self.children.insert(id, child);
                return Ok(Started {
                    pid: Some(pid),
                    ..started
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let _ = std::fs::remove_file(&pid_path);
                return Err(LaunchError::Exited {
                    node: id,
                    status: status.to_string(),
                    last_lines: self.last_lines(id, log_start),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                // SIGTERM first: a node killed mid-write leaves a log redb must repair.
                signal(pid, false);
                let grace = tokio::time::Instant::now() + STOP_GRACE;
                while matches!(child.try_wait(), Ok(None)) && tokio::time::Instant::now() < grace {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&pid_path);
                return Err(LaunchError::NotReady {
                    node: id,
                    timeout: spec.timeout,
                    last_lines: self.last_lines(id, log_start),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self, id: u64, grace: Duration) -> Result<(), LaunchError> {
        let Some(pid) = self.pid(id) else {
            return Ok(());
        };
        signal(pid, false);
        let deadline = tokio::time::Instant::now() + grace;
        let mut killed = false;
        loop {
            let gone = match self.children.get_mut(&id) {
                Some(child) => !matches!(child.try_wait(), Ok(None)),
                None => !self
                    .data_dirs
                    .get(&id)
                    .is_some_and(|d| is_node_process(pid, d)),
            };
            if gone {
                self.children.remove(&id);
                let _ = std::fs::remove_file(self.pid_path(id));
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if !killed && now >= deadline {
                signal(pid, true);
                killed = true;
            } else if killed && now >= deadline + STOP_GRACE {
                return Err(LaunchError::Io {
                    what: format!("stopping node {id} (pid {pid})"),
                    source: std::io::Error::other("it outlived SIGTERM and SIGKILL"),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn running(&mut self, id: u64) -> bool {
        self.pid(id).is_some()
    }
}

/// Follows a node's stdout file for its `ready` line.
struct ReadyLine {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl ReadyLine {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
            partial: String::new(),
        }
    }

    fn poll(&mut self) -> Option<Started> {
        let mut file = std::fs::File::open(&self.path).ok()?;
        file.seek(SeekFrom::Start(self.offset)).ok()?;
        let mut reader = BufReader::new(file);
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).ok()?;
            if n == 0 {
                return None;
            }
            self.offset += n as u64;
            if !line.ends_with('\n') {
                self.partial.push_str(&line);
                return None;
            }
            let line = std::mem::take(&mut self.partial) + line.trim_end();
            if let Some(started) = parse_ready(&line) {
                return Some(started);
            }
        }
    }
}

/// `ready node=ID endpoint=KEY addr=… [metrics=…]`.
pub(crate) fn parse_ready(line: &str) -> Option<Started> {
    let rest = line.strip_prefix("ready ")?;
    let field = |name: &str| {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    Some(Started {
        node_id: field("node")?.parse().ok()?,
        endpoint: field("endpoint")?.to_owned(),
        pid: None,
    })
}

/// The node a data dir holds, as its files name it: `node=` in `node.conf` (written at every
/// start) or in the mark of a join that did not finish. `None` for a dir without either.
pub(crate) fn held_node(data_dir: &Path) -> Option<u64> {
    [crate::CONF_FILE, crate::JOIN_PENDING_FILE]
        .iter()
        .filter_map(|f| std::fs::read_to_string(data_dir.join(f)).ok())
        .find_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("node="))
                .and_then(|v| v.trim().parse().ok())
        })
}
