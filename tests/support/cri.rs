//! The kubelet's view of a node's images: CRI `ImageService` calls on a containerd socket, through
//! `prepull::cri`, the same client the agent uses.

use std::path::Path;
use std::time::Duration;

use prepull::cri::v1::{Image, ListImagesRequest};
use prepull::cri::ImageServiceClient;
use tonic::transport::Channel;

use super::process::Deadline;

async fn connect(socket: &Path) -> Channel {
    prepull::cri::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect to CRI at {}: {e}", socket.display()))
}

/// `ImageStatus` as the kubelet asks it; `None` means "not present". Panics on RPC errors.
pub async fn image_status(socket: &Path, image: &str) -> Option<Image> {
    prepull::cri::image_status(connect(socket).await, image)
        .await
        .unwrap_or_else(|e| panic!("CRI ImageStatus({image}) on {}: {e}", socket.display()))
}

/// Polls `ImageStatus` until CRI reports `image`: CRI learns about images created by other clients
/// asynchronously, from containerd's event stream.
pub async fn wait_for_image(socket: &Path, image: &str, timeout: Duration) -> Image {
    let channel = connect(socket).await;
    let deadline = Deadline::after(timeout);
    loop {
        let last = match prepull::cri::image_status(channel.clone(), image).await {
            Ok(Some(found)) => return found,
            Ok(None) => "not present".to_string(),
            Err(e) => format!("error: {e}"),
        };
        if deadline.expired() {
            let known: Vec<String> = list_images(socket)
                .await
                .into_iter()
                .flat_map(|i| i.repo_tags)
                .collect();
            panic!(
                "CRI on {} did not report image {image} within {timeout:?} (last answer: {last}); \
                 CRI knows these tags: {known:?}",
                socket.display()
            );
        }
        deadline.tick().await;
    }
}

/// All images CRI knows.
pub async fn list_images(socket: &Path) -> Vec<Image> {
    ImageServiceClient::new(connect(socket).await)
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap_or_else(|e| panic!("CRI ListImages on {}: {e}", socket.display()))
        .into_inner()
        .images
}
