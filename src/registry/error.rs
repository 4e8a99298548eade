//! Errors from talking to a registry, each naming the registry and repository involved.

use std::path::PathBuf;

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
    /// The server answered too slowly: no response head within a window of the request, or a
    /// window that brought fewer body bytes than [`super::MinProgress`] asks for.
    #[error("registry {registry}: {action}: the server sent {received} bytes in the last {}, below the minimum of {progress} (--min-progress); a server this slow is given up on and asked again later", humantime::format_duration(progress.window))]
    Stalled {
        /// The host spoken to.
        registry: String,
        /// What was being done.
        action: String,
        /// Bytes received in the window that came up short.
        received: u64,
        /// The rule it broke.
        progress: super::MinProgress,
    },
    /// The registry ended the TLS connection over the client certificate (mutual TLS): it
    /// requires one and none is configured, or it refused the one presented.
    #[error("registry {registry}: {action} failed: {}; {fix}", super::tls::client_certificate_problem(alert, certificate.as_deref()))]
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
    /// A token realm prepull will not send credentials to: plain HTTP for a host reached over
    /// HTTPS, or on another host than a plain-HTTP one (see [`super::Realm`]'s rule).
    #[error("registry {registry}: credentials not sent to the token realm {realm}: {problem}")]
    InsecureRealm {
        /// The host whose challenge named the realm.
        registry: String,
        /// The token realm URL.
        realm: String,
        /// Why, and what to fix.
        problem: String,
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
    /// The host's announced request budget is down to what is kept for the kubelet's own pulls:
    /// its manifests wait for a later pass.
    #[error(
        "registry {registry}: {action} not sent: {low} (--registry-budget-reserve {reserve}); \
         the image waits for a later pass, when the registry's budget has recovered (checks of \
         images the node holds go on: HEAD requests are not counted)"
    )]
    BudgetLow {
        /// The host.
        registry: String,
        /// What was to be done.
        action: String,
        /// What the host said of its budget.
        low: super::BudgetLow,
        /// The reserve, as configured.
        reserve: super::BudgetReserve,
    },
    /// The HTTP client could not be built (bad TLS settings).
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl RegistryError {
    /// The failure's kind, a bounded label for status, metrics and summaries.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::Network { .. } | RegistryError::Stalled { .. } => ErrorKind::Network,
            RegistryError::Status { status: 404, .. } => ErrorKind::NotFound,
            RegistryError::Status { status: 429, .. } | RegistryError::BudgetLow { .. } => {
                ErrorKind::RateLimited
            }
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
            // Not a refusal: the credentials may be right, and nothing but the registry's or
            // prepull's setup changes the answer, so it is counted where setup errors are.
            RegistryError::Client(_)
            | RegistryError::InsecureRealm { .. }
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
                | RegistryError::Stalled { .. }
                | RegistryError::ClientCertificate { .. }
                | RegistryError::Tls { .. }
        )
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Network { .. }
            | RegistryError::Stalled { .. }
            | RegistryError::Corrupt { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}
