//! Mending unpacked snapshots that the deep check found damaged, without the network.
//!
//! A snapshot holds its layer on top of its parent's, so a damaged layer spoils every snapshot
//! above it. [`mend_snapshots`] removes the image's chain from its lowest damaged layer up, and
//! with it every other committed snapshot built on a removed one (other images sharing those
//! lower layers), children before parents; then it unpacks the chain again from the blobs in
//! the content store (which the check has just hashed), and the other images' chains too. The
//! snapshots are recreated under their chain IDs, so the GC references the pull wrote (the
//! config's `containerd.io/gc.ref.snapshot.<snapshotter>`) name them again. A lease holds the
//! parents that stay, and each snapshot as it is made, until the work ends.
//!
//! A snapshot a container runs on is never removed: a container's snapshot is active, and its
//! parents are what it sees. If anything active (a container, an unpack or a check under way)
//! is built on the damaged chain, nothing is touched and the report names who uses it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::deep::LayerId;
use crate::deep_verify::{DeepReport, Unpacked};
use crate::digest::Digest;
use crate::image;
use crate::oci;
use crate::pull::{unpack_local, UnpackError};
use crate::store::{ContainerRecord, SnapshotInfo, SnapshotKind, Store, StoreError};
use crate::verify::{group_records, ImageCheck};

/// How long the repair's lease outlives a repair that dies before deleting it.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// The kubelet's labels on CRI containers.
const POD_NAME: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// What mending one image's snapshots did.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotRepair {
    /// The image, as the operator knows it.
    pub image: String,
    /// The lowest damaged layer of each damaged platform manifest: the chain was removed from
    /// there up.
    pub lowest_damaged: Vec<LayerId>,
    /// Snapshots removed, children first.
    pub removed: Vec<String>,
    /// Images unpacked again (this one, and those sharing a removed snapshot), by name.
    pub unpacked: Vec<String>,
    /// Their targets (what their records point at).
    #[serde(skip)]
    pub unpacked_targets: Vec<Digest>,
    /// How it ended.
    pub outcome: SnapshotOutcome,
}

/// How mending an image's snapshots ended.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum SnapshotOutcome {
    /// The report named no damaged layer: nothing done.
    Sound,
    /// Removed and unpacked again.
    Mended,
    /// Left alone: something runs on the damaged chain.
    InUse {
        /// Who uses it.
        users: Vec<SnapshotUser>,
    },
}

/// Something built on a damaged snapshot that repair must not take away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SnapshotUser {
    /// A container runs on it.
    Container(ContainerUse),
    /// An active snapshot or view no container record names (an unpack or a check under way).
    Snapshot {
        /// Its key.
        key: String,
    },
}

/// A container whose snapshot is built on a damaged one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerUse {
    /// containerd's container ID (CRI's container or sandbox ID).
    pub id: String,
    /// Its pod, from the kubelet's labels.
    pub pod: Option<String>,
    /// Its pod's namespace.
    pub namespace: Option<String>,
    /// Its name in the pod.
    pub container: Option<String>,
}

impl ContainerUse {
    fn from_record(record: &ContainerRecord) -> ContainerUse {
        let label = |k: &str| record.labels.get(k).cloned();
        ContainerUse {
            id: record.id.clone(),
            pod: label(POD_NAME),
            namespace: label(POD_NAMESPACE),
            container: label(CONTAINER_NAME),
        }
    }
}

impl fmt::Display for ContainerUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container {}", self.id)?;
        match (&self.namespace, &self.pod, &self.container) {
            (ns, Some(pod), c) => {
                write!(f, " (pod ")?;
                if let Some(ns) = ns {
                    write!(f, "{ns}/")?;
                }
                write!(f, "{pod}")?;
                if let Some(c) = c {
                    write!(f, ", container {c}")?;
                }
                write!(f, ")")
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for SnapshotUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotUser::Container(c) => c.fmt(f),
            SnapshotUser::Snapshot { key } => write!(
                f,
                "active snapshot {key} (no container names it: an unpack or a check under way)"
            ),
        }
    }
}

