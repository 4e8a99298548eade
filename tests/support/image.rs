//! Synthetic images (random gzip'd tar layers, OCI or Docker media types, multi-arch indexes with
//! an optional buildkit-style attestation) pushed through a registry's HTTP API.
//!
//! Layers are built (see `layer`) on the blocking pool into anonymous temp files while the
//! previous layer uploads, so a big image neither waits on one core nor sits in memory.

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::auth::TokenMinter;
use super::layer::build_layer;
pub use super::layer::sha256_digest;

/// Where the bench pushes: a registry's address, scheme, CA and credentials. `Registry::push_target`
/// makes one for a bench registry; [`PushTarget::plain`] is the unauthenticated HTTP default.
#[derive(Clone, Debug)]
pub struct PushTarget {
    /// `127.0.0.1:PORT`
    pub host: String,
    /// `http` or `https`
    pub scheme: String,
    /// Trust this CA (PEM) instead of the system roots.
    pub ca_pem: Option<String>,
    pub auth: PushAuth,
}

/// How the pusher authenticates. Credentials are sent preemptively on every request: blob bodies
/// stream from files and cannot be replayed after a 401.
#[derive(Clone)]
pub enum PushAuth {
    None,
    Basic {
        user: String,
        password: String,
    },
    /// A fresh pull+push token minted for every request, so short token lifetimes configured for
    /// the client under test never break a push.
    Bearer(TokenMinter),
}

impl std::fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushAuth::None => f.write_str("None"),
            PushAuth::Basic { user, .. } => write!(f, "Basic({user}:***)"),
            PushAuth::Bearer(_) => f.write_str("Bearer(minted)"),
        }
    }
}

impl PushTarget {
    /// Plain HTTP, no auth: what `push_image(host, …)` uses.
    pub fn plain(host: &str) -> PushTarget {
        PushTarget {
            host: host.to_string(),
            scheme: "http".into(),
            ca_pem: None,
            auth: PushAuth::None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaFamily {
    Oci,
    Docker,
}

impl MediaFamily {
    pub fn manifest(self) -> &'static str {
        match self {
            MediaFamily::Oci => "application/vnd.oci.image.manifest.v1+json",
            MediaFamily::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }

    pub fn config(self) -> &'static str {
        match self {
            MediaFamily::Oci => "application/vnd.oci.image.config.v1+json",
            MediaFamily::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }

    pub fn layer(self) -> &'static str {
        match self {
            MediaFamily::Oci => "application/vnd.oci.image.layer.v1.tar+gzip",
            MediaFamily::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        }
    }

    pub fn index(self) -> &'static str {
        match self {
            MediaFamily::Oci => "application/vnd.oci.image.index.v1+json",
            MediaFamily::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }
}

pub const IN_TOTO_MEDIA_TYPE: &str = "application/vnd.in-toto+json";

#[derive(Clone, Debug)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux_amd64() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    pub fn linux_arm64() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        }
    }

