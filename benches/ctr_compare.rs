//! `ctr_compare`: wall time, peak memory and CPU of `prepull pull` against containerd's own `ctr`,
//! each pulling the same images from a loopback docker-registry into a fresh containerd, plus the
//! machine's `dd … conv=fsync` floor for writing the same number of bytes.
//!
//! Run with `cargo bench --bench ctr_compare [-- --runs N --workloads w1,w5,w6 --modes fetch,pull]`.
//! Prints a markdown report to stdout and writes it to `benches/results/ctr_compare.md`; progress
//! goes to stderr.
//!
//! Workloads (pushed once into one registry kept for the whole run):
//! - W1: one image, 8 layers x 32 MiB;
//! - W3: one image, a single 512 MiB layer;
//! - W4: 100 images x 3 layers x 1 MiB;
//! - W5: W1 through an emulated WAN: the registry (serving the same storage) in its own network
//!   namespace behind a veth pair with `tc netem` delay and rate on both ends (see [`Wan`]);
//! - W6: steady state: 200 small images already pulled by the same tool into the same containerd,
//!   then one more pass over all 200 tags, through a recording proxy that counts every request.
//!
//! Two modes compare like with like:
//! - `fetch`: `prepull pull --no-unpack` against `ctr content fetch` (content store + image record);
//! - `pull`: `prepull pull` (which unpacks into CRI's snapshotter) against `ctr images pull` into
//!   the same snapshotter. W4 in this mode is a loop of 100 `ctr images pull`.
//!
//! A prepull without `--no-unpack` (before it learnt to unpack) only stores content, so then only
//! the `fetch` mode runs, against `ctr content fetch`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::stream::{self, StreamExt as _};
use rand::RngCore as _;
use support::{push_image, Containerd, ImageSpec, Proxy, PushedImage, Registry};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// GNU time; `-f %M` prints the child's peak RSS in KiB.
const GNU_TIME: &str = "/usr/bin/time";
/// W4 pushes this many images at once: enough to keep the registry busy, few enough not to drown
/// 2 cores in layer generation.
const PUSH_CONCURRENCY: usize = 8;
/// The fsync floor is a median too, so it needs a few samples even when `--runs` is 1 or 2.
const MIN_FLOOR_RUNS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum WorkloadId {
    W1,
    W3,
    W4,
    W5,
    W6,
}

impl WorkloadId {
    const ALL: [WorkloadId; 5] = [
        WorkloadId::W1,
        WorkloadId::W3,
        WorkloadId::W4,
        WorkloadId::W5,
        WorkloadId::W6,
    ];

    fn parse(s: &str) -> anyhow::Result<WorkloadId> {
        match s.trim().to_ascii_lowercase().as_str() {
            "w1" => Ok(WorkloadId::W1),
            "w3" => Ok(WorkloadId::W3),
            "w4" => Ok(WorkloadId::W4),
            "w5" => Ok(WorkloadId::W5),
            "w6" => Ok(WorkloadId::W6),
            other => bail!("unknown workload {other:?} (known: w1, w3, w4, w5, w6)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            WorkloadId::W1 => "W1",
            WorkloadId::W3 => "W3",
            WorkloadId::W4 => "W4",
            WorkloadId::W5 => "W5",
            WorkloadId::W6 => "W6",
        }
    }

    fn description(self) -> &'static str {
        match self {
            WorkloadId::W1 => "1 image, 8 layers x 32 MiB",
            WorkloadId::W3 => "1 image, 1 layer x 512 MiB",
            WorkloadId::W4 => "100 images x 3 layers x 1 MiB",
            WorkloadId::W5 => "W1 over an emulated WAN",
            WorkloadId::W6 => "200 images already present, pulled again",
        }
    }

    /// Big single-image workloads take long enough per run that 3 runs already say a lot on 2 cores.
    fn default_runs(self) -> usize {
        match self {
            WorkloadId::W1 | WorkloadId::W5 => 5,
            WorkloadId::W3 | WorkloadId::W4 | WorkloadId::W6 => 3,
        }
    }

    /// (number of images, layer sizes of each)
    fn shape(self) -> (usize, Vec<usize>) {
        match self {
            WorkloadId::W1 | WorkloadId::W5 => (1, vec![32 * MIB; 8]),
            WorkloadId::W3 => (1, vec![512 * MIB]),
            WorkloadId::W4 => (100, vec![MIB; 3]),
            // Small layers: W6 is about requests and bookkeeping, not bytes.
            WorkloadId::W6 => (200, vec![256 * KIB]),
        }
    }

    /// Whether each run first pulls everything once (untimed) and then times a second pass.
    fn warm(self) -> bool {
        self == WorkloadId::W6
    }
}

struct Args {
    runs: Option<usize>,
    workloads: Vec<WorkloadId>,
    /// Longest wait for a quiet machine before each timed run; zero skips the check.
    quiet_wait: Duration,
    /// Record `perf` profiles of every timed run into this dir (see [`Profiler`]).
    profile: Option<PathBuf>,
    /// Where the report goes instead of `benches/results/ctr_compare.md`.
    report: Option<PathBuf>,
    /// `None`: every mode this prepull supports.
    modes: Option<Vec<Mode>>,
}

