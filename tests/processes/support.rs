//! Starting and stopping node processes, and running the CLI. Every wait is on a condition
//! (a line printed, a process exited, a command's answer) with a deadline; none sleeps and
//! hopes.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use iroh::{EndpointAddr, SecretKey};
use iroh_raft::{
    Ticket, TicketRole,
    mgmt::{ClientOptions, IrohRaftManagementClient},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_iroh-raft");
pub const WAIT: Duration = Duration::from_secs(60);

/// A node process; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub id: u64,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be resumed to be reaped (it may have exited already).
        let _ = kill(self, "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `iroh-raft node` with `args` (Testing preset) and waits for its `ready node=N` line.
pub fn spawn(dir: &Path, args: &[&str]) -> Proc {
    spawn_with(dir, args, "testing")
}

/// Starts `iroh-raft node` with `args` and a preset, and waits for its `ready node=N` line.
pub fn spawn_with(dir: &Path, args: &[&str], preset: &str) -> Proc {
    spawn_logging(dir, args, preset, None)
}

/// [`spawn_with`], the node's log appended to `log` when given: the runtime's info lines, or
/// what `NODE_LOG` asks for (a `RUST_LOG` filter).
pub fn spawn_logging(dir: &Path, args: &[&str], preset: &str, log: Option<&Path>) -> Proc {
    let mut command = Command::new(BIN);
    command
        .arg("node")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .args(["--preset", preset])
        .stdout(Stdio::piped());
    match log {
        Some(log) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap();
            command
                .env(
                    "RUST_LOG",
                    std::env::var("NODE_LOG").unwrap_or("warn,iroh_raft_actors=info".into()),
                )
                .stderr(file)
        }
        None => command.stderr(Stdio::inherit()),
    };
    let mut child = command.spawn().expect("spawn iroh-raft node");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ready node=") {
                let id: u64 = rest.split_whitespace().next().unwrap().parse().unwrap();
                let _ = tx.send(id);
            }
        }
    });
    let Ok(id) = rx.recv_timeout(WAIT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("node in {} did not become ready", dir.display());
    };
    Proc { child, id }
}

/// The names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Sends `SIG<name>` to a node, which must be running (a signal that went nowhere would make
/// a fault a no-op).
pub fn signal(p: &Proc, name: &str) {
    assert!(kill(p, name), "SIG{name} to node {} failed", p.id);
}

fn kill(p: &Proc, name: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{name}"), &p.child.id().to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn send_sigterm(p: &Proc) {
    signal(p, "TERM");
}

pub fn sigterm(p: &mut Proc) {
    send_sigterm(p);
    wait_exit(p);
}

/// Waits for a node told to stop (or removed); it must exit with status 0.
pub fn wait_exit(p: &mut Proc) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            assert!(status.success(), "node {} exited with {status}", p.id);
            return;
        }
        assert!(Instant::now() < deadline, "node {} did not exit", p.id);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a CLI run printed and returned.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the CLI with `args` (and `--key-dir`), feeding it `stdin`.