    /// `os/arch[/variant]`, as `ctr --platform` takes it.
    pub fn to_ctr_string(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    fn to_json(&self) -> Value {
        let mut p = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Approximate compressed size of each layer, in bytes.
    pub layer_sizes: Vec<usize>,
    pub family: MediaFamily,
    pub platform: Platform,
    /// 0..=9; 0 stores without compressing, which is fastest for big images.
    pub gzip_level: u32,
}

impl ImageSpec {
    /// OCI, linux/amd64, gzip level 1.
    pub fn new(layer_sizes: &[usize]) -> Self {
        ImageSpec {
            layer_sizes: layer_sizes.to_vec(),
            family: MediaFamily::Oci,
            platform: Platform::linux_amd64(),
            gzip_level: 1,
        }
    }

    pub fn family(mut self, family: MediaFamily) -> Self {
        self.family = family;
        self
    }

    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    pub fn gzip_level(mut self, level: u32) -> Self {
        self.gzip_level = level;
        self
    }
}

#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

impl Blob {
    fn of(bytes: &[u8], media_type: &str) -> Blob {
        Blob {
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
            media_type: media_type.to_string(),
        }
    }

    /// The OCI descriptor JSON for this blob.
    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

#[derive(Clone, Debug)]
pub struct PushedImage {
    pub manifest: Blob,
    pub manifest_bytes: Vec<u8>,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// sha256 of each uncompressed layer tar, as in the config's `rootfs.diff_ids`.
    pub diff_ids: Vec<String>,
    pub platform: Platform,
}

#[derive(Clone, Debug)]
pub struct PushedIndex {
    pub index: Blob,
    pub index_bytes: Vec<u8>,
    pub images: Vec<PushedImage>,
    /// The attestation manifest's descriptor, when one was pushed.
    pub attestation: Option<Blob>,
}

/// Pushes one image over plain HTTP without auth and tags its manifest `tag` in `repo`.
pub async fn push_image(
    registry_host: &str,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    push_image_with(&PushTarget::plain(registry_host), repo, tag, spec).await
}

/// [`push_image`] to any registry: TLS, Basic or Bearer auth.
pub async fn push_image_with(
    target: &PushTarget,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> PushedImage {
    let pusher = Pusher::new(target, repo);
    let image = pusher.push_image_blobs(spec).await;
    pusher
        .put_manifest(tag, &image.manifest.media_type, &image.manifest_bytes)
        .await;
    image
}

/// Pushes an image rebuilt on `base` (already in `repo`): `base`'s layers first, reused as they
/// are, then new layers per `spec`, a new config, and the manifest tagged `tag`. Moving a tag
/// to it is what a new release of an application on the same base image looks like.
pub async fn push_image_over(
    registry_host: &str,
    repo: &str,
    tag: &str,
    base: &PushedImage,
    spec: &ImageSpec,
) -> PushedImage {
    let pusher = Pusher::new(&PushTarget::plain(registry_host), repo);
    let image = pusher.push_image_blobs_over(Some(base), spec).await;
    pusher
        .put_manifest(tag, &image.manifest.media_type, &image.manifest_bytes)
        .await;
    image
}

/// Tags an already pushed image `tag` in `repo` as well: two references sharing every blob.
pub async fn tag_image(registry_host: &str, repo: &str, tag: &str, image: &PushedImage) {
    Pusher::new(&PushTarget::plain(registry_host), repo)
        .put_manifest(tag, &image.manifest.media_type, &image.manifest_bytes)
        .await;
}

/// Pushes a multi-platform index (an OCI index or a Docker manifest list, per `family`) tagged
/// `tag`, its platform manifests by digest. Every image uses `family`, whatever its spec says, as
/// real indexes do. `with_attestation` adds a buildkit-style attestation manifest for the first
/// image (OCI only: buildkit never puts one into a Docker manifest list).
pub async fn push_index(
    registry_host: &str,
    repo: &str,
    tag: &str,
    family: MediaFamily,
    specs: &[ImageSpec],
    with_attestation: bool,
) -> PushedIndex {
    push_index_with(
        &PushTarget::plain(registry_host),
        repo,
        tag,
        family,
        specs,
        with_attestation,
    )
    .await
}

/// [`push_index`] to any registry: TLS, Basic or Bearer auth.
pub async fn push_index_with(
    target: &PushTarget,
    repo: &str,
    tag: &str,
    family: MediaFamily,
    specs: &[ImageSpec],
    with_attestation: bool,
) -> PushedIndex {
    assert!(!specs.is_empty(), "an index needs at least one image");
    assert!(
        !with_attestation || family == MediaFamily::Oci,
        "attestation manifests only exist in OCI indexes"
    );
    let pusher = Pusher::new(target, repo);
    let mut images = Vec::with_capacity(specs.len());
    let mut entries = Vec::new();
    for spec in specs {
        let spec = spec.clone().family(family);
        let image = pusher.push_image_blobs(&spec).await;
        pusher
            .put_manifest(
                &image.manifest.digest,
                &image.manifest.media_type,
                &image.manifest_bytes,
            )
            .await;
        let mut entry = image.manifest.descriptor();
        entry["platform"] = image.platform.to_json();
        entries.push(entry);
        images.push(image);
    }
    let attestation = if with_attestation {
        let (blob, entry) = pusher.push_attestation(repo, tag, &images[0]).await;
        entries.push(entry);
        Some(blob)
    } else {
        None
    };
    let index_bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": family.index(),
        "manifests": entries,
    }))
    .expect("serialize index");
    let index = Blob::of(&index_bytes, family.index());
    pusher
        .put_manifest(tag, &index.media_type, &index_bytes)
        .await;
    PushedIndex {
        index,
        index_bytes,
        images,
        attestation,
    }
}

/// Uploads into one repository of one registry.
struct Pusher {
    client: reqwest::Client,
    base: Url,
    repo: String,
    auth: PushAuth,
}

impl Pusher {
    fn new(target: &PushTarget, repo: &str) -> Self {
        let mut builder = reqwest::Client::builder().no_proxy();
        if let Some(pem) = &target.ca_pem {
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(
                reqwest::Certificate::from_pem(pem.as_bytes()).expect("parse the push CA PEM"),
            );
        }
        Pusher {
            client: builder.build().expect("build HTTP client"),
            base: Url::parse(&format!("{}://{}/", target.scheme, target.host))
                .expect("registry host"),
            repo: repo.to_string(),
            auth: target.auth.clone(),
        }
    }

