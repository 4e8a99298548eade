//! Why a pull failed: every variant names the image, and maps to a bounded kind and a retry
//! decision for the agent's scheduler.

use super::unpack::UnpackError;
use crate::kind::ErrorKind;
use crate::platform::Platform;
use crate::registry::RegistryError;
use crate::store::StoreError;

/// Why an image could not be pulled. Every variant names the image.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry failed or served bad content.
    #[error("cannot pull {image}")]
    Registry {
        /// The image as requested.
        image: String,
        /// What the registry did.
        #[source]
        source: RegistryError,
    },
    /// containerd failed.
    #[error("cannot pull {image}: containerd failed")]
    Store {
        /// The image as requested.
        image: String,
        /// What containerd did.
        #[source]
        source: StoreError,
    },
    /// The index has nothing for the requested platform.
    #[error("cannot pull {image}: no manifest for platform {platform} (the image has: {available}); choose one with --platform")]
    NoPlatform {
        /// The image as requested.
        image: String,
        /// The platform asked for.
        platform: Platform,
        /// What the index offers.
        available: String,
    },
    /// A layer could not be unpacked.
    #[error("cannot pull {image}")]
    Unpack {
        /// The image as requested.
        image: String,
        /// What went wrong.
        #[source]
        source: UnpackError,
    },
    /// Pulling would leave containerd's filesystem with less free space than the reserve.
    #[error("cannot pull {image}: {source}")]
    DiskSpace {
        /// The image as requested.
        image: String,
        /// How much was needed and free.
        #[source]
        source: crate::space::SpaceError,
    },
    /// The pull took longer than a pass waits for one image; what it stored is kept and
    /// resumed from by the next pull.
    #[error("cannot pull {image}: still pulling after {} (--max-pull-time); the next pass resumes from the bytes stored so far", humantime::format_duration(*after))]
    TooSlow {
        /// The image as requested.
        image: String,
        /// How long it was given.
        after: std::time::Duration,
    },
    /// The tag resolved to another digest than the one expected for it.
    #[error(
        "cannot pull {image}: the tag resolves to {got}{}, but the list expects {expected}; \
         nothing was pulled and the node keeps what it holds. A mirror or pull-through cache \
         serving a stale copy, a registry that rewrote the manifest, or the tag moved: if it \
         moved on purpose, update `expect:`",
        manifest.as_ref().map(|m| format!(" (its manifest for this node: {m})")).unwrap_or_default()
    )]
    UnexpectedDigest {
        /// The image as requested.
        image: String,
        /// The digest the list expects.
        expected: crate::digest::Digest,
        /// What the tag resolved to.
        got: crate::digest::Digest,
        /// The platform manifest chosen from it, when it is an index.
        manifest: Option<crate::digest::Digest>,
    },
    /// The image's own documents contradict each other.
    #[error("cannot pull {image}: {problem}")]
    Malformed {
        /// The image as requested.
        image: String,
        /// What is inconsistent.
        problem: String,
    },
}

impl PullError {
    /// Whether the same pull may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            PullError::Registry { source, .. } => source.is_retryable(),
            PullError::Store { source, .. } => source.is_retryable(),
            PullError::Unpack { source, .. } => match source {
                UnpackError::Store { source, .. } => source.is_retryable(),
                UnpackError::DiffId { .. } | UnpackError::Expanded { .. } => false,
            },
            PullError::TooSlow { .. } => true,
            PullError::NoPlatform { .. }
            | PullError::UnexpectedDigest { .. }
            | PullError::Malformed { .. }
            | PullError::DiskSpace { .. } => false,
        }
    }

    /// The failure's kind, a bounded label for status, metrics and summaries.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PullError::Registry { source, .. } => source.kind(),
            PullError::Store { source, .. } => source.kind(),
            PullError::NoPlatform { .. } => ErrorKind::NoPlatform,
            PullError::UnexpectedDigest { .. } => ErrorKind::UnexpectedDigest,
            PullError::Unpack { source, .. } => match source {
                UnpackError::DiffId { .. } => ErrorKind::Corrupt,
                UnpackError::Expanded { .. } => ErrorKind::DiskSpace,
                UnpackError::Store { source, .. } => source.kind(),
            },
            PullError::Malformed { .. } => ErrorKind::BadManifest,
            PullError::DiskSpace { .. } => ErrorKind::DiskSpace,
            PullError::TooSlow { .. } => ErrorKind::Network,
        }
    }

    /// Wraps containerd's failures while pulling `image`.
    pub(super) fn store(image: &impl ToString) -> impl Fn(StoreError) -> PullError {
        let image = image.to_string();
        move |source| PullError::Store {
            image: image.clone(),
            source,
        }
    }

    /// Wraps the registry's failures while pulling `image`.
    pub(super) fn registry(image: &impl ToString) -> impl Fn(RegistryError) -> PullError {
        let image = image.to_string();
        move |source| PullError::Registry {
            image: image.clone(),
            source,
        }
    }
}
