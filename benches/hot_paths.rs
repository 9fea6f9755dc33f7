//! Micro-benchmarks of the per-message hot paths: frame encode/decode of an append batch, and a
//! group commit of persist batches to redb (in memory and on a file with fsync).
//!
//! Run: `cargo bench --bench hot_paths`

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use iroh_raft::actors::{
    LogDb, PersistBatch,
    wire::{Frame, WireEntry, WireMessage, decode_frame, encode_frame},
};

fn append_frame(entries: usize) -> Frame {
    Frame::Raft(vec![WireMessage {
        msg_type: 3,
        from: 1,
        to: 2,
        term: 5,
        index: 100,
        log_term: 5,
        commit: 99,
        entries: (0..entries)
            .map(|i| WireEntry {
                entry_type: 0,
                term: 5,
                index: 101 + i as u64,
                data: vec![7; 128],
                context: vec![1; 16],
            })
            .collect(),
        ..Default::default()
    }])
}

fn wire(c: &mut Criterion) {
    for n in [1, 64] {
        let frame = append_frame(n);
        let mut buf = Vec::new();
        c.bench_function(&format!("encode append, {n} x 128 B entries"), |b| {
            b.iter(|| {
                buf.clear();
                encode_frame(&frame, &mut buf).unwrap();
            })
        });
        let mut encoded = Vec::new();
        encode_frame(&frame, &mut encoded).unwrap();
        c.bench_function(&format!("decode append, {n} x 128 B entries"), |b| {
            b.iter(|| decode_frame(&encoded[4..]).unwrap())
        });
    }
}

fn batches(start: u64, per_batch: usize, count: usize) -> Vec<PersistBatch> {
    (0..count)
        .map(|b| PersistBatch {
            number: b as u64 + 1,
            entries: (0..per_batch)
                .map(|i| raft::eraftpb::Entry {
                    term: 1,
                    index: start + (b * per_batch + i) as u64,
                    data: vec![7; 128].into(),
                    ..Default::default()
                })
                .collect(),
            must_sync: true,
            ..Default::default()
        })
        .collect()
}

fn storage(c: &mut Criterion) {
    let mut group = c.benchmark_group("group commit of 64 batches x 1 entry");
    let mut mem = LogDb::in_memory().unwrap();
    let mut next = 1;
    group.bench_function("in memory", |b| {
        b.iter_batched(
            || {
                let bs = batches(next, 1, 64);
                next += 64;
                bs
            },
            |bs| mem.write(&bs, false).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let mut file = LogDb::open(&dir.path().join("bench.redb")).unwrap();
    let mut next = 1;
    group.bench_function("file, fsync", |b| {
        b.iter_batched(
            || {
                let bs = batches(next, 1, 64);
                next += 64;
                bs
            },
            |bs| file.write(&bs, true).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, wire, storage);
criterion_main!(benches);
