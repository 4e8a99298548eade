//! `prepull pull`: pull images into containerd now.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use futures_util::future::join_all;

use super::progress::Pulls;
use super::Output;
use crate::credentials;
use crate::platform::Platform;
use crate::pull::{PullError, PullOptions, PullReport, Puller};
use crate::reference::Reference;
use crate::registry::{self, RegistryClient};
use crate::space::{Reserve, SpaceCheck};
use crate::store::Store;

/// Arguments of `prepull pull`.
#[derive(Debug, Args)]
#[command(
    about = "Pull images into containerd now, so CRI and the kubelet find them present",
    long_about = "Pull images into containerd now, so CRI and the kubelet find them present.\n\n\
        Each image is resolved (a tag with one HEAD request), its blobs are streamed concurrently \
        and verified against their digests and sizes into containerd's content store under a \
        lease, with the GC labels containerd's own pull writes; layers are unpacked into CRI's \
        snapshotter while later ones download; and the image is recorded under the names CRI \
        gives images (tag, digest reference and image ID). Content containerd already has is \
        not downloaded again, and an interrupted pull resumes where containerd's bytes stop. \
        Images are normalized like the kubelet does: `nginx` is `docker.io/library/nginx:latest`.\n\n\
        Credentials are tried in this order: each --auth-file, the kubelet's credential-provider \
        plugins, then the node's own file where the kubelet looks for it; they match images \
        exactly as the kubelet's keyring does. Mirrors and certificates come from containerd's \
        hosts directory (--hosts-dir).",
    after_help = "Examples:\n  \
        prepull pull nginx:1.25 registry.example.com/team/app@sha256:…\n  \
        prepull pull --plain-http localhost:5000 localhost:5000/app:dev\n  \
        prepull pull --platform linux/arm64 --namespace k8s.io busybox"
)]
pub struct PullArgs {
    /// Images to pull (`name[:tag]`, `name@sha256:…`, `host:port/path:tag`).
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,

    /// Pin the images: label them `io.cri-containerd.pinned=pinned`, so the kubelet's image
    /// garbage collection leaves them alone (containerd 1.6.22+, 1.7.3+, 2.x).
    #[arg(long)]
    pub pin: bool,

    #[command(flatten)]
    pub puller: PullerArgs,

    /// Result format on stdout.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// How images are pulled: which containerd, registries, credentials and platform. Shared by
/// `prepull pull` and `prepull agent`.
#[derive(Debug, Args)]
pub struct PullerArgs {
    #[command(flatten)]
    pub containerd: super::ContainerdArgs,

    /// Platform to pick from multi-platform images [default: this node's, e.g. linux/amd64].
    /// CRI and the kubelet only use images of the node's own platform.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<Platform>,

    /// Talk plain HTTP (no TLS) to this registry host, as written in image names
    /// (e.g. `localhost:5000`). Repeatable.
    #[arg(long = "plain-http", value_name = "HOST")]
    pub plain_http: Vec<String>,

    /// Registry credentials: a Docker `config.json`, a `.dockerconfigjson` or legacy `.dockercfg`
    /// file, or a directory holding a mounted pull secret. Repeatable; earlier files are tried
    /// first. Credentials match images exactly as the kubelet's keyring matches them, and every
    /// matching credential is tried in turn until the registry accepts one.
    #[arg(long = "auth-file", value_name = "FILE")]
    pub auth_files: Vec<PathBuf>,

    /// The kubelet's credential-provider configuration (its own flag and file): plugins that
    /// match an image are run, with the kubelet's caching, for ECR, GCR/Artifact Registry, ACR…
    #[arg(long, value_name = "FILE")]
    pub image_credential_provider_config: Option<PathBuf>,

    /// Where the credential-provider plugins' binaries are (the kubelet's own flag).
    #[arg(long, value_name = "DIR")]
    pub image_credential_provider_bin_dir: Option<PathBuf>,

    /// How long a credential-provider plugin may run before it is killed and its image tried
    /// with the other credentials.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub image_credential_provider_timeout: std::time::Duration,

    /// Do not use the node's own credential files (the ones the kubelet reads: see
    /// --kubelet-root-dir); use only --auth-file.
    #[arg(long)]
    pub no_node_credentials: bool,

    /// The kubelet's root directory, where it looks for `config.json` and `.dockercfg` first.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_root_dir: PathBuf,

    /// Snapshotter to unpack into [default: the one containerd's CRI plugin uses].
    #[arg(long, value_name = "NAME", conflicts_with = "no_unpack")]
    pub snapshotter: Option<String>,

