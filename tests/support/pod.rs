//! Pods played through CRI as the kubelet plays them: a sandbox, containers created from images
//! with the settings a pod spec gives them (arguments, mounts, user, read-only root filesystem,
//! capabilities), their states and logs. The network is the node's (`hostNetwork: true`): this
//! machine has no CNI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prepull::cri::v1::{security_profile, LinuxContainerResources, SecurityProfile};
use prepull::cri::v1::{
    Capability, ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus,
    ContainerStatusRequest, CreateContainerRequest, ImageSpec, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use prepull::cri::RuntimeServiceClient;
use tonic::transport::Channel;

use super::process::Deadline;
use super::Containerd;

/// Bounds each CRI call, so a wedged containerd fails the test instead of hanging it.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// Awaits a CRI call with [`RPC_TIMEOUT`].
pub async fn rpc<T>(
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
pub fn host_network() -> Option<NamespaceOption> {
    Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    })
}

/// A container as a pod spec describes it.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// The container's name; its log goes to `<log_dir>/<name>/0.log`.
    pub name: String,
    /// The image, as the pod names it.
    pub image: String,
    /// `args` (the image's entrypoint stays).
    pub args: Vec<String>,
    /// `env`, with values resolved (the downward API's as the kubelet resolves them).
    pub envs: Vec<(String, String)>,
    /// `(host path, container path, read-only)`.
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// `runAsUser`.
    pub run_as_user: Option<i64>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `capabilities: drop: ["ALL"]`.
    pub drop_all_capabilities: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// `seccompProfile: {type: RuntimeDefault}`.
    pub seccomp_runtime_default: bool,
    /// `resources.limits.cpu` in millicores, as the kubelet turns it into a CFS quota.
    pub cpu_limit_millis: Option<i64>,
}

impl ContainerSpec {
    /// A container running `image` with its own command.
    pub fn new(name: &str, image: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            ..Default::default()
        }
    }

    /// The config the kubelet sends for this container in a pod named `pod` (namespace
    /// `default`), with the kubelet's labels.
    fn config(&self, pod: &str) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: self.name.clone(),
                attempt: 0,
            }),
            labels: [
                ("io.kubernetes.container.name", self.name.as_str()),
                ("io.kubernetes.pod.name", pod),
                ("io.kubernetes.pod.namespace", "default"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            image: Some(ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            args: self.args.clone(),
            envs: self
                .envs
                .iter()
                .map(|(key, value)| KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            mounts: self
                .mounts
                .iter()
                .map(|(host, container, readonly)| Mount {
                    container_path: container.clone(),
                    host_path: host.display().to_string(),
                    readonly: *readonly,
                    ..Default::default()
                })
                .collect(),
            log_path: format!("{}/0.log", self.name),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: host_network(),
                    run_as_user: self.run_as_user.map(|value| Int64Value { value }),
                    readonly_rootfs: self.read_only_root,
                    no_new_privs: self.no_new_privileges,
                    capabilities: self.drop_all_capabilities.then(|| Capability {
                        drop_capabilities: vec!["ALL".into()],
                        ..Default::default()
                    }),
                    seccomp: self.seccomp_runtime_default.then(|| SecurityProfile {
                        profile_type: security_profile::ProfileType::RuntimeDefault as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
                resources: self.cpu_limit_millis.map(|millis| LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota: millis * 100,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }
}

/// A pod sandbox run through CRI, with its containers. [`Pod::remove`] tears it down checking
/// every answer; if the test fails first, Drop does it best-effort (the bench's Drop then kills
/// whatever shims remain).
pub struct Pod {
    socket: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    id: String,
    config: PodSandboxConfig,
    log_dir: PathBuf,
    containers: Vec<String>,
    removed: bool,
    name: String,
}

impl Pod {
    /// Runs a sandbox named `name` on the node's network, its logs under `log_dir`.
    pub async fn run(containerd: &Containerd, name: &str, log_dir: &Path) -> Pod {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("prepull-{name}-{}", std::process::id()),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: String::new(),
            labels: [
                ("io.kubernetes.pod.name", name),
                ("io.kubernetes.pod.namespace", "default"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
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
                "RunPodSandbox failed: {e}\n--- containerd log ---\n{}",
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
            name: name.to_string(),
        }
    }

    /// The sandbox's state.
    pub async fn state(&mut self) -> i32 {
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
    /// with its own command.
    pub async fn create(&mut self, name: &str, image: &str) -> Result<String, tonic::Status> {
        self.create_with(&ContainerSpec::new(name, image)).await
    }

    /// `CreateContainer` for `spec`.
    pub async fn create_with(&mut self, spec: &ContainerSpec) -> Result<String, tonic::Status> {
        let id = rpc(
            "CreateContainer",
            self.runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(spec.config(&self.name)),
                sandbox_config: Some(self.config.clone()),
            }),
        )
        .await?
        .container_id;
        self.containers.push(id.clone());
        Ok(id)
    }

    /// `StartContainer`.
    pub async fn start(&mut self, id: &str) -> Result<(), tonic::Status> {
        rpc(
            "StartContainer",
            self.runtime.start_container(StartContainerRequest {
                container_id: id.into(),
            }),
        )
        .await
        .map(drop)
    }

    /// `ContainerStatus`.
    pub async fn status(&mut self, id: &str) -> ContainerStatus {
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

    /// The log of the container named `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.log_dir.join(name).join("0.log")
    }

    /// Polls `ContainerStatus` until the container (named `name`) has exited, for up to `wait`.
    pub async fn wait_exited(
        &mut self,
        id: &str,
        name: &str,
        wait: Duration,
        containerd: &Containerd,
    ) -> ContainerStatus {
        let deadline = Deadline::after(wait);
        loop {
            let status = self.status(id).await;
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            if deadline.expired() {
                panic!(
                    "container {id} has not exited within {wait:?}: {status:?}\n--- its log ---\n{}\n--- containerd log ---\n{}",
                    super::process::log_tail(&self.log(name), 20),
                    containerd.log_tail(30)
                );
            }
            deadline.tick().await;
        }
    }

    /// `StopContainer` with `timeout` seconds of grace (SIGTERM, then SIGKILL).
    pub async fn stop(&mut self, id: &str, timeout: i64) {
        rpc(
            "StopContainer",
            self.runtime.stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("StopContainer({id}): {e}"));
    }

    /// Stops and removes every container, then the sandbox, checking each answer.
    pub async fn remove(mut self) {
        self.removed = true;
        for id in std::mem::take(&mut self.containers) {
            self.stop(&id, 0).await;
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
