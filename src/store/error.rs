//! Errors from containerd, mapped from gRPC statuses to what they mean for a pull.

use std::path::PathBuf;

use crate::kind::ErrorKind;

/// Something went wrong between prepull and containerd.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The socket could not be reached.
    #[error("cannot connect to containerd at {}: is containerd running, and is this the right socket (--containerd)?", socket.display())]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A namespace name containerd would refuse.
    #[error("invalid containerd namespace {0:?} (letters, digits, '.', '_' and '-')")]
    InvalidNamespace(String),
    /// The object does not exist.
    #[error("containerd {op} {what}: not found")]
    NotFound {
        /// The RPC.
        op: &'static str,
        /// The object (digest, image name, ref).
        what: String,
    },
    /// containerd refused a commit: the bytes it holds do not match the expected digest/size.
    #[error("containerd {op} {what}: content does not match: {message}")]
    Mismatch {
        /// The RPC.
        op: &'static str,
        /// The object.
        what: String,
        /// containerd's message.
        message: String,
    },
    /// Another writer holds the ingest ref.
    #[error("containerd {op} {what}: busy ({message})")]
    Busy {
        /// The RPC.
        op: &'static str,
        /// The object.
        what: String,
        /// containerd's message.
        message: String,
    },
    /// The connection to containerd broke (containerd restarting, crashed, or upgraded).
    #[error("containerd {op} {what}: connection lost ({message})")]
    Disconnected {
        /// The RPC.
        op: &'static str,
        /// The object.
        what: String,
        /// What the transport said.
        message: String,
    },
    /// containerd's filesystem is full (`ENOSPC`, `EDQUOT`), whatever code containerd sent it
    /// with: disk space to free, not a containerd fault.
    #[error(
        "containerd {op} {what}: containerd's filesystem is full; free space there ({message})"
    )]
    OutOfSpace {
        /// The RPC.
        op: &'static str,
        /// The object.
        what: String,
        /// What containerd said.
        message: String,
    },
    /// A snapshot's mounts are not the kind its files can be found from (`bind` or `overlay`).
    #[error("cannot find the files of {snapshotter} snapshot {snapshot} from its mounts ({why}); the deep check understands the overlayfs and native snapshotters")]
    Mounts {
        /// The snapshotter.
        snapshotter: String,
        /// The snapshot viewed.
        snapshot: String,
        /// What the mounts were, and what was wrong with them.
        why: String,
    },
    /// This containerd does not have the service asked for (the transfer service before 1.7).
    #[error("containerd {op} {what}: not supported by this containerd ({message})")]
    Unsupported {
        /// The RPC.
        op: &'static str,
        /// The object.
        what: String,
        /// What containerd said.
        message: String,
    },
    /// Any other gRPC failure.
    #[error("containerd {op} {what}: {} ({:?})", status.message(), status.code())]
    Rpc {
        /// The RPC.
        op: &'static str,
        /// The object.
        what: String,
        /// The status.
        status: tonic::Status,
    },
}

impl StoreError {
    /// Maps a gRPC status from `op` on `what`.
    pub(crate) fn rpc(
        op: &'static str,
        what: impl Into<String>,
        status: tonic::Status,
    ) -> StoreError {
        let what = what.into();
        if is_out_of_space(status.message()) {
            return StoreError::OutOfSpace {
                op,
                what,
                message: status.message().to_string(),
            };
        }
        match status.code() {
            tonic::Code::NotFound => StoreError::NotFound { op, what },
            tonic::Code::FailedPrecondition => StoreError::Mismatch {
                op,
                what,
                message: status.message().to_string(),
            },
            // containerd 1.x answers `Unavailable`; 2.x wraps the same lock error (e.g.
            // "truncate failed: ref … locked for 5ms") and it arrives as `Unknown`. Whatever the
            // code, another writer holds the ref: wait for it, never fail the pull.
            _ if is_ref_locked(status.message()) => StoreError::Busy {
                op,
                what,
                message: status.message().to_string(),
            },
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                if is_transport_failure(status.message())
                    || status.code() == tonic::Code::Unavailable =>
            {
                StoreError::Disconnected {
                    op,
                    what,
                    message: status.message().to_string(),
                }
            }
            _ => StoreError::Rpc { op, what, status },
        }
    }