impl SnapshotOutcome {
    /// What the operator should do, when the repair left the image alone.
    pub fn advice(&self) -> Option<String> {
        let SnapshotOutcome::InUse { users } = self else {
            return None;
        };
        let who: Vec<String> = users.iter().map(ToString::to_string).collect();
        let pods = users
            .iter()
            .any(|u| matches!(u, SnapshotUser::Container(c) if c.pod.is_some()));
        let what = if pods {
            "delete those pods (or the containers), then run `prepull repair --deep` again"
        } else {
            "remove those containers (or wait for the work to end), then run `prepull repair --deep` again"
        };
        Some(format!(
            "the damaged snapshots are in use by {}: left as they are; {what}",
            who.join(", ")
        ))
    }
}

/// Why mending an image's snapshots failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotRepairError {
    /// containerd failed while the repair looked at the snapshots, containers or images.
    #[error("cannot read the {snapshotter} snapshots and containers of {image}")]
    Read {
        /// The image.
        image: String,
        /// The snapshotter.
        snapshotter: String,
        /// What containerd said.
        #[source]
        source: StoreError,
    },
    /// A snapshot could not be removed (a container may have started on it meanwhile).
    #[error("cannot remove {snapshotter} snapshot {snapshot} of {image}; run `prepull repair --deep` again")]
    Remove {
        /// The image.
        image: String,
        /// The snapshotter.
        snapshotter: String,
        /// The snapshot.
        snapshot: String,
        /// What containerd said.
        #[source]
        source: StoreError,
    },
    /// Unpacking from the local blobs failed after the damaged snapshots were removed.
    #[error("unpacking {image} again from its local blobs failed after {removed} damaged snapshots were removed; `prepull repair` pulls what is missing")]
    Unpack {
        /// The image that failed to unpack.
        image: String,
        /// Snapshots removed before.
        removed: usize,
        /// Why.
        #[source]
        source: UnpackError,
    },
}

impl SnapshotRepairError {
    /// The failure's kind, a bounded label.
    pub fn kind(&self) -> crate::kind::ErrorKind {
        match self {
            SnapshotRepairError::Read { source, .. }
            | SnapshotRepairError::Remove { source, .. } => source.kind(),
            SnapshotRepairError::Unpack { .. } => crate::kind::ErrorKind::Containerd,
        }
    }

    /// Whether trying again later may succeed (containerd restarting, a snapshot busy).
    pub fn is_retryable(&self) -> bool {
        match self {
            SnapshotRepairError::Read { source, .. } => source.is_retryable(),
            SnapshotRepairError::Remove { .. } => true,
            SnapshotRepairError::Unpack { .. } => false,
        }
    }
}

/// One platform manifest's chain, and where its damage starts.
struct Damaged<'a> {
    unpacked: &'a Unpacked,
    chain: Vec<Digest>,
    from: usize,
}

