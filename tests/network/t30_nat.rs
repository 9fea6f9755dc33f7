//! NAT traversal through our own relay: three `iroh-raft node` processes, each behind a NAT
//! router of its own (two endpoint-independent NATs, one symmetric), none able to reach
//! another's address, and an `iroh-relay` server on a public host. The cluster forms through the
//! relay, elects and commits; the two nodes behind the endpoint-independent NATs punch a direct
//! path (the metrics say so), the one behind the symmetric NAT stays relayed. With the relay
//! down, the direct pair keeps committing and the relayed-only member is reported unreachable;
//! when the relay is back, it is reachable again and catches up.

use std::{
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use iroh::{EndpointAddr, RelayUrl};
use iroh_raft::{
    KvCommand, KvResponse, Ticket,
    mgmt::{ClientOptions, IrohRaftManagementClient},
    net::Relays,
};

use crate::{
    lab::{Host, Lab, Nat},
    nodes::{NetCluster, WAIT, block_on_in, cli},
    relay::{QAD_PORT, RelayCerts, start_relay},
};

enum RelayCmd {
    Start(mpsc::Sender<RelayUrl>),
    Stop(mpsc::Sender<()>),
}

/// A relay server run by a thread inside the relay host's namespace, started and stopped on
/// request (always on the same ports, with the same certificate).
struct RelayHandle {
    commands: Option<mpsc::Sender<RelayCmd>>,
    thread: Option<JoinHandle<()>>,
}

impl RelayHandle {
    fn spawn(host: &Host, certs: Arc<RelayCerts>) -> Self {
        let (tx, rx) = mpsc::channel::<RelayCmd>();
        let ip = host.ip.into();
        let thread = host.spawn_in(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let mut server = None;
            for cmd in rx {
                match cmd {
                    RelayCmd::Start(reply) => {
                        let (s, url) = rt.block_on(start_relay(ip, 443, QAD_PORT, &certs));
                        server = Some(s);
                        let _ = reply.send(url);
                    }
                    RelayCmd::Stop(reply) => {
                        if let Some(s) = server.take() {
                            let _ = rt.block_on(s.shutdown());
                        }
                        let _ = reply.send(());
                    }
                }
            }
            if let Some(s) = server.take() {
                let _ = rt.block_on(s.shutdown());
            }
        });
        Self {
            commands: Some(tx),
            thread: Some(thread),
        }
    }

    fn start(&self) -> RelayUrl {
        let (tx, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .unwrap()
            .send(RelayCmd::Start(tx))
            .unwrap();
        rx.recv().expect("the relay started")
    }

    fn stop(&self) {
        let (tx, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .unwrap()
            .send(RelayCmd::Stop(tx))
            .unwrap();
        rx.recv().expect("the relay stopped");
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A management client made in `host`'s namespace, reaching the members through the ticket's
/// relays (trusting `ca`), running `f`.
fn with_client<T: Send + 'static, F>(
    host: &Host,
    ticket: &Ticket,
    members: Vec<EndpointAddr>,
    ca: &std::path::Path,
    pinned: bool,
    f: impl FnOnce(IrohRaftManagementClient) -> F + Send + 'static,
) -> Option<T>
where
    F: std::future::Future<Output = Option<T>>,
{
    let ticket = ticket.clone();
    // The ticket's relays, trusting the test's CA.
    let relays = Relays::with_ca_file(Vec::new(), Some(ca)).unwrap();
    block_on_in(host, move || async move {
        let mut options = ClientOptions::default()
            .timeout(Duration::from_secs(3))
            .relays(relays);
        if pinned {
            options = options.pinned();
        }
        let client = IrohRaftManagementClient::new(members, Some(&ticket), options)
            .await
            .ok()?;
        let out = f(client.clone()).await;
        client.close().await;
        out
    })
}

/// The value of `iroh_raft_peer_relayed{peer="P"}` in a metrics text.
fn relayed(metrics: &str, peer: u64) -> Option<bool> {
    let prefix = format!("iroh_raft_peer_relayed{{peer=\"{peer}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim() == "1")
}

fn wait_for(what: &str, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

#[test]
fn members_behind_nats_form_a_cluster_through_our_relay_and_punch_direct_paths() {
    let mut lab = Lab::new();
    let relay_host = lab.host("relay");
    let hosts = vec![
        lab.natted_host("n1", Nat::EndpointIndependent),
        lab.natted_host("n2", Nat::EndpointIndependent),
        lab.natted_host("n3", Nat::Symmetric),
    ];
    let files = tempfile::tempdir().unwrap();
    let certs = Arc::new(RelayCerts::new(relay_host.ip.into()));
    let ca = certs.write_ca(files.path());
    let relay = RelayHandle::spawn(&relay_host, certs.clone());
    let url = relay.start();
    eprintln!("relay at {url}");

    let args = vec![
        "--preset".to_string(),
        "production".into(),
        "--relay".into(),
        url.to_string(),
        "--relay-ca".into(),
        ca.display().to_string(),
    ];
    let cluster = NetCluster::start(&hosts, &args);
    assert_eq!(
        cluster.admin.relays,
        vec![url.clone()],
        "the ticket names the relay"
    );
    let ticket = cluster.admin.clone();
    let addr = |id: u64| cluster.node(id).addr();
    let n1 = &cluster.nodes[0];
    let direct_pair = [cluster.nodes[0].id, cluster.nodes[1].id];
    let relayed_only = cluster.nodes[2].id;

    // Writes commit on the whole cluster, through the relay: asked from n1's host (n1 is the
    // only member whose address it can reach), read back from the member behind the
    // symmetric NAT, which only the relay reaches.
    let write = |key: &str| {
        let key = key.to_owned();
        with_client(
            &n1.host,
            &ticket,
            vec![addr(n1.id)],
            &ca,
            false,
            move |c| async move {
                let cmd = KvCommand::Set {
                    key,
                    value: "v".into(),
                };
                c.propose::<_, KvResponse>(&cmd).await.ok().map(|_| ())
            },
        )
        .is_some()
    };
    wait_for("a write committed through the relay", || write("before"));
    let read_at = |id: u64, key: &str| {
        let key = key.to_owned();
        with_client(
            &relay_host,
            &ticket,
            vec![addr(id)],
            &ca,
            true,
            move |c| async move { c.read::<String, Option<String>>(&key).await.ok().flatten() },
        )
    };
    wait_for("the write read back from the relayed-only member", || {
        read_at(relayed_only, "before").is_some()
    });

    // Paths: the endpoint-independent pair ends up direct, the symmetric member relayed.
    let metrics_of = |id: u64| {
        with_client(
            &relay_host,
            &ticket,
            vec![addr(id)],
            &ca,
            true,
            |c| async move { c.metrics().await.ok() },
        )
        .unwrap_or_default()
    };
    let punched = wait_for(
        "a direct path between the two endpoint-independent NATs",
        || {
            let m = metrics_of(direct_pair[0]);
            relayed(&m, direct_pair[1]) == Some(false)
        },
    );
    let m1 = metrics_of(direct_pair[0]);
    eprintln!(
        "nat: direct path after {punched:?}; node {} to node {relayed_only}: relayed={:?}",
        direct_pair[0],
        relayed(&m1, relayed_only)
    );
    assert_eq!(
        relayed(&m1, relayed_only),
        Some(true),
        "the member behind the symmetric NAT is reached through the relay"
    );

    // The CLI reaches the members through the relays its ticket names, trusting the relay's CA
    // only when told to.
    let keys = tempfile::tempdir().unwrap();
    let admin = ticket.to_string();
    let ca_arg = ca.display().to_string();
    let status = cli(
        &relay_host,
        keys.path(),
        &[
            "ctl",
            "--cluster",
            &admin,
            "--relay-ca",
            &ca_arg,
            "--json",
            "status",
        ],
    );
    assert_eq!(status.code, 0, "{status:?}");
    let parsed: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(
        parsed["members"].as_array().map(Vec::len),
        Some(3),
        "{parsed}"
    );
    let untrusted = cli(
        &relay_host,
        keys.path(),
        &["ctl", "--cluster", &admin, "--timeout", "3s", "status"],
    );
    assert_ne!(
        untrusted.code, 0,
        "a relay with an untrusted certificate was used: {untrusted:?}"
    );

    // The relay goes down: the direct pair keeps committing; the relayed-only member is
    // reported unreachable.
    relay.stop();
    wait_for("a write committed with the relay down", || write("during"));
    let fresh_of = |id: u64| {
        with_client(
            &n1.host,
            &ticket,
            vec![addr(n1.id)],
            &ca,
            false,
            move |c| async move {
                let status = c.status().await.ok()?;
                let leader = status.leader;
                let m = status.members.iter().find(|m| m.id == id)?;
                (leader == status.node_id).then_some(m.fresh)
            },
        )
    };
    wait_for("the relayed-only member reported unreachable", || {
        fresh_of(relayed_only) == Some(false)
    });

    // The relay comes back: the member is reachable again and catches up.
    let again = relay.start();
    assert_eq!(again, url);
    wait_for("the relayed-only member reachable again", || {
        fresh_of(relayed_only) == Some(true)
    });
    wait_for("the relayed-only member caught up", || {
        read_at(relayed_only, "during").is_some()
    });
    drop(cluster);
    drop(relay);
    drop(lab);
}
