//! Errors from talking to a registry, each naming the registry and repository involved.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Endpoint, Hosts};
use crate::digest::{Digest, VerifyError};
use crate::kind::ErrorKind;
use crate::oci::DocumentError;

/// Something went wrong between prepull and a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The connection failed or broke (DNS, refused, reset, TLS, timeout).
    #[error("registry {registry}: {action} failed")]
    Network {
        /// The registry host.
        registry: String,
        /// What was being done, e.g. "GET manifest latest".
        action: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry ended the TLS connection over the client certificate (mutual TLS): it
    /// requires one and none is configured, or it refused the one presented.
    #[error("registry {registry}: {action} failed: {}; {fix}", client_certificate_problem(alert, certificate.as_deref()))]
    ClientCertificate {
        /// The host spoken to.
        registry: String,
        /// What was being done.
        action: String,
        /// The TLS alert the registry sent, e.g. `BadCertificate`, `CertificateRequired`.
        alert: String,
        /// The client certificate presented, if one is configured.
        certificate: Option<PathBuf>,
        /// Where to configure one.
        fix: String,
        /// The transport error that carried the alert.
        #[source]
        source: reqwest::Error,
    },
    /// TLS with the host failed in a way only configuration fixes: its certificate is not
    /// trusted or not valid, or one side speaks plain HTTP while the other expects TLS.
    #[error("registry {registry}: {action} failed: {problem}; {fix}")]
    Tls {
        /// The host spoken to.
        registry: String,
        /// What was being done.
        action: String,
        /// What is wrong, e.g. "its TLS certificate is not signed by a CA prepull trusts".
        problem: String,
        /// What to configure, and where.
        fix: String,
        /// The transport error, when the failure was one (not an answer).
        #[source]
        source: Option<reqwest::Error>,
    },
    /// The registry answered with an error status.
    #[error("registry {registry}: {action} for repository {repository}: HTTP {status}{}{}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default(), message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// What was being done.
        action: String,
        /// The HTTP status.
        status: u16,
        /// The distribution error code (`MANIFEST_UNKNOWN`, `DENIED`, …), if any.
        code: Option<String>,
        /// The registry's message, if any.
        message: Option<String>,
    },
    /// The registry wants credentials prepull does not have, or rejected the ones it sent.
    #[error("registry {registry}: access to repository {repository} denied ({detail}): check that the image name is right and that a pull secret or node credential for {registry} exists")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// What was missing or refused.
        detail: String,
    },
    /// The token endpoint failed.
    #[error("registry {registry}: token request to {realm} failed: {detail}")]
    Token {
        /// The registry host.
        registry: String,
        /// The token realm URL.
        realm: String,
        /// Status or parse problem.
        detail: String,
    },
    /// A manifest or blob did not match its digest or size.
    #[error("registry {registry}: {what} in repository {repository} is corrupt: {source}")]
    Corrupt {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// e.g. "blob sha256:…" or "manifest latest".
        what: String,
        /// The mismatch.
        #[source]
        source: VerifyError,
    },
    /// The registry's `Docker-Content-Digest` disagrees with the body it served.
    #[error("registry {registry}: manifest {reference} in repository {repository}: Docker-Content-Digest says {header} but the body hashes to {computed}")]
    DigestHeader {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// The tag or digest requested.
        reference: String,
        /// The header's digest.
        header: String,
        /// The body's digest.
        computed: Digest,
    },
    /// A manifest bigger than prepull accepts.
    #[error("registry {registry}: manifest {reference} in repository {repository} is larger than {limit} bytes")]
    TooLarge {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// The tag or digest.
        reference: String,
        /// The cap.
        limit: u64,
    },
    /// A manifest that is not a usable document.
    #[error("registry {registry}: manifest {reference} in repository {repository} {source}")]
    Document {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// The tag or digest.
        reference: String,
        /// What is wrong with it.
        #[source]
        source: DocumentError,
    },
    /// The registry's host configuration (`hosts.toml`) is unusable.
    #[error("registry {registry}: host configuration")]
    Hosts {
        /// The registry host.
        registry: String,
        /// What is wrong.
        #[source]
        source: crate::registry::HostsError,
    },
    /// A CA or client certificate file named in the host configuration is unusable.
    #[error("TLS file {}: {detail}", path.display())]
    TlsConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The HTTP client could not be built (bad TLS settings).
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl RegistryError {
    /// The failure's kind, a bounded label for status, metrics and summaries.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::Network { .. } => ErrorKind::Network,
            RegistryError::Status { status: 404, .. } => ErrorKind::NotFound,
            RegistryError::Status { status: 429, .. } => ErrorKind::RateLimited,
            RegistryError::Status {
                status: 401 | 403, ..
            } => ErrorKind::Unauthorized,
            RegistryError::Status { status, .. } if *status >= 500 => {
                ErrorKind::RegistryUnavailable
            }
            RegistryError::Status { .. } => ErrorKind::RegistryError,
            RegistryError::Unauthorized { .. } | RegistryError::Token { .. } => {
                ErrorKind::Unauthorized
            }
            RegistryError::ClientCertificate { .. } | RegistryError::Tls { .. } => ErrorKind::Tls,
            RegistryError::Corrupt { .. } | RegistryError::DigestHeader { .. } => {
                ErrorKind::Corrupt
            }
            RegistryError::TooLarge { .. } | RegistryError::Document { .. } => {
                ErrorKind::BadManifest
            }
            RegistryError::Client(_)
            | RegistryError::Hosts { .. }
            | RegistryError::TlsConfig { .. } => ErrorKind::Config,
        }
    }

    /// The host could not be spoken to at all (no HTTP answer): unreachable, the connection
    /// broke, or TLS failed.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            RegistryError::Network { .. }
                | RegistryError::ClientCertificate { .. }
                | RegistryError::Tls { .. }
        )
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Network { .. } | RegistryError::Corrupt { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// TLS alerts a server sends about the client's certificate. A client receives alerts only from
/// the server, so these always concern the certificate prepull presented (or did not).
const CLIENT_CERTIFICATE_ALERTS: &[rustls::AlertDescription] = &[
    rustls::AlertDescription::CertificateRequired,
    rustls::AlertDescription::BadCertificate,
    rustls::AlertDescription::UnsupportedCertificate,
    rustls::AlertDescription::CertificateRevoked,
    rustls::AlertDescription::CertificateExpired,
    rustls::AlertDescription::CertificateUnknown,
    rustls::AlertDescription::UnknownCA,
    rustls::AlertDescription::AccessDenied,
];

/// A TLS failure that trying again cannot fix, found in a transport error's chain.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum TlsFailure {
    /// prepull refused the server's certificate.
    Certificate(rustls::CertificateError),
    /// The peer does not speak TLS: its first bytes are no TLS record (a plain-HTTP answer).
    NotTls,
    /// The server refused the client certificate (or its absence) with this alert.
    ClientCertificate(String),
}

