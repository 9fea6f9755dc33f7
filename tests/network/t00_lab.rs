//! The lab itself: links delay and lose packets, partitions cut and heal, NAT hides private
//! addresses, and dropping a lab leaves no namespace behind. UDP echoes between hosts, from
//! threads entered into their namespaces.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::lab::{Host, Lab, Link, Nat, list_namespaces};

const PORT: u16 = 7000;
/// How long an echo that should come back may take (a generous bound, never a pass condition).
const ANSWERED: Duration = Duration::from_secs(5);
/// How long we wait for an echo that should not come back.
const UNANSWERED: Duration = Duration::from_millis(400);

/// A UDP echo server in a host: answers each datagram with the datagram, `|`, and the address
/// it came from (what the server saw).
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(host: &Host, port: u16) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = host.spawn_in({
            let stop = stop.clone();
            move || {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
                    .unwrap_or_else(|e| panic!("echo server: bind port {port}: {e}"));
                // Wakes up now and then to see whether to stop.
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::SeqCst) {
                    match socket.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let mut reply = buf[..n].to_vec();
                            reply.extend_from_slice(format!("|{from}").as_bytes());
                            socket.send_to(&reply, from).unwrap();
                        }
                        Err(e) if is_timeout(&e) => {}
                        Err(e) => panic!("echo server: {e}"),
                    }
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            // It panicked (its message is above) or hangs.
            panic!("the echo server in {} did not start", host.name);
        }
        Echo {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

#[derive(Debug)]
struct Reply {
    rtt: Duration,
    /// The client's address as the server saw it.
    seen_as: SocketAddr,
}

/// From one socket in `from`, sends a numbered datagram to each of `to` in turn and waits up to
/// `timeout` for its echo (None: no echo in time).
fn exchange(from: &Host, to: &[SocketAddrV4], timeout: Duration) -> Vec<Option<Reply>> {
    let to = to.to_vec();
    from.run_in(move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let mut buf = [0u8; 2048];
        let mut replies = Vec::new();
        for (i, dest) in to.into_iter().enumerate() {
            let payload = format!("echo {i}");
            let sent = Instant::now();
            socket.send_to(payload.as_bytes(), dest).unwrap();
            let deadline = sent + timeout;
            let reply = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break None;
                }
                socket.set_read_timeout(Some(left)).unwrap();
                match socket.recv_from(&mut buf) {
                    Ok((n, source)) => {
                        let rtt = sent.elapsed();
                        let text = String::from_utf8_lossy(&buf[..n]);
                        // Echoes of earlier datagrams that came late are skipped.
                        if source == SocketAddr::V4(dest)
                            && let Some(seen) = text.strip_prefix(&format!("{payload}|"))
                        {
                            let seen_as = seen.parse().expect("the echo server's answer");
                            break Some(Reply { rtt, seen_as });
                        }
                    }
                    Err(e) if is_timeout(&e) => break None,
                    Err(e) => panic!("echo client: {e}"),
                }
            };
            replies.push(reply);
        }
        replies
    })
}

/// `count` echoes from `from` to `to`, one after the other.
fn ping(from: &Host, to: SocketAddrV4, count: usize, timeout: Duration) -> Vec<Option<Reply>> {
    exchange(from, &vec![to; count], timeout)
}

fn echo_addr(host: &Host) -> SocketAddrV4 {
    SocketAddrV4::new(host.public_ip, PORT)
}

#[track_caller]
fn assert_answered(from: &Host, to: &Host) -> Vec<Reply> {
    let replies = ping(from, echo_addr(to), 3, ANSWERED);
    assert!(
        replies.iter().all(Option::is_some),
        "echoes from {} to {}: {replies:?}",
        from.name,
        to.name
    );
    replies.into_iter().flatten().collect()
}

#[track_caller]
fn assert_unanswered(from: &Host, to: SocketAddrV4, what: &str) {
    let replies = ping(from, to, 2, UNANSWERED);
    assert!(
        replies.iter().all(Option::is_none),
        "{what}: echoes from {} to {to} came back: {replies:?}",
        from.name
    );
}

