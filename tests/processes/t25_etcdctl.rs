//! Issue 17: the CLI at etcdctl parity, through the real binary against real node processes.
//! The KV verbs with revisions (get --prefix, range, delete --prefix, cas, txn), a counter
//! incremented by compare-and-swap and by transactions from 8 concurrent CLI processes, a watch
//! that sees another client's writes in order and resumes without a gap when the member it
//! follows is killed, the membership verbs (a member added as a learner, promoted, moved to a
//! new address), `endpoint status|health`, `--endpoint`, `ctl watch` lines, and bad arguments.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{BIN, Cluster, Out, WAIT, cli_in, cli_until, send_sigterm, spawn, wait_exit};

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Runs `iroh-raft kv --cluster TICKET ARGS`, feeding `stdin`.
fn kv(c: &Cluster, args: &[&str], stdin: &str) -> Out {
    let mut all = vec!["kv", "--cluster", c.admin.as_str()];
    all.extend_from_slice(args);
    cli_in(c.keys.path(), &all, stdin.as_bytes())
}

fn ctl(c: &Cluster, args: &[&str]) -> Out {
    let mut all = vec!["ctl", "--cluster", c.admin.as_str()];
    all.extend_from_slice(args);
    cli_in(c.keys.path(), &all, b"")
}

fn ok(out: Out) -> Out {
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out
}

