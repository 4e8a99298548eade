//! The agent's HTTP endpoints: probes for Kubernetes and a node-readiness gate, and the status.
//!
//! - `/livez`: the agent's loop has not ended, and the process's runtime answers.
//! - `/readyz`: the agent can do its job: containerd answers, a list is in force, and a pass
//!   completed recently (or the first one is not overdue). A registry that is down does not make
//!   the agent unready: that is what `/warmz` is for, and one unreachable registry must not hold
//!   up `kubectl rollout status`.
//! - `/warmz`: 200 only when a pod using any listed image starts without the network: every
//!   image was found warm (or stale: present and usable, its registry just could not be asked)
//!   by its last check (a pass publishes each image's as its pull ends) and is still on the node
//!   now (looked up in containerd, without the network, at most every few seconds). Else 503
//!   and one line naming what is not warm and why.
//! - `/status`: the status file's JSON.
//! - `/metrics`: Prometheus metrics (OpenMetrics text): the process's counters
//!   ([`crate::metrics`]) and the agent's state now ([`super::metrics`]).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::NodeState;
use super::status::{ImageState, Status};
use crate::pull::Puller;
use crate::reference::Reference;
use crate::store::Store;

/// How long a `/warmz` answer is reused: the live lookup reads a few records per image.
const WARMTH_TTL: Duration = Duration::from_secs(5);

/// How long the live lookup behind `/warmz` may take.
const WARMTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How the endpoints keep clients that hold connections (slow, stuck or hostile) from starving
/// the others: the kubelet's probes need one or two connections, answered within seconds.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Connections served at once; more are closed at once.
    connections: usize,
    /// How long a client may take to send a request head, and an idle connection may wait for
    /// its next one.
    head: Duration,
    /// How long one connection may last, however busy its client keeps it.
    connection: Duration,
}

/// 64 connections, 10 s to send a request head, 30 s a connection: a client sending its head a
/// byte at a time holds a slot 10 s at most, one sending request after request 30 s.
const LIMITS: Limits = Limits {
    connections: 64,
    head: Duration::from_secs(10),
    connection: Duration::from_secs(30),
};

/// How long containerd may take to answer `/readyz`'s version call.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(2);

/// How many not-warm images `/warmz` names before it says how many more.
const NAMED: usize = 5;

/// What the endpoints read.
pub struct Endpoints {
    /// The agent's status, as last published.
    pub status: watch::Receiver<Status>,
    /// containerd, asked by `/readyz`.
    pub store: Store,
    /// Looks images up on the node for `/warmz`.
    pub puller: Arc<Puller>,
    /// Cleared when the agent's loop ends.
    pub alive: Arc<AtomicBool>,
    /// A pass older than this (or no pass this long after start) makes the agent unready.
    pub pass_overdue: Duration,
    /// When the agent started.
    pub started: Instant,
    warmth: Mutex<Option<(Instant, Result<usize, String>)>>,
}

impl Endpoints {
    /// Endpoints over the agent's published status.
    pub fn new(
        status: watch::Receiver<Status>,
        store: Store,
        puller: Arc<Puller>,
        alive: Arc<AtomicBool>,
        pass_overdue: Duration,
    ) -> Endpoints {
        Endpoints {
            status,
            store,
            puller,
            alive,
            pass_overdue,
            started: Instant::now(),
            warmth: Mutex::new(None),
        }
    }

