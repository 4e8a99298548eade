//! The deep check: each layer's unpacked snapshot compared, file by file, with the layer blob it
//! was unpacked from.
//!
//! Pods run from snapshots, not from blobs. A power cut can leave a committed snapshot with
//! zeroed or truncated files; a hand-run `rm`, `chmod` or editor can change one. None of that
//! shows in the blobs' digests. This module reads each layer's tar (gzip'd, zstd'd or not) as a stream
//! and compares every entry with what is on disk: type, size, content (the file read in step
//! with the entry and compared byte for byte), mode, owner, symlink target, hard links, device
//! numbers, whiteouts and opaque directories, plus paths on disk that no layer has, and snapshot
//! directories that are gone or empty.
//!
//! It knows nothing of containerd: given a reader for each layer blob and the directories, it
//! returns [`Finding`]s. Two layouts exist:
//! - one directory per layer (overlayfs): [`check_layer`] streams the layer against its own
//!   directory, holding a key per path, not the file list;
//! - one directory holding the whole filesystem (native copies the chain into each snapshot):
//!   [`MergedTree`] applies the layers in order (later ones replace, whiteouts delete),
//!   comparing each regular file's bytes with the top snapshot's as they stream by, and
//!   [`check_merged`] compares the rest of the top snapshot with it, naming the layer that wrote
//!   each path; [`check_present`] checks that the snapshots below exist.
//!
//! Start with [`expect`] (layer entries to expectations), then [`compare`] (the disk side) and
//! [`content`] (a file's bytes against its entry's).
//! Modification times are not compared: unpacking sets them, nothing relies on them.

pub mod compare;
pub mod content;
pub mod expect;
pub mod finding;
pub mod rate;
pub mod tar_walk;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::kind::ErrorKind;

pub use compare::{check_layer, check_merged, check_present};
pub use expect::MergedTree;
pub use finding::{Finding, FindingKind, Findings, LayerId};
pub use rate::RateLimiter;
pub use tar_walk::TarError;

/// Paths of one image (native) or one layer (overlayfs) the check holds at most, by default.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Findings kept per layer or image, by default; the rest are counted.
pub const MAX_FINDINGS: usize = 100;

/// What every comparison of one run shares: the stop signal, the read rate and the bounds.
#[derive(Clone, Debug)]
pub struct Context {
    /// Cancelled: stop at the next entry or read.
    pub cancel: CancellationToken,
    /// Shared by every reader, blob and snapshot file alike.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Paths held at most (per image for native, per layer for overlayfs).
    pub max_entries: usize,
    /// Findings kept per comparison.
    pub max_findings: usize,
    /// Layer blob bytes read so far, for a progress display.
    pub layer_bytes_read: Arc<std::sync::atomic::AtomicU64>,
}

impl Context {
    /// A context with the default bounds and no rate limit.
    pub fn new(cancel: CancellationToken) -> Context {
        Context {
            cancel,
            limiter: None,
            max_entries: MAX_ENTRIES,
            max_findings: MAX_FINDINGS,
            layer_bytes_read: Arc::default(),
        }
    }

    /// Accounts for `bytes` read, waiting as the rate requires.
    pub(crate) fn pace(&self, bytes: usize) {
        if let Some(limiter) = &self.limiter {
            limiter.take(bytes, &self.cancel);
        }
    }

    /// `e`, or [`DeepError::Cancelled`] when the failure was the check being cancelled.
    pub(crate) fn error_or_cancelled(&self, e: DeepError) -> DeepError {
        if self.cancel.is_cancelled() {
            DeepError::Cancelled
        } else {
            e
        }
    }
}

/// Why a layer could not be compared at all.
#[derive(Debug, thiserror::Error)]
pub enum DeepError {
    /// The layer blob does not read as a tar archive (it hashed right, so the image itself is
    /// broken, or the blob changed since it was hashed).
    #[error("layer {index} ({digest}) cannot be read as a layer archive")]
    Archive {
        /// Its position, base first.
        index: usize,
        /// The layer blob.
        digest: Digest,
        /// What the archive reader said.
        #[source]
        source: TarError,
    },
    /// The uncompressed layer is not the one the image's config names.
    #[error("layer {index} ({digest}) unpacks to {found}, not to the diff ID {expected} the image's config names: pull the image again")]
    DiffId {
        /// Its position, base first.
        index: usize,
        /// The layer blob.
        digest: Digest,
        /// From the config.
        expected: Digest,
        /// What it hashed to.
        found: String,
    },
    /// More paths than the check holds.
    #[error("layer {index} ({digest}) brings the image past {limit} paths, more than the deep check holds in memory")]
    TooManyEntries {
        /// Its position, base first.
        index: usize,
        /// The layer blob.
        digest: Digest,
        /// The bound.
        limit: usize,
    },
    /// The check was cancelled (a signal).
    #[error("the deep check was interrupted")]
    Cancelled,
}

impl DeepError {
    /// The failure's kind, a bounded label.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DeepError::Archive { .. } | DeepError::DiffId { .. } => ErrorKind::Corrupt,
            DeepError::TooManyEntries { .. } => ErrorKind::BadManifest,
            DeepError::Cancelled => ErrorKind::Containerd,
        }
    }
}

#[cfg(test)]
mod tests;
