//! A recording HTTP/1.1 reverse proxy in front of a real registry: every request is logged with
//! its status and the response body bytes streamed to the client. Each request first goes through
//! a hook ([`Proxy::set_hook`]) that decides to forward it or answer it itself, which is where
//! fault injection plugs in.
//!
//! A cut ([`Shape::cut_after`]) is exact: the client receives exactly that many body bytes, then
//! the connection closes. hyper drops whatever it still buffers when a body fails, so the cut
//! waits until the connection has written everything before it (see [`Flushes`]).
//!
//! Each record carries when its request arrived and when its body was done (for request rates
//! over time and requests in flight), and, when a source resolver is set
//! ([`Proxy::set_source_resolver`]), which client sent it: the resolver names the process behind
//! each connection's peer address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use futures_util::{Stream, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST, LOCATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// One request as the client saw it.
#[derive(Clone, Debug)]
pub struct Record {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub status: u16,
    /// Response body bytes handed to the client so far (final once the response completed).
    pub response_body_bytes: u64,
    pub authorization: Option<String>,
    /// The request's `Range` header, e.g. `bytes=1234-`.
    pub range: Option<String>,
    /// When the request's head arrived.
    pub at: std::time::Instant,
    /// When its response body was done (handed to the socket, or dropped), if it is.
    pub ended: Option<std::time::Instant>,
    /// Who sent it, as the source resolver named the connection's client.
    pub source: Option<String>,
}

impl Record {
    /// The first byte a `Range: bytes=N-` request asks for; 0 without a range.
    pub fn range_start(&self) -> u64 {
        range_start(self.range.as_deref())
    }
}

/// The first byte of a `Range: bytes=N-` header value; 0 without one.
fn range_start(range: Option<&str>) -> u64 {
    range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What the hook sees of a request.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    /// Who sent it, as the source resolver named the connection's client.
    pub source: Option<String>,
}

/// What to do with a request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Pass it to the upstream registry.
    Forward,
    /// Pass it to the upstream registry and add these headers to its answer (e.g. rate-limit
    /// headers a public registry sends).
    ForwardWith { headers: Vec<(String, String)> },
    /// Answer it here without contacting upstream.
    Respond { status: u16, body: Vec<u8> },
    /// Answer it here with extra headers (e.g. a `WWW-Authenticate` challenge, `Retry-After`).
    RespondWith {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Forward it, but deliver the response body slowly and/or break the connection part way.
    Shape(Shape),
}

/// How a forwarded response body is delivered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shape {
    /// Delivery rate in bytes per second (`None`: as fast as upstream sends).
    pub bytes_per_sec: Option<u64>,
    /// Break the connection after exactly this many body bytes have been written to it.
    pub cut_after: Option<u64>,
}

pub type Hook = Arc<dyn Fn(&RequestInfo) -> Action + Send + Sync>;

/// Names the client behind a connection from its peer address and the proxy's own address (e.g.
/// the process owning that socket); `None` when it cannot tell.
pub type SourceResolver = Arc<dyn Fn(SocketAddr, SocketAddr) -> Option<String> + Send + Sync>;

/// A record whose byte count grows while its body streams.
struct Entry {
    method: String,
    path: String,
    status: u16,
    authorization: Option<String>,
    range: Option<String>,
    bytes: AtomicU64,
    at: std::time::Instant,
    ended: Mutex<Option<std::time::Instant>>,
    source: Option<String>,
}

struct Shared {
    upstream: String,
    /// `host:port` of the proxy itself, for rewriting upstream Locations.
    host: String,
    client: reqwest::Client,
    log: Mutex<Vec<Arc<Entry>>>,
    hook: RwLock<Option<Hook>>,
    resolver: RwLock<Option<SourceResolver>>,
    connections: Arc<Gauge>,
    requests: Arc<Gauge>,
}

/// Things that begin and end (client connections, requests being answered): how many began since
/// the last [`Proxy::clear`], are going on now, and the most at once since then.
#[derive(Default)]
struct Gauge {
    began: AtomicU64,
    now: AtomicU64,
    peak: AtomicU64,
}

