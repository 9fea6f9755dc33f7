//! A network lab on one Linux machine: hosts in network namespaces of their own, joined by a
//! router, with emulated delay, jitter and loss on the links, partitions, and NAT routers.
//!
//! It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), `ip` (iproute2), `iptables` and
//! `iptables-restore`. Without them [`Lab::new`] panics saying what is missing: tests that use it
//! fail, they never skip.
//!
//! # Topology
//!
//! ```text
//!                        +--------------------------- core ---------------------------+
//!                        | router (ip_forward=1), no default route, no route to any   |
//!                        | private subnet. FORWARD chain:                             |
//!                        |   1. -j LABPART     (partitions: DROP rules, both ways)     |
//!                        |   2. -j NFQUEUE 0   (the link emulator, once a link is set) |
//!                        +--p1---------------p2---------------p3----------------------+
//!                   10.77.1.1 |     10.77.2.1 |      10.77.3.1 |
//!                             |               |                |
//!                   10.77.1.2 eth0  10.77.2.2 eth0   10.77.3.2 wan0
//!                        host "a"       host "b"       NAT router of "n"   MASQUERADE on wan0
//!                      (public)        (public)        192.168.1.1 lan0   (--random-fully for
//!                                                                 |        Nat::Symmetric)
//!                                                     192.168.1.2 eth0
//!                                                          host "n" (natted)
//! ```
//!
//! * Every public host and every NAT router is a "port" of the core: port `k` is the subnet
//!   `10.77.k.0/24`, the core at `.1`, the host or NAT router at `.2`, joined by a veth pair
//!   (`pk` in the core, `eth0` or `wan0` on the other side). Its default route is the core.
//! * A natted host `j` lives in `192.168.j.0/24` behind a NAT router namespace of its own (router
//!   `.1`, host `.2`). The core has no route to `192.168.0.0/16`, so nobody outside reaches a
//!   private address; the NAT router drops whatever arrives at its own public address that is not
//!   the reply of a flow from inside (`INPUT -i wan0 -j DROP`; replies are un-NATed and forwarded,
//!   they never reach INPUT). `Nat::EndpointIndependent` is Linux's plain MASQUERADE, which keeps
//!   the source port, so one inside socket keeps one outside port whatever the destination
//!   (endpoint-independent mapping; filtering is address-and-port dependent, as conntrack only
//!   lets replies in). `Nat::Symmetric` adds `--random-fully`: a new random port per destination,
//!   which defeats hole punching between two such NATs.
//! * Every packet between two hosts crosses the core's FORWARD chain, which is where partitions
//!   and the link emulator work. A natted host is seen there at its NAT router's public address,
//!   its [`Host::public_ip`].
//! * The lab is IPv4 only: IPv6 is off on every veth (`lo` keeps `::1`). Reverse-path filtering is
//!   off everywhere. Each namespace has its `lo` up.
//! * Namespaces are named `irl{pid}x{lab}-core`, `irl{pid}x{lab}-h-{host}` and
//!   `irl{pid}x{lab}-nat-{host}`; interface names are per namespace, so labs of one process (tests
//!   running in parallel) never collide. [`Lab::new`] first deletes the namespaces of crashed runs
//!   (a prefix whose pid is no longer alive). Dropping the lab (also while unwinding from a
//!   panicking test) stops the emulator and deletes every namespace it made, which deletes their
//!   interfaces and firewall rules with them. Processes started with [`Host::command`] are the
//!   caller's to stop.
//!
//! # The link emulator (why in userspace)
//!
//! These kernels have no `netem` qdisc, so delay, jitter and loss are made in userspace: once a
//! link is set, the core's FORWARD chain sends every forwarded IPv4 packet to netfilter queue 0,
//! which a thread of this process (entered into the core namespace) reads. The kernel keeps the
//! packet; the thread gets only its id and first bytes (the IP header: source and destination),
//! looks the pair up in the link table (by public addresses) and either drops it at once (loss),
//! accepts it at once (no link for the pair, or a perfect one), or puts it in a min-heap by release
//! time (delay, plus a uniform jitter in `±jitter`, never below zero) and accepts it when that time
//! comes: NFQUEUE allows verdicts in any order. The thread sleeps in `ppoll` on the queue socket
//! and an eventfd (to stop it) until the next release, so it costs nothing when idle. Verdicts due
//! together go to the kernel in one `sendto`. The kernel segments GSO packets before queueing them,
//! so loss and delay apply per wire packet. Jittered packets can overtake each other, as with netem.
//! The kernel queue holds up to 65536 packets; past that it drops them (counted in
//! [`EmulatorStats::queue_full`]).
//!
//! The queue is read through a raw netlink socket (about 150 lines below) rather than the `nfq`
//! crate, which hides its socket: the emulator has to sleep in `ppoll` with a timeout (the next
//! release) and wants a large receive buffer, both of which need the descriptor.

