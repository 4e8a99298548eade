//! Step 8: the node. Is the image in containerd, complete and sound (every blob read back and
//! hashed), pinned, seen by CRI under the name the pod uses, and is there room to pull it?

use std::path::Path;

use super::{Step, Verdict};
use crate::image::labels;
use crate::pull::Puller;
use crate::reference::Reference;
use crate::rootfs::Startable;
use crate::store::Store;
use crate::verify::{group_records, CheckOptions, Checker, LayerCheck};

/// What the node holds for `reference`. `size`: the content bytes a pull would need, when the
/// registry said.
pub async fn check(
    puller: &Puller,
    store: &Store,
    cri_socket: &Path,
    reference: &Reference,
    size: Option<u64>,
) -> Step {
    let name = reference.to_string();
    let Some(present) = puller.on_node(reference).await else {
        return absent(puller, store, &name, size).await;
    };
    let mut details = vec![format!(
        "on the node as {} ({} layers)",
        present.digest, present.layers
    )];
    let record = store.image(&name).await.ok().flatten();
    let pinned = record
        .as_ref()
        .and_then(|r| r.labels.get(labels::CRI_PINNED))
        .is_some_and(|v| v == labels::PINNED);
    details.push(match pinned {
        true => "pinned: the kubelet's image garbage collection leaves it".into(),
        false => "not pinned: the kubelet's image garbage collection may remove it".into(),
    });
    // The image's every blob, read back and hashed.
    let checker = Checker::new(
        store,
        CheckOptions {
            snapshotter: puller.snapshotter().map(str::to_string),
            layers: LayerCheck::Hash,
        },
    );
    let groups = match store.images().await {
        Ok(records) => group_records(records),
        Err(e) => return cannot_ask(&e),
    };
    let target = present.digest.to_string();
    if let Some(records) = groups.get(&target) {
        match checker.check(&present.digest, records).await {
            Ok(check) if !check.problems.is_empty() => {
                let problems: Vec<String> =
                    check.problems.iter().map(ToString::to_string).collect();
                return Step::found(
                    "node",
                    Verdict::Fail,
                    "corrupt",
                    format!("{name} is on the node but damaged: {}", problems[0]),
                    format!(
                        "prepull repair {name} (removes what is bad and fetches it again), then \
                         delete the failing pod"
                    ),
                )
                .with_details(details.into_iter().chain(problems));
            }
            Ok(check) => details.push(format!("{} blobs read back and hashed: sound", check.blobs)),
            Err(e) => return cannot_ask(&e),
        }
    }
    match cri_sees(cri_socket, &name).await {
        Ok(true) => details.push(format!("CRI reports {name} present, as the kubelet asks")),
        Ok(false) => {
            return Step::found(
                "node",
                Verdict::Fail,
                "not-in-cri",
                format!("containerd holds {name} but CRI does not report it"),
                "pull it into containerd's k8s.io namespace (prepull pull -n k8s.io), where CRI \
                 looks",
            )
            .with_details(details)
        }
        Err(e) => details.push(format!("CRI could not be asked: {e}")),
    }
    if let Some(snapshotter) = puller.snapshotter() {
        match starts(store, snapshotter, &present.digest, puller).await {
            Ok(Some(Startable::No(finding))) => {
                return Step::found(
                    "node",
                    Verdict::Fail,
                    "cannot-start",
                    format!("{name} is on the node, but a pod cannot start from it: {finding}"),
                    format!(
                        "prepull verify --deep {name} shows what differs from its layers; prepull \
                         repair mends damage; an image built for another architecture or without \
                         its command must be rebuilt"
                    ),
                )
                .with_details(details);
            }
            Ok(Some(Startable::Yes { path })) => details.push(format!(
                "its command resolves to {path}, which the kernel can run"
            )),
            Ok(_) => {
                details.push("the image names no command: the pod's own is not checked".into())
            }
            Err(e) => details.push(format!("whether it starts could not be checked: {e}")),
        }
    }
    Step::ok(
        "node",
        format!("{name} is on the node, complete and sound: a pod starts without the registry"),
    )
    .with_details(details)
}

/// How much of containerd's filesystem the pinned images take: their content (config and
/// layers, each image counted whole, so shared layers count more than once: an upper bound)
/// against the filesystem's size. `None` when there is no free-space check to ask or
/// containerd cannot list them.
pub async fn pinned_usage(puller: &Puller, store: &Store) -> Option<super::kubelet::Usage> {
    let (_, total) = puller.space()?.usage().ok()?;
    let targets = crate::agent::pin_budget::pinned_targets(store).await.ok()?;
    let mut bytes = 0u64;
    for target in &targets {
        if let Ok(chosen) = store.manifest_for(target, puller.platform()).await {
            bytes = bytes.saturating_add(chosen.manifest.content_size());
        }
    }
    Some(super::kubelet::Usage {
        pinned_images: targets.len(),
        pinned_bytes: bytes,
        filesystem_bytes: total,
    })
}

/// Whether the image's own command starts from its unpacked layers.
async fn starts(
    store: &Store,
    snapshotter: &str,
    top: &crate::digest::Digest,
    puller: &Puller,
) -> Result<Option<Startable>, String> {
    let lease = store
        .create_lease("doctor", std::time::Duration::from_secs(600))
        .await
        .map_err(|e| crate::error_chain(&e))?;
    let checked = async {
        let unpacked = crate::start_check::unpacked(store, top, puller.platform()).await?;
        crate::start_check::check(store, &lease, snapshotter, &unpacked).await
    }
    .await
    .map_err(|e| crate::error_chain(&e));
    let _ = store.delete_lease(lease).await;
    checked
}

/// The image is not (completely) on the node: a half-there record fails; otherwise the pull at
/// the pod's start must fit in the free space.
async fn absent(puller: &Puller, store: &Store, name: &str, size: Option<u64>) -> Step {
    if let Ok(Some(_)) = store.image(name).await {
        return Step::found(
            "node",
            Verdict::Fail,
            "incomplete",
            format!("containerd has a record for {name}, but some of its content or its unpacked layers are missing"),
            format!("prepull repair {name}, or prepull pull {name}"),
        );
    }
    if let (Some(space), Some(size)) = (puller.space(), size) {
        if let Err(e) = space.claim(&[size], puller.snapshotter().is_some()) {
            return Step::found(
                "node",
                Verdict::Fail,
                "disk-space",
                format!("{name} is not on the node, and there is no room to pull it: {e}"),
                "free space on containerd's filesystem (the kubelet's image GC, or remove unused \
                 images), or grow the disk",
            );
        }
    }
    Step::found(
        "node",
        Verdict::Warning,
        "not-on-node",
        format!("{name} is not on the node: a pod using it pulls at start"),
        format!("prepull pull {name}, or add it to the prepull list"),
    )
}

fn cannot_ask(e: &crate::store::StoreError) -> Step {
    Step::found(
        "node",
        Verdict::Fail,
        "containerd",
        format!("containerd could not be asked: {}", crate::error_chain(e)),
        "check that containerd runs and that --containerd names its socket",
    )
}

async fn cri_sees(socket: &Path, name: &str) -> Result<bool, String> {
    let channel = crate::cri::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    crate::cri::image_status(channel, name)
        .await
        .map(|i| i.is_some())
        .map_err(|e| e.message().to_string())
}
