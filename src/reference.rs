//! Image references, normalized exactly as the kubelet and containerd normalize them.
//!
//! `nginx` becomes `docker.io/library/nginx:latest`, `index.docker.io/x/y` becomes
//! `docker.io/x/y:latest`, and a reference with both a tag and a digest keeps only the digest (as
//! containerd's `ParseDockerRef` does), because the digest is what gets pulled.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, ParseDigestError};

/// The registry that references without a domain point at.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const MAX_NAME_LEN: usize = 255;

/// A fully normalized image reference: registry, repository, and a tag or a digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    target: Target,
}

/// What a reference points at within its repository.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A mutable tag, resolved to a digest at pull time.
    Tag(String),
    /// An immutable manifest digest.
    Digest(Digest),
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseReferenceError {
    /// Empty input.
    #[error("image reference is empty")]
    Empty,
    /// Upper-case letters in the repository path.
    #[error("image reference {0:?}: repository names must be lowercase")]
    Uppercase(String),
    /// The registry host part is malformed.
    #[error("image reference {reference:?}: invalid registry host {host:?}")]
    InvalidHost {
        /// The input.
        reference: String,
        /// The offending host part.
        host: String,
    },
    /// A path component breaks the distribution grammar.
    #[error(
        "image reference {reference:?}: invalid repository path component {component:?} \
         (lowercase letters, digits and single '.', '_', '__' or '-' separators)"
    )]
    InvalidComponent {
        /// The input.
        reference: String,
        /// The offending component.
        component: String,
    },
    /// The tag breaks `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("image reference {reference:?}: invalid tag {tag:?} (1-128 of A-Z a-z 0-9 _ . -, not starting with . or -)")]
    InvalidTag {
        /// The input.
        reference: String,
        /// The offending tag.
        tag: String,
    },
    /// The digest after `@` is invalid.
    #[error("image reference {reference:?}: {source}")]
    InvalidDigest {
        /// The input.
        reference: String,
        /// Why the digest is invalid.
        #[source]
        source: ParseDigestError,
    },
    /// Longer than the 255 characters the distribution spec allows for a name.
    #[error("image reference {0:?}: repository name is longer than 255 characters")]
    TooLong(String),
}

impl Reference {
    /// Parses and normalizes a reference as written in a pod spec.
    pub fn parse(input: &str) -> Result<Reference, ParseReferenceError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ParseReferenceError::Empty);
        }
        let err_ref = || s.to_string();

        // Digest first: everything after '@'.
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest =
                    d.parse::<Digest>()
                        .map_err(|source| ParseReferenceError::InvalidDigest {
                            reference: err_ref(),
                            source,
                        })?;
                (rest, Some(digest))
            }
            None => (s, None),
        };

        // A tag is after the last ':' that follows the last '/', so a registry port is not a tag.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ParseReferenceError::InvalidTag {
                    reference: err_ref(),
                    tag: tag.to_string(),
                });
            }
        }

        // Domain detection as in distribution/reference: the first component is a host when it
        // has a '.' or ':', is "localhost", or has upper-case letters.
        let (registry, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !valid_host(&registry) {
            return Err(ParseReferenceError::InvalidHost {
                reference: err_ref(),
                host: registry,
            });
        }
        let registry = if registry == DOCKER_HUB_LEGACY {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ParseReferenceError::Uppercase(err_ref()));
        }
        for component in path.split('/') {
            if !valid_component(component) {
                return Err(ParseReferenceError::InvalidComponent {
                    reference: err_ref(),
                    component: component.to_string(),
                });
            }
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(ParseReferenceError::TooLong(err_ref()));
        }

        let target = match (digest, tag) {
            (Some(d), _) => Target::Digest(d),
            (None, Some(t)) => Target::Tag(t.to_string()),
            (None, None) => Target::Tag("latest".to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            target,
        })
    }

    /// The registry host as written (`docker.io`, `host:5000`), before any mirror mapping.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry (`library/nginx`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag or digest.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// `registry/repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository at `digest`.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            target: Target::Digest(digest),
        }
    }
}

impl FromStr for Reference {
    type Err = ParseReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tag(t) => write!(f, "{}/{}:{}", self.registry, self.repository, t),
            Target::Digest(d) => write!(f, "{}/{}@{}", self.registry, self.repository, d),
        }
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A DNS name or IPv4 (dot-separated labels) or a bracketed IPv6, with an optional `:port`.
fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if host.starts_with('[') {
        return true;
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalizes_like_the_kubelet() {
        let cases = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("library/nginx", "docker.io/library/nginx:latest"),
            ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            ("index.docker.io/nginx", "docker.io/library/nginx:latest"),
            ("index.docker.io/a/b:c", "docker.io/a/b:c"),
            ("localhost/foo", "localhost/foo:latest"),
            ("localhost:5000/foo/bar:v1", "localhost:5000/foo/bar:v1"),
            ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000/a/b/c:latest"),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
            ("[::1]:5000/x", "[::1]:5000/x:latest"),
            ("my_org/my-app__x", "docker.io/my_org/my-app__x:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), want, "input {input}");
        }
    }

    #[test]
    fn digest_wins_over_tag_like_containerd() {
        let r = Reference::parse(&format!("host:5000/a/b:v1@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("host:5000/a/b@{D}"));
        assert!(matches!(r.target(), Target::Digest(_)));
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.registry(), "docker.io");
    }

    #[test]
    fn a_port_is_not_a_tag() {
        let r = Reference::parse("host:5000/app").unwrap();
        assert_eq!(r.registry(), "host:5000");
        assert_eq!(r.target(), &Target::Tag("latest".into()));
    }

    #[test]
    fn rejects_invalid_references_with_the_reason() {
        assert_eq!(Reference::parse("  "), Err(ParseReferenceError::Empty));
        assert!(matches!(
            Reference::parse("Nginx"),
            Err(ParseReferenceError::Uppercase(_))
        ));
        assert!(matches!(
            Reference::parse("reg.io/Foo/bar"),
            Err(ParseReferenceError::Uppercase(_))
        ));
        assert!(matches!(
            Reference::parse("nginx:-bad"),
            Err(ParseReferenceError::InvalidTag { .. })
        ));
        assert!(matches!(
            Reference::parse("nginx@sha256:abc"),
            Err(ParseReferenceError::InvalidDigest { .. })
        ));
        assert!(matches!(
            Reference::parse("a//b"),
            Err(ParseReferenceError::InvalidComponent { .. })
        ));
        assert!(matches!(
            Reference::parse("a/b-"),
            Err(ParseReferenceError::InvalidComponent { .. })
        ));
        assert!(matches!(
            Reference::parse("a/b..c"),
            Err(ParseReferenceError::InvalidComponent { .. })
        ));
        assert!(matches!(
            Reference::parse("host:port/x"),
            Err(ParseReferenceError::InvalidHost { .. })
        ));
        let long = format!("reg.io/{}", "a".repeat(260));
        assert!(matches!(
            Reference::parse(&long),
            Err(ParseReferenceError::TooLong(_))
        ));
        let msg = Reference::parse("nginx:-bad").unwrap_err().to_string();
        assert!(msg.contains("nginx:-bad") && msg.contains("-bad"), "{msg}");
    }

    #[test]
    fn uppercase_first_component_is_a_host() {
        // distribution/reference treats "Foo/bar" as host "Foo"; hosts may be upper-case.
        let r = Reference::parse("Registry.Example.com/app").unwrap();
        assert_eq!(r.registry(), "Registry.Example.com");
    }
}