    /// Store content only; CRI unpacks at the first container start instead.
    #[arg(long)]
    pub no_unpack: bool,

    /// containerd's per-registry host configuration (`certs.d` layout: `<host>/hosts.toml` with
    /// mirrors, CAs and client certificates, or Docker-style `*.crt`/`*.cert`/`*.key` files),
    /// so prepull uses the same mirrors and certificates as the node's containerd. A missing
    /// directory is fine.
    #[arg(long, value_name = "DIR", default_value = "/etc/containerd/certs.d")]
    pub hosts_dir: PathBuf,

    /// containerd's root directory as seen from here, for the disk space check when the
    /// content store containerd reports (asked over its socket) is not visible at the same
    /// path, e.g. when containerd's root is mounted elsewhere in prepull's container.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/containerd")]
    pub containerd_root: PathBuf,

    /// Refuse an image that would leave less free space than this on containerd's filesystem:
    /// a percentage of its size or an amount (`10GiB`); `0` turns the check off. The default
    /// keeps the node out of the kubelet's disk-pressure eviction (below 15% free). With a
    /// reserve, prepull refuses to start unless it finds containerd's content store (see
    /// --containerd-root).
    #[arg(
        long,
        value_name = "PERCENT|BYTES",
        default_value = "15%",
        env = "PREPULL_MIN_FREE_SPACE"
    )]
    pub min_free_space: crate::space::Reserve,

    /// How long a pull waits for containerd to answer again when it stops answering mid-pull
    /// (containerd restarting: its systemd unit brings it back 5 s after a crash). The pull
    /// then goes on from what containerd holds: committed blobs and layers are kept and
    /// downloads resume from their partial bytes. Waited for at most 5 times in a row without
    /// the pull moving on in between; `0s` fails the pull at once.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub containerd_restart_wait: std::time::Duration,

    /// Blobs downloaded at once, across all images.
    #[arg(long, value_name = "N", default_value = "8")]
    pub max_concurrent_downloads: NonZeroUsize,

    /// Connections open to one registry host at once (requests in flight there): a pass over
    /// hundreds of tags reuses these instead of opening one connection per tag, which small
    /// mirrors and connection-limited registries drop. Idle ones are kept for reuse.
    #[arg(
        long,
        value_name = "N",
        default_value = "16",
        env = "PREPULL_MAX_CONNECTIONS_PER_REGISTRY"
    )]
    pub max_connections_per_registry: NonZeroUsize,

    /// The least progress every registry request must make: its answer within one window,
    /// then at least BYTES of body in every window. A server slower than that (one trickling
    /// a byte a second) is given up on and asked again later. The default, 64 KiB every 2
    /// minutes, is far below any real link: a 20 GB image over 1 Mbit/s brings 240 times that.
    #[arg(
        long,
        value_name = "BYTES/DURATION",
        default_value = "64KiB/2m",
        env = "PREPULL_MIN_PROGRESS"
    )]
    pub min_progress: registry::MinProgress,

    /// What is kept of a registry's announced request budget (its `ratelimit-limit` and
    /// `ratelimit-remaining` headers: Docker Hub's pull quota) for the kubelet's own pulls: a
    /// share of the limit (`20%`) or a number of requests; `0` keeps nothing. At the reserve,
    /// manifests are not fetched from that registry (the image waits for a later pass, reported
    /// `rate-limited`); HEAD checks of images the node holds, which are not counted, go on.
    #[arg(
        long,
        value_name = "PERCENT|N",
        default_value = "20%",
        env = "PREPULL_REGISTRY_BUDGET_RESERVE"
    )]
    pub registry_budget_reserve: registry::BudgetReserve,

    /// Who fetches layers into containerd. `prepull`: prepull streams each layer into
    /// containerd's content store and unpacks it, flushing each layer. `containerd`:
    /// containerd's transfer service (containerd 2.x; on 1.x prepull fetches) fetches and unpacks the layers of
    /// the manifest prepull resolved and verified, from the same hosts directory, with only the
    /// credentials prepull would send each host; prepull flushes the unpacked layers once per
    /// image before writing the records CRI reads. Faster on containerd 2.x (no copy of every
    /// byte through containerd's API); a failure there falls back to prepull's own fetch.
    #[arg(
        long,
        value_enum,
        value_name = "WHO",
        default_value = "prepull",
        env = "PREPULL_FETCHER"
    )]
    pub fetcher: crate::pull::Fetcher,
}

