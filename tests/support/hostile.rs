//! A hostile HTTP server on loopback: a registry, a token realm or a redirect target that
//! answers what a test's handler says, including bodies that never end and bodies that trickle.
//! It records every request (with its `Authorization`) and counts the body bytes it handed out.
//! [`Hostile::start_tls`] serves HTTPS with a certificate from a test CA.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::tls::TestCa;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub authorization: Option<String>,
}

/// What to answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A whole body, with `Content-Length`.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// `chunk` repeated forever (chunked encoding, no `Content-Length`).
    Endless {
        status: u16,
        headers: Vec<(String, String)>,
        chunk: Vec<u8>,
    },
    /// `body` one byte every `every` (with its `Content-Length`).
    Trickle {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        every: Duration,
    },
}

impl Reply {
    /// A status with a body and no extra headers.
    pub fn status(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct Shared {
    handler: Handler,
    seen: Mutex<Vec<Seen>>,
    sent: AtomicU64,
}

/// The server; it stops when dropped.
pub struct Hostile {
    addr: SocketAddr,
    /// `https` when it serves TLS, else `http`.
    scheme: &'static str,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Hostile {
    /// Listens on a free loopback port and answers every request with `handler`.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Hostile {
        Hostile::start_with(handler, None).await
    }

    /// As [`Hostile::start`], over HTTPS with a certificate for `127.0.0.1` and `localhost`
    /// signed by `ca`.
    pub async fn start_tls(
        ca: &TestCa,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Hostile {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().expect("a dir for the server certificate");
        let cert = ca.issue_server(&["127.0.0.1", "localhost"], dir.path(), "hostile");
        let chain = vec![CertificateDer::from_pem_file(&cert.cert_path).expect("the certificate")];
        let key = PrivateKeyDer::from_pem_file(&cert.key_path).expect("the key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a server TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Hostile::start_with(handler, Some(acceptor)).await
    }

    async fn start_with(
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            handler: Arc::new(handler),
            seen: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(accept(listener, shared.clone(), tls));
        Hostile {
            addr,
            scheme,
            shared,
            task,
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`, or `https://…` for a TLS server.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Body bytes handed to connections so far.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| answer(shared.clone(), request));
            let builder = http1::Builder::new();
            let _ = match tls {
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Err(_) => Ok(()),
                },
            };
        });
    }
}

async fn answer(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, BoxError>>, Infallible> {
    let seen = Seen {
        method: request.method().to_string(),
        path: request
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization: request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    shared
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(seen.clone());
    let reply = (shared.handler)(&seen);
    let head = seen.method == "HEAD";
    let (status, headers, body): (u16, Vec<(String, String)>, BoxBody<Bytes, BoxError>) =
        match reply {
            Reply::Full {
                status,
                headers,
                body,
            } => {
                shared.sent.fetch_add(body.len() as u64, Ordering::SeqCst);
                let body = Full::new(Bytes::from(body))
                    .map_err(|e: Infallible| -> BoxError { match e {} })
                    .boxed();
                (status, headers, body)
            }
            Reply::Endless {
                status,
                headers,
                chunk,
            } => {
                let chunk = Bytes::from(chunk);
                let counter = shared.clone();
                let stream = futures_util::stream::repeat(()).map(move |()| {
                    counter.sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    Ok::<_, BoxError>(Frame::data(chunk.clone()))
                });
                (status, headers, BodyExt::boxed(StreamBody::new(stream)))
            }
            Reply::Trickle {
                status,
                mut headers,
                body,
                every,
            } => {
                headers.push(("content-length".into(), body.len().to_string()));
                let counter = shared.clone();
                let stream = futures_util::stream::iter(body).then(move |byte| {
                    let counter = counter.clone();
                    async move {
                        tokio::time::sleep(every).await;
                        counter.sent.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, BoxError>(Frame::data(Bytes::from(vec![byte])))
                    }
                });
                (status, headers, BodyExt::boxed(StreamBody::new(stream)))
            }
        };
    let mut response = Response::new(if head {
        Full::new(Bytes::new())
            .map_err(|e: Infallible| -> BoxError { match e {} })
            .boxed()
    } else {
        body
    });
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    Ok(response)
}
