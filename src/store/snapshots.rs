//! Snapshots and the diff service: the two halves of unpacking a layer into a snapshotter; and
//! read-only views of committed snapshots, which say where a snapshotter keeps their files.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Kind, ListSnapshotsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::types::{Descriptor as PbDescriptor, Mount};

use super::{Lease, Store, StoreError};
use crate::digest::Digest;
use crate::oci::Descriptor;

/// What a snapshot is: committed (a layer, read-only), active (a container's writable layer or
/// an unpack under way) or a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Committed: a parent for others.
    Committed,
    /// Active: writable, mounted by a container or an unpack.
    Active,
    /// A read-only view.
    View,
}

/// One snapshot as the snapshotter lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its name (a committed layer's chain ID) or key (active and views).
    pub name: String,
    /// Its parent's name; empty for a base layer.
    pub parent: String,
    /// What it is.
    pub kind: SnapshotKind,
}

impl Store {
    /// Every snapshot of `snapshotter` in the namespace.
    pub async fn snapshots(&self, snapshotter: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let request = ListSnapshotsRequest {
            snapshotter: snapshotter.to_string(),
            filters: vec![],
        };
        let fail = |s| StoreError::rpc("Snapshots.List", snapshotter.to_string(), s);
        let mut stream = client
            .list(self.request(request, None))
            .await
            .map_err(fail)?
            .into_inner();
        let mut all = Vec::new();
        while let Some(page) = stream.message().await.map_err(fail)? {
            all.extend(page.info.into_iter().map(|i| SnapshotInfo {
                kind: match Kind::try_from(i.kind) {
                    Ok(Kind::Committed) => SnapshotKind::Committed,
                    Ok(Kind::View) => SnapshotKind::View,
                    // Unknown kinds are treated as in use: never removed from under someone.
                    _ => SnapshotKind::Active,
                },
                name: i.name,
                parent: i.parent,
            }));
        }
        Ok(all)
    }

    /// Whether a committed (or active) snapshot named `key` exists in `snapshotter`.
    pub async fn snapshot_exists(&self, snapshotter: &str, key: &str) -> Result<bool, StoreError> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let request = StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        match client.stat(self.request(request, None)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(StoreError::rpc(
                "Snapshots.Stat",
                snapshot_what(snapshotter, key),
                s,
            )),
        }
    }

    /// Prepares an active snapshot `key` on top of `parent` (empty for a base layer) and returns
    /// the mounts to apply a layer into. `None` if a snapshot with that key exists already.
    pub async fn prepare_snapshot(
        &self,
        lease: &Lease,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Option<Vec<Mount>>, StoreError> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let request = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels,
        };
        match client.prepare(self.request(request, Some(lease))).await {
            Ok(r) => Ok(Some(r.into_inner().mounts)),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(None),
            Err(s) => Err(StoreError::rpc(
                "Snapshots.Prepare",
                snapshot_what(snapshotter, key),
                s,
            )),
        }
    }

    /// Commits active snapshot `key` as `name`. `false` if `name` exists already (someone else
    /// unpacked the same layer meanwhile); the caller then removes `key`.
    pub async fn commit_snapshot(
        &self,
        lease: &Lease,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<bool, StoreError> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let request = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            labels,
        };
        match client.commit(self.request(request, Some(lease))).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(false),
            Err(s) => Err(StoreError::rpc(
                "Snapshots.Commit",
                snapshot_what(snapshotter, name),
                s,
            )),
        }
    }

    /// Removes a snapshot (an abandoned active one, typically).
    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<(), StoreError> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let request = RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        match client.remove(self.request(request, None)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            // A snapshot with children (a container started on it, say): not a content
            // mismatch, which is what this code means elsewhere.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                Err(StoreError::Rpc {
                    op: "Snapshots.Remove",
                    what: snapshot_what(snapshotter, key),
                    status,
                })
            }
            Err(s) => Err(StoreError::rpc(
                "Snapshots.Remove",
                snapshot_what(snapshotter, key),
                s,
            )),
        }
    }

    /// Applies a layer blob from the content store onto `mounts`; returns the digest of the
    /// uncompressed layer (its diff ID), as computed by containerd while applying.
    pub async fn apply_layer(
        &self,
        lease: &Lease,
        layer: &Descriptor,
        mounts: Vec<Mount>,
    ) -> Result<Digest, StoreError> {
        let mut client = DiffClient::new(self.channel.clone());
        let request = ApplyRequest {
            diff: Some(PbDescriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.to_string(),
                size: layer.size as i64,
                annotations: HashMap::new(),
            }),
            mounts,
            payloads: HashMap::new(),
            // Flush before commit, so a power cut cannot leave empty files behind a committed
            // snapshot (containerd 1.7.14+ and 2.x; older versions ignore the field).
            sync_fs: true,
        };
        let what = format!("layer {}", layer.digest);
        let applied = client
            .apply(self.request(request, Some(lease)))
            .await
            .map_err(|s| StoreError::rpc("Diff.Apply", &what, s))?
            .into_inner()
            .applied
            .ok_or_else(|| {
                StoreError::rpc(
                    "Diff.Apply",
                    &what,
                    tonic::Status::internal("no applied descriptor"),
                )
            })?;
        applied.digest.parse().map_err(|e| {
            StoreError::rpc(
                "Diff.Apply",
                &what,
                tonic::Status::internal(format!("invalid diff ID: {e}")),
            )
        })
    }
}

