//! The in-memory network. Each outgoing link (a PeerActor's connection) is an ordered stream of
//! frames with a random per-frame delay, fed into the receiving node's real protocol handler
//! (`RaftProtocol::serve_stream`), so frames are validated and routed by production code.
//!
//! Faults: one-way cuts (a cut link breaks; the PeerActor redials and fails until healed), node
//! pauses (frames to and from the node wait), silent links (a link that loses everything sent on
//! it while its sender believes it up, as a QUIC connection to a peer's previous process does:
//! only a redial cures it), and chaos on Raft frames only: drop, duplicate and reorder. Forward frames are never dropped or duplicated on their own: a QUIC stream does not
//! do that, and a duplicated forward would apply a command twice — only a broken link loses
//! them, as a broken connection would.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use iroh::EndpointAddr;
use iroh_raft::actors::{
    NodeId,
    peer::{BoxFuture, Dialer, FrameSource, Link, LinkError, RaftProtocol, StreamEnd, StreamSink},
    wire::{CloseCode, Frame, Hello, decode_frame, encode_frame},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{sync::mpsc, time::Instant};

/// Per-frame faults on Raft frames, and the delay range of every frame.
#[derive(Clone, Copy, Debug)]
pub struct Chaos {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub drop: f64,
    pub duplicate: f64,
    pub reorder: bool,
}

impl Chaos {
    /// A calm LAN: 0.2–2 ms, nothing lost.
    pub fn calm() -> Self {
        Self {
            min_delay: Duration::from_micros(200),
            max_delay: Duration::from_millis(2),
            drop: 0.0,
            duplicate: 0.0,
            reorder: false,
        }
    }

    /// An unreliable network: slower, and Raft frames are lost, doubled and reordered.
    pub fn unreliable() -> Self {
        Self {
            min_delay: Duration::from_micros(500),
            max_delay: Duration::from_millis(20),
            drop: 0.1,
            duplicate: 0.05,
            reorder: true,
        }
    }
}

struct Slot {
    incarnation: u64,
    protocol: Option<RaftProtocol>,
    paused: bool,
}

struct State {
    rng: StdRng,
    nodes: BTreeMap<NodeId, Slot>,
    next_incarnation: u64,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// The links open from one node to another, by their "silent" flags.
    links: BTreeMap<(NodeId, NodeId), Vec<Arc<AtomicBool>>>,
    chaos: Chaos,
    trace: u64,
    raft_frames: u64,
}

/// The network all simulated nodes share.
pub struct SimNet {
    state: Mutex<State>,
}

#[derive(PartialEq, Eq)]
enum LinkState {
    Up,
    Paused,
    Broken,
}

pub fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

impl SimNet {
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
                nodes: BTreeMap::new(),
                next_incarnation: 1,
                cut: BTreeSet::new(),
                links: BTreeMap::new(),
                chaos: Chaos::calm(),
                trace: 0xcbf2_9ce4_8422_2325,
                raft_frames: 0,
            }),
        })
    }

    /// Reserves a new incarnation of `id` (its old links break).
    pub fn register(&self, id: NodeId) -> u64 {
        let mut s = self.state.lock().unwrap();
        let incarnation = s.next_incarnation;
        s.next_incarnation += 1;
        s.nodes.insert(
            id,
            Slot {
                incarnation,
                protocol: None,
                paused: false,
            },
        );
        incarnation
    }

    /// Makes a registered node reachable.
    pub fn attach(&self, id: NodeId, incarnation: u64, protocol: RaftProtocol) {
        let mut s = self.state.lock().unwrap();
        if let Some(slot) = s
            .nodes
            .get_mut(&id)
            .filter(|s| s.incarnation == incarnation)
        {
            slot.protocol = Some(protocol);
        }
    }

    /// The node is gone (crashed or stopped): every link to or from it breaks.
    pub fn unregister(&self, id: NodeId) {
        self.state.lock().unwrap().nodes.remove(&id);
    }

    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.state.lock().unwrap().cut.insert((from, to));
    }

    /// Cuts `id` off from everyone, both ways.
    pub fn isolate(&self, id: NodeId, all: &[NodeId]) {
        for &other in all.iter().filter(|&&o| o != id) {
            self.cut(id, other);
            self.cut(other, id);
        }
    }

    /// Every link open now from `from` to `to` goes silent: what is sent on it is lost, and its
    /// sender is not told. Links dialled later work.
    pub fn silence(&self, from: NodeId, to: NodeId) {
        let mut s = self.state.lock().unwrap();
        for flag in s.links.remove(&(from, to)).unwrap_or_default() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Registers a new link's silent flag.
    fn open_link(&self, from: NodeId, to: NodeId) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        let mut s = self.state.lock().unwrap();
        let open = s.links.entry((from, to)).or_default();
        open.retain(|f| Arc::strong_count(f) > 1);
        open.push(flag.clone());
        flag
    }

    pub fn heal_all(&self) {
        self.state.lock().unwrap().cut.clear();
    }

    pub fn set_paused(&self, id: NodeId, paused: bool) {
        if let Some(slot) = self.state.lock().unwrap().nodes.get_mut(&id) {
            slot.paused = paused;
        }
    }

    pub fn set_chaos(&self, chaos: Chaos) {
        self.state.lock().unwrap().chaos = chaos;
    }

    /// A hash of every frame sent, in order: equal for two runs of one seed.
    pub fn trace(&self) -> u64 {
        self.state.lock().unwrap().trace
    }

    /// Raft frames delivered so far.
    pub fn raft_frames(&self) -> u64 {
        self.state.lock().unwrap().raft_frames
    }

    fn link_state(&self, from: (NodeId, u64), to: (NodeId, u64)) -> LinkState {
        let s = self.state.lock().unwrap();
        let alive =
            |(id, inc): (NodeId, u64)| s.nodes.get(&id).filter(|slot| slot.incarnation == inc);
        match (alive(from), alive(to)) {
            (Some(a), Some(b)) if !s.cut.contains(&(from.0, to.0)) && b.protocol.is_some() => {
                if a.paused || b.paused {
                    LinkState::Paused
                } else {
                    LinkState::Up
                }
            }
            _ => LinkState::Broken,
        }
    }

    fn current(&self, id: NodeId) -> Option<(u64, RaftProtocol)> {
        let s = self.state.lock().unwrap();
        let slot = s.nodes.get(&id)?;
        Some((slot.incarnation, slot.protocol.clone()?))
    }

    /// Delay for a frame, and whether a Raft frame is dropped, doubled, reordered.
    fn roll(
        &self,
        from: NodeId,
        to: NodeId,
        bytes: &[u8],
        raft: bool,
    ) -> (Duration, bool, bool, bool) {
        let mut s = self.state.lock().unwrap();
        let c = s.chaos;
        let span = c.max_delay.saturating_sub(c.min_delay).as_micros() as u64;
        let delay = c.min_delay + Duration::from_micros(s.rng.random_range(0..=span));
        let drop = raft && s.rng.random_bool(c.drop);
        let dup = raft && s.rng.random_bool(c.duplicate);
        let reorder = raft && c.reorder;
        let mut h = s.trace;
        fnv(&mut h, &from.to_le_bytes());
        fnv(&mut h, &to.to_le_bytes());
        fnv(&mut h, bytes);
        fnv(&mut h, &[drop as u8, dup as u8]);
        s.trace = h;
        (delay, drop, dup, reorder)
    }

    fn delivered(&self, raft: bool) {
        if raft {
            self.state.lock().unwrap().raft_frames += 1;
        }
    }
}

