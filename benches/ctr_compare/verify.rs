//! The checks after every run, outside its timing: each blob committed in containerd's content
//! store and, in pull mode, a committed snapshot per layer.

use std::collections::HashSet;

use anyhow::bail;

use crate::sample::Mode;
use crate::support::Containerd;
use crate::workload::Workload;

/// Checks that a run did what its mode says: every blob stored and, in `pull`, unpacked.
pub fn verify_run(c: &Containerd, w: &Workload, mode: Mode) -> anyhow::Result<()> {
    verify_content(c, w)?;
    if mode == Mode::Pull {
        verify_unpacked(c, w)?;
    }
    Ok(())
}

/// Every manifest, config and layer of the workload is committed in containerd's k8s.io namespace.
fn verify_content(c: &Containerd, w: &Workload) -> anyhow::Result<()> {
    let out = c.ctr(&["-n", "k8s.io", "content", "ls", "-q"]);
    if !out.status.success() {
        bail!(
            "ctr content ls failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    let have: HashSet<&str> = listed.lines().map(str::trim).collect();
    let missing: Vec<&String> = w
        .digests
        .iter()
        .filter(|d| !have.contains(d.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} of {} blobs missing from containerd after the run, e.g. {}",
            missing.len(),
            w.digests.len(),
            missing[0]
        );
    }
    Ok(())
}

/// At least one committed snapshot per layer in the snapshotter both tools unpack into.
fn verify_unpacked(c: &Containerd, w: &Workload) -> anyhow::Result<()> {
    let out = c.ctr(&[
        "-n",
        "k8s.io",
        "snapshots",
        "--snapshotter",
        c.snapshotter(),
        "ls",
    ]);
    if !out.status.success() {
        bail!(
            "ctr snapshots ls failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Columns: KEY PARENT KIND; a base layer has no parent, so look at the last column.
    let committed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().last() == Some("Committed"))
        .count();
    if committed < w.layers {
        bail!(
            "{committed} committed {} snapshots after the run, expected at least {} (one per layer)",
            c.snapshotter(),
            w.layers
        );
    }
    Ok(())
}