#![allow(dead_code)]

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Every namespace name of every lab starts with this, then `{pid}x{lab}-`.
const PREFIX: &str = "irl";
/// The core's chain of partition rules, jumped to first from FORWARD.
const PARTITION_CHAIN: &str = "LABPART";
/// The netfilter queue the emulator reads (queues are per network namespace).
const QUEUE_NUM: u16 = 0;
/// Bytes of each packet copied to the emulator: the IPv4 header (without options) is enough.
const COPY_RANGE: u32 = 40;
/// Packets the kernel holds for the emulator before it drops new ones.
const QUEUE_MAX_LEN: u32 = 65536;

/// The kind of NAT in front of a natted host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// MASQUERADE keeping the source port: one outside port per inside socket, whatever the
    /// destination (a "cone" NAT; hole punching works).
    EndpointIndependent,
    /// MASQUERADE `--random-fully`: a new random outside port per destination.
    Symmetric,
}

/// An emulated link between two hosts, applied in both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Link {
    /// One-way delay.
    pub delay: Duration,
    /// Each packet's delay is `delay` plus a uniform offset in `-jitter..=jitter`, never below 0.
    pub jitter: Duration,
    /// Probability that a packet is dropped, `0.0..=1.0`.
    pub loss: f64,
}

impl Link {
    /// A link with this one-way delay, no jitter, no loss.
    pub fn delay(delay: Duration) -> Link {
        Link {
            delay,
            ..Link::default()
        }
    }

    /// Whether the link changes nothing (no delay, no jitter, no loss).
    pub fn is_perfect(&self) -> bool {
        self.delay.is_zero() && self.jitter.is_zero() && self.loss <= 0.0
    }
}

/// Counters of the link emulator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmulatorStats {
    /// Packets held back and released later.
    pub delayed: u64,
    /// Packets dropped for loss.
    pub dropped: u64,
    /// Packets the kernel dropped because the queue (or the emulator's socket) was full.
    pub queue_full: u64,
    /// Packets passed at once (no link for the pair, or no delay drawn).
    pub passed: u64,
    /// CPU time the emulator thread has used so far.
    pub cpu_time: Duration,
}

/// A host of the lab: a network namespace with one interface, `eth0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The name given to [`Lab::host`] or [`Lab::natted_host`].
    pub name: String,
    /// Its network namespace (`/run/netns/{ns}`).
    pub ns: String,
    /// The address it has (and binds to) inside its namespace.
    pub ip: Ipv4Addr,
    /// The address other hosts see it at: `ip` for a public host, its NAT router's public
    /// address for a natted one.
    pub public_ip: Ipv4Addr,
}

impl Host {
    /// `ip netns exec <ns> <program>`; the caller adds arguments, environment and stdio.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(&tools().ip);
        command.args(["netns", "exec", &self.ns]).arg(program);
        command
    }

    /// Runs `f` on a new thread entered into this host's namespace and returns its result
    /// (a panic in `f` is resumed here). Sockets made inside stay in the namespace, and threads
    /// started inside (a tokio runtime's workers) are in it too.
    pub fn run_in<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        join_or_resume(self.spawn_in(f))
    }

    /// The same as [`Host::run_in`], but returns at once with the thread's handle.
    pub fn spawn_in<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> JoinHandle<R> {
        spawn_in_netns(&self.ns, &format!("lab-{}", self.name), f)
    }
}

/// A lab: a core router namespace and the hosts around it. Dropping it stops the emulator and
/// deletes every namespace it made.
pub struct Lab {
    /// `irl{pid}x{lab}`: the start of all its namespace names.
    prefix: String,
    core: String,
    /// Every namespace made so far, in order; deleted in reverse order on drop.
    namespaces: Vec<String>,
    names: HashSet<String>,
    /// Ports of the core used so far (public hosts and NAT routers): port k is 10.77.k.0/24.
    ports: u8,
    /// Private subnets used so far: natted host j is in 192.168.j.0/24.
    private_nets: u8,
    shared: Arc<Shared>,
    /// Started by the first link that is not perfect.
    emulator: Mutex<Option<Emulator>>,
}

