//! Image records: the names CRI and the kubelet look images up by.

use std::collections::HashMap;

use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    CreateImageRequest, GetImageRequest, Image, ListImagesRequest, UpdateImageRequest,
};
use containerd_client::types::Descriptor as PbDescriptor;

use super::{Store, StoreError};
use crate::oci::Descriptor;

/// An image record as containerd holds it: what reads return, so that containerd's generated
/// types stay inside this adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    /// The record's name.
    pub name: String,
    /// What the record points at (the top-level document); `None` when containerd's descriptor
    /// has no digest prepull can read.
    pub target: Option<Descriptor>,
    /// All of the record's labels.
    pub labels: HashMap<String, String>,
}

impl From<Image> for StoredImage {
    fn from(image: Image) -> StoredImage {
        let target = image.target.and_then(|t| {
            Some(Descriptor {
                digest: t.digest.parse().ok()?,
                media_type: t.media_type,
                size: t.size.max(0) as u64,
                platform: None,
                urls: Vec::new(),
                annotations: t.annotations.into_iter().collect(),
            })
        });
        StoredImage {
            name: image.name,
            target,
            labels: image.labels,
        }
    }
}

/// An image record as prepull writes it.
#[derive(Clone, Debug)]
pub struct ImageRecord {
    /// The record's name (`docker.io/library/nginx:1.25`, `…@sha256:…`, `sha256:<config>`).
    pub name: String,
    /// The top-level descriptor (the index for a multi-platform image).
    pub target: Descriptor,
    /// Labels to set (others the record already has are kept).
    pub labels: HashMap<String, String>,
}

impl Store {
    /// Reads an image record.
    pub async fn image(&self, name: &str) -> Result<Option<StoredImage>, StoreError> {
        Ok(self.image_as_stored(name).await?.map(StoredImage::from))
    }

    /// Reads an image record as containerd's own type, for updates that send it back whole.
    async fn image_as_stored(&self, name: &str) -> Result<Option<Image>, StoreError> {
        let mut client = ImagesClient::new(self.channel.clone());
        match client
            .get(self.request(
                GetImageRequest {
                    name: name.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(StoreError::rpc("Images.Get", name, s)),
        }
    }

    /// Every image record in the namespace.
    pub async fn images(&self) -> Result<Vec<StoredImage>, StoreError> {
        self.list_images(Vec::new(), "images").await
    }

    /// Image records that have `label`, whatever its value.
    pub async fn images_with_label(&self, label: &str) -> Result<Vec<StoredImage>, StoreError> {
        self.list_images(vec![format!("labels.\"{label}\"")], label)
            .await
    }

    async fn list_images(
        &self,
        filters: Vec<String>,
        what: &str,
    ) -> Result<Vec<StoredImage>, StoreError> {
        let mut client = ImagesClient::new(self.channel.clone());
        let listed = client
            .list(self.request(ListImagesRequest { filters }, None))
            .await
            .map_err(|s| StoreError::rpc("Images.List", what, s))?;
        Ok(listed
            .into_inner()
            .images
            .into_iter()
            .map(StoredImage::from)
            .collect())
    }

    /// Removes a label from an image record (e.g. the CRI pin). `false` if there is no such
    /// record.
    pub async fn remove_image_label(&self, name: &str, label: &str) -> Result<bool, StoreError> {
        self.update_image_labels(name, &[(label, None)]).await
    }

    /// Sets (`Some`) or removes (`None`) labels of an image record, leaving its other labels
    /// alone. `false` if there is no such record.
    pub async fn update_image_labels(
        &self,
        name: &str,
        changes: &[(&str, Option<&str>)],
    ) -> Result<bool, StoreError> {
        let Some(mut image) = self.image_as_stored(name).await? else {
            return Ok(false);
        };
        for (label, value) in changes {
            match value {
                Some(v) => image.labels.insert(label.to_string(), v.to_string()),
                None => image.labels.remove(*label),
            };
        }
        let mut client = ImagesClient::new(self.channel.clone());
        client
            .update(
                self.request(
                    UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(prost_types::FieldMask {
                            paths: changes
                                .iter()
                                .map(|(label, _)| format!("labels.{label}"))
                                .collect(),
                        }),
                        source_date_epoch: None,
                    },
                    None,
                ),
            )
            .await
            .map_err(|s| StoreError::rpc("Images.Update", name, s))?;
        Ok(true)
    }

    /// Creates the record, or points an existing one at the new target (a tag that moved),
    /// keeping labels someone else set.
    pub async fn put_image(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let image = Image {
            name: record.name.clone(),
            labels: record.labels.clone(),
            target: Some(PbDescriptor {
                media_type: record.target.media_type.clone(),
                digest: record.target.digest.to_string(),
                size: record.target.size as i64,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let mut client = ImagesClient::new(self.channel.clone());
        let created = client
            .create(self.request(
                CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                None,
            ))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let mut paths = vec!["target".to_string()];
                paths.extend(record.labels.keys().map(|k| format!("labels.{k}")));
                client
                    .update(self.request(
                        UpdateImageRequest {
                            image: Some(image),
                            update_mask: Some(prost_types::FieldMask { paths }),
                            source_date_epoch: None,
                        },
                        None,
                    ))
                    .await
                    .map_err(|s| StoreError::rpc("Images.Update", &record.name, s))?;
                Ok(())
            }
            Err(s) => Err(StoreError::rpc("Images.Create", &record.name, s)),
        }
    }
}
