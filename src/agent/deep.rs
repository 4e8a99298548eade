//! The agent's deep check: each listed image's unpacked snapshots compared file by file with its
//! layers (see [`crate::deep_verify`]) on a schedule (`--deep-verify-every`), and always first
//! after the node booted again, since a power loss is when files being unpacked end up empty.
//! Damage found is mended from the local blobs ([`crate::repair::mend_snapshots`]) and reported
//! in the image's status by the next pass.
//!
//! The long-running agent runs it as a task of its own beside the passes ([`DeepTask`]), at
//! `--deep-verify-rate`: reading many GB of snapshots takes minutes, and the passes' pulls do not
//! wait for it. Only the mending, which removes and unpacks snapshots, waits for a pass's pulls
//! to end (and a pass for a mending). A one-shot agent (`--once`) checks before its pass.
//!
//! When an image was last checked, and in which boot, is kept on its image record in containerd
//! ([`CHECKED`]): it survives the agent's restarts, and a node's reboot is told by the kernel's
//! boot ID changing.

use std::collections::HashMap;
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Found;
use crate::deep::{self, RateLimiter};
use crate::deep_verify::{DeepReport, DeepVerifier};
use crate::metrics::{metrics, RepairResult};
use crate::repair::{self, SnapshotOutcome};
use crate::store::{Store, StoreError};
use crate::verify::{group_records, CheckOptions, Checker, LayerCheck};

/// The label on an image record saying when its snapshots were last found sound:
/// `<boot ID> <Unix seconds>`.
pub const CHECKED: &str = "prepull.io/deep-verified";

/// How the agent's deep check runs.
#[derive(Clone, Copy, Debug)]
pub struct DeepSchedule {
    /// How often each listed image is checked.
    pub every: Duration,
    /// Bytes read per second, layers and snapshot files together.
    pub rate: Option<NonZeroU64>,
}

/// This boot of the node: the kernel's boot ID, new at every boot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether an image whose record carries `checked` (the [`CHECKED`] label) is due: never
/// checked, checked in another boot, or longer ago than `every`.
fn due(checked: Option<&String>, boot: &str, every: Duration, now: SystemTime) -> bool {
    let Some((checked_boot, at)) = checked.and_then(|v| v.split_once(' ')) else {
        return true;
    };
    let Ok(at) = at.parse::<u64>() else {
        return true;
    };
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(at);
    checked_boot != boot || now.duration_since(at).is_ok_and(|age| age >= every)
}