/// Where a committed snapshot's files are, as a read-only view of it mounts them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewDirs {
    /// One directory holds the whole filesystem: the snapshot's own directory (`native`, which
    /// copies the parent chain into each snapshot), or the one layer of a single-layer chain
    /// (`overlayfs`, whose layers each keep their own files).
    Bind(PathBuf),
    /// One directory per layer of the chain, base first (an `overlay` mount's `lowerdir`).
    Layers(Vec<PathBuf>),
}

/// A read-only view of a committed snapshot, held under a lease until [`Store::release_view`].
#[derive(Debug)]
#[must_use = "release the view with Store::release_view"]
pub struct SnapshotView {
    snapshotter: String,
    key: String,
    /// The directories it mounts.
    pub dirs: ViewDirs,
}

impl SnapshotView {
    /// The view's key in the snapshotter.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Store {
    /// Makes a read-only view of the committed snapshot `name` under `lease` (so garbage
    /// collection leaves it alone, and takes it away should it be left behind) and reads from
    /// its mounts where the snapshotter keeps the snapshot's files. Release it with
    /// [`Store::release_view`].
    pub async fn view_snapshot(
        &self,
        lease: &Lease,
        snapshotter: &str,
        name: &str,
    ) -> Result<SnapshotView, StoreError> {
        let short = name.rsplit(':').next().unwrap_or(name);
        let key = format!(
            "prepull-deep-{}-{:016x}",
            &short[..short.len().min(16)],
            rand::random::<u64>()
        );
        let mut client = SnapshotsClient::new(self.channel.clone());
        let request = ViewSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
            parent: name.to_string(),
            labels: HashMap::new(),
        };
        let mounts = client
            .view(self.request(request, Some(lease)))
            .await
            .map_err(|s| StoreError::rpc("Snapshots.View", snapshot_what(snapshotter, name), s))?
            .into_inner()
            .mounts;
        let view = SnapshotView {
            snapshotter: snapshotter.to_string(),
            key,
            dirs: ViewDirs::Bind(PathBuf::new()),
        };
        match view_dirs(&mounts) {
            Ok(dirs) => Ok(SnapshotView { dirs, ..view }),
            Err(why) => {
                // Nothing of it is usable: do not leave it behind.
                let _ = self.release_view(view).await;
                Err(StoreError::Mounts {
                    snapshotter: snapshotter.to_string(),
                    snapshot: name.to_string(),
                    why,
                })
            }
        }
    }

    /// Removes a view made by [`Store::view_snapshot`] (the snapshot it shows stays).
    pub async fn release_view(&self, view: SnapshotView) -> Result<(), StoreError> {
        self.remove_snapshot(&view.snapshotter, &view.key).await
    }
}