/// The TLS library's error in an error's chain. The transport wraps it in `std::io::Error`s
/// (one in another), whose `source()` skips the error they carry, so an `io::Error` is followed
/// into the error it carries (`get_ref()`) instead.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(carried) => Some(carried as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// The TLS failure behind a transport error, if it is one configuration must fix.
pub(crate) fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    match rustls_error(e)? {
        rustls::Error::InvalidCertificate(c) => Some(TlsFailure::Certificate(c.clone())),
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            Some(TlsFailure::NotTls)
        }
        rustls::Error::AlertReceived(alert) if CLIENT_CERTIFICATE_ALERTS.contains(alert) => {
            Some(TlsFailure::ClientCertificate(format!("{alert:?}")))
        }
        _ => None,
    }
}

/// What is wrong with a server certificate prepull refused, and what fixes it.
fn certificate_problem(
    hosts: &Hosts,
    registry: &str,
    endpoint: &Endpoint,
    c: &rustls::CertificateError,
) -> (String, String) {
    use rustls::CertificateError as E;
    match c {
        E::UnknownIssuer | E::BadSignature => (
            format!("its TLS certificate is not signed by a CA prepull trusts ({c:?})"),
            hosts.ca_advice(registry, endpoint),
        ),
        E::NotValidForName | E::NotValidForNameContext { .. } => (
            format!(
                "its TLS certificate is not issued for {} ({c:?})",
                endpoint.host
            ),
            "reach it by a name its certificate holds, or have the certificate reissued for \
             this one"
                .to_string(),
        ),
        E::Expired | E::ExpiredContext { .. } | E::NotValidYet | E::NotValidYetContext { .. } => (
            format!("its TLS certificate is expired or not valid yet ({c:?})"),
            "have the registry's certificate renewed, or check the node's clock".to_string(),
        ),
        _ => (
            format!("its TLS certificate was refused ({c:?})"),
            "check the registry's certificate".to_string(),
        ),
    }
}

