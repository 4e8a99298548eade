//! How pulled images live in containerd afterwards: garbage collection keeps them, tags that
//! move are followed, pinning is recorded, and CRI lists every name.

use testbench as support;

use std::process::Output;
use std::time::Duration;

use prepull::digest::Digest;
use prepull::store::Store;
use support::{push_image, Containerd, ImageSpec, Prepull, Registry};

const CRI_WAIT: Duration = Duration::from_secs(20);
const KIB: usize = 1024;

async fn pull(containerd: &Containerd, host: &str, extra: &[&str], image: &str) -> Output {
    Prepull::new("pull")
        .containerd(containerd)
        .plain_http(host)
        .args(extra)
        .arg(image)
        .success()
        .await
}

fn digest(s: &str) -> Digest {
    s.parse().expect("digest")
}

/// Runs containerd's garbage collector to completion: deleting a lease with `--sync` does.
fn collect_garbage(containerd: &Containerd) {
    containerd.ctr_ok(&["-n", "k8s.io", "leases", "create", "--id", "gc-trigger"]);
    containerd.ctr_ok(&["-n", "k8s.io", "leases", "delete", "--sync", "gc-trigger"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_collection_keeps_every_blob_and_snapshot_of_a_pulled_image() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let kept = push_image(
        &host,
        "gc/kept",
        "v1",
        &ImageSpec::new(&[40 * KIB, 20 * KIB]),
    )
    .await;
    let dropped = push_image(&host, "gc/dropped", "v1", &ImageSpec::new(&[30 * KIB])).await;
    pull(&containerd, &host, &[], &format!("{host}/gc/kept:v1")).await;
    pull(&containerd, &host, &[], &format!("{host}/gc/dropped:v1")).await;

    // The control: without image records, an image's content is collectable, so GC really ran.
    for name in [
        format!("{host}/gc/dropped:v1"),
        format!("{host}/gc/dropped@{}", dropped.manifest.digest),
        dropped.config.digest.clone(),
    ] {
        containerd.ctr_ok(&["-n", "k8s.io", "images", "rm", &name]);
    }
    collect_garbage(&containerd);

    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    assert!(
        store
            .info(&digest(&dropped.layers[0].digest))
            .await
            .unwrap()
            .is_none(),
        "control: an unreferenced layer is collected"
    );
    let blobs = kept.layers.iter().chain([&kept.config, &kept.manifest]);
    for blob in blobs {
        assert!(
            store.info(&digest(&blob.digest)).await.unwrap().is_some(),
            "blob {} survives GC",
            blob.digest
        );
    }
    let diff_ids: Vec<Digest> = kept.diff_ids.iter().map(|d| digest(d)).collect();
    for chain in prepull::image::chain_ids(&diff_ids) {
        assert!(
            store
                .snapshot_exists(containerd.snapshotter(), &chain.to_string())
                .await
                .unwrap(),
            "snapshot {chain} survives GC"
        );
    }
    containerd.assert_image_complete(&format!("{host}/gc/kept:v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_that_moves_is_followed_and_the_old_digest_stays_addressable() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let reference = format!("{host}/drift/app:stable");
    let old = push_image(&host, "drift/app", "stable", &ImageSpec::new(&[16 * KIB])).await;
    pull(&containerd, &host, &[], &reference).await;
    support::cri::wait_for_image(containerd.socket(), &reference, CRI_WAIT).await;

    let new = push_image(&host, "drift/app", "stable", &ImageSpec::new(&[16 * KIB])).await;
    assert_ne!(old.manifest.digest, new.manifest.digest);
    pull(&containerd, &host, &[], &reference).await;

    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    let record = store.image(&reference).await.unwrap().expect("tag record");
    assert_eq!(
        record.target.unwrap().digest.to_string(),
        new.manifest.digest,
        "tag record updated in place"
    );
    let old_ref = format!("{host}/drift/app@{}", old.manifest.digest);
    assert!(
        store.image(&old_ref).await.unwrap().is_some(),
        "old digest reference kept, like CRI"
    );

    // CRI follows the tag to the new image.
    let deadline = std::time::Instant::now() + CRI_WAIT;
    loop {
        let status = support::cri::image_status(containerd.socket(), &reference)
            .await
            .expect("present");
        if status.id == new.config.digest {
            assert!(status.repo_tags.contains(&reference));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CRI still reports {} for {reference}",
            status.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old_status = support::cri::wait_for_image(containerd.socket(), &old_ref, CRI_WAIT).await;
    assert_eq!(old_status.id, old.config.digest);
    assert!(
        !old_status.repo_tags.contains(&reference),
        "the tag left the old image"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_images_carry_the_cri_pin_label_and_cri_lists_every_name() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let image = push_image(&host, "pin/app", "v1", &ImageSpec::new(&[8 * KIB])).await;
    let plain = push_image(&host, "pin/other", "v1", &ImageSpec::new(&[8 * KIB])).await;
    let reference = format!("{host}/pin/app:v1");
    pull(&containerd, &host, &["--pin"], &reference).await;
    pull(&containerd, &host, &[], &format!("{host}/pin/other:v1")).await;

    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    let digest_ref = format!("{host}/pin/app@{}", image.manifest.digest);
    for name in [
        reference.as_str(),
        digest_ref.as_str(),
        image.config.digest.as_str(),
    ] {
        let record = store.image(name).await.unwrap().expect("record");
        assert_eq!(
            record
                .labels
                .get("io.cri-containerd.pinned")
                .map(String::as_str),
            Some("pinned"),
            "{name}"
        );
    }
    let other = store
        .image(&format!("{host}/pin/other:v1"))
        .await
        .unwrap()
        .expect("record");
    assert!(!other.labels.contains_key("io.cri-containerd.pinned"));

    support::cri::wait_for_image(containerd.socket(), &reference, CRI_WAIT).await;
    support::cri::wait_for_image(
        containerd.socket(),
        &format!("{host}/pin/other:v1"),
        CRI_WAIT,
    )
    .await;
    let listed = support::cri::list_images(containerd.socket()).await;
    let app = listed
        .iter()
        .find(|i| i.id == image.config.digest)
        .expect("ListImages has the image");
    assert_eq!(app.repo_tags, vec![reference.clone()]);
    assert_eq!(app.repo_digests, vec![digest_ref.clone()]);
    assert!(listed.iter().any(|i| i.id == plain.config.digest));
    // containerd reports the pin through CRI from 1.6.22 / 1.7.3 (Debian's 1.6.20 predates it).
    if containerd.series() >= support::containerd::Series::V1_7 {
        assert!(app.pinned, "CRI reports the image pinned");
    }

    // Unpinning removes the label from every record; the image stays.
    let out = Prepull::new("unpin")
        .containerd(&containerd)
        .arg(&reference)
        .success()
        .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 records"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for name in [
        reference.as_str(),
        digest_ref.as_str(),
        image.config.digest.as_str(),
    ] {
        let record = store.image(name).await.unwrap().expect("record stays");
        assert!(
            !record.labels.contains_key("io.cri-containerd.pinned"),
            "{name}"
        );
    }
    if containerd.series() >= support::containerd::Series::V1_7 {
        let deadline = std::time::Instant::now() + CRI_WAIT;
        while support::cri::image_status(containerd.socket(), &reference)
            .await
            .expect("present")
            .pinned
        {
            assert!(
                std::time::Instant::now() < deadline,
                "CRI still reports {reference} pinned"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let out = Prepull::new("unpin")
        .containerd(&containerd)
        .arg(format!("{host}/pin/never:v1"))
        .output()
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image"));
}