impl PullerArgs {
    /// Loads the credentials and host settings, connects to containerd, and returns a puller.
    /// Unusable input (a named credentials file that cannot be read, a bad flag combination) is
    /// an error before anything is fetched.
    pub async fn build(&self, pin: bool) -> anyhow::Result<Puller> {
        self.build_with(pin, false).await
    }

    /// [`PullerArgs::build`]; `lenient` keeps going when a named credentials source cannot be
    /// used yet (the agent's case: it is reported, and reloaded once it changes).
    pub async fn build_with(&self, pin: bool, lenient: bool) -> anyhow::Result<Puller> {
        let mut options = PullOptions {
            platform: self.platform.clone().unwrap_or_else(Platform::host),
            max_concurrent_downloads: self.max_concurrent_downloads,
            pin,
            unpack: None,
            space: None,
            containerd_wait: self.containerd_restart_wait,
            fetcher: self.fetcher,
            ..PullOptions::default()
        };
        let config = credentials::CredentialConfig {
            lenient,
            ..self.credential_config()?
        };
        let (sources, loaded) = credentials::Reloading::new(config, CREDENTIALS_CHECK)?;
        report_loaded(&loaded, lenient);
        let registry = RegistryClient::new(self.registry_options(), Arc::new(sources))?;
        let store = self.containerd.connect().await?;
        options.space = self.space_check(&store).await?;
        if !self.no_unpack {
            options.unpack = Some(match &self.snapshotter {
                Some(s) => s.clone(),
                None => cri_snapshotter(&self.containerd.socket).await,
            });
        }
        Ok(Puller::new(Arc::new(registry), store, options))
    }

    /// The disk space check, on the filesystem containerd writes to. Pulling with a reserve
    /// but no way to check it would let a pull fill the node's disk unnoticed, so that is
    /// refused; `--min-free-space 0` turns the check off explicitly.
    async fn space_check(&self, store: &Store) -> anyhow::Result<Option<SpaceCheck>> {
        if self.min_free_space == Reserve::Bytes(0) {
            return Ok(None);
        }
        let reported = match store.content_root().await {
            Ok(dir) => dir,
            Err(e) => {
                tracing::debug!(error = %e, "containerd does not say where its content store is");
                None
            }
        };
        let check = SpaceCheck::locate(
            reported.as_deref(),
            &self.containerd_root,
            self.min_free_space,
        )?;
        tracing::debug!(path = %check.path.display(), reserve = %self.min_free_space, "space check");
        Ok(Some(check))
    }

    /// How registries are reached: containerd's hosts directory and the plain-HTTP hosts.
    pub(crate) fn registry_options(&self) -> registry::Options {
        registry::Options {
            hosts: registry::Hosts {
                // containerd's own per-host settings; a node without them is fine.
                dir: Some(self.hosts_dir.clone()).filter(|d| d.is_dir()),
                plain_http: self.plain_http.iter().cloned().collect::<HashSet<_>>(),
            },
            min_progress: self.min_progress,
            connections_per_host: self.max_connections_per_registry,
            budget_reserve: self.registry_budget_reserve,
            ..Default::default()
        }
    }

    /// Where credentials come from, as the flags say.
    pub(crate) fn credential_config(&self) -> anyhow::Result<credentials::CredentialConfig> {
        let plugins = match (
            &self.image_credential_provider_config,
            &self.image_credential_provider_bin_dir,
        ) {
            (Some(config), Some(bin_dir)) => Some((config.clone(), bin_dir.clone())),
            (None, None) => None,
            _ => anyhow::bail!(
                "--image-credential-provider-config and --image-credential-provider-bin-dir go together"
            ),
        };
        Ok(credentials::CredentialConfig {
            auth_files: self.auth_files.clone(),
            plugins,
            plugin_timeout: Some(self.image_credential_provider_timeout),
            kubelet_root: (!self.no_node_credentials).then(|| self.kubelet_root_dir.clone()),
            lenient: false,
        })
    }
}

