//! Disk space: an image is refused before any byte is fetched when it would leave containerd's
//! filesystem with less free space than a reserve.
//!
//! The kubelet garbage-collects unpinned images once the image filesystem is 85% full and evicts
//! pods below 15% free, so the default reserve is 15%: pre-pulling must never be what pushes a
//! node into disk pressure. What an image needs is estimated from its manifest: the compressed
//! blobs containerd does not hold yet, plus, when unpacking, their unpacked size (estimated at
//! twice the compressed size, as layer sizes are only known after unpacking). Layers containerd
//! holds but that were never unpacked (pulled with `--no-unpack`, or by a pull that failed
//! before unpacking them) count their unpacked size too: a layer blob is taken as unpacked once
//! it carries the `containerd.io/uncompressed` label, which is set when it is applied (the label
//! holds its diff ID, not a size, so the estimate stays twice the compressed size).
//!
//! The estimate can be far off: a layer of zeros unpacks to a thousand times its compressed
//! size. So free space is also watched while each layer is applied, and an unpack that takes the
//! filesystem below the reserve is stopped and what it wrote removed (see `pull::unpack`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Unpacked bytes per compressed byte, estimated.
pub const UNPACK_ESTIMATE: u64 = 2;

/// How much space must stay free.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reserve {
    /// A number of bytes.
    Bytes(u64),
    /// A percentage of the filesystem's size.
    Percent(f64),
}

impl Reserve {
    /// The bytes that must stay free on a filesystem of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Reserve::Bytes(b) => b,
            Reserve::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

impl fmt::Display for Reserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reserve::Bytes(b) => f.write_str(&human_bytes(*b)),
            Reserve::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Reserve {
    type Err = String;

    /// `15%`, `0`, `512MiB`, `10GiB`, `2GB`, or plain bytes.
    fn from_str(s: &str) -> Result<Reserve, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(v) if (0.0..100.0).contains(&v) => Ok(Reserve::Percent(v)),
                _ => Err(format!(
                    "{s:?}: a percentage must be at least 0% and below 100%"
                )),
            };
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KB" => 1_000,
            "KiB" => 1 << 10,
            "M" | "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "G" | "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            "T" | "TB" => 1_000_000_000_000,
            "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?}; use a percentage (15%) or bytes with B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
                ))
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{s:?}: expected a number, like 15% or 10GiB"))?;
        Ok(Reserve::Bytes((value * scale as f64) as u64))
    }
}

/// Where containerd keeps its data, and what must stay free there.
#[derive(Clone, Debug)]
pub struct SpaceCheck {
    /// A directory on containerd's filesystem: its content store's, as found by
    /// [`SpaceCheck::locate`].
    pub path: PathBuf,
    /// What must stay free.
    pub reserve: Reserve,
    /// Set once the operator was told that the filesystem cannot be inspected.
    pub warned: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bytes claimed by pulls in progress, which free space does not show yet.
    claimed: std::sync::Arc<std::sync::Mutex<u64>>,
}

/// Space claimed by a pull in progress; released when dropped.
#[derive(Debug)]
pub struct Claim {
    claimed: std::sync::Arc<std::sync::Mutex<u64>>,
    bytes: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut c = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        *c = c.saturating_sub(self.bytes);
    }
}

impl SpaceCheck {
    /// Keeps `reserve` free on the filesystem holding `path`.
    pub fn new(path: PathBuf, reserve: Reserve) -> SpaceCheck {
        SpaceCheck {
            path,
            reserve,
            warned: Default::default(),
            claimed: Default::default(),
        }
    }

    /// Free bytes (as `df` shows them) and the size of containerd's filesystem, now.
    pub fn usage(&self) -> std::io::Result<(u64, u64)> {
        filesystem(&self.path)
    }

    /// Claims the space blobs of `sizes` need, if it is there after what other pulls in
    /// progress claimed. The claim holds until dropped.
    pub fn claim(&self, sizes: &[u64], unpack: bool) -> Result<Claim, SpaceError> {
        self.claim_need(Need::blobs(sizes, unpack))
    }

