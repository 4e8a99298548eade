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
