//! The pin budget: how much of containerd's filesystem pinned images may take.
//!
//! A pinned image is invisible to the kubelet's image garbage collection. Once the image
//! filesystem passes `imageGCHighThresholdPercent`, the GC removes unused images until usage is
//! back at `imageGCLowThresholdPercent`; if pinned images alone keep it above that, the GC frees
//! "0 bytes" and the kubelet evicts pods instead (kubernetes/kubernetes#71869). So the agent
//! pins an image only while the node's pinned images, with it, stay within the low threshold of
//! the filesystem's size: read from the kubelet's config file when it sets one, else the
//! kubelet's default (80%), or given with `--pin-budget`. An image past the budget is kept on the
//! node unpinned (the kubelet may collect it when it needs the space), with the reason in its
//! status; images pinned already stay pinned.
//!
//! What pinned images take is estimated as the space check estimates a pull (see
//! [`crate::space`]): every blob of every pinned image once (images sharing layers share them),
//! each layer also at twice its size unpacked when the agent unpacks.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use crate::digest::Digest;
use crate::doctor::kubelet::{gc_low_threshold, GC_LOW_DEFAULT};
use crate::image::labels;
use crate::platform::Platform;
use crate::pull::PullReport;
use crate::space::{human_bytes, UNPACK_ESTIMATE};
use crate::store::{Store, StoreError};

/// Where the budget comes from.
#[derive(Clone, Debug)]
pub struct PinBudgetConfig {
    /// The kubelet's config file, for its `imageGCLowThresholdPercent`.
    pub kubelet_config: PathBuf,
    /// A percentage given instead (`--pin-budget`).
    pub percent: Option<u64>,
}

/// The budget in force, and what the node's pinned images take of it (the status's
/// `pin_budget`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PinBudget {
    /// Bytes pinned images may take.
    pub budget_bytes: u64,
    /// What the node's pinned images take, estimated (after this pass's pins).
    pub pinned_bytes: u64,
    /// The size of containerd's filesystem.
    pub filesystem_bytes: u64,
    /// The budget as a percentage of it.
    pub percent: u64,
    /// Where the percentage comes from.
    pub source: String,
}

/// The pinned images' blobs, and the budget they are held to during one pass.
pub struct Ledger<'a> {
    store: &'a Store,
    platform: &'a Platform,
    unpack: bool,
    blobs: BTreeSet<(Digest, u64, bool)>,
    /// The budget, and what is pinned so far.
    pub budget: PinBudget,
}

impl<'a> Ledger<'a> {
    /// What the node's pinned images take of a `filesystem_bytes` filesystem, against the
    /// budget `config` sets.
    pub async fn open(
        store: &'a Store,
        platform: &'a Platform,
        unpack: bool,
        filesystem_bytes: u64,
        config: &PinBudgetConfig,
    ) -> Result<Ledger<'a>, StoreError> {
        let (percent, source) = percent(config);
        let mut ledger = Ledger {
            store,
            platform,
            unpack,
            blobs: BTreeSet::new(),
            budget: PinBudget {
                budget_bytes: (filesystem_bytes as u128 * u128::from(percent) / 100) as u64,
                pinned_bytes: 0,
                filesystem_bytes,
                percent,
                source,
            },
        };
        for target in pinned_targets(store).await? {
            for blob in ledger.blobs_of(&target).await {
                ledger.blobs.insert(blob);
            }
        }
        ledger.budget.pinned_bytes = ledger.cost(ledger.blobs.iter());
        Ok(ledger)
    }

    /// Whether the image `report` pulled may be pinned: yes when one of its records is pinned
    /// already or its blobs not yet counted fit in the budget (they are counted then); else why
    /// not.
    pub async fn admit(&mut self, report: &PullReport) -> Result<(), String> {
        for name in &report.names {
            if let Ok(Some(record)) = self.store.image(name).await {
                if record.labels.get(labels::CRI_PINNED).map(String::as_str) == Some(labels::PINNED)
                {
                    return Ok(());
                }
            }
        }
        let new: Vec<_> = self
            .blobs_of(&report.digest)
            .await
            .into_iter()
            .filter(|b| !self.blobs.contains(b))
            .collect();
        let after = self
            .budget
            .pinned_bytes
            .saturating_add(self.cost(new.iter()));
        if after > self.budget.budget_bytes {
            let b = &self.budget;
            return Err(format!(
                "not pinned: pinned images would take about {} ({}% of containerd's {} \
                 filesystem), past the pin budget of {} ({}%, {}). The kubelet's image GC frees \
                 down to that share and cannot remove pinned images: past it, it frees nothing \
                 and evicts pods instead. The image is on the node, unpinned; pin fewer or \
                 smaller images (pin: false), or give the node a larger disk",
                human_bytes(after),
                (after as u128 * 100 / u128::from(b.filesystem_bytes.max(1))),
                human_bytes(b.filesystem_bytes),
                human_bytes(b.budget_bytes),
                b.percent,
                b.source,
            ));
        }
        self.blobs.extend(new);
        self.budget.pinned_bytes = after;
        Ok(())
    }

    /// The blobs of the image `top` (config and layers, the layers marked), for this node's
    /// platform; none when containerd cannot say.
    async fn blobs_of(&self, top: &Digest) -> Vec<(Digest, u64, bool)> {
        match self.store.manifest_for(top, self.platform).await {
            Ok(chosen) => std::iter::once((
                chosen.manifest.config.digest,
                chosen.manifest.config.size,
                false,
            ))
            .chain(
                chosen
                    .manifest
                    .layers
                    .into_iter()
                    .map(|l| (l.digest, l.size, true)),
            )
            .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// What `blobs` take on the node: stored, and unpacked when the agent unpacks.
    fn cost<'b>(&self, blobs: impl Iterator<Item = &'b (Digest, u64, bool)>) -> u64 {
        blobs.fold(0u64, |sum, (_, size, layer)| {
            let unpacked = if *layer && self.unpack {
                size.saturating_mul(UNPACK_ESTIMATE)
            } else {
                0
            };
            sum.saturating_add(*size).saturating_add(unpacked)
        })
    }
}