/// Mends the snapshots of `image` that `report` (its deep check) found damaged: removes its
/// chain from the lowest damaged layer up, with every snapshot built on a removed one, and
/// unpacks them all again from the local blobs, under a lease. Leaves everything as it is when
/// a container (or anything active) uses a snapshot that would go, and says who.
pub async fn mend_snapshots(
    store: &Store,
    snapshotter: &str,
    image: &ImageCheck,
    report: &DeepReport,
) -> Result<SnapshotRepair, SnapshotRepairError> {
    let shown = image
        .names
        .first()
        .cloned()
        .unwrap_or_else(|| image.target.to_string());
    let damaged = damaged_chains(image, report);
    let mut repair = SnapshotRepair {
        image: shown.clone(),
        lowest_damaged: damaged
            .iter()
            .filter_map(|d| {
                report
                    .findings
                    .iter()
                    .find(|f| f.layer.index == d.from && f.layer.chain_id == d.chain[d.from])
                    .map(|f| f.layer.clone())
            })
            .collect(),
        removed: Vec::new(),
        unpacked: Vec::new(),
        unpacked_targets: Vec::new(),
        outcome: SnapshotOutcome::Sound,
    };
    if damaged.is_empty() {
        return Ok(repair);
    }
    let read = |source| SnapshotRepairError::Read {
        image: shown.clone(),
        snapshotter: snapshotter.to_string(),
        source,
    };
    let graph = store.snapshots(snapshotter).await.map_err(read)?;
    let seeds: HashSet<String> = damaged
        .iter()
        .flat_map(|d| d.chain[d.from..].iter().map(ToString::to_string))
        .collect();
    let plan = plan_removal(&graph, &seeds);
    if !plan.users.is_empty() {
        let containers = store.containers().await.map_err(read)?;
        repair.outcome = SnapshotOutcome::InUse {
            users: users(&plan.users, &containers, snapshotter),
        };
        return Ok(repair);
    }

    // Every image with a chain through a removed snapshot is unpacked again: this one's damaged
    // manifests, and other images sharing the removed snapshots.
    let own: HashSet<String> = damaged
        .iter()
        .flat_map(|d| d.chain.iter().map(ToString::to_string))
        .collect();
    let removed: HashSet<&str> = plan.remove.iter().map(String::as_str).collect();
    let mut again: Vec<(String, Digest, Unpacked)> = damaged
        .iter()
        .map(|d| (shown.clone(), image.target.clone(), d.unpacked.clone()))
        .collect();
    if plan.remove.iter().any(|n| !own.contains(n)) {
        for (name, target, unpacked) in node_images(store).await.map_err(read)? {
            let through = image::chain_ids(&unpacked.diff_ids)
                .iter()
                .any(|c| removed.contains(c.to_string().as_str()));
            let same = again
                .iter()
                .any(|a| a.1 == target && a.2.diff_ids == unpacked.diff_ids);
            if through && !same {
                again.push((name, target, unpacked));
            }
        }
    }

    let lease = store
        .create_lease("repair-snapshots", LEASE_EXPIRY)
        .await
        .map_err(read)?;
    let result = async {
        // The parents that stay are leased first: once the snapshots above them are gone,
        // nothing else keeps them from garbage collection until the chain is back.
        for (_, _, unpacked) in &again {
            for c in image::chain_ids(&unpacked.diff_ids) {
                let c = c.to_string();
                if removed.contains(c.as_str()) {
                    break;
                }
                store
                    .lease_resource(&lease, &format!("snapshots/{snapshotter}"), &c)
                    .await
                    .map_err(read)?;
            }
        }
        for name in &plan.remove {
            store
                .remove_snapshot(snapshotter, name)
                .await
                .map_err(|source| SnapshotRepairError::Remove {
                    image: shown.clone(),
                    snapshotter: snapshotter.to_string(),
                    snapshot: name.clone(),
                    source,
                })?;
            repair.removed.push(name.clone());
        }
        // Images with the same layers (another config) share the chain: unpacked once.
        let mut chains: Vec<&[Digest]> = Vec::new();
        for (name, target, unpacked) in &again {
            if !chains.contains(&unpacked.diff_ids.as_slice()) {
                unpack_local(
                    store,
                    &lease,
                    snapshotter,
                    &unpacked.layers,
                    &unpacked.diff_ids,
                )
                .await
                .map_err(|source| SnapshotRepairError::Unpack {
                    image: name.clone(),
                    removed: repair.removed.len(),
                    source,
                })?;
                chains.push(&unpacked.diff_ids);
            }
            if !repair.unpacked.contains(name) {
                repair.unpacked.push(name.clone());
            }
            if !repair.unpacked_targets.contains(target) {
                repair.unpacked_targets.push(target.clone());
            }
        }
        Ok::<_, SnapshotRepairError>(())
    }
    .await;
    if let Err(e) = store.delete_lease(lease).await {
        tracing::warn!(error = %e, "cannot delete the snapshot repair's lease; it expires by itself");
    }
    result?;
    repair.outcome = SnapshotOutcome::Mended;
    Ok(repair)
}

