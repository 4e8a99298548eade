//! Mending damaged images, one way for `prepull repair` and the agent alike.
//!
//! The steps, in order:
//! 1. [`discard_bad_blobs`]: a lease takes in everything the damaged images reference, then the
//!    blobs that fail their digest (or vanished) are removed and containerd's garbage collection
//!    runs, so the next write of the digest cannot find the bad file again. Blobs another
//!    containerd namespace also holds are never removed ([`SharedBlob`]): their file is shared,
//!    and removing them here would neither remove it nor be ours to do.
//! 2. [`plan`]: what to pull again for each damaged or missing image (by digest, so a tag that
//!    moved upstream does not replace the image being mended), and which cannot be mended here
//!    and why.
//! 3. [`mend`]: pull thoroughly (every blob's presence and every snapshot checked), then check
//!    again: mended means pulled and found sound.
//! 4. [`Protection::release`]: the lease goes when the pulls have ended, whatever their outcome.
//!    One rule for every caller: a lease left behind keeps content for a week that nothing
//!    names. The cost: when a pull failed, content only a removed blob held may be collected,
//!    and the next repair downloads it again.
//!
//! Records a pull was killed while writing ([`ImageCheck::records_incomplete`]) are written
//! again by [`mend_records`] from the records that are there, without the network.
//!
//! Snapshots the deep check found damaged are mended without the network by [`snapshots`]
//! ([`mend_snapshots`]): the chain is removed from the lowest damaged layer up and unpacked
//! again from the local blobs, unless a container runs on it.

pub mod snapshots;

use std::fmt;
use std::time::Duration;

use crate::digest::Digest;
use crate::pull::Puller;
use crate::reference::Reference;
use crate::store::{ImageRecord, Lease, Store, StoreError};
use crate::verify::{Checker, ImageCheck, Problem};

pub use snapshots::{
    mend_snapshots, unpack_missing, ContainerUse, SnapshotOutcome, SnapshotRepair,
    SnapshotRepairError, SnapshotUser,
};

/// How long the protecting lease lives if its holder dies before releasing it.
const PROTECTION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The lease holding damaged images' good parts while their bad blobs are replaced.
#[must_use = "release the protection once the mending pulls have ended"]
pub struct Protection(Option<Lease>);

impl Protection {
    /// Deletes the lease (if one was taken): the mending pulls have ended, and the images'
    /// records root whatever they got. A failure to delete is logged; the lease expires by
    /// itself.
    pub async fn release(self, store: &Store) {
        if let Some(lease) = self.0 {
            if let Err(e) = store.delete_lease(lease).await {
                tracing::warn!(error = %e, "cannot delete the repair lease; it expires by itself");
            }
        }
    }
}

/// What to do for one image.
#[derive(Debug)]
pub struct Step {
    /// The name the operator knows it by (its tag, when it has one).
    pub shown: String,
    /// What its check found before the repair; `None` for a named image with no record at all.
    pub before: Option<ImageCheck>,
    /// Pull it again by this name, or why it cannot be mended here.
    pub action: Result<String, String>,
}

/// What to do for each damaged image in `checks` (sound ones are left out) and each name in
/// `missing` (no record on the node: pulled to restore its records). An image with a bad blob
/// `shared` with another namespace cannot be mended here; neither can one with no name to pull
/// it by.
pub fn plan(checks: Vec<ImageCheck>, missing: Vec<String>, shared: &[SharedBlob]) -> Vec<Step> {
    let mut steps = Vec::new();
    for check in checks.into_iter().filter(|c| !c.problems.is_empty()) {
        let action = match (blocked(&check, shared), check.pull_name()) {
            (Some(why), _) => Err(why),
            (None, Some(name)) => Ok(name),
            (None, None) => Err(
                "no name to pull it by: no tag or digest record, and no source label".to_string(),
            ),
        };
        steps.push(Step {
            shown: check
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| check.target.to_string()),
            before: Some(check),
            action,
        });
    }
    steps.extend(missing.into_iter().map(|name| Step {
        shown: name.clone(),
        before: None,
        action: Ok(name),
    }));
    steps
}

