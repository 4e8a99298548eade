//! What the fleet pulls and from where: the upstream registry behind its counting proxy, the
//! list's two images, moving a tag, and the pull-through cache.

use testbench as support;

use std::path::Path;

use support::{push_image, push_image_over, ImageSpec, Proxy, PushedImage, Registry};

use crate::owners::Owners;

const MIB: usize = 1 << 20;

/// The application image: a base of three layers and its own top layer.
pub const APP_LAYERS: [usize; 4] = [4 * MIB, 4 * MIB, 4 * MIB, 4 * MIB];
/// A second, smaller image on the same list.
pub const TOOL_LAYERS: [usize; 2] = [2 * MIB, MIB];

/// The registry every node pulls from, and the counting proxy in front of it: nodes name the
/// images by the proxy's address, so every request upstream is counted and attributed.
pub struct Upstream {
    pub registry: Registry,
    pub proxy: Proxy,
}

impl Upstream {
    pub async fn start(owners: &Owners) -> Upstream {
        let registry = Registry::start().await;
        let proxy = Proxy::start(&registry.host()).await;
        let resolve = owners.clone();
        proxy.set_source_resolver(move |peer, local| resolve.resolve(peer, local));
        Upstream { registry, proxy }
    }

    /// The name nodes use for the registry (`127.0.0.1:PORT`, the proxy's).
    pub fn host(&self) -> String {
        self.proxy.host()
    }
}

/// The list's images as they stand upstream.
pub struct Images {
    pub app: PushedImage,
    pub tool: PushedImage,
    /// The app image the tag pointed at before it moved, if it moved.
    pub app_before: Option<PushedImage>,
}

/// Bytes of an image as a registry serves it: manifest, config and layers.
pub fn image_bytes(image: &PushedImage) -> u64 {
    image.manifest.size + image.config.size + image.layers.iter().map(|l| l.size).sum::<u64>()
}

impl Images {
    /// Pushes both images straight to the registry (not through the proxy: pushes are not what
    /// the bench counts).
    pub async fn push(upstream: &Upstream) -> Images {
        let host = upstream.registry.host();
        let app = push_image(&host, "fleet/app", "v1", &ImageSpec::new(&APP_LAYERS)).await;
        let tool = push_image(&host, "fleet/tool", "v1", &ImageSpec::new(&TOOL_LAYERS)).await;
        Images {
            app,
            tool,
            app_before: None,
        }
    }

    /// The list every node keeps warm.
    pub fn list(&self, upstream: &Upstream, note: &str) -> String {
        let host = upstream.host();
        format!("# {note}\nimages:\n  - {host}/fleet/app:v1\n  - {host}/fleet/tool:v1\n")
    }

    /// Bytes of the two images the list names now.
    pub fn bytes(&self) -> u64 {
        image_bytes(&self.app) + image_bytes(&self.tool)
    }

    /// A new release of the app: its base layers kept, a new top layer, config and manifest,
    /// pushed to the same tag. Returns the bytes that are new (manifest, config, top layer).
    pub async fn move_app_tag(&mut self, upstream: &Upstream) -> u64 {
        let mut base = self.app.clone();
        base.layers.truncate(APP_LAYERS.len() - 1);
        base.diff_ids.truncate(APP_LAYERS.len() - 1);
        let top = ImageSpec::new(&APP_LAYERS[APP_LAYERS.len() - 1..]);
        let moved =
            push_image_over(&upstream.registry.host(), "fleet/app", "v1", &base, &top).await;
        let new =
            moved.manifest.size + moved.config.size + moved.layers.last().map_or(0, |l| l.size);
        self.app_before = Some(std::mem::replace(&mut self.app, moved));
        new
    }
}

/// A pull-through cache (docker-registry in proxy mode, its own empty storage) of the upstream,
/// fetching through the upstream's counting proxy, with a counting proxy of its own in front:
/// what the nodes ask of the cache.
pub struct Cache {
    pub registry: Registry,
    pub front: Proxy,
}

impl Cache {
    pub async fn start(upstream: &Upstream, owners: &Owners) -> Cache {
        let registry = Registry::start_with(
            support::RegistryOptions::default().pull_through(&upstream.proxy.url()),
        )
        .await;
        if let Some(pid) = registry.pid() {
            owners.set(pid, "cache");
        }
        let front = Proxy::start(&registry.host()).await;
        let resolve = owners.clone();
        front.set_source_resolver(move |peer, local| resolve.resolve(peer, local));
        Cache { registry, front }
    }
}

/// Writes a node's `certs.d/<upstream>/hosts.toml`: the upstream as the server over plain HTTP
/// and, with a cache, the cache's front as a mirror tried first (as containerd reads it).
pub fn write_hosts(certs_d: &Path, upstream: &str, mirror: Option<&str>) -> std::io::Result<()> {
    let dir = certs_d.join(upstream);
    std::fs::create_dir_all(&dir)?;
    let mut toml = format!("server = \"http://{upstream}\"\n");
    if let Some(mirror) = mirror {
        toml.push_str(&format!(
            "\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ));
    }
    std::fs::write(dir.join("hosts.toml"), toml)
}
