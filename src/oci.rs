//! OCI and Docker image documents: media types, descriptors, indexes, manifests and configs.
//!
//! Only the fields prepull acts on are modelled; everything else is kept as the raw bytes the
//! registry served, because those bytes (not a re-serialization) are what the digests cover.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Digest;
use crate::platform::Platform;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// An OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// A Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The `Accept` header for manifest requests: both index types, both manifest types, anything.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, */*";

/// The largest manifest or index prepull accepts, as containerd (4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest image config prepull accepts.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A content descriptor: what a parent document says about a child blob.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The child's media type.
    #[serde(default)]
    pub media_type: String,
    /// The child's digest.
    pub digest: Digest,
    /// The child's exact size in bytes.
    pub size: u64,
    /// The platform, for index entries.
    #[serde(default)]
    pub platform: Option<RawPlatform>,
    /// Alternative locations (foreign layers).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Free-form annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A platform as written in an index.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct RawPlatform {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `v8`.
    #[serde(default)]
    pub variant: Option<String>,
}

impl RawPlatform {
    /// The normalized platform.
    pub fn normalized(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// A multi-platform index (OCI index or Docker manifest list).
#[derive(Clone, Debug, Deserialize)]
pub struct Index {
    /// One entry per platform (and attestations).
    pub manifests: Vec<Descriptor>,
}

/// A single-platform image manifest.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// Bytes of the image's content as stored: its config and layers (what CRI reports as the
    /// image's size, less the manifest itself).
    pub fn content_size(&self) -> u64 {
        self.layers
            .iter()
            .fold(self.config.size, |sum, l| sum.saturating_add(l.size))
    }
}

/// The parts of an image config prepull needs.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    /// The architecture its binaries are built for (`amd64`, `arm64`…), when it says.
    #[serde(default, deserialize_with = "lenient")]
    pub architecture: Option<String>,
    /// The root filesystem.
    #[serde(default)]
    pub rootfs: RootFs,
    /// How the image's process runs; `None` when absent or not an object (never a parse error:
    /// the diff IDs above are what a pull needs).
    #[serde(default, deserialize_with = "lenient")]
    pub config: Option<ImageConfig>,
}

