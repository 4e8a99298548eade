//! Disk space: containerd's root on a small tmpfs. An image that would leave less than the
//! reserve free is refused before any blob byte is fetched, with a message that says how much
//! was needed and free; blobs containerd already holds are not counted against the image.

use testbench as support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::disk::{free_bytes, write_filler};
use support::{
    push_image, text, Containerd, ContainerdOptions, ImageSpec, Prepull, Proxy, Registry,
};

const MIB: usize = 1 << 20;

async fn pull(
    containerd: &Containerd,
    proxy: &Proxy,
    extra: &[&str],
    image: &str,
) -> (Output, Value) {
    // The default reserve unless `extra` names one, whatever the environment says.
    let reserve = (!extra.contains(&"--min-free-space")).then_some(["--min-free-space", "15%"]);
    let out = Prepull::new("pull")
        .containerd(containerd)
        .arg("--containerd-root")
        .arg(containerd.root())
        .plain_http(&proxy.host())
        .args(["--no-node-credentials", "--output", "json"])
        .args(reserve.into_iter().flatten())
        .args(extra)
        .arg(image)
        .output()
        .await;
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("null")
        .to_string();
    let json = serde_json::from_str(&line).unwrap_or(Value::Null);
    (out, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn images_that_would_fill_the_disk_are_refused_before_downloading() {
    let (containerd, registry) = tokio::join!(
        Containerd::start_with(ContainerdOptions {
            root_tmpfs_bytes: Some(64 * MIB as u64),
            ..Default::default()
        }),
        Registry::start()
    );
    let proxy = Proxy::start(&registry.host()).await;
    let host = proxy.host();
    push_image(
        &registry.host(),
        "big/app",
        "v1",
        &ImageSpec::new(&[10 * MIB, 10 * MIB]),
    )
    .await;
    push_image(
        &registry.host(),
        "big/other",
        "v1",
        &ImageSpec::new(&[10 * MIB, 10 * MIB]),
    )
    .await;
    let app = format!("{host}/big/app:v1");
    let other = format!("{host}/big/other:v1");

    // 20 MiB compressed, about 60 MiB with unpacking, and 15% of 64 MiB must stay free.
    let (out, json) = pull(&containerd, &proxy, &[], &app).await;
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(json["kind"], "disk-space", "{json}");
    let error = json["error"].as_str().unwrap();
    assert!(
        error.contains(&app)
            && error.contains(containerd.root().to_str().unwrap())
            && error.contains("--min-free-space 15%")
            && error.contains("unpacked estimated"),
        "{error}"
    );
    assert_eq!(proxy.blob_bytes(), 0, "nothing was downloaded");
    let store = prepull::store::Store::connect(containerd.socket(), "k8s.io")
        .await
        .unwrap();
    assert!(store.image(&app).await.unwrap().is_none());

    // Content only: 20 MiB fits.
    let (out, json) = pull(&containerd, &proxy, &["--no-unpack"], &app).await;
    assert!(
        out.status.success(),
        "{json} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    containerd.assert_image_complete(&app);

    // Fill the disk to 8 MiB above the reserve: another 20 MiB image no longer fits…
    let free = free_bytes(containerd.root());
    let reserve = (64 * MIB) as u64 * 15 / 100;
    let filler = free - reserve - 8 * MIB as u64;
    write_filler(&containerd.root().join("filler"), filler);
    proxy.clear();
    let (out, json) = pull(&containerd, &proxy, &["--no-unpack"], &other).await;
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(json["kind"], "disk-space", "{json}");
    assert_eq!(proxy.blob_bytes(), 0);

    // …but the image already there is checked again without counting what containerd holds.
    let (out, json) = pull(&containerd, &proxy, &["--no-unpack"], &app).await;
    assert!(
        out.status.success(),
        "{json} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["blobs_fetched"], 0, "{json}");

    // The check can be turned off; containerd then runs out of space itself, and the pull
    // fails cleanly with no image record, reported as disk space (containerd's ENOSPC).
    let (out, json) = pull(
        &containerd,
        &proxy,
        &["--no-unpack", "--min-free-space", "0"],
        &other,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(json["kind"], "disk-space", "{json}");
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|e| e.contains("no space left on device")),
        "{json}"
    );
    assert!(store.image(&other).await.unwrap().is_none());
}

/// Runs prepull as it runs in a container that does not see containerd's root at containerd's
/// own path: in a private mount namespace, containerd's root is hidden under an empty tmpfs,
/// after being bind-mounted at `seen_at` when given (a hostPath volume mounted elsewhere).
async fn prepull_in_container(
    containerd: &Containerd,
    seen_at: Option<&Path>,
    args: &[String],
) -> Output {
    let root = containerd.root().display().to_string();
    let mut script = String::from("set -e; ");
    if let Some(alt) = seen_at {
        let alt = alt.display();
        script.push_str(&format!(
            "mkdir -p '{alt}'; mount --bind '{root}' '{alt}'; "
        ));
    }
    script.push_str(&format!(
        "mount -t tmpfs tmpfs '{root}'; exec \"$0\" \"$@\""
    ));
    tokio::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(support::run::bin())
        .args(args)
        .env_remove("PREPULL_MIN_FREE_SPACE")
        .output()
        .await
        .expect("run prepull in its own mount namespace")
}

/// The space check finds containerd's filesystem by asking containerd where its content store
/// is, and falls back to --containerd-root where that path is not visible. Without a working
/// check, `pull` and `agent` refuse to start (exit 2, naming the flag to fix) unless
/// `--min-free-space 0` says to pull without it.
#[tokio::test(flavor = "multi_thread")]
async fn the_space_check_finds_containerds_filesystem_or_refuses_to_run() {
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    push_image(&host, "space/app", "v1", &ImageSpec::new(&[64 << 10])).await;
    let image = format!("{host}/space/app:v1");
    let socket = containerd.socket().to_str().unwrap().to_string();
    let base = [
        "--containerd",
        socket.as_str(),
        "--plain-http",
        host.as_str(),
        "--no-node-credentials",
    ];
    let pull_args = |extra: &[&str], image: &str| -> Vec<String> {
        ["pull", "--output", "json"]
            .iter()
            .chain(&base)
            .chain(extra)
            .chain([&image])
            .map(|a| a.to_string())
            .collect()
    };
    let store = prepull::store::Store::connect(containerd.socket(), "k8s.io")
        .await
        .unwrap();

    // No --containerd-root (its default does not exist here): containerd's own answer is used,
    // so a reserve no filesystem can meet refuses the image.
    let args = pull_args(&["--min-free-space", "99.9%"], &image);
    let out = support::run::command().args(&args).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kind"], "disk-space", "{json}");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains(containerd.root().to_str().unwrap()),
        "{json}"
    );

    // containerd's path is not visible and --containerd-root is wrong: refused, for pull and
    // agent alike, before anything is fetched.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("not-containerd");
    std::fs::create_dir(&wrong).unwrap();
    let wrong = wrong.to_str().unwrap();
    let args = pull_args(&["--containerd-root", wrong], &image);
    let out = prepull_in_container(&containerd, None, &args).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("--containerd-root {wrong}"))
            && stderr.contains(containerd.root().to_str().unwrap())
            && stderr.contains("--min-free-space 0"),
        "{stderr}"
    );
    assert!(store.image(&image).await.unwrap().is_none());

    let list = dir.path().join("list.yaml");
    std::fs::write(&list, format!("images:\n  - {image}\n")).unwrap();
    let list = list.to_str().unwrap();
    let agent: Vec<String> = [
        "agent",
        "--once",
        "--list",
        list,
        "--containerd-root",
        wrong,
    ]
    .iter()
    .chain(&base)
    .map(|a| a.to_string())
    .collect();
    let out = prepull_in_container(&containerd, None, &agent).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--containerd-root"),
        "{}",
        text(&out)
    );
    assert!(store.image(&image).await.unwrap().is_none());

    // Saying so pulls without the check.
    let args = pull_args(
        &["--containerd-root", wrong, "--min-free-space", "0"],
        &image,
    );
    let out = prepull_in_container(&containerd, None, &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // containerd's root mounted elsewhere and named by --containerd-root: the check works
    // there (the impossible reserve refuses the image).
    let seen_at = dir.path().join("host-containerd");
    let seen = seen_at.to_str().unwrap();
    let other = format!("{host}/space/other:v1");
    push_image(&host, "space/other", "v1", &ImageSpec::new(&[64 << 10])).await;
    let args = pull_args(
        &["--containerd-root", seen, "--min-free-space", "99.9%"],
        &other,
    );
    let out = prepull_in_container(&containerd, Some(&seen_at), &args).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kind"], "disk-space", "{json}");
    assert!(json["error"].as_str().unwrap().contains(seen), "{json}");
    let args = pull_args(
        &["--containerd-root", seen, "--min-free-space", "1MiB"],
        &other,
    );
    let out = prepull_in_container(&containerd, Some(&seen_at), &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
