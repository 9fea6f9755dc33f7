//! `ctl member`: etcdctl's membership verbs (list, add, promote, update-address, remove).

use std::net::SocketAddr;

use iroh::{EndpointAddr, EndpointId};
use serde_json::json;

use super::{Cli, Failure, print_one};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum MemberAction {
    /// Members with their roles, state, match index, lag, last contact and addresses.
    List,
    /// Add a member: as a learner (it receives the log and does not vote; promote it once it
    /// caught up) or as a voter at once.
    #[command(group = clap::ArgGroup::new("as").required(true))]
    Add {
        /// Its raft id (never reused: a removed member's id is refused).
        id: u64,
        /// Its endpoint id (what `iroh-raft keygen --data-dir D` prints).
        #[arg(long, value_name = "ENDPOINT-ID")]
        key: EndpointId,
        /// An address it listens on (IP:PORT; repeat for several).
        #[arg(long = "addr", value_name = "IP:PORT", required = true)]
        addrs: Vec<SocketAddr>,
        /// Add it as a learner.
        #[arg(long, group = "as")]
        learner: bool,
        /// Add it as a voter (it counts toward the quorum before it caught up: prefer
        /// --learner, then `member promote`).
        #[arg(long, group = "as")]
        voter: bool,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's raft id.
        id: u64,
    },
    /// Give a member new addresses (its key and role stay; every member dials it there once
    /// the change applies).
    UpdateAddress {
        /// Its raft id.
        id: u64,
        /// A new address (IP:PORT; repeat for several).
        #[arg(long = "addr", value_name = "IP:PORT", required = true)]
        addrs: Vec<SocketAddr>,
    },
    /// Remove a member (the leader hands over first if it is the one removed).
    Remove {
        /// Its raft id.
        id: u64,
    },
}

fn endpoint_addr(key: EndpointId, addrs: &[SocketAddr]) -> EndpointAddr {
    addrs
        .iter()
        .fold(EndpointAddr::new(key), |a, ip| a.with_ip_addr(*ip))
}

/// Prints a change's outcome.
fn changed(json: bool, action: &str, id: u64, index: u64, human: String) {
    print_one(
        json,
        json!({ "action": action, "id": id, "index": index }),
        || format!("{human} (index {index})"),
    );
}

pub(super) async fn run(cli: &Cli, action: MemberAction, json: bool) -> Result<(), Failure> {
    match action {
        MemberAction::List => super::status::print(cli, json, true).await?,
        MemberAction::Add {
            id,
            key,
            addrs,
            learner,
            ..
        } => {
            let addr = endpoint_addr(key, &addrs);
            let (index, what) = match learner {
                true => (cli.call().add_learner(id, &addr).await?, "learner"),
                false => (cli.call().add_voter(id, &addr).await?, "voter"),
            };
            changed(
                json,
                "add",
                id,
                index,
                format!("added node {id} as a {what}"),
            );
        }
        MemberAction::Promote { id } => {
            let index = cli.call().promote(id).await?;
            changed(json, "promote", id, index, format!("node {id} is a voter"));
        }
        MemberAction::UpdateAddress { id, addrs } => {
            // The member's key, from the cluster: an update keeps it.
            let status = cli.call().status().await?;
            let member = status
                .members
                .iter()
                .find(|m| m.id == id)
                .ok_or_else(|| Failure {
                    code: 1,
                    message: format!("node id {id} is not a member"),
                })?;
            let key = EndpointId::from_bytes(&member.key).map_err(|e| Failure {
                code: 1,
                message: format!("member {id} has an invalid endpoint id: {e}"),
            })?;
            let addr = endpoint_addr(key, &addrs);
            let index = cli.call().update_address(id, &addr).await?;
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            changed(
                json,
                "update-address",
                id,
                index,
                format!("node {id} is at {}", list.join(",")),
            );
        }
        MemberAction::Remove { id } => {
            let index = cli.call().remove_member(id).await?;
            changed(json, "remove", id, index, format!("removed node {id}"));
        }
    }
    Ok(())
}
