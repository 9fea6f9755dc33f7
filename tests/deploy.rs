//! Offline checks of the deployment files in `docs/deploy`:
//!
//! - the systemd unit passes `systemd-analyze verify` and `systemd-analyze security`, and its
//!   command line runs the node from a data dir founded as the unit's comments say;
//! - the Kubernetes manifests validate against the API schemas (`kubernetes-validate --strict`),
//!   wire the probes, the preStop hook and the Secret as intended, and their entrypoint script
//!   and preStop hook do what they claim when run against the built binary.
//!
//! The tools come from `bash .ci/deps`; a missing one fails the test (never a skip). Every wait
//! is on a condition (a line printed, a process exited, an HTTP answer) with a deadline.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_iroh-raft");
const WAIT: Duration = Duration::from_secs(60);
/// The schemas the manifests are checked against: the oldest Kubernetes release they target and
/// the newest that `kubernetes-validate` (as pinned in `.ci/deps`) bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy")
}

fn unit_text() -> String {
    std::fs::read_to_string(deploy_dir().join("iroh-raft.service")).expect("read the unit")
}

/// Runs a checking tool; a tool that is not installed fails the test with what to do.
fn tool(program: &str, args: &[&str]) -> Output {
    match Command::new(program).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is not installed: run `bash .ci/deps`")
        }
        Err(e) => panic!("running {program}: {e}"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The unit's `ExecStart=` command line.
fn exec_start(unit: &str) -> &str {
    let mut lines = unit.lines().filter_map(|l| l.strip_prefix("ExecStart="));
    let line = lines.next().expect("the unit has an ExecStart= line");
    assert!(lines.next().is_none(), "the unit has one ExecStart= line");
    line
}

/// The unit with its binary path replaced by the built binary (verify checks that it exists).
fn unit_with_built_binary() -> String {
    let unit = unit_text();
    let binary = exec_start(&unit)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        binary, "/usr/local/bin/iroh-raft",
        "ExecStart= runs the binary"
    );
    unit.replacen(
        &format!("ExecStart={binary} "),
        &format!("ExecStart={BIN} "),
        1,
    )
}

/// `systemd-analyze verify` on `unit` saved as iroh-raft.service: its status and the lines it
/// printed about that file. In a container it may also print about the host's own units or a
/// missing bus: only lines naming our file count.
fn verify(unit: &str) -> (Output, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iroh-raft.service");
    std::fs::write(&path, unit).unwrap();
    let out = tool("systemd-analyze", &["verify", path.to_str().unwrap()]);
    let ours = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .filter(|l| l.contains("iroh-raft.service"))
        .map(str::to_owned)
        .collect();
    (out, ours)
}

#[test]
fn systemd_unit_verifies() {
    let unit = unit_with_built_binary();
    let (out, ours) = verify(&unit);
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify reports on the unit: {ours:?}\n{}",
        text(&out)
    );

    // The filter sees what verify says about the unit: an unknown key is reported (as a
    // warning: verify still exits 0).
    let broken = unit.replacen("[Service]\n", "[Service]\nNoSuchSetting=yes\n", 1);
    let (out, ours) = verify(&broken);
    assert!(
        ours.iter().any(|l| l.contains("NoSuchSetting")),
        "a broken unit went unnoticed: {ours:?}\n{}",
        text(&out)
    );
}

#[test]
fn systemd_unit_is_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iroh-raft.service");
    std::fs::write(&path, unit_with_built_binary()).unwrap();
    // Exposure in tenths, 0 (locked down) to 100: at most 1.5 (systemd 252 scores the unit 1.1).
    let out = tool(
        "systemd-analyze",
        &[
            "security",
            "--offline=true",
            "--threshold=15",
            "--no-pager",
            path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "exposure above 1.5:\n{}", text(&out));
}

/// A running node process; killed when dropped.
struct Node {
    child: Child,
    /// Its `ready node=N endpoint=E addr=A metrics=M` line, split into key=value pairs.
    ready: Vec<(String, String)>,
}

impl Node {
    fn get(&self, key: &str) -> &str {
        self.ready
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key}= on the ready line: {:?}", self.ready))
    }

    fn metrics(&self) -> SocketAddr {
        self.get("metrics").parse().unwrap()
    }

    /// SIGTERM, then the exit status, which must be 0 (what `Restart=on-failure` and the
    /// StatefulSet rely on).
    fn stop(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "SIGTERM to the node failed");
        let status = wait_exit(&mut self.child);
        assert!(
            status.success(),
            "the node exited with {status} after SIGTERM"
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `command` to its end (within [`WAIT`]): its status and output.
fn finish(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the command");
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let status = wait_exit(&mut child);
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Starts `command` (stdout piped) and waits for its `ready` line; panics with its stderr if it
/// exits first.
fn start(mut command: Command) -> Node {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the node");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ready ") {
                let _ = tx.send(Some(rest.to_owned()));
            }
        }
        let _ = tx.send(None);
    });
    // Stderr is drained (a full pipe would block the node) and kept for a failure message.
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        let _ = etx.send(all);
    });
    match rx.recv_timeout(WAIT) {
        Ok(Some(rest)) => {
            let ready = rest
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            Node { child, ready }
        }
        outcome => {
            let _ = child.kill();
            let status = child.wait().unwrap();
            let stderr = erx.recv_timeout(WAIT).unwrap_or_default();
            panic!("the node did not print its ready line ({outcome:?}, {status}):\n{stderr}");
        }
    }
}

