//! Measures and prints what an operator waits for; nothing here passes or fails on a figure.
//! `cargo test --release -p iroh-raft --test processes -- --ignored --nocapture timings`
//!
//! - kill -9 of the leader of five nodes → the first `kv put` that succeeds (puts run back to
//!   back, each a new CLI process with the default timeout), and → the first "became leader"
//!   line in the nodes' logs: medians of several trials;
//! - `ctl status` with two dead members at the head of the ticket;
//! - how long a CLI process takes to exit after it printed its answer.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use iroh_raft::{Ticket, TicketRole};

use crate::support::{BIN, Cluster, cli, ticket_from};

const TRIALS: usize = 15;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Runs the CLI; returns (exit code, time to the end of its output, time to its exit).
fn timed(key_dir: &std::path::Path, args: &[&str]) -> (i32, Duration, Duration) {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--key-dir")
        .arg(key_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 4096];
    let mut printed = start.elapsed();
    while let Ok(n) = stdout.read(&mut buf) {
        if n == 0 {
            break;
        }
        printed = start.elapsed();
    }
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), printed, start.elapsed())
}

/// Seconds of the day (UTC) of a log line's leading RFC 3339 timestamp.
fn second_of_day(line: &str) -> Option<f64> {
    let time = line.get(11..26)?; // "HH:MM:SS.ffffff" after "YYYY-MM-DDT"
    let h: f64 = time.get(0..2)?.parse().ok()?;
    let m: f64 = time.get(3..5)?.parse().ok()?;
    let s: f64 = time.get(6..)?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// How long after `since` the first node logged that it became leader (waits for it).
fn elected_after(c: &Cluster, since: SystemTime) -> Duration {
    let day = since.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() % 86_400.0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let first = (0..c.dirs.len())
            .filter_map(|i| std::fs::read_to_string(c.log(i).unwrap()).ok())
            .flat_map(|log| {
                log.lines()
                    .filter(|l| l.contains("role changed") && l.contains("role=Leader"))
                    .filter_map(second_of_day)
                    .collect::<Vec<_>>()
            })
            .map(|at| (at - day + 129_600.0) % 86_400.0 - 43_200.0) // wrapped to ±12 h
            .filter(|&after| after >= 0.0)
            .fold(None, |min: Option<f64>, x| {
                Some(min.map_or(x, |m| m.min(x)))
            });
        if let Some(after) = first {
            return Duration::from_secs_f64(after);
        }
        assert!(
            Instant::now() < deadline,
            "no node logged that it became leader"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "measures and prints timings"]
fn timings() {
    // The preset operators run (`TIMINGS_PRESET=testing` for the test timings).
    let preset = std::env::var("TIMINGS_PRESET").unwrap_or_else(|_| "production".into());
    let mut c = Cluster::start_logged(5, &preset);
    let (keys, admin) = (c.keys.path().to_owned(), c.admin.clone());
    let (mut to_put, mut to_leader, mut failed_puts) = (Vec::new(), Vec::new(), Vec::new());
    let mut after_leader = Vec::new();
    for trial in 0..TRIALS {
        let leader = c.leader();
        let at = c.procs.iter().position(|p| p.id == leader).unwrap();
        let killed = SystemTime::now();
        c.procs[at].child.kill().unwrap();
        let t0 = Instant::now();
        c.procs[at].child.wait().unwrap();
        let mut failures = 0;
        let put = loop {
            let key = format!("t{trial}");
            let (code, _, _) = cli(&keys, &["kv", "--cluster", &admin, "put", &key, "v"]);
            if code == 0 {
                break t0.elapsed();
            }
            failures += 1;
        };
        let elected = elected_after(&c, killed);
        eprintln!(
            "trial {trial}: put ok after {put:?}, new leader elected after {elected:?}, {failures} failed puts"
        );
        to_put.push(put);
        to_leader.push(elected);
        after_leader.push(put.saturating_sub(elected));
        failed_puts.push(failures);
        c.procs[at] = c.respawn(at, &preset);
    }
    eprintln!(
        "preset {preset}: kill -9 of the leader → first successful kv put: median {:?}; → a new leader (its log line): median {:?}; put after the new leader: median {:?} ({TRIALS} trials; failed puts per trial {failed_puts:?})",
        median(to_put),
        median(to_leader),
        median(after_leader)
    );

    // Two dead members at the head of the ticket (kill -9, not the leader).
    let leader = c.leader();
    let like: Ticket = admin.parse().unwrap();
    let mut dead = Vec::new();
    for p in c.procs.iter_mut().filter(|p| p.id != leader).take(2) {
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        dead.push(p.id);
    }
    let key_of = |id: u64| {
        let at = c.procs.iter().position(|p| p.id == id).unwrap();
        iroh_raft::net::load_or_create_secret_key(c.dirs[at].path())
            .unwrap()
            .public()
    };
    let dead_keys: Vec<_> = dead.iter().map(|&id| key_of(id)).collect();
    let (mut first, mut rest): (Vec<_>, Vec<_>) = like
        .members
        .iter()
        .cloned()
        .partition(|m| dead_keys.contains(&m.id));
    first.append(&mut rest);
    let at = c.procs.iter().position(|p| p.id == leader).unwrap();
    let ticket = ticket_from(c.dirs[at].path(), &like, first, TicketRole::Admin, 3600);
    let (mut status, mut exit) = (Vec::new(), Vec::new());
    for _ in 0..TRIALS {
        let (code, printed, exited) = timed(&keys, &["ctl", "--cluster", &ticket, "status"]);
        assert_eq!(code, 0);
        status.push(exited);
        exit.push(exited - printed);
    }
    eprintln!(
        "ctl status with two dead members ({dead:?}) at the head of the ticket: median {:?}; exit after printing: median {:?} ({TRIALS} runs)",
        median(status),
        median(exit)
    );
}