/// Dials through the simulated network for one incarnation of a node.
#[derive(Debug)]
pub struct SimDialer {
    pub net: Arc<SimNet>,
    pub incarnation: u64,
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimNet")
    }
}

impl Dialer for SimDialer {
    fn dial(
        &self,
        hello: Hello,
        _: EndpointAddr,
    ) -> BoxFuture<'static, Result<Box<dyn Link>, LinkError>> {
        let (me, peer) = (hello.from, hello.to);
        let net = self.net.clone();
        let from = (me, self.incarnation);
        Box::pin(async move {
            // A connection attempt takes a round trip.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let (inc, protocol) = net
                .current(peer)
                .ok_or_else(|| LinkError::Connect("unreachable".into()))?;
            let to = (peer, inc);
            if net.link_state(from, to) == LinkState::Broken {
                return Err(LinkError::Connect("unreachable".into()));
            }
            let (pump_tx, pump_rx) = mpsc::unbounded_channel();
            let (serve_tx, serve_rx) = mpsc::unbounded_channel();
            let broken = Arc::new(AtomicBool::new(false));
            let silent = net.open_link(me, peer);
            tokio::spawn(pump(
                net.clone(),
                from,
                to,
                pump_rx,
                serve_tx,
                broken.clone(),
            ));
            tokio::spawn(async move {
                protocol
                    .serve_stream(me, &mut ChannelFrames(serve_rx))
                    .await;
            });
            let mut link = SimLink {
                net,
                from,
                to,
                pump: pump_tx,
                broken,
                silent,
                last_at: Instant::now(),
                seq: 0,
            };
            let mut bytes = Vec::new();
            encode_frame(&Frame::Hello(hello), &mut bytes).expect("hello encodes");
            link.enqueue(&bytes)?;
            Ok(Box::new(link) as Box<dyn Link>)
        })
    }
}

