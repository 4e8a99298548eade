//! Checking the node's image store: every image record's documents, config and layers read back
//! and hashed, every layer's snapshot present, and unfinished writes that nobody will finish.
//!
//! What a disk, a crash or a hand-run `rm` can do to containerd, and how each shows:
//! - a blob whose bytes changed: it no longer hashes to its digest;
//! - a blob whose file is gone while containerd still lists it: it cannot be read back;
//! - a blob nobody stored: the document that names it points at nothing;
//! - a layer snapshot removed: its chain ID is missing from the snapshotter;
//! - an ingest left by an interrupted pull and never resumed: idle for longer than a threshold.
//!
//! Records that name the same image (its tag, digest reference and ID) are checked once.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::deep_verify::Unpacked;
use crate::digest::Digest;
use crate::image::{self, labels, names};
use crate::oci::{self, Descriptor, Document};
use crate::store::{Ingest, Store, StoreError, Stored, StoredImage};

/// One thing wrong with an image or the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A blob's bytes do not hash to its digest, or its size is wrong.
    Corrupt {
        /// Which part of the image (`manifest`, `config`, `layer 2`…).
        what: String,
        /// The blob.
        digest: Digest,
        /// What was read instead.
        found: String,
    },
    /// containerd lists the blob but cannot read it.
    Unreadable {
        /// Which part of the image.
        what: String,
        /// The blob.
        digest: Digest,
        /// containerd's error.
        why: String,
    },
    /// A blob the image needs is not in the store.
    Missing {
        /// Which part of the image.
        what: String,
        /// The blob.
        digest: Digest,
    },
    /// A manifest, index or config is not a valid document.
    Malformed {
        /// Which part of the image.
        what: String,
        /// The blob.
        digest: Digest,
        /// Why.
        why: String,
    },
    /// A part could not be checked (containerd failed to answer, or it is too large to be a
    /// document); nothing is concluded from it.
    Unchecked {
        /// Which part of the image.
        what: String,
        /// The blob.
        digest: Digest,
        /// Why.
        why: String,
    },
    /// A name CRI gives every image it manages (the digest reference, the image ID) has no
    /// record: the kubelet may not find the image by it.
    MissingRecord {
        /// The record's name.
        name: String,
    },
    /// A layer's snapshot is missing from the snapshotter.
    MissingSnapshot {
        /// The layer's position, base first.
        layer: usize,
        /// The snapshot's name.
        chain_id: Digest,
        /// The snapshotter checked.
        snapshotter: String,
    },
}

impl Problem {
    /// The problem's kind, a bounded name for metrics: `corrupt`, `unreadable`, `missing`,
    /// `malformed`, `unchecked`, `missing_record`, `missing_snapshot`.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::Corrupt { .. } => "corrupt",
            Problem::Unreadable { .. } => "unreadable",
            Problem::Missing { .. } => "missing",
            Problem::Malformed { .. } => "malformed",
            Problem::Unchecked { .. } => "unchecked",
            Problem::MissingRecord { .. } => "missing_record",
            Problem::MissingSnapshot { .. } => "missing_snapshot",
        }
    }

    /// The blob that must be removed before it can be stored again, if any: only bytes that
    /// do not match their digest, or that containerd lists but cannot find. A malformed
    /// document hashes right, so the registry would serve the same bytes again.
    pub fn bad_blob(&self) -> Option<&Digest> {
        match self {
            Problem::Corrupt { digest, .. } | Problem::Unreadable { digest, .. } => Some(digest),
            Problem::Malformed { .. }
            | Problem::Unchecked { .. }
            | Problem::Missing { .. }
            | Problem::MissingSnapshot { .. }
            | Problem::MissingRecord { .. } => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Corrupt {
                what,
                digest,
                found,
            } => write!(f, "{what} {digest} is corrupt: {found}"),
            Problem::Unreadable { what, digest, why } => write!(
                f,
                "{what} {digest} is listed by containerd but cannot be read ({why})"
            ),
            Problem::Missing { what, digest } => write!(f, "{what} {digest} is missing"),
            Problem::Malformed { what, digest, why } => {
                write!(f, "{what} {digest} is not a valid document: {why}")
            }
            Problem::Unchecked { what, digest, why } => {
                write!(f, "{what} {digest} could not be checked: {why}")
            }
            Problem::MissingRecord { name } => {
                write!(f, "its image record {name} is missing")
            }
            Problem::MissingSnapshot {
                layer,
                chain_id,
                snapshotter,
            } => write!(
                f,
                "layer {layer}'s snapshot {chain_id} is missing from the {snapshotter} snapshotter"
            ),
        }
    }
}

