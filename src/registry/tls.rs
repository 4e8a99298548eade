//! TLS with registries: an endpoint's TLS settings (CAs, client certificate, `skip_verify`) and
//! the files behind them, and what a TLS failure means: which failures only configuration fixes
//! (found by the TLS library's error type, never by message text), and the advice naming what to
//! change and where.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Endpoint, Hosts, RegistryError};

/// TLS settings for one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tls {
    /// Extra CA certificates (PEM files) to trust.
    pub ca_files: Vec<PathBuf>,
    /// Client certificate and key (PEM files); the key may be in the certificate file.
    pub client: Option<(PathBuf, Option<PathBuf>)>,
    /// Accept any server certificate (explicitly configured only).
    pub skip_verify: bool,
}

impl Tls {
    /// Adds these settings to a client: the CAs (besides the node's roots), the client
    /// certificate, `skip_verify`. A file that cannot be used is named with what is wrong with it.
    pub fn configure(
        &self,
        mut builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, RegistryError> {
        for ca in &self.ca_files {
            let fail = |detail: String| RegistryError::TlsConfig {
                path: ca.clone(),
                detail,
            };
            let pem = std::fs::read(ca).map_err(|e| fail(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(innermost(&e)))?;
            if certs.is_empty() {
                return Err(fail("no PEM certificate (BEGIN CERTIFICATE) in it".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(identity) = self.client_identity()? {
            builder = builder.identity(identity);
        }
        if self.skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        Ok(builder)
    }

    /// The client certificate and key, read from their files and checked against each other;
    /// `None` when none is configured. Problems name the file and what is wrong with it, never
    /// the key's content.
    pub fn client_identity(&self) -> Result<Option<reqwest::Identity>, RegistryError> {
        let Some((cert, key)) = &self.client else {
            return Ok(None);
        };
        let fail = |path: &Path, detail: String| RegistryError::TlsConfig {
            path: path.to_path_buf(),
            detail,
        };
        let read = |path: &Path| std::fs::read(path).map_err(|e| fail(path, e.to_string()));
        let mut pem = read(cert)?;
        if !pem_labels(&pem).iter().any(|l| l == "CERTIFICATE") {
            return Err(fail(
                cert,
                "no PEM certificate (BEGIN CERTIFICATE) in it".into(),
            ));
        }
        match key {
            Some(key) => {
                let key_pem = read(key)?;
                key_problem(&key_pem).map_or(Ok(()), |p| Err(fail(key, p)))?;
                pem.push(b'\n');
                pem.extend(key_pem);
            }
            None => {
                if let Some(problem) = key_problem(&pem) {
                    return Err(fail(
                        cert,
                        format!(
                            "{problem}: a client certificate named alone must hold its key too; \
                             with the key in its own file write client = [[\"{}\", \"<key \
                             file>\"]] in hosts.toml, or name the pair <name>.cert + <name>.key \
                             in a Docker-style certs.d directory",
                            cert.display()
                        ),
                    ));
                }
            }
        }
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| fail(cert, innermost(&e)))?;
        // The TLS library checks that the key belongs to the certificate when a client is built:
        // do it here, so a mismatch names the files instead of failing the whole client.
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .identity(identity.clone())
            .build()
            .map_err(|e| {
                let files = match key {
                    Some(key) => format!(" with key {}", key.display()),
                    None => String::new(),
                };
                fail(cert, format!("unusable{files}: {}", innermost(&e)))
            })?;
        Ok(Some(identity))
    }
}

/// The labels of a PEM file's sections (`CERTIFICATE`, `PRIVATE KEY`, …).
fn pem_labels(pem: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(pem)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .map(str::to_string)
        .collect()
}

/// Why `pem` holds no private key prepull can use, if it does not.
fn key_problem(pem: &[u8]) -> Option<String> {
    let labels = pem_labels(pem);
    if labels.iter().any(|l| {
        matches!(
            l.as_str(),
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY"
        )
    }) {
        None
    } else if labels.iter().any(|l| l == "ENCRYPTED PRIVATE KEY") {
        Some("the private key is encrypted; it must be stored unencrypted".into())
    } else {
        Some("no PEM private key in it".into())
    }
}

/// The most specific message of an error chain (reqwest's own is only "builder error").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
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
pub(super) fn client_certificate_problem(alert: &str, certificate: Option<&Path>) -> String {
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
    match probe_client_certificate(endpoint).await {
        Some((alert, probe_error)) => refused(alert, probe_error),
        None => RegistryError::Network {
            registry: host,
            action,
            source,
        },
    }
}

/// Asks `endpoint` again over HTTP/1.1 whether it refuses the client certificate: the TLS alert
/// and the probe's error when it does, `None` when it does not say so.
async fn probe_client_certificate(endpoint: &Endpoint) -> Option<(String, reqwest::Error)> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate and its key, PEM, from a throwaway self-signed certificate.
    fn cert_and_key() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn unusable_client_certificates_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = cert_and_key();
        let (_, other_key) = cert_and_key();
        let path = |name: &str| dir.path().join(name);
        let file = |name: &str, content: &str| {
            std::fs::write(path(name), content).unwrap();
            path(name)
        };
        let problem = |cert_file: PathBuf, key_file: Option<PathBuf>| {
            let tls = Tls {
                client: Some((cert_file, key_file)),
                ..Tls::default()
            };
            let err = tls.client_identity().err().unwrap().to_string();
            // Whatever went wrong, the key's content never shows.
            for k in [&key, &other_key] {
                for line in k.lines().filter(|l| !l.starts_with("-----")) {
                    assert!(!err.contains(line), "key material in {err}");
                }
            }
            err
        };

        let combined = file("both.pem", &format!("{cert}{key}"));
        let pair = (file("c.cert", &cert), file("c.key", &key));
        for (c, k) in [(combined, None), (pair.0.clone(), Some(pair.1))] {
            let tls = Tls {
                client: Some((c, k)),
                ..Tls::default()
            };
            assert!(tls.client_identity().unwrap().is_some());
        }
        assert!(Tls::default().client_identity().unwrap().is_none());

        // A certificate named alone, without its key: the pair form is suggested.
        let err = problem(pair.0.clone(), None);
        assert!(
            err.contains(&pair.0.display().to_string())
                && err.contains("no PEM private key")
                && err.contains("client = [["),
            "{err}"
        );
        // The "key" is another certificate.
        let err = problem(pair.0.clone(), Some(file("cert-as-key.pem", &cert)));
        assert!(
            err.contains("cert-as-key.pem") && err.contains("no PEM private key"),
            "{err}"
        );
        // An encrypted key.
        let encrypted = key.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY");
        let err = problem(pair.0.clone(), Some(file("enc.key", &encrypted)));
        assert!(
            err.contains("enc.key") && err.contains("encrypted"),
            "{err}"
        );
        // The key of another certificate.
        let err = problem(pair.0.clone(), Some(file("other.key", &other_key)));
        assert!(
            err.contains("c.cert") && err.contains("other.key") && err.contains("unusable"),
            "{err}"
        );
        // No certificate at all, and a missing file.
        let err = problem(file("junk.cert", "junk"), None);
        assert!(
            err.contains("junk.cert") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = problem(path("missing.cert"), None);
        assert!(err.contains("missing.cert"), "{err}");

        // A CA file without a certificate is named too.
        let tls = Tls {
            ca_files: vec![file("empty-ca.crt", "")],
            ..Tls::default()
        };
        let err = tls
            .configure(reqwest::Client::builder())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("empty-ca.crt") && err.contains("no PEM certificate"),
            "{err}"
        );
    }

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