impl Lab {
    /// A new lab with its core router. Panics saying what is missing without root, `ip` or
    /// `iptables`.
    pub fn new() -> Lab {
        tools(); // the prerequisites, checked once
        sweep_stale_namespaces();
        static LABS: AtomicU64 = AtomicU64::new(0);
        let prefix = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let core = format!("{prefix}-core");
        // Built first and filled in after, so that a panic halfway deletes what was made.
        let mut lab = Lab {
            prefix,
            core: core.clone(),
            namespaces: Vec::new(),
            names: HashSet::new(),
            ports: 0,
            private_nets: 0,
            shared: Arc::new(Shared::default()),
            emulator: Mutex::new(None),
        };
        lab.add_namespace(&core, true);
        iptables(&core, &["-N", PARTITION_CHAIN]);
        iptables(&core, &["-I", "FORWARD", "1", "-j", PARTITION_CHAIN]);
        lab
    }

    /// A host with a public address, on a port of the core.
    pub fn host(&mut self, name: &str) -> Host {
        self.check_name(name);
        let ns = format!("{}-h-{name}", self.prefix);
        self.add_namespace(&ns, false);
        let ip = self.attach_to_core(&ns, "eth0");
        Host {
            name: name.to_string(),
            ns,
            ip,
            public_ip: ip,
        }
    }

    /// A host in a private subnet of its own behind a NAT router namespace of its own, which is
    /// on a port of the core. Nobody reaches the host's private address; it reaches everybody.
    pub fn natted_host(&mut self, name: &str, nat: Nat) -> Host {
        self.check_name(name);
        let router = format!("{}-nat-{name}", self.prefix);
        self.add_namespace(&router, true);
        let public_ip = self.attach_to_core(&router, "wan0");

        assert!(
            self.private_nets < 254,
            "network lab: at most 254 natted hosts per lab"
        );
        self.private_nets += 1;
        let j = self.private_nets;
        let router_ip = Ipv4Addr::new(192, 168, j, 1);
        let ip = Ipv4Addr::new(192, 168, j, 2);
        let ns = format!("{}-h-{name}", self.prefix);
        self.add_namespace(&ns, false);
        ip_cmd(&[
            "-n", &router, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        configure_interface(&router, "lan0", router_ip);
        configure_interface(&ns, "eth0", ip);
        ip_cmd(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &router_ip.to_string(),
        ]);

        let mut masquerade = vec![
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan0",
            "-j",
            "MASQUERADE",
        ];
        if nat == Nat::Symmetric {
            masquerade.push("--random-fully");
        }
        iptables(&router, &masquerade);
        // Unasked packets to the router itself vanish, as with most NATs (no ICMP back).
        // Replies to inside flows are un-NATed before routing and never reach INPUT.
        iptables(&router, &["-A", "INPUT", "-i", "wan0", "-j", "DROP"]);
        Host {
            name: name.to_string(),
            ns,
            ip,
            public_ip,
        }
    }

    /// Emulates `link` between `a` and `b`, both ways, on the packets the core forwards between
    /// them (from then on; packets already held keep their release time).
    pub fn set_link(&self, a: &Host, b: &Host, link: Link) {
        check_link(&link);
        assert_ne!(
            a.public_ip, b.public_ip,
            "network lab: a link needs two different hosts"
        );
        {
            let mut links = self.shared.links.lock().unwrap();
            links.pairs.insert((a.public_ip, b.public_ip), link);
            links.pairs.insert((b.public_ip, a.public_ip), link);
        }
        if !link.is_perfect() {
            self.ensure_emulator();
        }
    }

    /// Emulates `link` between every pair of hosts, existing and added later (this also replaces
    /// every link set by [`Lab::set_link`] before; later calls of it override a pair again).
    pub fn set_all_links(&self, link: Link) {
        check_link(&link);
        {
            let mut links = self.shared.links.lock().unwrap();
            links.pairs.clear();
            links.default = Some(link);
        }
        if !link.is_perfect() {
            self.ensure_emulator();
        }
    }

    /// Drops every packet between any host of `a` and any host of `b`, both ways (DROP rules in
    /// the core, applied all at once). Adds to the partitions made before.
    pub fn partition(&self, a: &[&Host], b: &[&Host]) {
        let mut rules = String::from("*filter\n");
        for x in a {
            for y in b {
                if x.public_ip == y.public_ip {
                    continue;
                }
                for (src, dst) in [(x.public_ip, y.public_ip), (y.public_ip, x.public_ip)] {
                    rules.push_str(&format!(
                        "-A {PARTITION_CHAIN} -s {src}/32 -d {dst}/32 -j DROP\n"
                    ));
                }
            }
        }
        rules.push_str("COMMIT\n");
        let mut command = Command::new(&tools().ip);
        command
            .args(["netns", "exec", &self.core])
            .arg(&tools().iptables_restore)
            .args(["-w", "--noflush"]);
        run_with_input(&mut command, &rules);
    }

    /// Removes every partition.
    pub fn heal(&self) {
        iptables(&self.core, &["-F", PARTITION_CHAIN]);
    }

    /// What the emulator has done so far (all zero before the first link).
    pub fn emulator_stats(&self) -> EmulatorStats {
        let shared = &self.shared;
        let mut emulator = self.emulator.lock().unwrap();
        if let Some(running) = emulator.as_mut() {
            running.panic_if_stopped();
        }
        let cpu_time = emulator
            .as_ref()
            .and_then(|e| e.cpu_time())
            .unwrap_or_default();
        let queue_full = if emulator.is_some() {
            run_in_netns(&self.core, "lab-stats", queue_drops)
        } else {
            0
        };
        EmulatorStats {
            delayed: shared.delayed.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
            queue_full,
            passed: shared.passed.load(Ordering::Relaxed),
            cpu_time,
        }
    }

    /// The namespaces made so far, the core's first.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.clone()
    }

