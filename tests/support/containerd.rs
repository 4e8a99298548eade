//! A real, private containerd: its own config, root, state, sockets and log in a temp dir, with the
//! CRI plugin on. Killed (with any shims and their containers) and cleaned up on Drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use containerd_client::services::v1::version_client::VersionClient;
use tonic::transport::Channel;

use super::process::{self, Deadline};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What varies between bench containerds. New fields (e.g. a config format for containerd 2.x,
/// whose config is `version = 3` with CRI split into `io.containerd.cri.v1.*` plugins) belong here,
/// and only [`render_config`] needs to learn about them.
#[derive(Clone, Debug)]
pub struct ContainerdOptions {
    /// The containerd binary; a bare name is looked up in `PATH`.
    pub binary: PathBuf,
    /// The snapshotter CRI uses (and `ctr` should be told to use).
    pub snapshotter: String,
    /// CRI's sandbox ("pause") image; `None` keeps containerd's default, which is never pulled
    /// unless a test runs a pod.
    pub sandbox_image: Option<String>,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            binary: PathBuf::from("containerd"),
            snapshotter: "native".to_string(),
            sandbox_image: None,
        }
    }
}

/// Where one instance keeps its files, all under its temp dir.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub ttrpc_socket: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        Layout {
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("containerd.sock"),
            ttrpc_socket: dir.join("containerd.sock.ttrpc"),
            cni_conf_dir: dir.join("cni/net.d"),
            cni_bin_dir: dir.join("cni/bin"),
        }
    }
}

/// The containerd 1.x config (format `version = 2`) for one bench instance.
///
/// Everything that would otherwise use a global path or port is redirected into the temp dir or
/// disabled, so instances never see each other or the host's containerd.
pub fn render_config(opts: &ContainerdOptions, layout: &Layout) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    let sandbox = opts
        .sandbox_image
        .as_deref()
        .map(|s| format!("  sandbox_image = {}\n", toml_string(s)))
        .unwrap_or_default();
    format!(
        r#"version = 2
root = {root}
state = {state}
# opt installs into /opt/containerd; the other snapshotters are unused and only add noise.
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # This machine lacks CAP_SYS_RESOURCE: without it runc fails to start containers.
  restrict_oom_score_adj = true
  # Pod network namespaces would otherwise be mounted under the global /var/run/netns.
  netns_mounts_under_state_dir = true
{sandbox}  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = {snapshotter}
  # Declaring the runc runtime replaces the default entry, so its type must be restated.
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  # runc keeps container state under /run/containerd/runc by default; two instances must not share it.
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    Root = {runc_root}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
"#,
        root = q(&layout.root),
        state = q(&layout.state),
        socket = q(&layout.socket),
        ttrpc = q(&layout.ttrpc_socket),
        snapshotter = toml_string(&opts.snapshotter),
        cni_bin = q(&layout.cni_bin_dir),
        cni_conf = q(&layout.cni_conf_dir),
        runc_root = q(&layout.state.join("runc")),
    )
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

enum Probe {
    NotYet(String),
    Fatal(String),
}

pub struct Containerd {
    child: Option<Child>,
    layout: Layout,
    log: PathBuf,
    opts: ContainerdOptions,
    dir: process::BenchDir,
}

impl Containerd {
    /// containerd from `PATH`, CRI on, snapshotter `native`.
    pub async fn start() -> Containerd {
        Self::start_with(ContainerdOptions::default()).await
    }

    pub async fn start_with(opts: ContainerdOptions) -> Containerd {
        let dir = process::tempdir("bench-containerd-");
        let layout = Layout::new(dir.path());
        for d in [&layout.cni_conf_dir, &layout.cni_bin_dir] {
            std::fs::create_dir_all(d).expect("create CNI dirs");
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, render_config(&opts, &layout)).expect("write containerd config");
        let log = dir.path().join("containerd.log");

        let mut cmd = Command::new(&opts.binary);
        cmd.arg("--config")
            .arg(&config)
            .arg("--log-level")
            .arg("info");
        let child = process::spawn_logged(cmd, &log);
        let mut me = Containerd {
            child: Some(child),
            layout,
            log,
            opts,
            dir,
        };
        me.wait_ready().await;
        me
    }

