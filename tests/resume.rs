//! Interrupted pulls continue where containerd's ingest stands: after `kill -9` of prepull, and
//! after the registry connection breaks mid-layer (at a fixed offset, and at random offsets in
//! every layer). Faults come from a proxy in front of the real registry (pacing and cutting the
//! body, exactly at the byte asked for) and from killing the real process.

use testbench as support;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prepull::store::Store;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use support::process::Deadline;
use support::{push_image, text, Action, Containerd, ImageSpec, Prepull, Proxy, Registry, Shape};

const MIB: usize = 1 << 20;

/// How far the layer's ingest (containerd's ref `layer-<digest>`, as containerd's own pull names
/// it) has come.
async fn ingest_offset(containerd: &Containerd, digest: &str) -> Option<u64> {
    let store = Store::connect(containerd.socket(), "k8s.io")
        .await
        .expect("connect");
    store
        .ingest_offset(&format!("layer-{digest}"))
        .await
        .expect("Content.Status")
}

fn layer_bytes(proxy: &Proxy, digest: &str) -> u64 {
    proxy
        .records()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(digest))
        .map(|r| r.response_body_bytes)
        .sum()
}

/// `prepull pull --output json` of `image` from `host`, not yet run.
fn pull_json(containerd: &Containerd, host: &str, image: &str) -> Prepull {
    Prepull::new("pull")
        .containerd(containerd)
        .plain_http(host)
        .args(["--output", "json", image])
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_the_next_run_fetches_only_the_missing_bytes() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "resume/app",
        "v1",
        &ImageSpec::new(&[12 * MIB]).gzip_level(0),
    )
    .await;
    let layer = image.layers[0].clone();
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let reference = format!("{host}/resume/app:v1");

    // A slow link, so the process can be killed in the middle of the layer.
    let slow = layer.digest.clone();
    proxy.set_hook(move |req| {
        if req.path.ends_with(&slow) {
            Action::Shape(Shape {
                bytes_per_sec: Some(4 * MIB as u64),
                cut_after: None,
            })
        } else {
            Action::Forward
        }
    });
    let mut child = pull_json(&containerd, &host, &reference)
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prepull");
    let deadline = Deadline::after(Duration::from_secs(20));
    loop {
        if ingest_offset(&containerd, &layer.digest)
            .await
            .is_some_and(|o| o >= 3 * MIB as u64)
        {
            break;
        }
        assert!(
            !deadline.expired(),
            "the layer's ingest never reached 3 MiB"
        );
        deadline.tick().await;
    }
    child.start_kill().expect("kill -9 prepull");
    child.wait().await.expect("reap prepull");

    let left = ingest_offset(&containerd, &layer.digest)
        .await
        .expect("the ingest survives the kill");
    assert!(
        left > 0 && left < layer.size,
        "offset {left} of {}",
        layer.size
    );
    proxy.clear_hook();
    proxy.clear();

    let out = pull_json(&containerd, &host, &reference).success().await;
    assert_eq!(
        layer_bytes(&proxy, &layer.digest),
        layer.size - left,
        "only the bytes after the ingest's offset are fetched again"
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON result");
    assert_eq!(
        result["bytes_fetched"],
        proxy.blob_bytes(),
        "prepull counts what crossed the wire"
    );

    // containerd verified the whole blob at commit: it is there, complete, and CRI sees it.
    containerd.assert_image_complete(&reference);
    assert!(
        ingest_offset(&containerd, &layer.digest).await.is_none(),
        "no ingest left"
    );
    support::cri::wait_for_image(containerd.socket(), &reference, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_cut_mid_layer_resumes_in_the_same_run() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "cut/app",
        "v1",
        &ImageSpec::new(&[6 * MIB, MIB]).gzip_level(0),
    )
    .await;
    let layer = image.layers[0].clone();
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let reference = format!("{host}/cut/app:v1");

    let cut_once = Arc::new(AtomicBool::new(false));
    let (target, flag) = (layer.digest.clone(), cut_once.clone());
    proxy.set_hook(move |req| {
        if req.path.ends_with(&target) && !flag.swap(true, Ordering::SeqCst) {
            Action::Shape(Shape {
                bytes_per_sec: None,
                cut_after: Some(2_500_000),
            })
        } else {
            Action::Forward
        }
    });
    pull_json(&containerd, &host, &reference).success().await;
    assert!(cut_once.load(Ordering::SeqCst), "the cut happened");
    let gets = proxy
        .records()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&layer.digest))
        .count();
    assert_eq!(gets, 2, "one cut request, one resumed request");
    // Everything prepull received before the cut is in containerd's ingest before it retries:
    // the resumed request starts exactly at the cut, and no byte is fetched twice.
    let resumed_at: Vec<u64> = proxy
        .records()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&layer.digest))
        .map(|r| r.range_start())
        .collect();
    assert_eq!(resumed_at, [0, 2_500_000]);
    assert_eq!(
        layer_bytes(&proxy, &layer.digest),
        layer.size,
        "the bytes before the cut are kept, none fetched twice"
    );
    containerd.assert_image_complete(&reference);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_containerd_restart_mid_layer_does_not_restart_the_download() {
    let (mut containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "crash/app",
        "v1",
        &ImageSpec::new(&[32 * MIB]).gzip_level(0),
    )
    .await;
    let layer = image.layers[0].clone();
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let reference = format!("{host}/crash/app:v1");
    let slow = layer.digest.clone();
    proxy.set_hook(move |req| {
        if req.path.ends_with(&slow) {
            Action::Shape(Shape {
                bytes_per_sec: Some(8 * MIB as u64),
                cut_after: None,
            })
        } else {
            Action::Forward
        }
    });
    let child = pull_json(&containerd, &host, &reference)
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prepull");
    let deadline = Deadline::after(Duration::from_secs(30));
    loop {
        if ingest_offset(&containerd, &layer.digest)
            .await
            .is_some_and(|o| o >= 16 * MIB as u64)
        {
            break;
        }
        assert!(
            !deadline.expired(),
            "the layer's ingest never reached 16 MiB"
        );
        deadline.tick().await;
    }
    containerd.restart().await;

    let out = child.wait_with_output().await.expect("prepull finishes");
    assert!(
        out.status.success(),
        "prepull survives the restart ({:?}): {}",
        out.status,
        text(&out)
    );
    let fetched = layer_bytes(&proxy, &layer.digest);
    // What prepull had queued but containerd had not written (at most a few 1 MiB messages)
    // is fetched again; starting over would cost at least 16 MiB more.
    assert!(
        fetched < layer.size + 8 * MIB as u64,
        "resumed from containerd's ingest after its restart: {fetched} bytes for a {}-byte layer",
        layer.size
    );
    containerd.assert_image_complete(&reference);
    support::cri::wait_for_image(containerd.socket(), &reference, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_cut_at_random_offsets_resume_exactly_where_they_broke() {
    // PREPULL_TEST_SEED=<seed> replays a run: layer sizes and cut offsets come from it.
    let seed: u64 = std::env::var("PREPULL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = SmallRng::seed_from_u64(seed);
    let sizes: Vec<usize> = (0..4).map(|_| rng.random_range(MIB..=8 * MIB)).collect();
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let image = push_image(
        &registry.host(),
        "cuts/app",
        "v1",
        &ImageSpec::new(&sizes).gzip_level(0),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let reference = format!("{host}/cuts/app:v1");

    // Every layer is cut one to three times, at increasing offsets strictly inside the blob;
    // each GET (from the start, or resumed with a Range) is cut at the next offset past where it
    // starts. The config is left alone: prepull keeps it in memory and fetches it whole.
    let plan: HashMap<String, Vec<u64>> = image
        .layers
        .iter()
        .map(|layer| {
            let mut cuts: Vec<u64> = (0..rng.random_range(1..=3))
                .map(|_| rng.random_range(1..layer.size))
                .collect();
            cuts.sort_unstable();
            cuts.dedup();
            (layer.digest.clone(), cuts)
        })
        .collect();
    let pending = proxy.cut_blobs_at(plan.clone());

    let out = pull_json(&containerd, &host, &reference).output().await;
    let replay = format!(
        "seed {seed} (PREPULL_TEST_SEED={seed} replays it), layers {sizes:?}, cuts {plan:?}"
    );
    assert!(
        out.status.success(),
        "{replay}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        pending.lock().unwrap().values().all(Vec::is_empty),
        "every planned cut happened; left: {:?}; {replay}",
        pending.lock().unwrap()
    );

    // Each layer: one GET per cut plus the one that finished. prepull writes every byte it
    // received into containerd's ingest before it retries, and the retry asks for the bytes
    // after the ingest's offset: each resumed GET starts exactly where the previous one broke.
    let records = proxy.records();
    for layer in &image.layers {
        let gets: Vec<_> = records
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&layer.digest))
            .collect();
        let cuts = &plan[&layer.digest];
        let starts: Vec<u64> = gets.iter().map(|g| g.range_start()).collect();
        let expected: Vec<u64> = std::iter::once(0).chain(cuts.iter().copied()).collect();
        assert_eq!(
            starts, expected,
            "GETs of {} start at 0, then at each cut; {replay}",
            layer.digest
        );
        let ends: Vec<u64> = gets
            .iter()
            .map(|g| g.range_start() + g.response_body_bytes)
            .collect();
        let expected: Vec<u64> = cuts
            .iter()
            .copied()
            .chain(std::iter::once(layer.size))
            .collect();
        assert_eq!(
            ends, expected,
            "GETs of {} end at each cut, then at the end; {replay}",
            layer.digest
        );
    }
    // So not one byte crosses the wire twice: the re-download is zero, and prepull counts it so.
    let blob_bytes: u64 = image.layers.iter().map(|l| l.size).sum::<u64>() + image.config.size;
    assert_eq!(
        proxy.blob_bytes(),
        blob_bytes,
        "blob bytes sent by the proxy vs the image's blob bytes; {replay}"
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON result");
    assert_eq!(result["bytes_fetched"], blob_bytes, "{replay}");

    // containerd holds the image complete, and every blob hashes to its descriptor.
    containerd.assert_image_complete(&reference);
    let store = Store::connect(containerd.socket(), "k8s.io")
        .await
        .expect("connect");
    for blob in image.layers.iter().chain([&image.config, &image.manifest]) {
        let digest: prepull::digest::Digest = blob.digest.parse().expect("a digest");
        let bytes = store
            .read_blob(&digest, blob.size)
            .await
            .unwrap_or_else(|e| panic!("read {} from containerd: {e}; {replay}", blob.digest));
        assert_eq!(bytes.len() as u64, blob.size, "{}; {replay}", blob.digest);
        assert_eq!(
            support::image::sha256_digest(&bytes),
            blob.digest,
            "content in containerd; {replay}"
        );
    }
    for layer in &image.layers {
        assert!(
            ingest_offset(&containerd, &layer.digest).await.is_none(),
            "no ingest left for {}; {replay}",
            layer.digest
        );
    }
}

/// Cuts every GET of `digest` at the next of `cuts` past where it starts.
fn cut_at(proxy: &Proxy, digest: &str, cuts: Vec<u64>) {
    let pending = Arc::new(Mutex::new(cuts));
    let digest = digest.to_string();
    proxy.set_hook(move |req| {
        if !req.path.ends_with(&digest) {
            return Action::Forward;
        }
        let start = req
            .headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        let mut pending = pending.lock().unwrap();
        pending.retain(|c| *c > start);
        match pending.first().copied() {
            Some(cut) => Action::Shape(Shape {
                bytes_per_sec: None,
                cut_after: Some(cut - start),
            }),
            None => Action::Forward,
        }
    });
}

/// A blob is given up on after 5 attempts in a row that got it nowhere, not after 5 attempts:
/// a layer whose every connection breaks, but only after bringing a mebibyte more, completes in
/// one run however many times it breaks; one whose connections break before 64 KiB does not.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_is_given_up_on_only_after_attempts_in_a_row_that_brought_nothing() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let far = push_image(
        &registry.host(),
        "breaks/far",
        "v1",
        &ImageSpec::new(&[10 * MIB]).gzip_level(0),
    )
    .await;
    let near = push_image(
        &registry.host(),
        "breaks/near",
        "v1",
        &ImageSpec::new(&[MIB]).gzip_level(0),
    )
    .await;
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let gets = |digest: &str| {
        proxy
            .records()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(digest))
            .count()
    };

    // Broken 8 times, a mebibyte further each time: 9 GETs, nothing fetched twice.
    let layer = far.layers[0].clone();
    cut_at(
        &proxy,
        &layer.digest,
        (1..=8).map(|m| m * MIB as u64).collect(),
    );
    pull_json(&containerd, &host, &format!("{host}/breaks/far:v1"))
        .success()
        .await;
    assert_eq!(gets(&layer.digest), 9);
    assert_eq!(layer_bytes(&proxy, &layer.digest), layer.size);

    // Broken every 16 KiB: 5 attempts, then the pull fails and says why.
    let layer = near.layers[0].clone();
    cut_at(
        &proxy,
        &layer.digest,
        (1..64).map(|k| k * (16 << 10)).collect(),
    );
    let out = pull_json(&containerd, &host, &format!("{host}/breaks/near:v1"))
        .code(1)
        .await;
    assert_eq!(gets(&layer.digest), 5, "{}", text(&out));
    assert!(
        text(&out).contains(&layer.digest),
        "the failure names the blob: {}",
        text(&out)
    );
}