    /// The core router's namespace.
    pub fn core_ns(&self) -> &str {
        &self.core
    }

    fn check_name(&mut self, name: &str) {
        assert!(
            !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "network lab: host name {name:?} must be 1 to 32 of [A-Za-z0-9_-]"
        );
        assert!(
            self.names.insert(name.to_string()),
            "network lab: there is already a host named {name:?}"
        );
    }

    /// Creates a namespace (remembered at once, for the cleanup), with `lo` up, reverse-path
    /// filtering off, IPv6 off on the interfaces to come, and forwarding on for routers.
    fn add_namespace(&mut self, ns: &str, router: bool) {
        {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            ip_cmd(&["netns", "add", ns]);
        }
        self.namespaces.push(ns.to_string());
        ip_cmd(&["-n", ns, "link", "set", "lo", "up"]);
        let result = run_in_netns(ns, "lab-sysctl", move || -> Result<(), String> {
            let mut settings = vec![
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ];
            if router {
                settings.push(("net/ipv4/ip_forward", "1"));
            }
            for (key, value) in settings {
                let path = format!("/proc/sys/{key}");
                if key.starts_with("net/ipv6") && !Path::new(&path).exists() {
                    continue; // a kernel without IPv6: nothing to turn off
                }
                std::fs::write(&path, value).map_err(|e| format!("writing {path}: {e}"))?;
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("network lab: setting up namespace {ns}: {e}");
        }
    }

    /// Joins `ns` to a new port of the core through a veth pair (`ifname` on its side), and gives
    /// it its address there and a default route via the core. Returns that address.
    fn attach_to_core(&mut self, ns: &str, ifname: &str) -> Ipv4Addr {
        assert!(
            self.ports < 254,
            "network lab: at most 254 hosts and NAT routers per lab"
        );
        self.ports += 1;
        let k = self.ports;
        let core_if = format!("p{k}");
        let core_ip = Ipv4Addr::new(10, 77, k, 1);
        let ip = Ipv4Addr::new(10, 77, k, 2);
        ip_cmd(&[
            "-n", &self.core, "link", "add", &core_if, "type", "veth", "peer", "name", ifname,
            "netns", ns,
        ]);
        configure_interface(&self.core, &core_if, core_ip);
        configure_interface(ns, ifname, ip);
        ip_cmd(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &core_ip.to_string(),
        ]);
        ip
    }

    /// Starts the emulator (once): its thread binds the queue in the core, then the FORWARD rule
    /// that feeds it goes in after the partition rules.
    fn ensure_emulator(&self) {
        let mut emulator = self.emulator.lock().unwrap();
        if let Some(running) = emulator.as_mut() {
            running.panic_if_stopped();
            return;
        }
        let started = Emulator::start(&self.core, self.shared.clone())
            .unwrap_or_else(|e| panic!("network lab: could not start the link emulator: {e}"));
        *emulator = Some(started);
        iptables(
            &self.core,
            &[
                "-A",
                "FORWARD",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &QUEUE_NUM.to_string(),
            ],
        );
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds.
        if let Some(mut emulator) = self
            .emulator
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let how = emulator.join();
            if !how.is_empty() {
                eprintln!("network lab: the link emulator had stopped: {how}");
            }
        }
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = try_run(Command::new(&tools().ip).args(["netns", "del", ns])) {
                eprintln!("network lab: could not delete namespace {ns}: {e}");
            }
        }
    }
}

/// The namespaces that exist now (`ip netns list`), labs' and others'.
pub fn list_namespaces() -> Vec<String> {
    run(Command::new(&tools().ip).args(["netns", "list"]))
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn check_link(link: &Link) {
    assert!(
        (0.0..=1.0).contains(&link.loss),
        "network lab: loss must be in 0.0..=1.0, not {}",
        link.loss
    );
}

// ---------------------------------------------------------------------------------------------
// Commands and prerequisites

/// The programs the lab runs, found once.
struct Tools {
    ip: PathBuf,
    iptables: PathBuf,
    iptables_restore: PathBuf,
}

/// Checks the prerequisites once per process; panics saying what is missing.
fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    match TOOLS.get_or_init(find_tools) {
        Ok(tools) => tools,
        Err(e) => panic!("{e}"),
    }
}

