//! `prepull repair --deep`, after the blobs are mended: each image's snapshots compared with
//! its layers, the damaged ones mended from the local blobs ([`repair::mend_snapshots`]), and
//! the images touched compared again.

use std::collections::BTreeMap;
use std::num::{NonZeroU64, NonZeroUsize};

use tokio_util::sync::CancellationToken;

use super::pull::counted;
use super::verify::{check_all, check_json, deep_all, print_check_deep, DeepOutcome, StartOutcome};
use super::Output;
use crate::deep_verify::DeepReport;
use crate::digest::Digest;
use crate::reference::Reference;
use crate::repair::{self, SnapshotOutcome, SnapshotRepair};
use crate::store::Store;
use crate::verify::{group_records, Checker, ImageCheck};

/// Repair does not run the start check: `prepull verify` reports it.
const NOT_CHECKED: StartOutcome = StartOutcome::NotChecked;

/// Findings quoted per image in text output; JSON has them all.
const QUOTED: usize = 3;

/// The deep part of one repair run.
pub(super) struct DeepRepair<'a> {
    pub store: &'a Store,
    pub checker: &'a Checker<'a>,
    pub snapshotter: &'a str,
    pub concurrency: NonZeroUsize,
    pub rate: Option<NonZeroU64>,
    pub output: Output,
}

/// What was done for one damaged image.
struct Done<'a> {
    check: &'a ImageCheck,
    found: &'a DeepReport,
    result: Result<SnapshotRepair, String>,
    /// The image whose repair unpacked this one again already (they share snapshots).
    with: Option<String>,
}