/// The directories a view's mounts show: one `bind` mount of a directory, or one `overlay`
/// mount whose `lowerdir` lists the layers top first (a view has no `upperdir`). Anything else
/// (another snapshotter's mounts) is described in the error.
pub fn view_dirs(mounts: &[Mount]) -> Result<ViewDirs, String> {
    let [mount] = mounts else {
        return Err(format!(
            "expected one mount, got {}: {}",
            mounts.len(),
            describe_mounts(mounts)
        ));
    };
    let absolute = |p: &str| -> Result<PathBuf, String> {
        let path = PathBuf::from(p);
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(format!("directory {p:?} is not an absolute path"))
        }
    };
    match mount.r#type.as_str() {
        "bind" | "rbind" => Ok(ViewDirs::Bind(absolute(&mount.source)?)),
        "overlay" => {
            let lower = mount
                .options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))
                .ok_or_else(|| {
                    format!(
                        "overlay mount without lowerdir: {}",
                        describe_mounts(mounts)
                    )
                })?;
            if let Some(upper) = mount.options.iter().find(|o| o.starts_with("upperdir=")) {
                return Err(format!(
                    "a read-only view has no upper directory, got {upper}"
                ));
            }
            let mut dirs = split_lowerdir(lower)
                .iter()
                .map(|d| absolute(d))
                .collect::<Result<Vec<_>, _>>()?;
            if dirs.is_empty() {
                return Err("overlay mount with an empty lowerdir".into());
            }
            dirs.reverse();
            Ok(ViewDirs::Layers(dirs))
        }
        other => Err(format!(
            "mount type {other:?} is neither bind nor overlay: {}",
            describe_mounts(mounts)
        )),
    }
}

/// `lowerdir`'s directories, in order; `\:` is a colon inside a directory name.
fn split_lowerdir(value: &str) -> Vec<String> {
    let mut dirs = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ':' => {
                if !current.is_empty() {
                    dirs.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        dirs.push(current);
    }
    dirs
}

fn describe_mounts(mounts: &[Mount]) -> String {
    mounts
        .iter()
        .map(|m| format!("{} {} [{}]", m.r#type, m.source, m.options.join(",")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn snapshot_what(snapshotter: &str, key: &str) -> String {
    format!("{snapshotter} snapshot {key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn a_views_mounts_name_its_directories_base_first() {
        let bind = mount("bind", "/var/lib/c/snapshots/7/fs", &["ro", "rbind"]);
        assert_eq!(
            view_dirs(&[bind]),
            Ok(ViewDirs::Bind("/var/lib/c/snapshots/7/fs".into()))
        );
        let overlay = mount(
            "overlay",
            "overlay",
            &["index=off", "lowerdir=/s/3/fs:/s/2/fs:/s/1/fs", "ro"],
        );
        assert_eq!(
            view_dirs(&[overlay]),
            Ok(ViewDirs::Layers(vec![
                "/s/1/fs".into(),
                "/s/2/fs".into(),
                "/s/3/fs".into()
            ]))
        );
        let escaped = mount("overlay", "overlay", &["lowerdir=/a\\:b:/c"]);
        assert_eq!(
            view_dirs(&[escaped]),
            Ok(ViewDirs::Layers(vec!["/c".into(), "/a:b".into()]))
        );
    }

    #[test]
    fn mounts_it_cannot_read_are_refused_saying_what_they_were() {
        let relative = mount("overlay", "overlay", &["lowerdir=3/fs:2/fs"]);
        assert!(view_dirs(&[relative])
            .unwrap_err()
            .contains("not an absolute path"));
        let upper = mount(
            "overlay",
            "overlay",
            &["lowerdir=/s/1/fs", "upperdir=/s/2/fs", "workdir=/s/2/work"],
        );
        assert!(view_dirs(&[upper]).unwrap_err().contains("upper"));
        let btrfs = mount("btrfs", "/dev/sda", &["subvolid=5"]);
        let e = view_dirs(&[btrfs]).unwrap_err();
        assert!(e.contains("\"btrfs\"") && e.contains("/dev/sda"), "{e}");
        assert!(view_dirs(&[]).unwrap_err().contains("got 0"));
    }
}
