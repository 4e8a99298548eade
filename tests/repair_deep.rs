//! `prepull repair --deep` against a real containerd, with the registry stopped: snapshots
//! damaged the ways power cuts and people damage them (a file zeroed, a binary truncated, a
//! file deleted, a whiteout removed, a snapshot directory emptied or deleted) are mended from
//! the local blobs; a second check is clean; pods started through CRI read the right content.
//! An image sharing lower layers with a damaged one, or all of them, is unpacked again with it. A damaged image a
//! running container uses is left alone, and the container named, until its pod is gone.
//!
//! One containerd, one registry and one pod sandbox image serve every case: each image has its
//! own layers (and so its own snapshots). Snapshot directories are found as the product finds
//! them: through read-only views.

use testbench as support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use prepull::digest::Digest;
use prepull::store::Store;
use support::busybox::{busybox_layer, push_runnable, Entry, FileLayer};
use support::damage::empty_dir;
use support::pod::{ContainerSpec, Pod};
use support::process::Deadline;
use support::snapshots::{layer_dirs, Dirs};
use support::{text, Containerd, ContainerdOptions, Prepull, Registry};

/// From StartContainer until the script has printed its lines and exited.
const RUN_WAIT: Duration = Duration::from_secs(60);
/// The CRI log copier may finish just after the exit is reported.
const LOG_WAIT: Duration = Duration::from_secs(20);

async fn prepull(containerd: &Containerd, args: &[&str]) -> Output {
    Prepull::new(args[0])
        .containerd(containerd)
        .args(&args[1..])
        .output()
        .await
}

/// Three layers: busybox with a marker; a secret, a message and a directory; a layer deleting
/// the secret (a whiteout), replacing the message and making the directory opaque.
fn layers(case: &str) -> Vec<FileLayer> {
    let base = {
        // The busybox layer's entries plus a marker.
        let mut entries = support::busybox::busybox_entries();
        entries.push(Entry::file("etc/case", 0o644, case.as_bytes()));
        FileLayer::build(&entries)
    };
    let motd = format!("welcome to {case}\n");
    let middle = FileLayer::build(&[
        Entry::dir("etc"),
        Entry::file(
            "etc/secret",
            0o644,
            format!("secret of {case}\n").as_bytes(),
        ),
        Entry::file("etc/motd", 0o644, b"first message\n"),
        Entry::dir("var"),
        Entry::file("var/old", 0o644, b"hidden by the next layer\n"),
    ]);
    let top = FileLayer::build(&[
        Entry::file("etc/.wh.secret", 0o644, b""),
        Entry::file("etc/motd", 0o644, motd.as_bytes()),
        Entry::dir("var"),
        Entry::file("var/.wh..wh..opq", 0o644, b""),
        Entry::file("var/new", 0o644, b"only this\n"),
    ]);
    vec![base, middle, top]
}

/// A damage and the layer the repair must start from.
struct Case {
    name: &'static str,
    damage: fn(&Dirs),
    layer: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "zeroed",
        damage: |d| {
            let p = d.of(2).join("etc/motd");
            let len = std::fs::metadata(&p).unwrap().len() as usize;
            std::fs::write(p, vec![0u8; len]).unwrap();
        },
        layer: 2,
    },
    Case {
        name: "truncated",
        damage: |d| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(d.of(0).join("bin/busybox"))
                .unwrap();
            f.set_len(4096).unwrap();
        },
        layer: 0,
    },
    Case {
        name: "deleted",
        damage: |d| std::fs::remove_file(d.of(2).join("etc/motd")).unwrap(),
        layer: 2,
    },
    Case {
        name: "whiteout",
        damage: |d| {
            let p = d.of(2).join("etc/secret");
            if d.cumulative {
                std::fs::write(p, b"secret again").unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        },
        layer: 2,
    },
    Case {
        name: "dir-emptied",
        damage: |d| empty_dir(&d.per_layer[2]),
        layer: 2,
    },
    Case {
        name: "dir-deleted",
        damage: |d| std::fs::remove_dir_all(&d.per_layer[1]).unwrap(),
        layer: 1,
    },
];

/// What a case image's container prints, sound.
fn expected_lines(case: &str, busybox_sha: &str) -> Vec<String> {
    vec![
        format!("welcome to {case}"),
        "secret-absent".into(),
        "new".into(),
        format!("{busybox_sha}  /bin/busybox"),
        case.into(),
        "done-ok".into(),
    ]
}

