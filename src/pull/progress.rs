//! How far a pull has got, readable while it runs: what a progress display shows.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// A pull's progress. Bytes count blobs the node already had as done, so a pull that finds most
/// of an image present ends at its size having downloaded little.
#[derive(Debug, Default)]
pub struct PullProgress {
    total: AtomicU64,
    done: AtomicU64,
    fetched: AtomicU64,
    stage: AtomicU8,
}

/// Where a pull is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Asking the registry what the reference is (or finding it warm on the node).
    Resolving,
    /// Fetching and unpacking its blobs.
    Fetching,
    /// Finished, one way or the other.
    Done,
}

impl PullProgress {
    /// Bytes of the image's content (config and layers); 0 until resolved.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes stored so far, including blobs the node already had.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed).min(self.total())
    }

    /// Bytes downloaded so far: what a pull that failed part way cost the network.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Where the pull is.
    pub fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Relaxed) {
            0 => Stage::Resolving,
            1 => Stage::Fetching,
            _ => Stage::Done,
        }
    }

    pub(super) fn begin(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.stage.store(1, Ordering::Relaxed);
    }

    pub(super) fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn downloaded(&self, bytes: u64) {
        self.fetched.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn finish(&self) {
        self.stage.store(2, Ordering::Relaxed);
    }
}