/// Unpacks the missing snapshots of `image` from its local blobs, when missing snapshots are
/// all that is wrong with it (a repair interrupted between removing and unpacking, a snapshot
/// removed by hand): `Ok(true)` when it did. Anything else wrong (a blob bad or missing) is
/// left to the pull that mends blobs, and `Ok(false)` says so.
pub async fn unpack_missing(
    store: &Store,
    snapshotter: &str,
    image: &ImageCheck,
) -> Result<bool, SnapshotRepairError> {
    let only_snapshots = !image.problems.is_empty()
        && image
            .problems
            .iter()
            .all(|p| matches!(p, crate::verify::Problem::MissingSnapshot { .. }));
    if !only_snapshots {
        return Ok(false);
    }
    let shown = image
        .names
        .first()
        .cloned()
        .unwrap_or_else(|| image.target.to_string());
    let read = |source| SnapshotRepairError::Read {
        image: shown.clone(),
        snapshotter: snapshotter.to_string(),
        source,
    };
    let Ok(manifests) = store.manifests_held(&image.target, None).await else {
        return Ok(false);
    };
    let lease = store
        .create_lease("repair-snapshots", LEASE_EXPIRY)
        .await
        .map_err(read)?;
    let result = async {
        for manifest in &manifests {
            let config = store
                .read_blob(&manifest.config.digest, oci::MAX_CONFIG_BYTES)
                .await
                .map_err(read)?;
            let Ok(diff_ids) = image::diff_ids(&image.target, manifest, &config) else {
                continue;
            };
            unpack_local(store, &lease, snapshotter, &manifest.layers, &diff_ids)
                .await
                .map_err(|source| SnapshotRepairError::Unpack {
                    image: shown.clone(),
                    removed: 0,
                    source,
                })?;
        }
        Ok::<_, SnapshotRepairError>(true)
    }
    .await;
    if let Err(e) = store.delete_lease(lease).await {
        tracing::warn!(error = %e, "cannot delete the snapshot repair's lease; it expires by itself");
    }
    result
}

/// Each of `image`'s unpacked manifests that `report` names a damaged layer of, with the lowest.
fn damaged_chains<'a>(image: &'a ImageCheck, report: &DeepReport) -> Vec<Damaged<'a>> {
    let mut out = Vec::new();
    for unpacked in &image.unpacked {
        let chain = image::chain_ids(&unpacked.diff_ids);
        let from = report
            .findings
            .iter()
            .filter(|f| chain.get(f.layer.index) == Some(&f.layer.chain_id))
            .map(|f| f.layer.index)
            .min();
        if let Some(from) = from {
            out.push(Damaged {
                unpacked,
                chain,
                from,
            });
        }
    }
    // Findings past the kept ones name no layer: everything is suspect.
    if out.is_empty() && !report.is_sound() {
        out.extend(image.unpacked.iter().map(|unpacked| Damaged {
            unpacked,
            chain: image::chain_ids(&unpacked.diff_ids),
            from: 0,
        }));
    }
    out
}

/// What removing a set of snapshots takes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Removal {
    /// Committed snapshots to remove, children before parents.
    pub remove: Vec<String>,
    /// Active snapshots and views built on them: while any exists, nothing may go.
    pub users: Vec<String>,
}

/// The snapshots of `graph` that are `seeds` or built on one, ordered children first; the
/// active ones and views among them are the users that forbid the removal.
pub(crate) fn plan_removal(graph: &[SnapshotInfo], seeds: &HashSet<String>) -> Removal {
    let by_name: HashMap<&str, &SnapshotInfo> =
        graph.iter().map(|s| (s.name.as_str(), s)).collect();
    // Each snapshot's ancestors, itself first; a broken or cyclic parent link ends the walk.
    let ancestry = |name: &str| -> Vec<&str> {
        let mut chain = vec![];
        let mut at = by_name.get(name).copied();
        while let Some(s) = at {
            if chain.contains(&s.name.as_str()) {
                break;
            }
            chain.push(s.name.as_str());
            at = by_name.get(s.parent.as_str()).copied();
        }
        chain
    };
    let mut hit: Vec<(usize, &SnapshotInfo)> = graph
        .iter()
        .filter_map(|s| {
            let chain = ancestry(&s.name);
            chain
                .iter()
                .any(|n| seeds.contains(*n))
                .then_some((chain.len(), s))
        })
        .collect();
    // Deepest first: a snapshot goes before its parent.
    hit.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
    let mut removal = Removal {
        remove: Vec::new(),
        users: Vec::new(),
    };
    for (_, s) in hit {
        match s.kind {
            SnapshotKind::Committed => removal.remove.push(s.name.clone()),
            SnapshotKind::Active | SnapshotKind::View => removal.users.push(s.name.clone()),
        }
    }
    removal
}

