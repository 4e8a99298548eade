//! Every label prepull writes or reads: the ones containerd's own pull and unpack write (read by
//! containerd's garbage collector and by CRI), CRI's marks on image records, and the ownership
//! labels prepull's lists put on the pins they set. Keys and values are spelled only here.

use std::collections::HashMap;

use crate::digest::Digest;
use crate::oci::Manifest;
use crate::reference::Reference;

/// Prefix of the label naming a blob's source repository per registry host.
pub const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source.";
/// Prefix of every GC reference: what follows says what kind of resource the value names.
pub const GC_REF: &str = "containerd.io/gc.ref.";
/// Prefix of every GC reference to content (the value is a digest).
pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Index -> manifest GC reference prefix (`.m.<i>`).
pub const GC_REF_MANIFEST: &str = "containerd.io/gc.ref.content.m.";
/// Manifest -> config GC reference.
pub const GC_REF_CONFIG: &str = "containerd.io/gc.ref.content.config";
/// Manifest -> layer GC reference prefix (`.l.<i>`).
pub const GC_REF_LAYER: &str = "containerd.io/gc.ref.content.l.";
/// Prefix of the config label that roots an image's snapshot chain for GC (`.<snapshotter>`).
pub const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// Lease expiry.
pub const GC_EXPIRE: &str = "containerd.io/gc.expire";
/// Label containerd's unpacker puts on the snapshots it creates (the chain ID).
pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// Label giving a layer blob's uncompressed digest.
pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// Marks an image record as CRI-managed.
pub const CRI_MANAGED: &str = "io.cri-containerd.image";
/// The value of [`CRI_MANAGED`] CRI writes.
pub const MANAGED: &str = "managed";
/// Marks an image record as pinned against kubelet image GC.
pub const CRI_PINNED: &str = "io.cri-containerd.pinned";
/// The value of [`CRI_PINNED`] CRI reads.
pub const PINNED: &str = "pinned";
/// The start of every pin ownership label a prepull list sets; the owner's name follows.
pub const PINNED_BY: &str = "prepull.io/pinned-by.";
/// The single ownership label earlier versions wrote (`=<entry>`, without an owner): `prepull
/// unpin` removes it; agents neither set nor release it.
pub const LEGACY_PINNED_FOR: &str = "prepull.io/pinned-for";

/// `containerd.io/distribution.source.<registry>=<repository>`, as containerd's fetch writes.
pub fn distribution_source(reference: &Reference) -> HashMap<String, String> {
    HashMap::from([(
        format!("{DISTRIBUTION_SOURCE}{}", reference.registry()),
        reference.repository().to_string(),
    )])
}

/// `registry/repository` a blob came from, read from its distribution-source labels.
pub fn source_of(labels: &HashMap<String, String>) -> Option<String> {
    labels.iter().find_map(|(k, v)| {
        let registry = k.strip_prefix(DISTRIBUTION_SOURCE)?;
        let repo = v.split(',').next()?;
        Some(format!("{registry}/{repo}"))
    })
}

/// A manifest's labels: `base` plus GC references to its config and each layer.
pub fn manifest_refs(
    base: &HashMap<String, String>,
    manifest: &Manifest,
) -> HashMap<String, String> {
    let mut labels = base.clone();
    labels.insert(
        GC_REF_CONFIG.to_string(),
        manifest.config.digest.to_string(),
    );
    for (i, layer) in manifest.layers.iter().enumerate() {
        labels.insert(format!("{GC_REF_LAYER}{i}"), layer.digest.to_string());
    }
    labels
}

/// An index's labels: `base` plus the GC reference to the manifest at position `i`, the one
/// pulled (the other platforms' manifests are not in the store).
pub fn index_refs(
    base: &HashMap<String, String>,
    i: usize,
    manifest: &Digest,
) -> HashMap<String, String> {
    let mut labels = base.clone();
    labels.insert(format!("{GC_REF_MANIFEST}{i}"), manifest.to_string());
    labels
}

/// The config's label rooting the top of its snapshot chain in `snapshotter`.
pub fn snapshot_ref(snapshotter: &str, chain_top: &Digest) -> HashMap<String, String> {
    HashMap::from([(
        format!("{GC_REF_SNAPSHOT}{snapshotter}"),
        chain_top.to_string(),
    )])
}

/// The labels CRI's pull puts on image records; with `pin`, also CRI's pin.
pub fn record_labels(pin: bool) -> HashMap<String, String> {
    let mut labels = HashMap::from([(CRI_MANAGED.to_string(), MANAGED.to_string())]);
    if pin {
        labels.insert(CRI_PINNED.to_string(), PINNED.to_string());
    }
    labels
}

/// Whether a record carries the labels [`record_labels`]`(pin)` writes.
pub fn has_record_labels(labels: &HashMap<String, String>, pin: bool) -> bool {
    labels.get(CRI_MANAGED).map(String::as_str) == Some(MANAGED)
        && (!pin || labels.get(CRI_PINNED).map(String::as_str) == Some(PINNED))
}

/// What a GC reference label names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GcRef<'a> {
    /// A blob in the content store.
    Content(Digest),
    /// A snapshot: its snapshotter and key.
    Snapshot {
        /// The snapshotter.
        snapshotter: &'a str,
        /// The snapshot's key.
        key: &'a str,
    },
}

/// Reads one label as containerd's garbage collector does: `None` when it is no GC reference
/// (or names content by something that is not a digest).
pub fn gc_ref<'a>(key: &'a str, value: &'a str) -> Option<GcRef<'a>> {
    let reference = key.strip_prefix(GC_REF)?;
    if let Some(snapshotter) = reference.strip_prefix("snapshot.") {
        return Some(GcRef::Snapshot {
            snapshotter,
            key: value,
        });
    }
    if reference.starts_with("content") {
        return value.parse().ok().map(GcRef::Content);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_source_label_names_registry_and_repo() {
        let r = Reference::parse("nginx").unwrap();
        let l = distribution_source(&r);
        assert_eq!(
            l.get("containerd.io/distribution.source.docker.io")
                .map(String::as_str),
            Some("library/nginx")
        );
        assert_eq!(source_of(&l).as_deref(), Some("docker.io/library/nginx"));
    }

    #[test]
    fn gc_references_are_read_as_containerd_reads_them() {
        let d = Digest::sha256(b"x");
        let text = d.to_string();
        assert_eq!(
            gc_ref("containerd.io/gc.ref.content.l.0", &text),
            Some(GcRef::Content(d))
        );
        assert_eq!(
            gc_ref("containerd.io/gc.ref.snapshot.overlayfs", "sha256:k"),
            Some(GcRef::Snapshot {
                snapshotter: "overlayfs",
                key: "sha256:k"
            })
        );
        assert_eq!(gc_ref("containerd.io/gc.ref.content.config", "junk"), None);
        assert_eq!(gc_ref(CRI_MANAGED, MANAGED), None);
    }

    #[test]
    fn record_labels_are_what_the_warm_check_wants() {
        assert!(has_record_labels(&record_labels(true), true));
        assert!(has_record_labels(&record_labels(false), false));
        assert!(!has_record_labels(&record_labels(false), true));
    }
}
