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
            let hit = [image.to_string(), registry, String::new()]
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
            let result = provider.run(image, self.timeout).and_then(|stdout| {
                Answer::read(&stdout, image, &provider.name, provider.default_cache)
            });
            {
                let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                match &result {
                    Ok(_) => failures.remove(&(i, image.to_string())),
                    Err(e) => failures.insert((i, image.to_string()), e.clone()),
                };
            }
            match result {
                Ok(answer) => {
                    out.extend(answer.keyring.lookup(image));
                    if let Some(until) = Instant::now()
                        .checked_add(answer.ttl)
                        .filter(|_| !answer.ttl.is_zero())
                    {
                        cache.insert(
                            (i, answer.cache_key),
                            Cached {
                                keyring: answer.keyring,
                                until,
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

/// The most of a plugin's standard output read: a response is a few kilobytes.
const MAX_STDOUT: usize = 1 << 20;
/// The most of a plugin's standard error kept for messages (the rest is read and dropped).
const MAX_STDERR: usize = 4 << 10;
/// How long a plugin's output may go on after it exited (a child it left holding the pipe).
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(1);

/// What one pipe of a plugin gave: at most the cap's bytes, and whether it wrote more.
type Drained = (Vec<u8>, bool);

impl Provider {
    /// Runs the plugin for `image`, in its own process group: its output is read while it runs
    /// (a plugin printing more than a pipe holds never blocks), capped, and the whole group is
    /// killed when it times out and once it has exited, so no child of it outlives it. Returns
    /// its standard output ([`Answer::read`] reads it).
    fn run(&self, image: &str, timeout: Duration) -> Result<Vec<u8>, String> {
        use std::os::unix::process::CommandExt as _;
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
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let group = Group(i32::try_from(child.id()).unwrap_or(0));
        let stdout = child.stdout.take().map(|out| drain(out, MAX_STDOUT));
        let stderr = child.stderr.take().map(|err| drain(err, MAX_STDERR));
        if let Some(mut stdin) = child.stdin.take() {
            // The request is far smaller than a pipe holds: this write never blocks.
            let _ = stdin.write_all(request.to_string().as_bytes());
        }
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > timeout => {
                    group.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "timed out after {} and was killed with its process group",
                        humantime::format_duration(timeout)
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    group.kill();
                    let _ = child.wait();
                    return Err(e.to_string());
                }
            }
        };
        group.kill();
        let collect = |pipe: Option<std::sync::mpsc::Receiver<Drained>>| {
            pipe.and_then(|p| p.recv_timeout(OUTPUT_AFTER_EXIT).ok())
        };
        let (stdout, stderr) = (collect(stdout), collect(stderr));
        if !status.success() {
            // The plugin's stderr is its own diagnostics, not credentials.
            let stderr = stderr.map(|(bytes, _)| bytes).unwrap_or_default();
            let stderr = crate::printable::printable(String::from_utf8_lossy(&stderr).trim());
            return Err(format!("exited with {status}: {stderr}"));
        }
        match stdout {
            Some((_, true)) => Err(format!(
                "printed more than {MAX_STDOUT} bytes, more than any CredentialProviderResponse"
            )),
            Some((bytes, false)) => Ok(bytes),
            None => Err("its output did not end after it exited".to_string()),
        }
    }
}

/// What a plugin answered, as [`Plugins::lookup`] caches it.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The cache key its `cacheKeyType` asks for: the image, its registry, or `""` (global).
    pub cache_key: String,
    /// How long it is kept: its `cacheDuration`, else the provider's default; zero: not cached.
    pub ttl: Duration,
    /// The credentials it gives, by registry key.
    pub keyring: Keyring,
}

impl Answer {
    /// Reads the standard output of provider `name` run for `image`: a
    /// `CredentialProviderResponse`, checked as the kubelet checks it. A message never quotes
    /// the output, which holds secrets.
    pub(crate) fn read(
        stdout: &[u8],
        image: &str,
        name: &str,
        default_cache: Duration,
    ) -> Result<Answer, String> {
        // Only where and what kind of error: serde quotes rejected values, which may be secrets.
        let response: Response = serde_json::from_slice(stdout).map_err(|e| {
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
        let cache_key = match response.cache_key_type.as_str() {
            "Image" => image.to_string(),
            "Registry" => image.split('/').next().unwrap_or("").to_string(),
            "Global" => String::new(),
            other => return Err(format!("invalid cacheKeyType {other:?}")),
        };
        let ttl = match response.cache_duration.as_deref() {
            None => default_cache,
            Some(d) => go_duration(d).ok_or_else(|| {
                format!(
                    "invalid cacheDuration {d:?}: expected a duration like 6h0m0s, at most {}h",
                    MAX_GO_DURATION_SECS / 3600
                )
            })?,
        };
        let mut keyring = Keyring::new();
        keyring.push_layer(response.auth.into_iter().map(|(k, a)| {
            (
                k.clone(),
                Credential {
                    source: format!("credential provider {name}: auth[{k:?}]"),
                    secret: Secret::Basic {
                        username: a.username,
                        password: a.password,
                    },
                },
            )
        }));
        Ok(Answer {
            cache_key,
            ttl,
            keyring,
        })
    }
}

/// A plugin's process group (the plugin leads it).
struct Group(i32);

impl Group {
    /// Kills every process left in the group; a group already gone is fine.
    fn kill(&self) {
        if self.0 > 0 {
            // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
            unsafe {
                libc::kill(-self.0, libc::SIGKILL);
            }
        }
    }
}

/// Reads `from` to its end on a thread of its own, keeping at most `cap` bytes; the result
/// arrives on the channel when the pipe closes.
fn drain(
    mut from: impl std::io::Read + Send + 'static,
    cap: usize,
) -> std::sync::mpsc::Receiver<Drained> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("plugin-output".into())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut over = false;
            let mut buf = [0u8; 8192];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = cap - kept.len();
                        if n > room {
                            over = true;
                        }
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send((kept, over));
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to read a credential plugin's output");
    }
    rx
}

/// The longest duration Go represents (`time.Duration` is an `int64` of nanoseconds).
const MAX_GO_DURATION_SECS: u64 = 9_223_372_036;

/// A Go duration string (`6h0m0s`, `90m`, `1.5h`, `0s`), as Kubernetes and containerd configs
/// write them. Anything Go's `time.ParseDuration` refuses, including durations longer than Go
/// can represent, is `None`.
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
    if !total.is_finite() || total > MAX_GO_DURATION_SECS as f64 {
        return None;
    }
    Duration::try_from_secs_f64(total).ok()
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

    #[test]
    fn out_of_range_durations_are_refused_not_a_panic() {
        for huge in [
            "99999999999999999999h",
            "2562048h",
            &format!("{}s", "9".repeat(400)),
            "1e9h",
        ] {
            assert_eq!(go_duration(huge), None, "{huge}");
        }
        assert_eq!(
            go_duration("2562047h"),
            Some(Duration::from_secs(2_562_047 * 3600))
        );
    }

    #[test]
    fn a_plugin_is_named_by_a_plain_file_name_in_the_bin_dir() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // Files the names below would reach if they were joined to the bin dir as they are.
        std::fs::write(dir.path().join("x"), "#!/bin/sh\n").unwrap();
        std::fs::write(bin.join("ecr-credential-provider"), "#!/bin/sh\n").unwrap();
        let load = |name: &str| {
            let config = dir.path().join("config.yaml");
            std::fs::write(
                &config,
                format!(
                    "apiVersion: {CONFIG_API}\nkind: CredentialProviderConfig\nproviders:\n  - \
                     name: {name:?}\n    matchImages: [\"*.example.com\"]\n    apiVersion: \
                     {PLUGIN_API}\n"
                ),
            )
            .unwrap();
            Plugins::load(&config, &bin)
        };
        for name in ["../x", "/bin/sh", "sub/../../x", "..", ".", ""] {
            let e = load(name).expect_err(name).to_string();
            assert!(
                e.contains("name must be a plain file name in the bin dir"),
                "{name:?}: {e}"
            );
        }
        let plugins = load("ecr-credential-provider").expect("a plain name");
        assert_eq!(
            plugins.providers[0].binary,
            bin.join("ecr-credential-provider")
        );
    }

    fn response(cache_key_type: &str, cache_duration: Option<&str>) -> Vec<u8> {
        let mut r = serde_json::json!({
            "apiVersion": PLUGIN_API,
            "kind": "CredentialProviderResponse",
            "cacheKeyType": cache_key_type,
            "auth": {"*.example.com": {"username": "u", "password": "a-secret-password"}},
        });
        if let Some(d) = cache_duration {
            r["cacheDuration"] = d.into();
        }
        r.to_string().into_bytes()
    }

    #[test]
    fn an_answer_is_cached_by_its_key_type_for_its_duration() {
        let image = "reg.example.com/team/app";
        let default = Duration::from_secs(7);
        let read = |t: &str, d: Option<&str>| Answer::read(&response(t, d), image, "p", default);
        let a = read("Image", Some("1h30m")).unwrap();
        assert_eq!(a.cache_key, image);
        assert_eq!(a.ttl, Duration::from_secs(5400));
        assert_eq!(a.keyring.lookup(image).len(), 1);
        assert!(a.keyring.lookup("other.io/app").is_empty());
        let r = read("Registry", None).unwrap();
        assert_eq!((r.cache_key.as_str(), r.ttl), ("reg.example.com", default));
        assert_eq!(read("Global", Some("0s")).unwrap().cache_key, "");
        assert!(read("Global", Some("0s")).unwrap().ttl.is_zero());
    }

    #[test]
    fn a_bad_answer_is_an_error_that_shows_no_secret() {
        let image = "reg.example.com/app";
        let read = |bytes: &[u8]| Answer::read(bytes, image, "p", Duration::ZERO).unwrap_err();
        let e = read(&response("Image", Some("99999999999999999999h")));
        assert!(e.contains("invalid cacheDuration"), "{e}");
        assert!(read(&response("Repository", None)).contains("invalid cacheKeyType"));
        let broken = br#"{"apiVersion": 5, "auth": {"x": {"password": "a-secret-password"}}}"#;
        let e = read(broken);
        assert!(
            e.contains("invalid CredentialProviderResponse") && !e.contains("secret"),
            "{e}"
        );
    }
}