/// One image (all records pointing at the same target) and what is wrong with it.
#[derive(Clone, Debug)]
pub struct ImageCheck {
    /// The records' names, tags first.
    pub names: Vec<String>,
    /// The target every record points at.
    pub target: Digest,
    /// The registry and repository it came from (`registry/repo`), if known.
    pub source: Option<String>,
    /// Problems found; empty when the image is sound.
    pub problems: Vec<Problem>,
    /// Blobs read back.
    pub blobs: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// Its platform manifests whose every layer has its snapshot: what a deep check compares.
    pub unpacked: Vec<Unpacked>,
    /// Layers found present with the right size whose hash is left for later
    /// ([`LayerCheck::Later`]): what they are (`layer 2`…) and their descriptors.
    pub unhashed: Vec<(String, Descriptor)>,
}

impl ImageCheck {
    /// Whether all that is wrong is records missing (a pull killed while writing them): the
    /// content is whole, and `prepull repair` writes them again without the network.
    pub fn records_incomplete(&self) -> bool {
        !self.problems.is_empty()
            && self
                .problems
                .iter()
                .all(|p| matches!(p, Problem::MissingRecord { .. }))
    }

    /// A name to pull the image by again: its repository at its digest, from a record's name or
    /// from where its content came from.
    pub fn pull_name(&self) -> Option<String> {
        // By digest: a tag may have moved on upstream, and it is this image that needs mending.
        self.names
            .iter()
            .filter(|n| !names::is_id(n))
            .find_map(|n| crate::reference::Reference::parse(n).ok())
            .map(|r| r.with_digest(self.target.clone()).to_string())
            .or_else(|| {
                self.source
                    .as_ref()
                    .map(|repo| format!("{repo}@{}", self.target))
            })
    }
}

/// How deep to look.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The snapshotter whose snapshots are checked; `None` skips snapshots.
    pub snapshotter: Option<String>,
    /// How layer blobs are checked (documents and configs are always read back and hashed).
    pub layers: LayerCheck,
}

/// How a check looks at layer blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCheck {
    /// Read back and hashed (slow on big stores).
    Hash,
    /// Present with the right size.
    Size,
    /// Present with the right size, the hash left for later ([`ImageCheck::unhashed`]): for a
    /// deep check, which reads every layer it compares anyway and hashes it as it does, so that
    /// no layer is read twice. [`hash_later`] hashes the rest.
    Later,
}

/// Checks images in one containerd namespace.
pub struct Checker<'a> {
    store: &'a Store,
    options: CheckOptions,
}

/// Groups image records by the target they point at, names sorted with tags first.
pub fn group_records(records: Vec<StoredImage>) -> BTreeMap<String, Vec<StoredImage>> {
    let mut groups: BTreeMap<String, Vec<StoredImage>> = BTreeMap::new();
    for record in records {
        let Some(target) = record.target.as_ref().map(|t| t.digest.to_string()) else {
            continue;
        };
        groups.entry(target).or_default().push(record);
    }
    for records in groups.values_mut() {
        records.sort_by_key(|r| names::display_order(&r.name));
    }
    groups
}