/// Go's TLS server answers a plain-HTTP request with a bare `400` and this text.
const PLAIN_HTTP_TO_TLS_PORT: &str = "HTTP request to an HTTPS server";

/// Turns the `400` a TLS port answers to plain HTTP (as the distribution registry and other Go
/// servers do) into [`RegistryError::Tls`] saying to speak HTTPS; any other error is returned as
/// it is.
pub(crate) fn explain_status(
    hosts: &Hosts,
    registry: &str,
    endpoint: &Endpoint,
    error: RegistryError,
) -> RegistryError {
    match error {
        RegistryError::Status {
            registry: _,
            repository: _,
            action,
            status: 400,
            code: None,
            message: Some(message),
        } if endpoint.origin.starts_with("http://") && message.contains(PLAIN_HTTP_TO_TLS_PORT) => {
            RegistryError::Tls {
                registry: endpoint.host.clone(),
                action,
                problem: format!(
                    "it speaks HTTPS and prepull spoke plain HTTP (it answered HTTP 400: {message})"
                ),
                fix: hosts.scheme_advice(registry, endpoint, true),
                source: None,
            }
        }
        other => other,
    }
}

/// What the registry did about the client certificate.
fn client_certificate_problem(alert: &str, certificate: Option<&Path>) -> String {
    match certificate {
        None => format!(
            "the registry requires a TLS client certificate and none is configured for it \
             (TLS alert {alert})"
        ),
        Some(cert) => format!(
            "the registry refused the TLS client certificate {} (TLS alert {alert}): it may be \
             expired, or not issued by a CA the registry trusts",
            cert.display()
        ),
    }
}

/// How long one probe request in [`explain_transport_error`] may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// Probe requests before giving up on finding the cause.
const PROBE_ATTEMPTS: usize = 3;

