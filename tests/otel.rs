//! With the `otel` feature: a proposal made on a follower is one trace spanning the nodes (its
//! `propose`, the leader's `append`, every node's `apply`; the `persist` and `replicate` spans
//! that carried it link to it). An
//! OTLP/HTTP receiver of our own (a hyper server decoding the protobuf requests with
//! `opentelemetry-proto`) collects what three nodes export.
//!
//! Run with `cargo test --features otel --test otel` (the README's test command does).

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use iroh_raft::{
    KeyValueStore, KvCommand, Preset, Role, TicketRole, mgmt::IrohRaftManagementClient,
    start_local_cluster,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value, trace::v1::Span,
};
use prost::Message;

/// Every span received, in order.
type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP receiver on loopback: POST /v1/traces with a protobuf body.
async fn receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let spans = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let spans = spans.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let spans = spans.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        if let Ok(request) =
                            ExportTraceServiceRequest::decode(body.unwrap_or_default())
                        {
                            let mut spans = spans.lock().unwrap();
                            for rs in request.resource_spans {
                                for ss in rs.scope_spans {
                                    spans.extend(ss.spans);
                                }
                            }
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

fn node_of(span: &Span) -> Option<i64> {
    span.attributes
        .iter()
        .find(|kv| kv.key == "node")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::IntValue(n) => Some(*n),
            // tracing-opentelemetry records a u64 as a string.
            Value::StringValue(s) => s.parse().ok(),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_made_on_a_follower_is_one_trace_across_nodes() {
    let (addr, received) = receiver().await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let endpoint = format!("http://{addr}");
    let nodes = start_local_cluster(&dirs, |_, b| {
        b.state_machine_factory(KeyValueStore::new)
            .preset(Preset::Testing)
            .otlp_endpoint(endpoint.clone())
    })
    .await
    .unwrap();
    let follower = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            for n in &nodes {
                if let Ok(s) = n.status().await
                    && s.role == Role::Follower
                    && s.leader.is_some()
                {
                    return n;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a follower that knows the leader");
    let follower_id = follower.node_id() as i64;
    follower
        .propose(KvCommand::Set {
            key: "traced".into(),
            value: "yes".into(),
        })
        .await
        .unwrap();
    // Every node applies it; then the exporter sends what it holds.
    let target = follower.status().await.unwrap().applied_index;
    for n in &nodes {
        tokio::time::timeout(Duration::from_secs(20), async {
            while n.status().await.map(|s| s.applied_index).unwrap_or(0) < target {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("every node applies the write");
    }

    // The follower's `propose` span starts the trace; the leader's `append` and every node's
    // `apply` spans belong to it.
    let one_trace = spans_until(&received, "a trace spanning the nodes", |spans| {
        let propose = spans
            .iter()
            .find(|s| s.name == "propose" && node_of(s) == Some(follower_id))?;
        let mut by_node: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        for s in spans.iter().filter(|s| s.trace_id == propose.trace_id) {
            if let Some(node) = node_of(s) {
                by_node.entry(node).or_default().insert(s.name.clone());
            }
        }
        let applied_on = by_node.values().filter(|n| n.contains("apply")).count();
        let appended = by_node.values().any(|n| n.contains("append"));
        // Spans that serve many proposals link to each: the group commits that made it
        // durable, the sends that carried it to the followers.
        let linked = |name: &str| {
            spans
                .iter()
                .any(|s| s.name == name && s.links.iter().any(|l| l.trace_id == propose.trace_id))
        };
        (applied_on == 3 && appended && linked("persist") && linked("replicate")).then_some(by_node)
    })
    .await;
    assert!(one_trace.len() >= 2, "{one_trace:?}");
    assert!(one_trace[&follower_id].contains("propose"), "{one_trace:?}");

    // A remote client's proposal: the trace starts in the client, and the node that serves
    // the call continues it (`serve`, then its own `propose`), down to every node's `apply`.
    let ticket = nodes[0]
        .ticket(TicketRole::Admin, Duration::from_secs(600))
        .await
        .unwrap();
    let client = IrohRaftManagementClient::connect(&ticket).await.unwrap();
    let set = KvCommand::Set {
        key: "remote".into(),
        value: "traced".into(),
    };
    let _: iroh_raft::KvResponse = client.propose(&set).await.unwrap();
    let remote_trace = spans_until(&received, "a remote proposal's trace", |spans| {
        let root = spans
            .iter()
            .find(|s| s.name == "propose" && node_of(s).is_none())?;
        let same: Vec<&Span> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .collect();
        let served = same.iter().any(|s| s.name == "serve");
        let applied: BTreeSet<i64> = same
            .iter()
            .filter(|s| s.name == "apply")
            .filter_map(|s| node_of(s))
            .collect();
        (served && applied.len() == 3).then(|| {
            same.iter()
                .map(|s| (s.name.clone(), node_of(s)))
                .collect::<Vec<_>>()
        })
    })
    .await;
    // The serving node's own `propose` is in the client's trace, not the root of a new one.
    assert!(
        remote_trace
            .iter()
            .any(|(name, node)| name == "propose" && node.is_some()),
        "{remote_trace:?}"
    );
    client.close().await;
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}

/// Flushes the exporter and looks at every span received until `found` finds what it wants
/// (20 s at most: then the spans received are the panic's message).
async fn spans_until<T>(
    received: &Received,
    what: &str,
    found: impl Fn(&[Span]) -> Option<T>,
) -> T {
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            tokio::task::spawn_blocking(iroh_raft::telemetry::flush)
                .await
                .unwrap();
            let spans = received.lock().unwrap().clone();
            if let Some(t) = found(&spans) {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| {
        let spans = received.lock().unwrap();
        let seen: Vec<_> = spans.iter().map(|s| (s.name.clone(), node_of(s))).collect();
        panic!("no {what}; spans received: {seen:?}")
    })
}
