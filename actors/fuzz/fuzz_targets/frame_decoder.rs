//! Fuzzes what a peer's bytes go through: frame decoding (rkyv validation) and, for whatever
//! decodes, the field-by-field validation into Raft messages. Neither may panic.
//!
//! Run for a fixed time: `cd actors/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run frame_decoder -- -max_total_time=60`

#![no_main]

use iroh_raft_actors::wire::{Frame, decode_frame, validate_frame, validate_snapshot_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_frame(data) {
        if let Frame::SnapshotHeader(header) = frame {
            let _ = validate_snapshot_header(header, 1, 2);
        } else {
            let _ = validate_frame(frame, 1, 2);
        }
    }
});
