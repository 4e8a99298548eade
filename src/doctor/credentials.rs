//! Step 2: which credential sources exist, which of their entries match the image as the
//! kubelet matches them, and the mistakes that make the kubelet (and prepull) skip a secret: a
//! secret of type `Opaque`, an empty one, a desktop `config.json` that holds only a credential
//! helper, a key for another port or path, Docker Hub keys for a private registry.

use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

use super::{Step, Verdict};
use crate::credentials::{Credential, CredentialConfig, CredentialSource, Sources};
use crate::reference::Reference;

/// The most of a credentials file read to look for credential helpers.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What step 2 found: the sources (for the registry step) and the credentials that match.
pub struct Found {
    /// Every source, loaded leniently (what cannot be used is reported in the step).
    pub sources: Option<Sources>,
    /// The credentials matching the image, in the kubelet's order.
    pub matching: Vec<Arc<Credential>>,
}

/// Loads `config`'s sources and matches them to `reference`.
pub fn check(config: &CredentialConfig, reference: &Reference) -> (Found, Step) {
    let config = CredentialConfig {
        lenient: true,
        ..config.clone()
    };
    let (sources, loaded) = match config.load() {
        Ok(v) => v,
        Err(e) => {
            let step = Step::found(
                "credentials",
                Verdict::Fail,
                "unusable-credentials",
                crate::error_chain(&e),
                "fix the named file (the kubelet's credential-provider configuration)",
            );
            let found = Found {
                sources: None,
                matching: Vec::new(),
            };
            return (found, step);
        }
    };
    let image = reference.name();
    let matching = sources.lookup(&image);
    let mut details: Vec<String> = config
        .auth_files
        .iter()
        .filter(|f| f.is_dir())
        .map(|dir| {
            format!(
                "{} is a mounted secret: the kubelet uses a pull secret only when its type is \
                 kubernetes.io/dockerconfigjson (check with kubectl get secret NAME -o \
                 jsonpath='{{.type}}'); prepull cannot see the type",
                dir.display()
            )
        })
        .collect();
    match &loaded.node_file {
        Some(file) => details.push(format!("the node's credential file: {}", file.display())),
        None if config.kubelet_root.is_some() => {
            details.push("no node credential file (none where the kubelet looks)".into())
        }
        None => {}
    }
    details.extend(
        loaded
            .node_error
            .iter()
            .map(|e| format!("node file ignored: {e}")),
    );
    details.extend(loaded.problems.iter().map(ToString::to_string));
    details.extend(matching.iter().map(|c| format!("matches: {}", c.source)));

    let step = verdict(&config, &sources, &loaded, reference, &matching);
    let found = Found {
        sources: Some(sources),
        matching,
    };
    (found, step.with_details(details))
}

/// The step's verdict: a named source the kubelet cannot use fails; near misses and skipped
/// entries warn; otherwise ok, saying whether the pull is anonymous.
fn verdict(
    config: &CredentialConfig,
    sources: &Sources,
    loaded: &crate::credentials::Loaded,
    reference: &Reference,
    matching: &[Arc<Credential>],
) -> Step {
    let image = reference.name();
    if matching.is_empty() {
        if let Some((file, helper)) = config
            .auth_files
            .iter()
            .chain(loaded.node_file.iter())
            .find_map(|f| credential_helper(f).map(|h| (f, h)))
        {
            return Step::found(
                "credentials",
                Verdict::Fail,
                "creds-store-only",
                format!(
                    "{} names a credential helper ({helper}) instead of holding credentials: \
                 what `docker login` writes on a desktop; neither the kubelet nor prepull \
                 runs it",
                    file.display()
                ),
                format!(
                    "write the credentials into the file: kubectl create secret docker-registry \
                 NAME --docker-server={} --docker-username=USER --docker-password=PASSWORD, \
                 or `docker login` on a machine without a credential store",
                    reference.registry()
                ),
            );
        }
    }
    if let Some(why) = loaded.unusable.first() {
        let (cause, fix) = if why.contains("Opaque") {
            (
                "wrong-secret-type",
                "recreate the secret as type kubernetes.io/dockerconfigjson: kubectl create \
                 secret docker-registry NAME --docker-server=REGISTRY --docker-username=USER \
                 --docker-password=PASSWORD (the kubelet ignores other types)",
            )
        } else if why.contains("is empty") {
            (
                "empty-secret",
                "recreate the secret with its data: kubectl create secret docker-registry …",
            )
        } else {
            ("unusable-credentials", "fix or replace the named file")
        };
        return Step::found("credentials", Verdict::Fail, cause, why.clone(), fix);
    }
    if matching.is_empty() {
        let near = sources.near_misses(&image);
        if !near.is_empty() {
            return Step::found(
                "credentials",
                Verdict::Warning,
                "near-miss",
                format!("no credential matches {image}, but some look meant for it"),
                format!(
                    "key the credential exactly as the image names its registry ({}): {}",
                    reference.registry(),
                    near.join("; ")
                ),
            );
        }
        let hub_only = hub_keys_for_private(sources, reference);
        if let Some(keys) = hub_only {
            return Step::found(
                "credentials",
                Verdict::Warning,
                "docker-hub-key",
                format!("no credential matches {image}; the only keys are Docker Hub's ({keys})"),
                format!(
                    "a Docker Hub key never applies to {}: add an entry keyed {}",
                    reference.registry(),
                    reference.registry()
                ),
            );
        }
        return Step::ok(
            "credentials",
            format!("no credential matches {image}: the pull is anonymous"),
        );
    }
    if loaded.problems.iter().any(|p| !p.kept) {
        return Step::found(
            "credentials",
            Verdict::Warning,
            "bad-entry",
            format!("{} matching; some entries were skipped", matching.len()),
            "fix the skipped entries listed below",
        );
    }
    Step::ok(
        "credentials",
        format!(
            "{} matching credential{} for {image}, tried in this order",
            matching.len(),
            if matching.len() == 1 { "" } else { "s" }
        ),
    )
}

/// Docker Hub keys, when they are the only keys and the image is not on Docker Hub.
fn hub_keys_for_private(sources: &Sources, reference: &Reference) -> Option<String> {
    if reference.registry() == "docker.io" {
        return None;
    }
    let keys: Vec<String> = sources
        .files
        .keys()
        .into_iter()
        .chain(sources.node.keys())
        .map(|(key, _)| key)
        .collect();
    let hub = |k: &String| k.contains("docker.io") || k.contains("docker.com");
    (!keys.is_empty() && keys.iter().all(hub)).then(|| keys.join(", "))
}

/// The credential helper a Docker config names (`credsStore`, or the hosts of `credHelpers`),
/// if it names one. A directory is a mounted secret: its `.dockerconfigjson` is read.
fn credential_helper(path: &Path) -> Option<String> {
    let file = if path.is_dir() {
        path.join(".dockerconfigjson")
    } else {
        path.to_path_buf()
    };
    let mut text = String::new();
    std::fs::File::open(file)
        .ok()?
        .take(MAX_CONFIG_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    if let Some(store) = value.get("credsStore").and_then(|v| v.as_str()) {
        return Some(format!("credsStore: {store}"));
    }
    let helpers = value.get("credHelpers")?.as_object()?;
    let hosts: Vec<&str> = helpers.keys().map(String::as_str).collect();
    (!hosts.is_empty()).then(|| format!("credHelpers for {}", hosts.join(", ")))
}