#[test]
fn kv_verbs_carry_revisions_and_txn_and_cas_are_atomic_under_8_writers() {
    let c = Cluster::start(3);
    c.leader();

    // put / get with etcd's revisions.
    let r1 = json(&ok(kv(&c, &["--json", "put", "app/a", "1"], "")).stdout)["revision"]
        .as_u64()
        .unwrap();
    assert_eq!(ok(kv(&c, &["put", "app/b", "2"], "")).stdout.trim(), "OK");
    ok(kv(&c, &["put", "app/a", "3"], ""));
    ok(kv(&c, &["put", "other", "x"], ""));
    let got = json(&ok(kv(&c, &["--json", "get", "app/a"], "")).stdout);
    let a = &got["kvs"][0];
    assert_eq!(a["value"], "3");
    assert_eq!(a["create_revision"].as_u64(), Some(r1));
    assert_eq!(a["mod_revision"].as_u64(), Some(r1 + 2));
    assert_eq!(a["version"].as_u64(), Some(2));
    assert_eq!(got["revision"].as_u64(), Some(r1 + 3));
    assert_eq!(ok(kv(&c, &["get", "app/a"], "")).stdout, "3\n");
    let missing = kv(&c, &["get", "nope"], "");
    assert_eq!(missing.code, 1, "{}", missing.stderr);

    // Prefix and range reads, in key order, with a limit.
    assert_eq!(
        ok(kv(&c, &["get", "--prefix", "app/"], "")).stdout,
        "app/a\n3\napp/b\n2\n"
    );
    assert_eq!(
        ok(kv(&c, &["get", "--prefix", "app/", "--keys-only"], "")).stdout,
        "app/a\napp/b\n"
    );
    let range = json(
        &ok(kv(
            &c,
            &["--json", "range", "app/", "app/z", "--limit", "1"],
            "",
        ))
        .stdout,
    );
    assert_eq!(range["count"], 1);
    assert_eq!(range["more"], true);
    assert_eq!(range["kvs"][0]["key"], "app/a");
    let all = json(&ok(kv(&c, &["--json", "range", "a"], "")).stdout);
    let keys: Vec<&str> = all["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["app/a", "app/b", "other"]);

    // Delete by prefix.
    assert_eq!(
        ok(kv(&c, &["delete", "--prefix", "app/"], ""))
            .stdout
            .trim(),
        "2"
    );
    assert_eq!(ok(kv(&c, &["get", "--prefix", "app/"], "")).stdout, "");
    assert_eq!(ok(kv(&c, &["delete", "app/a"], "")).stdout.trim(), "0");

    // Compare and swap: exit 5 when the value is another one, nothing changed.
    ok(kv(
        &c,
        &["cas", "lock", "--expect-absent", "--new", "me"],
        "",
    ));
    let lost = kv(&c, &["cas", "lock", "--expect-absent", "--new", "you"], "");
    assert_eq!(lost.code, 5, "{}{}", lost.stdout, lost.stderr);
    assert!(lost.stdout.contains("\"me\""), "{}", lost.stdout);
    ok(kv(&c, &["cas", "lock", "--expect", "me", "--delete"], ""));
    ok(kv(&c, &["get", "lock", "--json"], ""));
    assert_eq!(kv(&c, &["get", "lock"], "").code, 1);

    // A transaction: both branches, read in the same transaction.
    let txn = "version(\"cfg\") = \"0\"\n\nput cfg blue\nget cfg\n\nget cfg\n";
    let first = ok(kv(&c, &["txn"], txn));
    assert_eq!(first.stdout, "SUCCESS\n\nOK\n\ncfg\nblue\n");
    let second = json(&ok(kv(&c, &["--json", "txn"], txn)).stdout);
    assert_eq!(second["succeeded"], false);
    assert_eq!(second["results"][0]["kv"]["value"], "blue");
    assert_eq!(second["results"][0]["kv"]["version"], 1);
    let bad = kv(&c, &["txn"], "value(\"cfg\") ~ \"blue\"\n");
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("line 1"), "{}", bad.stderr);

    // A counter incremented from 8 CLI processes at once: 4 by `kv cas`, 4 by `kv txn`, each
    // reading the value, then swapping it for the next one only if it is still what was read.
    // A value is "N CLIENT-ATTEMPT": the history then shows who made each step. On this
    // 2-core machine leaders may change meanwhile: a read that fails is retried, and a swap
    // whose outcome is unknown (exit 1) is counted as such and retried with a fresh read.
    let start = json(&ok(kv(&c, &["--json", "put", "counter", "0 start"], "")).stdout)["revision"]
        .as_u64()
        .unwrap();
    const PER_CLIENT: u64 = 5;
    let (keys, admin) = (c.keys.path().to_owned(), c.admin.clone());
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (keys, admin) = (keys.clone(), admin.clone());
            std::thread::spawn(move || {
                let run = |args: &[&str], stdin: &str| {
                    let mut all = vec!["kv", "--cluster", admin.as_str()];
                    all.extend_from_slice(args);
                    cli_in(&keys, &all, stdin.as_bytes())
                };
                let (mut acked, mut unknown, mut lost) = (Vec::new(), 0, 0);
                let mut attempt = 0;
                while (acked.len() as u64) < PER_CLIENT {
                    attempt += 1;
                    let read = run(&["get", "counter"], "");
                    if read.code == 1 {
                        continue;
                    }
                    assert_eq!(read.code, 0, "{}", read.stderr);
                    let old = read.stdout.trim_end_matches('\n').to_owned();
                    let n: u64 = old.split(' ').next().unwrap().parse().unwrap();
                    let new = format!("{} {client}-{attempt}", n + 1);
                    let outcome = if client % 2 == 0 {
                        let out = run(&["cas", "counter", "--expect", &old, "--new", &new], "");
                        match out.code {
                            0 => Some(true),
                            5 => Some(false),
                            1 => None,
                            code => panic!("cas exited {code}: {}", out.stderr),
                        }
                    } else {
                        let txn =
                            format!("value(\"counter\") = \"{old}\"\n\nput counter \"{new}\"\n\n");
                        let out = run(&["--json", "txn"], &txn);
                        match out.code {
                            0 => json(&out.stdout)["succeeded"].as_bool(),
                            1 => None,
                            code => panic!("txn exited {code}: {}", out.stderr),
                        }
                    };
                    match outcome {
                        Some(true) => acked.push(new),
                        Some(false) => lost += 1,
                        None => unknown += 1,
                    }
                }
                (acked, unknown, lost)
            })
        })
        .collect();
    let (mut acked, mut unknown, mut lost) = (Vec::new(), 0, 0);
    for t in clients {
        let (a, u, l) = t.join().unwrap();
        acked.extend(a);
        unknown += u;
        lost += l;
    }
    eprintln!(
        "8 clients: {} increments acknowledged, {unknown} with an unknown outcome, {lost} lost races retried",
        acked.len()
    );
    let counter = json(&ok(kv(&c, &["--json", "get", "counter"], "")).stdout);
    let last = counter["kvs"][0]["value"].as_str().unwrap().to_owned();
    let total: u64 = last.split(' ').next().unwrap().parse().unwrap();
    let version = counter["kvs"][0]["version"].as_u64().unwrap();
    // Every change of the counter, from the watch history: each is the previous value + 1 (no
    // update lost, none applied twice), and every acknowledged one is among them exactly once.
    let history = ok(kv(
        &c,
        &[
            "--json",
            "watch",
            "counter",
            "--rev",
            &(start + 1).to_string(),
            "--count",
            &(version - 1).to_string(),
        ],
        "",
    ));
    let values: Vec<String> = history
        .stdout
        .lines()
        .map(|l| json(l)["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(values.len() as u64, total, "one change per increment");
    for (i, v) in values.iter().enumerate() {
        assert!(v.starts_with(&format!("{} ", i + 1)), "change {i} is {v:?}");
    }
    for a in &acked {
        assert_eq!(values.iter().filter(|v| *v == a).count(), 1, "{a}");
    }
    assert!(
        total >= 8 * PER_CLIENT && total <= 8 * PER_CLIENT + unknown,
        "{total}"
    );
    if unknown == 0 {
        assert_eq!(total, 8 * PER_CLIENT);
    }
}

/// The lines `out` prints, as they come.
fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    lines
}

