//! `prepull unpin`: let the kubelet's image garbage collection reclaim images again.

use std::process::ExitCode;

use clap::Args;

use crate::image::{labels, names};
use crate::reference::Reference;
use crate::store::{Store, StoredImage};

/// Arguments of `prepull unpin`.
#[derive(Debug, Args)]
#[command(
    about = "Remove the pin from images, so kubelet image GC may reclaim them again",
    long_about = "Remove the pin (`io.cri-containerd.pinned`) that `prepull pull --pin` put on \
        images, from every record of each image: its tag, its digest reference and its ID. The \
        images stay on the node until the kubelet's image garbage collection decides otherwise. \
        The ownership labels of `prepull agent` lists (`prepull.io/pinned-by.<owner>`) go too; an \
        agent whose list still holds the image pins it again on its next pass."
)]
pub struct UnpinArgs {
    /// Images to unpin, as they were pulled (`name[:tag]` or `name@sha256:…`).
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,

    #[command(flatten)]
    pub containerd: super::ContainerdArgs,
}

/// Runs `prepull unpin`. Exit code 1 if an image has no record on this node.
pub async fn run(args: UnpinArgs) -> anyhow::Result<ExitCode> {
    let references: Vec<Reference> = args
        .images
        .iter()
        .map(|i| Reference::parse(i))
        .collect::<Result<_, _>>()?;
    let store = Store::connect(&args.containerd.socket, &args.containerd.namespace).await?;
    let mut missing = 0;
    for reference in &references {
        let Some(record) = store.image(&reference.to_string()).await? else {
            eprintln!(
                "error: {reference}: no such image on this node (namespace {})",
                args.containerd.namespace
            );
            missing += 1;
            continue;
        };
        // Every name CRI knows the image by: the digest reference and the ID share its pin.
        let mut names = vec![reference.to_string()];
        if let Some(target) = &record.target {
            names.push(names::digest_name(reference, &target.digest));
        }
        names.extend(config_names(&store, &record).await);
        let mut unpinned = 0;
        for name in &names {
            if unpin(&store, name).await? {
                unpinned += 1;
            }
        }
        println!(
            "unpinned {reference} ({})",
            super::pull::counted(unpinned, "record")
        );
    }
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Removes CRI's pin and every prepull list's ownership of it from one record; `true` when the
/// record was pinned.
async fn unpin(store: &Store, name: &str) -> Result<bool, crate::store::StoreError> {
    let Some(record) = store.image(name).await? else {
        return Ok(false);
    };
    let was_pinned = record.labels.contains_key(labels::CRI_PINNED);
    let remove: Vec<(&str, Option<&str>)> = crate::agent::pins::unpin_labels(&record)
        .into_iter()
        .map(|label| (label, None))
        .collect();
    store.update_image_labels(name, &remove).await?;
    Ok(was_pinned)
}

/// The image-ID records (`sha256:<config>`) of an image, found through its manifests: one per
/// platform the store holds.
async fn config_names(store: &Store, record: &StoredImage) -> Vec<String> {
    let Some(target) = record.target.as_ref() else {
        return Vec::new();
    };
    store
        .manifests_held(&target.digest, Some(&target.media_type))
        .await
        .map(|held| held.iter().map(|m| m.config.digest.to_string()).collect())
        .unwrap_or_default()
}
