//! Interrupted pulls continue where containerd's ingest stands: after `kill -9` of prepull, and
//! after the registry connection breaks mid-layer. Faults come from a proxy in front of the real
//! registry (pacing and cutting the body) and from killing the real process.

mod support;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prepull::store::Store;
use support::process::Deadline;
use support::{push_image, Action, Containerd, ImageSpec, Proxy, Registry, Shape};

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

fn prepull_args(containerd: &Containerd, host: &str, image: &str) -> Vec<String> {
    [
        "pull",
        "--containerd",
        containerd.socket().to_str().unwrap(),
        "--plain-http",
        host,
        "--output",
        "json",
        image,
    ]
    .map(str::to_string)
    .to_vec()
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
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_prepull"))
        .args(prepull_args(&containerd, &host, &reference))
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

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_prepull"))
        .args(prepull_args(&containerd, &host, &reference))
        .output()
        .await
        .expect("run prepull");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_prepull"))
        .args(prepull_args(&containerd, &host, &reference))
        .output()
        .await
        .expect("run prepull");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cut_once.load(Ordering::SeqCst), "the cut happened");
    let gets = proxy
        .records()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&layer.digest))
        .count();
    assert_eq!(gets, 2, "one cut request, one resumed request");
    // What was in flight when the connection broke (socket buffers, at most about one write
    // chunk) is fetched again; everything prepull had received is kept.
    let fetched = layer_bytes(&proxy, &layer.digest);
    assert!(
        fetched >= layer.size && fetched <= layer.size + MIB as u64,
        "the bytes before the cut are kept, none fetched twice: {fetched} for a {}-byte layer",
        layer.size
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
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_prepull"))
        .args(prepull_args(&containerd, &host, &reference))
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
        "prepull survives the restart ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
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
