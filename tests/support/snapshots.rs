//! Where an image's unpacked files are on disk, found the way prepull finds them: through a
//! read-only view of its top snapshot (never by guessing snapshot directory numbers).

use std::path::{Path, PathBuf};
use std::time::Duration;

use prepull::digest::Digest;
use prepull::store::{Store, ViewDirs};

use super::Containerd;

/// The directory holding the files of the top layer of the image whose diff IDs are `diff_ids`
/// (in the k8s.io namespace): the layer's own directory on `overlayfs`, the whole merged
/// snapshot on `native`. Writing there is writing under a pod's feet.
pub async fn top_layer_dir(containerd: &Containerd, diff_ids: &[String]) -> PathBuf {
    let store = Store::connect(containerd.socket(), "k8s.io")
        .await
        .expect("connect to containerd");
    let diff_ids: Vec<Digest> = diff_ids
        .iter()
        .map(|d| d.parse().expect("diff ID"))
        .collect();
    let top = prepull::image::chain_ids(&diff_ids)
        .pop()
        .expect("an image with layers");
    let lease = store
        .create_lease("test-view", Duration::from_secs(600))
        .await
        .expect("lease");
    let view = store
        .view_snapshot(&lease, containerd.snapshotter(), &top.to_string())
        .await
        .expect("a view of the top snapshot");
    let dir = match &view.dirs {
        ViewDirs::Bind(dir) => dir.clone(),
        ViewDirs::Layers(dirs) => dirs.last().expect("layers").clone(),
    };
    store.release_view(view).await.expect("remove the view");
    store.delete_lease(lease).await.expect("delete the lease");
    dir
}

/// Where each layer's files are, found through views (released before returning).
pub struct Dirs {
    /// overlayfs: each layer's own directory; native: each snapshot's full directory.
    pub per_layer: Vec<PathBuf>,
    /// Whether each snapshot holds its whole chain (native).
    pub cumulative: bool,
}

impl Dirs {
    /// The directory where a pod sees `layer`'s files: its own (overlayfs) or the top
    /// snapshot's (native).
    pub fn of(&self, layer: usize) -> &Path {
        if self.cumulative {
            self.per_layer.last().expect("layers")
        } else {
            &self.per_layer[layer]
        }
    }
}

/// The directories of every layer of the image whose diff IDs are `diff_ids`.
pub async fn layer_dirs(store: &Store, snapshotter: &str, diff_ids: &[String]) -> Dirs {
    let diff_ids: Vec<Digest> = diff_ids.iter().map(|d| d.parse().unwrap()).collect();
    let chain = prepull::image::chain_ids(&diff_ids);
    let lease = store
        .create_lease("test-dirs", Duration::from_secs(600))
        .await
        .unwrap();
    let mut per_layer = Vec::new();
    let mut cumulative = false;
    let top = store
        .view_snapshot(
            &lease,
            snapshotter,
            &chain.last().expect("layers").to_string(),
        )
        .await
        .unwrap();
    match &top.dirs {
        ViewDirs::Layers(d) => per_layer = d.clone(),
        ViewDirs::Bind(_) => {
            cumulative = true;
            for c in &chain {
                let v = store
                    .view_snapshot(&lease, snapshotter, &c.to_string())
                    .await
                    .unwrap();
                match &v.dirs {
                    ViewDirs::Bind(d) => per_layer.push(d.clone()),
                    other => panic!("a native view shows {other:?}"),
                }
                store.release_view(v).await.unwrap();
            }
        }
    }
    store.release_view(top).await.unwrap();
    store.delete_lease(lease).await.unwrap();
    assert_eq!(per_layer.len(), chain.len(), "{per_layer:?}");
    Dirs {
        per_layer,
        cumulative,
    }
}
