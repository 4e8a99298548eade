//! The prepull under test: the release binary (built when missing), whether it unpacks by
//! default, and the git state of the sources it was built from.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::command::command_line;

/// The sources' commit and whether `src`, `Cargo.*`, `build.rs` or `proto` have uncommitted
/// changes.
pub fn git_state() -> (String, bool) {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let head = command_line("git", &["-C", manifest_dir, "rev-parse", "--short", "HEAD"]);
    let status = command_line(
        "git",
        &[
            "-C",
            manifest_dir,
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
            "Cargo.lock",
            "build.rs",
            "proto",
        ],
    );
    (head, !status.is_empty())
}

/// Whether this prepull unpacks by default: it then has `--no-unpack` to opt out.
pub fn prepull_unpacks(prepull: &Path) -> anyhow::Result<bool> {
    let out = std::process::Command::new(prepull)
        .args(["pull", "--help"])
        .output()
        .with_context(|| format!("run {} pull --help", prepull.display()))?;
    if !out.status.success() {
        bail!(
            "{} pull --help failed with {}: {}",
            prepull.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).contains("--no-unpack"))
}

/// The release prepull binary; builds it through cargo when it is missing.
pub fn prepull_binary() -> anyhow::Result<(PathBuf, String)> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                manifest_dir.join(t)
            }
        })
        .unwrap_or_else(|| manifest_dir.join("target"));
    let binary = target.join("release").join("prepull");
    if binary.is_file() {
        return Ok((binary, String::new()));
    }
    eprintln!(
        "{} is missing: running `cargo build --release --bin prepull` (a few minutes on 2 cores)",
        binary.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--bin", "prepull"])
        .current_dir(manifest_dir)
        .status()
        .context("run cargo build --release --bin prepull")?;
    if !status.success() || !binary.is_file() {
        bail!(
            "cargo build --release --bin prepull failed ({status}); {} still missing",
            binary.display()
        );
    }
    Ok((
        binary,
        "; built by this bench because it was missing".into(),
    ))
}