impl Gauge {
    /// One more begins; it ends when the guard is dropped.
    fn begin(self: &Arc<Self>) -> Ongoing {
        self.began.fetch_add(1, Ordering::SeqCst);
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Ongoing(self.clone())
    }

    fn reset(&self) {
        self.began.store(0, Ordering::SeqCst);
        self.peak
            .store(self.now.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn read(&self) -> (u64, u64) {
        (
            self.began.load(Ordering::SeqCst),
            self.peak.load(Ordering::SeqCst),
        )
    }
}

/// Something a [`Gauge`] counts as going on, until dropped.
struct Ongoing(Arc<Gauge>);

impl Drop for Ongoing {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What [`Proxy::connections`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connections {
    /// Client connections accepted.
    pub accepted: u64,
    /// The most client connections open at the same time (busy or idle).
    pub peak: u64,
    /// The most requests being answered at the same time (from their head until the last byte
    /// of their body is handed to the socket).
    pub peak_requests: u64,
}

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy's loopback port");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            host: addr.to_string(),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("build upstream HTTP client"),
            log: Mutex::new(Vec::new()),
            hook: RwLock::new(None),
            resolver: RwLock::new(None),
            connections: Arc::default(),
            requests: Arc::default(),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy { addr, shared, task }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn records(&self) -> Vec<Record> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|e| Record {
                method: e.method.clone(),
                path: e.path.clone(),
                status: e.status,
                response_body_bytes: e.bytes.load(Ordering::SeqCst),
                authorization: e.authorization.clone(),
                range: e.range.clone(),
                at: e.at,
                ended: *e.ended.lock().unwrap_or_else(|p| p.into_inner()),
                source: e.source.clone(),
            })
            .collect()
    }

    /// Forgets the requests and connections seen so far (connections still open stay counted
    /// as open).
    pub fn clear(&self) {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.shared.connections.reset();
        self.shared.requests.reset();
    }

    /// Client connections since the start or the last [`Proxy::clear`].
    pub fn connections(&self) -> Connections {
        let (accepted, peak) = self.shared.connections.read();
        let (_, peak_requests) = self.shared.requests.read();
        Connections {
            accepted,
            peak,
            peak_requests,
        }
    }

    /// Total response body bytes of GETs whose path contains `/blobs/sha256:`.
    pub fn blob_bytes(&self) -> u64 {
        self.records()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/blobs/sha256:"))
            .map(|r| r.response_body_bytes)
            .sum()
    }

    /// Installs the per-request hook (replacing any previous one).
    pub fn set_hook(&self, hook: impl Fn(&RequestInfo) -> Action + Send + Sync + 'static) {
        *self.shared.hook.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    }

    /// Cuts blob GETs at planned offsets: each GET of a blob in `plan` (from its start, or
    /// resumed with a `Range`) is cut at the next planned offset past where it starts. Returns
    /// the cuts not made yet.
    pub fn cut_blobs_at(
        &self,
        plan: std::collections::HashMap<String, Vec<u64>>,
    ) -> Arc<Mutex<std::collections::HashMap<String, Vec<u64>>>> {
        let pending = Arc::new(Mutex::new(plan));
        let hook_pending = pending.clone();
        self.set_hook(move |request| {
            let Some(digest) = request
                .path
                .rsplit('/')
                .next()
                .filter(|d| d.starts_with("sha256:"))
            else {
                return Action::Forward;
            };
            let start = range_start(request.headers.get("range").and_then(|v| v.to_str().ok()));
            let mut pending = hook_pending.lock().unwrap_or_else(|p| p.into_inner());
            let Some(cuts) = pending.get_mut(digest) else {
                return Action::Forward;
            };
            cuts.retain(|c| *c > start);
            if cuts.is_empty() {
                return Action::Forward;
            }
            let cut = cuts.remove(0);
            Action::Shape(Shape {
                bytes_per_sec: None,
                cut_after: Some(cut - start),
            })
        });
        pending
    }

    /// Back to forwarding everything.
    pub fn clear_hook(&self) {
        *self.shared.hook.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Names the client of each connection accepted from now on (see [`SourceResolver`]); its
    /// requests carry the name in [`Record::source`] and [`RequestInfo::source`].
    pub fn set_source_resolver(
        &self,
        resolver: impl Fn(SocketAddr, SocketAddr) -> Option<String> + Send + Sync + 'static,
    ) {
        *self
            .shared
            .resolver
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(resolver));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet), so this ends them too.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => continue,
        };
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        let resolver = shared
            .resolver
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let local = stream.local_addr().ok();
        let flushes = Arc::new(Flushes::default());
        let io = TokioIo::new(Tracked {
            inner: stream,
            flushes: flushes.clone(),
        });
        let open = shared.connections.begin();
        connections.spawn(async move {
            // Named while the client still holds the connection (it is serving nothing yet).
            let source: Option<Arc<str>> = match (resolver, local) {
                (Some(resolve), Some(local)) => {
                    tokio::task::spawn_blocking(move || resolve(peer, local))
                        .await
                        .ok()
                        .flatten()
                        .map(Arc::from)
                }
                _ => None,
            };
            let service =
                service_fn(move |req| handle(shared.clone(), flushes.clone(), source.clone(), req));
            let _ = http1::Builder::new().serve_connection(io, service).await;
            drop(open);
        });
    }
}

