//! What a build leaves in its data dir when it fails: all or nothing.
//!
//! - Before the node exists (a join ticket refused, expired or unheard, a bind that failed),
//!   every file and directory this build created is removed again ([`Created::undo`]); what
//!   was there before is never touched.
//! - A join request that was sent but not answered may have been admitted: only the node's
//!   key is kept ([`BuildError::JoinOutcomeUnknown`]), so that running again presents the same
//!   key and a member that admitted it recognises it.
//! - Once a member admitted a joining node, the node is part of the membership and its data
//!   dir may hold Raft state that must not be lost (a promotion may have been committed even
//!   if its answer was not). The data dir is kept, with a [`JOIN_PENDING_FILE`] that names the
//!   node and its address; building again with the same data dir and a join ticket presents
//!   the ticket again and finishes the join (a member recognises the node by its key).

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use iroh::Endpoint;
use iroh_raft_actors::{Bootstrap, Identity, NodeId, StateMachine, Ticket};

use super::RaftClusterBuilder;
use crate::{
    BuildError, ConfigError, RaftCluster,
    discovery::{Accepted, PendingJoin, request_join},
    net::{PeerAddr, endpoint_peer_addr},
};

/// File in the data dir of a node whose join was admitted but did not finish: `node=ID` and
/// `bind=ADDR` lines (the address the member was given, to come back on).
pub const JOIN_PENDING_FILE: &str = "join-pending";

/// Files and directories a build created, removed again if it fails before the node exists.
#[derive(Debug, Default)]
pub(crate) struct Created {
    /// Directories, deepest first.
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
    /// The node exists: nothing is removed any more.
    kept: bool,
}

impl Created {
    /// Records which of `dir` and its ancestors do not exist yet (call before creating it).
    pub(crate) fn missing_dirs(dir: &Path) -> Self {
        let dirs = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .map(Path::to_path_buf)
            .collect();
        Self {
            dirs,
            ..Self::default()
        }
    }

    /// Records `path` as this build's if it does not exist yet (call before creating it).
    pub(crate) fn file(&mut self, path: PathBuf) {
        if !path.exists() {
            self.files.push(path);
        }
    }

    /// Keeps `path` whatever happens (a key a member may already know).
    pub(crate) fn spare(&mut self, path: &Path) {
        self.files.retain(|f| f != path);
    }

    /// From here on the data dir holds a node: a failure keeps it.
    pub(crate) fn keep(&mut self) {
        self.kept = true;
    }

    /// Removes what this build created, unless the node exists. A directory that is not empty
    /// (someone else put something there meanwhile) stays.
    pub(crate) fn undo(self) {
        if self.kept {
            return;
        }
        for file in &self.files {
            if let Err(e) = std::fs::remove_file(file)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %file.display(), error = %e, "could not remove a file of a failed build");
            }
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// What is left of a join once the node runs.
pub(super) enum Join {
    /// Nothing: not joining, or a restart of a node that had finished joining.
    None,
    /// A member admitted the node; its final answer comes on this stream.
    Fresh(PendingJoin),
    /// A restart of a node whose join did not finish: present the ticket again.
    Resume(Ticket),
}

impl<S: StateMachine> RaftClusterBuilder<S> {
    /// Asks a member named in `ticket` to admit this new node. When the request was sent but
    /// not answered, the node's key is kept: a member may know it already.
    pub(super) async fn ask_to_join(
        &self,
        endpoint: &Endpoint,
        ticket: &Ticket,
        data_dir: &Path,
        created: &mut Created,
    ) -> Result<Accepted, BuildError> {
        let result = request_join(endpoint, ticket, self.join_as_learner).await;
        if let Err(BuildError::JoinOutcomeUnknown { .. }) = &result {
            created.spare(&data_dir.join(crate::net::SECRET_KEY_FILE));
        }
        result
    }

