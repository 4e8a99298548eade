//! `deep_verify`: what `prepull verify --deep` costs, against the least any such check must do:
//! read each layer blob from containerd's content store and decompress it, once.
//!
//! Run with `cargo bench --bench deep_verify` (as root; `PREPULL_TEST_CONTAINERD` and
//! `PREPULL_TEST_SNAPSHOTTER` pick the containerd series and snapshotter, as for the tests). The
//! image is ctr_compare's W1: 8 layers x 32 MiB of random bytes. Three alternating rounds of:
//! - the floor: every layer read through the content API and gunzipped, two layers at a time
//!   (as the deep check reads them), the output discarded;
//! - `prepull verify --deep IMAGE` (which also reads every unpacked file and hashes it);
//! - the same with `--max-read-rate 128MiB`, whose time must be at least the bytes it reads (layers
//!   and files) over that rate.
//!
//! Prints a markdown table of medians and the ratio to the floor.

use testbench as support;

use std::io::Read;
use std::time::Instant;

use prepull::digest::Digest;
use prepull::store::Store;
use support::{push_image, Containerd, ImageSpec, Prepull, Registry};

const MIB: usize = 1 << 20;
const ROUNDS: usize = 3;
const RATE: &str = "128MiB";

#[tokio::main(flavor = "multi_thread")]
async fn main() {
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

    let (mut floor, mut deep, mut paced) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", round + 1);
        floor.push(read_and_gunzip(&store, &layers).await);
        deep.push(verify_deep(&containerd, &reference, &[]).await);
        paced.push(verify_deep(&containerd, &reference, &["--max-read-rate", RATE]).await);
    }
    let (floor, deep, paced) = (median(floor), median(deep), median(paced));
    // What the paced check reads at least: every layer, and every unpacked file (about as many
    // bytes again: the layers are random, so gzip barely shrinks them).
    let least = (2 * layer_bytes) as f64 / (128 * MIB) as f64;
    println!(
        "| containerd {}, {} | seconds (median of {ROUNDS}) | x floor |",
        containerd.series(),
        containerd.snapshotter()
    );
    println!("|---|---|---|");
    println!("| floor: read + gunzip 8 x 32 MiB layers once | {floor:.2} | 1.00 |");
    println!("| `verify --deep` | {deep:.2} | {:.2} |", deep / floor);
    println!(
        "| `verify --deep --max-read-rate {RATE}` | {paced:.2} (at least {least:.2} by the rate) | {:.2} |",
        paced / floor
    );
    assert!(
        paced >= least * 0.95,
        "the read-rate limit was not honoured: {paced:.2} s for at least {least:.2} s of reading"
    );
}

/// Reads every layer through the content API and decompresses it, two at a time: seconds.
async fn read_and_gunzip(store: &Store, layers: &[Digest]) -> f64 {
    let started = Instant::now();
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
    started.elapsed().as_secs_f64()
}

/// `prepull verify --deep IMAGE` with `extra` arguments: seconds.
async fn verify_deep(containerd: &Containerd, reference: &str, extra: &[&str]) -> f64 {
    let started = Instant::now();
    Prepull::new("verify")
        .containerd(containerd)
        .args(["--deep", reference])
        .args(extra)
        .success()
        .await;
    started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
