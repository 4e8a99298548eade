//! Step 9: the kubelet's own settings that defeat a pre-pulled image. With the image pull
//! credential verification of KEP-2535 (kubelet 1.33+), `AlwaysVerify`, or an allowlist that
//! misses the image, makes the kubelet go to the registry for an `IfNotPresent` pod even though
//! the image is on the node: the pod then needs the registry and its credentials after all.

use std::io::Read as _;
use std::path::Path;

use serde::Deserialize;

use super::{Step, Verdict};
use crate::reference::Reference;

/// The kubelet's default `imageGCHighThresholdPercent`.
const GC_HIGH_DEFAULT: u64 = 85;

/// What pinned images take of the image filesystem (the kubelet's GC can never remove them).
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// Pinned images.
    pub pinned_images: usize,
    /// Their content bytes, at most.
    pub pinned_bytes: u64,
    /// The size of containerd's filesystem.
    pub filesystem_bytes: u64,
}

/// The most of the kubelet's config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The fields of a `KubeletConfiguration` that matter here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubeletConfiguration {
    #[serde(default)]
    image_pull_credentials_verification_policy: Option<String>,
    #[serde(default)]
    preloaded_images_verification_allowlist: Vec<String>,
    #[serde(default)]
    image_g_c_high_threshold_percent: Option<u64>,
    #[serde(default)]
    image_g_c_low_threshold_percent: Option<u64>,
}

/// The kubelet's default `imageGCLowThresholdPercent`: image GC frees down to it.
pub const GC_LOW_DEFAULT: u64 = 80;

/// The kubelet's `imageGCLowThresholdPercent` from its config file `path`: what its image GC
/// frees the image filesystem down to. `Ok(None)` when the file does not set it; an error when
/// it cannot be read or is not a `KubeletConfiguration`.
pub fn gc_low_threshold(path: &Path) -> Result<Option<u64>, String> {
    read_config(path).map(|c| c.image_g_c_low_threshold_percent)
}

/// Reads the kubelet's config file `path` and says what its settings mean for `reference`, and
/// whether pinned images (`usage`) leave the kubelet's image GC room to work.
pub fn check(path: &Path, reference: &Reference, usage: Option<Usage>) -> Step {
    let step = verification(path, reference);
    if step.status != Verdict::Ok {
        return step;
    }
    let threshold = read_config(path)
        .ok()
        .and_then(|c| c.image_g_c_high_threshold_percent)
        .unwrap_or(GC_HIGH_DEFAULT);
    match usage {
        Some(u)
            if u.filesystem_bytes > 0
                && u.pinned_bytes.saturating_mul(100) / u.filesystem_bytes >= threshold =>
        {
            let percent = u.pinned_bytes.saturating_mul(100) / u.filesystem_bytes;
            Step::found(
                "kubelet",
                Verdict::Warning,
                "gc-threshold",
                format!(
                    "{} pinned images take up to {percent}% of containerd's filesystem, at or \
                    above imageGCHighThresholdPercent ({threshold}%): the kubelet's image GC \
                    cannot remove them, cannot get below its threshold, and the node goes into \
                    disk pressure instead",
                    u.pinned_images
                ),
                "pin fewer images (pin: false in the prepull list for the large ones), or give \
                    the node a larger disk",
            )
        }
        _ => step,
    }
}

fn read_config(path: &Path) -> Result<KubeletConfiguration, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())
}

