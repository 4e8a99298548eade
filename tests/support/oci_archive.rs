//! Images built elsewhere (an OCI archive, as `buildah push oci-archive:` writes it) pushed to a
//! bench registry through its HTTP API.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;

use reqwest::Url;

use super::busybox::{blob_of, put_manifest, upload_blob};

/// Pushes the single image of the OCI archive at `archive` to `repo:tag` on the plain-HTTP
/// registry `registry_host`; returns its manifest digest.
pub async fn push_oci_archive(
    registry_host: &str,
    repo: &str,
    tag: &str,
    archive: &Path,
) -> String {
    let files = read_archive(archive);
    let file = |name: &str| {
        files
            .get(name)
            .unwrap_or_else(|| panic!("{} has no {name}", archive.display()))
    };
    let blob = |digest: &str| file(&format!("blobs/{}", digest.replacen(':', "/", 1))).clone();
    let index: serde_json::Value = serde_json::from_slice(file("index.json")).expect("index.json");
    let top = &index["manifests"][0];
    let manifest_bytes = blob(top["digest"].as_str().expect("a manifest in index.json"));
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).expect("manifest");

    let base = Url::parse(&format!("http://{registry_host}/")).expect("registry host");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build HTTP client");
    let parts = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().expect("layers").iter());
    for part in parts {
        let digest = part["digest"].as_str().expect("digest");
        let bytes = blob(digest);
        let described = blob_of(&bytes, part["mediaType"].as_str().unwrap_or_default());
        assert_eq!(described.digest, digest, "{} is what it says", digest);
        upload_blob(&client, &base, repo, &described, bytes).await;
    }
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json");
    let described = blob_of(&manifest_bytes, media_type);
    put_manifest(&client, &base, repo, tag, &described, &manifest_bytes).await;
    described.digest
}

/// Every regular file of a tar archive, by path (without a leading `./`).
fn read_archive(archive: &Path) -> HashMap<String, Vec<u8>> {
    let file = std::fs::File::open(archive).unwrap_or_else(|e| {
        panic!(
            "cannot open {} ({e}): build it with scripts/build-image.sh (scripts/test.sh does)",
            archive.display()
        )
    });
    let mut files = HashMap::new();
    let mut tar = tar::Archive::new(file);
    for entry in tar.entries().expect("read the archive") {
        let mut entry = entry.expect("an archive entry");
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().expect("entry path").display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read an entry");
        files.insert(path.trim_start_matches("./").to_string(), bytes);
    }
    files
}
