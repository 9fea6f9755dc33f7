//! Deployment: run a cluster of `iroh-raft node` processes from a [`DeploymentConfig`],
//! update it one node at a time without giving up quorum, grow and shrink it.
//!
//! - [`DeploymentConfig`]: the cluster's nodes (id, address, data dir, metrics port, limits),
//!   its preset, rollout bounds and backups; loaded from TOML and checked whole (duplicate ids
//!   or ports, data dirs that cannot be written, an unknown preset, a misspelt field) before
//!   any process starts.
//! - [`ClusterManager`] runs it: [`ClusterManager::bootstrap`], [`ClusterManager::status`],
//!   [`ClusterManager::rolling_update`], [`ClusterManager::add_node`],
//!   [`ClusterManager::remove_node`], [`ClusterManager::stop`]. Processes go through a [`Launcher`]; everything else
//!   (membership, leadership, health, catch-up) through the management protocol. The manager
//!   itself creates a new node's key in its data dir and reads the founder's admin ticket
//!   there: a launcher of the user's own (ssh, an orchestrator's API) needs those data dirs on
//!   the manager's file system too.
//! - [`LocalLauncher`]: runs the nodes on this machine, their logs in the state dir.
//!
//! The CLI is `iroh-raft cluster up|status|rolling-update|add|remove|down -f cluster.toml`.
//! For nodes run by systemd or Kubernetes instead, see `docs/deploy/`.

mod config;
mod launcher;
mod manager;

pub use config::{
    BackupSettings, DeploymentConfig, DeploymentConfigError, NodeConfig, ResourceLimits,
    RolloutConfig, parse_duration, parse_preset,
};
pub use launcher::{LaunchError, LaunchSpec, Launcher, LocalLauncher, StartMode, Started};
pub use manager::{
    ClusterManager, ClusterStatus, DeploymentError, NodeState, Progress, RolloutReport,
};
