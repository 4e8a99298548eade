//! A real, private containerd: its own config, root, state, sockets and log in a temp dir, with the
//! CRI plugin on. Killed (with any shims and their containers) and cleaned up on Drop.
//!
//! Three release series can run: the system's own (Debian bookworm's 1.6, from `PATH`), and 1.7
//! and 2.x unpacked from Debian trixie / forky by `scripts/containerd-versions.sh` into
//! [`CACHE_ENV`] (default [`DEFAULT_CACHE`]). `PREPULL_TEST_CONTAINERD=1.7` (see [`VERSION_ENV`])
//! makes [`Containerd::start`] run that series, so the same integration tests run against each.
//!
//! The snapshotter CRI unpacks into is `native` unless `PREPULL_TEST_SNAPSHOTTER=overlayfs` (see
//! [`SNAPSHOTTER_ENV`]) picks the one real nodes run; tests ask [`Containerd::snapshotter`] rather
//! than naming one.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use containerd_client::services::v1::version_client::VersionClient;
use tonic::transport::Channel;

use super::process::{self, Deadline};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Chooses the containerd series tests run against: `1.6` (default), `1.7`, `2.1`, ...
pub const VERSION_ENV: &str = "PREPULL_TEST_CONTAINERD";
/// Chooses the snapshotter the bench's containerds give CRI: `native` (default) or `overlayfs`.
pub const SNAPSHOTTER_ENV: &str = "PREPULL_TEST_SNAPSHOTTER";
/// The snapshotters [`SNAPSHOTTER_ENV`] may name.
pub const SNAPSHOTTERS: [&str; 2] = ["native", "overlayfs"];
/// Where `scripts/containerd-versions.sh` unpacks the non-system containerds (same variable there).
pub const CACHE_ENV: &str = "PREPULL_CONTAINERD_CACHE";
pub const DEFAULT_CACHE: &str = "/var/cache/prepull-test";
/// The script that installs the series the system lacks.
pub const INSTALL_SCRIPT: &str = "scripts/containerd-versions.sh";

/// A containerd release series, `major.minor`: what decides the config format and which CRI
/// behaviours to expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    pub major: u32,
    pub minor: u32,
}

impl Series {
    pub const V1_6: Series = Series { major: 1, minor: 6 };
    pub const V1_7: Series = Series { major: 1, minor: 7 };
    pub const V2_1: Series = Series { major: 2, minor: 1 };

    /// `"1.7"` (or a full version such as `"1.7.24~ds1"`, `"v2.1.9"`).
    pub fn parse(s: &str) -> Option<Series> {
        let mut parts = s.trim().trim_start_matches('v').split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts
            .next()?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        Some(Series { major, minor })
    }

    /// The series named by [`VERSION_ENV`], 1.6 when unset. Panics on an unparsable value.
    pub fn from_env() -> Series {
        match std::env::var(VERSION_ENV) {
            Ok(v) if !v.trim().is_empty() => Series::parse(&v).unwrap_or_else(|| {
                panic!("{VERSION_ENV}={v:?} is not a containerd series like 1.6, 1.7 or 2.1")
            }),
            _ => Series::V1_6,
        }
    }

