//! What the deep check reports: one finding per path that differs from its layer, named by the
//! layer that wrote it, so a repair can start from the lowest damaged layer.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::digest::Digest;

/// A layer of an image, as the deep check names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayerId {
    /// Its position in the manifest, base first.
    pub index: usize,
    /// The layer blob.
    pub digest: Digest,
    /// The snapshot holding it (and the layers below it).
    pub chain_id: Digest,
}

/// What is wrong with a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The layer has it; the snapshot does not.
    Missing,
    /// The snapshot has it; the layer does not.
    Added,
    /// A file where a directory should be, and the like.
    Type,
    /// A regular file of the wrong length.
    Size,
    /// A regular file whose bytes differ.
    Content,
    /// Permission bits, setuid, setgid or sticky differ.
    Mode,
    /// Owner or group differ.
    Owner,
    /// A symbolic link points elsewhere.
    LinkTarget,
    /// A hard link is no longer the same file as its target.
    HardLink,
    /// A device's major or minor number differs.
    Device,
    /// A path the layer deletes is there again (its whiteout is gone).
    Whiteout,
    /// A directory the layer makes opaque is not marked so.
    Opaque,
    /// The snapshot's directory is gone.
    DirectoryMissing,
    /// The snapshot's directory is empty although the layer has files.
    DirectoryEmpty,
    /// The path cannot be read (an I/O error on disk).
    Unreadable,
}

impl FindingKind {
    /// The kind as a bounded label (metrics): `snapshot_` and the kind in snake case.
    pub fn label(self) -> &'static str {
        match self {
            FindingKind::Missing => "snapshot_missing_path",
            FindingKind::Added => "snapshot_added_path",
            FindingKind::Type => "snapshot_type",
            FindingKind::Size => "snapshot_size",
            FindingKind::Content => "snapshot_content",
            FindingKind::Mode => "snapshot_mode",
            FindingKind::Owner => "snapshot_owner",
            FindingKind::LinkTarget => "snapshot_link_target",
            FindingKind::HardLink => "snapshot_hard_link",
            FindingKind::Device => "snapshot_device",
            FindingKind::Whiteout => "snapshot_whiteout",
            FindingKind::Opaque => "snapshot_opaque",
            FindingKind::DirectoryMissing => "snapshot_directory_missing",
            FindingKind::DirectoryEmpty => "snapshot_directory_empty",
            FindingKind::Unreadable => "snapshot_unreadable",
        }
    }

    /// Short words for the kind, as printed.
    pub fn describe(self) -> &'static str {
        match self {
            FindingKind::Missing => "missing",
            FindingKind::Added => "not in the layer",
            FindingKind::Type => "wrong type",
            FindingKind::Size => "wrong size",
            FindingKind::Content => "content differs",
            FindingKind::Mode => "wrong mode",
            FindingKind::Owner => "wrong owner",
            FindingKind::LinkTarget => "symlink retargeted",
            FindingKind::HardLink => "hard link broken",
            FindingKind::Device => "wrong device numbers",
            FindingKind::Whiteout => "deleted path is back",
            FindingKind::Opaque => "opaque marker missing",
            FindingKind::DirectoryMissing => "snapshot directory missing",
            FindingKind::DirectoryEmpty => "snapshot directory empty",
            FindingKind::Unreadable => "unreadable",
        }
    }
}

/// One difference between a layer and its snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The layer that wrote the path (for a path the layer does not have, the layer whose
    /// directory holds it).
    pub layer: LayerId,
    /// The path inside the root filesystem (`/bin/sh`); `/` for the snapshot directory itself.
    pub path: String,
    /// What differs.
    pub kind: FindingKind,
    /// What the layer says.
    pub expected: String,
    /// What the snapshot holds.
    pub found: String,
}

impl Finding {
    pub(crate) fn new(
        layer: &LayerId,
        path: &Path,
        kind: FindingKind,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Finding {
        Finding {
            layer: layer.clone(),
            path: format!("/{}", path.to_string_lossy()),
            kind,
            expected: expected.into(),
            found: found.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "layer {} ({}) {}: {}: expected {}, found {}",
            self.layer.index,
            self.layer.digest,
            self.path,
            self.kind.describe(),
            self.expected,
            self.found
        )
    }
}

/// Findings of one check, at most `cap` kept (the rest counted): a snapshot wiped of a
/// million files must not fill memory with a million findings.
#[derive(Debug, Default)]
pub struct Findings {
    kept: Vec<(u64, Finding)>,
    omitted: usize,
    cap: usize,
}

impl Findings {
    /// An empty list keeping at most `cap` findings.
    pub fn new(cap: usize) -> Findings {
        Findings {
            kept: Vec::new(),
            omitted: 0,
            cap,
        }
    }

    /// Adds a finding about the path whose key (see `compare`) is `key`.
    pub(crate) fn push(&mut self, key: u64, finding: Finding) {
        if self.kept.len() < self.cap {
            self.kept.push((key, finding));
        } else {
            self.omitted += 1;
        }
    }

    /// Forgets what was found about the path `key`: a later entry of the same layer replaced it.
    pub(crate) fn forget(&mut self, key: u64) {
        self.kept.retain(|(k, _)| *k != key);
    }

    /// Forgets what was found about the path `key` of the kinds `which` selects.
    pub(crate) fn forget_where(&mut self, key: u64, which: impl Fn(FindingKind) -> bool) {
        self.kept.retain(|(k, f)| *k != key || !which(f.kind));
    }

    /// Replaces every finding with one `DirectoryEmpty` finding: the directory was empty, so
    /// all of it is missing, and one line says so better than a line per path.
    pub(crate) fn summarize_empty(&mut self, layer: &LayerId, dir: &Path) {
        if self.is_empty() {
            return;
        }
        self.kept.clear();
        self.omitted = 0;
        self.kept.push((
            0,
            Finding::new(
                layer,
                Path::new(""),
                FindingKind::DirectoryEmpty,
                "the layer's files",
                format!("{} empty", dir.display()),
            ),
        ));
    }

    /// Findings kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.omitted == 0
    }

    /// The findings kept, and how many more there were.
    pub fn into_parts(self) -> (Vec<Finding>, usize) {
        (
            self.kept.into_iter().map(|(_, f)| f).collect(),
            self.omitted,
        )
    }
}