/// Counts the flushes of one connection's socket. hyper flushes the socket only once its own write
/// buffer is empty, so a flush counted after a body chunk was handed over means the chunk is in
/// the socket (and reaches the client even if the connection closes next).
#[derive(Default)]
struct Flushes {
    count: AtomicU64,
    waker: AtomicWaker,
}

impl Flushes {
    /// Waits for a flush after the count was `seen`.
    async fn after(&self, seen: u64) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.count.load(Ordering::SeqCst) > seen {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A connection's socket that counts its flushes.
struct Tracked {
    inner: TcpStream,
    flushes: Arc<Flushes>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(poll, Poll::Ready(Ok(()))) {
            self.flushes.count.fetch_add(1, Ordering::SeqCst);
            self.flushes.waker.wake();
        }
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn handle(
    shared: Arc<Shared>,
    flushes: Arc<Flushes>,
    source: Option<Arc<str>>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let answering = shared.requests.begin();
    let at = std::time::Instant::now();
    let info = RequestInfo {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into()),
        headers: req.headers().clone(),
        source: source.as_deref().map(str::to_string),
    };
    let hook = shared
        .hook
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let action = hook.map(|h| h(&info)).unwrap_or(Action::Forward);
    let response = match action {
        Action::Forward => forward(&shared, req, &info).await,
        Action::ForwardWith { headers } => {
            let mut response = forward(&shared, req, &info).await;
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Action::Shape(shape) => forward(&shared, req, &info)
            .await
            .map(|body| shaped(body, shape, flushes)),
        Action::Respond { status, body } => respond(status, &[], body),
        Action::RespondWith {
            status,
            headers,
            body,
        } => respond(status, &headers, body),
    };
    Ok(record(&shared, &info, at, response, answering))
}

fn respond(status: u16, headers: &[(String, String)], body: Vec<u8>) -> Response<ProxyBody> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-length", body.len());
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .expect("build hook response")
}

/// Paces a body to `shape.bytes_per_sec` (the sleeps are the point: they emulate a slow link)
/// and ends it with an error after `shape.cut_after` bytes, which makes hyper drop the
/// connection mid-body, as a network failure would. The error waits for a flush of the
/// connection (`flushes`), so every byte before the cut has reached the socket.
fn shaped(body: ProxyBody, shape: Shape, flushes: Arc<Flushes>) -> ProxyBody {
    struct State {
        inner: Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send + Sync>>,
        pending: Bytes,
        sent: u64,
        done: bool,
        started: tokio::time::Instant,
        shape: Shape,
        flushes: Arc<Flushes>,
    }
    let state = State {
        inner: Box::pin(body.into_data_stream()),
        pending: Bytes::new(),
        sent: 0,
        done: false,
        started: tokio::time::Instant::now(),
        shape,
        flushes,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.shape.cut_after.is_some_and(|cut| st.sent >= cut) {
            st.done = true;
            // hyper holds the last pieces in its write buffer until the socket is flushed; an
            // error now would drop them.
            let seen = st.flushes.count.load(Ordering::SeqCst);
            st.flushes.after(seen).await;
            let err: BoxError = "proxy: connection cut on purpose".into();
            return Some((Err(err), st));
        }
        if st.pending.is_empty() {
            match st.inner.next().await {
                Some(Ok(chunk)) => st.pending = chunk,
                Some(Err(e)) => return Some((Err(e), st)),
                None => return None,
            }
        }
        // Small slices keep the pace smooth.
        let mut take = st.pending.len().min(64 << 10);
        if let Some(cut) = st.shape.cut_after {
            take = take.min((cut - st.sent) as usize);
        }
        let piece = st.pending.split_to(take);
        st.sent += piece.len() as u64;
        if let Some(rate) = st.shape.bytes_per_sec.filter(|r| *r > 0) {
            let due = st.started + std::time::Duration::from_secs_f64(st.sent as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        Some((Ok(piece), st))
    });
    BodyExt::boxed(StreamBody::new(stream.map(|r| r.map(Frame::data))))
}

/// Sends the request upstream and streams the answer back; a failure to reach upstream (e.g. a
/// stopped registry) becomes a 502.
async fn forward(
    shared: &Shared,
    req: Request<Incoming>,
    info: &RequestInfo,
) -> Response<ProxyBody> {
    let url = format!("http://{}{}", shared.upstream, info.path);
    let (parts, body) = req.into_parts();
    let mut upstream_req = shared.client.request(parts.method.clone(), &url);
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) && name != HOST {
            headers.append(name.clone(), value.clone());
        }
    }
    upstream_req = upstream_req.headers(headers);
    // Only requests that carry a body get one; a streamed empty body would become a chunked GET.
    if hyper::body::Body::size_hint(&body).exact() != Some(0) {
        upstream_req = upstream_req.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let upstream = match upstream_req.send().await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("proxy: upstream {url}: {e}");
            return Response::builder()
                .status(502)
                .header("content-length", msg.len())
                .body(Full::new(Bytes::from(msg)).map_err(|e| match e {}).boxed())
                .expect("build 502");
        }
    };
    let mut builder = Response::builder().status(upstream.status().as_u16());
    for (name, value) in upstream.headers() {
        if is_hop_by_hop(name) {
            continue;
        }
        if name == LOCATION {
            builder = builder.header(
                name,
                rewrite_location(value, &shared.upstream, &shared.host),
            );
        } else {
            builder = builder.header(name, value);
        }
    }
    let stream = upstream
        .bytes_stream()
        .map(|chunk| chunk.map(Frame::data).map_err(|e| Box::new(e) as BoxError));
    builder
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("build proxied response")
}

