//! `hot_path`: Criterion micro-benchmarks of the two things every pulled byte goes through.
//!
//! - `verify`: [`prepull::digest::Verifier`] (size + digest checked as bytes stream past) and the
//!   bare [`prepull::digest::Hasher`] under it, over a 32 MiB blob fed in 512 KiB chunks, for
//!   SHA-256 and SHA-512. This is the CPU prepull itself spends per byte.
//! - `content_write`: a 32 MiB blob written into a real containerd (started by the bench in a temp
//!   dir, as the integration tests do) through [`prepull::store::Store::open_writer`] and
//!   [`prepull::store::ContentWriter`], fed in 64 KiB pieces (about what an HTTP body yields),
//!   for several `Content.Write` message sizes, committed (containerd checks the digest and
//!   fsyncs) and deleted again outside the timing. Skipped, with a note, when containerd cannot
//!   run here (not root, not installed).
//!
//! Run with `cargo bench --bench hot_path` (a filter after `--` picks groups, e.g. `-- verify`).

use testbench as support;

use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use rand::RngCore as _;

use prepull::digest::{Algorithm, Digest, Hasher, Verifier};
use prepull::store::{Opened, Store};
use support::Containerd;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// One W1 layer.
const BLOB: usize = 32 * MIB;
/// What the verifier is fed per call in `verify`.
const VERIFY_CHUNK: usize = 512 * KIB;
/// What `content_write` hands `ContentWriter::write` per call.
const INPUT_PIECE: usize = 64 * KIB;
/// `Content.Write` data bytes per message; prepull's default is `prepull::store::WRITE_CHUNK`.
const MESSAGE_SIZES: [usize; 6] = [64 * KIB, 256 * KIB, 512 * KIB, MIB, 2 * MIB, 4 * MIB];

fn random_blob(len: usize) -> Vec<u8> {
    let mut blob = vec![0u8; len];
    rand::rng().fill_bytes(&mut blob);
    blob
}

fn verify(c: &mut Criterion) {
    let blob = random_blob(BLOB);
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Bytes(BLOB as u64));
    group.sample_size(20);
    for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
        let digest = Digest::of(algorithm, &blob);
        group.bench_function(BenchmarkId::new("verifier", algorithm.as_str()), |b| {
            b.iter(|| {
                let mut v = Verifier::new(&digest, BLOB as u64);
                for chunk in blob.chunks(VERIFY_CHUNK) {
                    v.update(std::hint::black_box(chunk))
                        .expect("chunk within size");
                }
                v.finish().expect("digest matches");
            })
        });
        group.bench_function(BenchmarkId::new("hasher", algorithm.as_str()), |b| {
            b.iter(|| {
                let mut h = Hasher::new(algorithm);
                for chunk in blob.chunks(VERIFY_CHUNK) {
                    h.update(std::hint::black_box(chunk));
                }
                std::hint::black_box(h.finish())
            })
        });
    }
    group.finish();
}

/// Why `content_write` cannot run here, if it cannot.
fn containerd_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    let in_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
    };
    if !in_path("containerd") {
        return Some("containerd is not installed (scripts/setup.sh)".into());
    }
    None
}

/// Writes `blob` as one ingest with `message` bytes per `Content.Write` message and commits it.
async fn write_once(
    store: &Store,
    lease: &prepull::store::Lease,
    reference: &str,
    digest: &Digest,
    blob: &[u8],
    message: usize,
) {
    let Opened::Writer(mut writer) = store
        .open_writer(lease, reference, digest, blob.len() as u64)
        .await
        .expect("open the ingest")
    else {
        panic!("{digest} is still in the content store: the previous iteration did not delete it");
    };
    writer.set_message_size(message);
    writer.restart();
    for piece in blob.chunks(INPUT_PIECE) {
        writer.write(piece).await.expect("write a piece");
    }
    writer
        .commit(Default::default())
        .await
        .expect("commit the blob");
}

/// Removes the committed blob so the next iteration writes it afresh.
async fn delete_blob(c: &Containerd, digest: &Digest) {
    use containerd_client::services::v1::content_client::ContentClient;
    use containerd_client::services::v1::DeleteContentRequest;
    let mut request = tonic::Request::new(DeleteContentRequest {
        digest: digest.to_string(),
    });
    request.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static("k8s.io"),
    );
    ContentClient::new(c.channel().await)
        .delete(request)
        .await
        .expect("delete the blob");
}

fn content_write(c: &mut Criterion) {
    if let Some(why) = containerd_unavailable() {
        eprintln!("content_write skipped: {why}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    let containerd = runtime.block_on(Containerd::start());
    let store = runtime
        .block_on(Store::connect(containerd.socket(), "k8s.io"))
        .expect("connect to the bench containerd");
    let lease = runtime
        .block_on(store.create_lease("hot-path-bench", Duration::from_secs(3600)))
        .expect("create a lease");
    let blob = random_blob(BLOB);
    let digest = Digest::sha256(&blob);
    let reference = format!("layer-{digest}");

    let mut group = c.benchmark_group("content_write");
    group.throughput(Throughput::Bytes(BLOB as u64));
    // Each iteration writes and fsyncs 32 MiB: a few dozen per size say enough.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    for message in MESSAGE_SIZES {
        group.bench_with_input(
            BenchmarkId::new("message", format!("{}KiB", message / KIB)),
            &message,
            |b, &message| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let mut timed = Duration::ZERO;
                        for _ in 0..iters {
                            let started = Instant::now();
                            write_once(&store, &lease, &reference, &digest, &blob, message).await;
                            timed += started.elapsed();
                            delete_blob(&containerd, &digest).await;
                        }
                        timed
                    })
                })
            },
        );
    }
    group.finish();
    let _ = runtime.block_on(store.delete_lease(lease));
    drop(store);
    drop(containerd);
}

criterion_group!(benches, verify, content_write);
criterion_main!(benches);
