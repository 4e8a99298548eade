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
pub enum ParsePlatformError {
    /// Not `os/arch[/variant]`.
    #[error(
        "invalid platform {0:?} (expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8)"
    )]
    Syntax(String),
    /// An operating system no image is built for.
    #[error("invalid platform {platform:?}: unknown operating system {os:?} (one of: {})", KNOWN_OS.join(", "))]
    UnknownOs {
        /// The platform as given.
        platform: String,
        /// The OS part.
        os: String,
    },
    /// An architecture no image is built for.
    #[error("invalid platform {platform:?}: unknown architecture {architecture:?} (one of: {}; or x86_64, aarch64, i386, armhf, armel)", KNOWN_ARCH.join(", "))]
    UnknownArch {
        /// The platform as given.
        platform: String,
        /// The architecture part.
        architecture: String,
    },
}

/// The operating systems Go (hence containerd and every image builder) knows, `GOOS` values
/// (`go/build/syslist.go`), plus containerd's alias `macos`.
const KNOWN_OS: [&str; 17] = [
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

/// The architectures Go knows, `GOARCH` values (`go/build/syslist.go`). containerd's aliases
/// (`x86_64`, `aarch64`, `i386`, `armhf`, `armel`) are normalized to these first.
const KNOWN_ARCH: [&str; 24] = [
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

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
        let platform = match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Platform::new(os, arch, None),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => {
                Platform::new(os, arch, Some(variant))
            }
            _ => return Err(ParsePlatformError::Syntax(s.to_string())),
        };
        // A typo (`linux/amd65`) would otherwise only show up as "no manifest" for every image.
        if !KNOWN_OS.contains(&platform.os.as_str()) {
            return Err(ParsePlatformError::UnknownOs {
                platform: s.to_string(),
                os: parts[0].to_string(),
            });
        }
        if !KNOWN_ARCH.contains(&platform.architecture.as_str()) {
            return Err(ParsePlatformError::UnknownArch {
                platform: s.to_string(),
                architecture: parts[1].to_string(),
            });
        }
        Ok(platform)
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
        assert_eq!(p("macos/arm64").to_string(), "darwin/arm64");
        assert_eq!(p("windows/i386").to_string(), "windows/386");
    }

    #[test]
    fn unknown_os_or_architecture_is_refused_naming_the_valid_ones() {
        let e = "linux/amd65".parse::<Platform>().unwrap_err();
        assert!(
            matches!(e, ParsePlatformError::UnknownArch { ref architecture, .. } if architecture == "amd65")
        );
        let message = e.to_string();
        assert!(
            message.contains("\"amd65\"")
                && message.contains("386, amd64, amd64p32, arm, armbe, arm64")
                && message.contains("riscv64"),
            "{message}"
        );
        let e = "lnux/amd64".parse::<Platform>().unwrap_err();
        assert!(matches!(e, ParsePlatformError::UnknownOs { ref os, .. } if os == "lnux"));
        assert!(e.to_string().contains("linux"), "{e}");
        // The host's own platform always parses.
        assert_eq!(p(&Platform::host().to_string()), Platform::host());
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