/// Logs the request and wraps the body so the log counts bytes as they go to the client.
fn record(
    shared: &Shared,
    info: &RequestInfo,
    at: std::time::Instant,
    response: Response<ProxyBody>,
    answering: Ongoing,
) -> Response<ProxyBody> {
    let entry = Arc::new(Entry {
        method: info.method.clone(),
        path: info.path.clone(),
        status: response.status().as_u16(),
        authorization: info
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        range: info
            .headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        bytes: AtomicU64::new(0),
        at,
        ended: Mutex::new(None),
        source: info.source.clone(),
    });
    shared
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(entry.clone());
    response.map(|body| {
        let counted = CountingStream {
            inner: body.into_data_stream(),
            entry,
            _answering: answering,
        };
        BodyExt::boxed(StreamBody::new(counted.map(|r| r.map(Frame::data))))
    })
}

/// Counts each chunk when hyper takes it for writing to the client's socket.
struct CountingStream<S> {
    inner: S,
    entry: Arc<Entry>,
    /// The request counts as being answered until its body is done (this stream dropped).
    _answering: Ongoing,
}

impl<S: Stream<Item = Result<Bytes, BoxError>> + Unpin> Stream for CountingStream<S> {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let poll = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &poll {
            self.entry
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        poll
    }
}