const SCRIPT: &str = "cat /etc/motd; if [ -e /etc/secret ]; then echo secret-present; \
    else echo secret-absent; fi; ls /var; sha256sum /bin/busybox; cat /etc/case; echo; \
    echo done-ok";

/// Runs `script` in a container of `image` in `pod`; returns its stdout lines and exit code.
async fn run_in(
    pod: &mut Pod,
    containerd: &Containerd,
    name: &str,
    image: &str,
    script: &str,
) -> (Vec<String>, i32) {
    let mut spec = ContainerSpec::new(name, image);
    spec.args = vec!["/bin/sh".into(), "-c".into(), script.into()];
    let id = pod.create_with(&spec).await.unwrap_or_else(|e| {
        panic!(
            "CreateContainer({image}) failed: {e}\n--- containerd log ---\n{}",
            containerd.log_tail(30)
        )
    });
    pod.start(&id).await.unwrap_or_else(|e| {
        panic!(
            "StartContainer({image}) failed: {e}\n--- containerd log ---\n{}",
            containerd.log_tail(30)
        )
    });
    let status = pod.wait_exited(&id, name, RUN_WAIT, containerd).await;
    let deadline = Deadline::after(LOG_WAIT);
    loop {
        let lines = stdout_lines(&pod.log(name));
        if lines.iter().any(|l| l == "done-ok") || status.exit_code != 0 {
            return (lines, status.exit_code);
        }
        assert!(
            !deadline.expired(),
            "{image}: no done-ok in its log: {lines:?}"
        );
        deadline.tick().await;
    }
}