    async fn answer(&self, path: &str) -> (StatusCode, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/livez" => match self.alive.load(Ordering::Relaxed) {
                true => (StatusCode::OK, TEXT, "ok\n".into()),
                false => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "the agent's loop ended\n".into(),
                ),
            },
            "/readyz" => match self.unready().await {
                None => (StatusCode::OK, TEXT, "ok\n".into()),
                Some(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
            },
            "/warmz" => match self.warmth().await {
                Ok(n) => (
                    StatusCode::OK,
                    TEXT,
                    format!("all {n} listed images warm\n"),
                ),
                Err(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
            },
            "/metrics" => {
                let now = NodeState {
                    status: self.status.borrow().clone(),
                    filesystem: self.puller.space().and_then(|s| s.usage().ok()),
                };
                (
                    StatusCode::OK,
                    crate::metrics::CONTENT_TYPE,
                    crate::metrics::encode(now),
                )
            }
            "/status" => {
                let json = self.status.borrow().to_bounded_json();
                let text = String::from_utf8(json).unwrap_or_default();
                (StatusCode::OK, "application/json", text)
            }
            _ => (
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: the agent serves /livez, /readyz, /warmz, /status, /metrics\n".into(),
            ),
        }
    }

    /// Why the agent is not ready, if it is not.
    async fn unready(&self) -> Option<String> {
        let version = tokio::time::timeout(CONTAINERD_TIMEOUT, self.store.version()).await;
        match version {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Some(format!("containerd: {}", crate::error_chain(&e))),
            Err(_) => return Some("containerd does not answer".into()),
        }
        let status = self.status.borrow().clone();
        if status.passes == 0 && status.images.is_empty() {
            if let Some(e) = &status.list_error {
                return Some(format!("no usable prepull list: {e}"));
            }
        }
        let since_pass = status
            .last_pass_at
            .map_or(self.started.elapsed(), |t| t.elapsed());
        if since_pass > self.pass_overdue {
            return Some(format!(
                "no pass completed in the last {}",
                humantime::format_duration(Duration::from_secs(since_pass.as_secs()))
            ));
        }
        None
    }

    /// `Ok(number of images)` when every listed image is warm, else why not.
    async fn warmth(&self) -> Result<usize, String> {
        let mut cached = self.warmth.lock().await;
        if let Some((at, answer)) = cached.as_ref() {
            if at.elapsed() < WARMTH_TTL {
                return answer.clone();
            }
        }
        let answer = match tokio::time::timeout(WARMTH_TIMEOUT, self.look()).await {
            Ok(answer) => answer,
            Err(_) => Err("cannot tell: containerd does not answer".to_string()),
        };
        *cached = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn look(&self) -> Result<usize, String> {
        let status = self.status.borrow().clone();
        if status.passes == 0 && status.images.is_empty() {
            return Err(match &status.list_error {
                Some(e) => format!("no usable prepull list: {e}"),
                None => "no prepull list loaded yet".into(),
            });
        }
        let mut cold = Vec::new();
        for image in &status.images {
            let why = match image.state {
                ImageState::Warm | ImageState::Stale if image.start_error.is_some() => {
                    Some(format!(
                        "cannot start: {}",
                        image.start_kind.unwrap_or("its command")
                    ))
                }
                ImageState::Warm | ImageState::Stale => {
                    // Still there? Removed or collected since the pass is not warm.
                    let present = match Reference::parse(&image.image) {
                        Ok(r) => self.puller.on_node(&r).await.is_some(),
                        Err(_) => false,
                    };
                    (!present).then(|| "gone from the node".to_string())
                }
                state => Some(match image.kind {
                    Some(kind) => format!("{}, {kind}", state.as_str()),
                    None => state.as_str().to_string(),
                }),
            };
            if let Some(why) = why {
                cold.push(format!("{} ({why})", image.image));
            }
        }
        let total = status.images.len();
        if cold.is_empty() {
            return Ok(total);
        }
        let more = cold.len().saturating_sub(NAMED);
        let mut line = format!(
            "{} of {total} not warm: {}",
            cold.len(),
            cold.into_iter().take(NAMED).collect::<Vec<_>>().join(", ")
        );
        if more > 0 {
            line.push_str(&format!(" and {more} more"));
        }
        Err(line)
    }
}

/// Serves the endpoints on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, endpoints: Arc<Endpoints>, stop: CancellationToken) {
    let answer = move |path: String| {
        let endpoints = endpoints.clone();
        async move { endpoints.answer(&path).await }
    };
    serve_within(listener, LIMITS, stop, answer).await;
}