    /// The node's id, how it starts, and what is left of its join. A restarted node's stored
    /// identity wins over flags; a new node joins by ticket (`accepted`, if it already asked),
    /// or founds / joins with the given id.
    pub(super) async fn identity(
        &self,
        stored: Option<Identity>,
        accepted: Option<Accepted>,
        endpoint: &Endpoint,
        data_dir: &Path,
        created: &mut Created,
        peers: Vec<(NodeId, PeerAddr)>,
    ) -> Result<(NodeId, Bootstrap, Join), BuildError> {
        match (stored, &self.join_ticket) {
            (Some(identity), ticket) => {
                let join = match ticket {
                    Some(t) if pending(data_dir) == Some(identity.node_id) => {
                        Join::Resume(t.clone())
                    }
                    _ => Join::None,
                };
                let id = self.node_id.unwrap_or(identity.node_id);
                Ok((id, Bootstrap::Join(Vec::new()), join))
            }
            (None, Some(ticket)) => {
                let accepted = match accepted {
                    Some(a) => a,
                    None => {
                        self.ask_to_join(endpoint, ticket, data_dir, created)
                            .await?
                    }
                };
                let me = accepted.id;
                // The node is a member from here on: its data dir is kept whatever happens.
                created.keep();
                let bind = endpoint_peer_addr(endpoint).0.ip_addrs().next().copied();
                write_pending(data_dir, me, bind).map_err(|source| BuildError::DataDir {
                    path: data_dir.to_owned(),
                    source,
                })?;
                let known = accepted
                    .members
                    .into_iter()
                    .filter(|m| m.node_id != me)
                    .collect();
                Ok((me, Bootstrap::Join(known), Join::Fresh(accepted.pending)))
            }
            (None, None) => {
                let node_id = self.node_id.ok_or(ConfigError::MissingNodeId)?;
                let own = endpoint_peer_addr(endpoint).0;
                Ok((
                    node_id,
                    self.new_bootstrap(node_id, own, peers)?,
                    Join::None,
                ))
            }
        }
    }

    /// Waits for the member's final answer (after presenting the ticket again, for a resumed
    /// join); on failure stops the node, which keeps its data dir and its pending mark.
    pub(super) async fn finish_join(
        &self,
        cluster: &RaftCluster<S>,
        join: Join,
        data_dir: &Path,
    ) -> Result<(), BuildError> {
        let node = cluster.node_id();
        let pending = match join {
            Join::None => return Ok(()),
            Join::Fresh(pending) => Ok(pending),
            Join::Resume(ticket) => self.present_again(cluster, &ticket, node).await,
        };
        let wait = self.join_options.timeout + Duration::from_secs(10);
        let finished = match pending {
            Ok(pending) => pending.finish(wait).await.map(|_| ()),
            Err(e) => Err(e),
        };
        let done = finished.and_then(|()| {
            clear_pending(data_dir).map_err(|source| BuildError::DataDir {
                path: data_dir.to_owned(),
                source,
            })
        });
        if let Err(e) = done {
            let _ = cluster.shutdown().await;
            return Err(BuildError::JoinIncomplete {
                node,
                source: Box::new(e),
            });
        }
        Ok(())
    }

    /// Presents the ticket again for node `node`: a member recognises it by its key.
    async fn present_again(
        &self,
        cluster: &RaftCluster<S>,
        ticket: &Ticket,
        node: NodeId,
    ) -> Result<PendingJoin, BuildError> {
        // Join tickets are refused with `in_memory`: a node that presents one has an endpoint.
        let endpoint = cluster.endpoint().ok_or(ConfigError::NotInMemory {
            option: "join_ticket",
        })?;
        let accepted = request_join(endpoint, ticket, self.join_as_learner).await?;
        if accepted.id != node {
            return Err(BuildError::JoinUnreachable {
                reason: format!(
                    "the cluster knows this node's key as node {}, but its data dir holds node {node}",
                    accepted.id
                ),
            });
        }
        Ok(accepted.pending)
    }
}

/// Marks `dir` as holding node `node`, admitted and not yet fully joined, reachable at `bind`.
pub(crate) fn write_pending(dir: &Path, node: NodeId, bind: Option<SocketAddr>) -> io::Result<()> {
    let mut text = format!("node={node}\n");
    if let Some(bind) = bind {
        text.push_str(&format!("bind={bind}\n"));
    }
    let path = dir.join(JOIN_PENDING_FILE);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// The node whose join is pending in `dir`, if one is.
pub(crate) fn pending(dir: &Path) -> Option<NodeId> {
    let text = std::fs::read_to_string(dir.join(JOIN_PENDING_FILE)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("node="))
        .and_then(|id| id.trim().parse().ok())
}

/// The join finished: the data dir is an ordinary node's.
pub(crate) fn clear_pending(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(JOIN_PENDING_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_removes_only_what_the_build_created() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("keep"), b"mine").unwrap();
        let dir = root.path().join("a").join("b");
        let mut created = Created::missing_dirs(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        created.file(root.path().join("keep"));
        created.file(dir.join("new"));
        std::fs::write(dir.join("new"), b"x").unwrap();
        created.undo();
        assert!(!root.path().join("a").exists());
        assert!(root.path().join("keep").exists());

        let mut kept = Created::missing_dirs(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        kept.keep();
        kept.undo();
        assert!(dir.exists());
    }

    #[test]
    fn pending_marker_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(pending(dir.path()), None);
        write_pending(dir.path(), 7, Some("127.0.0.1:9".parse().unwrap())).unwrap();
        assert_eq!(pending(dir.path()), Some(7));
        clear_pending(dir.path()).unwrap();
        clear_pending(dir.path()).unwrap();
        assert_eq!(pending(dir.path()), None);
    }
}