/// Turns a transport error from `endpoint` (of the image's `registry`) into
/// [`RegistryError::ClientCertificate`] when the registry refused the TLS client certificate.
///
/// Over TLS 1.3 a server checks the client's certificate after the client considers the
/// handshake done, so its alert races with the first request; over HTTP/2 a request still queued
/// when the connection dies is cancelled without the cause. When an HTTPS request failed without a
/// visible cause, an HTTP/1.1 request to the API root asks again (up to three times): HTTP/1.1
/// hands the connection's error to the request in flight, alert included. Any other error is
/// returned as it is.
pub(crate) async fn explain_transport_error(
    hosts: &Hosts,
    registry: &str,
    endpoint: &Endpoint,
    error: RegistryError,
) -> RegistryError {
    let RegistryError::Network {
        registry: host,
        action,
        source,
    } = error
    else {
        return error;
    };
    let refused = |alert: String, source: reqwest::Error| RegistryError::ClientCertificate {
        registry: host.clone(),
        action: action.clone(),
        alert,
        certificate: endpoint.tls.client.as_ref().map(|(cert, _)| cert.clone()),
        fix: hosts.client_certificate_advice(registry, endpoint),
        source,
    };
    let misconfigured = |problem: String, fix: String, source: reqwest::Error| RegistryError::Tls {
        registry: host.clone(),
        action: action.clone(),
        problem,
        fix,
        source: Some(source),
    };
    match tls_failure(&source) {
        Some(TlsFailure::ClientCertificate(alert)) => return refused(alert, source),
        Some(TlsFailure::Certificate(c)) => {
            let (problem, fix) = certificate_problem(hosts, registry, endpoint, &c);
            return misconfigured(problem, fix, source);
        }
        Some(TlsFailure::NotTls) => {
            return misconfigured(
                "it speaks plain HTTP and prepull spoke TLS".to_string(),
                hosts.scheme_advice(registry, endpoint, false),
                source,
            )
        }
        None => {}
    }
    let https = endpoint.origin.starts_with("https://");
    if !https || source.is_connect() || source.is_timeout() || !source.is_request() {
        return RegistryError::Network {
            registry: host,
            action,
            source,
        };
    }
    let probe = async {
        let client = endpoint
            .tls
            .configure(
                reqwest::Client::builder()
                    .http1_only()
                    .timeout(PROBE_TIMEOUT),
            )
            .ok()?
            .build()
            .ok()?;
        let url = format!("{}{}/", endpoint.origin, endpoint.api_path);
        // Rarely, HTTP/1.1 too sees the connection die before the request is queued on it.
        for _ in 0..PROBE_ATTEMPTS {
            let e = client.get(&url).send().await.err()?;
            if let Some(TlsFailure::ClientCertificate(alert)) = tls_failure(&e) {
                return Some((alert, e.without_url()));
            }
            if e.is_connect() || e.is_timeout() {
                return None;
            }
        }
        None
    };
    match probe.await {
        Some((alert, probe_error)) => refused(alert, probe_error),
        None => RegistryError::Network {
            registry: host,
            action,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose cause is `source`, like the transport errors that wrap the TLS library's.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn tls_failures_are_found_by_type_in_the_chain() {
        // As the transport reports it: the TLS library's error inside an io::Error, inside
        // another error.
        let failure = |tls: rustls::Error| {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
            tls_failure(&Wrapped(std::io::Error::other(io)))
        };
        assert_eq!(
            failure(rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
            )),
            Some(TlsFailure::ClientCertificate("BadCertificate".into()))
        );
        assert_eq!(
            failure(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired
            )),
            Some(TlsFailure::ClientCertificate("CertificateRequired".into()))
        );
        assert_eq!(
            failure(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )),
            Some(TlsFailure::Certificate(
                rustls::CertificateError::UnknownIssuer
            ))
        );
        assert_eq!(
            failure(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            )),
            Some(TlsFailure::NotTls)
        );
        // Alerts about other things, other TLS errors and errors without one: none of these.
        assert_eq!(
            failure(rustls::Error::AlertReceived(
                rustls::AlertDescription::HandshakeFailure
            )),
            None
        );
        assert_eq!(failure(rustls::Error::HandshakeNotComplete), None);
        // Text alone is not taken for a TLS failure.
        let text = std::io::Error::other("received fatal alert: BadCertificate");
        assert_eq!(tls_failure(&Wrapped(text)), None);
    }

    #[test]
    fn the_problem_says_whether_a_certificate_was_presented() {
        let none = client_certificate_problem("BadCertificate", None);
        assert!(none.contains("none is configured"), "{none}");
        let refused = client_certificate_problem("UnknownCA", Some(Path::new("/etc/c.cert")));
        assert!(
            refused.contains("refused the TLS client certificate /etc/c.cert")
                && refused.contains("UnknownCA"),
            "{refused}"
        );
    }
}
