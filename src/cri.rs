//! The Kubernetes CRI API (`runtime.v1`), generated from `proto/`, and a client for it.
//!
//! prepull uses it to ask containerd's CRI plugin exactly what the kubelet asks before it decides
//! to pull under `imagePullPolicy: IfNotPresent`: `ImageService/ImageStatus`.

use std::path::Path;

use tonic::transport::Channel;

/// Generated `runtime.v1` messages and clients.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

pub use v1::image_service_client::ImageServiceClient;
pub use v1::runtime_service_client::RuntimeServiceClient;

/// Opens a gRPC channel to a CRI endpoint on a Unix socket (containerd serves CRI on its own socket).
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    containerd_client::connect(socket).await
}

/// Asks CRI whether `image` is present, as the kubelet does. `None` means "not present".
pub async fn image_status(
    channel: Channel,
    image: &str,
) -> Result<Option<v1::Image>, tonic::Status> {
    let mut client = ImageServiceClient::new(channel);
    let response = client
        .image_status(v1::ImageStatusRequest {
            image: Some(v1::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?;
    Ok(response.into_inner().image)
}

/// The snapshotter CRI unpacks images into. containerd names its image filesystem after it
/// (`ImageFsInfo` reports `<root>/io.containerd.snapshotter.v1.<name>` on 1.6 to 2.x); 1.x also
/// shows it in its verbose `Status` config. `None` if CRI says neither.
pub async fn snapshotter(channel: Channel) -> Result<Option<String>, tonic::Status> {
    let mut images = ImageServiceClient::new(channel.clone());
    if let Ok(info) = images.image_fs_info(v1::ImageFsInfoRequest {}).await {
        let from_mount = info
            .into_inner()
            .image_filesystems
            .iter()
            .filter_map(|fs| fs.fs_id.as_ref())
            .find_map(|id| snapshotter_of_mountpoint(&id.mountpoint));
        if from_mount.is_some() {
            return Ok(from_mount);
        }
    }
    let mut client = RuntimeServiceClient::new(channel);
    let response = client
        .status(v1::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let Some(config) = response.info.get("config") else {
        return Ok(None);
    };
    let Ok(config) = serde_json::from_str::<serde_json::Value>(config) else {
        return Ok(None);
    };
    Ok(find_snapshotter(&config))
}

fn snapshotter_of_mountpoint(mountpoint: &str) -> Option<String> {
    let last = mountpoint.trim_end_matches('/').rsplit('/').next()?;
    last.strip_prefix("io.containerd.snapshotter.v1.")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// containerd 1.x keeps it at `containerd.snapshotter`; other layouts put a `snapshotter` key
/// elsewhere, so fall back to the first non-empty one found.
fn find_snapshotter(config: &serde_json::Value) -> Option<String> {
    if let Some(s) = config
        .pointer("/containerd/snapshotter")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
    {
        return Some(s.to_string());
    }
    match config {
        serde_json::Value::Object(map) => {
            if let Some(s) = map
                .get("snapshotter")
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
            {
                return Some(s.to_string());
            }
            map.values().find_map(find_snapshotter)
        }
        serde_json::Value::Array(items) => items.iter().find_map(find_snapshotter),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshotter_from_the_image_filesystem() {
        assert_eq!(
            snapshotter_of_mountpoint("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs")
                .as_deref(),
            Some("overlayfs")
        );
        assert_eq!(
            snapshotter_of_mountpoint("/x/io.containerd.snapshotter.v1.native/").as_deref(),
            Some("native")
        );
        assert_eq!(snapshotter_of_mountpoint("/var/lib/containerd"), None);
    }

    #[test]
    fn finds_the_snapshotter_in_cri_config() {
        let v1 = serde_json::json!({"containerd": {"snapshotter": "native", "runtimes": {"runc": {"snapshotter": ""}}}});
        assert_eq!(find_snapshotter(&v1).as_deref(), Some("native"));
        let other = serde_json::json!({"runtimes": {"runc": {"snapshotter": "overlayfs"}}});
        assert_eq!(find_snapshotter(&other).as_deref(), Some("overlayfs"));
        assert_eq!(find_snapshotter(&serde_json::json!({"x": 1})), None);
    }
}