/// Deep-checks the listed images (`names`) that are due, mends what is damaged, and returns
/// what was found, per image name.
pub(crate) async fn check_due(
    store: &Store,
    snapshotter: &str,
    names: &[String],
    schedule: DeepSchedule,
    cancel: &CancellationToken,
    snapshots: &tokio::sync::Mutex<()>,
) -> Result<HashMap<String, Found>, StoreError> {
    let boot = boot_id();
    let now = SystemTime::now();
    let groups = group_records(store.images().await?);
    let checker = Checker::new(
        store,
        CheckOptions {
            snapshotter: Some(snapshotter.to_string()),
            layers: LayerCheck::Size,
        },
    );
    let mut ctx = deep::Context::new(cancel.clone());
    ctx.limiter = schedule.rate.map(|r| Arc::new(RateLimiter::new(r)));
    let verifier = DeepVerifier::new(store, snapshotter, NonZeroUsize::MIN, ctx).await?;
    let mut found = HashMap::new();
    for name in names {
        if cancel.is_cancelled() {
            break;
        }
        let Some((target, records)) = groups
            .iter()
            .find(|(_, records)| records.iter().any(|r| &r.name == name))
        else {
            continue;
        };
        let checked = records
            .iter()
            .find(|r| &r.name == name)
            .and_then(|r| r.labels.get(CHECKED));
        if !due(checked, &boot, schedule.every, now) {
            continue;
        }
        let Ok(target) = target.parse() else { continue };
        let check = checker.check(&target, records).await?;
        // Missing or bad blobs are the periodic verify's to find and the pull's to mend.
        if !check.problems.is_empty() {
            continue;
        }
        let mut report = DeepReport::default();
        for unpacked in &check.unpacked {
            match verifier.check(unpacked).await {
                Ok(r) => report.absorb(r),
                Err(e) => {
                    tracing::warn!(image = %name, error = %crate::error_chain(&e), "cannot compare the image's snapshots with its layers");
                }
            }
        }
        if cancel.is_cancelled() {
            break;
        }
        let mut sound = report.is_sound();
        if !sound {
            for finding in &report.findings {
                metrics().damage_found(finding.kind.label());
            }
            let problems: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
            tracing::warn!(image = %name, problems = %problems.join("; "), "the image's unpacked files differ from its layers; unpacking them again");
            // Not while a pass pulls: its unpacks build on the same snapshots.
            let _snapshots = snapshots.lock().await;
            let blocked = match repair::mend_snapshots(store, snapshotter, &check, &report).await {
                Ok(r) => match &r.outcome {
                    SnapshotOutcome::Mended | SnapshotOutcome::Sound => {
                        sound = true;
                        None
                    }
                    outcome @ SnapshotOutcome::InUse { .. } => {
                        metrics().repair(RepairResult::Blocked);
                        outcome.advice()
                    }
                },
                Err(e) => {
                    tracing::warn!(image = %name, error = %crate::error_chain(&e), "cannot mend the image's snapshots; the next pass tries again");
                    metrics().repair(RepairResult::Failed);
                    Some(format!(
                        "its snapshots could not be unpacked again: {}",
                        crate::error_chain(&e)
                    ))
                }
            };
            found.insert(name.clone(), Found { problems, blocked });
        }
        if sound {
            let value = format!("{boot} {}", unix(now));
            if let Err(e) = store
                .update_image_labels(name, &[(CHECKED, Some(&value))])
                .await
            {
                tracing::warn!(image = %name, error = %crate::error_chain(&e), "cannot record the deep check on the image");
            }
        }
    }
    verifier.close().await;
    Ok(found)
}

/// The agent's deep check as a task of its own: it looks for listed images that are due every
/// `recheck` (and at once when the list changes), checks and mends them, and leaves what it
/// found in `found` for the next pass to report (the agent starts one soon when it sees some).
pub(crate) struct DeepTask {
    pub store: Store,
    pub snapshotter: String,
    pub schedule: DeepSchedule,
    /// The listed images' names, as the list in force has them.
    pub names: tokio::sync::watch::Receiver<Vec<String>>,
    /// Damage found and not yet reported by a pass.
    pub found: Arc<std::sync::Mutex<HashMap<String, Found>>>,
    /// Held by mending and by a pass's pulls.
    pub snapshots: Arc<tokio::sync::Mutex<()>>,
}

/// How often the task looks for images that are due, at most: each image's own due time is
/// kept on its record, so looking costs a listing of the image records.
const RECHECK: Duration = Duration::from_secs(600);

impl DeepTask {
    /// Runs until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let recheck = self.schedule.every.clamp(Duration::from_secs(1), RECHECK);
        loop {
            let names = self.names.borrow_and_update().clone();
            let checked = check_due(
                &self.store,
                &self.snapshotter,
                &names,
                self.schedule,
                &stop,
                &self.snapshots,
            )
            .await;
            match checked {
                Ok(found) => super::lock(&self.found).extend(found),
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot compare the listed images' snapshots with their layers")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(recheck) => {}
                changed = self.names.changed() => if changed.is_err() { return },
            }
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_due_when_unchecked_checked_in_another_boot_or_long_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let week = Duration::from_secs(7 * 86400);
        let label = |boot: &str, at: u64| Some(format!("{boot} {at}"));
        assert!(due(None, "b1", week, now));
        assert!(!due(label("b1", 999_000).as_ref(), "b1", week, now));
        assert!(
            due(label("b0", 999_000).as_ref(), "b1", week, now),
            "rebooted"
        );
        assert!(due(
            label("b1", 1_000_000 - 7 * 86400).as_ref(),
            "b1",
            week,
            now
        ));
        assert!(due(Some(&"garbage".to_string()), "b1", week, now));
        assert!(!boot_id().is_empty());
    }
}