impl<'a> Checker<'a> {
    /// A checker for `store`.
    pub fn new(store: &'a Store, options: CheckOptions) -> Checker<'a> {
        Checker { store, options }
    }

    /// Checks the image that `records` (all pointing at `target`) name. It walks the image's
    /// graph itself rather than through the store's graph reads, which stop at the first fault:
    /// a check reports every part that is wrong.
    pub async fn check(
        &self,
        target: &Digest,
        records: &[StoredImage],
    ) -> Result<ImageCheck, StoreError> {
        let mut check = ImageCheck {
            names: records.iter().map(|r| r.name.clone()).collect(),
            target: target.clone(),
            source: None,
            problems: Vec::new(),
            blobs: 0,
            bytes: 0,
            unpacked: Vec::new(),
            unhashed: Vec::new(),
        };
        check.source = self.source(target).await;
        let top_size = records
            .first()
            .and_then(|r| r.target.as_ref())
            .map(|t| t.size);
        let Some(top) = self
            .document(
                &mut check,
                "top-level document",
                target,
                top_size,
                oci::MAX_MANIFEST_BYTES,
            )
            .await?
        else {
            return Ok(check);
        };
        let Some(manifests) = self.manifests_of(&mut check, target, &top).await? else {
            return Ok(check);
        };
        let mut configs: Vec<Digest> = Vec::new();
        for (what, descriptor) in manifests {
            let bytes = if &descriptor.digest == target {
                Some(top.clone())
            } else {
                self.document(
                    &mut check,
                    &what,
                    &descriptor.digest,
                    Some(descriptor.size),
                    oci::MAX_MANIFEST_BYTES,
                )
                .await?
            };
            let Some(bytes) = bytes else { continue };
            match Document::parse(&bytes, None) {
                Ok(Document::Manifest(manifest, _)) => {
                    configs.push(manifest.config.digest.clone());
                    self.check_manifest(&mut check, &descriptor.digest, &manifest)
                        .await?
                }
                // Attestation manifests and the like are not images: nothing below them to check.
                Ok(Document::Index(..)) => {}
                Err(e) => check.problems.push(Problem::Malformed {
                    what,
                    digest: descriptor.digest.clone(),
                    why: e.to_string(),
                }),
            }
        }
        self.check_records(&mut check, target, records, &configs)
            .await?;
        Ok(check)
    }

    /// The manifests below the top document `top` (itself, when it is a manifest; those of an
    /// index that were pulled, named by platform). `None` when the top document is malformed
    /// (reported): nothing below it can be found.
    async fn manifests_of(
        &self,
        check: &mut ImageCheck,
        target: &Digest,
        top: &[u8],
    ) -> Result<Option<Vec<(String, Descriptor)>>, StoreError> {
        let index = match Document::parse(top, None) {
            Ok(Document::Manifest(..)) => {
                let itself = Descriptor {
                    media_type: String::new(),
                    digest: target.clone(),
                    size: top.len() as u64,
                    platform: None,
                    urls: Vec::new(),
                    annotations: Default::default(),
                };
                return Ok(Some(vec![("manifest".to_string(), itself)]));
            }
            Ok(Document::Index(index, _)) => index,
            Err(e) => {
                check.problems.push(Problem::Malformed {
                    what: "top-level document".into(),
                    digest: target.clone(),
                    why: e.to_string(),
                });
                return Ok(None);
            }
        };
        // Only the platforms that were pulled are in the store; at least one must be.
        let mut present = Vec::new();
        for d in &index.manifests {
            if self.store.info(&d.digest).await?.is_some() {
                let platform = d
                    .platform
                    .as_ref()
                    .map(|p| p.normalized().to_string())
                    .unwrap_or_else(|| "unknown platform".into());
                present.push((format!("manifest for {platform}"), d.clone()));
            }
        }
        if present.is_empty() {
            check.problems.push(Problem::Missing {
                what: "every platform's manifest of the index".into(),
                digest: target.clone(),
            });
        }
        Ok(Some(present))
    }

    /// CRI names each image it manages by tag, digest reference and ID: the ID and a digest
    /// reference must exist beside the tags.
    async fn check_records(
        &self,
        check: &mut ImageCheck,
        target: &Digest,
        records: &[StoredImage],
        configs: &[Digest],
    ) -> Result<(), StoreError> {
        let managed = records
            .iter()
            .any(|r| r.labels.contains_key(labels::CRI_MANAGED));
        if !managed {
            return Ok(());
        }
        // One digest reference is expected, not one per tag: another name given to the image
        // (`ctr images tag`, a retag in another repository) has none, and needs none.
        let by_digest = records.iter().any(|r| names::is_digest_reference(&r.name));
        let mut expected: Vec<String> = records
            .iter()
            .filter(|r| !by_digest && !names::is_id(&r.name))
            .find_map(|r| crate::reference::Reference::parse(&r.name).ok())
            .map(|r| r.with_digest(target.clone()).to_string())
            .into_iter()
            .collect();
        if configs.len() == 1 {
            expected.push(configs[0].to_string());
        }
        for name in expected {
            // An ID record may point at another name of the same image (an index and one of
            // its platform manifests pulled by digest share a config): that is not missing.
            if !check.names.contains(&name) && self.store.image(&name).await?.is_none() {
                check.problems.push(Problem::MissingRecord { name });
            }
        }
        Ok(())
    }

    async fn check_manifest(
        &self,
        check: &mut ImageCheck,
        digest: &Digest,
        manifest: &oci::Manifest,
    ) -> Result<(), StoreError> {
        let config = self
            .document(
                check,
                "config",
                &manifest.config.digest,
                Some(manifest.config.size),
                oci::MAX_CONFIG_BYTES,
            )
            .await?;
        for (i, layer) in manifest.layers.iter().enumerate() {
            self.blob(check, &format!("layer {i}"), layer).await?;
        }
        let (Some(snapshotter), Some(config)) = (&self.options.snapshotter, config) else {
            return Ok(());
        };
        // Artifacts (Helm charts, Wasm modules…) have no layers to unpack.
        let image_config = manifest.config.media_type.is_empty()
            || manifest.config.media_type == oci::OCI_CONFIG
            || manifest.config.media_type == oci::DOCKER_CONFIG;
        if !image_config {
            return Ok(());
        }
        let (diff_ids, process, architecture) = match serde_json::from_slice::<oci::Config>(&config)
        {
            Ok(c) => (c.rootfs.diff_ids, c.config, c.architecture),
            Err(e) => {
                check.problems.push(Problem::Malformed {
                    what: "config".into(),
                    digest: manifest.config.digest.clone(),
                    why: e.to_string(),
                });
                return Ok(());
            }
        };
        for (layer, chain_id) in image::chain_ids(&diff_ids).into_iter().enumerate() {
            if !self
                .store
                .snapshot_exists(snapshotter, &chain_id.to_string())
                .await?
            {
                check.problems.push(Problem::MissingSnapshot {
                    layer,
                    chain_id,
                    snapshotter: snapshotter.clone(),
                });
                // The layers above cannot exist without it.
                return Ok(());
            }
        }
        if !diff_ids.is_empty() && diff_ids.len() == manifest.layers.len() {
            check.unpacked.push(Unpacked {
                manifest: digest.clone(),
                layers: manifest.layers.clone(),
                diff_ids,
                process,
                architecture,
            });
        }
        Ok(())
    }

    /// Reads a document or config back, verified; `None` (and a problem) when it is unusable.
    async fn document(
        &self,
        check: &mut ImageCheck,
        what: &str,
        digest: &Digest,
        size: Option<u64>,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if self.store.info(digest).await?.is_none() {
            check.problems.push(Problem::Missing {
                what: what.to_string(),
                digest: digest.clone(),
            });
            return Ok(None);
        }
        let bytes = match self.store.read_blob(digest, limit).await {
            Ok(b) => b,
            Err(e @ StoreError::NotFound { .. }) => {
                check.problems.push(Problem::Unreadable {
                    what: what.to_string(),
                    digest: digest.clone(),
                    why: e.to_string(),
                });
                return Ok(None);
            }
            Err(e) => {
                check.problems.push(Problem::Unchecked {
                    what: what.to_string(),
                    digest: digest.clone(),
                    why: e.to_string(),
                });
                return Ok(None);
            }
        };
        check.blobs += 1;
        check.bytes += bytes.len() as u64;
        let got = Digest::of(digest.algorithm(), &bytes);
        if &got != digest || size.is_some_and(|s| s != bytes.len() as u64) {
            check.problems.push(Problem::Corrupt {
                what: what.to_string(),
                digest: digest.clone(),
                found: format!("{} bytes hashing to {got}", bytes.len()),
            });
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Checks a layer blob: hashed in full, or present with the right size (and, with
    /// [`LayerCheck::Later`], listed to be hashed later).
    async fn blob(
        &self,
        check: &mut ImageCheck,
        what: &str,
        descriptor: &Descriptor,
    ) -> Result<(), StoreError> {
        let digest = &descriptor.digest;
        if self.options.layers != LayerCheck::Hash {
            match self.store.info(digest).await? {
                None => check.problems.push(Problem::Missing {
                    what: what.to_string(),
                    digest: digest.clone(),
                }),
                Some(info) if info.size.max(0) as u64 != descriptor.size => {
                    check.problems.push(Problem::Corrupt {
                        what: what.to_string(),
                        digest: digest.clone(),
                        found: format!("containerd records {} bytes", info.size),
                    })
                }
                Some(_) if self.options.layers == LayerCheck::Later => {
                    check.unhashed.push((what.to_string(), descriptor.clone()));
                }
                Some(_) => {}
            }
            return Ok(());
        }
        let stored = self.store.hash_blob(digest).await;
        read_back(check, what, descriptor, stored);
        Ok(())
    }

    /// `registry/repo` from the top document's `containerd.io/distribution.source.*` label.
    async fn source(&self, target: &Digest) -> Option<String> {
        let info = self.store.info(target).await.ok()??;
        labels::source_of(&info.labels)
    }
}

/// Hashes the layers of `check` whose hash was left for later ([`LayerCheck::Later`]) and that
/// `now` selects, recording what they show.
pub async fn hash_later(store: &Store, check: &mut ImageCheck, now: impl Fn(&Digest) -> bool) {
    let (hash, keep) = std::mem::take(&mut check.unhashed)
        .into_iter()
        .partition::<Vec<_>, _>(|(_, d)| now(&d.digest));
    check.unhashed = keep;
    for (what, descriptor) in hash {
        let stored = store.hash_blob(&descriptor.digest).await;
        read_back(check, &what, &descriptor, stored);
    }
}

/// Records what reading the layer blob `descriptor` (`what`: `layer 2`…) back found: by the
/// check itself, or by a deep check that hashed it as it read it.
pub fn read_back(
    check: &mut ImageCheck,
    what: &str,
    descriptor: &Descriptor,
    stored: Result<Stored, StoreError>,
) {
    let digest = &descriptor.digest;
    match stored {
        Err(e) => check.problems.push(Problem::Unchecked {
            what: what.to_string(),
            digest: digest.clone(),
            why: e.to_string(),
        }),
        Ok(Stored::Absent) => check.problems.push(Problem::Missing {
            what: what.to_string(),
            digest: digest.clone(),
        }),
        Ok(Stored::Unreadable(why)) => check.problems.push(Problem::Unreadable {
            what: what.to_string(),
            digest: digest.clone(),
            why,
        }),
        Ok(Stored::Read { digest: got, size }) => {
            check.blobs += 1;
            check.bytes += size;
            if &got != digest || size != descriptor.size {
                check.problems.push(Problem::Corrupt {
                    what: what.to_string(),
                    digest: digest.clone(),
                    found: format!("{size} bytes hashing to {got}"),
                });
            }
        }
    }
}

/// Ingests idle for at least `older_than`: writes nobody is going to finish.
pub async fn stale_ingests(store: &Store, older_than: Duration) -> Result<Vec<Ingest>, StoreError> {
    Ok(store
        .ingests()
        .await?
        .into_iter()
        .filter(|i| i.idle.is_some_and(|idle| idle >= older_than))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, target: &Digest) -> StoredImage {
        StoredImage {
            name: name.into(),
            labels: Default::default(),
            target: Some(Descriptor {
                media_type: String::new(),
                digest: target.clone(),
                size: 1,
                platform: None,
                urls: Vec::new(),
                annotations: Default::default(),
            }),
        }
    }

    #[test]
    fn records_of_one_image_are_grouped_tags_first() {
        let (top, two) = (Digest::sha256(b"top"), Digest::sha256(b"two"));
        let groups = group_records(vec![
            record("sha256:cfg", &top),
            record("reg/app@sha256:top", &top),
            record("reg/app:v1", &top),
            record("reg/other:v1", &two),
        ]);
        assert_eq!(groups.len(), 2);
        let names: Vec<&str> = groups[&top.to_string()]
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["reg/app:v1", "reg/app@sha256:top", "sha256:cfg"]);
    }

    #[test]
    fn the_pull_name_is_the_repository_at_the_digest() {
        let d: Digest = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .parse()
            .unwrap();
        let mut c = ImageCheck {
            names: vec!["reg.io/app:v1".into(), "sha256:cfg".into()],
            target: d.clone(),
            source: Some("other.io/app".into()),
            problems: vec![],
            blobs: 0,
            bytes: 0,
            unpacked: vec![],
            unhashed: vec![],
        };
        // Not the tag, which may have moved on upstream.
        assert_eq!(c.pull_name(), Some(format!("reg.io/app@{d}")));
        c.names = vec!["sha256:cfg".into()];
        assert_eq!(c.pull_name(), Some(format!("other.io/app@{d}")));
        c.source = None;
        assert_eq!(c.pull_name(), None);
    }
}
