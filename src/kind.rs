//! The fixed set of failure kinds: one word per cause an operator acts on differently.
//!
//! Every error a pull can end in maps to exactly one [`ErrorKind`]. The kinds are what the status
//! file and `--output json` carry, for counting and alerting, so the set is closed and documented
//! (`deploy/README.md` lists [`ErrorKind::ALL`]; a test keeps the two in step).

use std::fmt;

use serde::Serialize;

/// Why an image could not be pulled, as a bounded label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The registry wants credentials prepull does not have, or refused the ones it sent
    /// (401/403, a failing token endpoint or credential plugin).
    Unauthorized,
    /// The tag, digest, repository or a blob does not exist (404).
    NotFound,
    /// The registry is rate-limiting this node (429).
    RateLimited,
    /// The registry answered 5xx.
    RegistryUnavailable,
    /// The registry answered with another unexpected HTTP status.
    RegistryError,
    /// The registry could not be reached or the connection broke (DNS, refused, reset, timeout).
    Network,
    /// TLS failed: the registry's certificate is not trusted (x509), it speaks plain HTTP, or it
    /// refused the client certificate.
    Tls,
    /// A blob or manifest does not match its digest or size.
    Corrupt,
    /// The image's documents are invalid, too large or contradict each other.
    BadManifest,
    /// The image has no manifest for the node's platform.
    NoPlatform,
    /// The tag resolved to another digest than the list's `expect:` for it.
    UnexpectedDigest,
    /// Pulling would leave containerd's filesystem with less free space than the reserve.
    DiskSpace,
    /// prepull's own configuration is unusable (hosts.toml, a CA or certificate file), or a
    /// registry's setup is one prepull will not send credentials into (a token realm over plain
    /// HTTP): either way the credentials may be right and only a change of setup helps.
    Config,
    /// containerd's socket cannot be reached, or the connection to it broke.
    ContainerdUnreachable,
    /// Another writer held a blob for longer than prepull waits.
    Busy,
    /// containerd failed in another way.
    Containerd,
}

impl ErrorKind {
    /// Every kind, in documentation order.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::Unauthorized,
        ErrorKind::NotFound,
        ErrorKind::RateLimited,
        ErrorKind::RegistryUnavailable,
        ErrorKind::RegistryError,
        ErrorKind::Network,
        ErrorKind::Tls,
        ErrorKind::Corrupt,
        ErrorKind::BadManifest,
        ErrorKind::NoPlatform,
        ErrorKind::UnexpectedDigest,
        ErrorKind::DiskSpace,
        ErrorKind::Config,
        ErrorKind::ContainerdUnreachable,
        ErrorKind::Busy,
        ErrorKind::Containerd,
    ];

    /// The label, as written in the status file and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not-found",
            ErrorKind::RateLimited => "rate-limited",
            ErrorKind::RegistryUnavailable => "registry-unavailable",
            ErrorKind::RegistryError => "registry-error",
            ErrorKind::Network => "network",
            ErrorKind::Tls => "tls",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::BadManifest => "bad-manifest",
            ErrorKind::NoPlatform => "no-platform",
            ErrorKind::UnexpectedDigest => "unexpected-digest",
            ErrorKind::DiskSpace => "disk-space",
            ErrorKind::Config => "config",
            ErrorKind::ContainerdUnreachable => "containerd-unreachable",
            ErrorKind::Busy => "busy",
            ErrorKind::Containerd => "containerd",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_serialize_as_displayed() {
        let labels: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
        for kind in ErrorKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.to_string())
            );
        }
    }

    #[test]
    fn the_deploy_readme_documents_every_kind() {
        let readme = include_str!("../deploy/README.md");
        for kind in ErrorKind::ALL {
            assert!(
                readme.contains(&format!("`{kind}`")),
                "deploy/README.md does not document the error kind `{kind}`"
            );
        }
    }
}
