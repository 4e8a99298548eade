//! Steps 5 to 7: the registry over HTTP(S) as the pull speaks to it: TLS, the challenge and
//! each matching credential in turn (the kubelet's order: every matching credential, else
//! anonymous), the tag or digest, the rate-limit headroom, and the platforms an index offers.

use std::sync::Arc;

use super::{Step, Verdict};
use crate::credentials::{Credential, Keyring};
use crate::image::graph::choose_manifest;
use crate::kind::ErrorKind;
use crate::oci::Document;
use crate::platform::Platform;
use crate::reference::{Reference, Target};
use crate::registry::{FetchedManifest, Options, RegistryClient, RegistryError};

/// Pulls left in a rate-limit window below which the step warns.
const LOW_HEADROOM: u64 = 10;

/// What the walk needs of the registry.
pub struct Ask<'a> {
    /// How registries are reached (hosts, plain HTTP).
    pub options: &'a Options,
    /// The image.
    pub reference: &'a Reference,
    /// The credentials matching it, in order.
    pub matching: &'a [Arc<Credential>],
    /// The node's platform.
    pub platform: &'a Platform,
}

/// The registry, manifest and platform steps; the image's top document when it was fetched.
pub async fn check(ask: &Ask<'_>) -> (Option<FetchedManifest>, Vec<Step>) {
    let (accepted, step) = authorize(ask).await;
    let Some((client, fetched)) = accepted else {
        return (
            None,
            vec![
                step,
                Step::skipped("manifest", "the registry did not let the pull in"),
                Step::skipped("platform", "the registry did not let the pull in"),
            ],
        );
    };
    let (fetched, manifest) = manifest(ask, &client, fetched).await;
    let platform = match &fetched {
        Some(f) => platforms(ask, f),
        None => Step::skipped("platform", "no manifest to read"),
    };
    (fetched, vec![step, manifest, platform])
}

/// A client holding only `credential` (none: anonymous), asking once and reporting what the
/// registry said rather than retrying.
fn client_with(
    ask: &Ask<'_>,
    credential: Option<&Arc<Credential>>,
) -> Result<RegistryClient, RegistryError> {
    let mut keyring = Keyring::new();
    if let Some(c) = credential {
        let key = ask.reference.registry().to_string();
        keyring.push_layer([(key, Credential::clone(c))]);
    }
    let options = Options {
        request_policy: Some(crate::retry::REQUEST.once()),
        ..ask.options.clone()
    };
    RegistryClient::new(options, Arc::new(keyring))
}

/// The manifest as fetched while authorizing (when `HEAD` could not tell), for the next step.
type Prefetched = Option<Result<FetchedManifest, RegistryError>>;