    /// Claims the space `need` says an image will write, if it is there after what other pulls
    /// in progress claimed. The claim holds until dropped.
    pub fn claim_need(&self, need: Need) -> Result<Claim, SpaceError> {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = self.shortfall_after(need, *claimed) {
            return Err(e);
        }
        *claimed = claimed.saturating_add(need.written);
        Ok(Claim {
            claimed: self.claimed.clone(),
            bytes: need.written,
        })
    }
}

/// What an image will write to containerd's filesystem, estimated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Need {
    /// Compressed bytes to download.
    pub download: u64,
    /// All bytes to write: the downloads, and the estimated unpacked size of what is unpacked.
    pub written: u64,
    /// Whether `written` includes unpacking.
    pub unpacks: bool,
}

impl Need {
    /// Blobs of `sizes` to download, each unpacked too with `unpack`.
    pub fn blobs(sizes: &[u64], unpack: bool) -> Need {
        let download = sizes.iter().fold(0u64, |a, b| a.saturating_add(*b));
        Need {
            download,
            written: download.saturating_mul(if unpack { 1 + UNPACK_ESTIMATE } else { 1 }),
            unpacks: unpack && download > 0,
        }
    }

    /// Adds a layer of `compressed` bytes that is on the node but still to be unpacked.
    pub fn unpack_present(&mut self, compressed: u64) {
        self.written = self
            .written
            .saturating_add(compressed.saturating_mul(UNPACK_ESTIMATE));
        self.unpacks |= compressed > 0;
    }
}

/// Not enough space for an image.
#[derive(Debug, thiserror::Error)]
#[error(
    "containerd's filesystem ({}) has {} free and must keep {} free (--min-free-space {}); this \
     image needs about {} more ({} of blobs{}): free space on the node, or lower --min-free-space",
    path.display(), human_bytes(*free), human_bytes(*reserve), reserve_flag,
    human_bytes(*needed), human_bytes(*blobs),
    if *unpacked { format!(", unpacked estimated at {UNPACK_ESTIMATE}x") } else { String::new() }
)]
pub struct SpaceError {
    /// The filesystem checked.
    pub path: PathBuf,
    /// Free bytes (for unprivileged users, as `df` shows).
    pub free: u64,
    /// Bytes that must stay free.
    pub reserve: u64,
    /// The reserve as configured.
    pub reserve_flag: Reserve,
    /// Bytes the image needs, estimated.
    pub needed: u64,
    /// Compressed bytes to download.
    pub blobs: u64,
    /// Whether the estimate includes unpacking.
    pub unpacked: bool,
}

impl SpaceCheck {
    fn shortfall_after(&self, need: Need, claimed: u64) -> Option<SpaceError> {
        let (free, total) = match filesystem(&self.path) {
            Ok(v) => v,
            Err(e) => {
                if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    // It could be inspected at start (see `locate`): a mount went away.
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %e,
                        "cannot check free space on containerd's filesystem any more; pulling \
                         without the check"
                    );
                }
                return None;
            }
        };
        let needed = need.written;
        if needed == 0 {
            // Nothing to write: a warm image never fails for lack of space.
            return None;
        }
        // Other pulls in progress will take what they claimed.
        let free = free.saturating_sub(claimed);
        let reserve = self.reserve.bytes(total);
        (free < needed.saturating_add(reserve)).then(|| SpaceError {
            path: self.path.clone(),
            free,
            reserve,
            reserve_flag: self.reserve,
            needed,
            blobs: need.download,
            unpacked: need.unpacks,
        })
    }
}

/// The content store's directory below containerd's root.
pub const CONTENT_DIR: &str = "io.containerd.content.v1.content";

/// No filesystem to check space on could be found, while a reserve is asked for.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot check free space on containerd's filesystem: {}; --containerd-root {}: {flag_problem}. \
     Point --containerd-root at containerd's root directory as seen from here (mount it into \
     the container), or pass --min-free-space 0 to pull without the check",
    match reported {
        Some(p) => format!("containerd keeps its content in {}, which is not visible here", p.display()),
        None => "containerd does not say where it keeps its content".to_string(),
    },
    flag.display()
)]
pub struct LocateError {
    /// The content store directory containerd reported, if it did.
    pub reported: Option<PathBuf>,
    /// `--containerd-root` as given.
    pub flag: PathBuf,
    /// Why the flag's directory cannot be used.
    pub flag_problem: String,
}