/// A `kv watch` process: its JSON lines arrive on a channel; its stderr lines on another.
struct Watcher {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

fn watcher(c: &Cluster, args: &[&str]) -> Watcher {
    let mut child = Command::new(BIN)
        .args(["kv", "--cluster", &c.admin, "--json"])
        .args(args)
        .arg("--key-dir")
        .arg(c.keys.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let errors = lines_of(child.stderr.take().unwrap());
    Watcher {
        child,
        lines,
        errors,
    }
}

impl Watcher {
    /// The next stderr line that contains `what`.
    fn stderr_line(&self, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .errors
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the watcher never said {what:?}"));
            if line.contains(what) {
                return line;
            }
        }
    }
}

/// The node a `watch: following node N ...` line names.
fn following(line: &str) -> u64 {
    line.split("following node ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a following line: {line}"))
}

#[test]
fn watch_sees_another_clients_writes_in_order_and_resumes_without_a_gap() {
    let mut c = Cluster::start(3);
    c.leader();
    let first = json(&ok(kv(&c, &["--json", "put", "w/0", "0"], "")).stdout)["revision"]
        .as_u64()
        .unwrap();
    const WRITES: u64 = 30;
    // From the revision of the first write: it is replayed, then the live ones follow.
    let mut w = watcher(
        &c,
        &[
            "watch",
            "--prefix",
            "w/",
            "--rev",
            &first.to_string(),
            "--count",
            &WRITES.to_string(),
        ],
    );
    let node = following(&w.stderr_line("following node"));
    let mut revisions = vec![first];
    let mut write = |i: u64| {
        // Writes during the failover may time out with their outcome unknown: the same write
        // again is harmless (the watch then shows both), and what counts is what was applied.
        let out = cli_until(
            c.keys.path(),
            &[
                "kv",
                "--cluster",
                &c.admin,
                "--json",
                "put",
                &format!("w/{i}"),
                &i.to_string(),
            ],
            "a write",
            |o| o.code == 0,
        );
        revisions.push(json(&out.stdout)["revision"].as_u64().unwrap());
    };
    for i in 1..WRITES / 2 {
        write(i);
    }
    // Kill -9 the member the watch follows: it resumes on another from where it was.
    let at = c.procs.iter().position(|p| p.id == node).unwrap();
    c.procs[at].child.kill().unwrap();
    c.procs[at].child.wait().unwrap();
    let resumed = w.stderr_line("following node");
    assert_ne!(following(&resumed), node, "{resumed}");
    for i in WRITES / 2..WRITES {
        write(i);
    }
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < WRITES as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        match w.lines.recv_timeout(left) {
            Ok(line) => seen.push(json(&line)),
            Err(_) => panic!("the watch printed {} of {WRITES} changes", seen.len()),
        }
    }
    let status = w.child.wait().unwrap();
    assert!(status.success(), "the watch exited with {status}");
    // In order, none twice, none missing: the revisions are consecutive (only w/ keys were
    // written), and every acknowledged write is among them.
    let got: Vec<u64> = seen
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (first..first + WRITES).collect();
    assert_eq!(got, expected, "revisions seen by the watch");
    for r in &revisions {
        assert!(got.contains(r), "acknowledged revision {r} not seen");
    }
    assert_eq!(seen[0]["key"], "w/0");
    assert_eq!(seen[0]["type"], "put");
    assert_eq!(seen.last().unwrap()["key"], format!("w/{}", WRITES - 1));
    for (i, e) in seen.iter().enumerate() {
        assert_eq!(e["key"], format!("w/{i}"), "{e}");
    }
}

