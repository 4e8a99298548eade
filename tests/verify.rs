//! `prepull verify` and `prepull repair` against a real containerd whose store is damaged the
//! ways disks and people damage it: a flipped byte in a layer, a blob file deleted from disk, a
//! snapshot removed, an image record deleted, an ingest abandoned by a killed pull.

use testbench as support;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use prepull::digest::Digest;
use prepull::store::{Opened, Store, Stored};
use support::damage::flip_byte;
use support::{push_image, text, Containerd, ImageSpec, Prepull, PushedImage, Registry};

const KIB: usize = 1024;

/// `prepull <args[0]> --containerd <socket> <args[1..]>`.
async fn prepull(containerd: &Containerd, args: &[&str]) -> Output {
    Prepull::new(args[0])
        .containerd(containerd)
        .args(&args[1..])
        .output()
        .await
}

fn blob_path(containerd: &Containerd, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    containerd
        .root()
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(hex)
}

fn digest(s: &str) -> Digest {
    s.parse().unwrap()
}

async fn assert_sound(store: &Store, image: &PushedImage) {
    for blob in image.layers.iter().chain([&image.config, &image.manifest]) {
        match store.hash_blob(&digest(&blob.digest)).await.unwrap() {
            Stored::Read { digest: got, size } => {
                assert_eq!((got.to_string(), size), (blob.digest.clone(), blob.size))
            }
            other => panic!("{} is {other:?}", blob.digest),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_every_kind_of_damage_and_repair_mends_it() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let a = push_image(
        &host,
        "team/a",
        "v1",
        &ImageSpec::new(&[64 * KIB, 48 * KIB, 32 * KIB]),
    )
    .await;
    let b = push_image(
        &host,
        "team/b",
        "v1",
        &ImageSpec::new(&[40 * KIB, 24 * KIB]),
    )
    .await;
    let c = push_image(&host, "team/c", "v1", &ImageSpec::new(&[16 * KIB])).await;
    let (ra, rb, rc) = (
        format!("{host}/team/a:v1"),
        format!("{host}/team/b:v1"),
        format!("{host}/team/c:v1"),
    );
    let out = prepull(
        &containerd,
        &[
            "pull",
            "--plain-http",
            &host,
            "--no-node-credentials",
            "--pin",
            &ra,
            &rb,
            &rc,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();

    // A sound store verifies clean.
    let out = prepull(&containerd, &["verify"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!("ok {ra}")) && t.contains("3 images: 0 damaged"),
        "{t}"
    );

    // The damage.
    flip_byte(&blob_path(&containerd, &a.layers[1].digest), 100);
    std::fs::remove_file(blob_path(&containerd, &b.config.digest)).unwrap();
    let b_chain =
        prepull::image::chain_ids(&b.diff_ids.iter().map(|d| digest(d)).collect::<Vec<_>>());
    containerd.ctr_ok(&[
        "-n",
        "k8s.io",
        "snapshots",
        "--snapshotter",
        containerd.snapshotter(),
        "rm",
        &b_chain[1].to_string(),
    ]);
    containerd.ctr_ok(&["-n", "k8s.io", "images", "rm", &c.config.digest]);
    // An ingest a killed pull left behind.
    let lease = store
        .create_lease("test", Duration::from_secs(3600))
        .await
        .unwrap();
    let orphan = Digest::sha256(b"never finished");
    match store
        .open_writer(&lease, "layer-orphan", &orphan, 1 << 20)
        .await
        .unwrap()
    {
        Opened::Writer(mut w) => {
            w.write(&[7u8; 4096]).await.unwrap();
            w.suspend().await.unwrap();
        }
        Opened::Present => panic!("the orphan blob cannot be present"),
    }

    let out = prepull(&containerd, &["verify", "--stale-ingest-age", "0s"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    for expected in [
        format!("damaged {ra}: layer 1 {} is corrupt", a.layers[1].digest),
        format!(
            "damaged {rb}: config {} is listed by containerd but cannot be read",
            b.config.digest
        ),
        format!(
            "records-incomplete {rc}: its image record {} is missing",
            c.config.digest
        ),
        "stale ingest layer-orphan".to_string(),
    ] {
        assert!(t.contains(&expected), "missing {expected:?} in:\n{t}");
    }
    // --quick does not read layers back, so the flipped byte goes unseen; the rest does not.
    let out = prepull(&containerd, &["verify", "--quick", &ra]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Snapshots are checked once the config is back; JSON names each problem.
    let out = prepull(&containerd, &["verify", "--output", "json", &rb]).await;
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["status"], "damaged", "{line}");

    // Repair, with the registry up.
    let out = prepull(
        &containerd,
        &[
            "repair",
            "--plain-http",
            &host,
            "--no-node-credentials",
            "--stale-ingest-age",
            "0s",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!("repaired {ra}"))
            && t.contains(&format!("repaired {rb}"))
            && t.contains(&format!("repaired {rc}"))
            && t.contains("removed ingest layer-orphan"),
        "{t}"
    );
    for image in [&a, &b, &c] {
        assert_sound(&store, image).await;
    }
    assert!(store.ingests().await.unwrap().is_empty());
    for name in [&ra, &rb, &rc] {
        containerd.assert_image_complete(name);
    }
    assert!(store
        .snapshot_exists(containerd.snapshotter(), &b_chain[1].to_string())
        .await
        .unwrap());
    // Pins survive a repair.
    let record = store
        .image(&c.config.digest)
        .await
        .unwrap()
        .expect("the ID record is back");
    assert_eq!(
        store
            .image(&rc)
            .await
            .unwrap()
            .unwrap()
            .labels
            .get("io.cri-containerd.pinned")
            .map(String::as_str),
        Some("pinned")
    );
    assert_eq!(record.target.unwrap().digest.to_string(), c.manifest.digest);
    let out = prepull(&containerd, &["verify", "--stale-ingest-age", "0s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // An image whose records are all gone is restored by name.
    for name in [
        rc.clone(),
        format!("{host}/team/c@{}", c.manifest.digest),
        c.config.digest.clone(),
    ] {
        containerd.ctr_ok(&["-n", "k8s.io", "images", "rm", &name]);
    }
    let out = prepull(&containerd, &["verify", &rc]).await;
    assert!(
        text(&out).contains(&format!("missing {rc}")),
        "{}",
        text(&out)
    );
    let out = prepull(
        &containerd,
        &[
            "repair",
            "--plain-http",
            &host,
            "--no-node-credentials",
            &rc,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    containerd.assert_image_complete(&rc);

    // With the registry gone, damage that needs a download cannot be mended, and says why.
    flip_byte(&blob_path(&containerd, &a.layers[0].digest), 10);
    drop(registry);
    let out = prepull(
        &containerd,
        &[
            "repair",
            "--plain-http",
            &host,
            "--no-node-credentials",
            &ra,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("could not repair {ra}")),
        "{}",
        text(&out)
    );
}

/// A corrupt manifest is what roots an image's layers and snapshots for containerd's garbage
/// collector. Removing it must not take the rest of the image with it while the repair runs:
/// only the manifest is downloaded again. A repair that cannot reach the registry fails saying
/// so, and leaves no lease behind either way.
#[tokio::test(flavor = "multi_thread")]
async fn repair_keeps_the_rest_of_an_image_while_its_manifest_is_replaced() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let proxy = support::Proxy::start(&registry.host()).await;
    let host = proxy.host();
    let a = push_image(
        &registry.host(),
        "team/a",
        "v1",
        &ImageSpec::new(&[64 * KIB, 32 * KIB]),
    )
    .await;
    let ra = format!("{host}/team/a:v1");
    let out = prepull(
        &containerd,
        &["pull", "--plain-http", &host, "--no-node-credentials", &ra],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    flip_byte(&blob_path(&containerd, &a.manifest.digest), 5);

    // Registry unreachable: the repair fails, and says so.
    proxy.set_hook(|_| support::Action::Respond {
        status: 503,
        body: b"down".to_vec(),
    });
    let out = prepull(
        &containerd,
        &[
            "repair",
            "--plain-http",
            &host,
            "--no-node-credentials",
            &ra,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("could not repair {ra}")),
        "{}",
        text(&out)
    );
    assert_eq!(repair_leases(&containerd), "", "no lease left behind");

    // Registry back: mended.
    proxy.clear_hook();
    let repair_args = [
        "repair",
        "--plain-http",
        &host,
        "--no-node-credentials",
        &ra,
    ];
    let repair = || prepull(&containerd, &repair_args);
    let out = repair().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_sound(&store, &a).await;

    // The same damage with the registry up: containerd collects garbage during the repair,
    // and the layers and snapshots survive it; only the manifest is fetched again.
    flip_byte(&blob_path(&containerd, &a.manifest.digest), 5);
    proxy.clear();
    let out = repair().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        proxy.blob_bytes(),
        0,
        "no layer downloaded again: {:?}",
        proxy.records()
    );
    let chain =
        prepull::image::chain_ids(&a.diff_ids.iter().map(|d| digest(d)).collect::<Vec<_>>());
    assert!(store
        .snapshot_exists(containerd.snapshotter(), &chain[1].to_string())
        .await
        .unwrap());
    assert_sound(&store, &a).await;
    assert_eq!(repair_leases(&containerd), "", "no lease left behind");
    let out = prepull(&containerd, &["verify", &ra]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// An index pulled by tag and one of its platform manifests pulled by digest share the image ID
/// record; whichever was pulled last owns it, and neither is reported as missing it.
#[tokio::test(flavor = "multi_thread")]
async fn an_id_record_shared_by_an_index_and_its_manifest_is_not_missing() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let index = support::push_index(
        &host,
        "team/multi",
        "v1",
        support::MediaFamily::Oci,
        &[ImageSpec::new(&[16 * KIB]).platform(support::Platform::linux_amd64())],
        false,
    )
    .await;
    let by_tag = format!("{host}/team/multi:v1");
    let by_manifest = format!("{host}/team/multi@{}", index.images[0].manifest.digest);
    for image in [&by_tag, &by_manifest] {
        let out = prepull(
            &containerd,
            &[
                "pull",
                "--plain-http",
                &host,
                "--no-node-credentials",
                image,
            ],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = prepull(&containerd, &["verify"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("2 images: 0 damaged"), "{}", text(&out));
}

/// An ingest's line gives the blob's expected size. containerd records a total only when the
/// writer that opened the ingest gave one (a writer may stream a blob of unknown length); then
/// the line says the size is unknown rather than "of 0 B".
#[tokio::test(flavor = "multi_thread")]
async fn stale_ingests_give_the_expected_size_or_say_it_is_unknown() {
    let containerd = Containerd::start().await;
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    let lease = store
        .create_lease("test", Duration::from_secs(3600))
        .await
        .unwrap();
    for (reference, payload, total) in [
        ("layer-sized", &b"sized"[..], 4u64 << 20),
        ("layer-unsized", &b"unsized"[..], 0),
    ] {
        match store
            .open_writer(&lease, reference, &Digest::sha256(payload), total)
            .await
            .unwrap()
        {
            Opened::Writer(mut w) => {
                w.write(&[7u8; 3 * 512 * KIB]).await.unwrap();
                w.suspend().await.unwrap();
            }
            Opened::Present => panic!("{reference} cannot be present"),
        }
    }

    let out = prepull(&containerd, &["verify", "--stale-ingest-age", "0s"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("stale ingest layer-sized: 1.5 MiB of 4.0 MiB written"),
        "{t}"
    );
    assert!(
        t.contains("stale ingest layer-unsized: 1.5 MiB written, size unknown"),
        "{t}"
    );
    assert!(!t.contains("of 0 B"), "{t}");
    assert!(t.contains("2 stale ingests"), "{t}");

    let out = prepull(
        &containerd,
        &["verify", "--stale-ingest-age", "0s", "--output", "json"],
    )
    .await;
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let unsized_line = lines
        .iter()
        .find(|l| l["ingest"] == "layer-unsized")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(unsized_line["offset"], 3 * 512 * KIB);
    assert!(unsized_line["total"].is_null(), "{unsized_line}");
}

fn repair_leases(containerd: &Containerd) -> String {
    containerd
        .ctr_ok(&["-n", "k8s.io", "leases", "ls"])
        .lines()
        .filter(|l| l.contains("prepull-repair"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// containerd keeps one file per blob for all namespaces. A corrupt blob that another namespace
/// (another client's `ctr -n default pull`, nerdctl, moby) also holds cannot be mended from
/// `k8s.io`: its file stays until every namespace lets go of it. Repair never removes another
/// namespace's content; it names the namespace and image holding the blob and the command that
/// lets go of it there, and leaves no lease behind, whether it fails or succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn repair_names_the_other_namespace_holding_a_corrupt_blob_and_leaves_no_lease() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let a = push_image(
        &host,
        "team/shared",
        "v1",
        &ImageSpec::new(&[64 * KIB, 32 * KIB]),
    )
    .await;
    let ra = format!("{host}/team/shared:v1");
    let out = prepull(
        &containerd,
        &["pull", "--plain-http", &host, "--no-node-credentials", &ra],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    // ctr unpacks into containerd's default snapshotter, as a client outside CRI would.
    containerd.ctr_ok(&["-n", "default", "images", "pull", "--plain-http", &ra]);
    let bad = &a.layers[1].digest;
    flip_byte(&blob_path(&containerd, bad), 100);

    let repair_args = ["repair", "--plain-http", &host, "--no-node-credentials"];
    let repair = || prepull(&containerd, &repair_args);
    let out = repair().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!("could not repair {ra}"))
            && t.contains(bad.as_str())
            && t.contains("namespace default")
            && t.contains(&format!("image {ra}"))
            && t.contains(&format!("ctr -n default content rm {bad}")),
        "{t}"
    );
    assert_eq!(repair_leases(&containerd), "", "no lease left behind");
    // The other namespace's content was not touched.
    let default = Store::connect(containerd.socket(), "default")
        .await
        .unwrap();
    assert!(default.info(&digest(bad)).await.unwrap().is_some());

    // Doing what it says mends the image.
    containerd.ctr_ok(&["-n", "default", "content", "rm", bad]);
    let out = repair().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("repaired {ra}")),
        "{}",
        text(&out)
    );
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    assert_sound(&store, &a).await;
    assert_eq!(repair_leases(&containerd), "", "no lease left behind");
}

/// The image's own command, found in its unpacked layers: whether a pod can start from it.
/// `verify` (without `--deep`) says when it cannot: the command is missing, the binary is built
/// for another architecture, or it was emptied on disk (as after a power loss).
#[tokio::test(flavor = "multi_thread")]
async fn verify_says_which_images_cannot_start_and_why() {
    use support::busybox::{busybox_layer, push_runnable, push_runnable_for};
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let layer = tokio::task::spawn_blocking(busybox_layer).await.unwrap();
    let good = push_runnable(
        &host,
        "start/good",
        "1",
        &[&layer],
        &["/bin/sh", "-c", "true"],
    )
    .await;
    push_runnable(&host, "start/missing", "1", &[&layer], &["/bin/app"]).await;
    let mut other = support::busybox::node_platform();
    other.architecture = if other.architecture == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
    .into();
    other.variant = None;
    push_runnable_for(&host, "start/foreign", "1", &[&layer], &["/bin/sh"], other).await;
    let names = ["good", "missing", "foreign"].map(|n| format!("{host}/start/{n}:1"));
    let mut pull = vec!["pull", "--plain-http", &host];
    pull.extend(names.iter().map(String::as_str));
    let out = prepull(&containerd, &pull).await;
    assert!(out.status.success(), "{}", text(&out));

    let verdicts = |out: &Output| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let out = prepull(&containerd, &["verify", "--output", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let found = verdicts(&out);
    let of = |name: &str| {
        found
            .iter()
            .find(|v| v["names"][0] == name)
            .unwrap_or_else(|| panic!("no verdict for {name}: {found:?}"))
            .clone()
    };
    let ok = of(&names[0]);
    assert_eq!(
        (ok["status"].as_str(), ok["start"]["path"].as_str()),
        (Some("ok"), Some("/bin/sh")),
        "{ok}"
    );
    let missing = of(&names[1]);
    assert_eq!(missing["status"], "cannot-start", "{missing}");
    assert_eq!(missing["start"]["kind"], "not-found", "{missing}");
    assert!(
        missing["start"]["why"]
            .as_str()
            .unwrap()
            .contains("/bin/app"),
        "{missing}"
    );
    let foreign = of(&names[2]);
    assert_eq!(foreign["start"]["kind"], "wrong-architecture", "{foreign}");

    // Power loss: the binary the command runs is emptied inside the unpacked layer.
    let dir = support::snapshots::top_layer_dir(&containerd, &good.diff_ids).await;
    std::fs::File::create(dir.join("bin/busybox")).unwrap();
    let out = prepull(&containerd, &["verify", "--output", "json", &names[0]]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let emptied = &verdicts(&out)[0];
    assert_eq!(emptied["status"], "cannot-start", "{emptied}");
    assert_eq!(emptied["start"]["kind"], "empty", "{emptied}");
    let out = prepull(&containerd, &["verify", &names[0]]).await;
    assert!(
        text(&out).contains("cannot-start") && text(&out).contains("/bin/sh is empty"),
        "{}",
        text(&out)
    );
}

/// `verify --deep` on a terminal shows the layer bytes read as it goes; piped, only results.
#[tokio::test(flavor = "multi_thread")]
async fn a_deep_check_on_a_terminal_shows_its_progress() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let layer = tokio::task::spawn_blocking(support::busybox::busybox_layer)
        .await
        .unwrap();
    support::busybox::push_runnable(&host, "deep/app", "1", &[&layer], &["/bin/sh"]).await;
    let image = format!("{host}/deep/app:1");
    let out = prepull(&containerd, &["pull", "--plain-http", &host, &image]).await;
    assert!(out.status.success(), "{}", text(&out));
    let socket = containerd.socket().display().to_string();
    let (code, screen) =
        support::run::on_terminal(&["verify", "--deep", "--all", "--containerd", &socket]).await;
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("deep check: layers read") && screen.contains(&format!("ok {image} (")),
        "{screen:?}"
    );
    let out = prepull(&containerd, &["verify", "--deep", "--all"]).await;
    assert!(!text(&out).contains("layers read"), "{}", text(&out));
}

/// `repair` on a terminal shows the pull that mends an image as it goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_repair_on_a_terminal_shows_the_pull_that_mends() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let image = push_image(&host, "team/app", "v1", &ImageSpec::new(&[256 * KIB])).await;
    let reference = format!("{host}/team/app:v1");
    let out = prepull(&containerd, &["pull", "--plain-http", &host, &reference]).await;
    assert!(out.status.success(), "{}", text(&out));
    flip_byte(&blob_path(&containerd, &image.layers[0].digest), 100);
    let socket = containerd.socket().display().to_string();
    let (code, screen) =
        support::run::on_terminal(&["repair", "--containerd", &socket, "--plain-http", &host])
            .await;
    assert_eq!(code, Some(0), "{screen}");
    let line = screen
        .split(['\n', '\r'])
        .rfind(|l| l.contains(&reference) && l.contains("done"))
        .unwrap_or_else(|| panic!("no progress line for {reference}: {screen:?}"));
    assert!(line.contains("KiB/"), "{line:?}");
    assert!(screen.contains("repaired"), "{screen:?}");
}

/// `--help` shows each subcommand's whole description, not only its one-line summary.
#[tokio::test]
async fn help_shows_the_whole_description() {
    for (command, says) in [
        ("verify", "cannot-start"),
        ("doctor", "kubelet's order"),
        ("pull", "Credentials are tried in this order"),
    ] {
        let out = Prepull::new(command).arg("--help").success().await;
        let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
        assert!(help.contains(says), "prepull {command} --help: {help}");
    }
}
