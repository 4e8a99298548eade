//! The agent's HTTP endpoints: probes for Kubernetes and a node-readiness gate, and the status.
//!
//! - `/livez`: the agent's loop has not ended, and the process's runtime answers.
//! - `/readyz`: the agent can do its job: containerd answers, a list is in force, and a pass
//!   completed recently (or the first one is not overdue). A registry that is down does not make
//!   the agent unready: that is what `/warmz` is for, and one unreachable registry must not hold
//!   up `kubectl rollout status`.
//! - `/warmz`: 200 only when a pod using any listed image starts without the network: every
//!   image was found warm (or stale: present and usable, its registry just could not be asked)
//!   by the last pass and is still on the node now (looked up in containerd, without the
//!   network, at most every few seconds). Else 503 and one line naming what is not warm and why.
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

/// Connections served at once; more are closed at once (probes need one or two).
const MAX_CONNECTIONS: usize = 64;

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
    let mut connections = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let endpoints = endpoints.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let endpoints = endpoints.clone();
                async move {
                    let (code, content_type, body) = endpoints.answer(request.uri().path()).await;
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
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            // A probe connection that never finishes must not hold a task forever.
            let _ = tokio::time::timeout(Duration::from_secs(30), served).await;
        });
        // Reap finished connections as they go.
        while connections.try_join_next().is_some() {}
    }
}
