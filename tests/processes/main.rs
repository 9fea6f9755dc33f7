//! Real `iroh-raft` processes on loopback (nodes started with `iroh-raft node`, operated with
//! `ctl` and `kv`): what an operator sees. Files are numbered in the order the features build
//! on each other; `timings` measures and prints, and is `--ignored`.

mod support;

#[path = "../common/kv_history.rs"]
mod kv_history;
#[path = "../simulation/linearizability.rs"]
mod linearizability;

mod t10_cluster;
mod t20_cli;
mod t25_etcdctl;
mod t30_join;
mod t40_degraded;
mod t45_pause;
mod t50_chaos;
mod t60_damage;
mod t70_backup;
mod t80_deployment;
mod timings;
