//! Integration tests: real nodes (actors, redb, iroh QUIC) on loopback, no relays, no DNS.
//! Files are numbered in the order the features build on each other.

mod support;

mod t10_election;
mod t15_embedding;
mod t16_memory;
mod t20_replication;
mod t30_follower_propose;
mod t35_events;
mod t40_leader_failover;
mod t45_shutdown;
mod t47_supervision;
mod t50_follower_catch_up;
mod t55_snapshots;
mod t60_full_restart;
mod t65_integrity;
mod t70_admission;
mod t75_membership;
mod t77_tickets;
mod t78_relay;
mod t80_malformed_frames;
mod t85_mgmt;
mod t86_mgmt_lanes;
mod t87_kv_client;
mod t90_config_errors;
mod t95_monitoring;
mod t96_prometheus;
mod t97_backups;