impl<S> Drop for CountingStream<S> {
    fn drop(&mut self) {
        *self.entry.ended.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now());
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Points a Location at the proxy when it points at the upstream, so clients stay behind us.
fn rewrite_location(value: &HeaderValue, upstream: &str, proxy: &str) -> HeaderValue {
    let Ok(s) = value.to_str() else {
        return value.clone();
    };
    for scheme in ["http://", "https://"] {
        if let Some(rest) = s.strip_prefix(&format!("{scheme}{upstream}")) {
            if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') {
                return HeaderValue::from_str(&format!("http://{proxy}{rest}"))
                    .unwrap_or_else(|_| value.clone());
            }
        }
    }
    value.clone()
}

/// A host where a registry should be but none answers, for mirror faults: either every
/// connection is accepted and closed at once (counted, so a test can tell how often a client
/// came back), or no connection ever completes (connects hang until the client gives up).
pub struct DeadHost {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    /// The accept loop of a closing host; `None` for an unanswered one.
    task: Option<JoinHandle<()>>,
    /// An unanswered host's listener and the connections that fill its accept queue.
    _held: Vec<std::net::TcpStream>,
    _listener: Option<std::net::TcpListener>,
}

impl DeadHost {
    /// Accepts each connection and closes it without a byte, counting them.
    pub async fn closing() -> DeadHost {
        let (addr, accepted, task) = accept_counted(drop).await;
        DeadHost {
            addr,
            accepted,
            task: Some(task),
            _held: Vec::new(),
            _listener: None,
        }
    }

    /// A listener that never accepts, its accept queue filled: the kernel drops further SYNs, so
    /// a connect hangs as it does to a host that is down behind a firewall.
    pub async fn unanswered() -> DeadHost {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind the dead host's loopback port");
        let addr = socket.local_addr().expect("dead host address");
        // Backlog 0: the queue holds one connection; fill it until a connect no longer completes.
        let listener = socket.listen(0).expect("listen");
        let mut held = Vec::new();
        let deadline = super::process::Deadline::after(std::time::Duration::from_secs(10));
        loop {
            match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300))
            {
                Ok(stream) => held.push(stream),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => panic!("filling the dead host's accept queue: {e}"),
            }
            assert!(
                !deadline.expired(),
                "the dead host's accept queue never filled"
            );
        }
        DeadHost {
            addr,
            accepted: Arc::new(AtomicU64::new(0)),
            task: None,
            _held: held,
            // Kept open: a closed port would refuse connections instead.
            _listener: Some(listener.into_std().expect("the listener as std")),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far (always 0 for an unanswered host).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for DeadHost {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A TCP relay in front of a registry, byte for byte (TLS passes through untouched), counting
/// the connections made to it: how often a client tried.
pub struct TcpRelay {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TcpRelay {
    /// Listens on a free loopback port and relays each connection to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> TcpRelay {
        let upstream = upstream.to_string();
        // Owned by the accept task: aborting it ends the relays too.
        let mut relays = JoinSet::new();
        let (addr, connections, task) = accept_counted(move |mut client: TcpStream| {
            while relays.try_join_next().is_some() {}
            let upstream = upstream.clone();
            relays.spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        })
        .await;
        TcpRelay {
            addr,
            connections,
            task,
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on a free loopback port and hands each connection to `handle`, counting them.
async fn accept_counted(
    mut handle: impl FnMut(TcpStream) + Send + 'static,
) -> (SocketAddr, Arc<AtomicU64>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("listener address");
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            handle(stream);
        }
    });
    (addr, count, task)
}
