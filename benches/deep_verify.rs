//! `deep_verify`: what `prepull verify --deep` costs, against the least any such check must do:
//! read each layer blob from containerd's content store and decompress it, once.
//!
//! Run with `cargo bench --bench deep_verify` (as root; `PREPULL_TEST_CONTAINERD` and
//! `PREPULL_TEST_SNAPSHOTTER` pick the containerd series and snapshotter, as for the tests;
//! `PREPULL_BENCH_ROUNDS` the rounds, 5 by default). The image is ctr_compare's W1: 8 layers x 32
//! MiB of random bytes. Alternating rounds of:
//! - the floor: every layer read through the content API and gunzipped, two layers at a time
//!   (as the deep check reads them), the output discarded;
//! - `prepull verify IMAGE` (no `--deep`: every blob read back and hashed), which `verify --deep`
//!   does first;
//! - `prepull verify --deep IMAGE` (which also reads every unpacked file and compares it with
//!   its layer entry);
//! - the same with `--max-read-rate 128MiB`, whose time must be at least the bytes it reads (layers
//!   and files) over that rate, less the 0.1 s burst the limiter grants at the start.
//!
//! Each round measures the floor next to the runs it is compared with, so a machine busy with
//! other work disturbs both alike: the ratio printed is the median of the rounds' own ratios.
//! CPU time is printed too (the client's: the bench itself for the floor, prepull for the
//! rest; and containerd's), which other work on the machine disturbs far less than wall time.
//!
//! Prints a markdown table of medians and the ratios to the floor.

use testbench as support;

use std::io::Read;
use std::time::Instant;

use prepull::digest::Digest;
use prepull::store::Store;
use support::{push_image, Containerd, ImageSpec, Prepull, Registry};

const MIB: usize = 1 << 20;
const ROUNDS: usize = 5;
const RATE: &str = "128MiB";

/// One timed run: wall seconds, the client's CPU seconds, containerd's CPU seconds.
#[derive(Clone, Copy)]
struct Sample {
    wall: f64,
    client: f64,
    containerd: f64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds = std::env::var("PREPULL_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(ROUNDS);
    let (containerd, registry) = tokio::join!(Containerd::start(), Registry::start());
    let host = registry.host();
    let image = push_image(&host, "bench/w1", "1", &ImageSpec::new(&[32 * MIB; 8])).await;
    let reference = format!("{host}/bench/w1:1");
    Prepull::new("pull")
        .containerd(&containerd)
        .args(["--plain-http", &host, &reference])
        .env("PREPULL_MIN_FREE_SPACE", "64MiB")
        .success()
        .await;
    let store = Store::connect(containerd.socket(), "k8s.io").await.unwrap();
    let layers: Vec<Digest> = image
        .layers
        .iter()
        .map(|l| l.digest.parse().unwrap())
        .collect();
    let layer_bytes: u64 = image.layers.iter().map(|l| l.size).sum();
    let daemon = containerd.pid().expect("containerd runs");

    let mut runs: [Vec<Sample>; 4] = Default::default();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        runs[0].push(measure(daemon, Client::Bench, read_and_gunzip(&store, &layers)).await);
        runs[1].push(measure(daemon, Client::Child, verify(&containerd, &reference, &[])).await);
        runs[2].push(
            measure(
                daemon,
                Client::Child,
                verify(&containerd, &reference, &["--deep"]),
            )
            .await,
        );
        runs[3].push(
            measure(
                daemon,
                Client::Child,
                verify(
                    &containerd,
                    &reference,
                    &["--deep", "--max-read-rate", RATE],
                ),
            )
            .await,
        );
    }
    // What the paced check reads at least: every layer, and every unpacked file (about as many
    // bytes again: the layers are random, so gzip barely shrinks them); the limiter lets the
    // first 0.1 s of bytes pass at once.
    let least = (2 * layer_bytes) as f64 / (128 * MIB) as f64 - 0.1;
    let floor = &runs[0];
    let row = |name: &str, runs: &[Sample], note: &str| {
        let wall = median(runs.iter().map(|s| s.wall));
        let ratio = median(runs.iter().zip(floor).map(|(s, f)| s.wall / f.wall));
        let (client, daemon) = (
            median(runs.iter().map(|s| s.client)),
            median(runs.iter().map(|s| s.containerd)),
        );
        let cpu_ratio = median(
            runs.iter()
                .zip(floor)
                .map(|(s, f)| (s.client + s.containerd) / (f.client + f.containerd)),
        );
        println!(
            "| {name} | {wall:.2}{note} | {ratio:.2} | {client:.2} + {daemon:.2} | {cpu_ratio:.2} |"
        );
    };
    println!(
        "| containerd {}, {} | wall s (median of {rounds}) | x floor (median of the rounds' ratios) | CPU s: client + containerd (medians) | CPU x floor |",
        containerd.series(),
        containerd.snapshotter()
    );
    println!("|---|---|---|---|---|");
    row("floor: read + gunzip 8 x 32 MiB layers once", &runs[0], "");
    row("`verify` (every blob read back and hashed)", &runs[1], "");
    row("`verify --deep`", &runs[2], "");
    let paced = median(runs[3].iter().map(|s| s.wall));
    row(
        &format!("`verify --deep --max-read-rate {RATE}`"),
        &runs[3],
        &format!(" (at least {least:.2} by the rate)"),
    );
    assert!(
        paced >= least * 0.95,
        "the read-rate limit was not honoured: {paced:.2} s for at least {least:.2} s of reading"
    );
}

