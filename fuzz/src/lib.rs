//! What the fuzz targets share: a scratch directory for the parsers that read a file, as
//! prepull reads the node's files, and checks that secrets stay out of printed text.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A directory of this fuzzing process's own (libFuzzer's `-jobs` run several) in `$TMPDIR`,
/// holding one small file per target (scripts/fuzz.sh points `$TMPDIR` at its work directory).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("prepull-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
        dir
    })
}

/// Writes `data` to `relative` under [`scratch_dir`] and returns its path.
pub fn write_input(relative: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create the input's directory");
    }
    std::fs::write(&path, data).expect("write the input file");
    path
}

/// Whether `text` shows `secret`, when `secret` is long enough to be told from chance and is
/// not part of `allowed` (the key or file name a message is meant to name).
pub fn shows_secret(text: &str, secret: &str, allowed: &[&str]) -> bool {
    secret.chars().count() >= 16
        && text.contains(secret)
        && !allowed.iter().any(|a| a.contains(secret))
}
