//! Manifests and indexes: resolving a tag with `HEAD` (free of Docker Hub's pull quota), and
//! fetching a document capped in size and verified against the digest asked for, or for a tag
//! against `Docker-Content-Digest`.

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::Method;

use super::request::{Need, Op};
use super::{RegistryClient, RegistryError};
use crate::digest::{Digest, VerifyError};
use crate::oci::{self, Descriptor, Document};
use crate::reference::{Reference, Target};

/// A manifest or index as served, verified against the digest it was asked for (or, for a tag,
/// against `Docker-Content-Digest` when the registry sent one).
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The digest of `bytes`.
    pub digest: Digest,
    /// The exact bytes, which containerd stores as they are.
    pub bytes: Bytes,
    /// The parsed document.
    pub document: Document,
}

impl FetchedManifest {
    /// The media type the document declares.
    pub fn media_type(&self) -> &str {
        match &self.document {
            Document::Index(_, m) | Document::Manifest(_, m) => m,
        }
    }

    /// A descriptor for this document.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type().to_string(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            platform: None,
            urls: Vec::new(),
            annotations: Default::default(),
        }
    }
}

impl RegistryClient {
    /// Fetches the manifest or index `reference` points at, verified.
    pub async fn manifest(&self, reference: &Reference) -> Result<FetchedManifest, RegistryError> {
        let tag_or_digest = match reference.target() {
            Target::Tag(t) => t.clone(),
            Target::Digest(d) => d.to_string(),
        };
        self.manifest_at(reference, &tag_or_digest, reference.target())
            .await
    }

