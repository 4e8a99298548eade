//! Errors from containerd, mapped from gRPC statuses to what they mean for a pull.

use std::path::PathBuf;

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
    pub(crate) fn rpc(op: &'static str, what: impl Into<String>, status: tonic::Status) -> StoreError {
        let what = what.into();
        match status.code() {
            tonic::Code::NotFound => StoreError::NotFound { op, what },
            tonic::Code::FailedPrecondition => StoreError::Mismatch {
                op,
                what,
                message: status.message().to_string(),
            },
            tonic::Code::Unavailable if status.message().contains("locked") => StoreError::Busy {
                op,
                what,
                message: status.message().to_string(),
            },
            _ => StoreError::Rpc { op, what, status },
        }
    }

    /// A short, bounded label for metrics and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Connect { .. } => "containerd-unreachable",
            StoreError::InvalidNamespace(_) => "config",
            StoreError::NotFound { .. } => "not-found",
            StoreError::Mismatch { .. } => "corrupt",
            StoreError::Busy { .. } => "busy",
            StoreError::Rpc { .. } => "containerd",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Connect { .. } | StoreError::Busy { .. } | StoreError::Mismatch { .. } => {
                true
            }
            StoreError::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
            ),
            _ => false,
        }
    }
}