pub fn cli_in(key_dir: &Path, args: &[&str], stdin: &[u8]) -> Out {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--key-dir")
        .arg(key_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run iroh-raft");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the CLI with `args` (and `--key-dir`); returns (exit code, stdout, stderr).
pub fn cli(key_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = cli_in(key_dir, args, b"");
    (out.code, out.stdout, out.stderr)
}

/// Runs `args` until `done` holds for its output; panics with `what` after [`WAIT`].
pub fn cli_until(key_dir: &Path, args: &[&str], what: &str, done: impl Fn(&Out) -> bool) -> Out {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = cli_in(key_dir, args, b"");
        if done(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: last exit {} {}{}",
            out.code,
            out.stdout,
            out.stderr
        );
        // A command that fails fast is not run back to back for a minute.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first line of a file the node wrote (a ticket).
pub fn read_line(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// A ticket signed by the member whose data dir is `dir`, naming `members`, for `role`, with
/// `expires_in` seconds to live (negative: already expired).
pub fn ticket_from(
    dir: &Path,
    like: &Ticket,
    members: Vec<EndpointAddr>,
    role: TicketRole,
    expires_in: i64,
) -> String {
    let key = iroh_raft::net::load_or_create_secret_key(dir).unwrap();
    let now = std::time::SystemTime::now();
    let secs = Duration::from_secs(expires_in.unsigned_abs());
    let expires = if expires_in >= 0 {
        now + secs
    } else {
        now - secs
    };
    Ticket::issue(&key, like.cluster_id, members, role, expires).to_string()
}

/// An address where nothing answers: a UDP socket that swallows every packet (a member that
/// is down, or paused, as far as a dialler can tell). Kept open while the socket lives.
pub fn black_hole() -> (std::net::UdpSocket, EndpointAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = EndpointAddr::new(SecretKey::generate().public())
        .with_ip_addr(socket.local_addr().unwrap());
    (socket, addr)
}

/// A cluster of `n` node processes: one bootstrapped, the others joined by ticket, and an admin
/// ticket that names them all.
pub struct Cluster {
    pub dirs: Vec<tempfile::TempDir>,
    pub procs: Vec<Proc>,
    pub keys: tempfile::TempDir,
    pub admin: String,
    /// Where node `i` logs (`node-{i}.log`), when started by [`Cluster::start_logged`].
    pub logs: Option<tempfile::TempDir>,
}

impl Cluster {
    pub fn start(n: usize) -> Self {
        Self::start_with(n, "testing")
    }

    /// `n` node processes with a preset.
    pub fn start_with(n: usize, preset: &str) -> Self {
        Self::start_inner(n, preset, None)
    }

    /// [`Cluster::start_with`], each node logging to a file of [`Cluster::log`].
    pub fn start_logged(n: usize, preset: &str) -> Self {
        Self::start_inner(n, preset, Some(tempfile::tempdir().unwrap()))
    }

    /// Node `i`'s log file, when the cluster logs.
    pub fn log(&self, i: usize) -> Option<std::path::PathBuf> {
        self.logs
            .as_ref()
            .map(|d| d.path().join(format!("node-{i}.log")))
    }

    /// Starts node `i` again on its data dir (logging where it logged before).
    pub fn respawn(&self, i: usize, preset: &str) -> Proc {
        spawn_logging(self.dirs[i].path(), &[], preset, self.log(i).as_deref())
    }

    fn start_inner(n: usize, preset: &str, logs: Option<tempfile::TempDir>) -> Self {
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let keys = tempfile::tempdir().unwrap();
        let log = |i: usize| {
            logs.as_ref()
                .map(|d| d.path().join(format!("node-{i}.log")))
        };
        let bind = ["--bind", "127.0.0.1:0"];
        let mut procs = vec![spawn_logging(
            dirs[0].path(),
            &[bind[0], bind[1], "--bootstrap"],
            preset,
            log(0).as_deref(),
        )];
        let join = read_line(&dirs[0].path().join("ticket"));
        for (i, dir) in dirs.iter().enumerate().skip(1) {
            procs.push(spawn_logging(
                dir.path(),
                &[bind[0], bind[1], "--join", &join],
                preset,
                log(i).as_deref(),
            ));
        }
        let first_admin = read_line(&dirs[0].path().join("admin-ticket"));
        let (code, out, err) = cli(
            keys.path(),
            &[
                "ctl",
                "--cluster",
                &first_admin,
                "ticket",
                "--role",
                "admin",
            ],
        );
        assert_eq!(code, 0, "{err}");
        Self {
            dirs,
            procs,
            keys,
            admin: out.trim().to_owned(),
            logs,
        }
    }

    /// The leader, as `ctl status` reports it once there is one.
    pub fn leader(&self) -> u64 {
        let out = cli_until(
            self.keys.path(),
            &["ctl", "--cluster", &self.admin, "--json", "status"],
            "a leader",
            |o| o.code == 0 && o.stdout.contains("\"leaders_view\":true"),
        );
        let status: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        status["leader"].as_u64().unwrap()
    }

    pub fn proc(&self, id: u64) -> &Proc {
        self.procs.iter().find(|p| p.id == id).unwrap()
    }

    /// The endpoint id of node `id` (from its data dir's key).
    pub fn proc_endpoint(&self, id: u64) -> iroh::EndpointId {
        let at = self.procs.iter().position(|p| p.id == id).unwrap();
        iroh_raft::net::load_or_create_secret_key(self.dirs[at].path())
            .unwrap()
            .public()
    }
}

/// A management client of `members` admitted by `ticket`; it dials at its first call.
pub async fn client_of(members: Vec<EndpointAddr>, ticket: &Ticket) -> IrohRaftManagementClient {
    IrohRaftManagementClient::new(members, Some(ticket), ClientOptions::default())
        .await
        .unwrap()
}

/// Runs `iroh-raft node ARGS --data-dir DIR` until it exits on its own (panics after [`WAIT`]);
/// returns its exit code and what it printed on stderr.
pub fn run_until_exit(args: &[&str], dir: &Path) -> (i32, String) {
    let mut child = Command::new(BIN)
        .arg("node")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut out);
        out
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node on {} kept running", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code().unwrap_or(-1), reader.join().unwrap())
}
