use iroh::Endpoint;
use iroh_raft::{
    ALPN,
    actors::wire::{CloseCode, Frame, Hello, PROTOCOL_VERSION, WireMessage, encode_frame},
    net::{bind_offline_endpoint, load_or_create_secret_key},
};

use crate::{
    support::{TestCluster, set},
    t70_admission::close_code,
};

fn frame(f: Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&f, &mut out).unwrap();
    out
}

fn hello(from: u64, to: u64, version: u32) -> Vec<u8> {
    frame(Frame::Hello(Hello {
        version,
        from,
        to,
        incarnation: 1,
    }))
}

/// Connects to node 1 as member 3, writes `bytes` on a consensus stream and returns the close
/// code node 1 answers with.
async fn send_as_member_3(
    ep: &Endpoint,
    cluster: &TestCluster,
    bytes: Vec<u8>,
) -> Option<CloseCode> {
    let conn = ep.connect(cluster.addrs[0].0.clone(), ALPN).await.unwrap();
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    close_code(conn.closed().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_the_connection_and_the_node_keeps_serving() {
    // Members 1..=3; 1 and 2 run. The test speaks as member 3, which passes admission.
    let cluster = TestCluster::start_with(3, 2).await;
    let key = load_or_create_secret_key(&cluster.data_dir(2)).unwrap();
    let ep = bind_offline_endpoint(key, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    let garbage = [vec![8, 0, 0, 0], vec![0xab; 8]].concat();
    let cases: Vec<(&str, Vec<u8>, CloseCode)> = vec![
        (
            "garbage after hello",
            [hello(3, 1, PROTOCOL_VERSION), garbage.clone()].concat(),
            CloseCode::MalformedFrame,
        ),
        (
            "garbage instead of hello",
            garbage,
            CloseCode::MalformedFrame,
        ),
        (
            "oversized length",
            [
                hello(3, 1, PROTOCOL_VERSION),
                u32::MAX.to_le_bytes().to_vec(),
            ]
            .concat(),
            CloseCode::FrameTooLarge,
        ),
        (
            "no hello",
            frame(Frame::Raft(vec![])),
            CloseCode::ProtocolViolation,
        ),
        (
            "hello claims another sender",
            hello(2, 1, PROTOCOL_VERSION),
            CloseCode::ProtocolViolation,
        ),
        (
            "unknown version",
            hello(3, 1, PROTOCOL_VERSION + 100),
            CloseCode::VersionMismatch,
        ),
        (
            "message spoofs member 2",
            [
                hello(3, 1, PROTOCOL_VERSION),
                frame(Frame::Raft(vec![WireMessage {
                    msg_type: 8,
                    from: 2,
                    to: 1,
                    term: 99,
                    ..Default::default()
                }])),
            ]
            .concat(),
            CloseCode::ProtocolViolation,
        ),
        (
            "local message type",
            [
                hello(3, 1, PROTOCOL_VERSION),
                frame(Frame::Raft(vec![WireMessage {
                    msg_type: 0,
                    from: 3,
                    to: 1,
                    term: 99,
                    ..Default::default()
                }])),
            ]
            .concat(),
            CloseCode::MalformedFrame,
        ),
    ];
    for (name, bytes, expected) in cases {
        assert_eq!(
            send_as_member_3(&ep, &cluster, bytes).await,
            Some(expected),
            "{name}"
        );
    }
    ep.close().await;

    // Node 1 still serves, and the real member 3 can still start and catch up.
    let leader = cluster.wait_for_leader().await;
    cluster.node(leader).propose(set("k", "v")).await.unwrap();
    let mut cluster = cluster;
    let addr = *cluster.addrs[2].0.ip_addrs().next().unwrap();
    let node3 = cluster.builder(2).bind_address(addr).build().await.unwrap();
    cluster.nodes[2] = Some(node3);
    let commit = cluster.node(leader).status().await.unwrap().commit_index;
    cluster.wait_applied(commit).await;
    assert_eq!(
        cluster
            .node(3)
            .query(|kv| kv.get("k").cloned())
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
    cluster.shutdown().await;
}
