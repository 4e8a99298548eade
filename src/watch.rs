//! Noticing that files changed on disk, the way Kubernetes changes mounted volumes.
//!
//! Kubernetes updates a mounted ConfigMap or Secret by writing a new `..<timestamp>` directory
//! and swapping the `..data` symlink to it; an operator on the node edits files in place or
//! replaces them. Either shows as a new resolved path, size, inode or modification time of a file,
//! or of an entry of a watched directory. A [`Fingerprint`] is those facts for a set of paths:
//! cheap to take (a few `stat` calls), compared to notice a change without reading contents.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The identity and version of a set of files and directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<Stamp>);

impl Fingerprint {
    /// Takes the fingerprint of `paths`: each path, following symlinks, and for a directory
    /// (a mounted volume) each of its entries too. Missing paths count as missing.
    pub fn of(paths: &[PathBuf]) -> Fingerprint {
        let mut out = Vec::new();
        for path in paths {
            out.push(Stamp::of(path));
            if let Ok(entries) = std::fs::read_dir(path) {
                let mut names: Vec<PathBuf> =
                    entries.filter_map(Result::ok).map(|e| e.path()).collect();
                names.sort();
                out.extend(names.iter().map(|p| Stamp::of(p)));
            }
        }
        Fingerprint(out)
    }
}

/// One path's identity and version; zero and `None` fields when it does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    resolved: Option<PathBuf>,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Stamp {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok();
        Stamp {
            path: path.to_path_buf(),
            resolved: std::fs::canonicalize(path).ok(),
            len: meta.as_ref().map_or(0, |m| m.len()),
            modified: meta.as_ref().and_then(|m| m.modified().ok()),
            inode: meta.as_ref().map_or(0, |m| m.ino()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_edits_replacements_symlink_swaps_and_creation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("list.yaml");
        let paths = [file.clone()];
        let missing = Fingerprint::of(&paths);
        std::fs::write(&file, "a").unwrap();
        let created = Fingerprint::of(&paths);
        assert_ne!(missing, created);
        assert_eq!(created, Fingerprint::of(&paths), "unchanged is equal");
        std::fs::write(&file, "ab").unwrap();
        let edited = Fingerprint::of(&paths);
        assert_ne!(created, edited);

        // A volume: the key is a symlink through `..data`, which is swapped.
        let volume = dir.path().join("volume");
        std::fs::create_dir_all(volume.join("..v1")).unwrap();
        std::fs::create_dir_all(volume.join("..v2")).unwrap();
        std::fs::write(volume.join("..v1/list.yaml"), "same").unwrap();
        std::fs::write(volume.join("..v2/list.yaml"), "same").unwrap();
        std::os::unix::fs::symlink("..v1", volume.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/list.yaml", volume.join("list.yaml")).unwrap();
        let key = [volume.join("list.yaml")];
        let before = Fingerprint::of(&key);
        std::os::unix::fs::symlink("..v2", volume.join("..tmp")).unwrap();
        std::fs::rename(volume.join("..tmp"), volume.join("..data")).unwrap();
        assert_ne!(
            before,
            Fingerprint::of(&key),
            "same size and text, new target"
        );
    }
}