/// Frames in flight on one link, by delivery time.
type Scheduled = (Instant, u64, Frame);

#[derive(Debug)]
struct SimLink {
    net: Arc<SimNet>,
    from: (NodeId, u64),
    to: (NodeId, u64),
    pump: mpsc::UnboundedSender<Scheduled>,
    broken: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    last_at: Instant,
    seq: u64,
}

/// Splits encoded frames (length-prefixed) back into frames.
fn split_frames(mut bytes: &[u8]) -> Vec<(Frame, &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        let payload = &bytes[4..4 + len];
        out.push((
            decode_frame(payload).expect("our own frames decode"),
            payload,
        ));
        bytes = &bytes[4 + len..];
    }
    out
}

impl SimLink {
    fn enqueue(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(LinkError::Closed("link broken".into()));
        }
        if self.silent.load(Ordering::SeqCst) {
            return Ok(());
        }
        for (frame, payload) in split_frames(bytes) {
            let raft = matches!(frame, Frame::Raft(_));
            let (delay, drop, dup, reorder) = self.net.roll(self.from.0, self.to.0, payload, raft);
            if drop {
                continue;
            }
            let at = if reorder {
                Instant::now() + delay
            } else {
                // A stream delivers in order: never before the previous frame.
                self.last_at = self.last_at.max(Instant::now() + delay);
                self.last_at
            };
            let copies = if dup { 2 } else { 1 };
            for _ in 0..copies {
                self.seq += 1;
                if self.pump.send((at, self.seq, frame.clone())).is_err() {
                    return Err(LinkError::Closed("link broken".into()));
                }
            }
        }
        Ok(())
    }
}

impl Link for SimLink {
    fn send<'a>(&'a mut self, frames: &'a [u8]) -> BoxFuture<'a, Result<(), LinkError>> {
        let result = self.enqueue(frames);
        Box::pin(async move { result })
    }

    fn close(&mut self, code: CloseCode, _: &str) {
        self.broken.store(true, Ordering::SeqCst);
        // The receiver learns of the close (and its code) unless the link lost it.
        if self.silent.load(Ordering::SeqCst)
            || self.net.link_state(self.from, self.to) != LinkState::Up
        {
            return;
        }
        let (net, from, to) = (self.net.clone(), self.from, self.to);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if let Some((_, protocol)) = net.current(to.0).filter(|(inc, _)| *inc == to.1) {
                protocol.peer_closed(from.0, Some(code)).await;
            }
        });
    }

    fn open_stream(&self) -> BoxFuture<'static, Result<Box<dyn StreamSink>, LinkError>> {
        let stream = SimStream {
            net: self.net.clone(),
            from: self.from,
            to: self.to,
            frames: Vec::new(),
            silent: self.silent.clone(),
        };
        Box::pin(async move { Ok(Box::new(stream) as Box<dyn StreamSink>) })
    }
}

