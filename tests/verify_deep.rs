//! `prepull verify --deep` against a real containerd whose unpacked snapshots are damaged the
//! ways power cuts and people damage them: a file zeroed, a binary truncated, a byte flipped, a
//! mode changed, a file deleted or added, a symlink retargeted, a whiteout removed, a snapshot
//! directory deleted or emptied. Each image gets its own layers (and so its own snapshots), so
//! one containerd and one registry serve every case.
//!
//! Snapshot directories are found as the product finds them: through read-only views.

use testbench as support;

use std::process::Output;
use std::time::Duration;

use prepull::digest::Digest;
use prepull::store::Store;
use support::busybox::{push_runnable, Entry, FileLayer};
use support::damage::{empty_dir, flip_byte};
use support::snapshots::{layer_dirs, Dirs};
use support::{text, Containerd, Prepull, Registry};

async fn prepull(containerd: &Containerd, args: &[&str]) -> Output {
    Prepull::new(args[0])
        .containerd(containerd)
        .args(&args[1..])
        .output()
        .await
}

/// Three layers: busybox (with a marker making the image's layers its own); a layer adding a
/// secret, a message with a hard link to it, and a directory; a layer deleting the secret (a
/// whiteout), replacing the message, adding a hard-linked script and making the directory opaque.
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
        Entry::file("etc/secret", 0o600, format!("secret of {case}").as_bytes()),
        Entry::file("etc/motd", 0o644, b"first message\n"),
        // A hard link within the layer, whose target the next layer replaces.
        Entry::hard_link("etc/motd.orig", "etc/motd", 0o644),
        Entry::dir("var"),
        Entry::file("var/old", 0o644, b"hidden by the next layer"),
    ]);
    let top = FileLayer::build(&[
        Entry::file("etc/.wh.secret", 0o644, b""),
        Entry::file("etc/motd", 0o644, motd.as_bytes()),
        Entry::dir("bin"),
        Entry::file("bin/hello", 0o755, b"#!/bin/sh\necho hello\n"),
        Entry::hard_link("bin/hello-again", "bin/hello", 0o755),
        // An opaque directory: nothing of var/ below shows through.
        Entry::dir("var"),
        Entry::file("var/.wh..wh..opq", 0o644, b""),
        Entry::file("var/new", 0o644, b"only this"),
    ]);
    vec![base, middle, top]
}

/// A damage, applied to the image's directories; the layer and path the check must name.
struct Case {
    name: &'static str,
    damage: fn(&Dirs),
    layer: usize,
    path: &'static str,
    words: &'static str,
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
        path: "/etc/motd",
        words: "content differs",
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
        path: "/bin/busybox",
        words: "wrong size: expected",
    },
    Case {
        name: "flipped",
        damage: |d| flip_byte(&d.of(0).join("bin/busybox"), 5000),
        layer: 0,
        path: "/bin/busybox",
        words: "content differs",
    },
    Case {
        name: "mode",
        damage: |d| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                d.of(0).join("bin/busybox"),
                std::fs::Permissions::from_mode(0o700),
            )
            .unwrap()
        },
        layer: 0,
        path: "/bin/busybox",
        words: "wrong mode: expected 0755, found 0700",
    },
    Case {
        name: "deleted",
        damage: |d| std::fs::remove_file(d.of(2).join("etc/motd")).unwrap(),
        layer: 2,
        path: "/etc/motd",
        words: "missing",
    },
    Case {
        name: "added",
        damage: |d| std::fs::write(d.of(2).join("etc/extra"), b"planted").unwrap(),
        layer: 2,
        path: "/etc/extra",
        words: "not in the layer",
    },
    Case {
        name: "retargeted",
        damage: |d| {
            let p = d.of(0).join("bin/sh");
            std::fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink("/tmp/evil", p).unwrap();
        },
        layer: 0,
        path: "/bin/sh",
        words: "symlink retargeted: expected busybox, found /tmp/evil",
    },
    Case {
        name: "whiteout",
        damage: |d| {
            // overlayfs: the 0/0 device goes and the lower layer's secret shows again;
            // native: the secret is back in the snapshot.
            let p = d.of(2).join("etc/secret");
            if d.cumulative {
                std::fs::write(p, b"secret again").unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        },
        layer: 2,
        path: "/etc/secret",
        words: "deleted path is back",
    },
    Case {
        name: "dir-deleted",
        damage: |d| std::fs::remove_dir_all(&d.per_layer[1]).unwrap(),
        layer: 1,
        path: "/",
        words: "snapshot directory missing",
    },
    Case {
        name: "dir-emptied",
        damage: |d| empty_dir(&d.per_layer[2]),
        layer: 2,
        path: "/",
        words: "snapshot directory empty",
    },
];