    /// Ready means: the gRPC socket answers Version, and the CRI plugin has finished initializing
    /// (until then its image service answers "server is not initialized yet").
    async fn wait_ready(&mut self) {
        let deadline = Deadline::after(START_TIMEOUT);
        let mut last_error = String::from("socket not created yet");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.fail(&format!("containerd exited during startup with {status}"));
            }
            if self.layout.socket.exists() {
                match self.probe().await {
                    Ok(()) => return,
                    Err(Probe::Fatal(e)) => self.fail(&e),
                    Err(Probe::NotYet(e)) => last_error = e,
                }
            }
            if deadline.expired() {
                self.fail(&format!(
                    "containerd not ready after {START_TIMEOUT:?}: {last_error}"
                ));
            }
            deadline.tick().await;
        }
    }

    async fn probe(&self) -> Result<(), Probe> {
        let channel = containerd_client::connect(&self.layout.socket)
            .await
            .map_err(|e| Probe::NotYet(format!("connect: {e}")))?;
        VersionClient::new(channel.clone())
            .version(())
            .await
            .map_err(|e| Probe::NotYet(format!("Version: {e}")))?;
        match prepull::cri::ImageServiceClient::new(channel)
            .list_images(prepull::cri::v1::ListImagesRequest { filter: None })
            .await
        {
            Ok(_) => Ok(()),
            // Services are registered before the socket serves: CRI's plugin failed to load.
            Err(e) if e.code() == tonic::Code::Unimplemented => Err(Probe::Fatal(format!(
                "containerd runs without its CRI plugin: {}",
                e.message()
            ))),
            Err(e) => Err(Probe::NotYet(format!("CRI ListImages: {e}"))),
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        let errors = process::log_errors(&self.log, 10);
        let tail = process::log_tail(&self.log, 25);
        self.teardown();
        panic!(
            "{why}\n--- errors in {log} ---\n{errors}\n--- tail of {log} ---\n{tail}",
            log = self.log.display()
        );
    }

    pub fn socket(&self) -> &Path {
        &self.layout.socket
    }

    /// containerd's `root`; the content store is `root/io.containerd.content.v1.content`.
    pub fn root(&self) -> &Path {
        &self.layout.root
    }

    pub fn state(&self) -> &Path {
        &self.layout.state
    }

    /// The temp dir holding everything of this instance.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log, lines)
    }

    pub fn options(&self) -> &ContainerdOptions {
        &self.opts
    }

    pub fn snapshotter(&self) -> &str {
        &self.opts.snapshotter
    }

    /// Runs `ctr --address <socket> <args>` (callers add `-n k8s.io` etc.).
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.layout.socket)
            .args(args)
            // Keep the caller's environment from choosing another namespace behind our back.
            .env_remove("CONTAINERD_NAMESPACE")
            .output()
            .expect("run ctr")
    }

    /// Like [`Containerd::ctr`], but panics with ctr's output (and containerd's log tail) unless it
    /// succeeds; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        if !out.status.success() {
            panic!(
                "ctr {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}\n--- tail of containerd log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(30)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A fresh gRPC channel to this containerd.
    pub async fn channel(&self) -> Channel {
        containerd_client::connect(&self.layout.socket)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.layout.socket.display()))
    }

    /// Kills containerd, then its shims and whatever runs below them, then unmounts leftovers.
    fn teardown(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_child(&mut child);
        }
        let socket = self.layout.socket.to_string_lossy().to_string();
        let shims = process::pids_with_args("-address", &socket);
        let shim_sockets: Vec<PathBuf> = shims
            .iter()
            .filter_map(|pid| shim_socket(&socket, &process::cmdline(*pid)))
            .collect();
        if !shims.is_empty() {
            process::kill_pids(&process::with_descendants(&shims));
        }
        // Killed shims cannot remove their sockets, which live in the global /run/containerd/s.
        for path in shim_sockets {
            let _ = std::fs::remove_file(path);
        }
        process::unmount_under(self.dir.path());
    }
}

/// Where containerd 1.6-2.x put a shim's socket: `/run/containerd/s/<sha256(address/ns/id)>`
/// (`runtime/v2/shim/util_unix.go` SocketAddress), from the shim's `-namespace` and `-id` args.
pub fn shim_socket(containerd_socket: &str, shim_args: &[String]) -> Option<PathBuf> {
    let ns = process::arg_value(shim_args, "-namespace")?;
    let id = process::arg_value(shim_args, "-id")?;
    let key = format!("{containerd_socket}/{ns}/{id}");
    let hash = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    Some(PathBuf::from("/run/containerd/s").join(hex::encode(hash)))
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- tail of {} ---\n{}",
                self.log.display(),
                self.log_tail(30)
            );
        }
        self.teardown();
    }
}
