//! What containerd says about itself: where its plugins keep their data.

use std::path::PathBuf;

use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::PluginsRequest;

use super::{Store, StoreError};

/// The content store plugin (`io.containerd.content.v1.content`): its directory is where blobs
/// are written.
const CONTENT_PLUGIN_TYPE: &str = "io.containerd.content.v1";
const CONTENT_PLUGIN_ID: &str = "content";

impl Store {
    /// The content store's directory as containerd sees it, from the content plugin's `root`
    /// export (containerd 1.6, 1.7 and 2.x export it), or `None` when containerd does not say.
    /// A path on containerd's side: in a container, it may be mounted elsewhere or not at all.
    pub async fn content_root(&self) -> Result<Option<PathBuf>, StoreError> {
        let mut client = IntrospectionClient::new(self.channel.clone());
        let request = PluginsRequest {
            filters: vec![format!(
                "type=={CONTENT_PLUGIN_TYPE},id=={CONTENT_PLUGIN_ID}"
            )],
        };
        let plugins = client
            .plugins(self.request(request, None))
            .await
            .map_err(|s| StoreError::rpc("Introspection.Plugins", CONTENT_PLUGIN_TYPE, s))?
            .into_inner()
            .plugins;
        Ok(plugins
            .into_iter()
            .filter(|p| p.init_err.is_none())
            .find_map(|p| {
                p.exports
                    .get("root")
                    .filter(|r| !r.is_empty())
                    .map(PathBuf::from)
            }))
    }
}
