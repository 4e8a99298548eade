//! The workloads: what each one is (W1-W6, their shapes and default runs), pushing their images
//! into the bench's registry, and how the clients reach that registry (directly, through the
//! emulated WAN or through the recording proxy).

use std::time::Instant;

use anyhow::bail;
use futures_util::stream::{self, StreamExt as _};

use crate::support::{push_image, ImageSpec, Proxy, PushedImage, Registry};
use crate::wan::{LinkInfo, Wan};
use crate::{KIB, MIB};

/// W4 pushes this many images at once: enough to keep the registry busy, few enough not to drown
/// 2 cores in layer generation.
const PUSH_CONCURRENCY: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadId {
    W1,
    W3,
    W4,
    W5,
    W6,
}

impl WorkloadId {
    pub const ALL: [WorkloadId; 5] = [
        WorkloadId::W1,
        WorkloadId::W3,
        WorkloadId::W4,
        WorkloadId::W5,
        WorkloadId::W6,
    ];

    pub fn parse(s: &str) -> anyhow::Result<WorkloadId> {
        match s.trim().to_ascii_lowercase().as_str() {
            "w1" => Ok(WorkloadId::W1),
            "w3" => Ok(WorkloadId::W3),
            "w4" => Ok(WorkloadId::W4),
            "w5" => Ok(WorkloadId::W5),
            "w6" => Ok(WorkloadId::W6),
            other => bail!("unknown workload {other:?} (known: w1, w3, w4, w5, w6)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WorkloadId::W1 => "W1",
            WorkloadId::W3 => "W3",
            WorkloadId::W4 => "W4",
            WorkloadId::W5 => "W5",
            WorkloadId::W6 => "W6",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            WorkloadId::W1 => "1 image, 8 layers x 32 MiB",
            WorkloadId::W3 => "1 image, 1 layer x 512 MiB",
            WorkloadId::W4 => "100 images x 3 layers x 1 MiB",
            WorkloadId::W5 => "W1 over an emulated WAN",
            WorkloadId::W6 => "200 images already present, pulled again",
        }
    }

    /// Big single-image workloads take long enough per run that 3 runs already say a lot on 2 cores.
    pub fn default_runs(self) -> usize {
        match self {
            WorkloadId::W1 | WorkloadId::W5 => 5,
            WorkloadId::W3 | WorkloadId::W4 | WorkloadId::W6 => 3,
        }
    }

    /// (number of images, layer sizes of each)
    fn shape(self) -> (usize, Vec<usize>) {
        match self {
            WorkloadId::W1 | WorkloadId::W5 => (1, vec![32 * MIB; 8]),
            WorkloadId::W3 => (1, vec![512 * MIB]),
            WorkloadId::W4 => (100, vec![MIB; 3]),
            // Small layers: W6 is about requests and bookkeeping, not bytes.
            WorkloadId::W6 => (200, vec![256 * KIB]),
        }
    }

    /// Whether each run first pulls everything once (untimed) and then times a second pass.
    pub fn warm(self) -> bool {
        self == WorkloadId::W6
    }
}

/// One workload as pushed: references to pull and every blob that must end up in containerd.
pub struct Workload {
    pub id: WorkloadId,
    pub runs: usize,
    /// The registry host the images are pulled from (`--plain-http` for prepull).
    pub host: String,
    /// How the clients reach the registry.
    pub via: Via,
    /// The emulated link (W5), kept for the report after the link is gone.
    pub link: Option<LinkInfo>,
    pub images: Vec<String>,
    /// Manifests, configs and layers of all images.
    pub digests: Vec<String>,
    /// Sum of the sizes of `digests`: what either tool has to fetch and store.
    pub bytes: u64,
    /// The manifests' share of `bytes`; prepull's `bytes_fetched` leaves manifests out.
    pub manifest_bytes: u64,
    /// Layers over all images: the snapshots an unpack must leave behind (all layers differ).
    pub layers: usize,
    /// (repository, digest) of every config and layer, for [`crate::floor::wire_floor`].
    pub blobs: Vec<(String, String)>,
}

impl Workload {
    fn from_pushed(
        id: WorkloadId,
        runs: usize,
        host: &str,
        pushed: Vec<(String, PushedImage)>,
    ) -> Self {
        let mut digests = Vec::new();
        let mut bytes = 0;
        let mut manifest_bytes = 0;
        let mut layers = 0;
        let mut images = Vec::new();
        let mut blobs = Vec::new();
        for (repo_tag, image) in pushed {
            images.push(format!("{host}/{repo_tag}"));
            let repo = repo_tag.split(':').next().unwrap_or_default().to_string();
            for blob in std::iter::once(&image.config).chain(image.layers.iter()) {
                blobs.push((repo.clone(), blob.digest.clone()));
            }
            manifest_bytes += image.manifest.size;
            layers += image.layers.len();
            for blob in std::iter::once(&image.manifest)
                .chain(std::iter::once(&image.config))
                .chain(image.layers.iter())
            {
                digests.push(blob.digest.clone());
                bytes += blob.size;
            }
        }
        Workload {
            id,
            runs,
            host: host.to_string(),
            via: Via::Loopback,
            link: None,
            images,
            digests,
            bytes,
            manifest_bytes,
            layers,
            blobs,
        }
    }