#[test]
fn links_delay_and_lose_packets() {
    let mut lab = Lab::new();
    let a = lab.host("a");
    let b = lab.host("b");
    let _echo = Echo::start(&a, PORT);
    assert_answered(&b, &a);
    assert_eq!(lab.emulator_stats().delayed, 0);

    // 20 ms each way: no echo comes back in less than 40 ms.
    let delay = Duration::from_millis(20);
    lab.set_link(&a, &b, Link::delay(delay));
    let replies = ping(&b, echo_addr(&a), 10, ANSWERED);
    for reply in &replies {
        let rtt = reply.as_ref().expect("every echo comes back").rtt;
        assert!(
            rtt >= 2 * delay,
            "round trip {rtt:?} with {delay:?} each way"
        );
    }
    let stats = lab.emulator_stats();
    assert!(stats.delayed >= 20, "{stats:?}");
    assert_eq!(stats.dropped, 0, "{stats:?}");

    // 10 ms ± 5 ms each way: never less than 10 ms there and back.
    let link = Link {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(5),
        loss: 0.0,
    };
    lab.set_link(&a, &b, link);
    for reply in ping(&b, echo_addr(&a), 10, ANSWERED) {
        let rtt = reply.expect("every echo comes back").rtt;
        assert!(
            rtt >= Duration::from_millis(10),
            "round trip {rtt:?} with {link:?}"
        );
    }

    // Everything lost: nothing comes back, and the emulator counted the drops.
    let before = lab.emulator_stats();
    lab.set_link(
        &a,
        &b,
        Link {
            loss: 1.0,
            ..Link::default()
        },
    );
    assert_unanswered(&b, echo_addr(&a), "with loss 1.0");
    let after = lab.emulator_stats();
    assert!(
        after.dropped >= before.dropped + 2,
        "{before:?} then {after:?}"
    );

    // Nothing lost again: echoes pass, untouched by the emulator.
    lab.set_link(&a, &b, Link::default());
    let before = lab.emulator_stats();
    assert_answered(&b, &a);
    let after = lab.emulator_stats();
    assert!(
        after.passed >= before.passed + 6,
        "{before:?} then {after:?}"
    );
    assert_eq!(after.delayed, before.delayed);
    assert_eq!(after.dropped, before.dropped);
    assert_eq!(after.queue_full, 0, "{after:?}");
    println!("{after:?}");
}

#[test]
fn all_links_cover_hosts_added_later() {
    let mut lab = Lab::new();
    let a = lab.host("a");
    let _echo = Echo::start(&a, PORT);
    let delay = Duration::from_millis(15);
    lab.set_all_links(Link::delay(delay));
    let b = lab.host("b");
    let n = lab.natted_host("n", Nat::EndpointIndependent);
    for from in [&b, &n] {
        for reply in assert_answered(from, &a) {
            assert!(
                reply.rtt >= 2 * delay,
                "round trip {:?} from {} with {delay:?} each way",
                reply.rtt,
                from.name
            );
        }
    }
    // A pair can still have a link of its own.
    lab.set_link(&a, &b, Link::default());
    let before = lab.emulator_stats();
    assert_answered(&b, &a);
    assert_eq!(lab.emulator_stats().delayed, before.delayed);
}

#[test]
fn partitions_cut_both_ways_and_heal() {
    let mut lab = Lab::new();
    let a = lab.host("a");
    let b = lab.host("b");
    let c = lab.host("c");
    let _echoes = [&a, &b, &c].map(|h| Echo::start(h, PORT));
    for (x, y) in [(&a, &b), (&b, &c), (&c, &a)] {
        assert_answered(x, y);
    }

    lab.partition(&[&a], &[&b]);
    assert_unanswered(&b, echo_addr(&a), "a | b");
    assert_unanswered(&a, echo_addr(&b), "a | b");
    // c still reaches both.
    assert_answered(&c, &a);
    assert_answered(&b, &c);

    // Partitions add up.
    lab.partition(&[&c], &[&a]);
    assert_unanswered(&c, echo_addr(&a), "a | b, a | c");
    assert_unanswered(&b, echo_addr(&a), "a | b, a | c");
    assert_answered(&b, &c);

    lab.heal();
    for (x, y) in [(&a, &b), (&b, &a), (&a, &c), (&c, &a), (&b, &c)] {
        assert_answered(x, y);
    }
}

