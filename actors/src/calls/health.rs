//! Liveness and readiness, with etcd's meanings: *live* means the process should not be
//! restarted (its actors answer, no storage write is stuck); *ready* means it can take traffic
//! (a leader is known, it has applied close to what is committed, a linearizable read
//! completes). Each check answers on its own, so a probe can ask for one by name.

use std::time::Duration;

use serde::Serialize;

use super::NodeCalls;
use crate::{error::ReadError, facts::Liveness, state_machine::StateMachine};

/// A storage write running longer than this makes the node not live (etcd's bound is the
/// same order: a disk that stalls this long will not come back by itself).
pub const STUCK_WRITE: Duration = Duration::from_secs(10);
/// A RaftActor whose loop has not run for this long is not live (it runs every tick; a
/// handler that blocks it this long, such as installing a huge snapshot, is a stall).
pub const RAFT_STALL: Duration = Duration::from_secs(30);
/// How long a check may wait for the RaftActor or a ReadIndex round.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// A node is ready while its applied index is at most this many entries behind its commit
/// index (which follows the leader's within a heartbeat).
pub const READY_MAX_LAG: u64 = 1_000;

/// The liveness checks, by name.
pub const LIVEZ_CHECKS: &[&str] = &["running", "raft_actor", "storage"];
/// The readiness checks, by name.
pub const READYZ_CHECKS: &[&str] = &["running", "leader", "applied", "linearizable_read"];

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// Its name (`leader`, `storage`, …).
    pub name: &'static str,
    /// `None` when it passed, or why it failed.
    pub failure: Option<String>,
}

/// The outcome of a set of checks (`livez` or `readyz`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// Which set: `livez` or `readyz`.
    pub kind: &'static str,
    /// Every check run, in order.
    pub checks: Vec<HealthCheck>,
}

impl HealthReport {
    /// True when every check passed.
    pub fn is_ok(&self) -> bool {
        self.checks.iter().all(|c| c.failure.is_none())
    }

    /// The failed checks' reasons, `; `-separated (empty when all passed).
    pub fn reason(&self) -> String {
        let failed = self.checks.iter().filter_map(|c| {
            c.failure
                .as_ref()
                .map(|why| format!("{} check failed: {why}", c.name))
        });
        failed.collect::<Vec<_>>().join("; ")
    }

    /// etcd's verbose text: a `[+]name ok` or `[-]name failed: reason` line per check, then
    /// `livez check passed` / `readyz check failed`.
    pub fn verbose(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            match &c.failure {
                None => out.push_str(&format!("[+]{} ok\n", c.name)),
                Some(why) => out.push_str(&format!("[-]{} failed: {why}\n", c.name)),
            }
        }
        let verdict = if self.is_ok() { "passed" } else { "failed" };
        out.push_str(&format!("{} check {verdict}\n", self.kind));
        out
    }
}

/// A node's health: both reports and the figures they were judged on (what `/health` answers
/// as JSON, and the facade's `RaftCluster::get_health_status` returns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthStatus {
    /// This node.
    pub node_id: u64,
    /// Live and ready.
    pub healthy: bool,
    /// The failed checks' reasons (empty when healthy).
    pub reason: String,
    /// The liveness checks.
    pub live: HealthReport,
    /// The readiness checks.
    pub ready: HealthReport,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// This node's term, commit and applied index (`None` when its RaftActor did not answer).
    pub term: Option<u64>,
    /// The commit index.
    pub commit_index: Option<u64>,
    /// The applied index.
    pub applied_index: Option<u64>,
}