    pub fn mib(&self) -> f64 {
        self.bytes as f64 / MIB as f64
    }

    /// Pulls the same images from `via`'s host from now on (it serves the same registry storage).
    pub fn serve_via(&mut self, via: Via) {
        let host = match &via {
            Via::Loopback => return,
            Via::Wan(wan) => {
                self.link = Some(wan.info());
                wan.host()
            }
            Via::Proxy(proxy) => proxy.host(),
        };
        for image in &mut self.images {
            if let Some(rest) = image.strip_prefix(&format!("{}/", self.host)) {
                *image = format!("{host}/{rest}");
            }
        }
        self.host = host;
        self.via = via;
    }

    /// The registry process serving this workload, when it is not the bench's loopback one.
    pub fn own_registry_pid(&self) -> Option<u32> {
        match &self.via {
            Via::Wan(wan) => wan.registry_pid,
            Via::Loopback | Via::Proxy(_) => None,
        }
    }
}

/// How the clients reach the registry.
pub enum Via {
    /// The bench's registry on loopback, directly.
    Loopback,
    /// A second registry process on the same storage, in its own network namespace (W5).
    Wan(Wan),
    /// The bench's registry behind a recording proxy that counts every request (W6).
    Proxy(Proxy),
}

/// Pushes the images of workload `id` into `registry`.
pub async fn push_workload(registry: &Registry, id: WorkloadId, runs: usize) -> Workload {
    let (count, layers) = id.shape();
    let host = registry.host();
    let started = Instant::now();
    // gzip level 0: the layers are random bytes anyway, and storing is much faster than deflating.
    let spec = ImageSpec::new(&layers).gzip_level(0);
    let repo_tags: Vec<(String, String)> = (0..count)
        .map(|i| {
            let repo = if count == 1 {
                format!("bench/{}", id.name().to_lowercase())
            } else {
                format!("bench/{}-{i:03}", id.name().to_lowercase())
            };
            (repo, "v1".to_string())
        })
        .collect();
    let pushed: Vec<(String, PushedImage)> = stream::iter(repo_tags)
        .map(|(repo, tag)| {
            let host = host.clone();
            let spec = spec.clone();
            async move {
                let image = push_image(&host, &repo, &tag, &spec).await;
                (format!("{repo}:{tag}"), image)
            }
        })
        // `buffered` keeps the images in order, so W4's invocations are the same every run.
        .buffered(PUSH_CONCURRENCY)
        .collect()
        .await;
    let w = Workload::from_pushed(id, runs, &host, pushed);
    eprintln!(
        "[{}] pushed {} image(s), {} blobs, {:.1} MiB in {:.1} s",
        id.name(),
        w.images.len(),
        w.digests.len(),
        w.mib(),
        started.elapsed().as_secs_f64()
    );
    w
}
