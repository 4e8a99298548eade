//! Disk space as `df` and `du` see it, and filling a filesystem on purpose: for tests that run
//! containerd out of space (its root on a small tmpfs, see
//! [`super::ContainerdOptions::root_tmpfs_bytes`]).

use std::io::Write as _;
use std::path::Path;

const MIB: usize = 1 << 20;

/// Bytes available on the filesystem holding `path`, as `df` shows them.
pub fn free_bytes(path: &Path) -> u64 {
    // A header line, then the number.
    bytes_from("df", &["--output=avail", "-B1"], path, 1)
}

/// Bytes on disk under `path`, as `du` counts them.
pub fn used_bytes(path: &Path) -> u64 {
    bytes_from("du", &["-s", "-B1"], path, 0)
}

/// The number starting line `line` of what `tool args path` prints.
fn bytes_from(tool: &str, args: &[&str], path: &Path, line: usize) -> u64 {
    let out = std::process::Command::new(tool)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(line)
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{tool} prints no size for {}", path.display()))
}

/// Writes `bytes` into the file `path` (created anew).
pub fn write_filler(path: &Path, bytes: u64) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).expect("create the filler"));
    let chunk = vec![0xa5u8; MIB];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB as u64) as usize;
        w.write_all(&chunk[..n]).expect("write the filler");
        left -= n as u64;
    }
    w.flush().expect("write the filler");
}

/// Fills the filesystem holding the directory `dir` (with the file `dir/filler`) until `free`
/// bytes are left.
pub fn fill_until(dir: &Path, free: u64) {
    write_filler(&dir.join("filler"), free_bytes(dir).saturating_sub(free));
}