/// What the kubelet's pull credential verification policy means for `reference`.
fn verification(path: &Path, reference: &Reference) -> Step {
    let mut text = String::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(MAX_CONFIG_BYTES).read_to_string(&mut text));
    if let Err(e) = read {
        return Step::skipped(
            "kubelet",
            format!(
                "the kubelet's config {} cannot be read ({e}): its pull settings were not \
                 checked (--kubelet-config names it)",
                path.display()
            ),
        );
    }
    let config: KubeletConfiguration = match serde_yaml_ng::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            return Step::found(
                "kubelet",
                Verdict::Warning,
                "kubelet-config",
                format!(
                    "{} is not a KubeletConfiguration prepull can read: {e}",
                    path.display()
                ),
                "check the file the kubelet is started with (--config)",
            )
        }
    };
    let name = reference.name();
    let file = path.display();
    match config.image_pull_credentials_verification_policy.as_deref() {
        Some("AlwaysVerify") => Step::found(
            "kubelet",
            Verdict::Fail,
            "always-verify",
            format!(
                "{file} sets imagePullCredentialsVerificationPolicy: AlwaysVerify: the kubelet \
                 asks the registry to check every pod's credentials for images already on the \
                 node, so a pre-pulled image does not spare the pull at start"
            ),
            format!(
                "set imagePullCredentialsVerificationPolicy: NeverVerifyPreloadedImages (the \
                 default), or NeverVerifyAllowlistedImages with {name} in \
                 preloadedImagesVerificationAllowlist, and restart the kubelet"
            ),
        ),
        Some("NeverVerifyAllowlistedImages")
            if !config
                .preloaded_images_verification_allowlist
                .iter()
                .any(|pattern| allowed(pattern, &name)) =>
        {
            Step::found(
                "kubelet",
                Verdict::Fail,
                "not-allowlisted",
                format!(
                    "{file} verifies credentials for pre-pulled images not in \
                     preloadedImagesVerificationAllowlist, and {name} is not in it"
                ),
                format!(
                    "add {name} (or {}/*) to preloadedImagesVerificationAllowlist and restart the \
                     kubelet",
                    reference.registry()
                ),
            )
        }
        Some(policy) => Step::ok(
            "kubelet",
            format!("imagePullCredentialsVerificationPolicy: {policy}: pre-pulled images are used as they are"),
        ),
        None => Step::ok(
            "kubelet",
            format!("{file} keeps the default image pull verification: pre-pulled images are used as they are"),
        ),
    }
}

/// Whether an allowlist entry covers `name` (`registry/repository`): exactly, or as a prefix
/// ending in `/*`.
fn allowed(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(prefix) => name.starts_with(&format!("{prefix}/")),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: &str) -> Step {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let reference = Reference::parse("registry.example.com/team/app:1").unwrap();
        check(&path, &reference, None)
    }

    #[test]
    fn verification_policies_that_defeat_pre_pulling_fail() {
        let kind = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";
        assert_eq!(run(kind).status, Verdict::Ok);
        let always = format!("{kind}imagePullCredentialsVerificationPolicy: AlwaysVerify\n");
        assert_eq!(run(&always).cause, Some("always-verify"));
        let listed = format!(
            "{kind}imagePullCredentialsVerificationPolicy: NeverVerifyAllowlistedImages\n\
             preloadedImagesVerificationAllowlist: [\"registry.example.com/team/*\"]\n"
        );
        assert_eq!(run(&listed).status, Verdict::Ok);
        let other = listed.replace("team/*", "other/*");
        assert_eq!(run(&other).cause, Some("not-allowlisted"));
        let missing = check(
            Path::new("/nonexistent/config.yaml"),
            &Reference::parse("a/b:1").unwrap(),
            None,
        );
        assert_eq!(missing.status, Verdict::Skipped);
    }

    #[test]
    fn pinned_images_above_the_gc_threshold_are_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "kind: KubeletConfiguration\nimageGCHighThresholdPercent: 70\n",
        )
        .unwrap();
        let reference = Reference::parse("registry.example.com/team/app:1").unwrap();
        let usage = |pinned_bytes| {
            Some(Usage {
                pinned_images: 3,
                pinned_bytes,
                filesystem_bytes: 100,
            })
        };
        assert_eq!(check(&path, &reference, usage(50)).status, Verdict::Ok);
        let over = check(&path, &reference, usage(75));
        assert_eq!(over.cause, Some("gc-threshold"), "{over:?}");
        assert!(over.summary.contains("70%"), "{over:?}");
        std::fs::write(&path, "kind: KubeletConfiguration\n").unwrap();
        assert_eq!(check(&path, &reference, usage(80)).status, Verdict::Ok);
        assert_eq!(
            check(&path, &reference, usage(90)).cause,
            Some("gc-threshold")
        );
    }
}
