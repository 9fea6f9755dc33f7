//! The physical floor of one durable replicated write on this machine, measured the same way
//! every run: a raw 128-byte append + `fdatasync` on the file system the nodes use, and a UDP
//! round trip on loopback between two tokio tasks (what a message to a follower and its answer
//! cost at least, before QUIC, encryption and Raft).

use std::{
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

/// Medians of the two floors.
pub struct Floor {
    pub fdatasync: Duration,
    pub round_trip: Duration,
}

impl Floor {
    /// One round trip (leader → follower → leader) plus one fsync: what a single client's write
    /// costs at least when the leader's and a follower's fsyncs overlap.
    pub fn write(&self) -> Duration {
        self.fdatasync + self.round_trip
    }
}

pub async fn measure(dir: &Path) -> anyhow::Result<Floor> {
    let fdatasync = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || fsync_p50(&dir)).await??
    };
    let round_trip = udp_round_trip_p50().await?;
    Ok(Floor {
        fdatasync,
        round_trip,
    })
}

fn median(h: &Histogram<u64>) -> Duration {
    Duration::from_nanos(h.value_at_quantile(0.5))
}

/// Appends 128 bytes and fdatasyncs, 1,000 times, on a fresh file in `dir`.
fn fsync_p50(dir: &Path) -> anyhow::Result<Duration> {
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut hist = Histogram::<u64>::new(3)?;
    let record = [0x5a_u8; 128];
    for _ in 0..1_000 {
        let t = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        hist.record(t.elapsed().as_nanos() as u64)?;
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(median(&hist))
}

/// 128-byte UDP ping-pong on loopback between two tasks, 2,000 times after 200 unmeasured.
async fn udp_round_trip_p50() -> anyhow::Result<Duration> {
    let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    a.connect(b.local_addr()?).await?;
    b.connect(a.local_addr()?).await?;
    const ROUNDS: usize = 2_200;
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 256];
        for _ in 0..ROUNDS {
            let n = b.recv(&mut buf).await?;
            b.send(&buf[..n]).await?;
        }
        anyhow::Ok(())
    });
    let mut hist = Histogram::<u64>::new(3)?;
    let mut buf = [0u8; 256];
    for i in 0..ROUNDS {
        let t = Instant::now();
        a.send(&[0x5a; 128]).await?;
        a.recv(&mut buf).await?;
        if i >= 200 {
            hist.record(t.elapsed().as_nanos() as u64)?;
        }
    }
    echo.await??;
    Ok(median(&hist))
}
