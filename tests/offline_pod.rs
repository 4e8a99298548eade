//! The proof: images `prepull pull` put into containerd start a pod while the registry is down.
//!
//! The test plays the kubelet through CRI on the bench's containerd: it builds a runnable app image
//! and a sandbox ("pause") image from Debian's static busybox, pre-pulls both with the `prepull`
//! binary, stops the registry, then asks CRI what the kubelet asks (`ImageStatus`, then
//! `RunPodSandbox`, `CreateContainer`, `StartContainer`) and reads the container's CRI log. A
//! control image that was pushed but never pre-pulled must fail to start under the same conditions,
//! so the pod's success is prepull's doing. Runs against each containerd series the bench knows
//! (`PREPULL_TEST_CONTAINERD`) and either snapshotter (`PREPULL_TEST_SNAPSHOTTER`), see
//! `tests/support/containerd.rs`.

use testbench as support;

use std::path::Path;
use std::time::Duration;

use prepull::cri::v1::{ImageSpec, PodSandboxState, PullImageRequest};
use prepull::cri::ImageServiceClient;
use support::busybox::{busybox_layer, push_runnable};
use support::containerd::Series;
use support::pod::{rpc, Pod};
use support::process::Deadline;
use support::{Containerd, ContainerdOptions, Prepull, Registry};

/// CRI learns about images other clients create from containerd's event stream, asynchronously.
const CRI_WAIT: Duration = Duration::from_secs(20);
/// From StartContainer until the app has printed its line and exited (it sleeps 1 s).
const RUN_WAIT: Duration = Duration::from_secs(60);
const OK_LINE: &str = "prepull-offline-ok";