const USAGE: &str = "usage: cargo bench --bench ctr_compare -- [--runs N] [--workloads w1,w3,w4,w5,w6] [--modes fetch,pull] [--quiet-wait SECS]\n\
    --runs N          runs per tool, mode and workload (default: W1 5, W3 3, W4 3, W5 5, W6 3)\n\
    --workloads LIST  which workloads to run (default: w1,w3,w4,w5,w6; w5 needs ip and tc)\n\
    --modes LIST      fetch: prepull --no-unpack vs ctr content fetch; pull: prepull vs ctr images pull (default: both, when prepull unpacks)\n\
    --quiet-wait SECS before each run, wait up to SECS for other work on the machine to stop (default 120; 0: do not wait)\n\
    --profile DIR     record perf profiles of the client, containerd and the registry during every timed run into DIR\n\
                      (the report then goes to DIR/ctr_compare.md, not benches/results; benches/profile.sh uses this)\n\
    --report FILE     write the report to FILE instead of benches/results/ctr_compare.md (e.g. for trial runs)";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: None,
        workloads: WorkloadId::ALL.to_vec(),
        quiet_wait: Duration::from_secs(120),
        profile: None,
        report: None,
        modes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = |name: &str| -> anyhow::Result<String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| anyhow!("{name} needs a value\n{USAGE}"))
        };
        match key.as_str() {
            // cargo passes --bench to every harness = false bench.
            "--bench" => {}
            "--runs" => {
                let v = value("--runs")?;
                let n: usize = v
                    .parse()
                    .with_context(|| format!("--runs {v:?} is not a number"))?;
                if n == 0 {
                    bail!("--runs must be at least 1");
                }
                args.runs = Some(n);
            }
            "--workloads" => {
                let v = value("--workloads")?;
                let mut seen = HashSet::new();
                args.workloads = v
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(WorkloadId::parse)
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .into_iter()
                    .filter(|w| seen.insert(*w))
                    .collect();
                if args.workloads.is_empty() {
                    bail!("--workloads names no workload\n{USAGE}");
                }
            }
            "--modes" => {
                let v = value("--modes")?;
                let mut seen = HashSet::new();
                let modes: Vec<Mode> = v
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(Mode::parse)
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .into_iter()
                    .filter(|m| seen.insert(*m))
                    .collect();
                if modes.is_empty() {
                    bail!("--modes names no mode\n{USAGE}");
                }
                args.modes = Some(modes);
            }
            "--profile" => args.profile = Some(PathBuf::from(value("--profile")?)),
            "--report" => args.report = Some(PathBuf::from(value("--report")?)),
            "--quiet-wait" => {
                let v = value("--quiet-wait")?;
                let secs: u64 = v
                    .parse()
                    .with_context(|| format!("--quiet-wait {v:?} is not a number of seconds"))?;
                args.quiet_wait = Duration::from_secs(secs);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

/// One workload as pushed: references to pull and every blob that must end up in containerd.
struct Workload {
    id: WorkloadId,
    runs: usize,
    /// The registry host the images are pulled from (`--plain-http` for prepull).
    host: String,
    /// How the clients reach the registry.
    via: Via,
    /// The emulated link (W5), kept for the report after the link is gone.
    link: Option<LinkInfo>,
    images: Vec<String>,
    /// Manifests, configs and layers of all images.
    digests: Vec<String>,
    /// Sum of the sizes of `digests`: what either tool has to fetch and store.
    bytes: u64,
    /// The manifests' share of `bytes`; prepull's `bytes_fetched` leaves manifests out.
    manifest_bytes: u64,
    /// Layers over all images: the snapshots an unpack must leave behind (all layers differ).
    layers: usize,
    /// (repository, digest) of every config and layer, for [`wire_floor`].
    blobs: Vec<(String, String)>,
}

impl Workload {
    fn from_pushed(
        id: WorkloadId,
        runs: usize,
        host: &str,
        pushed: Vec<(String, PushedImage)>,
    ) -> Self {
        let mut digests = Vec::new();
        let mut bytes = 0;
        let mut manifest_bytes = 0;
        let mut layers = 0;
        let mut images = Vec::new();
        let mut blobs = Vec::new();
        for (repo_tag, image) in pushed {
            images.push(format!("{host}/{repo_tag}"));
            let repo = repo_tag.split(':').next().unwrap_or_default().to_string();
            for blob in std::iter::once(&image.config).chain(image.layers.iter()) {
                blobs.push((repo.clone(), blob.digest.clone()));
            }
            manifest_bytes += image.manifest.size;
            layers += image.layers.len();
            for blob in std::iter::once(&image.manifest)
                .chain(std::iter::once(&image.config))
                .chain(image.layers.iter())
            {
                digests.push(blob.digest.clone());
                bytes += blob.size;
            }
        }
        Workload {
            id,
            runs,
            host: host.to_string(),
            via: Via::Loopback,
            link: None,
            images,
            digests,
            bytes,
            manifest_bytes,
            layers,
            blobs,
        }
    }

    fn mib(&self) -> f64 {
        self.bytes as f64 / MIB as f64
    }

    /// Pulls the same images from `via`'s host from now on (it serves the same registry storage).
    fn serve_via(&mut self, via: Via) {
        let host = match &via {
            Via::Loopback => return,
            Via::Wan(wan) => {
                self.link = Some(wan.info());
                wan.host()
            }
            Via::Proxy(proxy) => proxy.host(),
        };
        for image in &mut self.images {
            if let Some(rest) = image.strip_prefix(&format!("{}/", self.host)) {
                *image = format!("{host}/{rest}");
            }
        }
        self.host = host;
        self.via = via;
    }

    /// The registry process serving this workload, when it is not the bench's loopback one.
    fn own_registry_pid(&self) -> Option<u32> {
        match &self.via {
            Via::Wan(wan) => wan.registry_pid,
            Via::Loopback | Via::Proxy(_) => None,
        }
    }
}

/// How the clients reach the registry.
enum Via {
    /// The bench's registry on loopback, directly.
    Loopback,
    /// A second registry process on the same storage, in its own network namespace (W5).
    Wan(Wan),
    /// The bench's registry behind a recording proxy that counts every request (W6).
    Proxy(Proxy),
}

/// Downloads every config and layer of `w` at once from its host with a bare HTTP client,
/// discarding the bytes, `runs` times: what the link delivers with no containerd, no hashing and
/// no disk behind it, the practical floor for W5 over the emulated link.
async fn wire_floor(w: &Workload, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let fetched = futures_util::future::try_join_all(w.blobs.iter().map(|(repo, digest)| {
            let url = format!("http://{}/v2/{repo}/blobs/{digest}", w.host);
            let client = client.clone();
            async move {
                let mut response = client.get(&url).send().await?.error_for_status()?;
                let mut n = 0u64;
                while let Some(chunk) = response.chunk().await? {
                    n += chunk.len() as u64;
                }
                Ok::<u64, reqwest::Error>(n)
            }
        }))
        .await
        .context("download the blobs for the wire floor")?;
        out.push(started.elapsed());
        let got: u64 = fetched.iter().sum();
        if got != w.bytes - w.manifest_bytes {
            bail!(
                "the wire floor fetched {got} bytes, expected {}",
                w.bytes - w.manifest_bytes
            );
        }
    }
    Ok(out)
}

/// The emulated link between the node and the registry.
#[derive(Clone, Copy, Debug)]
struct LinkSpec {
    /// Round trip: half of it is added in each direction.
    rtt_ms: u32,
    /// Rate in each direction, in Mbit/s (10^6 bits per second).
    rate_mbit: u64,
    /// MTU of the TUN wire (the netem veth keeps its default and its offloads).
    tun_mtu: u32,
}

impl LinkSpec {
    /// What W5 emulates: a registry in the same region, over a fast link.
    ///
    /// The TUN wire's 64 KB packets stand for what TSO/GRO hand the TCP stack on a real NIC: at
    /// 9000 bytes the userspace forwarder alone burnt 0.8 CPU-s per W5 run (registry side),
    /// which on 2 cores decided the result more than the link did. The cost in realism: slow
    /// start reaches a bandwidth-delay product (2.5 MB) in about 2 round trips instead of 7.
    const W5: LinkSpec = LinkSpec {
        rtt_ms: 20,
        rate_mbit: 1000,
        tun_mtu: 65000,
    };

    /// The link's rate in 10^6 bytes per second.
    fn mbytes_per_sec(self) -> f64 {
        self.rate_mbit as f64 / 8.0
    }

    fn describe(self) -> String {
        format!(
            "{} ms RTT, {} Mbit/s ({:.0} MB/s)",
            self.rtt_ms,
            self.rate_mbit,
            self.mbytes_per_sec()
        )
    }
}

/// What the report says about W5's link once it is gone.
#[derive(Clone, Debug)]
struct LinkInfo {
    spec: LinkSpec,
    /// Median of a few HTTP round trips over the link before the runs.
    measured_rtt: Option<Duration>,
    /// How the link was emulated.
    emulation: String,
    /// [`wire_floor`] runs over the link, before the tools' runs.
    wire: Vec<Duration>,
}

/// Network namespace and interface names start with these, followed by the bench's pid, so a
/// later run can tell (and remove) what a killed run left behind.
const NETNS_PREFIX: &str = "prepull-bench-";
const VETH_PREFIX: &str = "ppb";

/// How [`Wan`] delays and paces packets.
enum Emulation {
    /// A veth pair with `tc netem delay RTT/2 rate R` on both ends (kernel `sch_netem`).
    Netem,
    /// Kernels without `sch_netem` (e.g. small VM kernels): a TUN device in each namespace, `tc
    /// tbf rate R` on both, and a forwarder in this process that moves every IP packet from one
    /// TUN to the other after RTT/2.
    // Held for its Drop, which stops the forwarder and removes the devices.
    TunWire(#[allow(dead_code)] TunWire),
}

/// An emulated WAN: docker-registry serving the bench registry's storage inside its own network
/// namespace, joined to the root namespace by a link with delay and rate in both directions
/// (see [`Emulation`]). Both clients reach it at the namespace end's address. Drop kills the
/// registry, stops the forwarder and deletes the namespace and the interfaces (with their
/// qdiscs), whatever state setup reached.
struct Wan {
    netns: String,
    /// The root namespace's interface; its peer lives in `netns`.
    if_root: String,
    if_peer: String,
    /// `10.231.N.1` (root end) and `.2` (the registry's end).
    addr_root: String,
    addr_registry: String,
    port: u16,
    link: LinkSpec,
    emulation: Option<Emulation>,
    registry: Option<std::process::Child>,
    registry_pid: Option<u32>,
    measured_rtt: Option<Duration>,
    dir: tempfile::TempDir,
}

/// Runs `program args` and fails with its stderr unless it succeeds.
fn run_checked(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a cleanup command, ignoring failure (the thing may already be gone).
fn run_quiet(program: &str, args: &[&str]) {
    let _ = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Wan {
    /// Removes namespaces and links that an earlier, killed bench run left behind (their pid no
    /// longer runs).
    fn remove_stale() {
        let dead = |name: &str, prefix: &str| {
            name.strip_prefix(prefix)
                .and_then(|rest| {
                    rest.trim_end_matches(|c: char| !c.is_ascii_digit())
                        .parse::<u32>()
                        .ok()
                })
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        };
        if let Ok(list) = run_checked("ip", &["netns", "list"]) {
            for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if dead(name, NETNS_PREFIX) {
                    eprintln!("removing network namespace {name} left by an earlier run");
                    run_quiet("ip", &["netns", "delete", name]);
                }
            }
        }
        if let Ok(list) = run_checked("ip", &["-o", "link", "show"]) {
            for line in list.lines() {
                // `7: ppb1234r@if6: <...>`
                let Some(name) = line
                    .split(':')
                    .nth(1)
                    .map(|n| n.trim().split('@').next().unwrap_or(""))
                else {
                    continue;
                };
                if dead(name, VETH_PREFIX) {
                    eprintln!("removing link {name} left by an earlier run");
                    run_quiet("ip", &["link", "delete", name]);
                }
            }
        }
    }

    /// A /24 in 10.231.0.0/16 that no interface or route of this machine uses yet.
    fn free_subnet() -> anyhow::Result<String> {
        let addrs = run_checked("ip", &["-o", "addr", "show"])?;
        let routes = run_checked("ip", &["route", "show", "table", "all"])?;
        for third in 0..=255u32 {
            let prefix = format!("10.231.{third}.");
            if !addrs.contains(&prefix) && !routes.contains(&prefix) {
                return Ok(format!("10.231.{third}"));
            }
        }
        bail!("no free /24 in 10.231.0.0/16 for the emulated WAN")
    }

    /// Whether this kernel has `sch_netem` (tried on a throwaway dummy-free target: a qdisc on
    /// the namespace's loopback).
    fn has_netem(netns: &str) -> bool {
        let ok = run_checked(
            "ip",
            &[
                "netns", "exec", netns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                "delay", "1ms",
            ],
        )
        .is_ok();
        run_quiet(
            "ip",
            &[
                "netns", "exec", netns, "tc", "qdisc", "del", "dev", "lo", "root",
            ],
        );
        ok
    }

    /// Sets up the namespace and the link, and starts a registry on `storage`.
    async fn start(storage: &Path, link: LinkSpec) -> anyhow::Result<Wan> {
        for tool in ["ip", "tc"] {
            if find_in_path(tool).is_none() {
                bail!("W5 needs `{tool}` (package iproute2; scripts/setup.sh installs it)");
            }
        }
        Wan::remove_stale();
        let pid = std::process::id();
        let subnet = Wan::free_subnet()?;
        let dir = tempfile::Builder::new()
            .prefix("bench-wan-")
            .tempdir()
            .context("create the WAN registry's dir")?;
        let mut wan = Wan {
            netns: format!("{NETNS_PREFIX}{pid}"),
            if_root: format!("{VETH_PREFIX}{pid}r"),
            if_peer: format!("{VETH_PREFIX}{pid}n"),
            addr_root: format!("{subnet}.1"),
            addr_registry: format!("{subnet}.2"),
            port: 5000,
            link,
            emulation: None,
            registry: None,
            registry_pid: None,
            measured_rtt: None,
            dir,
        };
        // From here on, Drop removes whatever was set up.
        run_checked("ip", &["netns", "add", &wan.netns])?;
        wan.in_ns(&["ip", "link", "set", "lo", "up"])?;
        wan.emulation = Some(if Wan::has_netem(&wan.netns) {
            wan.setup_netem()?;
            Emulation::Netem
        } else {
            Emulation::TunWire(wan.setup_tun_wire()?)
        });
        wan.start_registry(storage).await?;
        wan.measured_rtt = Some(wan.measure_rtt().await?);
        Ok(wan)
    }

    fn in_ns(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", self.netns.as_str()];
        all.extend_from_slice(args);
        run_checked("ip", &all)
    }

    /// Addresses, MTU and up on both ends, then `qdisc` (e.g. `netem …`) on both.
    fn configure_ends(&self, mtu: Option<u32>, qdisc: &[&str]) -> anyhow::Result<()> {
        let (root, peer) = (self.if_root.as_str(), self.if_peer.as_str());
        let root_cidr = format!("{}/24", self.addr_root);
        let peer_cidr = format!("{}/24", self.addr_registry);
        run_checked("ip", &["addr", "add", &root_cidr, "dev", root])?;
        self.in_ns(&["ip", "addr", "add", &peer_cidr, "dev", peer])?;
        if let Some(mtu) = mtu {
            let mtu = mtu.to_string();
            run_checked("ip", &["link", "set", root, "mtu", &mtu])?;
            self.in_ns(&["ip", "link", "set", peer, "mtu", &mtu])?;
        }
        run_checked("ip", &["link", "set", root, "up"])?;
        self.in_ns(&["ip", "link", "set", peer, "up"])?;
        let mut on_root = vec!["qdisc", "add", "dev", root, "root"];
        on_root.extend_from_slice(qdisc);
        run_checked("tc", &on_root)?;
        let mut on_peer = vec!["tc", "qdisc", "add", "dev", peer, "root"];
        on_peer.extend_from_slice(qdisc);
        self.in_ns(&on_peer)?;
        Ok(())
    }

    fn setup_netem(&self) -> anyhow::Result<()> {
        run_checked(
            "ip",
            &[
                "link",
                "add",
                &self.if_root,
                "type",
                "veth",
                "peer",
                "name",
                &self.if_peer,
            ],
        )?;
        run_checked("ip", &["link", "set", &self.if_peer, "netns", &self.netns])?;
        let half_delay = format!("{}ms", f64::from(self.link.rtt_ms) / 2.0);
        let rate = format!("{}mbit", self.link.rate_mbit);
        // netem holds every packet in flight for half the RTT: its queue must take a
        // bandwidth-delay product (1 Gbit/s x 10 ms = 1.25 MB) with room to spare.
        self.configure_ends(
            None,
            &[
                "netem",
                "delay",
                &half_delay,
                "rate",
                &rate,
                "limit",
                "100000",
            ],
        )
    }

    fn setup_tun_wire(&self) -> anyhow::Result<TunWire> {
        let root = open_tun(&self.if_root)?;
        let peer = open_tun_in(&self.netns, &self.if_peer)?;
        let rate = format!("{}mbit", self.link.rate_mbit);
        // tbf paces what leaves each end at the link's rate; its queue holds up to 10 ms at
        // that rate (half a bandwidth-delay product), beyond which TCP sees drops.
        self.configure_ends(
            Some(self.link.tun_mtu),
            &["tbf", "rate", &rate, "burst", "256kb", "latency", "10ms"],
        )?;
        Ok(TunWire::start(
            root,
            peer,
            Duration::from_micros(u64::from(self.link.rtt_ms) * 500),
        ))
    }

    fn emulation_note(&self) -> String {
        let half = f64::from(self.link.rtt_ms) / 2.0;
        match &self.emulation {
            Some(Emulation::Netem) => format!(
                "veth pair, `tc qdisc … netem delay {half}ms rate {}mbit limit 100000` on both ends",
                self.link.rate_mbit
            ),
            Some(Emulation::TunWire(_)) => format!(
                "this kernel has no `sch_netem`, so: a TUN device in each namespace (MTU {}), \
                 `tc qdisc … tbf rate {}mbit burst 256kb latency 10ms` on both, and a forwarder \
                 in the bench process that hands every IP packet to the other end {half} ms after \
                 it left",
                self.link.tun_mtu, self.link.rate_mbit
            ),
            None => "not set up".into(),
        }
    }

    async fn start_registry(&mut self, storage: &Path) -> anyhow::Result<()> {
        let config = self.dir.path().join("config.yml");
        let secret = hex::encode(rand::random::<[u8; 16]>());
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: \"{}\"\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: \"{}:{}\"\n  secret: \"{secret}\"\n",
                storage.display(),
                self.addr_registry,
                self.port
            ),
        )
        .context("write the WAN registry's config")?;
        let log = std::fs::File::create(self.dir.path().join("registry.log"))
            .context("create the WAN registry's log")?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "docker-registry", "serve"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone a log handle")?)
            .stderr(log);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        self.registry = Some(
            cmd.spawn()
                .context("start docker-registry in the namespace")?,
        );
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let url = format!("http://{}/v2/", self.host());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .registry
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "docker-registry in {} exited with {status}: {}",
                    self.netns,
                    tail(
                        &std::fs::read_to_string(self.dir.path().join("registry.log"))
                            .unwrap_or_default(),
                        10
                    )
                );
            }
            match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(r) => bail!("WAN registry answers GET /v2/ with {}", r.status()),
                Err(e) => bail!("WAN registry not reachable at {url}: {e}"),
            }
        }
        self.registry_pid = find_pid("docker-registry", self.dir.path());
        Ok(())
    }

    /// Median time of small HTTP requests on one kept-alive connection: the RTT the clients see.
    async fn measure_rtt(&self) -> anyhow::Result<Duration> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let url = format!("http://{}/v2/", self.host());
        client.get(&url).send().await?.bytes().await?;
        let mut samples = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            client.get(&url).send().await?.bytes().await?;
            samples.push(started.elapsed().as_secs_f64());
        }
        Ok(Duration::from_secs_f64(median(&samples).unwrap_or(0.0)))
    }

    /// `ADDR:PORT` of the registry inside the namespace.
    fn host(&self) -> String {
        format!("{}:{}", self.addr_registry, self.port)
    }

    fn info(&self) -> LinkInfo {
        LinkInfo {
            spec: self.link,
            measured_rtt: self.measured_rtt,
            emulation: self.emulation_note(),
            wire: Vec::new(),
        }
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        if let Some(mut child) = self.registry.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Stopping the forwarder closes the TUN devices, which removes them and their qdiscs.
        drop(self.emulation.take());
        // Deleting the namespace deletes the veth peer, which takes the root end (and both
        // qdiscs) with it; the explicit delete covers a peer never moved into the namespace.
        run_quiet("ip", &["netns", "delete", &self.netns]);
        run_quiet("ip", &["link", "delete", &self.if_root]);
    }
}