#[test]
fn nat_hides_private_addresses() {
    let mut lab = Lab::new();
    let s = lab.host("s");
    let cone = lab.natted_host("cone", Nat::EndpointIndependent);
    let sym = lab.natted_host("sym", Nat::Symmetric);
    for n in [&cone, &sym] {
        assert_ne!(n.ip, n.public_ip);
        assert!(n.ip.is_private(), "{n:?}");
    }
    let _echoes = [PORT, PORT + 1, PORT + 2].map(|port| Echo::start(&s, port));

    // Out through the NAT: the public host sees the NAT router's public address.
    for n in [&cone, &sym] {
        for reply in assert_answered(n, &s) {
            assert_eq!(reply.seen_as.ip(), n.public_ip, "{} seen as", n.name);
        }
    }

    // One socket, three destinations: one outside port for the cone NAT, new ones for the
    // symmetric NAT.
    let destinations = [PORT, PORT + 1, PORT + 2].map(|port| SocketAddrV4::new(s.ip, port));
    let seen_ports = |n: &Host| -> Vec<u16> {
        exchange(n, &destinations, ANSWERED)
            .into_iter()
            .map(|r| r.expect("every echo comes back").seen_as.port())
            .collect()
    };
    let ports = seen_ports(&cone);
    assert!(
        ports.iter().all(|p| *p == ports[0]),
        "cone NAT ports {ports:?}"
    );
    let ports = seen_ports(&sym);
    assert!(
        ports.iter().any(|p| *p != ports[0]),
        "symmetric NAT ports {ports:?}"
    );

    // In: nobody reaches a private address, nor a NAT's public address unasked.
    let _inside = [&cone, &sym].map(|n| Echo::start(n, PORT));
    // Commands run in the host's namespace: it has its private address only.
    let output = cone
        .command("cat")
        .arg("/proc/net/fib_trie")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let routes = String::from_utf8_lossy(&output.stdout);
    assert!(routes.contains(&cone.ip.to_string()), "{routes}");
    assert!(!routes.contains(&cone.public_ip.to_string()), "{routes}");
    for n in [&cone, &sym] {
        let private = SocketAddrV4::new(n.ip, PORT);
        assert_unanswered(&s, private, "public host to a private address");
        let public = SocketAddrV4::new(n.public_ip, PORT);
        assert_unanswered(&s, public, "public host to a NAT, unasked");
    }
    let to_sym = SocketAddrV4::new(sym.ip, PORT);
    assert_unanswered(&cone, to_sym, "natted host to another's private address");
    let to_cone = SocketAddrV4::new(cone.ip, PORT);
    assert_unanswered(&sym, to_cone, "natted host to another's private address");
}

#[test]
fn dropping_the_lab_deletes_its_namespaces() {
    let mut lab = Lab::new();
    let a = lab.host("a");
    let n = lab.natted_host("n", Nat::Symmetric);
    lab.set_link(&a, &n, Link::delay(Duration::from_millis(1)));
    lab.partition(&[&a], &[&n]);
    let names = lab.namespaces();
    assert_eq!(names.len(), 4, "core, a, n's NAT router, n: {names:?}");
    let listed = list_namespaces();
    for name in &names {
        assert!(listed.contains(name), "{name} in {listed:?}");
    }
    drop(lab);
    let listed = list_namespaces();
    for name in &names {
        assert!(!listed.contains(name), "{name} still in {listed:?}");
    }

    // The same when the test using the lab panics.
    let names = Arc::new(Mutex::new(Vec::new()));
    let result = std::panic::catch_unwind({
        let names = names.clone();
        move || {
            let mut lab = Lab::new();
            let a = lab.host("a");
            let b = lab.host("b");
            lab.set_all_links(Link::delay(Duration::from_millis(1)));
            lab.partition(&[&a], &[&b]);
            *names.lock().unwrap() = lab.namespaces();
            panic!("a test failing on purpose, with its lab");
        }
    });
    assert!(result.is_err());
    let names = names.lock().unwrap().clone();
    assert_eq!(names.len(), 3, "{names:?}");
    let listed = list_namespaces();
    for name in &names {
        assert!(!listed.contains(name), "{name} still in {listed:?}");
    }
}