/// `GET path` on `addr`: the status code.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until `GET path` answers 200.
fn wait_ok(addr: SocketAddr, path: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = http_status(addr, path);
        if status == Some(200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} on {addr} did not answer 200 (last: {status:?})"
        );
        // A node that answers 503 at once is not asked back to back for a minute.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines `KEY=VALUE` of a file the node wrote, as (key, value) pairs.
fn conf(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The documented systemd flow: found the node once by hand, then the unit's own command line
/// restarts it from the data dir (on the address in node.conf), serves /readyz, and exits 0 on
/// SIGTERM.
#[test]
fn systemd_unit_command_line_runs_the_node() {
    let unit = unit_text();
    let line = exec_start(&unit);
    assert!(
        !line.contains(['"', '\'', '$', '%']),
        "split by whitespace below: {line}"
    );
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("iroh-raft");
    let local = |arg: &str| -> String {
        match arg {
            "/var/lib/iroh-raft" => data.to_str().unwrap().to_owned(),
            // The port the unit names may be taken on this machine.
            "127.0.0.1:9464" => "127.0.0.1:0".to_owned(),
            a => a.to_owned(),
        }
    };
    let unit_args: Vec<String> = args.iter().map(|a| local(a)).collect();
    assert!(
        unit_args.contains(&data.to_str().unwrap().to_owned()),
        "the unit runs the node on /var/lib/iroh-raft: {line}"
    );

    // Before the node is founded, the unit's command refuses to start (a failure: restarted,
    // then the start limit), saying what to do.
    let mut refused = Command::new(BIN);
    refused.args(&unit_args);
    let out = finish(refused);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("holds no node"),
        "{}",
        text(&out)
    );

    // Founded by hand, as the unit's comments say; stopped once ready.
    let mut found = Command::new(BIN);
    found
        .args(["node", "--data-dir"])
        .arg(&data)
        .args(["--bootstrap", "--bind", "127.0.0.1:0"]);
    let founder = start(found);
    let bound = founder.get("addr").to_owned();
    founder.stop();
    assert!(data.join("ticket").exists() && data.join("admin-ticket").exists());

    let mut command = Command::new(BIN);
    command.args(&unit_args);
    let node = start(command);
    assert_eq!(node.get("node"), "1");
    assert_eq!(node.get("addr"), bound, "the node came back on its address");
    let conf = conf(&data.join("node.conf"));
    assert!(conf.contains(&("bind".into(), bound.clone())), "{conf:?}");
    assert!(conf.contains(&("node".into(), "1".into())), "{conf:?}");
    wait_ok(node.metrics(), "/readyz");
    assert_eq!(http_status(node.metrics(), "/livez"), Some(200));
    node.stop();
}

/// The YAML files under docs/deploy/kubernetes.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in docs/deploy/kubernetes");
    files
}

/// `kubernetes-validate --strict` on `file`: the status and the names of the resources that
/// passed.
fn validate(file: &Path, version: &str) -> (Output, Vec<String>) {
    let out = tool(
        "kubernetes-validate",
        &["--strict", "-k", version, file.to_str().unwrap()],
    );
    let passed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .filter_map(|l| l.split_once(" passed for resource ").map(|(_, r)| r))
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    (out, passed)
}

