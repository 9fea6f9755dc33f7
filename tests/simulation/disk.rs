//! A redb backend that keeps only what was fsynced across a crash, and can be told to fail.

use std::{
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use redb::StorageBackend;

#[derive(Debug, Default)]
struct Images {
    /// What a reader sees now (the page cache).
    current: Vec<u8>,
    /// What survives a crash: the image as of the last `sync_data`.
    durable: Vec<u8>,
}

/// One node's disk.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    images: Arc<Mutex<Images>>,
    failing: Arc<AtomicBool>,
}

impl SimDisk {
    /// A disk holding `image`, as after a crash.
    pub fn from_image(image: Vec<u8>) -> Self {
        Self {
            images: Arc::new(Mutex::new(Images {
                current: image.clone(),
                durable: image,
            })),
            failing: Arc::default(),
        }
    }

    /// What a crash leaves: everything up to the last fsync, nothing after.
    pub fn crash_image(&self) -> Vec<u8> {
        self.images.lock().unwrap().durable.clone()
    }

    /// From now on every write and fsync fails (ENOSPC).
    pub fn fail(&self) {
        self.failing.store(true, Ordering::SeqCst);
    }

    fn check(&self) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "simulated disk failure",
            ));
        }
        Ok(())
    }
}

impl StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.images.lock().unwrap().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let images = self.images.lock().unwrap();
        let start = offset as usize;
        let end = start + out.len();
        if end > images.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&images.current[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.images.lock().unwrap().current.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        let mut images = self.images.lock().unwrap();
        images.durable = images.current.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        let mut images = self.images.lock().unwrap();
        let start = offset as usize;
        if images.current.len() < start + data.len() {
            images.current.resize(start + data.len(), 0);
        }
        images.current[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
}
