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

use std::path::{Path, PathBuf};
use std::time::Duration;

use prepull::cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest,
    PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use prepull::cri::{ImageServiceClient, RuntimeServiceClient};
use support::busybox::{busybox_layer, push_runnable};
use support::containerd::Series;
use support::process::Deadline;
use support::{Containerd, ContainerdOptions, Prepull, Registry};
use tonic::transport::Channel;

/// CRI learns about images other clients create from containerd's event stream, asynchronously.
const CRI_WAIT: Duration = Duration::from_secs(20);
/// From StartContainer until the app has printed its line and exited (it sleeps 1 s).
const RUN_WAIT: Duration = Duration::from_secs(60);
/// Bounds each CRI call, so a wedged containerd fails the test instead of hanging it.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
const OK_LINE: &str = "prepull-offline-ok";

/// Awaits a CRI call with [`RPC_TIMEOUT`].
async fn rpc<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => panic!("CRI {what} did not answer within {RPC_TIMEOUT:?}"),
    }
}

/// Host network as `hostNetwork: true` pods have it: no CNI needed. The kubelet then sends NO
/// hostname (the pod uses the node's), and CRI refuses to set one in the node's UTS namespace.
fn host_network() -> Option<NamespaceOption> {
    Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    })
}

/// A pod sandbox run through CRI, with its containers. [`Pod::remove`] tears it down checking
/// every answer; if the test fails first, Drop does it best-effort (the bench's Drop then kills
/// whatever shims remain).
struct Pod {
    socket: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    id: String,
    config: PodSandboxConfig,
    log_dir: PathBuf,
    containers: Vec<String>,
    removed: bool,
}

impl Pod {
    async fn run(containerd: &Containerd, log_dir: &Path) -> Pod {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "offline".into(),
                uid: format!("prepull-offline-{}", std::process::id()),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: String::new(),
            log_directory: log_dir.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: host_network(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut runtime = RuntimeServiceClient::new(containerd.channel().await);
        let id = rpc(
            "RunPodSandbox",
            runtime.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox with the registry stopped failed: {e}\n--- containerd log ---\n{}",
                containerd.log_tail(30)
            )
        })
        .pod_sandbox_id;
        Pod {
            socket: containerd.socket().to_path_buf(),
            runtime,
            id,
            config,
            log_dir: log_dir.to_path_buf(),
            containers: Vec::new(),
            removed: false,
        }
    }

    async fn state(&mut self) -> i32 {
        rpc(
            "PodSandboxStatus",
            self.runtime.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: self.id.clone(),
                verbose: false,
            }),
        )
        .await
        .expect("PodSandboxStatus")
        .status
        .expect("PodSandboxStatus without a status")
        .state
    }

    /// `CreateContainer` as the kubelet sends it for a container named `name` running `image`
    /// with its own command; the log goes to `<log_dir>/<name>/0.log`.
    async fn create(&mut self, name: &str, image: &str) -> Result<String, tonic::Status> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            log_path: format!("{name}/0.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: host_network(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = rpc(
            "CreateContainer",
            self.runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(config),
                sandbox_config: Some(self.config.clone()),
            }),
        )
        .await?
        .container_id;
        self.containers.push(id.clone());
        Ok(id)
    }

    async fn start(&mut self, id: &str) -> Result<(), tonic::Status> {
        rpc(
            "StartContainer",
            self.runtime.start_container(StartContainerRequest {
                container_id: id.into(),
            }),
        )
        .await
        .map(drop)
    }

    async fn status(&mut self, id: &str) -> ContainerStatus {
        rpc(
            "ContainerStatus",
            self.runtime.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("ContainerStatus({id}): {e}"))
        .status
        .unwrap_or_else(|| panic!("ContainerStatus({id}) without a status"))
    }

    /// Polls `ContainerStatus` until the container has exited.
    async fn wait_exited(&mut self, id: &str, containerd: &Containerd) -> ContainerStatus {
        let deadline = Deadline::after(RUN_WAIT);
        loop {
            let status = self.status(id).await;
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            if deadline.expired() {
                panic!(
                    "container {id} has not exited within {RUN_WAIT:?}: {status:?}\n--- its log ---\n{}\n--- containerd log ---\n{}",
                    support::process::log_tail(&self.log_dir.join("app/0.log"), 20),
                    containerd.log_tail(30)
                );
            }
            deadline.tick().await;
        }
    }

    /// Stops and removes every container, then the sandbox, checking each answer.
    async fn remove(mut self) {
        self.removed = true;
        for id in std::mem::take(&mut self.containers) {
            rpc(
                "StopContainer",
                self.runtime.stop_container(StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 0,
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("StopContainer({id}): {e}"));
            rpc(
                "RemoveContainer",
                self.runtime.remove_container(RemoveContainerRequest {
                    container_id: id.clone(),
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer({id}): {e}"));
        }
        rpc(
            "StopPodSandbox",
            self.runtime.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: self.id.clone(),
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox({}): {e}", self.id));
        rpc(
            "RemovePodSandbox",
            self.runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: self.id.clone(),
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox({}): {e}", self.id));
    }
}

impl Drop for Pod {
    /// Best effort after a failure: a fresh connection on a runtime of its own (this may run
    /// while the test's runtime unwinds), each call bounded, errors ignored.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (socket, sandbox, containers) = (
            self.socket.clone(),
            self.id.clone(),
            std::mem::take(&mut self.containers),
        );
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(channel) = prepull::cri::connect(&socket).await else {
                    return;
                };
                let mut runtime = RuntimeServiceClient::new(channel);
                let bound = Duration::from_secs(10);
                for id in containers {
                    let stop = StopContainerRequest {
                        container_id: id.clone(),
                        timeout: 0,
                    };
                    let _ = tokio::time::timeout(bound, runtime.stop_container(stop)).await;
                    let remove = RemoveContainerRequest { container_id: id };
                    let _ = tokio::time::timeout(bound, runtime.remove_container(remove)).await;
                }
                let stop = StopPodSandboxRequest {
                    pod_sandbox_id: sandbox.clone(),
                };
                let _ = tokio::time::timeout(bound, runtime.stop_pod_sandbox(stop)).await;
                let remove = RemovePodSandboxRequest {
                    pod_sandbox_id: sandbox,
                };
                let _ = tokio::time::timeout(bound, runtime.remove_pod_sandbox(remove)).await;
            });
        });
        let _ = cleanup.join();
    }
}

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
    let mut pod = Pod::run(&containerd, logs.path()).await;
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
    let status = pod.wait_exited(&app_id, &containerd).await;
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
