//! Content digests (`sha256:…`, `sha512:…`) and verification of bytes as they stream past.
//!
//! Every byte prepull writes into containerd passes through a [`Verifier`]: it enforces the exact
//! size a descriptor promises (never reading past it) and the digest, so a truncated, padded or
//! corrupted body is caught before anything is committed.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm prepull can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the algorithm of practically every registry.
    Sha256,
    /// SHA-512, allowed by the OCI image spec.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears before the `:` of a digest.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest such as `sha256:e3b0…`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseDigestError {
    /// No `algorithm:` prefix.
    #[error("digest {0:?} has no algorithm (expected e.g. sha256:<64 hex digits>)")]
    MissingAlgorithm(String),
    /// An algorithm prepull does not verify.
    #[error("digest {0:?} uses an unsupported algorithm (supported: sha256, sha512)")]
    UnsupportedAlgorithm(String),
    /// Wrong length or not lowercase hex.
    #[error("digest {0:?} is malformed (expected {1} lowercase hex digits)")]
    Malformed(String, usize),
}

impl Digest {
    /// The digest of `bytes` under `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    /// The SHA-256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, bytes)
    }

    /// The algorithm part.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| ParseDigestError::MissingAlgorithm(s.to_string()))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(ParseDigestError::UnsupportedAlgorithm(s.to_string())),
        };
        let want = algorithm.hex_len();
        if hex.len() != want || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseDigestError::Malformed(s.to_string(), want));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for one algorithm.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

/// How a stream of bytes failed to match its descriptor.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// More bytes arrived than the descriptor's size.
    #[error("body is longer than the expected {expected} bytes")]
    TooLong {
        /// The descriptor's size.
        expected: u64,
    },
    /// The body ended early.
    #[error("body ended after {got} of {expected} bytes")]
    TooShort {
        /// The descriptor's size.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// The bytes hash to another digest.
    #[error("digest mismatch: expected {expected}, got {got}")]
    Mismatch {
        /// The descriptor's digest.
        expected: Digest,
        /// The digest of the bytes received.
        got: Digest,
    },
    /// The store that hashed the bytes refused them as `expected`, without saying what they
    /// hash to.
    #[error("the bytes are not {expected}: {reason}")]
    Refused {
        /// The descriptor's digest.
        expected: Digest,
        /// What the store said.
        reason: String,
    },
}

impl VerifyError {
    /// The mismatch containerd reports when it refuses to commit bytes as `expected` (its
    /// message: `unexpected commit digest <got>, expected <expected>`).
    pub fn refused_by_store(expected: &Digest, message: &str) -> VerifyError {
        let got = message
            .split_once("unexpected commit digest ")
            .and_then(|(_, rest)| rest.split([',', ' ']).next())
            .and_then(|d| d.parse::<Digest>().ok());
        match got {
            Some(got) => VerifyError::Mismatch {
                expected: expected.clone(),
                got,
            },
            None => VerifyError::Refused {
                expected: expected.clone(),
                reason: crate::printable::printable(message),
            },
        }
    }
}

/// Checks a byte stream against a descriptor's digest and exact size as it passes.
pub struct Verifier {
    expected: Digest,
    size: u64,
    seen: u64,
    /// `None` for a resumed stream: the prefix is not at hand, so only the size is checked here
    /// and the digest over the whole blob is checked where the prefix is (containerd's commit).
    hasher: Option<Hasher>,
}

impl Verifier {
    /// Verifies a stream that starts at byte 0 of the blob.
    pub fn new(expected: &Digest, size: u64) -> Verifier {
        Verifier {
            hasher: Some(Hasher::new(expected.algorithm())),
            expected: expected.clone(),
            size,
            seen: 0,
        }
    }

    /// Verifies the exact size only, for a stream whose digest is checked by whoever stores it
    /// (containerd's `Commit` with the expected digest refuses other bytes): hashing here too
    /// would cost every byte a second SHA-256 for no added guarantee.
    pub fn size_only(expected: &Digest, size: u64) -> Verifier {
        Verifier::resumed(expected, size, 0)
    }

    /// Verifies the tail of a blob from byte `offset` on: exact size only (see `hasher`).
    pub fn resumed(expected: &Digest, size: u64, offset: u64) -> Verifier {
        Verifier {
            hasher: None,
            expected: expected.clone(),
            size,
            seen: offset,
        }
    }

    /// Whether this verifier checks the digest itself (it saw the blob from byte 0).
    pub fn checks_digest(&self) -> bool {
        self.hasher.is_some()
    }