    /// Resolves a tag to the digest of what it points at with a `HEAD` request, which Docker
    /// Hub does not count against its pull quota. `None` when the registry cannot say (no
    /// `Docker-Content-Digest`, or `HEAD` not allowed): the caller then GETs the tag.
    pub async fn resolve(&self, reference: &Reference) -> Result<Option<Digest>, RegistryError> {
        let Target::Tag(tag) = reference.target() else {
            return Ok(match reference.target() {
                Target::Digest(d) => Some(d.clone()),
                Target::Tag(_) => None,
            });
        };
        let action = format!("HEAD manifest {tag}");
        let suffix = format!("manifests/{tag}");
        match self
            .send(
                reference,
                Op::new(Method::HEAD, &action, &suffix, Need::Resolve),
                accept_manifests,
            )
            .await
        {
            Ok(response) => Ok(response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            // HEAD answers carry no error body: let a GET fetch the registry's explanation.
            Err(RegistryError::Status {
                status: 404 | 405 | 400 | 501,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the reference's repository exists (`GET tags/list` answers; a `404` says it
    /// does not). Registries answer a missing tag and a missing repository alike on the
    /// manifest, so this tells which of the two is wrong.
    pub async fn repository_exists(&self, reference: &Reference) -> Result<bool, RegistryError> {
        let op = Op::new(Method::GET, "GET tags/list", "tags/list", Need::Resolve);
        match self.send(reference, op, |_| {}).await {
            Ok(_) => Ok(true),
            Err(RegistryError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Fetches a child manifest by the digest its index names.
    pub async fn manifest_by_digest(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<FetchedManifest, RegistryError> {
        self.manifest_at(
            reference,
            &digest.to_string(),
            &Target::Digest(digest.clone()),
        )
        .await
    }

    async fn manifest_at(
        &self,
        reference: &Reference,
        tag_or_digest: &str,
        target: &Target,
    ) -> Result<FetchedManifest, RegistryError> {
        let action = format!("GET manifest {tag_or_digest}");
        let suffix = format!("manifests/{tag_or_digest}");
        let need = match target {
            Target::Tag(_) => Need::Resolve,
            Target::Digest(_) => Need::Pull,
        };
        let response = self
            .send(
                reference,
                Op::new(Method::GET, &action, &suffix, need),
                accept_manifests,
            )
            .await?;
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let header_digest = header("docker-content-digest");
        let content_type = header(CONTENT_TYPE.as_str());
        let asked = Asked {
            reference,
            tag_or_digest,
        };
        let body = read_capped(response, &asked, &action, self.options.min_progress).await?;
        let digest = asked.verify(target, header_digest.as_deref(), &body)?;
        let document = Document::parse(&body, content_type.as_deref()).map_err(|source| {
            asked.error(|registry, repository, reference| RegistryError::Document {
                registry,
                repository,
                reference,
                source,
            })
        })?;
        Ok(FetchedManifest {
            digest,
            bytes: Bytes::from(body),
            document,
        })
    }
}

/// The manifest media types prepull reads.
fn accept_manifests(h: &mut HeaderMap) {
    h.insert(ACCEPT, HeaderValue::from_static(oci::MANIFEST_ACCEPT));
}

/// The manifest a request asked for, for its errors.
struct Asked<'a> {
    reference: &'a Reference,
    /// The tag or digest as requested.
    tag_or_digest: &'a str,
}

impl Asked<'_> {
    /// An error naming the registry, repository and tag or digest.
    fn error(&self, make: impl FnOnce(String, String, String) -> RegistryError) -> RegistryError {
        make(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            self.tag_or_digest.to_string(),
        )
    }

    /// The digest of `body`: it must be the one asked for, or for a tag the one the registry's
    /// `Docker-Content-Digest` names, when it names one.
    fn verify(
        &self,
        target: &Target,
        header_digest: Option<&str>,
        body: &[u8],
    ) -> Result<Digest, RegistryError> {
        match target {
            Target::Digest(want) => {
                let got = Digest::of(want.algorithm(), body);
                if &got == want {
                    return Ok(got);
                }
                Err(
                    self.error(|registry, repository, reference| RegistryError::Corrupt {
                        registry,
                        repository,
                        what: format!("manifest {reference}"),
                        source: VerifyError::Mismatch {
                            expected: want.clone(),
                            got,
                        },
                    }),
                )
            }
            Target::Tag(_) => {
                let header: Option<Digest> = header_digest.and_then(|h| h.parse().ok());
                let computed = match &header {
                    Some(h) => Digest::of(h.algorithm(), body),
                    None => Digest::sha256(body),
                };
                match header.filter(|h| h != &computed) {
                    None => Ok(computed),
                    Some(h) => Err(self.error(|registry, repository, reference| {
                        RegistryError::DigestHeader {
                            registry,
                            repository,
                            reference,
                            header: h.to_string(),
                            computed,
                        }
                    })),
                }
            }
        }
    }
}

/// The body of a manifest response, refused once it is larger than [`oci::MAX_MANIFEST_BYTES`]
/// (reading stops there) and read under `progress`.
async fn read_capped(
    response: reqwest::Response,
    asked: &Asked<'_>,
    action: &str,
    progress: super::MinProgress,
) -> Result<Vec<u8>, RegistryError> {
    let cap = usize::try_from(oci::MAX_MANIFEST_BYTES).unwrap_or(usize::MAX);
    let registry = asked.reference.registry();
    let body = super::body::read_capped(response, cap, progress, registry, action).await?;
    if body.truncated {
        return Err(
            asked.error(|registry, repository, reference| RegistryError::TooLarge {
                registry,
                repository,
                reference,
                limit: oci::MAX_MANIFEST_BYTES,
            }),
        );
    }
    Ok(body.bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    const CAP: usize = oci::MAX_MANIFEST_BYTES as usize;

    fn reference() -> Reference {
        "reg.example/team/app:1".parse().expect("a reference")
    }

    /// A response whose body is `chunks` of `chunk` bytes (endless for `None`), counting the
    /// bytes the reader pulled from it.
    fn streamed(chunk: usize, chunks: Option<usize>, pulled: Arc<AtomicU64>) -> reqwest::Response {
        let body =
            futures_util::stream::iter(std::iter::repeat_n((), chunks.unwrap_or(usize::MAX))).map(
                move |()| {
                    pulled.fetch_add(chunk as u64, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Bytes::from(vec![b' '; chunk]))
                },
            );
        reqwest::Response::from(hyper::Response::new(reqwest::Body::wrap_stream(body)))
    }

    async fn read(response: reqwest::Response) -> Result<Vec<u8>, RegistryError> {
        let reference = reference();
        let asked = Asked {
            reference: &reference,
            tag_or_digest: "1",
        };
        read_capped(response, &asked, "GET manifest 1", Default::default()).await
    }

    use futures_util::StreamExt as _;

    #[tokio::test]
    async fn a_manifest_over_4_mib_is_refused_and_an_endless_one_read_no_further() {
        // Exactly the cap, in chunks: taken.
        let pulled = Arc::new(AtomicU64::new(0));
        let body = read(streamed(64 << 10, Some(CAP / (64 << 10)), pulled)).await;
        assert_eq!(body.map(|b| b.len()).ok(), Some(CAP));
        // One byte more: refused.
        let pulled = Arc::new(AtomicU64::new(0));
        let e = read(streamed(CAP + 1, Some(1), pulled)).await.unwrap_err();
        assert!(
            matches!(e, RegistryError::TooLarge { limit, .. } if limit == 4 << 20),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "registry reg.example: manifest 1 in repository team/app is larger than 4194304 bytes"
        );
        // Announced as larger (a known length): refused.
        let announced = reqwest::Response::from(hyper::Response::new(reqwest::Body::from(vec![
                b' ';
                CAP + 1
            ])));
        assert!(matches!(
            read(announced).await,
            Err(RegistryError::TooLarge { .. })
        ));
        // Endless: refused once past the cap, having pulled at most one chunk more.
        let pulled = Arc::new(AtomicU64::new(0));
        let e = read(streamed(64 << 10, None, pulled.clone()))
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::TooLarge { .. }), "{e}");
        let n = pulled.load(Ordering::SeqCst);
        assert!(n <= (CAP + (64 << 10)) as u64, "pulled {n} bytes");
    }

    fn verify(target: &Target, header: Option<&str>, body: &[u8]) -> Result<Digest, RegistryError> {
        let reference = reference();
        Asked {
            reference: &reference,
            tag_or_digest: "x",
        }
        .verify(target, header, body)
    }

    #[test]
    fn a_manifest_fetched_by_digest_must_hash_to_that_digest() {
        let body = br#"{"schemaVersion":2}"#;
        let want = Digest::sha256(body);
        assert_eq!(
            verify(&Target::Digest(want.clone()), None, body).ok(),
            Some(want.clone())
        );
        // Another body, whatever Docker-Content-Digest claims.
        let other = br#"{"schemaVersion":2} "#;
        let header = Digest::sha256(other).to_string();
        let e = verify(&Target::Digest(want.clone()), Some(&header), other).unwrap_err();
        match e {
            RegistryError::Corrupt {
                source: VerifyError::Mismatch { expected, got },
                ..
            } => {
                assert_eq!(expected, want);
                assert_eq!(got, Digest::sha256(other));
            }
            other => panic!("not a mismatch: {other}"),
        }
        // The digest's own algorithm is used.
        let sha512 = Digest::of(crate::digest::Algorithm::Sha512, body);
        assert_eq!(
            verify(&Target::Digest(sha512.clone()), None, body).ok(),
            Some(sha512)
        );
    }

    #[test]
    fn a_tags_docker_content_digest_must_match_the_body() {
        let tag = Target::Tag("1".into());
        let body = br#"{"schemaVersion":2}"#;
        let digest = Digest::sha256(body);
        assert_eq!(verify(&tag, None, body).ok(), Some(digest.clone()));
        assert_eq!(
            verify(&tag, Some(&digest.to_string()), body).ok(),
            Some(digest.clone())
        );
        let claimed = Digest::sha256(b"another manifest").to_string();
        let e = verify(&tag, Some(&claimed), body).unwrap_err();
        assert!(
            matches!(&e, RegistryError::DigestHeader { header, computed, .. }
                if *header == claimed && *computed == digest),
            "{e}"
        );
        assert_eq!(e.kind(), crate::kind::ErrorKind::Corrupt);
        // A sha512 header is checked with sha512.
        let sha512 = Digest::of(crate::digest::Algorithm::Sha512, body);
        assert_eq!(
            verify(&tag, Some(&sha512.to_string()), body).ok(),
            Some(sha512)
        );
    }
}
