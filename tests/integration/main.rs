//! Integration tests: real nodes (actors, redb, iroh QUIC) on loopback, no relays, no DNS.
//! Files are numbered in the order the features build on each other.

mod support;

mod t10_election;