/// Delivers a link's frames by time (and sequence for equal times) to the receiver's handler.
async fn pump(
    net: Arc<SimNet>,
    from: (NodeId, u64),
    to: (NodeId, u64),
    mut rx: mpsc::UnboundedReceiver<Scheduled>,
    serve: mpsc::UnboundedSender<Frame>,
    broken: Arc<AtomicBool>,
) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut frames: BTreeMap<u64, Frame> = BTreeMap::new();
    let mut open = true;
    loop {
        let next = heap.peek().map(|Reverse((at, _))| *at);
        if !open && next.is_none() {
            return;
        }
        tokio::select! {
            biased;
            item = rx.recv(), if open => match item {
                Some((at, seq, frame)) => {
                    heap.push(Reverse((at, seq)));
                    frames.insert(seq, frame);
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let Reverse((_, seq)) = heap.pop().expect("peeked");
                let frame = frames.remove(&seq).expect("scheduled");
                loop {
                    match net.link_state(from, to) {
                        LinkState::Up => break,
                        LinkState::Paused => tokio::time::sleep(Duration::from_millis(1)).await,
                        LinkState::Broken => {
                            broken.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                net.delivered(matches!(frame, Frame::Raft(_)));
                if serve.send(frame).is_err() {
                    broken.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

struct ChannelFrames(mpsc::UnboundedReceiver<Frame>);

impl FrameSource for ChannelFrames {
    fn next_frame(&mut self) -> BoxFuture<'_, Result<Option<Frame>, StreamEnd>> {
        Box::pin(async move { Ok(self.0.recv().await) })
    }
}

struct VecFrames(std::vec::IntoIter<Frame>);

impl FrameSource for VecFrames {
    fn next_frame(&mut self) -> BoxFuture<'_, Result<Option<Frame>, StreamEnd>> {
        let next = self.0.next();
        Box::pin(async move { Ok(next) })
    }
}

/// A snapshot stream: collected, then handed to the receiver in one go when finished.
struct SimStream {
    net: Arc<SimNet>,
    from: (NodeId, u64),
    to: (NodeId, u64),
    frames: Vec<Frame>,
    silent: Arc<AtomicBool>,
}

impl StreamSink for SimStream {
    fn send<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, Result<(), LinkError>> {
        self.frames
            .extend(split_frames(bytes).into_iter().map(|(f, _)| f));
        Box::pin(async { Ok(()) })
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), LinkError>> {
        Box::pin(async move {
            let bytes: u64 = self
                .frames
                .iter()
                .map(|f| {
                    if let Frame::SnapshotChunk(c) = f {
                        c.len() as u64
                    } else {
                        0
                    }
                })
                .sum();
            // A snapshot takes time on the wire: 1 ms per 100 KiB.
            tokio::time::sleep(Duration::from_millis(1 + bytes / 100_000)).await;
            if self.net.link_state(self.from, self.to) != LinkState::Up {
                return Err(LinkError::Closed("link broken".into()));
            }
            if self.silent.load(Ordering::SeqCst) {
                return Err(LinkError::Closed("no answer".into()));
            }
            let (_, protocol) = self
                .net
                .current(self.to.0)
                .ok_or_else(|| LinkError::Closed("gone".into()))?;
            let from = self.from.0;
            let mut frames = VecFrames(self.frames.into_iter());
            match protocol.serve_stream(from, &mut frames).await {
                StreamEnd::Closed => Ok(()),
                other => Err(LinkError::Closed(format!("{other:?}"))),
            }
        })
    }
}