/// The documents of a YAML file as JSON (PyYAML, which `kubernetes-validate` brings along),
/// empty documents left out.
fn documents(file: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
                  print(json.dumps(docs))";
    let out = tool("python3", &["-c", script, file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "parsing {} (PyYAML comes with `bash .ci/deps`):\n{}",
        file.display(),
        text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn kubernetes_manifests_validate() {
    for file in manifests() {
        let kinds: Vec<String> = documents(&file)
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or("?").to_lowercase())
            .collect();
        for version in KUBERNETES_VERSIONS {
            let (out, passed) = validate(&file, version);
            assert!(
                out.status.success(),
                "{} against Kubernetes {version}:\n{}",
                file.display(),
                text(&out)
            );
            // Every document was checked (a file it could not read would pass with none).
            let passed_kinds: Vec<&str> = passed
                .iter()
                .map(|r| r.split('/').next().unwrap())
                .collect();
            assert_eq!(passed_kinds, kinds, "{}:\n{}", file.display(), text(&out));
        }
    }

    // The check catches a wrong field type and an unknown field (--strict).
    let dir = tempfile::tempdir().unwrap();
    let statefulset = std::fs::read_to_string(deploy_dir().join("kubernetes/statefulset.yaml"))
        .expect("read statefulset.yaml");
    for (what, from, to) in [
        ("a string replica count", "replicas: 3", "replicas: \"3\""),
        (
            "an unknown field",
            "podManagementPolicy: OrderedReady",
            "podManagementPolicy: OrderedReady\n  noSuchField: 1",
        ),
    ] {
        assert!(statefulset.contains(from));
        let path = dir.path().join("broken.yaml");
        std::fs::write(&path, statefulset.replacen(from, to, 1)).unwrap();
        let (out, _) = validate(&path, KUBERNETES_VERSIONS[0]);
        assert!(
            !out.status.success(),
            "{what} went unnoticed:\n{}",
            text(&out)
        );
    }
}

/// The resources of every manifest, by kind (one of each kind expected).
fn resource(kind: &str) -> Value {
    let mut found: Vec<Value> = manifests()
        .iter()
        .flat_map(|f| documents(f))
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in the manifests");
    found.remove(0)
}

/// The container's port named `name`, or a number.
fn port_number(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port {port}"))
}

fn text_of(command: &Value) -> String {
    command
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn kubernetes_manifests_wire_probes_and_hooks() {
    let service = resource("Service");
    let set = resource("StatefulSet");
    let budget = resource("PodDisruptionBudget");
    let labels = &set["spec"]["template"]["metadata"]["labels"];

    // A headless Service with the Raft port (UDP) and the metrics port (TCP).
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(set["spec"]["serviceName"], service["metadata"]["name"]);
    let ports: Vec<(u64, &str)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_u64().unwrap(), p["protocol"].as_str().unwrap()))
        .collect();
    assert!(
        ports.contains(&(7000, "UDP")) && ports.contains(&(9464, "TCP")),
        "{ports:?}"
    );
    for selector in [
        &service["spec"]["selector"],
        &set["spec"]["selector"]["matchLabels"],
        &budget["spec"]["selector"]["matchLabels"],
    ] {
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&labels[k], v, "selector {selector} matches the pods");
        }
    }

    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    let spec = &set["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["podManagementPolicy"], "OrderedReady");
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
    let pod = &spec["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!((20..=60).contains(&grace), "grace period {grace}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");

    // Probes on the metrics port the node serves: readiness /readyz, liveness /livez.
    let entrypoint = c["args"][0].as_str().unwrap();
    assert!(
        entrypoint.contains("--metrics-addr 0.0.0.0:9464"),
        "{entrypoint}"
    );
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
        ("startupProbe", "/livez"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_number(c, &get["port"]), 9464, "{probe}");
    }
    // Liveness gives a node catching up time: started only after the startup probe passed
    // (up to failureThreshold × periodSeconds), then a minute of failures before a restart.
    let startup = &c["startupProbe"];
    let allowed =
        startup["failureThreshold"].as_u64().unwrap() * startup["periodSeconds"].as_u64().unwrap();
    assert!(allowed >= 120, "startup allows {allowed} s");
    let live = &c["livenessProbe"];
    let allowed =
        live["failureThreshold"].as_u64().unwrap() * live["periodSeconds"].as_u64().unwrap();
    assert!(allowed >= 30, "liveness allows {allowed} s");

    // preStop hands leadership away from this node.
    let hook = text_of(&c["lifecycle"]["preStop"]["exec"]["command"]);
    assert!(hook.contains("transfer-leader --away-from"), "{hook}");
    assert!(hook.contains("/etc/iroh-raft/admin-ticket") && hook.contains("/data/node.conf"));

    // /data on the claim template; the tickets Secret, optional, at /etc/iroh-raft.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| -> String {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .and_then(|m| m["name"].as_str())
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
            .to_owned()
    };
    assert_eq!(
        spec["volumeClaimTemplates"][0]["metadata"]["name"],
        mount("/data").as_str()
    );
    let tickets = mount("/etc/iroh-raft");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == tickets.as_str())
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "iroh-raft-tickets");
    assert_eq!(volume["secret"]["optional"], true);
    // The CLI's key goes to the writable /tmp (an emptyDir), never to the node's data dir.
    let cli_dir = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "IROH_RAFT_CLI_DIR")
        .and_then(|e| e["value"].as_str())
        .expect("IROH_RAFT_CLI_DIR is set");
    assert!(cli_dir.starts_with("/tmp/"), "{cli_dir}");
    let tmp = mount("/tmp");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == tmp.as_str())
        .unwrap();
    assert!(volume["emptyDir"].is_object(), "{volume}");
}