impl SpaceCheck {
    /// The check for the filesystem holding containerd's content store: the directory
    /// containerd itself `reported` (its content plugin's root), when it is visible here, else
    /// the one below `containerd_root` (the `--containerd-root` flag). A directory counts only
    /// if it holds containerd's data, so a wrong path that happens to exist is not checked in
    /// containerd's place.
    pub fn locate(
        reported: Option<&Path>,
        containerd_root: &Path,
        reserve: Reserve,
    ) -> Result<SpaceCheck, LocateError> {
        let from_containerd = reported.and_then(|content| {
            if content.is_dir() {
                inspectable(content).ok()
            } else {
                // containerd 2.x creates its content store with the first blob.
                content.parent().and_then(|root| containerd_dir(root).ok())
            }
        });
        if let Some(dir) = from_containerd {
            return Ok(SpaceCheck::new(dir, reserve));
        }
        match containerd_dir(containerd_root) {
            Ok(dir) => {
                if let Some(r) = reported {
                    tracing::debug!(
                        reported = %r.display(),
                        used = %dir.display(),
                        "containerd's content store is mounted elsewhere here"
                    );
                }
                Ok(SpaceCheck::new(dir, reserve))
            }
            Err(flag_problem) => Err(LocateError {
                reported: reported.map(Path::to_path_buf),
                flag: containerd_root.to_path_buf(),
                flag_problem,
            }),
        }
    }
}

/// containerd's metadata database, below its root: present from containerd's first start.
const METADATA_DB: &str = "io.containerd.metadata.v1.bolt/meta.db";

/// The directory to check below containerd's `root`: its content store, or the root itself
/// before the first blob was stored; why `root` does not do otherwise.
fn containerd_dir(root: &Path) -> Result<PathBuf, String> {
    let content = root.join(CONTENT_DIR);
    if content.is_dir() {
        return inspectable(&content);
    }
    if root.join(METADATA_DB).is_file() {
        return inspectable(root);
    }
    Err(format!(
        "no containerd data there (neither {CONTENT_DIR} nor {METADATA_DB})"
    ))
}

fn inspectable(dir: &Path) -> Result<PathBuf, String> {
    filesystem(dir)
        .map(|_| dir.to_path_buf())
        .map_err(|e| format!("cannot inspect the filesystem of {} ({e})", dir.display()))
}

/// Free bytes (available to unprivileged users, as `df` reports) and the size of the
/// filesystem holding `path`.
fn filesystem(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `stats` points to writable memory of the
    // right type; statvfs fills it completely when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so the struct is initialized.
    let stats = unsafe { stats.assume_init() };
    #[allow(clippy::useless_conversion)] // c_ulong is 32 bits on some targets
    let block = u64::from(stats.f_frsize);
    Ok((
        #[allow(clippy::useless_conversion)]
        u64::from(stats.f_bavail).saturating_mul(block),
        #[allow(clippy::useless_conversion)]
        u64::from(stats.f_blocks).saturating_mul(block),
    ))
}