fn find_tools() -> Result<Tools, String> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("network lab: cannot read /proc/self/status: {e}"))?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or("network lab: no CapEff in /proc/self/status")?;
    let missing: Vec<&str> = [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| effective & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if !missing.is_empty() {
        return Err(format!(
            "network lab: these tests make network namespaces, veth pairs and firewall rules and \
             need root: missing {} (effective capabilities {effective:#x}). Run them as root, e.g. \
             `sudo -E cargo test --test network`.",
            missing.join(" and ")
        ));
    }
    let find = |program: &str, package: &str| -> Result<PathBuf, String> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "network lab: `{program}` not found in PATH nor in /usr/sbin, /sbin: install \
                     {package} (Debian/Ubuntu: `apt-get install {package}`)"
                )
            })
    };
    Ok(Tools {
        ip: find("ip", "iproute2")?,
        iptables: find("iptables", "iptables")?,
        iptables_restore: find("iptables-restore", "iptables")?,
    })
}

/// Serialises `ip netns add/del` within the process (concurrent first uses of `ip netns` race
/// when making `/run/netns` a shared mount).
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Runs a command; on failure returns what it was, its exit status and its stderr.
fn try_run(command: &mut Command) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run(command: &mut Command) -> String {
    try_run(command).unwrap_or_else(|e| panic!("network lab: {e}"))
}

fn run_with_input(command: &mut Command, input: &str) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("network lab: could not run {command:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("network lab: writing to {command:?}: {e}"));
    let output = child.wait_with_output().unwrap();
    if !output.status.success() {
        panic!(
            "network lab: {command:?} failed ({}): {}\ninput:\n{input}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
}

fn ip_cmd(args: &[&str]) {
    run(Command::new(&tools().ip).args(args));
}

/// `ip netns exec <ns> iptables -w <args>`.
fn iptables(ns: &str, args: &[&str]) {
    run(Command::new(&tools().ip)
        .args(["netns", "exec", ns])
        .arg(&tools().iptables)
        .arg("-w")
        .args(args));
}

/// Gives an interface in `ns` its address (in a /24) and brings it up.
fn configure_interface(ns: &str, ifname: &str, ip: Ipv4Addr) {
    ip_cmd(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", ifname]);
    ip_cmd(&["-n", ns, "link", "set", ifname, "up"]);
}

/// Deletes the namespaces of labs whose process is gone (crashed runs). The first lab of a
/// process also deletes those with its own pid: none of them can be its own yet (a crashed run
/// in an earlier container may have had the same pid).
fn sweep_stale_namespaces() {
    static SWEPT_OWN_PID: Mutex<bool> = Mutex::new(false);
    let mut swept_own = SWEPT_OWN_PID.lock().unwrap_or_else(|e| e.into_inner());
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        *swept_own = true;
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = lab_pid(&name) else { continue };
        let stale = if pid == own {
            !*swept_own
        } else {
            !Path::new(&format!("/proc/{pid}")).exists()
        };
        if stale {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = try_run(Command::new(&tools().ip).args(["netns", "del", &name])) {
                eprintln!("network lab: could not delete stale namespace {name}: {e}");
            }
        }
    }
    *swept_own = true;
}

/// The pid in a lab namespace name `irl{pid}x{lab}-…`.
fn lab_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    let (lab, _) = rest.split_once('-')?;
    if lab.is_empty() || !lab.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Threads in namespaces

/// Enters the calling thread into the network namespace `ns` (only this thread; threads it
/// starts afterwards inherit it).
fn enter_netns(ns: &str) -> io::Result<()> {
    let file = File::open(format!("/run/netns/{ns}"))?;
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn spawn_in_netns<R: Send + 'static>(
    ns: &str,
    thread_name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> JoinHandle<R> {
    let ns = ns.to_string();
    std::thread::Builder::new()
        .name(thread_name.to_string())
        .spawn(move || {
            enter_netns(&ns)
                .unwrap_or_else(|e| panic!("network lab: cannot enter namespace {ns}: {e}"));
            f()
        })
        .expect("network lab: cannot start a thread")
}

fn run_in_netns<R: Send + 'static>(
    ns: &str,
    thread_name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    join_or_resume(spawn_in_netns(ns, thread_name, f))
}

fn join_or_resume<R>(handle: JoinHandle<R>) -> R {
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic".to_string()
    }
}

/// Packets the kernel dropped on queue 0 of the calling thread's namespace: queue full, or the
/// emulator's socket full (`/proc/net/netfilter/nfnetlink_queue`, columns 6 and 7).
fn queue_drops() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
    else {
        return 0;
    };
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| cols.len() >= 7 && cols[0] == QUEUE_NUM.to_string())
        .map(|cols| cols[5].parse::<u64>().unwrap_or(0) + cols[6].parse::<u64>().unwrap_or(0))
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The link emulator

