//! Real-network tests: node processes in Linux network namespaces of their own, links with
//! emulated delay and loss, partitions by iptables, NAT routers and our own relay server. They
//! need root (CAP_NET_ADMIN and CAP_SYS_ADMIN), `ip`, `iptables` and `iptables-restore`:
//! without them they fail, never skip.

mod lab;
mod nodes;
mod relay;

#[path = "../common/kv_history.rs"]
mod kv_history;
#[path = "../simulation/linearizability.rs"]
mod linearizability;

mod t00_lab;
mod t20_partition;
mod t30_nat;