/// The images pinned on the node (CRI's pin, whoever set it), by target.
pub(crate) async fn pinned_targets(store: &Store) -> Result<BTreeSet<Digest>, StoreError> {
    Ok(store
        .images_with_label(labels::CRI_PINNED)
        .await?
        .into_iter()
        .filter(|r| r.labels.get(labels::CRI_PINNED).map(String::as_str) == Some(labels::PINNED))
        .filter_map(|r| r.target.map(|t| t.digest))
        .collect())
}

/// The budget's percentage, and where it comes from.
fn percent(config: &PinBudgetConfig) -> (u64, String) {
    if let Some(p) = config.percent {
        return (p, "--pin-budget".to_string());
    }
    let file = config.kubelet_config.display();
    match gc_low_threshold(&config.kubelet_config) {
        Ok(Some(p)) if p <= 100 => (p, format!("imageGCLowThresholdPercent in {file}")),
        Ok(_) => (
            GC_LOW_DEFAULT,
            format!("the kubelet's default imageGCLowThresholdPercent; {file} sets none"),
        ),
        Err(e) => (
            GC_LOW_DEFAULT,
            format!("the kubelet's default imageGCLowThresholdPercent; {file}: {e}"),
        ),
    }
}

/// `--pin-budget`: the kubelet's own threshold, or a percentage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinBudgetSetting {
    /// The kubelet's `imageGCLowThresholdPercent` (its default when its config sets none).
    Kubelet,
    /// A percentage of containerd's filesystem.
    Percent(u64),
}

impl std::str::FromStr for PinBudgetSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "kubelet" {
            return Ok(PinBudgetSetting::Kubelet);
        }
        match s.strip_suffix('%').map(|p| p.trim().parse::<u64>()) {
            Some(Ok(p)) if p <= 100 => Ok(PinBudgetSetting::Percent(p)),
            _ => Err(format!(
                "{s:?}: give `kubelet` (its imageGCLowThresholdPercent) or a percentage of \
                 containerd's filesystem, from 0% to 100%"
            )),
        }
    }
}

impl PinBudgetSetting {
    /// The percentage given, if one was.
    pub fn percent(self) -> Option<u64> {
        match self {
            PinBudgetSetting::Kubelet => None,
            PinBudgetSetting::Percent(p) => Some(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentage_comes_from_the_flag_the_kubelet_or_its_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        let config = |percent| PinBudgetConfig {
            kubelet_config: file.clone(),
            percent,
        };
        let (p, source) = percent(&config(None));
        assert_eq!(p, 80);
        assert!(
            source.contains("default") && source.contains("config.yaml"),
            "{source}"
        );
        std::fs::write(
            &file,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             imageGCHighThresholdPercent: 70\nimageGCLowThresholdPercent: 60\n",
        )
        .unwrap();
        assert_eq!(percent(&config(None)).0, 60);
        assert_eq!(percent(&config(Some(30))), (30, "--pin-budget".to_string()));
        std::fs::write(&file, "[not, a, mapping").unwrap();
        assert_eq!(
            percent(&config(None)).0,
            80,
            "an unreadable file is the default"
        );
    }

    #[test]
    fn the_flag_is_kubelet_or_a_percentage() {
        assert_eq!("kubelet".parse(), Ok(PinBudgetSetting::Kubelet));
        assert_eq!("50%".parse(), Ok(PinBudgetSetting::Percent(50)));
        assert!("150%".parse::<PinBudgetSetting>().is_err());
        assert!("50".parse::<PinBudgetSetting>().is_err());
    }
}