/// The users named: containers by their records, other active snapshots by key.
fn users(keys: &[String], containers: &[ContainerRecord], snapshotter: &str) -> Vec<SnapshotUser> {
    keys.iter()
        .map(|key| {
            containers
                .iter()
                .find(|c| &c.snapshot_key == key && c.snapshotter == snapshotter)
                .map(|c| SnapshotUser::Container(ContainerUse::from_record(c)))
                .unwrap_or_else(|| SnapshotUser::Snapshot { key: key.clone() })
        })
        .collect()
}

/// Every image on the node with the layers of each manifest the store holds: its name, its
/// target, and the manifest's layers and diff IDs. Images whose documents cannot be read are
/// left out (verify reports them; they have nothing to unpack from).
async fn node_images(store: &Store) -> Result<Vec<(String, Digest, Unpacked)>, StoreError> {
    let mut out = Vec::new();
    for (target, records) in group_records(store.images().await?) {
        let Ok(target) = target.parse::<Digest>() else {
            continue;
        };
        let media_type = records
            .iter()
            .find_map(|r| r.target.as_ref().map(|t| t.media_type.clone()));
        let name = records
            .iter()
            .map(|r| r.name.clone())
            .find(|n| !crate::image::names::is_id(n))
            .or_else(|| records.first().map(|r| r.name.clone()))
            .unwrap_or_else(|| target.to_string());
        let manifests = match store.manifests_held(&target, media_type.as_deref()).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(image = %name, error = %e, "cannot read the image's manifests");
                continue;
            }
        };
        for manifest in manifests {
            let config = match store
                .read_blob(&manifest.config.digest, oci::MAX_CONFIG_BYTES)
                .await
            {
                Ok(c) => c,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let Ok(diff_ids) = image::diff_ids(&target, &manifest, &config) else {
                continue;
            };
            out.push((
                name.clone(),
                target.clone(),
                Unpacked {
                    manifest: target.clone(),
                    layers: manifest.layers.clone(),
                    diff_ids,
                    // Only unpacked here: the start check is not run.
                    process: None,
                    architecture: None,
                },
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, parent: &str, kind: SnapshotKind) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            parent: parent.into(),
            kind,
        }
    }

    #[test]
    fn removal_takes_what_is_built_on_the_damage_children_first() {
        use SnapshotKind::*;
        // a <- b <- c (image 1); b <- d (image 2 shares a and b); a <- e (image 3).
        let graph = vec![
            snap("a", "", Committed),
            snap("c", "b", Committed),
            snap("b", "a", Committed),
            snap("d", "b", Committed),
            snap("e", "a", Committed),
        ];
        let seeds: HashSet<String> = ["b".to_string(), "c".to_string()].into();
        let plan = plan_removal(&graph, &seeds);
        assert_eq!(plan.remove, vec!["c", "d", "b"]);
        assert!(plan.users.is_empty());

        // A container on d (its active snapshot), and a view on e: d's user blocks; e is
        // not built on the damage.
        let mut graph = graph;
        graph.push(snap("ctr-1", "d", Active));
        graph.push(snap("view-1", "e", View));
        let plan = plan_removal(&graph, &seeds);
        assert_eq!(plan.users, vec!["ctr-1"]);
    }

    #[test]
    fn a_user_is_named_by_its_pod_when_the_kubelet_labelled_it() {
        let record = ContainerRecord {
            id: "abc".into(),
            snapshotter: "overlayfs".into(),
            snapshot_key: "abc".into(),
            labels: HashMap::from([
                (POD_NAME.into(), "web-1".into()),
                (POD_NAMESPACE.into(), "shop".into()),
                (CONTAINER_NAME.into(), "app".into()),
            ]),
        };
        let other = ContainerRecord {
            id: "def".into(),
            snapshotter: "native".into(),
            snapshot_key: "k".into(),
            labels: HashMap::new(),
        };
        let found = users(&["abc".into(), "k".into()], &[record, other], "overlayfs");
        assert_eq!(
            found[0].to_string(),
            "container abc (pod shop/web-1, container app)"
        );
        // Same key in another snapshotter: not the one using it.
        assert!(matches!(&found[1], SnapshotUser::Snapshot { key } if key == "k"));
        let advice = SnapshotOutcome::InUse { users: found }.advice().unwrap();
        assert!(
            advice.contains("delete those pods") && advice.contains("prepull repair --deep"),
            "{advice}"
        );
        assert!(SnapshotOutcome::Mended.advice().is_none());
    }
}
