//! Committing what makes the content an image: the manifest and index documents, written from
//! memory with the GC references that root their children.

use std::collections::HashMap;

use super::fetch::BusyWait;
use super::Puller;
use crate::registry::FetchedManifest;
use crate::store::{ref_key, Lease, Opened, StoreError};

impl Puller {
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