/// Rough cost of the emulator: blasts datagrams through the core with and without delay and
/// prints what arrived and the emulator thread's CPU time per packet. Run by hand:
/// `cargo test --test network -- --ignored --nocapture emulator_throughput`.
#[test]
#[ignore = "a measurement, run by hand"]
fn emulator_throughput() {
    let mut lab = Lab::new();
    let a = lab.host("a");
    let b = lab.host("b");
    for (what, link) in [
        ("no delay", Link::default()),
        ("10 ms delay", Link::delay(Duration::from_millis(10))),
    ] {
        // The emulator runs from the first non-perfect link on; a→b may have none.
        lab.set_link(&a, &b, Link::delay(Duration::from_millis(1)));
        lab.set_link(&a, &b, link);
        let before = lab.emulator_stats();
        let (ready_tx, ready_rx) = mpsc::channel();
        let receiver = b.spawn_in(move || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            let mut received = 0u64;
            let mut first = None;
            let mut last = Instant::now();
            while socket.recv(&mut buf).is_ok() {
                received += 1;
                last = Instant::now();
                first.get_or_insert(last);
            }
            (received, first.map(|f| last - f).unwrap_or_default())
        });
        ready_rx.recv().unwrap();
        const SENT: u64 = 200_000;
        let to = SocketAddrV4::new(b.ip, PORT);
        let send_time = a.run_in(move || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            let start = Instant::now();
            for i in 0..SENT {
                let _ = socket.send_to(&i.to_be_bytes(), to);
            }
            start.elapsed()
        });
        let (received, span) = receiver.join().unwrap();
        let after = lab.emulator_stats();
        let handled = (after.passed + after.delayed + after.dropped)
            - (before.passed + before.delayed + before.dropped);
        let cpu = after.cpu_time - before.cpu_time;
        println!(
            "{what}: sent {SENT} in {send_time:?}, received {received} over {span:?} \
             ({:.0} packets/s), emulator handled {handled} packets with {cpu:?} of CPU \
             ({:.2} µs/packet), kernel queue drops {}",
            received as f64 / span.as_secs_f64().max(1e-9),
            cpu.as_secs_f64() * 1e6 / handled.max(1) as f64,
            after.queue_full - before.queue_full,
        );
    }
}

#[test]
fn tcp_crosses_a_jittery_link_intact() {
    let mut lab = Lab::new();
    let a = lab.host("a");
    let b = lab.host("b");
    let link = Link {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(2),
        loss: 0.0,
    };
    lab.set_link(&a, &b, link);
    // Big writes make big (GSO) packets, which the kernel segments before queueing them.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    let expected = fnv1a(&data);
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = a.spawn_in(move || {
        let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut received).unwrap();
        std::io::Write::write_all(&mut stream, &fnv1a(&received).to_be_bytes()).unwrap();
    });
    ready_rx.recv().unwrap();
    let to = echo_addr(&a);
    let (connect_time, answer) = b.run_in(move || {
        let start = Instant::now();
        let mut stream = std::net::TcpStream::connect(to).unwrap();
        let connect_time = start.elapsed();
        std::io::Write::write_all(&mut stream, &data).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = [0u8; 8];
        std::io::Read::read_exact(&mut stream, &mut answer).unwrap();
        (connect_time, u64::from_be_bytes(answer))
    });
    server.join().unwrap();
    assert_eq!(answer, expected, "the server received other bytes");
    // The handshake is one round trip, each way at least 10 − 2 ms.
    assert!(
        connect_time >= Duration::from_millis(16),
        "connected in {connect_time:?}"
    );
    assert!(lab.emulator_stats().delayed > 100);
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}
