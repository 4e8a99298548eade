//! What the agent reports as true now, read from its status on each scrape of `/metrics`:
//! the list in force, images by state, each listed image's warmth and digest, pins, free space
//! and the last passes. The counters of what happened are [`crate::metrics`]'s.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::status::{ImageState, Status};

/// Every state, in the order the metrics list them.
const STATES: [ImageState; 6] = [
    ImageState::Warm,
    ImageState::Stale,
    ImageState::Unchecked,
    ImageState::Missing,
    ImageState::Failed,
    ImageState::Corrupt,
];

/// The agent's state at one scrape.
#[derive(Debug)]
pub struct NodeState {
    /// The status as last published.
    pub status: Status,
    /// Free and total bytes of containerd's filesystem, when it could be read.
    pub filesystem: Option<(u64, u64)>,
}

impl NodeState {
    fn count(&self, state: ImageState) -> usize {
        match state {
            ImageState::Warm => self.status.warm,
            ImageState::Stale => self.status.stale,
            ImageState::Unchecked => self.status.unchecked,
            ImageState::Missing => self.status.missing,
            ImageState::Failed => self.status.failed,
            ImageState::Corrupt => self.status.corrupt,
        }
    }
}

/// One gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for NodeState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let status = &self.status;
        let info = [("version", env!("CARGO_PKG_VERSION"))];
        encoder
            .encode_descriptor(
                "prepull_build",
                "The agent's version",
                None,
                MetricType::Info,
            )?
            .encode_info(&info)?;

        gauge(
            &mut encoder,
            "prepull_list_valid",
            "1 when the list file on disk is the one in force, 0 when it cannot be used",
            i64::from(status.list_in_force && status.list_error.is_none()),
        )?;

        let mut images = encoder.encode_descriptor(
            "prepull_images",
            "Listed images by state (warm, stale, unchecked, missing, failed, corrupt)",
            None,
            MetricType::Gauge,
        )?;
        for state in STATES {
            let labels = [("state", state.as_str())];
            ConstGauge::new(self.count(state) as i64).encode(images.encode_family(&labels)?)?;
        }

        let mut warm = encoder.encode_descriptor(
            "prepull_image_warm",
            "1 when a pod using the listed image starts without the network (warm or stale, and its command resolves in its layers)",
            None,
            MetricType::Gauge,
        )?;
        for image in &status.images {
            let labels = [("image", image.image.as_str())];
            let value = i64::from(image.ready());
            ConstGauge::new(value).encode(warm.encode_family(&labels)?)?;
        }

        let mut digests = encoder.encode_descriptor(
            "prepull_image_digest",
            "The digest each listed image has on the node",
            None,
            MetricType::Info,
        )?;
        for image in &status.images {
            if let Some(digest) = &image.digest {
                let labels = [("image", image.image.as_str()), ("digest", digest.as_str())];
                digests.encode_info(&labels)?;
            }
        }

        let pinned = status.images.iter().filter(|i| i.pin && i.state.usable());
        let (count, bytes) = pinned.fold((0u64, 0u64), |(n, b), i| {
            (n + 1, b.saturating_add(i.size.unwrap_or(0)))
        });
        gauge(
            &mut encoder,
            "prepull_pinned_images",
            "Listed images pinned against the kubelet's image garbage collection",
            count,
        )?;
        gauge(
            &mut encoder,
            "prepull_pinned_bytes",
            "Content bytes of the pinned listed images (compressed, as stored)",
            bytes,
        )?;

        if let Some(budget) = &status.pin_budget {
            gauge(
                &mut encoder,
                "prepull_pin_budget_bytes",
                "Bytes pinned images may take on containerd's filesystem (--pin-budget: the \
                 kubelet's imageGCLowThresholdPercent by default)",
                budget.budget_bytes,
            )?;
            gauge(
                &mut encoder,
                "prepull_pinned_node_bytes",
                "What every image pinned on the node takes, estimated (each blob once, layers \
                 also unpacked), as of the last pass",
                budget.pinned_bytes,
            )?;
        }
        let over_budget = status.images.iter().filter(|i| i.unpinned.is_some());
        gauge(
            &mut encoder,
            "prepull_images_unpinned_over_budget",
            "Listed images to pin that are on the node unpinned: pinning them would pass the pin \
             budget",
            over_budget.count() as u64,
        )?;

        if let Some((free, total)) = self.filesystem {
            gauge(
                &mut encoder,
                "prepull_containerd_filesystem_free_bytes",
                "Free bytes on containerd's filesystem (as df shows them)",
                free,
            )?;
            gauge(
                &mut encoder,
                "prepull_containerd_filesystem_size_bytes",
                "Size of containerd's filesystem",
                total,
            )?;
        }

        let passes = ConstCounter::new(status.passes);
        passes.encode(encoder.encode_descriptor(
            "prepull_passes",
            "Passes over the list completed",
            None,
            passes.metric_type(),
        )?)?;
        if let Some(at) = status.last_pass_unix {
            gauge(
                &mut encoder,
                "prepull_last_pass_timestamp_seconds",
                "When the last pass ended (Unix time)",
                at,
            )?;
            gauge(
                &mut encoder,
                "prepull_last_pass_duration_seconds",
                "How long the last pass took",
                status.last_pass_seconds,
            )?;
        }
        if let Some(at) = status.last_success_unix {
            gauge(
                &mut encoder,
                "prepull_last_success_timestamp_seconds",
                "When a pass last ended with every listed image warm or stale (Unix time)",
                at,
            )?;
        }
        Ok(())
    }
}