    /// The `version` of containerd's config format: 2 for 1.x, 3 for 2.x.
    pub fn config_version(self) -> u32 {
        if self.major >= 2 {
            3
        } else {
            2
        }
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The snapshotter named by [`SNAPSHOTTER_ENV`], `native` when unset. Panics on any other value.
pub fn snapshotter_from_env() -> String {
    match std::env::var(SNAPSHOTTER_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            let v = v.trim();
            if !SNAPSHOTTERS.contains(&v) {
                panic!(
                    "{SNAPSHOTTER_ENV}={v:?} is not a snapshotter the bench runs: use one of {}",
                    SNAPSHOTTERS.join(", ")
                );
            }
            v.to_string()
        }
        _ => "native".to_string(),
    }
}

/// What varies between bench containerds; only [`render_config`] and [`locate`] read it.
#[derive(Clone, Debug)]
pub struct ContainerdOptions {
    /// The containerd series to run (and render the config for); defaults to [`VERSION_ENV`].
    pub version: Series,
    /// An explicit containerd binary (a bare name is looked up in `PATH`); it must belong to
    /// `version`. `None` finds `version` in the cache dir, then in `PATH`.
    pub binary: Option<PathBuf>,
    /// The snapshotter CRI uses (and `ctr` should be told to use); defaults to
    /// [`SNAPSHOTTER_ENV`].
    pub snapshotter: String,
    /// CRI's sandbox ("pause") image; `None` keeps containerd's default, which is never pulled
    /// unless a test runs a pod.
    pub sandbox_image: Option<String>,
    /// Put containerd's root (content store, snapshots, metadata) on a tmpfs of this many bytes,
    /// to run it out of space.
    pub root_tmpfs_bytes: Option<u64>,
    /// CRI flushes each layer's files to disk before committing its snapshot
    /// (`image_pull_with_sync_fs`, containerd 1.7.14+ and 2.x; on 2.x it also makes CRI pull
    /// through its local pull rather than the transfer service), as prepull always does.
    pub cri_sync_fs: bool,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            version: Series::from_env(),
            binary: None,
            snapshotter: snapshotter_from_env(),
            sandbox_image: None,
            root_tmpfs_bytes: None,
            cri_sync_fs: false,
        }
    }
}

/// A containerd build found on this machine.
#[derive(Clone, Debug)]
pub struct Install {
    /// The daemon.
    pub containerd: PathBuf,
    /// Its directory when it is not the system's: put first in the daemon's `PATH` so that it
    /// starts its own release's shim, and where its own `ctr` lives.
    pub bin_dir: Option<PathBuf>,
    /// As `containerd --version` reports it, e.g. `1.7.24~ds1`.
    pub version: String,
    pub series: Series,
}

impl Install {
    /// The `ctr` of the same release (the system's for the system's containerd).
    pub fn ctr(&self) -> PathBuf {
        match &self.bin_dir {
            Some(dir) if dir.join("ctr").exists() => dir.join("ctr"),
            _ => PathBuf::from("ctr"),
        }
    }
}

/// The cache dir `scripts/containerd-versions.sh` fills.
pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// Finds a containerd of `opts.version`: `opts.binary` if given, else the cache dir's
/// `containerd-<series>`, else the system's. Panics naming [`INSTALL_SCRIPT`] when there is none.
pub fn locate(opts: &ContainerdOptions) -> Install {
    let want = opts.version;
    let candidates: Vec<(PathBuf, Option<PathBuf>)> = match &opts.binary {
        Some(binary) => vec![(
            binary.clone(),
            binary
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf),
        )],
        None => {
            let dir = cache_dir()
                .join(format!("containerd-{want}"))
                .join("usr/bin");
            vec![
                (dir.join("containerd"), Some(dir)),
                (PathBuf::from("containerd"), None),
            ]
        }
    };
    let mut seen = Vec::new();
    for (containerd, bin_dir) in candidates {
        match binary_version(&containerd) {
            Some(version) if Series::parse(&version) == Some(want) => {
                return Install {
                    containerd,
                    bin_dir,
                    version,
                    series: want,
                }
            }
            Some(version) => seen.push(format!("{} is {version}", containerd.display())),
            None if containerd.components().count() > 1 && !containerd.exists() => {
                seen.push(format!("{} is missing", containerd.display()))
            }
            None => seen.push(format!("{} does not run", containerd.display())),
        }
    }
    panic!(
        "containerd {want} is not installed ({VERSION_ENV}={want}): {}. Run {INSTALL_SCRIPT} \
         (as root) to unpack containerd 1.7 and 2.x from Debian into {} ({CACHE_ENV} overrides \
         the dir); containerd 1.6 is the system's, from scripts/setup.sh.",
        seen.join("; "),
        cache_dir().display()
    )
}