/// Why `check`'s image cannot be mended on this node: its problems and every bad blob of it
/// another namespace holds, with what to do there. `None` when nothing stands in the way.
pub fn blocked(check: &ImageCheck, shared: &[SharedBlob]) -> Option<String> {
    let held: Vec<String> = shared
        .iter()
        .filter(|s| {
            check
                .problems
                .iter()
                .any(|p| p.bad_blob() == Some(&s.digest))
        })
        .map(ToString::to_string)
        .collect();
    if held.is_empty() {
        return None;
    }
    let problems: Vec<String> = check.problems.iter().map(ToString::to_string).collect();
    Some(format!("{}; {}", problems.join("; "), held.join("; ")))
}

/// Pulls `name` again, checking every blob and snapshot, then checks the image: `Ok` when it is
/// sound, else what is still wrong (or why the pull failed).
pub async fn mend(
    store: &Store,
    puller: &Puller,
    checker: &Checker<'_>,
    name: &str,
    progress: std::sync::Arc<crate::pull::PullProgress>,
) -> Result<Result<(), String>, StoreError> {
    let reference = match Reference::parse(name) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let report = match puller.pull_thoroughly_reporting(&reference, progress).await {
        Ok(report) => report,
        Err(e) => return Ok(Err(crate::error_chain(&e))),
    };
    let mut records = Vec::new();
    for name in &report.names {
        if let Some(r) = store.image(name).await? {
            records.push(r);
        }
    }
    let after = checker.check(&report.digest, &records).await?;
    let still: Vec<String> = after.problems.iter().map(ToString::to_string).collect();
    Ok(if still.is_empty() {
        Ok(())
    } else {
        Err(still.join("; "))
    })
}

/// Writes the records `check` found missing, each pointing where the image's other records
/// point and labelled as they are (CRI's `managed`, pins): nothing is fetched. Returns how
/// many were written; 0 when no record of the image is left to copy.
pub async fn mend_records(store: &Store, check: &ImageCheck) -> Result<usize, StoreError> {
    let mut model = None;
    for name in &check.names {
        if let Some(record) = store.image(name).await? {
            model = Some(record);
            break;
        }
    }
    let Some((target, labels)) = model.and_then(|r| Some((r.target?, r.labels))) else {
        return Ok(0);
    };
    let mut written = 0;
    for problem in &check.problems {
        if let Problem::MissingRecord { name } = problem {
            store
                .put_image(&ImageRecord {
                    name: name.clone(),
                    target: target.clone(),
                    labels: labels.clone(),
                })
                .await?;
            tracing::info!(record = name, target = %target.digest, "wrote the missing image record");
            written += 1;
        }
    }
    Ok(written)
}

/// A bad blob that another namespace holds as well. containerd keeps one file per blob for all
/// namespaces (its default `shared` content policy), and the file goes only once no namespace
/// holds the blob: until then, writing the blob again finds the bad file and keeps it. Repair
/// never removes another namespace's content, so this one is mended only after the other
/// namespace lets go of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedBlob {
    /// The bad blob.
    pub digest: Digest,
    /// The other namespace holding it.
    pub namespace: String,
    /// Image records there whose content reaches it (none: held without an image, e.g. by a
    /// lease or a bare `ctr content fetch`).
    pub images: Vec<String>,
}

impl fmt::Display for SharedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ns, digest) = (&self.namespace, &self.digest);
        write!(f, "{digest} is also held by containerd namespace {ns}")?;
        match self.images.as_slice() {
            [] => write!(f, " (no image there names it)")?,
            [one] => write!(f, " (image {one})")?,
            many => write!(f, " (images {})", many.join(", "))?,
        }
        write!(
            f,
            ", which shares its file; repair leaves other namespaces' content alone: remove it \
             there (`ctr -n {ns} content rm {digest}`), run the repair again"
        )?;
        if !self.images.is_empty() {
            write!(f, ", then pull the image again in {ns}")?;
        }
        Ok(())
    }
}

/// The bad blobs of `damaged` that namespaces other than `store`'s also hold.
pub async fn shared_bad_blobs(
    store: &Store,
    damaged: &[&ImageCheck],
) -> Result<Vec<SharedBlob>, StoreError> {
    let bad = bad_blobs(damaged);
    let mut shared = Vec::new();
    if bad.is_empty() {
        return Ok(shared);
    }
    for namespace in store.namespaces().await? {
        if namespace == store.namespace() {
            continue;
        }
        let other = store.in_namespace(&namespace);
        for digest in &bad {
            if other.info(digest).await?.is_some() {
                shared.push(SharedBlob {
                    digest: (*digest).clone(),
                    namespace: namespace.clone(),
                    images: other.images_reaching(digest).await?,
                });
            }
        }
    }
    Ok(shared)
}

