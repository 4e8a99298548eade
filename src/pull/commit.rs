//! Committing what makes the content an image: the manifest and index documents, written from
//! memory with the GC references that root their children, then the image records CRI finds the
//! image by, which root it all once the pull's lease goes.

use std::collections::HashMap;

use super::fetch::BusyWait;
use super::resolve::Resolved;
use super::{PullError, Puller};
use crate::image::{labels, names};
use crate::reference::Reference;
use crate::registry::FetchedManifest;
use crate::store::{ref_key, ImageRecord, Lease, Opened, StoreError};

impl Puller {
    /// Commits the chosen manifest, then the index above it: parents after children, each with
    /// GC references to what it needs.
    pub(super) async fn commit_documents(
        &self,
        reference: &Reference,
        image: &Resolved,
        lease: &Lease,
        source: &HashMap<String, String>,
    ) -> Result<(), PullError> {
        let store_err = PullError::store(reference);
        let manifest_labels = labels::manifest_refs(source, &image.manifest);
        self.put_document(lease, &image.chosen, manifest_labels)
            .await
            .map_err(&store_err)?;
        if let Some(i) = image.position {
            let index_labels = labels::index_refs(source, i, &image.chosen.digest);
            self.put_document(lease, &image.top, index_labels)
                .await
                .map_err(&store_err)?;
        }
        Ok(())
    }

    /// Writes the records CRI names the image by, last: they make the image visible to CRI and
    /// root it for GC. Returns their names.
    pub(super) async fn write_records(
        &self,
        reference: &Reference,
        image: &Resolved,
    ) -> Result<Vec<String>, PullError> {
        let names =
            names::record_names(reference, &image.top.digest, &image.manifest.config.digest);
        let record_labels = labels::record_labels(self.options.pin);
        for name in &names {
            self.store
                .put_image(&ImageRecord {
                    name: name.clone(),
                    target: image.top.descriptor(),
                    labels: record_labels.clone(),
                })
                .await
                .map_err(PullError::store(reference))?;
        }
        Ok(names)
    }

    /// Commits a manifest or index from memory with its labels; if containerd has it already,
    /// makes sure the labels are there.
    pub(super) async fn put_document(
        &self,
        lease: &Lease,
        doc: &FetchedManifest,
        labels: HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let mut busy = BusyWait::new();
        loop {
            match self.put_document_once(lease, doc, labels.clone()).await {
                // Another writer holds the ref (a concurrent pull of an image sharing this
                // document): once it is done, the document is present.
                Err(StoreError::Busy { .. }) if busy.wait(&doc.digest).await => {}
                other => return other,
            }
        }
    }

    pub(super) async fn put_document_once(
        &self,
        lease: &Lease,
        doc: &FetchedManifest,
        labels: HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let key = ref_key(doc.media_type(), &doc.digest);
        let size = doc.bytes.len() as u64;
        match self
            .store
            .open_writer(lease, &key, &doc.digest, size)
            .await?
        {
            Opened::Present => self.store.set_labels(&doc.digest, labels).await,
            Opened::Writer(mut w) => {
                w.restart();
                w.write(&doc.bytes).await?;
                w.commit(labels).await
            }
        }
    }
}
