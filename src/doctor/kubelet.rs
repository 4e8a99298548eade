//! Step 9: the kubelet's own settings that defeat a pre-pulled image. With the image pull
//! credential verification of KEP-2535 (kubelet 1.33+), `AlwaysVerify`, or an allowlist that
//! misses the image, makes the kubelet go to the registry for an `IfNotPresent` pod even though
//! the image is on the node: the pod then needs the registry and its credentials after all.

use std::io::Read as _;
use std::path::Path;

use serde::Deserialize;

use super::{Step, Verdict};
use crate::reference::Reference;

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
}

/// Reads the kubelet's config file `path` and says what its settings mean for `reference`.
pub fn check(path: &Path, reference: &Reference) -> Step {
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
        check(&path, &reference)
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
        );
        assert_eq!(missing.status, Verdict::Skipped);
    }
}
