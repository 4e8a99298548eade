//! What a timed run is and what it measured: the two tools, the two modes that compare them like
//! with like, and a run's wall time, memory, CPU per process and registry requests.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;

use crate::support;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Prepull,
    /// prepull with `--fetcher containerd`: containerd's transfer service fetches and unpacks
    /// the layers prepull resolved; prepull flushes once per image. Pull mode, containerd 2.x.
    PrepullContainerd,
    Ctr,
    /// CRI `ImageService/PullImage`, the kubelet's own pull, one image at a time (the kubelet's
    /// default, `serializeImagePulls: true`). Pull mode only: CRI always unpacks.
    Cri,
    /// CRI `PullImage`, four images at a time (`serializeImagePulls: false`,
    /// `maxParallelImagePulls: 4`). Only where a workload has many images (W4).
    Cri4,
    /// CRI `PullImage` one at a time with CRI told to flush each layer to disk before
    /// committing its snapshot (`image_pull_with_sync_fs = true`), as prepull does: the like for
    /// like peer for a pull that survives a power cut.
    CriSync,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Prepull => "prepull",
            Tool::PrepullContainerd => "prepull --fetcher containerd",
            Tool::Ctr => "ctr",
            Tool::Cri => "cri",
            Tool::Cri4 => "cri x4",
            Tool::CriSync => "cri sync_fs",
        }
    }

    /// The tools a run of `mode` compares, prepull first; `many_images`: the workload pulls many
    /// images, so CRI four at a time is compared too.
    pub fn compared(mode: Mode, many_images: bool) -> Vec<Tool> {
        let mut tools = Tool::compared_on_any(mode, many_images);
        if mode == Mode::Pull && crate::support::containerd::Series::from_env().major >= 2 {
            tools.insert(1, Tool::PrepullContainerd);
        }
        tools
    }

    fn compared_on_any(mode: Mode, many_images: bool) -> Vec<Tool> {
        match mode {
            Mode::Fetch => vec![Tool::Prepull, Tool::Ctr],
            Mode::Pull if many_images => vec![
                Tool::Prepull,
                Tool::Ctr,
                Tool::Cri,
                Tool::Cri4,
                Tool::CriSync,
            ],
            Mode::Pull => vec![Tool::Prepull, Tool::Ctr, Tool::Cri, Tool::CriSync],
        }
    }

    /// How many CRI `PullImage` calls run at once.
    pub fn cri_parallel(self) -> Option<usize> {
        match self {
            Tool::Cri | Tool::CriSync => Some(1),
            Tool::Cri4 => Some(4),
            Tool::Prepull | Tool::PrepullContainerd | Tool::Ctr => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Content store only.
    Fetch,
    /// Content store and unpacked snapshots.
    Pull,
}

impl Mode {
    pub fn parse(s: &str) -> anyhow::Result<Mode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fetch" => Ok(Mode::Fetch),
            "pull" => Ok(Mode::Pull),
            other => bail!("unknown mode {other:?} (known: fetch, pull)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Fetch => "fetch",
            Mode::Pull => "pull",
        }
    }

    /// The command each tool runs in this mode, for the report.
    pub fn command(self, tool: Tool, prepull_unpacks: bool) -> &'static str {
        match (self, tool) {
            (Mode::Fetch, Tool::Prepull) if prepull_unpacks => "prepull pull --no-unpack",
            (Mode::Fetch, Tool::Prepull) => "prepull pull",
            (Mode::Pull, Tool::Prepull) => "prepull pull --snapshotter S",
            (_, Tool::PrepullContainerd) => "prepull pull --snapshotter S --fetcher containerd",
            (Mode::Fetch, Tool::Ctr) => "ctr content fetch",
            (Mode::Pull, Tool::Ctr) => "ctr images pull --snapshotter S",
            (_, Tool::Cri) => "CRI PullImage, one image at a time",
            (_, Tool::Cri4) => "CRI PullImage, four images at a time",
            (_, Tool::CriSync) => {
                "CRI PullImage, one image at a time, image_pull_with_sync_fs = true"
            }
        }
    }
}

/// One timed run of one tool.
#[derive(Clone, Debug)]
pub struct Sample {
    pub run: usize,
    pub mode: Mode,
    pub tool: Tool,
    pub wall: Duration,
    /// Peak RSS of the client process (max over W4's ctr loop), in KiB.
    pub rss_kib: Option<u64>,
    /// containerd's own peak RSS (VmHWM, since its start just before the run), in KiB. Both tools
    /// stream every byte through containerd's Content.Write, so its memory counts too.
    pub containerd_rss_kib: Option<u64>,
    /// What prepull said it fetched (sum of `bytes_fetched` over its JSON lines).
    pub reported_bytes: Option<u64>,
    /// How long the run waited for a quiet machine, and the busy share it started with.
    pub waited: Duration,
    pub busy_share: Option<f64>,
    /// See [`top_others`](crate::proc::top_others).
    pub top_others: String,
    /// What the timed part asked of the registry (W6, behind the recording proxy).
    pub requests: Option<Requests>,
    /// The connections the timed part opened to the registry, and the most requests at once
    /// (W6, counted by the recording proxy).
    pub connections: Option<support::Connections>,
    /// CPU seconds (user + system) during the timed part: the client (sum over W4's ctr loop),
    /// containerd and the registry. On 2 cores these say where the wall time goes.
    pub cpu: Cpu,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub client: Option<f64>,
    pub containerd: Option<f64>,
    /// The registry serving the run; in W5 and W6 also the link emulator or the recording proxy
    /// in front of it, which run in the bench's own process.
    pub registry: Option<f64>,
    /// Busy CPU of the whole machine minus the three above: kernel threads (writeback) and
    /// anything else running meanwhile, e.g. other people's builds and tests on a shared box.
    pub other: Option<f64>,
}

/// A run counts as disturbed when CPU outside the three processes exceeds this share of the
/// machine's capacity during it.
pub const DISTURBED_SHARE: f64 = 0.10;

impl Sample {
    pub fn disturbed(&self, cores: f64) -> bool {
        self.cpu
            .other
            .is_some_and(|o| o > DISTURBED_SHARE * cores * self.wall.as_secs_f64())
    }
}

/// Requests one run made to the registry, by kind (`HEAD manifest`, `GET blob`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requests(BTreeMap<String, usize>);

impl Requests {
    pub fn of(records: &[support::Record]) -> Requests {
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

    pub fn count(&self, method: &str) -> usize {
        self.0
            .iter()
            .filter(|(k, _)| k.split(' ').next() == Some(method))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn total(&self) -> usize {
        self.0.values().sum()
    }

    pub fn describe(&self) -> String {
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