#[tokio::test(flavor = "multi_thread")]
async fn deep_verify_names_each_damaged_layer_and_path() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let snapshotter = containerd.snapshotter().to_string();
    let names: Vec<&str> = std::iter::once("clean")
        .chain(CASES.iter().map(|c| c.name))
        .collect();
    let mut images = Vec::new();
    for name in &names {
        let built = tokio::task::spawn_blocking({
            let name = name.to_string();
            move || layers(&name)
        })
        .await
        .unwrap();
        let refs: Vec<&FileLayer> = built.iter().collect();
        let image = push_runnable(&host, &format!("deep/{name}"), "1", &refs, &["/bin/sh"]).await;
        images.push((format!("{host}/deep/{name}:1"), image, built));
    }
    let mut pull = vec!["pull", "--plain-http", &host, "--no-node-credentials"];
    pull.extend(images.iter().map(|(r, _, _)| r.as_str()));
    let out = prepull(&containerd, &pull).await;
    assert!(out.status.success(), "{}", text(&out));
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();

    // Plain verify is unchanged and says the deep check did not run.
    let out = prepull(&containerd, &["verify"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("deep check not run"), "{}", text(&out));
    let out = prepull(&containerd, &["verify", "--output", "json", &images[0].0]).await;
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["deep"]["checked"], false, "{line}");

    // Sound snapshots match their layers.
    let out = prepull(&containerd, &["verify", "--deep", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("ok {} (", images[0].0))
            && text(&out).contains("3 layers match their snapshots"),
        "{}",
        text(&out)
    );

    for (case, (name, image, _)) in CASES.iter().zip(&images[1..]) {
        let d = layer_dirs(&store, &snapshotter, &image.diff_ids).await;
        (case.damage)(&d);
        let out = prepull(&containerd, &["verify", "--deep", name]).await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {t}", case.name);
        let expected = format!(
            "damaged {name}: layer {} ({}) {}: {}",
            case.layer, image.layers[case.layer].digest, case.path, case.words
        );
        assert!(
            t.contains(&expected),
            "{}: no {expected:?} in:\n{t}",
            case.name
        );
    }

    // JSON names the layer by index, digest and chain ID, for a repair to start from.
    let (name, image, _) = &images[1];
    let out = prepull(
        &containerd,
        &[
            "verify",
            "--deep",
            "--output",
            "json",
            "--max-read-rate",
            "64MiB",
            name,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    let finding = &line["deep"]["findings"][0];
    assert_eq!(finding["path"], "/etc/motd", "{line}");
    assert_eq!(finding["kind"], "content", "{line}");
    assert_eq!(finding["layer"]["index"], 2, "{line}");
    assert_eq!(finding["layer"]["digest"], image.layers[2].digest, "{line}");
    let diff_ids: Vec<Digest> = image.diff_ids.iter().map(|d| d.parse().unwrap()).collect();
    let chain = prepull::image::chain_ids(&diff_ids);
    assert_eq!(
        line["deep"]["lowest_damaged_layer"]["chain_id"],
        chain[2].to_string(),
        "{line}"
    );

    // The views and their lease are gone.
    let views = containerd.ctr_ok(&[
        "-n",
        "k8s.io",
        "snapshots",
        "--snapshotter",
        &snapshotter,
        "ls",
    ]);
    assert!(!views.contains("prepull-deep-"), "{views}");
    let leases = containerd.ctr_ok(&["-n", "k8s.io", "leases", "ls"]);
    assert!(!leases.contains("deep-verify"), "{leases}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_deep_check_leaves_no_view_behind() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let built = tokio::task::spawn_blocking(|| layers("interrupted"))
        .await
        .unwrap();
    let refs: Vec<&FileLayer> = built.iter().collect();
    push_runnable(&host, "deep/interrupted", "1", &refs, &["/bin/sh"]).await;
    let name = format!("{host}/deep/interrupted:1");
    let out = prepull(
        &containerd,
        &[
            "pull",
            "--plain-http",
            &host,
            "--no-node-credentials",
            &name,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let snapshotter = containerd.snapshotter().to_string();
    let views = || {
        containerd.ctr_ok(&[
            "-n",
            "k8s.io",
            "snapshots",
            "--snapshotter",
            &snapshotter,
            "ls",
        ])
    };

    // At 4 KiB/s the busybox layer alone takes minutes: the check is surely under way.
    let mut child = Prepull::new("verify")
        .containerd(&containerd)
        .args(["--deep", "--max-read-rate", "4KiB", &name])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = support::process::Deadline::after(Duration::from_secs(60));
    while !views().contains("prepull-deep-") {
        assert!(
            !deadline.expired(),
            "no deep check view appeared:\n{}",
            views()
        );
        deadline.tick().await;
    }
    let pid = child.id().unwrap() as libc::pid_t;
    // SAFETY: signalling a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("verify --deep stops within 30 s of SIGINT")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(!views().contains("prepull-deep-"), "{}", views());
    let leases = containerd.ctr_ok(&["-n", "k8s.io", "leases", "ls"]);
    assert!(!leases.contains("deep-verify"), "{leases}");
}

/// Where containerd keeps a blob.
fn blob_path(containerd: &Containerd, digest: &str) -> std::path::PathBuf {
    containerd
        .root()
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// `verify --deep` hashes each layer blob as it reads it for the comparison, instead of reading
/// it twice: a corrupt blob is still reported as one, whether its bytes still unpack to the
/// right files or break the comparison, and its snapshots are not judged by it.
#[tokio::test(flavor = "multi_thread")]
async fn deep_verify_reports_a_corrupt_layer_blob_as_corrupt() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let mut images = Vec::new();
    for name in ["blob-header", "blob-data"] {
        let built = tokio::task::spawn_blocking(move || layers(name))
            .await
            .unwrap();
        let refs: Vec<&FileLayer> = built.iter().collect();
        let image = push_runnable(&host, &format!("deep/{name}"), "1", &refs, &["/bin/sh"]).await;
        images.push((format!("{host}/deep/{name}:1"), image));
    }
    let mut pull = vec!["pull", "--plain-http", &host, "--no-node-credentials"];
    pull.extend(images.iter().map(|(r, _)| r.as_str()));
    let out = prepull(&containerd, &pull).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = prepull(&containerd, &["verify", "--deep", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A byte of the gzip header's modification time: the blob still unpacks to the same tar,
    // so the comparison finds nothing; only its digest shows the damage.
    let (header, header_image) = &images[0];
    flip_byte(&blob_path(&containerd, &header_image.layers[1].digest), 5);
    // A byte inside the compressed data of the top layer: the comparison cannot read it.
    let (data, data_image) = &images[1];
    let top = &data_image.layers[2];
    flip_byte(&blob_path(&containerd, &top.digest), top.size / 2);

    let out = prepull(&containerd, &["verify", "--deep", "--all"]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for expected in [
        format!(
            "damaged {header}: layer 1 {} is corrupt: {} bytes hashing to sha256:",
            header_image.layers[1].digest, header_image.layers[1].size
        ),
        format!(
            "damaged {data}: layer 2 {} is corrupt: {} bytes hashing to sha256:",
            top.digest, top.size
        ),
    ] {
        assert!(t.contains(&expected), "no {expected:?} in:\n{t}");
    }
    // The blobs are what to mend: their snapshots were not judged by them.
    assert!(!t.contains("could not be compared"), "{t}");
    assert!(!t.contains("match their snapshots"), "{t}");
    let out = prepull(
        &containerd,
        &["verify", "--deep", "--output", "json", header],
    )
    .await;
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["deep"]["checked"], false, "{line}");

    // --quick hashes no layer: the header's damage goes unseen, and its files match.
    let out = prepull(&containerd, &["verify", "--deep", "--quick", header]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("3 layers match their snapshots"),
        "{}",
        text(&out)
    );
}
