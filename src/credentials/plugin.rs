//! kubelet credential-provider plugins (exec API `credentialprovider.kubelet.k8s.io/v1`), read
//! from the kubelet's own `CredentialProviderConfig`, so ECR, GCR/Artifact Registry and ACR work
//! without any cloud SDK in prepull.
//!
//! For an image that a provider's `matchImages` admits, `<bin-dir>/<name> args…` runs with the
//! provider's `env` added, a `CredentialProviderRequest` on stdin and a one-minute timeout; its
//! `CredentialProviderResponse` is cached per `cacheKeyType` (image, registry or global) for
//! `cacheDuration` (else the provider's `defaultCacheDuration`; `0s` means no cache).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::keyring::urls_match;
use super::{Credential, Keyring, Secret};

const CONFIG_API: &str = "kubelet.config.k8s.io/v1";
const PLUGIN_API: &str = "credentialprovider.kubelet.k8s.io/v1";
/// How long a plugin may run, as the kubelet allows.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The kubelet's credential-provider configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PluginConfigError {
    /// Unreadable.
    #[error("cannot read credential provider config {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Wrong content.
    #[error("credential provider config {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What to fix.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    api_version: String,
    kind: String,
    #[serde(default)]
    providers: Vec<RawProvider>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProvider {
    name: String,
    #[serde(default)]
    match_images: Vec<String>,
    #[serde(default)]
    default_cache_duration: Option<String>,
    api_version: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    token_attributes: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
struct EnvVar {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    api_version: String,
    kind: String,
    cache_key_type: String,
    #[serde(default)]
    cache_duration: Option<String>,
    #[serde(default)]
    auth: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// One configured plugin.
#[derive(Debug)]
struct Provider {
    name: String,
    binary: PathBuf,
    match_images: Vec<String>,
    default_cache: Duration,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

struct Cached {
    keyring: Keyring,
    until: Instant,
}

/// Every configured plugin, with the kubelet's caching.
pub struct Plugins {
    providers: Vec<Provider>,
    /// Per provider: cache key -> credentials. Held while a plugin runs, so concurrent pulls of
    /// one image run it once.
    cache: Mutex<HashMap<(usize, String), Cached>>,
    /// Per provider: why its last run for an image failed, for error messages.
    failures: Mutex<HashMap<(usize, String), String>>,
    timeout: Duration,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plugins")
    }
}

impl Plugins {
    /// Reads the kubelet's `--image-credential-provider-config` and finds each plugin in
    /// `bin_dir`. Providers that need a service-account token (which only the kubelet can mint)
    /// are skipped with a warning.
    pub fn load(config: &Path, bin_dir: &Path) -> Result<Plugins, PluginConfigError> {
        let text = std::fs::read_to_string(config).map_err(|source| PluginConfigError::Io {
            path: config.to_path_buf(),
            source,
        })?;
        let invalid = |message: String| PluginConfigError::Invalid {
            path: config.to_path_buf(),
            message,
        };
        let raw: RawConfig = serde_yaml_ng::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if raw.kind != "CredentialProviderConfig" || raw.api_version != CONFIG_API {
            return Err(invalid(format!(
                "expected apiVersion {CONFIG_API} and kind CredentialProviderConfig, found {} {}",
                raw.api_version, raw.kind
            )));
        }
        let mut providers = Vec::new();
        for (i, p) in raw.providers.into_iter().enumerate() {
            let at = |m: &str| invalid(format!("providers[{i}] ({}): {m}", p.name));
            if p.token_attributes.is_some() {
                tracing::warn!(provider = %p.name, "skipping a credential provider that needs a service-account token");
                continue;
            }
            if p.api_version != PLUGIN_API {
                return Err(at(&format!("apiVersion must be {PLUGIN_API}")));
            }
            if p.name.is_empty() || p.name.contains('/') || p.name == "." || p.name == ".." {
                return Err(at("name must be a plain file name in the bin dir"));
            }
            if p.match_images.is_empty() {
                return Err(at("matchImages is empty"));
            }
            let default_cache = match p.default_cache_duration.as_deref() {
                None => Duration::ZERO,
                Some(d) => go_duration(d).ok_or_else(|| {
                    at(&format!(
                        "defaultCacheDuration {d:?} is not a duration like 12h or 90m"
                    ))
                })?,
            };
            let binary = bin_dir.join(&p.name);
            if !binary.is_file() {
                return Err(at(&format!(
                    "plugin binary {} does not exist",
                    binary.display()
                )));
            }
            providers.push(Provider {
                name: p.name.clone(),
                binary,
                match_images: p.match_images,
                default_cache,
                args: p.args,
                env: p.env.into_iter().map(|e| (e.name, e.value)).collect(),
            });
        }
        Ok(Plugins {
            providers,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets how long a plugin may run before it is killed (the kubelet allows a minute).
    pub fn with_timeout(mut self, timeout: Duration) -> Plugins {
        self.timeout = timeout;
        self
    }

    /// Why plugins that match `image` gave nothing for it, one line per failed plugin.
    pub fn near_misses(&self, image: &str) -> Vec<String> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        self.providers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                failures
                    .get(&(i, image.to_string()))
                    .map(|why| format!("credential provider {} failed: {why}", p.name))
            })
            .collect()
    }

    /// Credentials every matching plugin gives for `image` (`registry/repository`). A plugin
    /// that fails is logged and skipped: the other sources may still work.
    pub fn lookup(&self, image: &str) -> Vec<Arc<Credential>> {
        let mut out = Vec::new();
        for (i, provider) in self.providers.iter().enumerate() {
            if !provider
                .match_images
                .iter()
                .any(|m| urls_match(&super::keyring::normalize_key(m).unwrap_or_default(), image))
            {
                continue;
            }
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let registry = image.split('/').next().unwrap_or("").to_string();
            let hit = [image.to_string(), registry.clone(), String::new()]
                .into_iter()
                .find_map(|k| {
                    cache
                        .get(&(i, k))
                        .filter(|c| c.until > Instant::now())
                        .map(|c| c.keyring.lookup(image))
                });
            if let Some(found) = hit {
                out.extend(found);
                continue;
            }
            let result = provider.run(image, self.timeout);
            {
                let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                match &result {
                    Ok(_) => failures.remove(&(i, image.to_string())),
                    Err(e) => failures.insert((i, image.to_string()), e.clone()),
                };
            }
            match result {
                Ok(response) => {
                    let key = match response.cache_key_type.as_str() {
                        "Image" => image.to_string(),
                        "Registry" => registry,
                        _ => String::new(),
                    };
                    let ttl = match response.cache_duration.as_deref() {
                        Some(d) => go_duration(d).unwrap_or(provider.default_cache),
                        None => provider.default_cache,
                    };
                    let mut keyring = Keyring::new();
                    keyring.push_layer(response.auth.into_iter().map(|(k, a)| {
                        (
                            k.clone(),
                            Credential {
                                source: format!(
                                    "credential provider {}: auth[{k:?}]",
                                    provider.name
                                ),
                                secret: Secret::Basic {
                                    username: a.username,
                                    password: a.password,
                                },
                            },
                        )
                    }));
                    out.extend(keyring.lookup(image));
                    if !ttl.is_zero() {
                        cache.insert(
                            (i, key),
                            Cached {
                                keyring,
                                until: Instant::now() + ttl,
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(provider = %provider.name, image, error = %e, "credential provider failed")
                }
            }
        }
        out
    }
}

impl Provider {
    fn run(&self, image: &str, timeout: Duration) -> Result<Response, String> {
        let request = serde_json::json!({
            "apiVersion": PLUGIN_API,
            "kind": "CredentialProviderRequest",
            "image": image,
        });
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(request.to_string().as_bytes());
        }
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if started.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "timed out after {} and was killed",
                        humantime::format_duration(timeout)
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(e.to_string()),
            }
        }
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        if !output.status.success() {
            // The plugin's stderr is its own diagnostics, not credentials.
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!("exited with {}: {}", output.status, stderr.trim()));
        }
        // Only where and what kind of error: serde quotes rejected values, which may be secrets.
        let response: Response = serde_json::from_slice(&output.stdout).map_err(|e| {
            format!(
                "invalid CredentialProviderResponse ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        if response.api_version != PLUGIN_API || response.kind != "CredentialProviderResponse" {
            return Err(format!(
                "response has apiVersion {:?} kind {:?}; expected {PLUGIN_API} CredentialProviderResponse",
                response.api_version, response.kind
            ));
        }
        if !matches!(
            response.cache_key_type.as_str(),
            "Image" | "Registry" | "Global"
        ) {
            return Err(format!(
                "invalid cacheKeyType {:?}",
                response.cache_key_type
            ));
        }
        Ok(response)
    }
}

/// A Go duration string (`6h0m0s`, `90m`, `1.5h`, `0s`), as Kubernetes and containerd configs
/// write them.
pub(crate) fn go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * secs;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("6h0m0s"), Some(Duration::from_secs(6 * 3600)));
        assert_eq!(go_duration("90m"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("0s"), Some(Duration::ZERO));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("12"), None);
        assert_eq!(go_duration("1d"), None);
        assert_eq!(go_duration(""), None);
    }
}
