//! Where an image's unpacked files are on disk, found the way prepull finds them: through a
//! read-only view of its top snapshot (never by guessing snapshot directory numbers).

use std::path::PathBuf;
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