impl<S: StateMachine> NodeCalls<S> {
    /// Runs the liveness checks (`None`: all of them; otherwise the one named). Instant: it
    /// reads what the actors record, and asks none of them.
    pub async fn livez(&self, only: Option<&str>) -> HealthReport {
        let checks = select(LIVEZ_CHECKS, only).into_iter().map(|name| {
            let failure = match name {
                "running" => self.running_failure(),
                "raft_actor" => match self.metrics().raft_silent_for() {
                    Some(t) if t > RAFT_STALL => {
                        Some(format!("the RaftActor has not run for {t:?}"))
                    }
                    None => Some("the RaftActor has not started".into()),
                    _ => None,
                },
                "storage" => match self.metrics().write_running_for() {
                    Some(t) if t > STUCK_WRITE => {
                        Some(format!("a storage write has been running for {t:?}"))
                    }
                    _ => None,
                },
                _ => Some(unknown(only.unwrap_or(name))),
            };
            HealthCheck { name, failure }
        });
        HealthReport {
            kind: "livez",
            checks: checks.collect(),
        }
    }

    /// Runs the readiness checks (`None`: all of them; otherwise the one named), at the same
    /// time, each within [`CHECK_TIMEOUT`].
    pub async fn readyz(&self, only: Option<&str>) -> HealthReport {
        let checks = select(READYZ_CHECKS, only)
            .into_iter()
            .map(|name| async move {
                let failure = match name {
                    "running" => self.running_failure(),
                    "leader" => self
                        .leader()
                        .is_none()
                        .then(|| "no leader is known".to_string()),
                    "applied" => match tokio::time::timeout(CHECK_TIMEOUT, self.status()).await {
                        Ok(Ok(s)) => {
                            let lag = s.commit_index.saturating_sub(s.applied_index);
                            (lag > READY_MAX_LAG).then(|| {
                                let applied = s.applied_index;
                                format!("applied index {applied} is {lag} behind the commit index")
                            })
                        }
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some(format!("no status in {CHECK_TIMEOUT:?}")),
                    },
                    "linearizable_read" => {
                        let read = self.linearizable_query(|_| ());
                        match tokio::time::timeout(CHECK_TIMEOUT, read).await {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(read_failure(&e)),
                            Err(_) => {
                                Some(format!("no ReadIndex round completed in {CHECK_TIMEOUT:?}"))
                            }
                        }
                    }
                    _ => Some(unknown(only.unwrap_or(name))),
                };
                HealthCheck { name, failure }
            });
        HealthReport {
            kind: "readyz",
            checks: futures_util::future::join_all(checks).await,
        }
    }

    /// Both reports, and the figures behind them (at most [`CHECK_TIMEOUT`] in all).
    pub async fn health_status(&self) -> HealthStatus {
        let status = async { tokio::time::timeout(CHECK_TIMEOUT, self.status()).await };
        let (live, ready, status) = tokio::join!(self.livez(None), self.readyz(None), status);
        let status = status.ok().and_then(Result::ok);
        let reason = [live.reason(), ready.reason()]
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        HealthStatus {
            node_id: self.node_id(),
            healthy: live.is_ok() && ready.is_ok(),
            reason,
            live,
            ready,
            leader: self.leader(),
            term: status.as_ref().map(|s| s.term),
            commit_index: status.as_ref().map(|s| s.commit_index),
            applied_index: status.as_ref().map(|s| s.applied_index),
        }
    }

    fn running_failure(&self) -> Option<String> {
        match self.facts().liveness_now() {
            Liveness::Running => None,
            Liveness::ShutDown => Some("the node is shutting down".into()),
            Liveness::Failed(e) => Some(format!("the node stopped: {e}")),
        }
    }
}

/// The checks to run: all of `set`, or the one named (an unknown name is run as a check that
/// fails, so asking for it never passes by accident).
fn select(set: &'static [&'static str], only: Option<&str>) -> Vec<&'static str> {
    match only {
        None => set.to_vec(),
        Some(name) => match set.iter().find(|&&n| n == name) {
            Some(&n) => vec![n],
            None => vec!["unknown"],
        },
    }
}

fn unknown(name: &str) -> String {
    format!("no such check ({name})")
}

fn read_failure(e: &ReadError) -> String {
    format!("a linearizable read failed: {e}")
}