#[test]
fn member_verbs_endpoint_rows_watch_lines_and_bad_arguments() {
    let c = Cluster::start(3);
    let leader = c.leader();

    // ctl watch, cluster-wide from the start: it finds the member added below by itself (it
    // looks for new members every 5 s, and for one it gave up on too).
    let mut watch = Command::new(BIN)
        .args([
            "ctl",
            "--cluster",
            &c.admin,
            "--json",
            // Each resubscription may take this long: a member that moved is given up on
            // (five tries) and found again sooner.
            "--timeout",
            "3s",
            "watch",
            "--cluster-wide",
        ])
        .arg("--key-dir")
        .arg(c.keys.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(watch.stdout.take().unwrap());

    // A fourth node, registered first as a learner (etcdctl member add --learner), then started.
    let dir = tempfile::tempdir().unwrap();
    let keygen = Command::new(BIN)
        .args(["keygen", "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let key = String::from_utf8(keygen.stdout).unwrap().trim().to_owned();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let added = json(
        &ok(ctl(
            &c,
            &[
                "--json",
                "member",
                "add",
                "4",
                "--key",
                &key,
                "--addr",
                &addr,
                "--learner",
            ],
        ))
        .stdout,
    );
    assert_eq!(added["action"], "add");
    let join = crate::support::read_line(&c.dirs[0].path().join("ticket"));
    let mut fourth = spawn(dir.path(), &["--bind", &addr, "--join", &join, "--learner"]);
    assert_eq!(fourth.id, 4);
    let list = json(&ok(ctl(&c, &["--json", "member", "list"])).stdout);
    let role = |list: &Value, id: u64| {
        list["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["role"].as_str().unwrap().to_owned())
    };
    assert_eq!(role(&list, 4).as_deref(), Some("learner"));
    ok(ctl(&c, &["member", "promote", "4"]));
    let list = json(&ok(ctl(&c, &["--json", "member", "list"])).stdout);
    assert_eq!(role(&list, 4).as_deref(), Some("voter"));

    // Move it: stop it, restart it on another port, tell the cluster.
    send_sigterm(&fourth);
    wait_exit(&mut fourth);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let moved = format!("127.0.0.1:{port}");
    ok(ctl(
        &c,
        &["member", "update-address", "4", "--addr", &moved],
    ));
    let mut fourth = spawn(dir.path(), &["--bind", &moved]);
    let list = json(&ok(ctl(&c, &["--json", "member", "list"])).stdout);
    let m4 = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == 4)
        .unwrap()
        .clone();
    assert_eq!(m4["addrs"][0], moved.as_str());
    // It catches up at its new address: a write is applied there too.
    ok(kv(&c, &["put", "after-move", "1"], ""));
    let commit = json(&ok(ctl(&c, &["--json", "status"])).stdout)["commit_index"]
        .as_u64()
        .unwrap();
    cli_until(
        c.keys.path(),
        &[
            "ctl",
            "--cluster",
            &c.admin,
            "--json",
            "--endpoint",
            "4",
            "endpoint",
            "status",
        ],
        "node 4 to apply the write at its new address",
        |o| {
            o.code == 0 && {
                let v = json(&o.stdout);
                let row = &v["endpoints"][0];
                row["id"] == 4 && row["applied_index"].as_u64() >= Some(commit)
            }
        },
    );
    // Moved again without telling anyone: the node announces its new address itself (what a
    // recreated pod with a new IP needs).
    send_sigterm(&fourth);
    wait_exit(&mut fourth);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let again = format!("127.0.0.1:{port}");
    fourth = spawn(dir.path(), &["--bind", &again]);
    cli_until(
        c.keys.path(),
        &["ctl", "--cluster", &c.admin, "--json", "member", "list"],
        "node 4's own announcement of its new address",
        |o| {
            o.code == 0
                && json(&o.stdout)["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["id"] == 4 && m["addrs"][0] == again.as_str())
        },
    );
    ok(kv(&c, &["put", "after-second-move", "1"], ""));
    let commit = json(&ok(ctl(&c, &["--json", "status"])).stdout)["commit_index"]
        .as_u64()
        .unwrap();
    cli_until(
        c.keys.path(),
        &[
            "ctl",
            "--cluster",
            &c.admin,
            "--json",
            "--endpoint",
            "4",
            "endpoint",
            "status",
        ],
        "node 4 to apply a write at its second address",
        |o| {
            o.code == 0 && json(&o.stdout)["endpoints"][0]["applied_index"].as_u64() >= Some(commit)
        },
    );

    // Endpoint rows: one per member, each answered by the member itself.
    let rows = json(&ok(ctl(&c, &["--json", "endpoint", "status"])).stdout);
    let rows = rows["endpoints"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert!(r["error"].is_null(), "{r}");
        assert!(r["version"].as_str().is_some_and(|v| !v.is_empty()), "{r}");
        assert!(r["db_size_bytes"].as_u64() > Some(0), "{r}");
    }
    let human = ok(ctl(&c, &["endpoint", "status"])).stdout;
    assert!(
        human.lines().next().unwrap().starts_with("  ID  ADDRESS"),
        "{human}"
    );
    assert_eq!(
        human.lines().filter(|l| l.contains("127.0.0.1")).count(),
        4,
        "{human}"
    );
    let health = json(&ok(ctl(&c, &["--json", "endpoint", "health"])).stdout);
    assert_eq!(health["members"].as_array().unwrap().len(), 4);
    // --endpoint aims a command at one member.
    let status = json(&ok(ctl(&c, &["--json", "--endpoint", "4", "status"])).stdout);
    assert_eq!(status["node"], 4);
    let bad = ctl(&c, &["--endpoint", "9", "status"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);

    // A leadership change is seen by every member: each one's stream reports it.
    let to = [1u64, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    // Until the merged stream is open on every member, the change may be missed: repeat it.
    // What came before is dropped: node 4 counts only if watched at its new address.
    while lines.try_recv().is_ok() {}
    let mut nodes = std::collections::BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    let mut target = to;
    while nodes.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "leader-elected seen from {nodes:?} only"
        );
        let _ = ctl(&c, &["transfer-leader", &target.to_string()]);
        target = if target == to { leader } else { to };
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
            let v = json(&line);
            assert!(
                v["time"].is_string() && v["node"].is_u64() && v["kind"].is_string(),
                "{v}"
            );
            if v["kind"] == "leader_elected" {
                nodes.insert(v["node"].as_u64().unwrap());
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();

    // Bad arguments: exit 2 with a usage line.
    for args in [
        &["kv", "--cluster", &c.admin, "cas", "k", "--new", "v"][..],
        &["kv", "--cluster", &c.admin, "get"][..],
        &[
            "ctl",
            "--cluster",
            &c.admin,
            "member",
            "add",
            "5",
            "--addr",
            "127.0.0.1:1",
            "--learner",
        ][..],
        &[
            "ctl",
            "--cluster",
            &c.admin,
            "member",
            "add",
            "5",
            "--key",
            "zz",
            "--addr",
            "127.0.0.1:1",
            "--voter",
        ][..],
        &["ctl", "--cluster", &c.admin, "endpoint", "sideways"][..],
    ] {
        let out = cli_in(c.keys.path(), args, b"");
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("Usage:"), "{args:?}: {}", out.stderr);
    }

    // Human `ctl watch` (the member the CLI talks to): time, node, kind, fields.
    let mut watch = Command::new(BIN)
        .args(["ctl", "--cluster", &c.admin, "--endpoint", "4", "watch"])
        .arg("--key-dir")
        .arg(c.keys.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(watch.stdout.take().unwrap());
    let deadline = Instant::now() + WAIT;
    let line = 'found: loop {
        assert!(
            Instant::now() < deadline,
            "no leader-elected line from node 4"
        );
        let leader = c.leader();
        let to = [1u64, 2, 3].into_iter().find(|&id| id != leader).unwrap();
        let _ = ctl(&c, &["transfer-leader", &to.to_string()]);
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
            if line.contains("leader-elected") {
                break 'found line;
            }
        }
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 6, "{line}");
    assert!(
        fields[0].len() == 12 && fields[0].as_bytes()[8] == b'.',
        "{line}"
    );
    assert_eq!(
        (fields[1], fields[2], fields[3]),
        ("node", "4", "leader-elected"),
        "{line}"
    );
    assert!(
        fields[4].starts_with("leader=") && fields[5].starts_with("term="),
        "{line}"
    );
    let _ = watch.kill();
    let _ = watch.wait();

    // Shell completions and man pages come from the same definitions.
    let bash = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(bash.status.success());
    let bash = String::from_utf8_lossy(&bash.stdout);
    assert!(
        bash.contains("iroh-raft") && bash.contains("update-address"),
        "bash completions"
    );
    let tcsh = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(tcsh.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&tcsh.stderr).contains("Usage:"));
    let man = Command::new(BIN).arg("man").output().unwrap();
    assert!(man.status.success());
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH iroh-raft 1"));

    // member remove: the node learns it and exits with status 0.
    let removed = json(&ok(ctl(&c, &["--json", "member", "remove", "4"])).stdout);
    assert_eq!(removed["action"], "remove");
    wait_exit(&mut fourth);
    let list = json(&ok(ctl(&c, &["--json", "member", "list"])).stdout);
    assert_eq!(role(&list, 4), None);
}
