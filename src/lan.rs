//! Finding the members of a named cluster on the local network (mDNS, through iroh's
//! `iroh-mdns-address-lookup`). A node started with [`crate::RaftClusterBuilder::lan_discovery`]
//! announces its endpoint under the service `_irohraft._udp.local` with the cluster's name as
//! its user data; [`find_members`] listens for those announcements.
//!
//! Discovery only answers *where*: a member found this way still admits nobody who is not a
//! member or does not hold a valid ticket. Use tickets for everything beyond the LAN.

use std::{collections::BTreeMap, time::Duration};

use futures_lite::StreamExt;
use iroh::{Endpoint, EndpointAddr, EndpointId, SecretKey, endpoint_info::UserData};
use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};

/// The mDNS service name iroh-raft nodes announce under (not iroh's shared `irohv1`, so that
/// other iroh applications on the link neither see nor resolve our nodes).
pub const SERVICE_NAME: &str = "irohraft";

/// Prefix of the user data a node announces: `iroh-raft:<cluster name>`.
const USER_DATA_PREFIX: &str = "iroh-raft:";

/// Why LAN discovery could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LanError {
    /// The cluster name cannot be announced (empty, or too long for an mDNS TXT record).
    #[error("invalid cluster name '{name}': {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The mDNS service could not start (no usable network interface, multicast refused).
    #[error("mDNS unavailable: {0}")]
    Unavailable(String),
}

fn user_data(name: &str) -> Result<UserData, LanError> {
    let invalid = |reason: String| LanError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty".into()));
    }
    format!("{USER_DATA_PREFIX}{name}")
        .parse()
        .map_err(|e| invalid(format!("{e}")))
}

/// Starts announcing `endpoint` as a member of cluster `name` on the local network.
pub(crate) fn announce(endpoint: &Endpoint, name: &str) -> Result<(), LanError> {
    let data = user_data(name)?;
    let mdns = MdnsAddressLookup::builder()
        .service_name(SERVICE_NAME)
        .build(endpoint.id())
        .map_err(|e| LanError::Unavailable(e.to_string()))?;
    endpoint
        .address_lookup()
        .map_err(|e| LanError::Unavailable(e.to_string()))?
        .add(mdns);
    endpoint.set_user_data_for_address_lookup(Some(data));
    Ok(())
}

/// Listens on the local network for `wait` and returns every endpoint that announced itself as
/// a member of cluster `name` (ids and the addresses it announced). Returns early, after a short
/// grace for the others, once at least one was found.
pub async fn find_members(name: &str, wait: Duration) -> Result<Vec<EndpointAddr>, LanError> {
    let wanted = user_data(name)?;
    // A listener with a throwaway identity; it does not announce itself.
    let listener = MdnsAddressLookup::builder()
        .service_name(SERVICE_NAME)
        .advertise(false)
        .build(SecretKey::generate().public())
        .map_err(|e| LanError::Unavailable(e.to_string()))?;
    let mut events = listener.subscribe().await;
    let mut found: BTreeMap<EndpointId, EndpointAddr> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    // After the first member answers, wait this much longer for the others.
    let grace = Duration::from_millis(1500).min(wait);
    let mut until = deadline;
    while let Ok(Some(event)) = tokio::time::timeout_at(until, events.next()).await {
        match event {
            DiscoveryEvent::Discovered { endpoint_info, .. }
                if endpoint_info.data.user_data() == Some(&wanted) =>
            {
                found.insert(endpoint_info.endpoint_id, endpoint_info.to_endpoint_addr());
                until = until.min(tokio::time::Instant::now() + grace);
            }
            DiscoveryEvent::Expired { endpoint_id } => {
                found.remove(&endpoint_id);
            }
            _ => {}
        }
    }
    Ok(found.into_values().collect())
}