/// Tries each matching credential (else anonymous) on the tag's `HEAD` (a `GET` when the `HEAD`
/// cannot tell): the first the registry accepts gives the client for the next steps.
async fn authorize(ask: &Ask<'_>) -> (Option<(RegistryClient, Prefetched)>, Step) {
    let candidates: Vec<Option<&Arc<Credential>>> = match ask.matching.is_empty() {
        true => vec![None],
        false => ask.matching.iter().map(Some).collect(),
    };
    let registry = ask.reference.registry();
    let mut details = Vec::new();
    let mut first_error: Option<RegistryError> = None;
    for credential in candidates {
        let who = credential.map_or("anonymous".to_string(), |c| c.source.clone());
        let client = match client_with(ask, credential) {
            Ok(c) => c,
            Err(e) => {
                details.push(format!("{who}: {}", crate::error_chain(&e)));
                first_error.get_or_insert(e);
                continue;
            }
        };
        let answer = match client.resolve(ask.reference).await {
            Ok(Some(_)) => Ok(None),
            // No answer to HEAD (no digest header, 404, 405): the GET's answer decides.
            Ok(None) => match client.manifest(ask.reference).await {
                Ok(f) => Ok(Some(Ok(f))),
                Err(e @ RegistryError::Status { status: 404, .. }) => Ok(Some(Err(e))),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match answer {
            Ok(prefetched) => {
                details.push(format!("{who}: accepted"));
                let step = Step::ok("registry", format!("{registry} accepts {who}"));
                return (Some((client, prefetched)), step.with_details(details));
            }
            Err(e) => {
                details.push(format!("{who}: {} ({})", e.kind(), crate::error_chain(&e)));
                first_error.get_or_insert(e);
            }
        }
    }
    let Some(error) = first_error else {
        return (None, Step::skipped("registry", "nothing to try"));
    };
    (None, refused(ask, &error).with_details(details))
}

/// Why the registry did not let the pull in, and the fix.
fn refused(ask: &Ask<'_>, error: &RegistryError) -> Step {
    let registry = ask.reference.registry();
    let summary = crate::error_chain(error);
    let (cause, fix) = match error.kind() {
        ErrorKind::Unauthorized if ask.matching.is_empty() => (
            "unauthorized",
            format!(
                "no credential matches {}: create a pull secret for {registry} (kubectl create \
                 secret docker-registry NAME --docker-server={registry} …) in the pod's \
                 namespace and name it in imagePullSecrets (or the ServiceAccount's), and give \
                 it to prepull with --auth-file",
                ask.reference.name()
            ),
        ),
        ErrorKind::Unauthorized => (
            "unauthorized",
            format!(
                "{registry} refused every matching credential (listed below): check the \
                 username and password or token, whether it expired, and its access to {}",
                ask.reference.repository()
            ),
        ),
        ErrorKind::Tls => (
            "tls",
            "see above: the error names the file to add or the flag to set".into(),
        ),
        ErrorKind::Network => (
            "connect",
            format!("{registry} did not answer over HTTP: check the registry and the path to it"),
        ),
        ErrorKind::RateLimited => (
            "rate-limited",
            format!(
                "{registry} is rate-limiting this node: authenticate pulls (higher limits), use \
                 a mirror, or wait for the window to pass"
            ),
        ),
        ErrorKind::RegistryUnavailable => (
            "registry-unavailable",
            format!("{registry} answered with a server error: wait, or use a mirror"),
        ),
        ErrorKind::Config => ("hosts-config", "fix the named file".into()),
        _ => ("registry-error", "read the registry's answer above".into()),
    };
    Step::found("registry", Verdict::Fail, cause, summary, fix)
}

/// Fetches the manifest: the tag exists, and how much rate-limit headroom is left.
async fn manifest(
    ask: &Ask<'_>,
    client: &RegistryClient,
    prefetched: Prefetched,
) -> (Option<FetchedManifest>, Step) {
    let registry = ask.reference.registry();
    let answer = match prefetched {
        Some(answer) => answer,
        None => client.manifest(ask.reference).await,
    };
    let fetched = match answer {
        Ok(f) => f,
        Err(e) => return (None, missing(ask, client, &e).await),
    };
    let what = match ask.reference.target() {
        Target::Tag(tag) => format!("tag {tag} is {}", fetched.digest),
        Target::Digest(d) => format!("{d} exists"),
    };
    let step = Step::ok("manifest", format!("{what} ({})", fetched.media_type()));
    let remaining = ask
        .options
        .hosts
        .endpoints(registry)
        .unwrap_or_default()
        .iter()
        .find_map(|e| client.rate_limit_remaining(&e.host));
    let step = match remaining {
        Some(n) if n < LOW_HEADROOM => Step::found(
            "manifest",
            Verdict::Warning,
            "rate-limit-low",
            format!("{what}; {registry} allows {n} more pulls in its window"),
            "authenticate pulls, use a mirror, or spread pulls out before nodes fail with 429",
        ),
        Some(n) => step.with_details([format!("rate limit: {n} pulls left in the window")]),
        None => step,
    };
    (Some(fetched), step)
}

/// The manifest could not be fetched: which of tag, repository or registry is wrong.
async fn missing(ask: &Ask<'_>, client: &RegistryClient, error: &RegistryError) -> Step {
    let (registry, repository) = (ask.reference.registry(), ask.reference.repository());
    let summary = crate::error_chain(error);
    if let RegistryError::Status {
        status: 404, code, ..
    } = error
    {
        // A registry may answer MANIFEST_UNKNOWN for a repository it does not have: ask.
        let repository_missing = code.as_deref() == Some("NAME_UNKNOWN")
            || matches!(client.repository_exists(ask.reference).await, Ok(false));
        return match repository_missing {
            true => Step::found(
                "manifest",
                Verdict::Fail,
                "repository-not-found",
                summary,
                format!(
                    "{registry} has no repository {repository} (or hides it from this \
                     credential): check the image name's path"
                ),
            ),
            false => Step::found(
                "manifest",
                Verdict::Fail,
                "tag-not-found",
                summary,
                format!(
                    "{repository} exists on {registry}, but not with this tag or digest: check \
                     the tag (was it pushed? for this registry?)"
                ),
            ),
        };
    }
    let mut step = refused(ask, error);
    step.step = "manifest";
    step
}

/// Whether the image has a manifest for the node's platform.
fn platforms(ask: &Ask<'_>, fetched: &FetchedManifest) -> Step {
    let Document::Index(index, _) = &fetched.document else {
        return Step::ok(
            "platform",
            "a single-platform image (its config names the platform; checked on the node)",
        );
    };
    match choose_manifest(index, ask.platform) {
        Ok((_, chosen)) => Step::ok(
            "platform",
            format!("the index has {chosen} for this node ({})", ask.platform),
        ),
        Err(e) => Step::found(
            "platform",
            Verdict::Fail,
            "no-platform",
            format!(
                "the index has no manifest for {} (it has: {})",
                e.platform, e.available
            ),
            "build and push the image for this node's platform (docker buildx build --platform \
             …), or keep the workload off nodes of this platform",
        ),
    }
}