/// `TUNSETIFF`, `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Creates the TUN device `name` (IP packets, no packet-info header) in the calling thread's
/// network namespace. It lives as long as the returned file.
fn open_tun(name: &str) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("open /dev/net/tun")?;
    // struct ifreq: the name (16 bytes, NUL-terminated), then the flags (a short).
    let mut ifr = [0u8; 40];
    if name.len() >= 16 {
        bail!("interface name {name:?} is too long");
    }
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough to hold.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, ifr.as_mut_ptr()) };
    if rc < 0 {
        bail!(
            "create TUN device {name}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(file)
}

/// [`open_tun`] inside the network namespace `netns` (from a short-lived thread that joins it).
fn open_tun_in(netns: &str, name: &str) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/run/netns/{netns}");
    let thread_name = name.to_string();
    std::thread::spawn(move || -> anyhow::Result<std::fs::File> {
        let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns on an open namespace file; it only moves this thread, which ends here.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("join {path}: {}", std::io::Error::last_os_error());
        }
        open_tun(&thread_name)
    })
    .join()
    .map_err(|_| anyhow!("the thread opening TUN {netns}/{name} panicked"))?
}

/// The forwarder between two TUN devices: per direction, a reader stamps each packet with
/// "now + delay" and a writer hands it to the other device at that moment (constant delay, so
/// order is kept). Stops and closes both devices on Drop.
struct TunWire {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// How often the forwarder's threads look at the stop flag when the link is idle.
const TUN_POLL: Duration = Duration::from_millis(100);

impl TunWire {
    fn start(a: std::fs::File, b: std::fs::File, delay: Duration) -> TunWire {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut threads = Vec::new();
        for (from, to) in [(a.clone(), b.clone()), (b, a)] {
            let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
            let stop_r = stop.clone();
            threads.push(std::thread::spawn(move || {
                tun_reader(&from, &tx, delay, &stop_r)
            }));
            let stop_w = stop.clone();
            threads.push(std::thread::spawn(move || tun_writer(&to, &rx, &stop_w)));
        }
        TunWire { stop, threads }
    }
}

fn tun_reader(
    from: &std::fs::File,
    tx: &std::sync::mpsc::Sender<(Instant, Vec<u8>)>,
    delay: Duration,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::Read as _;
    use std::os::fd::AsRawFd as _;
    let mut buf = vec![0u8; 65536];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, TUN_POLL.as_millis() as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        match (&*from).read(&mut buf) {
            Ok(n) if n > 0 => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn tun_writer(
    to: &std::fs::File,
    rx: &std::sync::mpsc::Receiver<(Instant, Vec<u8>)>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::Write as _;
    loop {
        match rx.recv_timeout(TUN_POLL) {
            Ok((due, packet)) => {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                // A packet the other end refuses is lost on the wire, as on a real link.
                let _ = (&*to).write(&packet);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Drop for TunWire {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Requests one run made to the registry, by kind (`HEAD manifest`, `GET blob`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Requests(BTreeMap<String, usize>);

impl Requests {
    fn of(records: &[support::Record]) -> Requests {
        let mut by_kind = BTreeMap::new();
        for r in records {
            let path = r.path.split('?').next().unwrap_or("");
            let what = if path.contains("/manifests/") {
                "manifest"
            } else if path.contains("/blobs/") {
                "blob"
            } else if path == "/v2/" || path == "/v2" {
                "/v2/"
            } else {
                "other"
            };
            *by_kind.entry(format!("{} {what}", r.method)).or_insert(0) += 1;
        }
        Requests(by_kind)
    }

    fn count(&self, method: &str) -> usize {
        self.0
            .iter()
            .filter(|(k, _)| k.split(' ').next() == Some(method))
            .map(|(_, n)| n)
            .sum()
    }

    fn total(&self) -> usize {
        self.0.values().sum()
    }

    fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn push_workload(registry: &Registry, id: WorkloadId, runs: usize) -> Workload {
    let (count, layers) = id.shape();
    let host = registry.host();
    let started = Instant::now();
    // gzip level 0: the layers are random bytes anyway, and storing is much faster than deflating.
    let spec = ImageSpec::new(&layers).gzip_level(0);
    let repo_tags: Vec<(String, String)> = (0..count)
        .map(|i| {
            let repo = if count == 1 {
                format!("bench/{}", id.name().to_lowercase())
            } else {
                format!("bench/{}-{i:03}", id.name().to_lowercase())
            };
            (repo, "v1".to_string())
        })
        .collect();
    let pushed: Vec<(String, PushedImage)> = stream::iter(repo_tags)
        .map(|(repo, tag)| {
            let host = host.clone();
            let spec = spec.clone();
            async move {
                let image = push_image(&host, &repo, &tag, &spec).await;
                (format!("{repo}:{tag}"), image)
            }
        })
        // `buffered` keeps the images in order, so W4's invocations are the same every run.
        .buffered(PUSH_CONCURRENCY)
        .collect()
        .await;
    let w = Workload::from_pushed(id, runs, &host, pushed);
    eprintln!(
        "[{}] pushed {} image(s), {} blobs, {:.1} MiB in {:.1} s",
        id.name(),
        w.images.len(),
        w.digests.len(),
        w.mib(),
        started.elapsed().as_secs_f64()
    );
    w
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Prepull,
    Ctr,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Prepull => "prepull",
            Tool::Ctr => "ctr",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    /// Content store only.
    Fetch,
    /// Content store and unpacked snapshots.
    Pull,
}

impl Mode {
    fn parse(s: &str) -> anyhow::Result<Mode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fetch" => Ok(Mode::Fetch),
            "pull" => Ok(Mode::Pull),
            other => bail!("unknown mode {other:?} (known: fetch, pull)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Fetch => "fetch",
            Mode::Pull => "pull",
        }
    }

    /// The command each tool runs in this mode, for the report.
    fn command(self, tool: Tool, prepull_unpacks: bool) -> &'static str {
        match (self, tool) {
            (Mode::Fetch, Tool::Prepull) if prepull_unpacks => "prepull pull --no-unpack",
            (Mode::Fetch, Tool::Prepull) => "prepull pull",
            (Mode::Pull, Tool::Prepull) => "prepull pull --snapshotter S",
            (Mode::Fetch, Tool::Ctr) => "ctr content fetch",
            (Mode::Pull, Tool::Ctr) => "ctr images pull --snapshotter S",
        }
    }
}

/// One timed run of one tool.
#[derive(Clone, Debug)]
struct Sample {
    run: usize,
    mode: Mode,
    tool: Tool,
    wall: Duration,
    /// Peak RSS of the client process (max over W4's ctr loop), in KiB.
    rss_kib: Option<u64>,
    /// containerd's own peak RSS (VmHWM, since its start just before the run), in KiB. Both tools
    /// stream every byte through containerd's Content.Write, so its memory counts too.
    containerd_rss_kib: Option<u64>,
    /// What prepull said it fetched (sum of `bytes_fetched` over its JSON lines).
    reported_bytes: Option<u64>,
    /// How long the run waited for a quiet machine, and the busy share it started with.
    waited: Duration,
    busy_share: Option<f64>,
    /// See [`top_others`].
    top_others: String,
    /// What the timed part asked of the registry (W6, behind the recording proxy).
    requests: Option<Requests>,
    /// CPU seconds (user + system) during the timed part: the client (sum over W4's ctr loop),
    /// containerd and the registry. On 2 cores these say where the wall time goes.
    cpu: Cpu,
}

#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    client: Option<f64>,
    containerd: Option<f64>,
    /// The registry serving the run; in W5 and W6 also the link emulator or the recording proxy
    /// in front of it, which run in the bench's own process.
    registry: Option<f64>,
    /// Busy CPU of the whole machine minus the three above: kernel threads (writeback) and
    /// anything else running meanwhile, e.g. other people's builds and tests on a shared box.
    other: Option<f64>,
}

/// The processes (other than the client, containerd and the registry) that used the most CPU
/// during a run, e.g. `rustc 7.9, jbd2/vda-8 0.2`: says whether "other" was our own kernel
/// writeback or someone else's work.
fn top_others(before: &ProcCpu, after: &ProcCpu, exclude: &[Option<u32>], n: usize) -> String {
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    for (pid, (name, cpu)) in after {
        if exclude.contains(&Some(*pid)) {
            continue;
        }
        // Match by pid only: kernel workers rename themselves after the work they pick up
        // (`kworker/u8:2-writeback`, `…-ext4-rsv-conversion`). A process that started during
        // the run used all of its CPU in it.
        let start = before.get(pid).map_or(0.0, |(_, c)| *c);
        let used = cpu - start;
        if used > 0.0 {
            *by_name.entry(name.clone()).or_default() += used;
        }
    }
    let mut v: Vec<(String, f64)> = by_name.into_iter().filter(|(_, c)| *c >= 0.05).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(n);
    if v.is_empty() {
        return "-".into();
    }
    v.iter()
        .map(|(name, c)| format!("{name} {c:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// pid -> (command name, CPU seconds so far) for every process.
type ProcCpu = std::collections::HashMap<u32, (String, f64)>;

fn all_proc_cpu() -> ProcCpu {
    let mut out = ProcCpu::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        if let Some(cpu) = cpu_secs(pid) {
            out.insert(pid, (name, cpu));
        }
    }
    out
}

/// Result of one child process.
struct ChildRun {
    wall: Duration,
    rss_kib: Option<u64>,
    /// User + system CPU seconds of the child, from GNU time.
    cpu_secs: Option<f64>,
    stdout: String,
}

/// Runs `program args`, through GNU time when available, and times it with a monotonic clock.
/// A non-zero exit is an error carrying the command's stderr.
async fn timed(program: &Path, args: &[String], gnu_time: bool) -> anyhow::Result<ChildRun> {
    let rss_file =
        tempfile::NamedTempFile::new().context("create a temp file for GNU time's output")?;
    let mut cmd = if gnu_time {
        let mut c = tokio::process::Command::new(GNU_TIME);
        // -o keeps time's line out of the child's stderr, which we show verbatim on failure.
        c.arg("-f")
            .arg("%M %U %S")
            .arg("-o")
            .arg(rss_file.path())
            .arg(program);
        c
    } else {
        tokio::process::Command::new(program)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("CONTAINERD_ADDRESS")
        .env_remove("CONTAINERD_NAMESPACE");
    let started = Instant::now();
    let out = cmd
        .output()
        .await
        .with_context(|| format!("cannot start {}", program.display()))?;
    let wall = started.elapsed();
    if !out.status.success() {
        bail!(
            "`{} {}` failed with {}\n--- stderr ---\n{}\n--- stdout (tail) ---\n{}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            tail(&String::from_utf8_lossy(&out.stdout), 20)
        );
    }
    let (rss_kib, cpu_secs) = if gnu_time {
        let text = std::fs::read_to_string(rss_file.path()).context("read GNU time's output")?;
        let (rss, cpu) = parse_gnu_time(&text)
            .with_context(|| format!("GNU time printed {text:?}, expected \"KiB user sys\""))?;
        (Some(rss), Some(cpu))
    } else {
        (None, None)
    };
    Ok(ChildRun {
        wall,
        rss_kib,
        cpu_secs,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// `%M %U %S` -> (peak RSS KiB, user + system seconds). On success the file holds just that line;
/// take the last non-empty line to be safe.
fn parse_gnu_time(text: &str) -> anyhow::Result<(u64, f64)> {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let f: Vec<&str> = line.split_whitespace().collect();
    let [rss, user, sys] = f[..] else {
        bail!("expected 3 fields, got {}", f.len());
    };
    Ok((rss.parse()?, user.parse::<f64>()? + sys.parse::<f64>()?))
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct Bench {
    prepull: PathBuf,
    /// Whether this prepull build unpacks by default (it has `--no-unpack`).
    prepull_unpacks: bool,
    gnu_time: bool,
    registry_pid: Option<u32>,
    quiet_wait: Duration,
    profiler: Option<Profiler>,
}

/// Records `perf` profiles during timed runs (`--profile DIR`): the client under
/// `perf record … -- CLIENT` (DWARF call graphs for prepull, whose release build has no frame
/// pointers; frame pointers for the Go programs), containerd and the registry with
/// `perf record -p PID` each, stopped with SIGINT after the run. Files are named
/// `<workload>-<mode>-<tool>-run<N>.<client|containerd|registry>[.<i>].data`.
struct Profiler {
    dir: PathBuf,
    /// `cycles` where the machine has hardware counters, else `cpu-clock`.
    event: String,
    /// The current timed run's file stem, set by [`Bench::sample`]; `None` between timed runs
    /// (W6's untimed first pass is not profiled).
    stem: std::sync::Mutex<Option<String>>,
    /// Numbers the client files of a run with several invocations (ctr loops).
    invocation: std::sync::atomic::AtomicUsize,
}

/// Sampling frequency of the profiles, in Hz: odd, so it does not beat with periodic work.
const PERF_FREQ: &str = "999";

impl Profiler {
    fn new(dir: PathBuf) -> anyhow::Result<Profiler> {
        if find_in_path("perf").is_none() {
            bail!("--profile needs `perf` (package linux-perf; scripts/setup.sh installs it)");
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // Virtual machines often lack hardware counters: perf then says "<not supported>".
        let probe = std::process::Command::new("perf")
            .args(["stat", "-e", "cycles", "true"])
            .output()
            .context("run perf stat")?;
        let text = String::from_utf8_lossy(&probe.stderr);
        let event = if probe.status.success() && !text.contains("not supported") {
            "cycles"
        } else {
            "cpu-clock"
        };
        Ok(Profiler {
            dir,
            event: event.to_string(),
            stem: Default::default(),
            invocation: Default::default(),
        })
    }

    fn start_run(&self, stem: String) {
        *self.stem.lock().unwrap_or_else(|p| p.into_inner()) = Some(stem);
        self.invocation
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    fn end_run(&self) {
        *self.stem.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// `DIR/<stem>.<what>.data`, or `None` outside a timed run.
    fn path(&self, what: &str) -> Option<PathBuf> {
        let stem = self
            .stem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        Some(self.dir.join(format!("{stem}.{what}.data")))
    }

    /// `perf record … -o FILE -- program args…` as (program, args), or `None` outside a timed
    /// run.
    fn wrap(&self, program: &Path, args: &[String], dwarf: bool) -> Option<(PathBuf, Vec<String>)> {
        let i = self
            .invocation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let file = if i == 0 {
            self.path("client")?
        } else {
            self.path(&format!("client.{i}"))?
        };
        let mut wrapped: Vec<String> = vec![
            "record".into(),
            "-q".into(),
            "-e".into(),
            self.event.clone(),
            "-F".into(),
            PERF_FREQ.into(),
            "--call-graph".into(),
            if dwarf { "dwarf" } else { "fp" }.into(),
            "-o".into(),
            file.display().to_string(),
            "--".into(),
            program.display().to_string(),
        ];
        wrapped.extend(args.iter().cloned());
        Some((PathBuf::from("perf"), wrapped))
    }

    /// Starts `perf record -p PID` for a running daemon; [`Attached::stop`] ends it.
    async fn attach(&self, pid: u32, what: &str) -> anyhow::Result<Attached> {
        let file = self
            .path(what)
            .context("perf attached outside a timed run")?;
        let child = tokio::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                &self.event,
                "-F",
                PERF_FREQ,
                "--call-graph",
                "fp",
                "-p",
            ])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start perf record")?;
        // perf opens its events within milliseconds; this only keeps the client's first moments
        // from being missed (profiles are for shares, not for totals).
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Attached { child, file })
    }
}

/// A `perf record -p` in progress.
struct Attached {
    child: tokio::process::Child,
    file: PathBuf,
}

impl Attached {
    async fn stop(self) -> anyhow::Result<PathBuf> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill has no memory-safety preconditions; pid is our own child's.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        }
        let out = self
            .child
            .wait_with_output()
            .await
            .context("wait for perf record")?;
        if !self.file.is_file() {
            bail!(
                "perf record wrote no {} ({}): {}",
                self.file.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(self.file)
    }
}

impl Bench {
    /// Runs a client, under `perf record` when profiling.
    async fn timed_client(&self, program: &Path, args: Vec<String>) -> anyhow::Result<ChildRun> {
        let is_prepull = program == self.prepull;
        match self
            .profiler
            .as_ref()
            .and_then(|p| p.wrap(program, &args, is_prepull))
        {
            Some((perf, wrapped)) => timed(&perf, &wrapped, self.gnu_time).await,
            None => timed(program, &args, self.gnu_time).await,
        }
    }

    async fn run_prepull(
        &self,
        c: &Containerd,
        w: &Workload,
        mode: Mode,
    ) -> anyhow::Result<(ChildRun, u64)> {
        let mut args: Vec<String> = vec![
            "pull".into(),
            "--containerd".into(),
            c.socket().display().to_string(),
            "--plain-http".into(),
            w.host.clone(),
            "--output".into(),
            "json".into(),
        ];
        match mode {
            Mode::Fetch if self.prepull_unpacks => args.push("--no-unpack".into()),
            Mode::Fetch => {}
            // Named explicitly so both tools surely unpack into the same snapshotter.
            Mode::Pull => args.extend(["--snapshotter".into(), c.snapshotter().to_string()]),
        }
        args.extend(w.images.iter().cloned());
        let run = self.timed_client(&self.prepull, args).await?;
        // Exit 0 already means every image was pulled; the JSON lines double-check that and say
        // how many bytes prepull moved.
        let mut fetched = 0;
        let mut pulled = 0;
        for line in run.stdout.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("prepull printed a non-JSON line: {line:?}"))?;
            if v["status"] != "pulled" {
                bail!("prepull exited 0 but reported {line}");
            }
            // The mode must have done what it says: unpacked in `pull`, not in `fetch`.
            let snapshotter = v.get("snapshotter").and_then(|s| s.as_str());
            let want = (mode == Mode::Pull).then(|| c.snapshotter());
            if snapshotter != want {
                bail!("prepull in mode {} reported snapshotter {snapshotter:?}, expected {want:?}: {line}", mode.name());
            }
            pulled += 1;
            fetched += v["bytes_fetched"]
                .as_u64()
                .with_context(|| format!("no bytes_fetched in {line}"))?;
        }
        if pulled != w.images.len() {
            bail!(
                "prepull reported {pulled} pulled images, expected {}:\n{}",
                w.images.len(),
                run.stdout
            );
        }
        Ok((run, fetched))
    }

    /// W1/W3: one `ctr content fetch` or `ctr images pull`; W4: one per image, in a loop (total
    /// wall time, max RSS, summed CPU).
    async fn run_ctr(&self, c: &Containerd, w: &Workload, mode: Mode) -> anyhow::Result<ChildRun> {
        // The ctr of the same containerd release as the daemon.
        let ctr = c.install().ctr();
        let mut total = ChildRun {
            wall: Duration::ZERO,
            rss_kib: None,
            cpu_secs: None,
            stdout: String::new(),
        };
        let started = Instant::now();
        for image in &w.images {
            let mut args: Vec<String> = vec![
                "--address".into(),
                c.socket().display().to_string(),
                "-n".into(),
                "k8s.io".into(),
            ];
            match mode {
                Mode::Fetch => args.extend(["content".into(), "fetch".into()]),
                Mode::Pull => args.extend([
                    "images".into(),
                    "pull".into(),
                    "--snapshotter".into(),
                    c.snapshotter().to_string(),
                ]),
            }
            args.extend(["--plain-http".into(), image.clone()]);
            let run = self.timed_client(&ctr, args).await?;
            total.rss_kib = match (total.rss_kib, run.rss_kib) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            total.cpu_secs = match (total.cpu_secs, run.cpu_secs) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
        }
        // The loop's own wall time, so the gaps between invocations count like a shell loop's.
        total.wall = started.elapsed();
        Ok(total)
    }

    /// One run of one tool against a fresh containerd, verified afterwards (outside the timing).
    async fn sample(
        &self,
        w: &Workload,
        mode: Mode,
        tool: Tool,
        run: usize,
    ) -> anyhow::Result<Sample> {
        let c = Containerd::start().await;
        let containerd_pid = find_pid("containerd", c.dir());
        let failed = |e: anyhow::Error| {
            anyhow!(
                "[{}] run {run} {} {} failed: {e:#}\n--- tail of containerd log ---\n{}",
                w.id.name(),
                mode.name(),
                tool.name(),
                c.log_tail(30)
            )
        };
        if w.id.warm() {
            // The steady state: everything pulled once by the same tool, untimed.
            match tool {
                Tool::Prepull => self.run_prepull(&c, w, mode).await.map(drop),
                Tool::Ctr => self.run_ctr(&c, w, mode).await.map(drop),
            }
            .map_err(|e| failed(e.context("first (untimed) pass")))?;
        }
        let registry_pid = w.own_registry_pid().or(self.registry_pid);
        // The recording proxy (W6) and W5's TUN forwarder run in this process: their CPU is
        // counted on the registry's side.
        let proxy_pid = matches!(w.via, Via::Proxy(_) | Via::Wan(_)).then(std::process::id);
        let (waited, busy_share) = if self.quiet_wait.is_zero() {
            (Duration::ZERO, None)
        } else {
            wait_for_quiet(self.quiet_wait).await
        };
        if let Via::Proxy(proxy) = &w.via {
            proxy.clear();
        }
        let cpu_before = (
            containerd_pid.and_then(cpu_secs),
            registry_pid.and_then(cpu_secs),
            machine_busy_secs(),
            proxy_pid.and_then(cpu_secs),
        );
        let mut attached = Vec::new();
        if let Some(p) = &self.profiler {
            p.start_run(format!(
                "{}-{}-{}-run{run}",
                w.id.name().to_lowercase(),
                mode.name(),
                tool.name()
            ));
            for (pid, what) in [(containerd_pid, "containerd"), (registry_pid, "registry")] {
                if let Some(pid) = pid {
                    attached.push(p.attach(pid, what).await?);
                }
            }
        }
        let procs_before = all_proc_cpu();
        let result = match tool {
            Tool::Prepull => self
                .run_prepull(&c, w, mode)
                .await
                .map(|(r, b)| (r, Some(b))),
            Tool::Ctr => self.run_ctr(&c, w, mode).await.map(|r| (r, None)),
        };
        for a in attached {
            let file = a.stop().await?;
            eprintln!("  profile: {}", file.display());
        }
        if let Some(p) = &self.profiler {
            p.end_run();
        }
        let (child, reported_bytes) = result.map_err(failed)?;
        let requests = match &w.via {
            Via::Proxy(proxy) => Some(Requests::of(&proxy.records())),
            Via::Loopback | Via::Wan(_) => None,
        };
        let delta = |before: Option<f64>, pid: Option<u32>| Some(pid.and_then(cpu_secs)? - before?);
        let busy = machine_busy_secs()
            .zip(cpu_before.2)
            .map(|(after, before)| after - before);
        let top_others = top_others(
            &procs_before,
            &all_proc_cpu(),
            &[containerd_pid, registry_pid, Some(std::process::id())],
            3,
        );
        let registry = match proxy_pid {
            Some(pid) => delta(cpu_before.1, registry_pid)
                .zip(delta(cpu_before.3, Some(pid)))
                .map(|(r, p)| r + p),
            None => delta(cpu_before.1, registry_pid),
        };
        let mut cpu = Cpu {
            client: child.cpu_secs,
            containerd: delta(cpu_before.0, containerd_pid),
            registry,
            other: None,
        };
        cpu.other = (|| Some((busy? - cpu.client? - cpu.containerd? - cpu.registry?).max(0.0)))();
        let containerd_rss_kib = containerd_pid.and_then(peak_rss_kib);
        let what = || {
            format!(
                "[{}] run {run} {} {}",
                w.id.name(),
                mode.name(),
                tool.name()
            )
        };
        verify_content(&c, w).with_context(what)?;
        if mode == Mode::Pull {
            verify_unpacked(&c, w).with_context(what)?;
        }
        drop(c);
        // Flush what the dropped instance left dirty so the next run does not pay for it.
        sync();
        Ok(Sample {
            run,
            mode,
            tool,
            wall: child.wall,
            rss_kib: child.rss_kib,
            containerd_rss_kib,
            reported_bytes,
            waited,
            busy_share,
            top_others,
            requests,
            cpu,
        })
    }
}

/// Every manifest, config and layer of the workload is committed in containerd's k8s.io namespace.
fn verify_content(c: &Containerd, w: &Workload) -> anyhow::Result<()> {
    let out = c.ctr(&["-n", "k8s.io", "content", "ls", "-q"]);
    if !out.status.success() {
        bail!(
            "ctr content ls failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    let have: HashSet<&str> = listed.lines().map(str::trim).collect();
    let missing: Vec<&String> = w
        .digests
        .iter()
        .filter(|d| !have.contains(d.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} of {} blobs missing from containerd after the run, e.g. {}",
            missing.len(),
            w.digests.len(),
            missing[0]
        );
    }
    Ok(())
}

/// At least one committed snapshot per layer in the snapshotter both tools unpack into.
fn verify_unpacked(c: &Containerd, w: &Workload) -> anyhow::Result<()> {
    let out = c.ctr(&[
        "-n",
        "k8s.io",
        "snapshots",
        "--snapshotter",
        c.snapshotter(),
        "ls",
    ]);
    if !out.status.success() {
        bail!(
            "ctr snapshots ls failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Columns: KEY PARENT KIND; a base layer has no parent, so look at the last column.
    let committed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().last() == Some("Committed"))
        .count();
    if committed < w.layers {
        bail!(
            "{committed} committed {} snapshots after the run, expected at least {} (one per layer)",
            c.snapshotter(),
            w.layers
        );
    }
    Ok(())
}

/// The pid of the `program` process whose command line names a file under `dir` (its config): how
/// the bench tells its own containerd and registry apart from any other.
fn find_pid(program: &str, dir: &Path) -> Option<u32> {
    let dir = dir.to_string_lossy().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ours = args
            .first()
            .is_some_and(|a| a.rsplit('/').next() == Some(program))
            && args
                .iter()
                .skip(1)
                .any(|a| a.starts_with(&format!("{dir}/")));
        if is_ours {
            return Some(pid);
        }
    }
    None
}

/// VmHWM (peak RSS since start) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU seconds a process has used so far (its threads included).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: count fields after its closing parenthesis, where
    // field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks()?)
}

/// Busy (not idle, not iowait) CPU seconds of the whole machine since boot, from /proc/stat.
fn machine_busy_secs() -> Option<f64> {
    machine_cpu_secs().map(|(busy, _)| busy)
}

/// (busy, total) CPU seconds of the whole machine since boot, summed over all cores.
fn machine_cpu_secs() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user/nice).
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7).unwrap_or(&0);
    let total = busy + f.get(3)? + f.get(4)?;
    let hz = clock_ticks()?;
    Some((busy as f64 / hz, total as f64 / hz))
}

/// The machine counts as quiet when less than this share of all cores was busy over
/// [`QUIET_WINDOW`] (our idle containerd and registry included).
const QUIET_SHARE: f64 = 0.10;
const QUIET_WINDOW: Duration = Duration::from_secs(1);

/// Waits (at most `max_wait`) until the machine is quiet, because on a shared box someone else's
/// build running during one tool's run and not the other's would decide the comparison. Returns
/// how long it waited and the last busy share seen.
async fn wait_for_quiet(max_wait: Duration) -> (Duration, Option<f64>) {
    let started = Instant::now();
    let mut announced = false;
    loop {
        let Some(before) = machine_cpu_secs() else {
            return (started.elapsed(), None);
        };
        tokio::time::sleep(QUIET_WINDOW).await;
        let Some(after) = machine_cpu_secs() else {
            return (started.elapsed(), None);
        };
        let share = (after.0 - before.0) / (after.1 - before.1).max(1e-9);
        if share < QUIET_SHARE || started.elapsed() >= max_wait {
            if announced {
                eprintln!(
                    "  …waited {:.0} s, machine now {:.0}% busy{}",
                    started.elapsed().as_secs_f64(),
                    share * 100.0,
                    if share < QUIET_SHARE {
                        ""
                    } else {
                        " (gave up waiting; see \"other\" CPU)"
                    }
                );
            }
            return (started.elapsed(), Some(share));
        }
        if !announced {
            eprintln!(
                "  machine {:.0}% busy with other work; waiting up to {} s for it to go quiet",
                share * 100.0,
                max_wait.as_secs()
            );
            announced = true;
        }
    }
}

fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then_some(hz as f64)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn sync() {
    if let Err(e) = std::process::Command::new("sync").status() {
        eprintln!("warning: sync failed: {e}");
    }
}

/// A file of random bytes in memory (tmpfs when there is one, else the page cache) for dd to copy,
/// so the floor measures the destination disk, not a random number generator.
fn floor_source(mib: usize) -> anyhow::Result<tempfile::NamedTempFile> {
    let shm = Path::new("/dev/shm");
    let mut f = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("ctr-compare-src-")
            .tempfile_in(shm)
    } else {
        tempfile::NamedTempFile::new()
    }
    .context("create the floor's source file")?;
    let mut rng = rand::rng();
    let mut buf = vec![0u8; MIB];
    for _ in 0..mib {
        rng.fill_bytes(&mut buf);
        f.write_all(&buf).context("write the floor's source file")?;
    }
    f.flush().context("flush the floor's source file")?;
    Ok(f)
}

/// `dd if=SRC of=DST bs=1M count=MIB conv=fsync`, timed, `runs` times; DST is on containerd's
/// filesystem (inside a containerd root) and removed between runs.
fn fsync_floor(
    src: &Path,
    dst_dir: &Path,
    mib: usize,
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    let dst = dst_dir.join("floor.bin");
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let _ = std::fs::remove_file(&dst);
        sync();
        let started = Instant::now();
        let res = std::process::Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", dst.display()))
            .arg("bs=1M")
            .arg(format!("count={mib}"))
            .arg("conv=fsync")
            .stdin(Stdio::null())
            .output()
            .context("run dd")?;
        let wall = started.elapsed();
        if !res.status.success() {
            bail!(
                "dd failed with {}: {}",
                res.status,
                String::from_utf8_lossy(&res.stderr)
            );
        }
        out.push(wall);
    }
    let _ = std::fs::remove_file(&dst);
    Ok(out)
}

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn stats(values: &[f64]) -> Option<Stats> {
    Some(Stats {
        median: median(values)?,
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

struct WorkloadResult {
    workload: Workload,
    samples: Vec<Sample>,
    floor: Vec<Duration>,
}

/// A run counts as disturbed when CPU outside the three processes exceeds this share of the
/// machine's capacity during it.
const DISTURBED_SHARE: f64 = 0.10;

impl Sample {
    fn disturbed(&self, cores: f64) -> bool {
        self.cpu
            .other
            .is_some_and(|o| o > DISTURBED_SHARE * cores * self.wall.as_secs_f64())
    }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

impl WorkloadResult {
    fn of(&self, mode: Mode, tool: Tool) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.mode == mode && s.tool == tool)
    }

    fn walls(&self, mode: Mode, tool: Tool) -> Vec<f64> {
        self.of(mode, tool).map(|s| s.wall.as_secs_f64()).collect()
    }

    fn rss_median_mib(&self, mode: Mode, tool: Tool, containerd: bool) -> Option<f64> {
        let v: Vec<f64> = self
            .of(mode, tool)
            .filter_map(|s| {
                if containerd {
                    s.containerd_rss_kib
                } else {
                    s.rss_kib
                }
            })
            .map(|k| k as f64 / 1024.0)
            .collect();
        median(&v)
    }

    fn disturbed(&self, mode: Mode, tool: Tool) -> String {
        let runs: Vec<&Sample> = self.of(mode, tool).collect();
        let bad = runs.iter().filter(|s| s.disturbed(cores())).count();
        format!("{bad}/{}", runs.len())
    }

    fn cpu_median(&self, mode: Mode, tool: Tool, pick: fn(&Cpu) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.of(mode, tool).filter_map(|s| pick(&s.cpu)).collect();
        median(&v)
    }

    fn floor_median(&self) -> Option<f64> {
        median(
            &self
                .floor
                .iter()
                .map(Duration::as_secs_f64)
                .collect::<Vec<_>>(),
        )
    }
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn opt_mib(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "n/a".into())
}

fn opt_secs(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "n/a".into())
}

fn opt_kib(v: Option<u64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "n/a".into())
}

/// Output of a command for the report header; the error text when it cannot run.
fn command_line(program: &str, args: &[&str]) -> String {
    match std::process::Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!(
            "({program} failed: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("({program}: {e})"),
    }
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "unknown".into())
}

/// What the report says about the machine and the containerd the runs used.
struct Context {
    load_before: String,
    /// The commit the sources (and, under `cargo bench`, the prepull binary) were at when the
    /// bench started, and whether they had uncommitted changes.
    git_head: String,
    dirty: bool,
    binary_note: String,
    /// `containerd --version`'s version of the daemon the runs used, and its ctr.
    containerd_version: String,
    ctr: PathBuf,
    snapshotter: String,
    modes: Vec<Mode>,
}

fn report(results: &[WorkloadResult], bench: &Bench, cx: &Context) -> String {
    let mut md = String::new();
    let nproc = command_line("nproc", &[]);
    let _ = writeln!(md, "# prepull vs ctr: pulling images into containerd");
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Machine: `{}`, {} cores, {} RAM, containerd {} (`{}`), `{}`. Date: {}.",
        command_line("uname", &["-srm"]),
        nproc,
        mem_total(),
        cx.containerd_version,
        cx.ctr.display(),
        command_line(&cx.ctr.to_string_lossy(), &["--version"]),
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Load average (1/5/15 min) before the bench: {}; after: {}.",
        cx.load_before,
        load_average()
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "prepull: `{}` (release build; git HEAD {} when the bench started{}){}.",
        bench.prepull.display(),
        cx.git_head,
        if cx.dirty {
            ", with uncommitted changes to the sources"
        } else {
            ""
        },
        cx.binary_note
    );
    let _ = writeln!(md);
    if bench.prepull_unpacks {
        let _ = writeln!(
            md,
            "> **This prepull unpacks layers by default** (it has `--no-unpack`), so the bench compares like with like in two modes: \
             **fetch** = `prepull pull --no-unpack` vs `ctr content fetch` (content store + image record), and \
             **pull** = `prepull pull` vs `ctr images pull`, both unpacking into the `{}` snapshotter (CRI's in these containerds). \
             W4 in pull mode is a loop of 100 `ctr images pull`.",
            cx.snapshotter
        );
    } else {
        let _ = writeln!(
            md,
            "> **prepull does not unpack layers yet** (no `--no-unpack` in its help), so every workload compares it against \
             `ctr content fetch` (fetch + verify into the content store + image record), not `ctr images pull`. \
             W4 is specified as a loop of 100 `ctr images pull`; here it is a loop of 100 `ctr content fetch` for the same reason."
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Setup: one docker-registry on loopback (plain HTTP), synthetic images with random layers (gzip level 0); \
         every run gets a fresh containerd (snapshotter `{}`, empty content store), started before and removed after the timed part, \
         and is checked afterwards (every blob in the content store; in pull mode, a committed snapshot per layer). \
         Runs alternate prepull, ctr, prepull, ctr, … (and the modes alternate within each round). Commands:",
        cx.snapshotter
    );
    let _ = writeln!(md);
    for mode in &cx.modes {
        let _ = writeln!(
            md,
            "- {}: `{} --containerd SOCK --plain-http HOST --output json IMAGE...` (all images in one invocation) vs \
             `ctr --address SOCK -n k8s.io {} --plain-http IMAGE` (one invocation per image, sequentially); both at their default download concurrency",
            mode.name(),
            mode.command(Tool::Prepull, bench.prepull_unpacks),
            mode.command(Tool::Ctr, bench.prepull_unpacks).trim_start_matches("ctr "),
        );
    }
    let _ = writeln!(
        md,
        "- floor: `dd if=SRC of=DST bs=1M count=MiB conv=fsync`, SRC a random file in tmpfs, DST inside a containerd root (same filesystem). \
         It writes the blob bytes once, with one fsync; the tools fsync each blob, and in pull mode also write every layer's files into a snapshot."
    );
    if results.iter().any(|r| r.workload.id == WorkloadId::W5) {
        let _ = writeln!(
            md,
            "- W5: the W1 image from a second docker-registry process serving the same storage inside its own network namespace, \
             joined to the root namespace by an emulated link with delay and rate in both directions; \
             both clients pull from the namespace end's address (`--plain-http`). How the link was emulated is under *W5* below; \
             the registry's CPU includes this bench process's (a userspace link forwarder, when there is one)."
        );
    }
    if results.iter().any(|r| r.workload.id == WorkloadId::W6) {
        let _ = writeln!(
            md,
            "- W6: each run first pulls all images once with the same tool and mode into its fresh containerd (untimed), then times a second pass \
             (prepull: one invocation with all tags; ctr: one invocation per tag). The registry sits behind a recording HTTP proxy (in the bench process) \
             that counts every request of the timed pass; its CPU is counted as the registry's."
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Wall time is a monotonic clock around the child process (W4 ctr: around the whole loop). Peak RSS is GNU time's `%M` of the client (W4 ctr: the largest of the 100); \
         containerd RSS is its VmHWM after the run. MB/s = 10^6 bytes per second of the workload's bytes (manifests + configs + layers) at the median time. \
         CPU s is user + system time during the timed part: the client's from GNU time (W4 ctr: summed over the loop), containerd's and the registry's from /proc/PID/stat before and after; \
         \"other\" is the machine's busy CPU (/proc/stat) minus those three: kernel writeback, this bench's own process and whatever else ran meanwhile. \
         Before each timed run the bench waits (up to {wait} s) until less than {share:.0}% of the machine's CPU was busy over {window} s; \
         \"Busy before\" and \"Waited\" in the raw tables show how that went. \
         A run counts as *disturbed* when \"other\" CPU exceeded {disturbed:.0}% of the machine's capacity during it; \"Top other\" in the raw tables names the processes behind it. \
         With {cores} cores, a run cannot be faster than (client + containerd + registry CPU) / {cores}. \
         ctr/prepull > 1 means prepull is faster; x floor = median / the fsync floor's median.",
        cores = nproc,
        wait = bench.quiet_wait.as_secs(),
        share = QUIET_SHARE * 100.0,
        window = QUIET_WINDOW.as_secs(),
        disturbed = DISTURBED_SHARE * 100.0
    );
    if !bench.gnu_time {
        let _ = writeln!(md);
        let _ = writeln!(md, "**{GNU_TIME} was missing, so client peak RSS and CPU were not measured** (`apt-get install -y time`).");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "## Summary");
    let _ = writeln!(md);
    let _ = writeln!(md, "| Workload | MiB | Mode | Tool | Runs | Median s | Min s | Max s | MB/s | ctr/prepull | x floor | Peak RSS MiB (median) | containerd peak RSS MiB (median) | CPU s client / containerd / registry / other (medians) | Disturbed runs |");
    let _ = writeln!(
        md,
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let w = &r.workload;
        let floor = r.floor_median();
        for mode in &cx.modes {
            let mode = *mode;
            let p = stats(&r.walls(mode, Tool::Prepull));
            let c = stats(&r.walls(mode, Tool::Ctr));
            let ratio = match (p, c) {
                (Some(p), Some(c)) => format!("**{:.2}**", c.median / p.median),
                _ => "n/a".into(),
            };
            for (tool, s) in [(Tool::Prepull, p), (Tool::Ctr, c)] {
                let Some(s) = s else { continue };
                let _ = writeln!(
                    md,
                    "| {} ({}) | {:.1} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} / {} / {} / {} | {} |",
                    w.id.name(),
                    w.id.description(),
                    w.mib(),
                    mode.name(),
                    tool.name(),
                    r.walls(mode, tool).len(),
                    s.median,
                    s.min,
                    s.max,
                    if w.id.warm() { "-".to_string() } else { format!("{:.0}", mbps(w.bytes, s.median)) },
                    if tool == Tool::Prepull { ratio.clone() } else { String::new() },
                    floor.map(|f| format!("{:.1}", s.median / f)).unwrap_or_else(|| "n/a".into()),
                    opt_mib(r.rss_median_mib(mode, tool, false)),
                    opt_mib(r.rss_median_mib(mode, tool, true)),
                    opt_secs(r.cpu_median(mode, tool, |c| c.client)),
                    opt_secs(r.cpu_median(mode, tool, |c| c.containerd)),
                    opt_secs(r.cpu_median(mode, tool, |c| c.registry)),
                    opt_secs(r.cpu_median(mode, tool, |c| c.other)),
                    r.disturbed(mode, tool),
                );
            }
        }
    }
    let _ = writeln!(md);
    report_wan(&mut md, results, cx);
    report_steady(&mut md, results, cx);
    report_targets(&mut md, results, cx);
    let _ = writeln!(
        md,
        "## fsync floor (`dd … conv=fsync` of the workload's bytes)"
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| Workload | MiB written | Runs | Median s | Min s | Max s | MB/s |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let w = &r.workload;
        let floor: Vec<f64> = r.floor.iter().map(Duration::as_secs_f64).collect();
        let Some(f) = stats(&floor) else { continue };
        let mib = floor_mib(w);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} |",
            w.id.name(),
            mib,
            floor.len(),
            f.median,
            f.min,
            f.max,
            (mib * MIB) as f64 / 1e6 / f.median,
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "## Raw runs");
    for r in results {
        let w = &r.workload;
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "### {} ({}; {} image(s), {} blobs, {} bytes of which {} in manifests)",
            w.id.name(),
            w.id.description(),
            w.images.len(),
            w.digests.len(),
            w.bytes,
            w.manifest_bytes
        );
        let _ = writeln!(md);
        let _ = writeln!(md, "| Run | Mode | Tool | Wall s | Peak RSS KiB | containerd peak RSS KiB | CPU s client | CPU s containerd | CPU s registry | CPU s other | Top other CPU s | Busy before % | Waited s | prepull bytes_fetched (configs + layers) | Registry requests |");
        let _ = writeln!(
            md,
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"
        );
        for s in &r.samples {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
                s.run,
                s.mode.name(),
                s.tool.name(),
                s.wall.as_secs_f64(),
                opt_kib(s.rss_kib),
                opt_kib(s.containerd_rss_kib),
                opt_secs(s.cpu.client),
                opt_secs(s.cpu.containerd),
                opt_secs(s.cpu.registry),
                opt_secs(s.cpu.other),
                s.top_others,
                s.busy_share
                    .map(|b| format!("{:.0}", b * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
                s.waited.as_secs_f64(),
                opt_kib(s.reported_bytes),
                s.requests
                    .as_ref()
                    .map(Requests::describe)
                    .unwrap_or_else(|| "-".into()),
            );
        }
        let floor: Vec<String> = r
            .floor
            .iter()
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .collect();
        let _ = writeln!(md);
        if w.id.warm() {
            let _ = writeln!(
                md,
                "No fsync floor: the timed pass writes no blob (everything is already present)."
            );
        } else {
            let _ = writeln!(
                md,
                "fsync floor runs ({} MiB), s: {}",
                floor_mib(w),
                floor.join(", ")
            );
        }
    }
    md
}

/// W5: prepull's throughput, as a share of the emulated link's rate, at least this.
const W5_LINK_SHARE_TARGET: f64 = 0.90;
/// W5: prepull at least this much faster than ctr.
const W5_SPEEDUP_TARGET: f64 = 1.5;
/// W6: one pass over all present images takes less than this.
const W6_TIME_TARGET: Duration = Duration::from_secs(1);

impl WorkloadResult {
    fn median_wall(&self, mode: Mode, tool: Tool) -> Option<f64> {
        median(&self.walls(mode, tool))
    }

    /// Median throughput over W5's link as a share of the link's rate.
    fn link_share(&self, mode: Mode, tool: Tool) -> Option<f64> {
        let link = self.workload.link.as_ref()?.spec;
        let secs = self.median_wall(mode, tool)?;
        Some(mbps(self.workload.bytes, secs) / link.mbytes_per_sec())
    }

    /// The distinct request mixes of a tool's timed passes, e.g. `200 HEAD manifest (3 runs)`.
    fn request_mixes(&self, mode: Mode, tool: Tool) -> String {
        let mut mixes: Vec<(Requests, usize)> = Vec::new();
        for s in self.of(mode, tool) {
            let Some(r) = &s.requests else { continue };
            match mixes.iter_mut().find(|(m, _)| m == r) {
                Some((_, n)) => *n += 1,
                None => mixes.push((r.clone(), 1)),
            }
        }
        if mixes.is_empty() {
            return "n/a".into();
        }
        mixes
            .iter()
            .map(|(m, n)| {
                format!(
                    "{} ({n} run{})",
                    m.describe(),
                    if *n == 1 { "" } else { "s" }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

fn report_wan(md: &mut String, results: &[WorkloadResult], cx: &Context) {
    let Some(r) = results.iter().find(|r| r.workload.id == WorkloadId::W5) else {
        return;
    };
    let Some(info) = &r.workload.link else {
        return;
    };
    let (link, rtt) = (info.spec, info.measured_rtt);
    let _ = writeln!(md, "## W5: W1 over an emulated WAN");
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Link: {}; {}. Measured HTTP round trip before the runs: {}. \
         Link floor for the workload's {:.1} MB: {:.2} s at the link's rate; wire floor (every config and layer downloaded at once by a bare HTTP client in the bench, bytes discarded, before the runs): {}. \
         Share of link = the workload's bytes / median time / the link's rate.",
        link.describe(),
        info.emulation,
        rtt.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "n/a".into()),
        r.workload.bytes as f64 / 1e6,
        r.workload.bytes as f64 / 1e6 / link.mbytes_per_sec(),
        stats(&info.wire.iter().map(Duration::as_secs_f64).collect::<Vec<_>>())
            .map(|st| format!(
                "median {:.2} s ({:.0}% of the link), min {:.2} s, max {:.2} s",
                st.median,
                mbps(r.workload.bytes - r.workload.manifest_bytes, st.median) / link.mbytes_per_sec() * 100.0,
                st.min,
                st.max
            ))
            .unwrap_or_else(|| "n/a".into()),
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| Mode | Tool | Median s | Min s | Max s | MB/s | Share of link | ctr/prepull | CPU s client / containerd / registry / other |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for mode in &cx.modes {
        let ratio = r
            .median_wall(*mode, Tool::Ctr)
            .zip(r.median_wall(*mode, Tool::Prepull))
            .map(|(c, p)| format!("**{:.2}**", c / p))
            .unwrap_or_else(|| "n/a".into());
        for tool in [Tool::Prepull, Tool::Ctr] {
            let Some(st) = stats(&r.walls(*mode, tool)) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {} / {} / {} / {} |",
                mode.name(),
                tool.name(),
                st.median,
                st.min,
                st.max,
                mbps(r.workload.bytes, st.median),
                r.link_share(*mode, tool)
                    .map(|x| format!("{:.0}%", x * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
                if tool == Tool::Prepull {
                    ratio.as_str()
                } else {
                    ""
                },
                opt_secs(r.cpu_median(*mode, tool, |c| c.client)),
                opt_secs(r.cpu_median(*mode, tool, |c| c.containerd)),
                opt_secs(r.cpu_median(*mode, tool, |c| c.registry)),
                opt_secs(r.cpu_median(*mode, tool, |c| c.other)),
            );
        }
    }
    let _ = writeln!(md);
}

fn report_steady(md: &mut String, results: &[WorkloadResult], cx: &Context) {
    let Some(r) = results.iter().find(|r| r.workload.id == WorkloadId::W6) else {
        return;
    };
    let _ = writeln!(
        md,
        "## W6: steady state ({} images already present)",
        r.workload.images.len()
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Requests are counted by the proxy for the timed pass only; a row lists each distinct mix of requests and how many runs made it."
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| Mode | Tool | Median s | Min s | Max s | ctr/prepull | Requests per pass | CPU s client / containerd / registry+proxy / other |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---|---:|");
    for mode in &cx.modes {
        let ratio = r
            .median_wall(*mode, Tool::Ctr)
            .zip(r.median_wall(*mode, Tool::Prepull))
            .map(|(c, p)| format!("**{:.1}**", c / p))
            .unwrap_or_else(|| "n/a".into());
        for tool in [Tool::Prepull, Tool::Ctr] {
            let Some(st) = stats(&r.walls(*mode, tool)) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} / {} / {} / {} |",
                mode.name(),
                tool.name(),
                st.median,
                st.min,
                st.max,
                if tool == Tool::Prepull {
                    ratio.as_str()
                } else {
                    ""
                },
                r.request_mixes(*mode, tool),
                opt_secs(r.cpu_median(*mode, tool, |c| c.client)),
                opt_secs(r.cpu_median(*mode, tool, |c| c.containerd)),
                opt_secs(r.cpu_median(*mode, tool, |c| c.registry)),
                opt_secs(r.cpu_median(*mode, tool, |c| c.other)),
            );
        }
    }
    let _ = writeln!(md);
}

/// The performance targets this run can judge, each with its measured figure.
fn report_targets(md: &mut String, results: &[WorkloadResult], cx: &Context) {
    let mut rows = Vec::new();
    if let Some(r) = results.iter().find(|r| r.workload.id == WorkloadId::W5) {
        for mode in &cx.modes {
            if let Some(share) = r.link_share(*mode, Tool::Prepull) {
                rows.push((
                    format!(
                        "W5 {}: prepull reaches >= {:.0}% of the link's bandwidth",
                        mode.name(),
                        W5_LINK_SHARE_TARGET * 100.0
                    ),
                    format!(
                        "{:.0}% ({:.0} of {:.0} MB/s)",
                        share * 100.0,
                        share
                            * r.workload
                                .link
                                .as_ref()
                                .map_or(0.0, |l| l.spec.mbytes_per_sec()),
                        r.workload
                            .link
                            .as_ref()
                            .map_or(0.0, |l| l.spec.mbytes_per_sec())
                    ),
                    share >= W5_LINK_SHARE_TARGET,
                ));
            }
            if let (Some(c), Some(p)) = (
                r.median_wall(*mode, Tool::Ctr),
                r.median_wall(*mode, Tool::Prepull),
            ) {
                rows.push((
                    format!(
                        "W5 {}: prepull >= {W5_SPEEDUP_TARGET}x faster than ctr",
                        mode.name()
                    ),
                    format!("{:.2}x ({p:.2} s vs {c:.2} s)", c / p),
                    c / p >= W5_SPEEDUP_TARGET,
                ));
            }
        }
    }
    if let Some(r) = results.iter().find(|r| r.workload.id == WorkloadId::W6) {
        let tags = r.workload.images.len();
        for mode in &cx.modes {
            let passes: Vec<&Requests> = r
                .of(*mode, Tool::Prepull)
                .filter_map(|s| s.requests.as_ref())
                .collect();
            if !passes.is_empty() {
                let exact = passes
                    .iter()
                    .all(|q| q.count("HEAD") == tags && q.total() == tags);
                rows.push((
                    format!(
                        "W6 {}: exactly one HEAD per tag ({tags}), no GET",
                        mode.name()
                    ),
                    r.request_mixes(*mode, Tool::Prepull),
                    exact,
                ));
            }
            if let Some(p) = r.median_wall(*mode, Tool::Prepull) {
                rows.push((
                    format!(
                        "W6 {}: one pass over {tags} present images < {:.0} s",
                        mode.name(),
                        W6_TIME_TARGET.as_secs_f64()
                    ),
                    format!("{p:.2} s (median)"),
                    p < W6_TIME_TARGET.as_secs_f64(),
                ));
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Targets");
    let _ = writeln!(md);
    let _ = writeln!(md, "| Target | Measured | |");
    let _ = writeln!(md, "|---|---|---|");
    for (target, measured, ok) in rows {
        let _ = writeln!(md, "| {target} | {measured} | {} |", met(ok));
    }
    let _ = writeln!(md);
}

/// The sources' commit and whether `src`, `Cargo.*`, `build.rs` or `proto` have uncommitted
/// changes.
fn git_state() -> (String, bool) {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let head = command_line("git", &["-C", manifest_dir, "rev-parse", "--short", "HEAD"]);
    let status = command_line(
        "git",
        &[
            "-C",
            manifest_dir,
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
            "Cargo.lock",
            "build.rs",
            "proto",
        ],
    );
    (head, !status.is_empty())
}

/// Whether this prepull unpacks by default: it then has `--no-unpack` to opt out.
fn prepull_unpacks(prepull: &Path) -> anyhow::Result<bool> {
    let out = std::process::Command::new(prepull)
        .args(["pull", "--help"])
        .output()
        .with_context(|| format!("run {} pull --help", prepull.display()))?;
    if !out.status.success() {
        bail!(
            "{} pull --help failed with {}: {}",
            prepull.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).contains("--no-unpack"))
}

fn floor_mib(w: &Workload) -> usize {
    (w.bytes as usize).div_ceil(MIB)
}

/// The release prepull binary; builds it through cargo when it is missing.
fn prepull_binary() -> anyhow::Result<(PathBuf, String)> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                manifest_dir.join(t)
            }
        })
        .unwrap_or_else(|| manifest_dir.join("target"));
    let binary = target.join("release").join("prepull");
    if binary.is_file() {
        return Ok((binary, String::new()));
    }
    eprintln!(
        "{} is missing: running `cargo build --release --bin prepull` (a few minutes on 2 cores)",
        binary.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--bin", "prepull"])
        .current_dir(manifest_dir)
        .status()
        .context("run cargo build --release --bin prepull")?;
    if !status.success() || !binary.is_file() {
        bail!(
            "cargo build --release --bin prepull failed ({status}); {} still missing",
            binary.display()
        );
    }
    Ok((
        binary,
        "; built by this bench because it was missing".into(),
    ))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let load_before = load_average();
    eprintln!("load average: {load_before}");
    let (prepull, binary_note) = prepull_binary()?;
    // Taken now: others may commit while a long run goes on.
    let (git_head, dirty) = git_state();
    for tool in ["docker-registry", "dd", "sync"] {
        if find_in_path(tool).is_none() {
            bail!("`{tool}` is not in PATH; install docker-registry and coreutils (see /work/shared/notes/test-bench.md)");
        }
    }
    let gnu_time = Path::new(GNU_TIME).is_file();
    if !gnu_time {
        eprintln!(
            "WARNING: {GNU_TIME} (GNU time) is missing, so peak RSS and client CPU will not be \
             measured; install it with `apt-get install -y time`. Timing continues without it."
        );
    }
    let unpacks = prepull_unpacks(&prepull)?;
    let modes = match &args.modes {
        Some(m) => m.clone(),
        None if unpacks => vec![Mode::Fetch, Mode::Pull],
        None => vec![Mode::Fetch],
    };
    if !unpacks && modes.contains(&Mode::Pull) {
        bail!(
            "--modes pull needs a prepull that unpacks; {} has no --no-unpack",
            prepull.display()
        );
    }
    eprintln!(
        "prepull binary: {} ({}); modes: {}",
        prepull.display(),
        if unpacks {
            "unpacks by default"
        } else {
            "does not unpack"
        },
        modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let registry = Registry::start().await;
    let registry_dir = registry
        .storage_dir()
        .parent()
        .context("registry storage has no parent dir")?
        .to_path_buf();
    let bench = Bench {
        prepull,
        prepull_unpacks: unpacks,
        gnu_time,
        registry_pid: find_pid("docker-registry", &registry_dir),
        quiet_wait: args.quiet_wait,
        profiler: args.profile.clone().map(Profiler::new).transpose()?,
    };
    if bench.registry_pid.is_none() {
        eprintln!("warning: cannot find the registry's pid; its CPU time will not be reported");
    }

    // Push everything first, so the registry's storage is complete (and equally warm in the page
    // cache) before any timed run.
    let mut workloads = Vec::new();
    for id in &args.workloads {
        let runs = args.runs.unwrap_or(id.default_runs());
        workloads.push(push_workload(&registry, *id, runs).await);
    }

    // One containerd root hosts the floor's destination file: the same filesystem the runs write
    // to. It also tells the report which containerd and ctr the runs use.
    let max_mib = workloads
        .iter()
        .filter(|w| !w.id.warm())
        .map(floor_mib)
        .max()
        .unwrap_or(0);
    eprintln!("generating {max_mib} MiB of random bytes for the fsync floor's source");
    let floor_src = floor_source(max_mib)?;
    let floor_host = Containerd::start().await;
    let cx = Context {
        load_before,
        git_head,
        dirty,
        binary_note,
        containerd_version: floor_host.install().version.clone(),
        ctr: floor_host.install().ctr(),
        snapshotter: floor_host.snapshotter().to_string(),
        modes: modes.clone(),
    };

    let mut results = Vec::new();
    for mut w in workloads {
        match w.id {
            WorkloadId::W5 => {
                let wan = Wan::start(registry.storage_dir(), LinkSpec::W5).await?;
                eprintln!(
                    "[W5] registry at {} in network namespace {}: {}; measured HTTP round trip {:.1} ms",
                    wan.host(),
                    wan.netns,
                    wan.link.describe(),
                    wan.measured_rtt.unwrap_or_default().as_secs_f64() * 1e3
                );
                w.serve_via(Via::Wan(wan));
                let wire = wire_floor(&w, MIN_FLOOR_RUNS).await?;
                eprintln!(
                    "[W5] wire floor (all blobs at once, discarded): {}",
                    wire.iter()
                        .map(|d| format!("{:.2}s", d.as_secs_f64()))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                if let Some(link) = w.link.as_mut() {
                    link.wire = wire;
                }
            }
            WorkloadId::W6 => {
                let proxy = Proxy::start(&registry.host()).await;
                eprintln!("[W6] counting proxy at {}", proxy.host());
                w.serve_via(Via::Proxy(proxy));
            }
            WorkloadId::W1 | WorkloadId::W3 | WorkloadId::W4 => {}
        }
        // W6 writes nothing in its timed pass: no floor to compare with.
        let floor_runs = if w.id.warm() {
            0
        } else {
            w.runs.max(MIN_FLOOR_RUNS)
        };
        let floor = fsync_floor(
            floor_src.path(),
            floor_host.root(),
            floor_mib(&w),
            floor_runs,
        )?;
        eprintln!(
            "[{}] fsync floor, {} MiB: {}",
            w.id.name(),
            floor_mib(&w),
            floor
                .iter()
                .map(|d| format!("{:.2}s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut samples = Vec::with_capacity(2 * modes.len() * w.runs);
        for run in 1..=w.runs {
            for mode in &modes {
                for tool in [Tool::Prepull, Tool::Ctr] {
                    let s = bench.sample(&w, *mode, tool, run).await?;
                    eprintln!(
                        "[{}] run {run}/{} {:<5} {:<7} {:>7.2} s  {:>6.0} MB/s  RSS {} KiB  containerd {} KiB  CPU s client/containerd/registry/other {}/{}/{}/{} (top other: {}){}",
                        w.id.name(),
                        w.runs,
                        mode.name(),
                        tool.name(),
                        s.wall.as_secs_f64(),
                        mbps(w.bytes, s.wall.as_secs_f64()),
                        opt_kib(s.rss_kib),
                        opt_kib(s.containerd_rss_kib),
                        opt_secs(s.cpu.client),
                        opt_secs(s.cpu.containerd),
                        opt_secs(s.cpu.registry),
                        opt_secs(s.cpu.other),
                        s.top_others,
                        s.requests
                            .as_ref()
                            .map(|r| format!("  requests: {}", r.describe()))
                            .unwrap_or_default(),
                    );
                    if let Some(b) = s.reported_bytes {
                        let expected = if w.id.warm() {
                            0
                        } else {
                            w.bytes - w.manifest_bytes
                        };
                        if b != expected {
                            eprintln!(
                                "[{}] note: prepull reported {b} bytes fetched; expected {expected}",
                                w.id.name(),
                            );
                        }
                    }
                    samples.push(s);
                }
            }
        }
        // Tear the WAN (or the proxy) down before the next workload.
        w.via = Via::Loopback;
        results.push(WorkloadResult {
            workload: w,
            samples,
            floor,
        });
    }
    drop(floor_host);
    drop(floor_src);

    let md = report(&results, &bench, &cx);
    println!("{md}");
    // Profiled runs carry perf's overhead: their figures stay beside the profiles.
    let out = match (&args.report, &args.profile) {
        (Some(file), _) => file.clone(),
        (None, Some(dir)) => dir.join("ctr_compare.md"),
        (None, None) => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches")
            .join("results")
            .join("ctr_compare.md"),
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&out, &md).with_context(|| format!("write {}", out.display()))?;
    eprintln!("report written to {}", out.display());
    drop(registry);
    Ok(())
}