/// The stdout lines of a CRI log (`<time> stdout F <text>`).
fn stdout_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (_, stream, _, text) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
            (stream == "stdout").then(|| text.unwrap_or("").to_string())
        })
        .collect()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn line_for<'a>(lines: &'a [serde_json::Value], image: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["check"] == "deep" && l["image"] == image)
        .unwrap_or_else(|| panic!("no deep line for {image} in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_deep_mends_damaged_snapshots_offline_and_spares_those_in_use() {
    let mut registry = Registry::start().await;
    let host = registry.host();
    let pause_layer = tokio::task::spawn_blocking(busybox_layer).await.unwrap();
    push_runnable(
        &host,
        "repair/pause",
        "1",
        &[&pause_layer],
        &["/bin/busybox", "sleep", "3600"],
    )
    .await;
    let pause = format!("{host}/repair/pause:1");
    let containerd = Containerd::start_with(ContainerdOptions {
        sandbox_image: Some(pause.clone()),
        ..Default::default()
    })
    .await;
    let snapshotter = containerd.snapshotter().to_string();

    // The cases, an image in use, a sibling sharing the two lower layers of dir-deleted, and a
    // twin with the very layers of truncated (another config).
    let names: Vec<&str> = CASES
        .iter()
        .map(|c| c.name)
        .chain(std::iter::once("in-use"))
        .collect();
    let mut images = Vec::new();
    let mut sibling_layers = Vec::new();
    let mut twin_layers = Vec::new();
    for name in &names {
        let built = tokio::task::spawn_blocking({
            let name = name.to_string();
            move || layers(&name)
        })
        .await
        .unwrap();
        let refs: Vec<&FileLayer> = built.iter().collect();
        let image = push_runnable(&host, &format!("repair/{name}"), "1", &refs, &["/bin/sh"]).await;
        if *name == "dir-deleted" {
            sibling_layers = vec![
                built[0].clone(),
                built[1].clone(),
                FileLayer::build(&[
                    Entry::dir("etc"),
                    Entry::file("etc/sibling", 0o644, b"sibling\n"),
                ]),
            ];
        }
        if *name == "truncated" {
            twin_layers = built.clone();
        }
        images.push((format!("{host}/repair/{name}:1"), image));
    }
    let refs: Vec<&FileLayer> = twin_layers.iter().collect();
    push_runnable(&host, "repair/twin", "1", &refs, &["/bin/sh"]).await;
    let twin = format!("{host}/repair/twin:1");
    let refs: Vec<&FileLayer> = sibling_layers.iter().collect();
    let sibling_image = push_runnable(&host, "repair/sibling", "1", &refs, &["/bin/sh"]).await;
    let sibling = format!("{host}/repair/sibling:1");

    let mut pull = vec!["pull", "--plain-http", &host, "--no-node-credentials"];
    pull.extend(images.iter().map(|(r, _)| r.as_str()));
    pull.push(&sibling);
    pull.push(&twin);
    let out = prepull(&containerd, &pull).await;
    assert!(out.status.success(), "{}", text(&out));
    Prepull::new("pull")
        .containerd(&containerd)
        .plain_http(&host)
        .args(["--pin", &pause])
        .success()
        .await;
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    let busybox_sha = Digest::sha256(&std::fs::read(support::busybox::BUSYBOX).unwrap())
        .to_string()
        .trim_start_matches("sha256:")
        .to_string();

    // A pod runs on the in-use image while it is damaged.
    let logs = tempfile::tempdir().unwrap();
    let (in_use, in_use_image) = images.last().unwrap().clone();
    let mut busy_pod = Pod::run(&containerd, "busy", logs.path()).await;
    let mut spec = ContainerSpec::new("sleeper", &in_use);
    spec.args = vec!["/bin/busybox".into(), "sleep".into(), "3600".into()];
    let sleeper = busy_pod.create_with(&spec).await.unwrap();
    busy_pod.start(&sleeper).await.unwrap();

    for (case, (_, image)) in CASES.iter().zip(&images) {
        (case.damage)(&layer_dirs(&store, &snapshotter, &image.diff_ids).await);
    }
    let in_use_dirs = layer_dirs(&store, &snapshotter, &in_use_image.diff_ids).await;
    let zeroed_motd = in_use_dirs.of(2).join("etc/motd");
    std::fs::write(&zeroed_motd, b"\0\0\0\0").unwrap();

    // From here on, nothing comes from the network.
    registry.stop();

    let out = prepull(&containerd, &["verify", "--deep", "--all"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Plain repair does not look inside snapshots.
    let out = prepull(&containerd, &["repair"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = prepull(&containerd, &["verify", "--deep", &images[0].0]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // repair --deep: every case mended, the in-use image left and its container named.
    let out = prepull(&containerd, &["repair", "--deep", "--output", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines = json_lines(&out);
    let removed_by = |line: &serde_json::Value| -> Vec<String> {
        line["removed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    // dir-deleted and its sibling share the damaged layer 1, truncated and its twin all
    // three: whichever comes first removes the snapshots of both and unpacks both again; the
    // other says it was unpacked with it.
    let partners = [("dir-deleted", &sibling, 1), ("truncated", &twin, 0)];
    for (_, partner, layer) in &partners {
        let line = line_for(&lines, partner);
        assert_eq!(line["status"], "repaired", "{line:#}");
        assert_eq!(
            line["found"]["lowest_damaged_layer"]["index"], *layer,
            "{line:#}"
        );
    }
    for (case, (name, image)) in CASES.iter().zip(&images) {
        let line = line_for(&lines, name);
        assert_eq!(line["status"], "repaired", "{}: {line:#}", case.name);
        assert_eq!(
            line["found"]["lowest_damaged_layer"]["index"], case.layer,
            "{}: {line:#}",
            case.name
        );
        let diff_ids: Vec<Digest> = image.diff_ids.iter().map(|d| d.parse().unwrap()).collect();
        let chain = prepull::image::chain_ids(&diff_ids);
        let mut removed = removed_by(line);
        if let Some((_, partner, _)) = partners.iter().find(|p| p.0 == case.name) {
            let partner_line = line_for(&lines, partner);
            removed.extend(removed_by(partner_line));
            let both = [line, partner_line];
            let again: Vec<&serde_json::Value> = both
                .iter()
                .flat_map(|l| l["unpacked_again"].as_array().unwrap())
                .collect();
            assert!(
                again.iter().any(|v| *v == name.as_str())
                    && again.iter().any(|v| *v == partner.as_str()),
                "{line:#}\n{partner_line:#}"
            );
        }
        let removed: Vec<&str> = removed.iter().map(String::as_str).collect();
        for c in &chain[case.layer..] {
            assert!(
                removed.contains(&c.to_string().as_str()),
                "{}: {c} not removed: {line:#}",
                case.name
            );
        }
        for c in &chain[..case.layer] {
            assert!(
                !removed.contains(&c.to_string().as_str()),
                "{}: {c} below the damage was removed: {line:#}",
                case.name
            );
        }
        assert_eq!(line["after"]["sound"], true, "{}: {line:#}", case.name);
        let again = line["unpacked_again"].as_array().unwrap();
        assert!(
            again.iter().any(|v| v == name.as_str()),
            "{}: {line:#}",
            case.name
        );
    }
    let line = line_for(&lines, &in_use);
    assert_eq!(line["status"], "left", "{line:#}");
    assert!(line["removed"].as_array().unwrap().is_empty(), "{line:#}");
    let users = &line["outcome"]["users"];
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["id"] == sleeper.as_str()
                && u["pod"] == "busy"
                && u["namespace"] == "default"
                && u["container"] == "sleeper"),
        "{line:#}"
    );
    let out = prepull(&containerd, &["repair", "--deep", &in_use]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "container {sleeper} (pod default/busy, container sleeper)"
        )) && t.contains("delete those pods"),
        "{t}"
    );
    // Left as it was: the damage is still there, and the container still runs.
    assert_eq!(std::fs::read(&zeroed_motd).unwrap(), b"\0\0\0\0");
    assert_eq!(
        busy_pod.status(&sleeper).await.state,
        prepull::cri::v1::ContainerState::ContainerRunning as i32
    );

    // Once the pod is gone, repair mends it; GC keeps what the repair unpacked.
    busy_pod.remove().await;
    let out = prepull(&containerd, &["repair", "--deep", &in_use]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "repaired {in_use}: removed 1 snapshot from layer 2"
        )),
        "{}",
        text(&out)
    );
    store.collect_garbage().await.unwrap();
    let out = prepull(&containerd, &["verify", "--deep", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A snapshot gone from containerd altogether (removed by hand, or a repair interrupted
    // after removing): plain repair unpacks it from the local blobs, still offline.
    let (zeroed, zeroed_image) = &images[0];
    let diff_ids: Vec<Digest> = zeroed_image
        .diff_ids
        .iter()
        .map(|d| d.parse().unwrap())
        .collect();
    let top = prepull::image::chain_ids(&diff_ids)[2].to_string();
    containerd.ctr_ok(&[
        "-n",
        "k8s.io",
        "snapshots",
        "--snapshotter",
        &snapshotter,
        "rm",
        &top,
    ]);
    let out = prepull(&containerd, &["verify", zeroed]).await;
    assert!(text(&out).contains("is missing from the"), "{}", text(&out));
    let out = prepull(&containerd, &["repair", zeroed]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("repaired {zeroed}")),
        "{}",
        text(&out)
    );

    // Idempotent: nothing left to do.
    let out = prepull(&containerd, &["repair", "--deep"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("0 with damaged snapshots, 0 mended"),
        "{}",
        text(&out)
    );
    let leases = containerd.ctr_ok(&["-n", "k8s.io", "leases", "ls"]);
    assert!(!leases.contains("repair-snapshots"), "{leases}");

    // Pods read the right content from every mended image, with the registry still down.
    let mut pod = Pod::run(&containerd, "readers", logs.path()).await;
    for (name, (image, _)) in CASES
        .iter()
        .map(|c| c.name)
        .chain(std::iter::once("in-use"))
        .zip(&images)
    {
        let (got, code) = run_in(&mut pod, &containerd, name, image, SCRIPT).await;
        assert_eq!(
            (got, code),
            (expected_lines(name, &busybox_sha), 0),
            "{image}"
        );
    }
    let (got, code) = run_in(&mut pod, &containerd, "twin", &twin, SCRIPT).await;
    assert_eq!(
        (got, code),
        (expected_lines("truncated", &busybox_sha), 0),
        "{twin}"
    );
    let (got, code) = run_in(
        &mut pod,
        &containerd,
        "sibling",
        &sibling,
        "cat /etc/sibling /etc/secret /etc/case; echo; echo done-ok",
    )
    .await;
    assert_eq!(
        (got, code),
        (
            vec![
                "sibling".to_string(),
                "secret of dir-deleted".into(),
                "dir-deleted".into(),
                "done-ok".into()
            ],
            0
        ),
        "{sibling} ({})",
        sibling_image.manifest.digest
    );
    pod.remove().await;
}