    /// The failure's kind, a bounded label for status, metrics and summaries.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Connect { .. } | StoreError::Disconnected { .. } => {
                ErrorKind::ContainerdUnreachable
            }
            StoreError::InvalidNamespace(_) | StoreError::Mounts { .. } => ErrorKind::Config,
            StoreError::Mismatch { .. } => ErrorKind::Corrupt,
            StoreError::Busy { .. } => ErrorKind::Busy,
            StoreError::OutOfSpace { .. } => ErrorKind::DiskSpace,
            StoreError::NotFound { .. }
            | StoreError::Unsupported { .. }
            | StoreError::Rpc { .. } => ErrorKind::Containerd,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Connect { .. }
            | StoreError::Busy { .. }
            | StoreError::Mismatch { .. }
            | StoreError::Disconnected { .. } => true,
            StoreError::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
            ),
            _ => false,
        }
    }
}

/// containerd's content store refuses a second writer of an ingest ref with "ref <ref> locked"
/// (1.6: `ref k8s.io/1/layer-… locked: unavailable`; 2.x adds "for <duration> (since …)").
fn is_ref_locked(message: &str) -> bool {
    message.split("ref ").skip(1).any(|rest| {
        rest.split_whitespace()
            .nth(1)
            .is_some_and(|w| w.starts_with("locked"))
    })
}

/// containerd passes the filesystem's `ENOSPC` (or `EDQUOT`) on in its message when its disk is
/// full: that is disk space to free, not a containerd fault.
fn is_out_of_space(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("no space left on device") || m.contains("disk quota exceeded")
}

/// tonic reports a connection that broke mid-call as `Unknown`/`Cancelled` with the transport's
/// words; those are worth a retry, unlike a real `Unknown` from containerd.
fn is_transport_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "h2 protocol error",
        "transport error",
        "connection",
        "broken pipe",
        "stream closed",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_connections_are_retryable_real_errors_are_not() {
        let e = StoreError::rpc(
            "Content.Write",
            "x",
            tonic::Status::unknown("h2 protocol error: error reading a body from connection"),
        );
        assert!(matches!(e, StoreError::Disconnected { .. }) && e.is_retryable());
        let e = StoreError::rpc(
            "Diff.Apply",
            "x",
            tonic::Status::unknown("failed to extract layer: invalid tar header"),
        );
        assert!(matches!(e, StoreError::Rpc { .. }) && !e.is_retryable());
        let e = StoreError::rpc(
            "Content.Write",
            "x",
            tonic::Status::unavailable("ref layer-x locked for 1s"),
        );
        assert!(matches!(e, StoreError::Busy { .. }));
        // containerd 2.1's answer when two writers share a blob another namespace holds.
        let e = StoreError::rpc(
            "Content.Write",
            "x",
            tonic::Status::unknown(
                "truncate failed: ref k8s.io/1/layer-sha256:79c7 locked for 4.79867ms \
                 (since 2026-11-30 10:58:56.015308968 +0000 UTC m=+0.510735377): unavailable",
            ),
        );
        assert!(matches!(e, StoreError::Busy { .. }) && e.is_retryable());
        assert_eq!(e.kind(), ErrorKind::Busy);
        let e = StoreError::rpc(
            "Diff.Apply",
            "x",
            tonic::Status::unknown("the referenced layer is locked down by policy"),
        );
        assert!(matches!(e, StoreError::Rpc { .. }));
    }

    #[test]
    fn a_full_disk_is_disk_space_not_a_containerd_fault() {
        let e = StoreError::rpc(
            "Content.Write",
            "x",
            tonic::Status::unknown(
                "failed to copy: write /var/lib/containerd/io.containerd.content.v1.content/\
                 ingest/abc/data: no space left on device",
            ),
        );
        assert_eq!(e.kind(), ErrorKind::DiskSpace);
        assert!(!e.is_retryable());
        // Whatever the code: a commit or an unpack that hit the full disk is disk space too.
        for status in [
            tonic::Status::failed_precondition(
                "failed commit on ref \"layer-sha256:ab\": write /var/lib/containerd/x: no space left on device",
            ),
            tonic::Status::not_found("mkdir /var/lib/containerd/snapshots/7: no space left on device"),
            tonic::Status::internal("write meta.db: disk quota exceeded"),
        ] {
            let e = StoreError::rpc("Diff.Apply", "x", status);
            assert!(matches!(e, StoreError::OutOfSpace { .. }), "{e:?}");
            assert_eq!(e.kind(), ErrorKind::DiskSpace);
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("free space there"), "{e}");
        }
        let e = StoreError::rpc(
            "Diff.Apply",
            "x",
            tonic::Status::unknown("invalid tar header"),
        );
        assert_eq!(e.kind(), ErrorKind::Containerd);
    }
}