/// What the lab and the emulator thread share.
#[derive(Default)]
struct Shared {
    links: Mutex<Links>,
    stop: AtomicBool,
    delayed: AtomicU64,
    dropped: AtomicU64,
    passed: AtomicU64,
}

/// Links by (source, destination) public address; pairs without one get the default, if any,
/// else pass untouched.
#[derive(Default)]
struct Links {
    default: Option<Link>,
    pairs: HashMap<(Ipv4Addr, Ipv4Addr), Link>,
}

impl Links {
    fn get(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<Link> {
        self.pairs.get(&(src, dst)).copied().or(self.default)
    }
}

struct Emulator {
    shared: Arc<Shared>,
    /// An eventfd that wakes the thread to stop.
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Starts the thread in the core namespace; returns once it has bound the queue.
    fn start(core: &str, shared: Arc<Shared>) -> Result<Emulator, String> {
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(format!("eventfd: {}", io::Error::last_os_error()));
        }
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
        let (ready_tx, ready_rx) = mpsc::channel();
        let core = core.to_string();
        let thread = {
            let (shared, wake) = (shared.clone(), wake.clone());
            std::thread::Builder::new()
                .name("lab-emulator".into())
                .spawn(move || emulate(&core, &shared, &wake, ready_tx))
                .map_err(|e| format!("cannot start a thread: {e}"))?
        };
        let mut emulator = Emulator {
            shared,
            wake,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(emulator),
            Ok(Err(e)) => {
                emulator.join();
                Err(e)
            }
            Err(_) => Err(emulator.join()),
        }
    }

    /// Stops the thread and waits for it; returns why it had stopped if it panicked.
    fn join(&mut self) -> String {
        let Some(thread) = self.thread.take() else {
            return String::new();
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        let one = 1u64.to_ne_bytes();
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        match thread.join() {
            Ok(()) => String::new(),
            Err(panic) => panic_message(&*panic),
        }
    }

    /// The thread only stops on its own by panicking: say why.
    fn panic_if_stopped(&mut self) {
        let why = match &self.thread {
            None => "see the first panic about it".to_string(),
            Some(thread) if thread.is_finished() => self.join(),
            Some(_) => return,
        };
        panic!("network lab: the link emulator thread has stopped: {why}");
    }

    /// The thread's CPU time so far.
    fn cpu_time(&self) -> Option<Duration> {
        let thread = self.thread.as_ref()?;
        let mut clock: libc::clockid_t = 0;
        if unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) } != 0 {
            return None;
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
            return None;
        }
        Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.join();
    }
}

