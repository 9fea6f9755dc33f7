//! Power loss the hard way: a redb backend that keeps only what was fsynced. At random points
//! while a node acknowledges writes, the disk image as of the last fsync is taken; a node
//! restarted from that image must hold every write acknowledged before the cut. If the node ever
//! acknowledged a write before its fsync, this fails.

mod support;

use std::{
    io,
    sync::{Arc, Mutex},
};

use iroh::SecretKey;
use iroh_raft_actors::LogDb;
use redb::StorageBackend;
use support::{propose, start_single, values, wait_leader};

/// A disk whose unsynced writes are lost on a power cut.
#[derive(Debug, Clone, Default)]
struct LossyDisk {
    state: Arc<Mutex<Images>>,
}

#[derive(Debug, Default)]
struct Images {
    /// What a reader sees now (page cache).
    current: Vec<u8>,
    /// What survives a power cut: the image as of the last `sync_data`.
    durable: Vec<u8>,
}

impl LossyDisk {
    fn from_image(image: Vec<u8>) -> Self {
        Self {
            state: Arc::new(Mutex::new(Images {
                current: image.clone(),
                durable: image,
            })),
        }
    }

    /// The disk as the power cut leaves it.
    fn cut_power(&self) -> Vec<u8> {
        self.state.lock().unwrap().durable.clone()
    }
}

impl StorageBackend for LossyDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().unwrap().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let s = self.state.lock().unwrap();
        let start = offset as usize;
        let end = start + out.len();
        if end > s.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&s.current[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.state.lock().unwrap().current.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        s.durable = s.current.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        let start = offset as usize;
        if s.current.len() < start + data.len() {
            s.current.resize(start + data.len(), 0);
        }
        s.current[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_power_cut() {
    let key = SecretKey::generate();
    let disk = LossyDisk::default();
    let node = start_single(
        LogDb::with_backend(disk.clone(), "lossy".into()).unwrap(),
        key.clone(),
        |c| {
            // Snapshots and compaction happen during the run too.
            c.max_log_entries = 40;
            c.snapshot_trailing_entries = 5;
        },
    )
    .await;
    wait_leader(&node).await;

    let mut acked = Vec::new();
    let mut cuts = Vec::new();
    for value in 0..300u64 {
        // Several writes in flight at once, so group commits and snapshots interleave.
        if value % 4 == 0 {
            let mut pending = Vec::new();
            for v in value..value + 4 {
                pending.push((
                    v,
                    tokio::spawn({
                        let node = node.clone();
                        async move { propose(&node, v).await }
                    }),
                ));
            }
            for (v, p) in pending {
                if p.await.unwrap().is_ok() {
                    acked.push(v);
                }
            }
        }
        if value % 37 == 11 {
            cuts.push((acked.clone(), disk.cut_power()));
        }
    }
    node.shutdown().await.unwrap();
    assert!(cuts.len() >= 8);

    for (i, (acked, image)) in cuts.into_iter().enumerate() {
        let db =
            LogDb::with_backend(LossyDisk::from_image(image), "after power cut".into()).unwrap();
        let node = start_single(db, key.clone(), |_| {}).await;
        wait_leader(&node).await;
        let have = values(&node).await;
        let lost: Vec<&u64> = acked.iter().filter(|v| !have.contains(v)).collect();
        assert!(
            lost.is_empty(),
            "cut {i}: acknowledged writes lost: {lost:?}"
        );
        node.shutdown().await.unwrap();
    }
}