impl DeepRepair<'_> {
    /// Checks, mends and checks again; the number of images left damaged, or `None` when
    /// interrupted.
    pub async fn run(
        &self,
        wanted: &[Reference],
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<usize>> {
        let (mut checks, _) = check_all(self.store, self.checker, wanted).await?;
        let Some(outcomes) = self.deep(&mut checks, stop).await? else {
            return Ok(None);
        };
        let mut bad = 0;
        // Images unpacked again, and the damaged image whose repair did it.
        let mut touched: Vec<(Digest, String)> = Vec::new();
        let mut done = Vec::new();
        for (check, outcome) in checks.iter().zip(&outcomes) {
            match outcome {
                DeepOutcome::Checked(report) if !report.is_sound() => {
                    // Unpacked again already, with another damaged image it shares snapshots
                    // with: what it found is mended or not, as the check after says.
                    if let Some((_, by)) = touched.iter().find(|(t, _)| t == &check.target) {
                        done.push(Done {
                            check,
                            found: report,
                            result: Ok(SnapshotRepair {
                                image: shown(check),
                                lowest_damaged: report
                                    .lowest_damaged()
                                    .into_iter()
                                    .cloned()
                                    .collect(),
                                removed: Vec::new(),
                                unpacked: vec![shown(check)],
                                unpacked_targets: vec![check.target.clone()],
                                outcome: SnapshotOutcome::Mended,
                            }),
                            with: Some(by.clone()),
                        });
                        continue;
                    }
                    let result =
                        repair::mend_snapshots(self.store, self.snapshotter, check, report)
                            .await
                            .map_err(|e| crate::error_chain(&e));
                    if let Ok(r) = &result {
                        touched
                            .extend(r.unpacked_targets.iter().map(|t| (t.clone(), shown(check))));
                    }
                    done.push(Done {
                        check,
                        found: report,
                        result,
                        with: None,
                    });
                }
                // Blob problems the first part could not mend were reported there.
                DeepOutcome::Skipped(_) if !check.problems.is_empty() => {}
                other => {
                    let status = if other.is_bad() {
                        bad += 1;
                        "damaged"
                    } else {
                        "ok"
                    };
                    print_check_deep(check, status, other, &NOT_CHECKED, self.output);
                }
            }
        }
        let touched: Vec<Digest> = touched.into_iter().map(|(t, _)| t).collect();
        let after = self.check_again(&touched, stop).await?;
        let Some(after) = after else {
            return Ok(None);
        };
        for d in &done {
            let again = after.get(&d.check.target);
            if !self.print(d, again) {
                bad += 1;
            }
        }
        // Images unpacked again only because they shared a removed snapshot.
        for (target, (check, outcome)) in &after {
            if done.iter().any(|d| &d.check.target == target) {
                continue;
            }
            let status = if outcome.is_bad() {
                bad += 1;
                "damaged"
            } else {
                "ok"
            };
            print_check_deep(check, status, outcome, &NOT_CHECKED, self.output);
        }
        if let Output::Text = self.output {
            let mended = done
                .iter()
                .filter(
                    |d| matches!(&d.result, Ok(r) if matches!(r.outcome, SnapshotOutcome::Mended)),
                )
                .count();
            println!(
                "deep check of {}: {} with damaged snapshots, {mended} mended from local blobs, {bad} still damaged",
                counted(checks.len(), "image"),
                done.len(),
            );
        }
        Ok(Some(bad))
    }

    async fn deep(
        &self,
        checks: &mut [ImageCheck],
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<Vec<DeepOutcome>>> {
        deep_all(
            self.store,
            self.snapshotter,
            self.concurrency,
            self.rate,
            checks,
            stop,
            self.output,
        )
        .await
    }

    /// The images whose snapshots were unpacked again, checked again, deep.
    async fn check_again(
        &self,
        targets: &[Digest],
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<BTreeMap<Digest, (ImageCheck, DeepOutcome)>>> {
        if targets.is_empty() {
            return Ok(Some(BTreeMap::new()));
        }
        let mut checks = Vec::new();
        for (target, records) in group_records(self.store.images().await?) {
            let Ok(target) = target.parse::<Digest>() else {
                continue;
            };
            if targets.contains(&target) {
                checks.push(self.checker.check(&target, &records).await?);
            }
        }
        let Some(outcomes) = self.deep(&mut checks, stop).await? else {
            return Ok(None);
        };
        Ok(Some(
            checks
                .into_iter()
                .zip(outcomes)
                .map(|(c, o)| (c.target.clone(), (c, o)))
                .collect(),
        ))
    }

    /// Prints what was done for a damaged image; `true` when it is sound now.
    fn print(&self, d: &Done<'_>, again: Option<&(ImageCheck, DeepOutcome)>) -> bool {
        let name = d.check.names.first().map_or("?", String::as_str);
        let sound_after = again.is_some_and(|(c, o)| {
            c.problems.is_empty() && matches!(o, DeepOutcome::Checked(r) if r.is_sound())
        });
        let (status, left) = match &d.result {
            Ok(r) => match &r.outcome {
                SnapshotOutcome::Mended if sound_after => ("repaired", None),
                SnapshotOutcome::Mended => ("damaged", None),
                SnapshotOutcome::Sound => (
                    "damaged",
                    Some("no damaged layer could be told from the findings".to_string()),
                ),
                SnapshotOutcome::InUse { .. } => ("left", r.outcome.advice()),
            },
            Err(_) => ("failed", None),
        };
        match self.output {
            Output::Text => self.print_text(d, name, status, left.as_deref(), again),
            Output::Json => {
                let mut json =
                    check_json(d.check, status, d.result.as_ref().err().map(String::as_str));
                json["check"] = "deep".into();
                json["found"] = serde_json::json!({
                    "findings": d.found.findings,
                    "findings_omitted": d.found.findings_omitted,
                    "lowest_damaged_layer": d.found.lowest_damaged(),
                });
                if let Ok(r) = &d.result {
                    json["removed"] = serde_json::json!(r.removed);
                    json["unpacked_again"] = serde_json::json!(r.unpacked);
                    json["outcome"] = serde_json::json!(r.outcome);
                    if let Some(by) = &d.with {
                        json["unpacked_with"] = by.as_str().into();
                    }
                    if let Some(why) = &left {
                        json["left"] = why.as_str().into();
                    }
                }
                if let Some((_, outcome)) = again {
                    json["after"] = outcome.json();
                }
                println!("{json}");
            }
        }
        status == "repaired"
    }

    fn print_text(
        &self,
        d: &Done<'_>,
        name: &str,
        status: &str,
        left: Option<&str>,
        again: Option<&(ImageCheck, DeepOutcome)>,
    ) {
        let mut was: Vec<String> = d
            .found
            .findings
            .iter()
            .take(QUOTED)
            .map(ToString::to_string)
            .collect();
        let more = d.found.findings.len().saturating_sub(QUOTED) + d.found.findings_omitted;
        if more > 0 {
            was.push(format!("{more} more"));
        }
        let was = was.join("; ");
        match (&d.result, status) {
            (Err(e), _) => {
                println!("failed {name}: {was}");
                eprintln!("error: could not repair the snapshots of {name}: {e}");
            }
            (Ok(_), "left") => {
                println!("left {name}: {was}; {}", left.unwrap_or(""));
            }
            (Ok(_), _) if d.with.is_some() => {
                println!(
                    "{status} {name}: unpacked again from the local blobs with {}, whose snapshots it shares (was: {was})",
                    d.with.as_deref().unwrap_or("?")
                );
                if let (Some((check, outcome)), "damaged") = (again, status) {
                    print_check_deep(check, "damaged", outcome, &NOT_CHECKED, Output::Text);
                }
            }
            (Ok(r), _) => {
                let from: Vec<String> = r
                    .lowest_damaged
                    .iter()
                    .map(|l| format!("layer {} (snapshot {})", l.index, l.chain_id))
                    .collect();
                println!(
                    "{status} {name}: removed {} from {} up and unpacked {} again from the local blobs (was: {was})",
                    counted(r.removed.len(), "snapshot"),
                    from.join(", "),
                    r.unpacked.join(", "),
                );
                if let (Some((check, outcome)), "damaged") = (again, status) {
                    print_check_deep(check, "damaged", outcome, &NOT_CHECKED, Output::Text);
                }
            }
        }
    }
}

/// The name the operator knows an image by.
fn shown(check: &ImageCheck) -> String {
    check
        .names
        .first()
        .cloned()
        .unwrap_or_else(|| check.target.to_string())
}
