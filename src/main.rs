//! The `iroh-raft` binary.

fn main() {}