/// `containerd --version`'s version field (`containerd github.com/containerd/containerd 1.6.20~ds1
/// 1.6.20~ds1-1+deb12u3`), remembered per binary: every test starts a containerd.
fn binary_version(binary: &Path) -> Option<String> {
    static SEEN: OnceLock<Mutex<HashMap<PathBuf, Option<String>>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(v) = seen.lock().unwrap_or_else(|p| p.into_inner()).get(binary) {
        return v.clone();
    }
    let version = Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .map(|v| v.trim_start_matches('v').to_string())
        });
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(binary.to_path_buf(), version.clone());
    version
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
    pub fn new(dir: &Path) -> Self {
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

/// The config for one bench instance of `opts.version`: format `version = 2` for containerd 1.x,
/// `version = 3` (CRI split into `io.containerd.cri.v1.images` / `.runtime`) for 2.x.
///
/// Everything that would otherwise use a global path or port is redirected into the temp dir or
/// disabled, so instances never see each other or the host's containerd.
pub fn render_config(opts: &ContainerdOptions, layout: &Layout) -> String {
    let series = opts.version;
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    let mut config = format!(
        r#"version = {format}
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
"#,
        format = series.config_version(),
        root = q(&layout.root),
        state = q(&layout.state),
        socket = q(&layout.socket),
        ttrpc = q(&layout.ttrpc_socket),
    );
    let snapshotter = toml_string(&opts.snapshotter);
    let sync_fs = if opts.cri_sync_fs {
        "  image_pull_with_sync_fs = true\n"
    } else {
        ""
    };
    let runc_root = q(&layout.state.join("runc"));
    let cni_bin = q(&layout.cni_bin_dir);
    let cni_conf = q(&layout.cni_conf_dir);
    if series.major >= 2 {
        let sandbox = opts
            .sandbox_image
            .as_deref()
            .map(|s| {
                format!(
                    "  [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n    sandbox = {}\n",
                    toml_string(s)
                )
            })
            .unwrap_or_default();
        // containerd 2.1 reads a list of CNI binary dirs; 2.0 only the single `bin_dir`.
        let cni_bin_key = if series >= Series::V2_1 {
            format!("bin_dirs = [{cni_bin}]")
        } else {
            format!("bin_dir = {cni_bin}")
        };
        config.push_str(&format!(
            r#"
# CRI's gRPC service (streaming server on a random loopback port).
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = {snapshotter}
{sync_fs}{sandbox}
[plugins."io.containerd.cri.v1.runtime"]
  # This machine lacks CAP_SYS_RESOURCE: without it runc fails to start containers.
  restrict_oom_score_adj = true
  # Pod network namespaces would otherwise be mounted under the global /var/run/netns.
  netns_mounts_under_state_dir = true
  # Declaring the runc runtime replaces the default entry, so its type must be restated.
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  # runc keeps container state under /run/containerd/runc by default; two instances must not share it.
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
    Root = {runc_root}
  [plugins."io.containerd.cri.v1.runtime".cni]
    {cni_bin_key}
    conf_dir = {cni_conf}
"#
        ));
    } else {
        let sandbox = opts
            .sandbox_image
            .as_deref()
            .map(|s| format!("  sandbox_image = {}\n", toml_string(s)))
            .unwrap_or_default();
        config.push_str(&format!(
            r#"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # This machine lacks CAP_SYS_RESOURCE: without it runc fails to start containers.
  restrict_oom_score_adj = true
  # Pod network namespaces would otherwise be mounted under the global /var/run/netns.
  netns_mounts_under_state_dir = true
{sync_fs}{sandbox}  [plugins."io.containerd.grpc.v1.cri".containerd]
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
"#
        ));
    }
    if series >= Series::V1_7 {
        config.push_str(
            r#"
# NRI (1.7+) listens on the global /var/run/nri/nri.sock; 2.x enables it by default.
[plugins."io.containerd.nri.v1.nri"]
  disable = true
"#,
        );
    }
    config
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
    install: Install,
    dir: process::BenchDir,
}

impl Containerd {
    /// The series [`VERSION_ENV`] names (default: the system's 1.6), CRI on, the snapshotter
    /// [`SNAPSHOTTER_ENV`] names (default `native`).
    pub async fn start() -> Containerd {
        Self::start_with(ContainerdOptions::default()).await
    }

    pub async fn start_with(opts: ContainerdOptions) -> Containerd {
        let install = locate(&opts);
        let dir = process::tempdir("bench-containerd-");
        let layout = Layout::new(dir.path());
        for d in [&layout.cni_conf_dir, &layout.cni_bin_dir] {
            std::fs::create_dir_all(d).expect("create CNI dirs");
        }
        if let Some(bytes) = opts.root_tmpfs_bytes {
            std::fs::create_dir_all(&layout.root).expect("create containerd's root");
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(&layout.root)
                .status()
                .expect("run mount");
            assert!(
                status.success(),
                "mount a tmpfs on containerd's root: {status}"
            );
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, render_config(&opts, &layout)).expect("write containerd config");
        let log = dir.path().join("containerd.log");
        let child = process::spawn_logged(daemon_command(&install, &config), &log);
        let mut me = Containerd {
            child: Some(child),
            layout,
            log,
            opts,
            install,
            dir,
        };
        me.wait_ready().await;
        me
    }

    /// Kills the daemon with SIGKILL (a crash), keeping its root, state and socket path.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_child(&mut child);
        }
    }

    /// Starts the daemon again on the same root, state and socket, as after a crash or an
    /// upgrade, and waits until it is ready. Its log goes on in `containerd.restart.log`.
    pub async fn restart(&mut self) {
        self.kill();
        self.start_again().await;
    }

    /// Starts the daemon again after [`Containerd::kill`], on the same root, state and socket
    /// (as systemd does after a crash), and waits until it is ready. Its log goes on in
    /// `containerd.restart.log`.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "containerd still runs: kill it first");
        let config = self.dir.path().join("config.toml");
        let log = self.dir.path().join("containerd.restart.log");
        self.child = Some(process::spawn_logged(
            daemon_command(&self.install, &config),
            &log,
        ));
        self.log = log;
        self.wait_ready().await;
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
            "containerd {version} ({binary}): {why}\n--- errors in {log} ---\n{errors}\n--- tail of {log} ---\n{tail}",
            version = self.install.version,
            binary = self.install.containerd.display(),
            log = self.log.display()
        );
    }

    pub fn socket(&self) -> &Path {
        &self.layout.socket
    }

    /// The daemon's process ID, while it runs (for benches reading its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

    /// The build that runs, with its exact version (e.g. `2.1.9+unknown`).
    pub fn install(&self) -> &Install {
        &self.install
    }

    /// The running release series.
    pub fn series(&self) -> Series {
        self.install.series
    }

    /// Asserts that containerd's own `ctr images check` finds every blob of the image named
    /// `name` (a record name in `k8s.io` starting with it) present: "complete".
    pub fn assert_image_complete(&self, name: &str) {
        let check = self.ctr_ok(&["-n", "k8s.io", "images", "check"]);
        let line = check
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("ctr images check does not list {name}:\n{check}"));
        assert!(line.contains("complete"), "ctr images check: {line}");
    }

    /// Runs the same release's `ctr --address <socket> <args>` (callers add `-n k8s.io` etc.).
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(self.install.ctr())
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

/// The daemon's command line for `config`, with the release's own shim first in `PATH`.
fn daemon_command(install: &Install, config: &Path) -> Command {
    let mut cmd = Command::new(&install.containerd);
    cmd.arg("--config")
        .arg(config)
        .arg("--log-level")
        .arg("info");
    if let Some(bin_dir) = &install.bin_dir {
        // containerd looks its shim up in PATH: it must start its own release's shim, not the
        // system's.
        let mut path = OsString::from(bin_dir.as_os_str());
        if let Some(rest) = std::env::var_os("PATH") {
            path.push(":");
            path.push(rest);
        }
        cmd.env("PATH", path);
    }
    cmd
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