/// Polls a CRI container log until it holds `line` (the log copier may finish just after the
/// exit is reported); returns the whole log.
async fn wait_for_log_line(path: &Path, line: &str, containerd: &Containerd) -> String {
    let deadline = Deadline::after(CRI_WAIT);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        // CRI log format: `<RFC 3339 time> stdout F <text>`.
        if log
            .lines()
            .any(|l| l.contains(" stdout ") && l.ends_with(line))
        {
            return log;
        }
        if deadline.expired() {
            let listing = std::fs::read_dir(path.parent().unwrap_or(path))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            panic!(
                "container log {} has no stdout line {line:?} after {CRI_WAIT:?}:\n{log}\n(dir holds {listing:?})\n--- containerd log ---\n{}",
                path.display(),
                containerd.log_tail(30)
            );
        }
        deadline.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prepulled_pod_starts_with_the_registry_stopped_and_an_unpulled_image_does_not() {
    // 1. Runnable images from a static busybox, one shared layer.
    let mut registry = Registry::start().await;
    let host = registry.host();
    let layer = tokio::task::spawn_blocking(busybox_layer)
        .await
        .expect("build the busybox layer");
    let app_cmd = format!("echo {OK_LINE}; cat /etc/hostname 2>/dev/null; sleep 1");
    let app = push_runnable(
        &host,
        "offline/app",
        "1",
        &[&layer],
        &["/bin/sh", "-c", &app_cmd],
    )
    .await;
    let pause = push_runnable(
        &host,
        "offline/pause",
        "1",
        &[&layer],
        &["/bin/busybox", "sleep", "3600"],
    )
    .await;
    // Pushed, so that its failure below is the registry being down, not a missing image.
    push_runnable(
        &host,
        "offline/unpulled",
        "1",
        &[&layer],
        &["/bin/sh", "-c", "echo must-not-run"],
    )
    .await;
    let (app_ref, pause_ref, unpulled_ref) = (
        format!("{host}/offline/app:1"),
        format!("{host}/offline/pause:1"),
        format!("{host}/offline/unpulled:1"),
    );

    // 2. containerd whose CRI uses our pause image for sandboxes.
    let containerd = Containerd::start_with(ContainerdOptions {
        sandbox_image: Some(pause_ref.clone()),
        ..Default::default()
    })
    .await;

    // 3. Pre-pull, as the node agent would before any pod is scheduled; the sandbox image pinned
    // so the kubelet's image GC keeps it.
    Prepull::new("pull")
        .containerd(&containerd)
        .plain_http(&host)
        .arg(&app_ref)
        .success()
        .await;
    Prepull::new("pull")
        .containerd(&containerd)
        .plain_http(&host)
        .args(["--pin", &pause_ref])
        .success()
        .await;

    // 4. The registry goes away, for good.
    let port = registry.port();
    registry.stop();
    let connect = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    );
    assert!(
        connect.is_err(),
        "the registry's port {port} still accepts connections after stop()"
    );

    // 5. The kubelet's question under `IfNotPresent`: present, so no pull.
    let app_status = support::cri::wait_for_image(containerd.socket(), &app_ref, CRI_WAIT).await;
    assert_eq!(app_status.id, app.config.digest, "CRI's ID for {app_ref}");
    let pause_status =
        support::cri::wait_for_image(containerd.socket(), &pause_ref, CRI_WAIT).await;
    assert_eq!(
        pause_status.id, pause.config.digest,
        "CRI's ID for {pause_ref}"
    );
    // CRI reports the pin label from 1.6.22 / 1.7.3 / 2.0 on; Debian's 1.6.20 predates it.
    if containerd.series() >= Series::V1_7 {
        assert!(
            pause_status.pinned,
            "containerd {} does not report {pause_ref} as pinned",
            containerd.install().version
        );
    }
    assert!(
        support::cri::image_status(containerd.socket(), &unpulled_ref)
            .await
            .is_none(),
        "control: {unpulled_ref} was never pulled, yet CRI has it"
    );

    let logs = tempfile::tempdir().expect("create a pod log dir");
    let mut pod = Pod::run(&containerd, "offline", logs.path()).await;
    assert_eq!(
        pod.state().await,
        PodSandboxState::SandboxReady as i32,
        "the sandbox (pause container from {pause_ref}) runs"
    );

    let app_id = pod.create("app", &app_ref).await.unwrap_or_else(|e| {
        panic!(
            "CreateContainer({app_ref}) with the registry stopped failed: {e}\n--- containerd log ---\n{}",
            containerd.log_tail(30)
        )
    });
    pod.start(&app_id).await.unwrap_or_else(|e| {
        panic!(
            "StartContainer({app_ref}) failed: {e}\n--- containerd log ---\n{}",
            containerd.log_tail(30)
        )
    });
    let status = pod.wait_exited(&app_id, "app", RUN_WAIT, &containerd).await;
    let log_path = logs.path().join("app/0.log");
    let log = wait_for_log_line(&log_path, OK_LINE, &containerd).await;
    assert_eq!(
        status.exit_code, 0,
        "the app exited with {} ({} {})\n--- its log ---\n{log}",
        status.exit_code, status.reason, status.message
    );
    assert!(
        status.image_ref.contains(&app.manifest.digest) || status.image_ref == app.config.digest,
        "the container ran {} rather than the pre-pulled {app_ref} ({} / {})",
        status.image_ref,
        app.manifest.digest,
        app.config.digest
    );

    // 6. The control: an image that was pushed but not pre-pulled cannot be pulled now (what the
    // kubelet would try next), and CRI refuses to create a container from it.
    let mut images = ImageServiceClient::new(containerd.channel().await);
    let pull = rpc(
        "PullImage",
        images.pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: unpulled_ref.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await;
    let refused = pull.expect_err("control: CRI pulled an image with the registry stopped");
    assert!(
        refused.message().contains("connection refused"),
        "control: CRI's pull of {unpulled_ref} failed for another reason than the registry being down: {refused}"
    );
    let created = pod.create("unpulled", &unpulled_ref).await;
    let error = created.expect_err("control: CreateContainer from an image never pulled succeeded");
    let message = error.message();
    assert!(
        message.contains(&unpulled_ref) && message.contains("not found"),
        "control: CreateContainer({unpulled_ref}) failed for another reason: {error}"
    );

    pod.remove().await;
}