    /// Bytes accepted so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Accepts the next chunk; fails as soon as the stream runs past the expected size.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), VerifyError> {
        let after = self.seen + chunk.len() as u64;
        if after > self.size {
            return Err(VerifyError::TooLong {
                expected: self.size,
            });
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(chunk);
        }
        self.seen = after;
        Ok(())
    }

    /// Checks the size and digest once the stream has ended.
    pub fn finish(self) -> Result<(), VerifyError> {
        if self.seen != self.size {
            return Err(VerifyError::TooShort {
                expected: self.size,
                got: self.seen,
            });
        }
        let Some(hasher) = self.hasher else {
            return Ok(());
        };
        let got = hasher.finish();
        if got != self.expected {
            return Err(VerifyError::Mismatch {
                expected: self.expected,
                got,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::sha256(b""));
        assert_eq!(d.algorithm(), Algorithm::Sha256);
    }

    #[test]
    fn rejects_bad_digests() {
        assert!(matches!(
            "e3b0".parse::<Digest>(),
            Err(ParseDigestError::MissingAlgorithm(_))
        ));
        assert!(matches!(
            "md5:abc".parse::<Digest>(),
            Err(ParseDigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:ABC".parse::<Digest>(),
            Err(ParseDigestError::Malformed(_, 64))
        ));
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert!(upper.parse::<Digest>().is_err());
    }

    #[test]
    fn resumed_verifier_checks_the_tail_size() {
        let d = Digest::sha256(b"0123456789");
        let mut v = Verifier::resumed(&d, 10, 4);
        assert!(!v.checks_digest());
        v.update(b"456789").unwrap();
        v.finish().unwrap();
        let mut long = Verifier::resumed(&d, 10, 4);
        assert!(long.update(b"4567890").is_err());
        let mut short = Verifier::resumed(&d, 10, 4);
        short.update(b"45").unwrap();
        assert_eq!(
            short.finish(),
            Err(VerifyError::TooShort {
                expected: 10,
                got: 6
            })
        );
    }

    #[test]
    fn size_only_checks_the_size_and_not_the_digest() {
        let d = Digest::sha256(b"0123456789");
        let mut v = Verifier::size_only(&d, 10);
        assert!(!v.checks_digest());
        v.update(b"abcdefghij").unwrap();
        v.finish().unwrap();
        let mut long = Verifier::size_only(&d, 10);
        assert!(long.update(b"abcdefghijk").is_err());
    }

    #[test]
    fn containerds_commit_refusal_names_what_the_bytes_are() {
        let expected = Digest::sha256(b"a");
        let got = Digest::sha256(b"b");
        let message =
            format!("unexpected commit digest {got}, expected {expected}: failed precondition");
        assert_eq!(
            VerifyError::refused_by_store(&expected, &message),
            VerifyError::Mismatch {
                expected: expected.clone(),
                got
            }
        );
        let other =
            VerifyError::refused_by_store(&expected, "unexpected commit size 3, expected 4\x1b[2J");
        assert!(matches!(other, VerifyError::Refused { .. }), "{other:?}");
        assert!(!other.to_string().contains('\x1b'), "{other}");
    }

    #[test]
    fn sha512_round_trips() {
        let d = Digest::of(Algorithm::Sha512, b"abc");
        assert_eq!(d.hex().len(), 128);
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn verifier_accepts_exact_body_in_chunks() {
        let body = b"hello, world";
        let mut v = Verifier::new(&Digest::sha256(body), body.len() as u64);
        for chunk in body.chunks(5) {
            v.update(chunk).unwrap();
        }
        v.finish().unwrap();
    }

    #[test]
    fn verifier_catches_long_short_and_corrupt() {
        let body = b"hello, world";
        let d = Digest::sha256(body);
        let mut long = Verifier::new(&d, 5);
        assert_eq!(long.update(body), Err(VerifyError::TooLong { expected: 5 }));

        let mut short = Verifier::new(&d, body.len() as u64);
        short.update(&body[..4]).unwrap();
        assert_eq!(
            short.finish(),
            Err(VerifyError::TooShort {
                expected: 12,
                got: 4
            })
        );

        let mut corrupt = Verifier::new(&d, body.len() as u64);
        corrupt.update(b"hello, World").unwrap();
        assert!(matches!(
            corrupt.finish(),
            Err(VerifyError::Mismatch { .. })
        ));
    }
}
