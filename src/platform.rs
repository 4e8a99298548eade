//! Platforms (`os/arch[/variant]`) and choosing a manifest from an index the way containerd does.
//!
//! Normalization and the preference order follow containerd's `platforms` package: `x86_64` is
//! `amd64`, `aarch64` is `arm64`, `arm64/v8` is plain `arm64`; `amd64` also accepts `386`;
//! `arm64` also accepts `arm/v8`..`arm/v5`; attestation entries (`unknown/unknown`) never match;
//! an entry without a platform is accepted as a last resort.

use std::fmt;
use std::str::FromStr;

/// An OS/architecture/variant triple, normalized.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// Why a string is not a platform.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid platform {0:?} (expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8)")]
pub struct ParsePlatformError(String);

impl Platform {
    /// A platform from its parts, normalized.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = os.to_ascii_lowercase();
        let os = if os == "macos" { "darwin".into() } else { os };
        let (architecture, variant) = normalize_arch(
            &architecture.to_ascii_lowercase(),
            variant.map(str::to_ascii_lowercase).as_deref(),
        );
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// The platform this binary runs on (always `linux/<arch>` for a node agent).
    pub fn host() -> Platform {
        Platform::new("linux", std::env::consts::ARCH, None)
    }

    /// The OS, e.g. `linux`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The architecture, e.g. `amd64`.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The variant, e.g. `v7`, if any.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// The platforms this one runs, best first (containerd's `platforms.Only`).
    fn preference(&self) -> Vec<Platform> {
        let mut v = vec![self.clone()];
        let with = |arch: &str, variant: Option<String>| Platform {
            os: self.os.clone(),
            architecture: arch.to_string(),
            variant,
        };
        match self.architecture.as_str() {
            "amd64" => {
                let level = self
                    .variant
                    .as_deref()
                    .and_then(|s| s.strip_prefix('v'))
                    .and_then(|s| s.parse::<u32>().ok())
                    .unwrap_or(1);
                for l in (1..level).rev() {
                    v.push(with("amd64", (l > 1).then(|| format!("v{l}"))));
                }
                v.push(with("386", None));
            }
            "arm" | "arm64" => {
                let top = self
                    .variant
                    .as_deref()
                    .and_then(|s| s.strip_prefix('v'))
                    .and_then(|s| s.parse::<u32>().ok())
                    .unwrap_or(if self.architecture == "arm64" { 8 } else { 7 });
                let from = if self.architecture == "arm64" {
                    top
                } else {
                    top - 1
                };
                for l in (5..=from).rev() {
                    v.push(with("arm", Some(format!("v{l}"))));
                }
            }
            _ => {}
        }
        v
    }
}

fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let variant = variant.filter(|v| !v.is_empty());
    let (arch, variant) = match arch {
        "i386" => ("386", None),
        "x86_64" | "x86-64" | "amd64" => ("amd64", variant.filter(|v| *v != "v1")),
        "aarch64" | "arm64" => (
            "arm64",
            variant.filter(|v| !matches!(*v, "8" | "v8" | "v8.0")),
        ),
        "armhf" => ("arm", Some("v7")),
        "armel" => ("arm", Some("v6")),
        "arm" => (
            "arm",
            Some(match variant {
                None | Some("7") | Some("v7") => "v7",
                Some("5") => "v5",
                Some("6") => "v6",
                Some("8") => "v8",
                Some(v) => v,
            }),
        ),
        other => (other, variant),
    };
    (arch.to_string(), variant.map(str::to_string))
}

impl FromStr for Platform {
    type Err = ParsePlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => {
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => Err(ParsePlatformError(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Picks the best entry for `want` among `candidates` (each `None` when the entry has no
/// platform). Returns the index of the chosen entry, or `None` when nothing runs on `want`.
/// Among equally good entries the first one wins, as in containerd.
pub fn choose(want: &Platform, candidates: &[Option<Platform>]) -> Option<usize> {
    let preference = want.preference();
    let rank = |c: &Option<Platform>| match c {
        None => Some(preference.len()),
        Some(p) => preference.iter().position(|w| w == p),
    };
    candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| rank(c).map(|r| (r, i)))
        .min()
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn normalizes_like_containerd() {
        assert_eq!(p("linux/x86_64"), p("linux/amd64"));
        assert_eq!(p("linux/aarch64"), p("linux/arm64"));
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        assert_eq!(p("linux/arm"), p("linux/arm/v7"));
        assert_eq!(p("linux/armhf"), p("linux/arm/v7"));
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64");
        assert_eq!(p("Linux/AMD64").to_string(), "linux/amd64");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v2/x".parse::<Platform>().is_err());
        assert!("linux//v2".parse::<Platform>().is_err());
    }

    #[test]
    fn chooses_exact_match_over_compatible_one() {
        let c = vec![Some(p("linux/386")), Some(p("linux/amd64"))];
        assert_eq!(choose(&p("linux/amd64"), &c), Some(1));
        let only_386 = vec![Some(p("linux/arm64")), Some(p("linux/386"))];
        assert_eq!(choose(&p("linux/amd64"), &only_386), Some(1));
    }

    #[test]
    fn arm64_accepts_v8_spelling_and_arm_fallbacks() {
        let c = vec![Some(p("linux/amd64")), Some(p("linux/arm64/v8"))];
        assert_eq!(choose(&p("linux/arm64"), &c), Some(1));
        let arm = vec![Some(p("linux/arm/v6")), Some(p("linux/arm/v7"))];
        assert_eq!(choose(&p("linux/arm64"), &arm), Some(1));
        assert_eq!(choose(&p("linux/arm/v6"), &arm), Some(0));
        assert_eq!(choose(&p("linux/arm/v5"), &arm), None);
    }

    #[test]
    fn attestations_never_match_and_platformless_is_last_resort() {
        let c = vec![Some(Platform::new("unknown", "unknown", None)), None];
        assert_eq!(choose(&p("linux/amd64"), &c), Some(1));
        let c = vec![None, Some(p("linux/amd64"))];
        assert_eq!(choose(&p("linux/amd64"), &c), Some(1));
        let c = vec![Some(Platform::new("unknown", "unknown", None))];
        assert_eq!(choose(&p("linux/amd64"), &c), None);
        let c = vec![Some(p("windows/amd64"))];
        assert_eq!(choose(&p("linux/amd64"), &c), None);
    }

    #[test]
    fn amd64_levels_fall_back_downwards() {
        let c = vec![Some(p("linux/amd64")), Some(p("linux/amd64/v2"))];
        assert_eq!(choose(&p("linux/amd64/v3"), &c), Some(1));
        assert_eq!(choose(&p("linux/amd64"), &c), Some(0));
    }
}