/// `config` of an image config: what the image's process runs with. Fields of an unexpected
/// type read as absent; Docker's single-string form of `Entrypoint` and `Cmd` is a list of one.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// The executable and its first arguments.
    #[serde(default, deserialize_with = "string_list")]
    pub entrypoint: Option<Vec<String>>,
    /// Arguments after the entrypoint, or the whole command without one.
    #[serde(default, deserialize_with = "string_list")]
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` entries of the process environment.
    #[serde(default, deserialize_with = "string_list")]
    pub env: Option<Vec<String>>,
    /// The process's working directory (`/` when empty).
    #[serde(default, deserialize_with = "lenient")]
    pub working_dir: Option<String>,
}

/// Any JSON value: what deserializes as `T`, or `None`.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// A list of strings, a single string (a list of one), or `None` for anything else.
fn string_list<'de, D>(d: D) -> Result<Option<Vec<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(vec![s]),
        v @ serde_json::Value::Array(_) => serde_json::from_value(v).ok(),
        _ => None,
    })
}

/// `rootfs` of an image config.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    /// The digest of each uncompressed layer, base first (absent in images without layers).
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// A manifest-like document after looking at it.
#[derive(Clone, Debug)]
pub enum Document {
    /// An index; its media type.
    Index(Index, String),
    /// A manifest; its media type.
    Manifest(Manifest, String),
}

/// Why a manifest body cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Docker schema 1, deprecated and unsupported by containerd's CRI since 2.0.
    #[error(
        "is a Docker schema 1 manifest, which prepull does not pull: push the image again \
         with a current client (schema 2 or OCI)"
    )]
    Schema1,
    /// Not JSON of a known shape.
    #[error("is not a valid image manifest or index (media type {media_type:?})")]
    Invalid {
        /// The media type the registry or the body claimed.
        media_type: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// JSON without anything to pull.
    #[error("has unsupported media type {0:?}")]
    Unsupported(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

impl Document {
    /// Classifies and parses a manifest body. `content_type` is what the registry said; the
    /// body's own `mediaType` wins when present, and the shape decides when neither is known.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Document, DocumentError> {
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim().to_string())
            .filter(|c| !c.is_empty());
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|source| DocumentError::Invalid {
                media_type: header.clone().unwrap_or_default(),
                source,
            })?;
        let claimed = probe.media_type.clone().or(header);
        if probe.schema_version == Some(1)
            || matches!(
                claimed.as_deref(),
                Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)
            )
        {
            return Err(DocumentError::Schema1);
        }
        // A type that names something else (an artifact, a vendor's document) is refused, as
        // containerd refuses it: only a missing or generic type leaves it to the shape.
        let is_index = match claimed.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) if !is_generic(other) => {
                return Err(DocumentError::Unsupported(other.to_string()))
            }
            _ if probe.manifests.is_some() => true,
            _ if probe.config.is_some() => false,
            other => return Err(DocumentError::Unsupported(other.unwrap_or("").to_string())),
        };
        let media_type = match claimed {
            Some(known) if !is_generic(&known) => known,
            _ if is_index => OCI_INDEX.to_string(),
            _ => OCI_MANIFEST.to_string(),
        };
        let invalid = |source| DocumentError::Invalid {
            media_type: media_type.clone(),
            source,
        };
        if is_index {
            let index = serde_json::from_slice(bytes).map_err(invalid)?;
            Ok(Document::Index(index, media_type))
        } else {
            let manifest = serde_json::from_slice(bytes).map_err(invalid)?;
            Ok(Document::Manifest(manifest, media_type))
        }
    }
}

/// A content type that says nothing about which document it is: JSON, text, bytes.
fn is_generic(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/json" | "text/plain" | "application/octet-stream"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_docker_manifest_list_by_body_media_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D}","size":7,
              "platform":{{"architecture":"arm64","os":"linux","variant":"v8","features":["x"]}}}}]}}"#
        );
        match Document::parse(body.as_bytes(), Some("text/plain")).unwrap() {
            Document::Index(i, mt) => {
                assert_eq!(mt, DOCKER_LIST);
                let p = i.manifests[0].platform.as_ref().unwrap().normalized();
                assert_eq!(p.to_string(), "linux/arm64");
            }
            other => panic!("expected an index, got {other:?}"),
        }
    }

    #[test]
    fn parses_oci_manifest_without_media_type_field() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D}","size":3}}]}}"#
        );
        match Document::parse(
            body.as_bytes(),
            Some(&format!("{OCI_MANIFEST}; charset=utf-8")),
        )
        .unwrap()
        {
            Document::Manifest(m, mt) => {
                assert_eq!(mt, OCI_MANIFEST);
                assert_eq!(m.layers.len(), 1);
                assert_eq!(m.config.size, 2);
            }
            other => panic!("expected a manifest, got {other:?}"),
        }
    }

    #[test]
    fn image_configs_read_the_process_leniently() {
        let diff_ids = format!(r#""rootfs":{{"type":"layers","diff_ids":["{D}"]}}"#);
        let parse = |process: &str| {
            let body = format!(r#"{{"architecture":"amd64",{diff_ids}{process}}}"#);
            serde_json::from_str::<Config>(&body).unwrap()
        };
        let c = parse(
            r#","config":{"Entrypoint":["/bin/app","-v"],"Cmd":null,"Env":["PATH=/bin"],"WorkingDir":"/srv","User":"1"}"#,
        );
        assert_eq!(c.rootfs.diff_ids.len(), 1);
        assert_eq!(
            c.config,
            Some(ImageConfig {
                entrypoint: Some(vec!["/bin/app".into(), "-v".into()]),
                cmd: None,
                env: Some(vec!["PATH=/bin".into()]),
                working_dir: Some("/srv".into()),
            })
        );
        // Docker's string form; odd types are absent, not errors that would stop a pull.
        let c = parse(r#","config":{"Cmd":"serve","Env":{"PATH":"/"},"WorkingDir":7}"#);
        let process = c.config.unwrap();
        assert_eq!(process.cmd, Some(vec!["serve".to_string()]));
        assert_eq!((process.env, process.working_dir), (None, None));
        assert_eq!(parse(r#","config":null"#).config, None);
        assert_eq!(parse(r#","config":"x""#).config, None);
        assert_eq!(parse("").config, None);
    }

    #[test]
    fn unknown_media_types_are_refused_and_generic_ones_left_to_the_shape() {
        let manifest = |media_type: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"digest":"{D}","size":2}},"layers":[]}}"#
            )
        };
        let odd = "application/vnd.example.thing.v1+json";
        for (body, header) in [
            (manifest(odd), None),
            (manifest(odd), Some(OCI_MANIFEST)),
            (
                format!(r#"{{"schemaVersion":2,"config":{{"digest":"{D}","size":2}}}}"#),
                Some(odd),
            ),
        ] {
            match Document::parse(body.as_bytes(), header) {
                Err(DocumentError::Unsupported(t)) => assert_eq!(t, odd),
                other => panic!("{body} ({header:?}): {other:?}"),
            }
        }
        let plain = format!(r#"{{"schemaVersion":2,"config":{{"digest":"{D}","size":2}}}}"#);
        for header in [None, Some("application/json"), Some("text/plain")] {
            match Document::parse(plain.as_bytes(), header) {
                Ok(Document::Manifest(_, mt)) => assert_eq!(mt, OCI_MANIFEST),
                other => panic!("{header:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_schema1_with_advice() {
        let body = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let err = Document::parse(body, None).unwrap_err();
        assert!(matches!(err, DocumentError::Schema1));
        assert!(err.to_string().contains("push the image again"));
    }

    #[test]
    fn rejects_garbage_and_bad_digests() {
        assert!(matches!(
            Document::parse(b"<html>", Some("text/html")),
            Err(DocumentError::Invalid { .. })
        ));
        let bad = br#"{"schemaVersion":2,"config":{"digest":"sha256:zz","size":1},"layers":[]}"#;
        assert!(matches!(
            Document::parse(bad, None),
            Err(DocumentError::Invalid { .. })
        ));
        assert!(matches!(
            Document::parse(br#"{"schemaVersion":2}"#, None),
            Err(DocumentError::Unsupported(_))
        ));
    }
}
