//! A ConfigMap or Secret volume laid out and updated the way the kubelet does it: each version of
//! the data in its own `..<timestamp>` directory, a `..data` symlink swapped atomically (rename
//! over it) to the current one, and each key a symlink `key -> ..data/key`.

use std::path::{Path, PathBuf};

pub struct KubeletVolume {
    dir: PathBuf,
    version: u32,
}

impl KubeletVolume {
    /// Creates `dir` holding `files` (key, content) as the first version.
    pub fn new(dir: impl Into<PathBuf>, files: &[(&str, &str)]) -> KubeletVolume {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).unwrap();
        let mut volume = KubeletVolume { dir, version: 0 };
        volume.update(files);
        volume
    }

    /// Publishes `files` as the next version: written in a new directory, then `..data` swapped.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let name = format!("..2026_11_22_12_00_{:02}.{}", self.version, self.version);
        let data = self.dir.join(&name);
        std::fs::create_dir(&data).unwrap();
        for (key, content) in files {
            std::fs::write(data.join(key), content).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (key, _) in files {
            let link = self.file(key);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(key), &link).unwrap();
            }
        }
    }

    /// The path a pod reads `key` at.
    pub fn file(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