/// A free UDP port on `ip` (the node binds it right after; nothing else here takes ports).
fn free_udp_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A pod of the StatefulSet, simulated: its name (for the ordinal), its IP (a loopback
/// address), its data dir.
struct Pod {
    name: String,
    ip: String,
    data: PathBuf,
}

/// The manifest's entrypoint and preStop hook, run by `sh` against the built binary with /data,
/// /etc/iroh-raft and the ports rewritten to a temp dir and free ports on loopback addresses.
#[test]
fn kubernetes_entrypoint_founds_joins_and_restarts() {
    let set = resource("StatefulSet");
    let c = &set["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(text_of(&c["command"]), "/bin/sh -c");
    let entrypoint = c["args"][0].as_str().unwrap().to_owned();
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"].clone();
    let pre_stop: Vec<String> = pre_stop
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(pre_stop[..2], ["/bin/sh", "-c"]);
    let pre_stop = pre_stop[2].clone();

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let cli_dir = dir.path().join("cli");
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let pods: Vec<Pod> = (0..2)
        .map(|i| Pod {
            name: format!("iroh-raft-{i}"),
            ip: format!("127.0.0.{}", i + 1),
            data: dir.path().join(format!("data-{i}")),
        })
        .collect();
    for pod in &pods {
        std::fs::create_dir(&pod.data).unwrap();
    }
    let ports: Vec<u16> = pods.iter().map(|p| free_udp_port(&p.ip)).collect();
    // The scripts name these fixed paths and ports (nothing here may touch the real ones).
    for fixed in ["/data", "/etc/iroh-raft", ":7000", "0.0.0.0:9464"] {
        assert!(entrypoint.contains(fixed), "{fixed} in the entrypoint");
    }
    for fixed in ["/data", "/etc/iroh-raft"] {
        assert!(pre_stop.contains(fixed), "{fixed} in the preStop hook");
    }
    // The manifest's paths and ports, for pod `i`.
    let localise = |script: &str, i: usize| -> String {
        script
            .replace("/etc/iroh-raft", secret.to_str().unwrap())
            .replace("/data", pods[i].data.to_str().unwrap())
            .replace(":7000", &format!(":{}", ports[i]))
            .replace("0.0.0.0:9464", &format!("{}:0", pods[i].ip))
    };
    let sh = |script: String, i: usize| -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .env("PATH", &path)
            .env("POD_NAME", &pods[i].name)
            .env("POD_IP", &pods[i].ip)
            .env("IROH_RAFT_CLI_DIR", &cli_dir)
            .stdin(Stdio::null());
        command
    };
    let entry = |i: usize| sh(localise(&entrypoint, i), i);
    let hook = |i: usize| -> Output { finish(sh(localise(&pre_stop, i), i)) };

    // iroh-raft-0, no node and no ticket: founds the cluster on its pod IP (not 0.0.0.0).
    let pod0 = start(entry(0));
    assert_eq!(pod0.get("node"), "1");
    assert_eq!(pod0.get("addr"), format!("127.0.0.1:{}", ports[0]));
    wait_ok(pod0.metrics(), "/readyz");

    // iroh-raft-1 before the Secret exists: refuses, saying what is missing.
    let out = finish(entry(1));
    assert!(
        out.status.code() == Some(1)
            && String::from_utf8_lossy(&out.stderr).contains("iroh-raft-tickets"),
        "{}",
        text(&out)
    );
    assert!(!pods[1].data.join("raft.redb").exists());

    // The operator creates the Secret from pod 0's tickets; iroh-raft-1 joins.
    std::fs::copy(pods[0].data.join("ticket"), secret.join("join-ticket")).unwrap();
    std::fs::copy(
        pods[0].data.join("admin-ticket"),
        secret.join("admin-ticket"),
    )
    .unwrap();
    let pod1 = start(entry(1));
    assert_eq!(pod1.get("node"), "2");
    assert_eq!(pod1.get("addr"), format!("127.0.0.2:{}", ports[1]));
    wait_ok(pod1.metrics(), "/readyz");

    // preStop on the leader (pod 0) hands leadership to pod 1; on a follower it does nothing.
    let out = hook(0);
    assert!(
        out.status.success(),
        "preStop on the leader:\n{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("node 2 leads"),
        "{}",
        text(&out)
    );
    let out = hook(0);
    assert!(
        out.status.success(),
        "preStop on a follower:\n{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to do"),
        "{}",
        text(&out)
    );

    // Pod 0 restarts from its data dir (the join ticket mounted now must not matter).
    pod0.stop();
    let pod0 = start(entry(0));
    assert_eq!(pod0.get("node"), "1");
    wait_ok(pod0.metrics(), "/readyz");
    pod0.stop();
    pod1.stop();
}