/// Runs `prepull pull`. Exit code 0 when every image was pulled, 1 otherwise.
pub async fn run(args: PullArgs) -> anyhow::Result<ExitCode> {
    // Validate everything before touching sockets.
    let references: Vec<Reference> = args
        .images
        .iter()
        .map(|i| Reference::parse(i))
        .collect::<Result<_, _>>()?;
    let puller = args.puller.build(args.pin).await?;

    // Each image is its own task, so one waiting on a slow credential plugin (which runs
    // outside the async workers) does not hold up the others.
    let puller = Arc::new(puller);
    let (display, progress) = Pulls::start(&references, args.output);
    let fetched: Vec<Arc<crate::pull::PullProgress>> = progress.clone();
    let tasks: Vec<_> = references
        .iter()
        .cloned()
        .zip(progress)
        .map(|(r, progress)| {
            let puller = puller.clone();
            tokio::spawn(async move { puller.pull_reporting(&r, progress).await })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for (task, reference) in join_all(tasks).await.into_iter().zip(&references) {
        results.push(task.unwrap_or_else(|e| {
            Err(PullError::Malformed {
                image: reference.to_string(),
                problem: format!("the pull stopped unexpectedly: {e}"),
            })
        }));
    }
    if let Some(display) = display {
        display.finish(&results.iter().map(Result::is_err).collect::<Vec<_>>());
    }
    let mut failed = 0;
    for ((result, reference), progress) in results.iter().zip(&references).zip(&fetched) {
        match result {
            Ok(report) => print_report(report, args.output),
            Err(e) => {
                failed += 1;
                print_error(reference, e, progress.fetched(), args.output);
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How often credential files are checked for changes while pulling.
const CREDENTIALS_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Tells the operator about credential entries that were skipped or look wrong.
fn report_loaded(loaded: &credentials::Loaded, to_log: bool) {
    // A terminal user reads plain warnings; the agent's log collector reads its log format.
    let warn = |message: String| {
        if to_log {
            tracing::warn!("{message}");
        } else {
            eprintln!("warning: {message}");
        }
    };
    for problem in &loaded.problems {
        warn(format!("credentials {problem}"));
    }
    if let Some(e) = &loaded.node_error {
        warn(format!("ignoring node credentials: {e}"));
    }
    for e in &loaded.unusable {
        warn(format!("skipping until it changes: {e}"));
    }
    if let Some(file) = &loaded.node_file {
        tracing::debug!(file = %file.display(), "node credentials");
    }
}

/// The snapshotter CRI uses, so unpacked layers are the ones containers start from.
pub(crate) async fn cri_snapshotter(socket: &std::path::Path) -> String {
    const FALLBACK: &str = "overlayfs";
    let found = match crate::cri::connect(socket).await {
        Ok(channel) => crate::cri::snapshotter(channel).await,
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    match found {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::warn!(fallback = FALLBACK, "CRI does not report its snapshotter");
            FALLBACK.to_string()
        }
        Err(e) => {
            tracing::warn!(error = %e, fallback = FALLBACK, "cannot ask CRI for its snapshotter; use --snapshotter");
            FALLBACK.to_string()
        }
    }
}

/// `n` and a noun that agrees with it: "1 layer", "3 layers".
pub(crate) fn counted(n: usize, singular: &str) -> String {
    if n == 1 {
        format!("1 {singular}")
    } else {
        format!("{n} {singular}s")
    }
}

fn print_report(r: &PullReport, output: Output) {
    match output {
        Output::Text => println!(
            "pulled {} {} ({}, {}{}, {} fetched in {}, {} already present) in {:.2}s",
            r.reference,
            r.digest,
            r.platform,
            counted(r.layers, "layer"),
            r.snapshotter
                .as_ref()
                .map(|s| format!(" unpacked into {s}"))
                .unwrap_or_default(),
            crate::space::human_bytes(r.bytes_fetched),
            counted(r.blobs_fetched, "blob"),
            r.blobs_present,
            r.elapsed.as_secs_f64()
        ),
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "image": r.reference.to_string(),
                "status": "pulled",
                "digest": r.digest,
                "id": r.config,
                "platform": r.platform.to_string(),
                "names": r.names,
                "layers": r.layers,
                "snapshotter": r.snapshotter,
                "blobs_fetched": r.blobs_fetched,
                "blobs_present": r.blobs_present,
                "bytes_fetched": r.bytes_fetched,
                "seconds": r.elapsed.as_secs_f64(),
            })
        ),
    }
}

/// `reference` is the image as normalized, the same name a pulled image's object carries, so
/// JSON consumers can match every result to its image.
/// `bytes_fetched` is what the failed pull downloaded (a later pull resumes from it).
fn print_error(reference: &Reference, e: &PullError, bytes_fetched: u64, output: Output) {
    let message = crate::error_chain(e);
    match output {
        Output::Text => eprintln!("error: {message}"),
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "image": reference.to_string(),
                "status": "failed",
                "kind": e.kind(),
                "error": message,
                "bytes_fetched": bytes_fetched,
            })
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::counted;

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(counted(0, "layer"), "0 layers");
        assert_eq!(counted(1, "layer"), "1 layer");
        assert_eq!(counted(2, "blob"), "2 blobs");
    }
}
