//! The floors the tools are measured against: the disk's (`dd … conv=fsync` of a workload's
//! bytes onto containerd's filesystem) and, for W5, the link's (every blob downloaded at once by
//! a bare HTTP client, bytes discarded).

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::RngCore as _;

use crate::command::sync;
use crate::workload::Workload;
use crate::MIB;

/// The fsync floor is a median too, so it needs a few samples even when `--runs` is 1 or 2.
pub const MIN_FLOOR_RUNS: usize = 3;

/// Downloads every config and layer of `w` at once from its host with a bare HTTP client,
/// discarding the bytes, `runs` times: what the link delivers with no containerd, no hashing and
/// no disk behind it, the practical floor for W5 over the emulated link.
pub async fn wire_floor(w: &Workload, runs: usize) -> anyhow::Result<Vec<Duration>> {
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

/// A file of random bytes in memory (tmpfs when there is one, else the page cache) for dd to copy,
/// so the floor measures the destination disk, not a random number generator.
pub fn floor_source(mib: usize) -> anyhow::Result<tempfile::NamedTempFile> {
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
pub fn fsync_floor(
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

/// The workload's bytes in whole MiB: what the fsync floor writes for it.
pub fn floor_mib(w: &Workload) -> usize {
    (w.bytes as usize).div_ceil(MIB)
}