/// `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_parse_as_operators_write_them() {
        assert_eq!("15%".parse(), Ok(Reserve::Percent(15.0)));
        assert_eq!("0".parse(), Ok(Reserve::Bytes(0)));
        assert_eq!("10GiB".parse(), Ok(Reserve::Bytes(10 << 30)));
        assert_eq!("1.5 GB".parse(), Ok(Reserve::Bytes(1_500_000_000)));
        assert_eq!("512MiB".parse(), Ok(Reserve::Bytes(512 << 20)));
        assert!("100%".parse::<Reserve>().is_err());
        assert!("ten".parse::<Reserve>().unwrap_err().contains("15%"));
        assert!("3 parsecs"
            .parse::<Reserve>()
            .unwrap_err()
            .contains("unknown unit"));
    }

    #[test]
    fn the_estimate_counts_unpacking_and_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = filesystem(dir.path()).unwrap();
        assert!(free > 0 && total >= free);
        let check = SpaceCheck::new(dir.path().to_path_buf(), Reserve::Bytes(0));
        assert!(check.claim(&[1 << 20], true).is_ok());
        let too_big = free / 2 + 1;
        assert!(check.claim(&[too_big], false).is_ok());
        // Two pulls that each fit alone do not both get to claim the space.
        let first = check.claim(&[too_big], false).unwrap();
        assert!(check.claim(&[too_big], false).is_err());
        drop(first);
        assert!(check.claim(&[too_big], false).is_ok());
        // Nothing to write never fails, however full the disk. (Each claim here is released
        // at once: only the verdict matters.)
        let full = SpaceCheck::new(dir.path().to_path_buf(), Reserve::Bytes(u64::MAX));
        assert!(full.claim(&[], true).is_ok());
        assert!(full.claim(&[1], false).is_err());
        assert!(
            full.claim(&[u64::MAX, u64::MAX], true).is_err(),
            "no overflow"
        );
        let e = check.claim(&[too_big], true).unwrap_err();
        assert_eq!(e.needed, too_big * 3);
        // A layer on the node but not unpacked still needs its unpacked size.
        let mut unpack_only = Need::blobs(&[], true);
        assert_eq!(unpack_only.written, 0);
        unpack_only.unpack_present(too_big);
        let e = check.claim_need(unpack_only).unwrap_err();
        assert_eq!((e.needed, e.blobs), (too_big * 2, 0));
        assert!(e.to_string().contains("unpacked estimated at 2x"), "{e}");
        assert!(e.to_string().contains("--min-free-space"), "{e}");
        let strict = SpaceCheck {
            reserve: Reserve::Percent(99.9),
            ..check
        };
        assert!(strict.claim(&[1], false).is_err() || free as f64 > total as f64 * 0.999);
    }

    #[test]
    fn the_content_store_containerd_reports_wins_then_the_flag_else_an_error() {
        let reported_root = tempfile::tempdir().unwrap();
        let reported = reported_root.path().join(CONTENT_DIR);
        let root = tempfile::tempdir().unwrap();
        let reserve = Reserve::Percent(15.0);

        // Neither holds containerd's data: a directory that merely exists is not enough.
        let e = SpaceCheck::locate(Some(&reported), root.path(), reserve).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains(&reported.display().to_string())
                && message.contains(&format!("--containerd-root {}", root.path().display()))
                && message.contains("--min-free-space 0"),
            "{message}"
        );
        let e = SpaceCheck::locate(None, Path::new("/nonexistent/root"), reserve).unwrap_err();
        assert!(e.to_string().contains("does not say"), "{e}");

        // The flag's root, before its first blob (only the metadata database), then after.
        std::fs::create_dir_all(root.path().join(METADATA_DB)).unwrap();
        let e = SpaceCheck::locate(None, root.path(), reserve).unwrap_err();
        assert!(e.to_string().contains(METADATA_DB), "not a file: {e}");
        std::fs::remove_dir(root.path().join(METADATA_DB)).unwrap();
        std::fs::write(root.path().join(METADATA_DB), b"").unwrap();
        let check = SpaceCheck::locate(Some(&reported), root.path(), reserve).unwrap();
        assert_eq!(
            check.path,
            root.path(),
            "mounted elsewhere here: the flag's"
        );
        std::fs::create_dir(root.path().join(CONTENT_DIR)).unwrap();
        let check = SpaceCheck::locate(Some(&reported), root.path(), reserve).unwrap();
        assert_eq!(check.path, root.path().join(CONTENT_DIR));

        std::fs::create_dir(&reported).unwrap();
        let check = SpaceCheck::locate(Some(&reported), root.path(), reserve).unwrap();
        assert_eq!(check.path, reported, "containerd's own answer first");
        let check =
            SpaceCheck::locate(Some(&reported), Path::new("/nonexistent"), reserve).unwrap();
        assert_eq!(check.path, reported);
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(32 << 20), "32.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