    /// Adds the target's credentials to a request.
    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            PushAuth::None => request,
            PushAuth::Basic { user, password } => request.basic_auth(user, Some(password)),
            PushAuth::Bearer(minter) => request.bearer_auth(minter.push_token(&self.repo)),
        }
    }

    /// Layers, then config, then the manifest document (not yet uploaded).
    async fn push_image_blobs(&self, spec: &ImageSpec) -> PushedImage {
        self.push_image_blobs_over(None, spec).await
    }

    /// [`Pusher::push_image_blobs`], the layers following `base`'s (already uploaded) if given.
    async fn push_image_blobs_over(
        &self,
        base: Option<&PushedImage>,
        spec: &ImageSpec,
    ) -> PushedImage {
        let family = spec.family;
        let mut layers: Vec<Blob> = base.map(|b| b.layers.clone()).unwrap_or_default();
        let mut diff_ids: Vec<String> = base.map(|b| b.diff_ids.clone()).unwrap_or_default();
        let spawn_build = |size: usize| {
            let level = spec.gzip_level;
            tokio::task::spawn_blocking(move || build_layer(size, level))
        };
        let mut next = spec.layer_sizes.first().map(|s| spawn_build(*s));
        for i in 0..spec.layer_sizes.len() {
            let built = next
                .take()
                .expect("a layer build")
                .await
                .expect("layer build panicked");
            // Build the next layer while this one uploads.
            next = spec.layer_sizes.get(i + 1).map(|s| spawn_build(*s));
            let blob = Blob {
                digest: built.digest,
                size: built.size,
                media_type: family.layer().to_string(),
            };
            self.upload_blob(&blob, file_body(built.file)).await;
            layers.push(blob);
            diff_ids.push(built.diff_id);
        }

        let mut config = json!({
            "architecture": spec.platform.architecture,
            "os": spec.platform.os,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            // The nonce makes every config, hence every image ID, unique. Random layers hold no
            // program, so the config names no command.
            "config": {
                "Labels": { "prepull.test/nonce": hex::encode(rand::random::<[u8; 16]>()) },
            },
        });
        if let Some(v) = &spec.platform.variant {
            config["variant"] = json!(v);
        }
        let config_bytes = serde_json::to_vec(&config).expect("serialize config");
        let config_blob = Blob::of(&config_bytes, family.config());
        self.upload_blob(&config_blob, config_bytes.into()).await;

        let manifest_bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": family.manifest(),
            "config": config_blob.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        }))
        .expect("serialize manifest");
        PushedImage {
            manifest: Blob::of(&manifest_bytes, family.manifest()),
            manifest_bytes,
            config: config_blob,
            layers,
            diff_ids,
            platform: spec.platform.clone(),
        }
    }

    /// A buildkit-style provenance attestation for `subject`: pushed by digest; returns its blob
    /// and its index entry.
    async fn push_attestation(
        &self,
        repo: &str,
        tag: &str,
        subject: &PushedImage,
    ) -> (Blob, Value) {
        let predicate_type = "https://slsa.dev/provenance/v0.2";
        let statement = serde_json::to_vec(&json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": predicate_type,
            "subject": [{
                "name": format!("pkg:docker/{repo}@{tag}?platform={}", subject.platform.to_ctr_string().replace('/', "%2F")),
                "digest": { "sha256": subject.manifest.digest.trim_start_matches("sha256:") },
            }],
            "predicate": { "buildType": "https://mobyproject.org/buildkit@v1" },
        }))
        .expect("serialize in-toto statement");
        let layer = Blob::of(&statement, IN_TOTO_MEDIA_TYPE);
        self.upload_blob(&layer, statement.into()).await;

        let config_bytes = serde_json::to_vec(&json!({
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
        }))
        .expect("serialize attestation config");
        let config = Blob::of(&config_bytes, MediaFamily::Oci.config());
        self.upload_blob(&config, config_bytes.into()).await;

        let mut layer_desc = layer.descriptor();
        layer_desc["annotations"] = json!({ "in-toto.io/predicate-type": predicate_type });
        let manifest_bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MediaFamily::Oci.manifest(),
            "config": config.descriptor(),
            "layers": [layer_desc],
        }))
        .expect("serialize attestation manifest");
        let manifest = Blob::of(&manifest_bytes, MediaFamily::Oci.manifest());
        self.put_manifest(&manifest.digest, &manifest.media_type, &manifest_bytes)
            .await;

        let mut entry = manifest.descriptor();
        entry["annotations"] = json!({
            "vnd.docker.reference.digest": subject.manifest.digest,
            "vnd.docker.reference.type": "attestation-manifest",
        });
        entry["platform"] = json!({ "architecture": "unknown", "os": "unknown" });
        (manifest, entry)
    }

    /// Monolithic upload: `POST .../blobs/uploads/` for a Location, then `PUT <location>&digest=`.
    async fn upload_blob(&self, blob: &Blob, body: reqwest::Body) {
        let start = self
            .base
            .join(&format!("v2/{}/blobs/uploads/", self.repo))
            .expect("upload URL");
        let resp = self
            .authorize(self.client.post(start.clone()))
            .header(CONTENT_LENGTH, 0)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {start}: {e}"));
        let resp = expect_status(resp, StatusCode::ACCEPTED, "start blob upload").await;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("POST {start}: 202 without a Location header"));
        // Location may be relative and usually carries the upload's state in its query already.
        let mut put = start
            .join(location)
            .unwrap_or_else(|e| panic!("bad upload Location {location:?}: {e}"));
        put.query_pairs_mut().append_pair("digest", &blob.digest);
        let resp = self
            .authorize(self.client.put(put.clone()))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, blob.size)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {put}: {e}"));
        let resp = expect_status(
            resp,
            StatusCode::CREATED,
            &format!("upload blob {}", blob.digest),
        )
        .await;
        check_digest_header(&resp, &blob.digest);
    }

    /// `PUT /v2/<repo>/manifests/<reference>` (a tag or a digest).
    async fn put_manifest(&self, reference: &str, media_type: &str, bytes: &[u8]) {
        let url = self
            .base
            .join(&format!("v2/{}/manifests/{reference}", self.repo))
            .expect("manifest URL");
        let resp = self
            .authorize(self.client.put(url.clone()))
            .header(CONTENT_TYPE, media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        let resp = expect_status(
            resp,
            StatusCode::CREATED,
            &format!("put manifest {reference}"),
        )
        .await;
        check_digest_header(&resp, &sha256_digest(bytes));
    }
}

/// Streams a file in 1 MiB chunks: reqwest's own `From<File>` reads 8 KiB at a time, which in an
/// unoptimized test build is three times slower than the registry.
fn file_body(file: std::fs::File) -> reqwest::Body {
    let chunks =
        futures_util::stream::try_unfold(tokio::fs::File::from_std(file), |mut f| async move {
            let mut buf = vec![0u8; 1 << 20];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            buf.truncate(n);
            Ok(Some((bytes::Bytes::from(buf), f)))
        });
    reqwest::Body::wrap_stream(chunks)
}

async fn expect_status(resp: reqwest::Response, want: StatusCode, what: &str) -> reqwest::Response {
    if resp.status() == want {
        return resp;
    }
    let status = resp.status();
    let url = resp.url().clone();
    let body = resp.text().await.unwrap_or_default();
    panic!("{what}: {url} answered {status}, expected {want}: {body}");
}

fn check_digest_header(resp: &reqwest::Response, want: &str) {
    let got = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok());
    assert_eq!(
        got,
        Some(want),
        "{} answered with an unexpected Docker-Content-Digest",
        resp.url()
    );
}