/// Whose CPU time a run is: the bench's own (the floor runs in it) or its child's (prepull).
#[derive(Clone, Copy)]
enum Client {
    Bench,
    Child,
}

/// Runs `work`, timing it and taking the CPU time it cost the client and containerd.
async fn measure(
    daemon: u32,
    client: Client,
    work: impl std::future::Future<Output = ()>,
) -> Sample {
    let who = match client {
        Client::Bench => libc::RUSAGE_SELF,
        Client::Child => libc::RUSAGE_CHILDREN,
    };
    let (client_before, daemon_before) = (rusage_secs(who), process_cpu_secs(daemon));
    let started = Instant::now();
    work.await;
    let wall = started.elapsed().as_secs_f64();
    Sample {
        wall,
        client: rusage_secs(who) - client_before,
        containerd: process_cpu_secs(daemon) - daemon_before,
    }
}

/// Reads every layer through the content API and decompresses it, two at a time.
async fn read_and_gunzip(store: &Store, layers: &[Digest]) {
    for pair in layers.chunks(2) {
        let mut tasks = Vec::new();
        for digest in pair {
            let (store, digest) = (store.clone(), digest.clone());
            tasks.push(tokio::spawn(async move {
                let mut chunks = store.read_chunks(&digest).await.unwrap();
                let mut compressed = Vec::new();
                while let Some(chunk) = chunks.next().await.unwrap() {
                    compressed.extend_from_slice(&chunk);
                }
                tokio::task::spawn_blocking(move || {
                    let mut out = vec![0u8; 1 << 16];
                    let mut gz = flate2::read::GzDecoder::new(&compressed[..]);
                    while gz.read(&mut out).unwrap() > 0 {}
                })
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}

/// `prepull verify IMAGE` with `extra` arguments.
async fn verify(containerd: &Containerd, reference: &str, extra: &[&str]) {
    Prepull::new("verify")
        .containerd(containerd)
        .args(extra)
        .arg(reference)
        .success()
        .await;
}

/// User + system CPU seconds of this process (`RUSAGE_SELF`) or of its children waited for
/// (`RUSAGE_CHILDREN`).
fn rusage_secs(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(who, &mut usage), 0, "getrusage");
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// User + system CPU seconds a process has used so far, from `/proc/PID/stat`.
fn process_cpu_secs(pid: u32) -> f64 {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read containerd's stat");
    // The command name may hold spaces: count the fields after its closing parenthesis, where
    // field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let (_, rest) = stat.rsplit_once(')').expect("a stat line");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