/// Serves `answer` (the status, content type and body for a request's path) on `listener`
/// under `limits` until `stop` is cancelled.
async fn serve_within<F, A>(
    listener: TcpListener,
    limits: Limits,
    stop: CancellationToken,
    answer: F,
) where
    F: Fn(String) -> A + Clone + Send + Sync + 'static,
    A: std::future::Future<Output = (StatusCode, &'static str, String)> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection on the agent's listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let answer = answer.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let answered = answer(request.uri().path().to_string());
                async move {
                    let (code, content_type, body) = answered.await;
                    let response = Response::builder()
                        .status(code)
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_default();
                    Ok::<_, Infallible>(response)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.head)
                .serve_connection(TokioIo::new(stream), service);
            // A connection that never finishes must not hold a slot forever.
            let _ = tokio::time::timeout(limits.connection, served).await;
        });
        // Reap finished connections as they go.
        while connections.try_join_next().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;

    const REQUEST: &[u8] = b"GET /livez HTTP/1.1\r\nHost: agent\r\n\r\n";

    /// Serves "ok" under `limits` on a loopback port; the server stops when the token drops.
    async fn server(limits: Limits) -> (String, tokio_util::sync::DropGuard) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("its address").to_string();
        let stop = CancellationToken::new();
        let answer = |_path: String| async { (StatusCode::OK, "text/plain", "ok\n".to_string()) };
        tokio::spawn(serve_within(listener, limits, stop.clone(), answer));
        (addr, stop.drop_guard())
    }

    /// Reads one answer to [`REQUEST`] on `stream`: `true` when it came, `false` when the
    /// connection was closed (or reset) first.
    async fn answered(stream: &mut TcpStream) -> bool {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("an answer or a close within 10 s");
            match read {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.ends_with(b"\r\n\r\nok\n") {
                return true;
            }
        }
    }

    /// Whether a new connection gets an answer to [`REQUEST`].
    async fn probe(addr: &str) -> bool {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            return false;
        };
        stream.write_all(REQUEST).await.is_ok() && answered(&mut stream).await
    }

    /// A client sending a request head a byte every 100 ms, never finishing it.
    async fn slowloris(addr: &str) -> tokio::task::JoinHandle<Duration> {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nX-Slow: ")
            .await
            .expect("send");
        let started = Instant::now();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            // Until the server closes the connection: how long that took.
            loop {
                if stream.write_all(b"a").await.is_err() {
                    return started.elapsed();
                }
                let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf));
                if let Ok(Ok(0) | Err(_)) = read.await {
                    return started.elapsed();
                }
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_slow_to_send_their_heads_hold_the_slots_only_until_the_head_timeout() {
        let limits = Limits {
            connections: 3,
            head: Duration::from_millis(800),
            connection: Duration::from_secs(60),
        };
        let (addr, _stop) = server(limits).await;
        assert!(probe(&addr).await);
        let started = Instant::now();
        let mut slow = Vec::new();
        for _ in 0..limits.connections {
            slow.push(slowloris(&addr).await);
        }
        // Every slot is taken: a newcomer is closed unanswered.
        assert!(
            !probe(&addr).await,
            "more connections than the limit served"
        );
        for client in slow {
            let held = client.await.expect("the slow client");
            assert!(
                held < limits.head + Duration::from_secs(2),
                "a client never finishing its head held its connection {held:?}"
            );
        }
        assert!(
            probe(&addr).await,
            "served again once the slow clients were cut"
        );
        assert!(started.elapsed() < limits.head + Duration::from_secs(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_kept_busy_is_cut_at_the_connection_limit() {
        let limits = Limits {
            connections: 1,
            head: Duration::from_secs(60),
            connection: Duration::from_millis(800),
        };
        let (addr, _stop) = server(limits).await;
        let mut busy = TcpStream::connect(&addr).await.expect("connect");
        let started = Instant::now();
        // Request after request on one connection, each answered, each head sent at once.
        let mut requests = 0;
        loop {
            if busy.write_all(REQUEST).await.is_err() || !answered(&mut busy).await {
                break;
            }
            requests += 1;
            if requests == 1 {
                assert!(
                    !probe(&addr).await,
                    "more connections than the limit served"
                );
            }
            assert!(
                started.elapsed() < limits.connection + Duration::from_secs(3),
                "a busy connection lasted {:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(requests > 1, "{requests} requests answered");
        assert!(
            probe(&addr).await,
            "served again once the busy connection was cut"
        );
    }
}
