//! Manifests and indexes as a registry serves them, read by the function the pull path reads
//! them with ([`Document::parse`]), under each `Content-Type` a registry may send; then the
//! node's manifest chosen from an index, and the same bytes read as an image config.
//!
//! Checks: no panic; only the four manifest and index media types come out; a body that names
//! its own `mediaType` is read the same whatever the header says; the chosen manifest is an
//! image manifest of the index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prepull::digest::Digest;
use prepull::image::graph;
use prepull::oci::{self, Document, DocumentError};
use prepull::platform::Platform;

const HEADERS: &[Option<&str>] = &[
    None,
    Some(oci::OCI_MANIFEST),
    Some(oci::OCI_INDEX),
    Some(oci::DOCKER_MANIFEST),
    Some(oci::DOCKER_LIST),
    Some("application/json; charset=utf-8"),
    Some("text/plain"),
    Some("application/vnd.example.artifact+json"),
];

const PLATFORMS: &[&str] = &[
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v6",
    "windows/amd64",
];

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > oci::MAX_MANIFEST_BYTES {
        return;
    }
    let outcomes: Vec<String> = HEADERS
        .iter()
        .map(|header| {
            let outcome = Document::parse(data, *header);
            if let Ok(document) = &outcome {
                check(document);
            }
            summary(&outcome)
        })
        .collect();
    let body_type = serde_json::from_str::<serde_json::Value>(&String::from_utf8_lossy(data))
        .ok()
        .and_then(|v| v.get("mediaType").cloned());
    if matches!(body_type, Some(serde_json::Value::String(_))) {
        assert!(
            outcomes.iter().all(|o| *o == outcomes[0]),
            "a body naming its media type is read differently under different headers: {outcomes:?}"
        );
    }

    // The bytes as an image config for a manifest of one layer.
    let digest = Digest::sha256(data);
    let manifest: oci::Manifest = serde_json::from_value(serde_json::json!({
        "config": {"mediaType": oci::OCI_CONFIG, "digest": digest.to_string(), "size": data.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest.to_string(), "size": 1}],
    }))
    .expect("a manifest of one layer");
    if let Ok(diff_ids) = graph::diff_ids(&digest, &manifest, data) {
        assert_eq!(diff_ids.len(), 1);
        assert_eq!(graph::chain_ids(&diff_ids), diff_ids);
    }
});

fn check(document: &Document) {
    match document {
        Document::Index(index, media_type) => {
            assert!(media_type == oci::OCI_INDEX || media_type == oci::DOCKER_LIST);
            for wanted in PLATFORMS {
                let wanted: Platform = wanted.parse().expect("a known platform");
                match graph::choose_manifest(index, &wanted) {
                    Ok((at, _)) => {
                        let chosen = &index.manifests[at];
                        assert!(matches!(
                            chosen.media_type.as_str(),
                            "" | oci::OCI_MANIFEST | oci::DOCKER_MANIFEST
                        ));
                    }
                    Err(e) => assert!(!e.to_string().ends_with(": )"), "{e}"),
                }
            }
        }
        Document::Manifest(manifest, media_type) => {
            assert!(media_type == oci::OCI_MANIFEST || media_type == oci::DOCKER_MANIFEST);
            assert!(manifest.content_size() >= manifest.config.size);
        }
    }
}

/// What a parse gave, to compare across headers.
fn summary(outcome: &Result<Document, DocumentError>) -> String {
    match outcome {
        Ok(Document::Index(i, media_type)) => format!("index {media_type} {}", i.manifests.len()),
        Ok(Document::Manifest(m, media_type)) => {
            format!("manifest {media_type} {}", m.layers.len())
        }
        Err(DocumentError::Schema1) => "schema 1".into(),
        Err(DocumentError::Invalid { .. }) => "invalid".into(),
        Err(DocumentError::Unsupported(t)) => format!("unsupported {t}"),
    }
}
