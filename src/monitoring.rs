//! The node's monitoring listener: an HTTP/1.1 server (hyper) on an address of the operator's
//! choosing, serving
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | every metric of the node's registry (ours and iroh's), OpenMetrics text |
//! | `GET /livez`, `/livez/<check>` | 200 `ok` while the process should not be restarted, else 503 |
//! | `GET /readyz`, `/readyz/<check>` | 200 `ok` while the node can take traffic, else 503 |
//! | `GET /health` | JSON: `{"health":"true","reason":"",…}` (etcd's shape, with the checks) |
//!
//! `?verbose` lists each check as `[+]name ok` / `[-]name failed: reason` (failures always
//! do). An unknown path or check is 404, a method other than GET or HEAD is 405. The checks
//! themselves are the runtime's ([`NodeCalls::livez`], [`NodeCalls::readyz`]); this module only
//! speaks HTTP.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use iroh_raft_actors::{HealthReport, LIVEZ_CHECKS, NodeCalls, READYZ_CHECKS, StateMachine};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};
use tracing::{debug, warn};

/// The content type of `/metrics` (Prometheus negotiates OpenMetrics).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections served at once; one more is closed at once (a probe fails fast, never hangs).
const MAX_CONNECTIONS: usize = 64;
/// A client has this long to send a request's headers (on a kept-alive connection too).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection lives: a client that stops reading cannot hold a slot for ever.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A running monitoring listener. Dropping it (or [`Self::close`]) stops it.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    /// Taken by [`Self::close`] (the lock is never held across an await).
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl MetricsServer {
    /// Binds `addr` and serves the node that `calls` reach (for a node the builder did not
    /// build; the builder's `metrics_addr` does this itself).
    pub async fn start<S: StateMachine>(
        addr: SocketAddr,
        calls: NodeCalls<S>,
    ) -> std::io::Result<Self> {
        Ok(Self::serve(TcpListener::bind(addr).await?, calls))
    }

    /// Serves the node that `calls` reach on a bound listener.
    pub fn serve<S: StateMachine>(listener: TcpListener, calls: NodeCalls<S>) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let task = tokio::spawn(accept_loop(listener, calls));
        Self {
            addr,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// The address it listens on (the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening, drops every open connection, and returns once the port is free.
    pub async fn close(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            // The listener and the connections are dropped with the task.
            let _ = task.await;
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

async fn accept_loop<S: StateMachine>(listener: TcpListener, calls: NodeCalls<S>) {
    // The connections live in this set: aborting the accept loop aborts them all.
    let mut connections = tokio::task::JoinSet::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, never stop serving.
                warn!(error = %e, "monitoring listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "monitoring listener: too many connections, closing a new one");
            continue;
        };
        let calls = calls.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let calls = calls.clone();
                async move { Ok::<_, Infallible>(route(&calls, req).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "monitoring connection ended with an error")
                }
                Err(_) => {
                    debug!(%peer, "monitoring connection closed after {CONNECTION_TIMEOUT:?}")
                }
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

/// One request's answer.
async fn route<S: StateMachine>(
    calls: &NodeCalls<S>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let verbose = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    });
    let path = req.uri().path();
    let (set, check) = match path.split_once('/').map(|(_, rest)| rest.split_once('/')) {
        Some(Some((set, check))) => (set, Some(check)),
        _ => (path.trim_start_matches('/'), None),
    };
    match (set, check) {
        ("metrics", None) => {
            let mut resp = Response::new(Full::new(Bytes::from(calls.metrics().encode())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
            );
            resp
        }
        ("livez", check) if check.is_none_or(|c| LIVEZ_CHECKS.contains(&c)) => {
            probe(calls.livez(check).await, verbose)
        }
        ("readyz", check) if check.is_none_or(|c| READYZ_CHECKS.contains(&c)) => {
            probe(calls.readyz(check).await, verbose)
        }
        ("health", None) => {
            let status = calls.health_status().await;
            let code = if status.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut json = serde_json::to_value(&status).unwrap_or_default();
            if let Some(map) = json.as_object_mut() {
                map.insert("health".into(), status.healthy.to_string().into());
            }
            let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
            *resp.status_mut() = code;
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn probe(report: HealthReport, verbose: bool) -> Response<Full<Bytes>> {
    if report.is_ok() && !verbose {
        return text(StatusCode::OK, "ok\n");
    }
    let code = if report.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(code, report.verbose())
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