fn bad_blobs<'a>(damaged: &[&'a ImageCheck]) -> Vec<&'a Digest> {
    let mut bad: Vec<&Digest> = damaged
        .iter()
        .flat_map(|c| c.problems.iter().filter_map(Problem::bad_blob))
        .collect();
    bad.sort();
    bad.dedup();
    bad
}

/// Removes the bad blobs of damaged images so they can be fetched again, without losing
/// anything else: first a lease takes in everything the images reference (their good blobs and
/// snapshots), then the bad blobs go, then containerd's garbage collection runs (containerd
/// would otherwise take a deleted blob's bad file back when the digest is written again).
/// Blobs another namespace also holds are left alone (see [`SharedBlob`]): removing them here
/// would not remove their file. The caller releases the returned [`Protection`] once its pulls
/// have ended.
pub async fn discard_bad_blobs(
    store: &Store,
    damaged: &[&ImageCheck],
) -> Result<Protection, StoreError> {
    let shared = shared_bad_blobs(store, damaged).await?;
    let bad: Vec<&Digest> = bad_blobs(damaged)
        .into_iter()
        .filter(|d| !shared.iter().any(|s| &s.digest == *d))
        .collect();
    if bad.is_empty() {
        return Ok(Protection(None));
    }
    let lease = store.create_lease("repair", PROTECTION_EXPIRY).await?;
    let removed = async {
        for check in damaged {
            store.protect(&lease, &check.target, &bad).await?;
        }
        for digest in &bad {
            store.delete_blob(digest).await?;
        }
        store.collect_garbage().await
    }
    .await;
    match removed {
        Ok(()) => Ok(Protection(Some(lease))),
        Err(e) => {
            // Nothing is left for the caller to release: release it here.
            if let Err(d) = store.delete_lease(lease).await {
                tracing::warn!(error = %d, "cannot delete the repair lease; it expires by itself");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn damaged(names: &[&str], bad: &Digest) -> ImageCheck {
        ImageCheck {
            names: names.iter().map(|n| n.to_string()).collect(),
            target: digest('a'),
            source: None,
            problems: vec![Problem::Unreadable {
                what: "layer 0".into(),
                digest: bad.clone(),
                why: "no such file".into(),
            }],
            blobs: 0,
            bytes: 0,
            unpacked: vec![],
            unhashed: vec![],
        }
    }

    #[test]
    fn a_shared_blob_names_the_namespace_the_image_and_what_to_run() {
        let d: Digest = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
            .parse()
            .unwrap();
        let mut shared = SharedBlob {
            digest: d.clone(),
            namespace: "moby".into(),
            images: vec!["docker.io/library/nginx:1.25".into()],
        };
        let text = shared.to_string();
        assert!(
            text.contains("namespace moby (image docker.io/library/nginx:1.25)")
                && text.contains(&format!("`ctr -n moby content rm {d}`"))
                && text.ends_with("pull the image again in moby"),
            "{text}"
        );
        shared.images.clear();
        let text = shared.to_string();
        assert!(
            text.contains("no image there names it") && !text.contains("pull the image"),
            "{text}"
        );
    }

    #[test]
    fn the_plan_pulls_by_digest_and_says_why_it_cannot_mend_the_rest() {
        let (bad, other) = (digest('b'), digest('c'));
        let shared = [SharedBlob {
            digest: other.clone(),
            namespace: "default".into(),
            images: vec![],
        }];
        let steps = plan(
            vec![
                damaged(&["reg.io/app:v1"], &bad),
                damaged(&["reg.io/held:v1"], &other),
                damaged(&["sha256:cfg"], &bad),
            ],
            vec!["reg.io/gone:v2".into()],
            &shared,
        );
        let actions: Vec<_> = steps
            .iter()
            .map(|s| (s.shown.as_str(), &s.action))
            .collect();
        assert_eq!(
            actions[0],
            ("reg.io/app:v1", &Ok(format!("reg.io/app@{}", digest('a'))))
        );
        assert!(matches!(&actions[1].1, Err(why) if why.contains("namespace default")));
        assert!(matches!(&actions[2].1, Err(why) if why.contains("no name to pull it by")));
        assert_eq!(
            actions[3],
            ("reg.io/gone:v2", &Ok("reg.io/gone:v2".to_string()))
        );
        assert!(steps[3].before.is_none());
    }
}
