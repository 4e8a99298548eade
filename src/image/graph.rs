//! The steps of an image's graph that do not depend on where its documents come from: which
//! manifest of an index is the node's, what a config says about the layers, and the chain IDs
//! the snapshots of those layers are named by. The pull walks the graph from the registry,
//! the warm check and `unpin` from containerd ([`crate::store`]'s graph reads), `verify` from
//! containerd reporting every problem; all of them take these steps from here.

use crate::digest::Digest;
use crate::oci::{self, Descriptor, Index, Manifest};
use crate::platform::{self, Platform};

/// An index has no manifest for the platform asked for.
#[derive(Debug, thiserror::Error)]
#[error("no manifest for platform {platform} (the image has: {available})")]
pub struct NoPlatform {
    /// The platform asked for.
    pub platform: Platform,
    /// What the index offers, comma-separated.
    pub available: String,
}

/// The config cannot describe the manifest's layers.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not an image config at all.
    #[error("config {config} is not a valid image config: {reason}")]
    Invalid {
        /// The config blob.
        config: Digest,
        /// What the parser said.
        reason: String,
    },
    /// One diff ID per layer is what unpacking needs.
    #[error("config {config} lists {diff_ids} layer diff IDs but manifest {manifest} has {layers} layers")]
    LayerCount {
        /// The config blob.
        config: Digest,
        /// Diff IDs it lists.
        diff_ids: usize,
        /// The manifest.
        manifest: Digest,
        /// Layers the manifest has.
        layers: usize,
    },
}

/// The manifest of `index` for `wanted` (its position and the platform it is for), as
/// containerd's platform matcher picks it; only image manifests are candidates.
pub fn choose_manifest(index: &Index, wanted: &Platform) -> Result<(usize, Platform), NoPlatform> {
    let manifests: Vec<(usize, &Descriptor)> = index
        .manifests
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            d.media_type.is_empty()
                || matches!(
                    d.media_type.as_str(),
                    oci::OCI_MANIFEST | oci::DOCKER_MANIFEST
                )
        })
        .collect();
    let candidates: Vec<Option<Platform>> = manifests
        .iter()
        .map(|(_, d)| d.platform.as_ref().map(oci::RawPlatform::normalized))
        .collect();
    match platform::choose(wanted, &candidates) {
        Some(k) => Ok((
            manifests[k].0,
            candidates[k].clone().unwrap_or_else(|| wanted.clone()),
        )),
        None => {
            let platforms = candidates
                .iter()
                .flatten()
                .map(Platform::to_string)
                .filter(|p| p != "unknown/unknown")
                .collect::<Vec<_>>()
                .join(", ");
            let available = if !platforms.is_empty() {
                crate::printable::printable(&platforms)
            } else if only_nested_indexes(index) {
                "only nested indexes, which prepull does not pull".to_string()
            } else {
                "no image manifests".to_string()
            };
            Err(NoPlatform {
                platform: wanted.clone(),
                available,
            })
        }
    }
}

/// Whether every entry of `index` is itself an index (a nested index, which neither containerd's
/// CRI nor prepull pulls), and there is at least one.
pub fn only_nested_indexes(index: &Index) -> bool {
    !index.manifests.is_empty()
        && index
            .manifests
            .iter()
            .all(|d| matches!(d.media_type.as_str(), oci::OCI_INDEX | oci::DOCKER_LIST))
}

/// The diff IDs of `manifest`'s layers from its config's bytes: one per layer, or the image
/// cannot be unpacked or run.
pub fn diff_ids(
    manifest_digest: &Digest,
    manifest: &Manifest,
    config: &[u8],
) -> Result<Vec<Digest>, ConfigError> {
    let parsed: oci::Config = serde_json::from_slice(config).map_err(|e| ConfigError::Invalid {
        config: manifest.config.digest.clone(),
        reason: e.to_string(),
    })?;
    if parsed.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ConfigError::LayerCount {
            config: manifest.config.digest.clone(),
            diff_ids: parsed.rootfs.diff_ids.len(),
            manifest: manifest_digest.clone(),
            layers: manifest.layers.len(),
        });
    }
    Ok(parsed.rootfs.diff_ids)
}

/// The chain IDs of a layer stack: `chain[0] = diff[0]`,
/// `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => Digest::sha256(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a: Digest = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .parse()
            .unwrap();
        let b: Digest = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
            .parse()
            .unwrap();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        let expected = Digest::sha256(format!("{a} {b}").as_bytes());
        assert_eq!(chain[1], expected);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn an_index_of_indexes_says_so_and_never_lists_nothing() {
        let d = Digest::sha256(b"x");
        let index = |media_type: &str| -> Index {
            serde_json::from_str(&format!(
                r#"{{"manifests":[{{"mediaType":"{media_type}","digest":"{d}","size":2}}]}}"#
            ))
            .unwrap()
        };
        let wanted = Platform::new("linux", "amd64", None);
        let nested = index(oci::OCI_INDEX);
        assert!(only_nested_indexes(&nested));
        let e = choose_manifest(&nested, &wanted).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no manifest for platform linux/amd64 (the image has: only nested indexes, which \
             prepull does not pull)"
        );
        let other = index("application/vnd.example.thing");
        assert!(!only_nested_indexes(&other));
        let e = choose_manifest(&other, &wanted).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("(the image has: no image manifests)"),
            "{e}"
        );
    }

    #[test]
    fn a_config_must_list_one_diff_id_per_layer() {
        let manifest: Manifest = serde_json::from_str(&format!(
            r#"{{"config":{{"digest":"{c}","size":2}},"layers":[{{"digest":"{c}","size":2}}]}}"#,
            c = Digest::sha256(b"{}")
        ))
        .unwrap();
        let m = Digest::sha256(b"m");
        let none = diff_ids(&m, &manifest, br#"{"rootfs":{"diff_ids":[]}}"#).unwrap_err();
        assert!(
            none.to_string()
                .contains("lists 0 layer diff IDs but manifest"),
            "{none}"
        );
        let bad = diff_ids(&m, &manifest, b"[").unwrap_err();
        assert!(
            bad.to_string().contains("is not a valid image config"),
            "{bad}"
        );
    }
}