/// The emulator thread: enters the core, binds the queue, reports, then loops: read every queued
/// packet (drop, pass or schedule it), accept the packets whose time has come, sleep until the
/// next release or the next packet.
fn emulate(core: &str, shared: &Shared, wake: &OwnedFd, ready: mpsc::Sender<Result<(), String>>) {
    let setup = enter_netns(core)
        .map_err(|e| format!("cannot enter namespace {core}: {e}"))
        .and_then(|()| {
            NfQueue::open(QUEUE_NUM, COPY_RANGE, QUEUE_MAX_LEN).map_err(|e| {
                format!(
                    "cannot bind netfilter queue {QUEUE_NUM} in {core}: {e} (the kernel needs \
                     CONFIG_NETFILTER_NETLINK_QUEUE)"
                )
            })
        });
    let mut queue = match setup {
        Ok(queue) => {
            let _ = ready.send(Ok(()));
            queue
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };

    /// Release time, then arrival order (for equal times), then the packet id.
    type Held = std::cmp::Reverse<(Instant, u64, u32)>;
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let mut arrivals = 0u64;
    let mut rng = rand::rng();
    let mut events = Vec::new();
    let mut reported_error = false;
    while !shared.stop.load(Ordering::SeqCst) {
        // Read what is queued, a bounded amount at a time so that releases are not starved.
        let mut backlog = false;
        for round in 0.. {
            if round == 256 {
                backlog = true;
                break;
            }
            events.clear();
            let got = queue
                .recv(&mut events)
                .unwrap_or_else(|e| panic!("network lab emulator: reading the queue: {e}"));
            if !got {
                break;
            }
            let now = Instant::now();
            let links = shared.links.lock().unwrap();
            for event in &events {
                let (id, addrs) = match *event {
                    Event::Packet { id, addrs } => (id, addrs),
                    Event::Ack { errno, .. } => {
                        // A verdict the kernel refused: the packet is gone (its interface went
                        // down, say). Nothing to do but say so once.
                        if errno != 0 && !reported_error {
                            reported_error = true;
                            eprintln!(
                                "network lab emulator: the kernel refused a verdict: {}",
                                io::Error::from_raw_os_error(errno)
                            );
                        }
                        continue;
                    }
                };
                let link = addrs.and_then(|(src, dst)| links.get(src, dst));
                let Some(link) = link.filter(|l| !l.is_perfect()) else {
                    queue.verdict(id, true);
                    shared.passed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if link.loss > 0.0 && rand::Rng::random::<f64>(&mut rng) < link.loss {
                    queue.verdict(id, false);
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let delay = draw_delay(&link, &mut rng);
                if delay.is_zero() {
                    queue.verdict(id, true);
                    shared.passed.fetch_add(1, Ordering::Relaxed);
                } else {
                    held.push(std::cmp::Reverse((now + delay, arrivals, id)));
                    arrivals += 1;
                    shared.delayed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }

        let now = Instant::now();
        while let Some(std::cmp::Reverse((release, _, id))) = held.peek().copied() {
            if release > now {
                break;
            }
            held.pop();
            queue.verdict(id, true);
        }
        queue
            .flush()
            .unwrap_or_else(|e| panic!("network lab emulator: sending verdicts: {e}"));
        if backlog {
            continue;
        }

        let timeout = held
            .peek()
            .map(|std::cmp::Reverse((release, _, _))| release.saturating_duration_since(now));
        let timespec = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let mut fds = [
            libc::pollfd {
                fd: queue.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timespec_ptr = timespec
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, timespec_ptr, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                panic!("network lab emulator: ppoll: {e}");
            }
        }
    }
}

/// `delay` plus a uniform offset in `-jitter..=jitter`, never below zero.
fn draw_delay(link: &Link, rng: &mut impl rand::Rng) -> Duration {
    if link.jitter.is_zero() {
        return link.delay;
    }
    let jitter = link.jitter.as_nanos() as i128;
    let nanos = link.delay.as_nanos() as i128 + rng.random_range(-jitter..=jitter);
    Duration::from_nanos(nanos.max(0) as u64)
}

// ---------------------------------------------------------------------------------------------
// A minimal NFQUEUE client: one netlink socket bound to one queue, in the calling thread's
// namespace. Netlink headers are in host byte order, nfnetlink payloads in network byte order.

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NLMSG_HDRLEN: usize = 16;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// What the queue socket delivered.
enum Event {
    /// A queued packet: its id, and its IPv4 source and destination (None if not IPv4).
    Packet {
        id: u32,
        addrs: Option<(Ipv4Addr, Ipv4Addr)>,
    },
    /// The kernel's answer to one of our messages (errno 0: success).
    Ack { seq: u32, errno: i32 },
}

struct NfQueue {
    fd: OwnedFd,
    queue: u16,
    seq: u32,
    recv_buf: Vec<u8>,
    /// Verdict messages not sent yet (netlink takes several messages in one datagram).
    pending: Vec<u8>,
}

impl NfQueue {
    /// Opens a nonblocking netlink socket and binds it to `queue`, copying `copy_range` bytes of
    /// each packet, with room for `max_len` packets in the kernel.
    fn open(queue: u16, copy_range: u32, max_len: u32) -> io::Result<NfQueue> {
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let size = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // If the socket overflows the kernel drops the packet (counted in queue_full): no need
        // to hear about it as ENOBUFS. A big buffer makes that unlikely (FORCE: past rmem_max).
        set_sockopt(&fd, libc::SOL_NETLINK, libc::NETLINK_NO_ENOBUFS, 1)?;
        if set_sockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20).is_err() {
            set_sockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 16 << 20)?;
        }
        let mut q = NfQueue {
            fd,
            queue,
            seq: 0,
            recv_buf: vec![0; 256 * 1024],
            pending: Vec::new(),
        };
        // struct nfqnl_msg_config_cmd { u8 command; u8 pad; be16 pf }
        q.configure(
            NFQA_CFG_CMD,
            &[NFQNL_CFG_CMD_BIND, 0, 0, libc::AF_INET as u8],
        )?;
        // struct nfqnl_msg_config_params { be32 copy_range; u8 copy_mode } (packed, 5 bytes)
        let mut params = copy_range.to_be_bytes().to_vec();
        params.push(NFQNL_COPY_PACKET);
        q.configure(NFQA_CFG_PARAMS, &params)?;
        q.configure(NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes())?;
        Ok(q)
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends one config attribute and waits for the kernel's acknowledgement.
    fn configure(&mut self, attr: u16, value: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        let mut msg = Vec::new();
        put_message(
            &mut msg,
            NFQNL_MSG_CONFIG,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            seq,
            self.queue,
            attr,
            value,
        );
        self.send(&msg)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Vec::new();
        loop {
            events.clear();
            if !self.recv(&mut events)? {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer from the kernel",
                    ));
                }
                let mut fd = libc::pollfd {
                    fd: self.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                unsafe { libc::poll(&mut fd, 1, left.as_millis() as libc::c_int + 1) };
                continue;
            }
            for event in &events {
                if let Event::Ack { seq: s, errno } = *event
                    && s == seq
                {
                    return match errno {
                        0 => Ok(()),
                        e => Err(io::Error::from_raw_os_error(e)),
                    };
                }
            }
        }
    }

    /// Reads one datagram without blocking and appends its events; false if there was none.
    fn recv(&mut self, events: &mut Vec<Event>) -> io::Result<bool> {
        let n = loop {
            let n = unsafe {
                libc::recv(
                    self.fd(),
                    self.recv_buf.as_mut_ptr().cast(),
                    self.recv_buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(false),
                _ => return Err(e),
            }
        };
        if n > self.recv_buf.len() {
            return Err(io::Error::other(format!(
                "a netlink message of {n} bytes was truncated"
            )));
        }
        let buf = &self.recv_buf[..n];
        let mut off = 0;
        while off + NLMSG_HDRLEN <= buf.len() {
            let len = u32_ne(&buf[off..]) as usize;
            if len < NLMSG_HDRLEN || off + len > buf.len() {
                break;
            }
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            let body = &buf[off + NLMSG_HDRLEN..off + len];
            if kind == libc::NLMSG_ERROR as u16 && body.len() >= 4 + NLMSG_HDRLEN {
                // struct nlmsgerr { int error; struct nlmsghdr msg; }
                let errno = -(u32_ne(body) as i32);
                let seq = u32_ne(&body[4 + 8..]);
                events.push(Event::Ack { seq, errno });
            } else if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
                && body.len() >= 4
                && let Some(event) = parse_packet(&body[4..])
            {
                events.push(event);
            }
            off += align4(len);
        }
        Ok(true)
    }

    /// Queues a verdict (accept or drop) for the packet `id`; [`NfQueue::flush`] sends them.
    fn verdict(&mut self, id: u32, accept: bool) {
        let verdict = if accept { NF_ACCEPT } else { NF_DROP };
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&verdict.to_be_bytes());
        value[4..].copy_from_slice(&id.to_be_bytes());
        put_message(
            &mut self.pending,
            NFQNL_MSG_VERDICT,
            libc::NLM_F_REQUEST as u16,
            0,
            self.queue,
            NFQA_VERDICT_HDR,
            &value,
        );
        if self.pending.len() >= 32 * 1024 {
            self.flush()
                .unwrap_or_else(|e| panic!("network lab emulator: sending verdicts: {e}"));
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.send(&pending);
        self.pending = pending;
        self.pending.clear();
        result
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let size = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        loop {
            let n = unsafe {
                libc::sendto(
                    self.fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&raw const kernel).cast(),
                    size,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Appends one nfqueue netlink message with a single attribute.
fn put_message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    queue: u16,
    attr: u16,
    value: &[u8],
) {
    let start = out.len();
    let attr_len = 4 + value.len();
    let len = NLMSG_HDRLEN + 4 + align4(attr_len);
    // struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid }
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg { u8 family; u8 version; be16 res_id }
    out.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    out.extend_from_slice(&queue.to_be_bytes());
    // struct nlattr { u16 len; u16 type } and the value, padded to 4 bytes
    out.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    out.extend_from_slice(&attr.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(start + len, 0);
}

/// The packet id and IPv4 addresses in the attributes of a packet message.
fn parse_packet(mut attrs: &[u8]) -> Option<Event> {
    let mut id = None;
    let mut addrs = None;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            break;
        }
        let value = &attrs[4..len];
        match kind {
            // struct nfqnl_msg_packet_hdr { be32 packet_id; be16 hw_protocol; u8 hook }
            NFQA_PACKET_HDR if value.len() >= 4 => {
                id = Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
            }
            NFQA_PAYLOAD if value.len() >= 20 && value[0] >> 4 == 4 => {
                let src = Ipv4Addr::new(value[12], value[13], value[14], value[15]);
                let dst = Ipv4Addr::new(value[16], value[17], value[18], value[19]);
                addrs = Some((src, dst));
            }
            _ => {}
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Some(Event::Packet { id: id?, addrs })
}

fn set_sockopt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    if unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const value).cast(), size) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn u32_ne(bytes: &[u8]) -> u32 {
    u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}
