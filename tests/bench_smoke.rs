//! Proves the test bench itself: real containerds side by side, a real registry that accepts the
//! synthetic images, containerd and CRI accepting those images, and the recording proxy.

use testbench as support;

use std::io::Read;
use std::time::Duration;

use containerd_client::services::v1::version_client::VersionClient;
use support::cri;
use support::image::sha256_digest;
use support::proxy::Action;
use support::{
    push_image, push_index, Containerd, ImageSpec, MediaFamily, Platform, Proxy, Registry,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn version(c: &Containerd) -> String {
    VersionClient::new(c.channel().await)
        .version(())
        .await
        .expect("Version RPC")
        .into_inner()
        .version
}

#[tokio::test(flavor = "multi_thread")]
async fn two_containerds_run_side_by_side() {
    let (a, b) = tokio::join!(Containerd::start(), Containerd::start());
    assert_ne!(a.socket(), b.socket());
    assert_ne!(a.root(), b.root());
    for c in [&a, &b] {
        let v = version(c).await;
        assert!(
            v.starts_with("1.") || v.starts_with("2."),
            "odd containerd version {v:?}"
        );
    }

    // Each has its own metadata: a namespace made in one is absent from the other.
    a.ctr_ok(&["namespaces", "create", "only-in-a"]);
    assert!(a
        .ctr_ok(&["namespaces", "ls", "-q"])
        .lines()
        .any(|l| l == "only-in-a"));
    assert!(!b
        .ctr_ok(&["namespaces", "ls", "-q"])
        .lines()
        .any(|l| l == "only-in-a"));

    // Dropping one leaves nothing behind and does not disturb the other.
    let a_dir = a.dir().to_path_buf();
    let a_socket = a.socket().display().to_string();
    drop(a);
    assert!(!a_dir.exists(), "{} survived Drop", a_dir.display());
    assert!(
        support::process::pids_with_args(
            "--config",
            &a_dir.join("config.toml").display().to_string()
        )
        .is_empty(),
        "containerd for {a_socket} still runs after Drop"
    );
    assert!(!version(&b).await.is_empty());
}

/// GETs a blob and checks its bytes hash to `digest`.
async fn get_blob(registry: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let resp = http()
        .get(format!("{}/v2/{repo}/blobs/{digest}", registry.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET blob {digest}");
    let bytes = resp.bytes().await.unwrap().to_vec();
    assert_eq!(
        sha256_digest(&bytes),
        digest,
        "blob bytes do not match their digest"
    );
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_serves_pushed_oci_and_docker_images() {
    let registry = Registry::start().await;
    let sizes = [MIB, 256 * KIB];
    let oci = push_image(&registry.host(), "bench/oci", "v1", &ImageSpec::new(&sizes)).await;
    let docker_spec = ImageSpec::new(&sizes)
        .family(MediaFamily::Docker)
        .platform(Platform::linux_arm64())
        .gzip_level(0);
    let docker = push_image(&registry.host(), "bench/docker", "v1", &docker_spec).await;
    assert_ne!(
        oci.config.digest, docker.config.digest,
        "configs must be unique"
    );

    for (repo, image, family) in [
        ("bench/oci", &oci, MediaFamily::Oci),
        ("bench/docker", &docker, MediaFamily::Docker),
    ] {
        // The manifest comes back by tag, byte for byte, under the digest we computed.
        let resp = http()
            .get(format!("{}/v2/{repo}/manifests/v1", registry.url()))
            .header("accept", family.manifest())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let digest = resp.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string();
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(digest, image.manifest.digest);
        assert_eq!(content_type, family.manifest());
        assert_eq!(resp.bytes().await.unwrap().to_vec(), image.manifest_bytes);

        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest_bytes).unwrap();
        assert_eq!(manifest["mediaType"], family.manifest());
        assert_eq!(manifest["config"]["mediaType"], family.config());
        assert_eq!(manifest["layers"][0]["mediaType"], family.layer());

        // The config names the platform and the diff_ids of the layers.
        let config: serde_json::Value =
            serde_json::from_slice(&get_blob(&registry, repo, &image.config.digest).await).unwrap();
        assert_eq!(config["architecture"], image.platform.architecture.as_str());
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!(image.diff_ids)
        );
        // Random layers hold no program: the config names no command (runnable images are
        // support::busybox's).
        assert!(config["config"]["Cmd"].is_null(), "{config}");

        // Each layer is a gzip'd tar of about the requested size whose tar hashes to its diff_id.
        for ((layer, diff_id), want) in image.layers.iter().zip(&image.diff_ids).zip(sizes) {
            assert!(
                layer.size as usize >= want && (layer.size as usize) < want + want / 50 + 4 * KIB,
                "layer of {} bytes for a requested {want}",
                layer.size
            );
            let blob = get_blob(&registry, repo, &layer.digest).await;
            let mut tar_bytes = Vec::new();
            flate2::read::GzDecoder::new(&blob[..])
                .read_to_end(&mut tar_bytes)
                .unwrap();
            assert_eq!(&sha256_digest(&tar_bytes), diff_id);
            let mut archive = tar::Archive::new(&tar_bytes[..]);
            let total: u64 = archive
                .entries()
                .unwrap()
                .map(|e| e.unwrap().header().size().unwrap())
                .sum();
            assert_eq!(total as usize, want);
            let on_disk =
                std::fs::metadata(registry.blob_data_path(&layer.digest)).expect("blob data file");
            assert_eq!(on_disk.len(), layer.size);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_and_cri_accept_a_multi_arch_index_with_attestation() {
    let (registry, containerd) = tokio::join!(Registry::start(), Containerd::start());
    let specs = [
        ImageSpec::new(&[512 * KIB, 128 * KIB]),
        ImageSpec::new(&[256 * KIB]).platform(Platform::linux_arm64()),
    ];
    let index = push_index(
        &registry.host(),
        "bench/multi",
        "v1",
        MediaFamily::Oci,
        &specs,
        true,
    )
    .await;
    let attestation = index.attestation.clone().expect("attestation requested");
    let doc: serde_json::Value = serde_json::from_slice(&index.index_bytes).unwrap();
    let entries = doc["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2]["digest"], attestation.digest.as_str());
    assert_eq!(entries[2]["platform"]["os"], "unknown");
    assert_eq!(
        entries[2]["annotations"]["vnd.docker.reference.digest"],
        index.images[0].manifest.digest.as_str()
    );
    assert_eq!(sha256_digest(&index.index_bytes), index.index.digest);

    let reference = format!("{}/bench/multi:v1", registry.host());
    let socket = containerd.socket();
    assert!(
        cri::image_status(socket, &reference).await.is_none(),
        "image present before the pull"
    );

    // ctr pulls and unpacks, which checks every digest and every diff_id.
    containerd.ctr_ok(&[
        "-n",
        "k8s.io",
        "images",
        "pull",
        "--plain-http",
        "--platform",
        "linux/amd64",
        "--snapshotter",
        containerd.snapshotter(),
        &reference,
    ]);
    let image = cri::wait_for_image(socket, &reference, Duration::from_secs(30)).await;
    let amd64 = &index.images[0];
    assert_eq!(image.id, amd64.config.digest);
    assert!(
        image.repo_tags.contains(&reference),
        "repo_tags {:?}",
        image.repo_tags
    );
    // (repo_digests stays empty: ctr, unlike a CRI pull, creates no `repo@digest` record.)
    assert!(cri::list_images(socket)
        .await
        .iter()
        .any(|i| i.id == amd64.config.digest));

    // A Docker manifest list is fetchable too, every platform of it.
    let list = push_index(
        &registry.host(),
        "bench/list",
        "v1",
        MediaFamily::Docker,
        &specs,
        false,
    )
    .await;
    containerd.ctr_ok(&[
        "-n",
        "k8s.io",
        "content",
        "fetch",
        "--plain-http",
        "--all-platforms",
        &format!("{}/bench/list:v1", registry.host()),
    ]);
    let content = containerd
        .root()
        .join("io.containerd.content.v1.content/blobs/sha256");
    for image in &list.images {
        assert_eq!(image.manifest.media_type, MediaFamily::Docker.manifest());
        for blob in image.layers.iter().chain([&image.config, &image.manifest]) {
            let hex = blob.digest.trim_start_matches("sha256:");
            assert!(
                content.join(hex).exists(),
                "{} missing from containerd's content store",
                blob.digest
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_records_requests_and_counts_blob_bytes() {
    let (registry, containerd) = tokio::join!(Registry::start(), Containerd::start());
    let mut registry = registry;
    let proxy = Proxy::start(&registry.host()).await;

    // Pushing through the proxy streams request bodies and needs Location rewritten.
    let image = push_image(
        &proxy.host(),
        "bench/proxied",
        "v1",
        &ImageSpec::new(&[2 * MIB, 300 * KIB]),
    )
    .await;
    let pushed = proxy.records();
    let count = |method: &str, fragment: &str, status: u16| {
        pushed
            .iter()
            .filter(|r| r.method == method && r.path.contains(fragment) && r.status == status)
            .count()
    };
    assert_eq!(count("POST", "/blobs/uploads/", 202), 3, "{pushed:#?}");
    assert_eq!(count("PUT", "digest=sha256", 201), 3, "{pushed:#?}");
    assert_eq!(count("PUT", "/manifests/v1", 201), 1, "{pushed:#?}");
    let resp = http()
        .post(format!("{}/v2/bench/proxied/blobs/uploads/", proxy.url()))
        .send()
        .await
        .unwrap();
    let location = resp.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{}/v2/", proxy.url())),
        "Location {location} not rewritten"
    );

    proxy.clear();
    assert!(proxy.records().is_empty());
    containerd.ctr_ok(&[
        "-n",
        "k8s.io",
        "content",
        "fetch",
        "--plain-http",
        &format!("{}/bench/proxied:v1", proxy.host()),
    ]);
    let records = proxy.records();
    assert!(
        records
            .iter()
            .any(|r| r.path == "/v2/bench/proxied/manifests/v1" && r.status == 200),
        "{records:#?}"
    );
    for blob in image.layers.iter().chain([&image.config]) {
        assert!(
            records.iter().any(|r| r.method == "GET"
                && r.path.ends_with(&blob.digest)
                && r.status == 200
                && r.response_body_bytes == blob.size),
            "no complete GET of {} in {records:#?}",
            blob.digest
        );
    }
    let expected: u64 = image.layers.iter().map(|l| l.size).sum::<u64>() + image.config.size;
    assert_eq!(proxy.blob_bytes(), expected);

    // Range requests pass through.
    let layer = &image.layers[0];
    let resp = http()
        .get(format!(
            "{}/v2/bench/proxied/blobs/{}",
            proxy.url(),
            layer.digest
        ))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 10-19/{}", layer.size).as_str()
    );
    let part = resp.bytes().await.unwrap();
    let whole = std::fs::read(registry.blob_data_path(&layer.digest)).unwrap();
    assert_eq!(&part[..], &whole[10..20]);
    assert_eq!(sha256_digest(&whole), layer.digest);

    // The hook can answer instead of the registry, and is recorded like any other request.
    proxy.set_hook(|req| {
        if req.path.contains("/manifests/") {
            Action::Respond {
                status: 503,
                body: b"injected".to_vec(),
            }
        } else {
            Action::Forward
        }
    });
    let resp = http()
        .get(format!("{}/v2/bench/proxied/manifests/v1", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    proxy.clear_hook();

    // With the registry gone the proxy answers 502.
    registry.stop();
    let resp = http()
        .get(format!("{}/v2/", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let last = proxy.records().last().cloned().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str(), last.status),
        ("GET", "/v2/", 502)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_containerd_kills_its_shims_and_containers() {
    let containerd = Containerd::start().await;
    // A container straight from a directory: the static busybox (Debian busybox-static) in an
    // otherwise empty root filesystem.
    let rootfs = containerd.dir().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("copy /bin/busybox (busybox-static)");
    // ctr's runc would keep its state under the global /run/containerd/runc: keep it in the temp dir.
    let runc_root = containerd.state().join("ctr-runc");
    containerd.ctr_ok(&[
        "-n",
        "bench",
        "run",
        "-d",
        "--runc-root",
        runc_root.to_str().unwrap(),
        "--fifo-dir",
        containerd.state().join("ctr-fifo").to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
        "sleeper",
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    let socket = containerd.socket().display().to_string();
    let shims = support::process::pids_with_args("-address", &socket);
    assert_eq!(shims.len(), 1, "expected one shim for {socket}");
    let shim_socket =
        support::containerd::shim_socket(&socket, &support::process::cmdline(shims[0])).unwrap();
    assert!(
        shim_socket.exists(),
        "no shim socket at {}",
        shim_socket.display()
    );
    let tree = support::process::with_descendants(&shims);
    assert!(tree.len() >= 2, "no container process below shim {shims:?}");
    assert!(tree.iter().all(|p| support::process::is_alive(*p)));

    drop(containerd);
    let alive: Vec<i32> = tree
        .into_iter()
        .filter(|p| support::process::is_alive(*p))
        .collect();
    assert!(alive.is_empty(), "still running after Drop: {alive:?}");
    assert!(
        !shim_socket.exists(),
        "{} left behind",
        shim_socket.display()
    );
}
