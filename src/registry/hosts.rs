//! Where to send a registry's requests, read from containerd's own per-host configuration
//! (`/etc/containerd/certs.d/<host>/hosts.toml`), so prepull uses the same mirrors, CAs and
//! client certificates as the node's containerd.
//!
//! The directory for `host:5000` is `host_5000_`, else `host:5000`, else `_default`; the first
//! that exists is used. In it, `hosts.toml` lists mirrors (`[host."https://…"]`, tried in file
//! order, each with `capabilities`, `ca`, `client`, `skip_verify`, `header`, `override_path`)
//! and the upstream `server`, tried last. Without `hosts.toml`, Docker-style files apply to the
//! upstream: `*.crt` are CAs, `*.cert` + `*.key` a client certificate (a `*.cert` without its
//! `*.key` holds the key itself).
//!
//! Keys are the ones containerd knows, with its meaning; `dial_timeout` (a Go duration, as in
//! containerd 2.1) bounds how long connecting to that host may take. A key prepull does not know
//! is ignored, as containerd ignores it, with one warning per file content naming the file and
//! the key: the node's containerd reads the same file, so refusing it would break prepull on
//! nodes where containerd works.
//!
//! `client` is read as containerd reads it: a path, or a list whose items are paths or
//! `[cert, key]` pairs. A path alone names one PEM file holding the certificate and its key (so
//! `client = ["a.pem", "b.pem"]` is two such files, not a certificate and a key); a pair with an
//! empty key does too. containerd offers the server whichever configured certificate suits it;
//! prepull presents the first one.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use super::Tls;
use crate::reference::DOCKER_HUB;

/// The API host behind `docker.io`.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// One place a registry's content can be fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://mirror.example.com:5000` (scheme and authority, no path).
    pub origin: String,
    /// The API prefix: `/v2`, or the configured path with `override_path`.
    pub api_path: String,
    /// `host[:port]` of the endpoint, for credentials lookup.
    pub host: String,
    /// A mirror (not the registry itself): requests carry `?ns=<registry>`.
    pub mirror: bool,
    /// May resolve tags.
    pub resolve: bool,
    /// May serve manifests by digest and blobs.
    pub pull: bool,
    /// TLS settings.
    pub tls: Tls,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// How long connecting may take (`dial_timeout`); `None`: the client's default.
    pub dial_timeout: Option<Duration>,
    /// The `hosts.toml` whose `server` or `[host."…"]` table names this endpoint, if one does.
    pub named_in: Option<PathBuf>,
}

impl Endpoint {
    /// The URL of `suffix` (`manifests/…`, `blobs/…`) in `repository`, for `registry`.
    pub fn url(&self, registry: &str, repository: &str, suffix: &str) -> String {
        let ns = if self.mirror {
            format!("?ns={registry}")
        } else {
            String::new()
        };
        format!("{}{}/{repository}/{suffix}{ns}", self.origin, self.api_path)
    }
}

/// A `hosts.toml` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// Unreadable.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML of the expected shape.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// How to reach registries: containerd's hosts directory plus `--plain-http` hosts.
#[derive(Clone, Debug, Default)]
pub struct Hosts {
    /// containerd's `certs.d` directory, if any.
    pub dir: Option<PathBuf>,
    /// Registry hosts spoken to over plain HTTP.
    pub plain_http: HashSet<String>,
}

/// Where an endpoint's settings are configured, for advice in error messages.
enum Place {
    /// No hosts directory is in use.
    NoDirectory,
    /// A mirror's `[host."<origin>"]` table.
    Table { hosts_toml: PathBuf, origin: String },
    /// The registry's `hosts.toml`.
    HostsToml(PathBuf),
    /// The registry's directory, which has no `hosts.toml`: Docker-style files or a new one.
    Directory { dir: PathBuf, hosts_toml: PathBuf },
}

/// The keys containerd reads in a `[host."…"]` table, and at the top level besides `server` and
/// `host` (containerd's `hostFileConfig`).
const HOST_KEYS: &[&str] = &[
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
    "dial_timeout",
];

/// The settings of one host (a `[host."…"]` table, or the top level for the upstream). Keys
/// containerd does not know are taken out before it is read (see [`take_unknown_keys`]), so
/// denying them here only guards that the two lists agree.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    ca: Option<OneOrMany>,
    #[serde(default)]
    client: Option<ClientCerts>,
    #[serde(default)]
    skip_verify: Option<bool>,
    #[serde(default)]
    header: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    override_path: Option<bool>,
    #[serde(default)]
    dial_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `client = "both.pem"`, `client = ["both-1.pem", "both-2.pem"]` or
/// `client = [["client.cert", "client.key"], ["both.pem", ""]]` (see the module docs).
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientCerts {
    One(String),
    Many(Vec<ClientEntry>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ClientEntry {
    /// A PEM file with the certificate and its key.
    Combined(String),
    /// `[cert, key]`; an empty key means the key is in the certificate's file.
    Pair(Vec<String>),
}

impl ClientCerts {
    /// The certificate (and key file, if separate) prepull presents: the first configured.
    fn first(self) -> Result<Option<(PathBuf, Option<PathBuf>)>, String> {
        let entries = match self {
            ClientCerts::One(c) => vec![ClientEntry::Combined(c)],
            ClientCerts::Many(v) => v,
        };
        let mut first = None;
        // Every entry is checked, as containerd does, though only the first is used.
        for entry in entries {
            let (cert, key) = match entry {
                ClientEntry::Combined(c) => (c, None),
                ClientEntry::Pair(p) => match <[String; 2]>::try_from(p) {
                    Ok([c, k]) => (c, Some(k).filter(|k| !k.is_empty())),
                    Err(p) => {
                        return Err(format!(
                            "client: {p:?} is not a [certificate, key] pair (two paths; an empty \
                             key means the key is in the certificate's file)"
                        ))
                    }
                },
            };
            if cert.is_empty() {
                return Err("client: a certificate path is empty".into());
            }
            first.get_or_insert((PathBuf::from(cert), key.map(PathBuf::from)));
        }
        Ok(first)
    }
}

impl Hosts {
    /// The endpoints to try for `registry` (as written in image names), mirrors first and the
    /// registry itself last.
    pub fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
        let mut upstream = self.upstream(registry);
        let Some(dir) = self.host_dir(registry) else {
            return Ok(vec![upstream]);
        };
        let file = dir.join("hosts.toml");
        if !file.is_file() {
            upstream.tls = docker_certs(&dir)?;
            return Ok(vec![upstream]);
        }
        let text = std::fs::read_to_string(&file).map_err(|source| HostsError::Io {
            path: file.clone(),
            source,
        })?;
        let invalid = |message: String| HostsError::Invalid {
            path: file.clone(),
            message,
        };
        let mut parsed = HostsToml::parse(&text).map_err(invalid)?;
        let mut out = Vec::new();
        for (url, entry) in std::mem::take(&mut parsed.hosts) {
            let at = format!("[host.{url:?}]");
            let mut endpoint =
                endpoint_from(&url, true).map_err(|m| invalid(format!("{at}: {m}")))?;
            apply(&mut endpoint, &dir, Some(&url), entry)
                .map_err(|m| invalid(format!("{at} {m}")))?;
            endpoint.named_in = Some(file.clone());
            // The registry itself may appear as a host entry; then it is not a mirror.
            if endpoint.host == upstream.host || endpoint.host == registry {
                endpoint.mirror = false;
            }
            out.push(endpoint);
        }
        if let Some(server) = &parsed.server {
            upstream = endpoint_from(server, false).map_err(|m| invalid(format!("server: {m}")))?;
            upstream.named_in = Some(file.clone());
        }
        apply(
            &mut upstream,
            &dir,
            parsed.server.as_deref(),
            parsed.settings,
        )
        .map_err(invalid)?;
        warn_unknown_once(&file, &text, &parsed.unknown);
        if !out.iter().any(|e| e.origin == upstream.origin) {
            out.push(upstream);
        }
        Ok(out)
    }

    /// The registry itself, as spoken to when no host configuration says otherwise.
    fn upstream(&self, registry: &str) -> Endpoint {
        let api_host = if registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            registry
        };
        let scheme = if self.plain_http.contains(registry) {
            "http"
        } else {
            "https"
        };
        endpoint_at(scheme, api_host, false)
    }

    /// Where an operator configures the client certificate for `endpoint` of `registry`, as
    /// advice to end an error message with.
    pub fn client_certificate_advice(&self, registry: &str, endpoint: &Endpoint) -> String {
        const PAIR: &str = r#"client = [["client.cert", "client.key"]]"#;
        match self.place(registry, endpoint) {
            Place::NoDirectory => format!(
                "configure one in containerd's hosts directory for {registry} and pass it with \
                 --hosts-dir"
            ),
            Place::Table { hosts_toml, origin } => format!(
                "configure one as {PAIR} in the [host.\"{origin}\"] table of {}",
                hosts_toml.display()
            ),
            Place::HostsToml(hosts_toml) => {
                format!("configure one as {PAIR} in {}", hosts_toml.display())
            }
            Place::Directory { dir, hosts_toml } => format!(
                "configure one as {PAIR} in {}, or put a client.cert + client.key pair (any \
                 *.cert with its *.key) in {}",
                hosts_toml.display(),
                dir.display()
            ),
        }
    }

    /// Where an operator configures the CA that signed the certificate of `endpoint` of
    /// `registry`, as advice to end an error message with.
    pub fn ca_advice(&self, registry: &str, endpoint: &Endpoint) -> String {
        const CA: &str = r#"ca = "<CA certificate file>""#;
        let configured = match endpoint.tls.ca_files.as_slice() {
            [] => String::new(),
            files => format!(
                "none of the configured CA files ({}) signed it; ",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let fix = match self.place(registry, endpoint) {
            Place::NoDirectory => format!(
                "put the CA certificate that signed it as {registry}/ca.crt in containerd's hosts \
                 directory and pass that directory with --hosts-dir"
            ),
            Place::Table { hosts_toml, origin } => format!(
                "write {CA} in the [host.\"{origin}\"] table of {}",
                hosts_toml.display()
            ),
            Place::HostsToml(hosts_toml) => format!("write {CA} in {}", hosts_toml.display()),
            Place::Directory { dir, hosts_toml } => format!(
                "put the CA certificate that signed it in {} (any *.crt file there), or write \
                 {CA} in {}",
                dir.join("ca.crt").display(),
                hosts_toml.display()
            ),
        };
        format!("{configured}{fix}")
    }

    /// How to make prepull speak the protocol `endpoint` of `registry` really speaks: plain
    /// HTTP (`tls` false) or HTTPS, as advice to end an error message with.
    pub fn scheme_advice(&self, registry: &str, endpoint: &Endpoint, tls: bool) -> String {
        let (wrong, right) = if tls {
            ("http", "https")
        } else {
            ("https", "http")
        };
        let host = &endpoint.host;
        match (&endpoint.named_in, tls) {
            (Some(file), _) => format!(
                "write {right}://{host} instead of {wrong}://{host} in {}",
                file.display()
            ),
            (None, false) => format!("pass --plain-http {registry}"),
            (None, true) => format!("do not pass --plain-http {registry}"),
        }
    }

    /// Where the settings of `endpoint` of `registry` are, or would be, configured.
    fn place(&self, registry: &str, endpoint: &Endpoint) -> Place {
        let Some(root) = &self.dir else {
            return Place::NoDirectory;
        };
        // The directory in use, or the one containerd would look in first.
        let dir = self.host_dir(registry).unwrap_or_else(|| {
            let name = match registry.rfind(':').filter(|i| *i > 0) {
                Some(i) => format!("{}_{}_", &registry[..i], &registry[i + 1..]),
                None => registry.to_string(),
            };
            root.join(name)
        });
        let hosts_toml = dir.join("hosts.toml");
        if endpoint.mirror {
            Place::Table {
                hosts_toml,
                origin: endpoint.origin.clone(),
            }
        } else if hosts_toml.is_file() {
            Place::HostsToml(hosts_toml)
        } else {
            Place::Directory { dir, hosts_toml }
        }
    }

    fn host_dir(&self, registry: &str) -> Option<PathBuf> {
        let root = self.dir.as_ref()?;
        let mut candidates = Vec::new();
        if let Some(i) = registry.rfind(':').filter(|i| *i > 0) {
            candidates.push(format!("{}_{}_", &registry[..i], &registry[i + 1..]));
        }
        candidates.push(registry.to_string());
        candidates.push("_default".to_string());
        candidates
            .into_iter()
            .map(|c| root.join(c))
            .find(|p| p.is_dir())
    }
}

/// Applies a host table's settings to `endpoint`, configured as `url` (`None`: the upstream
/// without `server`, whose API path `override_path` cannot change).
fn apply(
    endpoint: &mut Endpoint,
    dir: &Path,
    url: Option<&str>,
    entry: HostEntry,
) -> Result<(), String> {
    let caps = entry
        .capabilities
        .unwrap_or_else(|| vec!["pull".into(), "resolve".into()]);
    endpoint.pull = caps.iter().any(|c| c.eq_ignore_ascii_case("pull"));
    endpoint.resolve = caps.iter().any(|c| c.eq_ignore_ascii_case("resolve"));
    endpoint.tls = tls_of(dir, entry.ca, entry.client, entry.skip_verify)?;
    endpoint.headers = headers(entry.header);
    if let (Some(url), Some(true)) = (url, entry.override_path) {
        endpoint.api_path = api_path_of(url);
    }
    if let Some(d) = entry.dial_timeout {
        endpoint.dial_timeout = Some(
            crate::credentials::go_duration(&d)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!("dial_timeout: {d:?} is not a duration like \"5s\" or \"500ms\"")
                })?,
        );
    }
    Ok(())
}

/// Removes the keys of `table` that containerd does not know, recording each as
/// `<prefix><key>`.
fn take_unknown_keys(table: &mut toml::Table, prefix: &str, unknown: &mut Vec<String>) {
    let keys: Vec<String> = table
        .keys()
        .filter(|k| !HOST_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in keys {
        table.remove(&key);
        unknown.push(format!("{prefix}{key}"));
    }
}

/// The `hosts.toml` contents whose unknown keys were reported already: the file is read for
/// every request, and a key is worth one warning per edit of the file, not one per request.
static REPORTED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

/// Warns about `unknown` keys of `file` unless this content was reported already.
fn warn_unknown_once(file: &Path, text: &str, unknown: &[String]) {
    if unknown.is_empty() {
        return;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (file, text).hash(&mut h);
    let first = REPORTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(h.finish());
    if first {
        for key in unknown {
            tracing::warn!(
                file = %file.display(),
                key = %key,
                "hosts.toml key ignored: prepull does not know it (check its spelling; containerd \
                 ignores keys it does not know too)"
            );
        }
    }
}

/// TLS settings from a `hosts.toml` table; relative paths are relative to its directory.
fn tls_of(
    dir: &Path,
    ca: Option<OneOrMany>,
    client: Option<ClientCerts>,
    skip_verify: Option<bool>,
) -> Result<Tls, String> {
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
    let client = match client {
        Some(c) => c.first()?,
        None => None,
    };
    Ok(Tls {
        ca_files: ca
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .map(|p| resolve(PathBuf::from(p)))
            .collect(),
        client: client.map(|(cert, key)| (resolve(cert), key.map(resolve))),
        skip_verify: skip_verify.unwrap_or(false),
    })
}

fn headers(h: BTreeMap<String, OneOrMany>) -> Vec<(String, String)> {
    h.into_iter()
        .flat_map(|(k, v)| v.into_vec().into_iter().map(move |v| (k.clone(), v)))
        .collect()
}

fn endpoint_from(url: &str, mirror: bool) -> Result<Endpoint, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} needs a scheme (https:// or http://)"))?;
    if scheme != "https" && scheme != "http" {
        return Err(format!("{url:?}: scheme must be https or http"));
    }
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(endpoint_at(scheme, host, mirror))
}

/// A host's endpoint with the defaults containerd gives a host entry: `/v2`, resolve and pull,
/// no TLS settings, headers or dial timeout of its own.
fn endpoint_at(scheme: &str, host: &str, mirror: bool) -> Endpoint {
    Endpoint {
        origin: format!("{scheme}://{host}"),
        api_path: "/v2".into(),
        host: host.to_string(),
        mirror,
        resolve: true,
        pull: true,
        tls: Tls::default(),
        headers: Vec::new(),
        dial_timeout: None,
        named_in: None,
    }
}

fn api_path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..].trim_end_matches('/').to_string(),
        None => String::new(),
    }
}

/// Docker's `certs.d` layout: `*.crt` CAs, `*.cert` + `*.key` client pairs.
fn docker_certs(dir: &Path) -> Result<Tls, HostsError> {
    let mut tls = Tls::default();
    let entries = std::fs::read_dir(dir).map_err(|source| HostsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    names.sort();
    for path in names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => tls.ca_files.push(path),
            Some("cert") if tls.client.is_none() => {
                // Without its `.key`, a `.cert` holds the key itself (as containerd reads it).
                let key = path.with_extension("key");
                tls.client = Some((path, key.is_file().then_some(key)));
            }
            _ => {}
        }
    }
    Ok(tls)
}

/// One `hosts.toml`, parsed the way containerd reads it: the `server`, the `[host."<url>"]`
/// tables in file order, the settings for the server, and the keys containerd accepts but
/// prepull does not know (ignored, with one warning).
struct HostsToml {
    server: Option<String>,
    hosts: Vec<(String, HostEntry)>,
    settings: HostEntry,
    unknown: Vec<String>,
}

impl HostsToml {
    /// Parses the file's text; an error says what is wrong and where (the caller adds the file).
    fn parse(text: &str) -> Result<HostsToml, String> {
        let mut top: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
        let mut unknown = Vec::new();
        let server = match top.remove("server") {
            None => None,
            Some(toml::Value::String(s)) => Some(s),
            Some(other) => {
                return Err(format!("server must be a string, not {}", other.type_str()))
            }
        };
        let host_tables = match top.remove("host") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                return Err(format!(
                    "host must be a table of [host.\"<url>\"] entries, not {}",
                    other.type_str()
                ))
            }
        };
        take_unknown_keys(&mut top, "", &mut unknown);
        let mut hosts = Vec::new();
        for (url, value) in host_tables {
            let at = format!("[host.{url:?}]");
            let toml::Value::Table(mut table) = value else {
                return Err(format!("{at} must be a table, not {}", value.type_str()));
            };
            take_unknown_keys(&mut table, &format!("host.{url:?}."), &mut unknown);
            let entry = HostEntry::deserialize(table).map_err(|e| format!("{at}: {e}"))?;
            hosts.push((url, entry));
        }
        let settings = HostEntry::deserialize(top).map_err(|e| format!("{e}"))?;
        Ok(HostsToml {
            server,
            hosts,
            settings,
            unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts_with(dir_name: &str, toml: Option<&str>) -> (tempfile::TempDir, Hosts) {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join(dir_name);
        std::fs::create_dir_all(&d).unwrap();
        if let Some(t) = toml {
            std::fs::write(d.join("hosts.toml"), t).unwrap();
        }
        let hosts = Hosts {
            dir: Some(root.path().to_path_buf()),
            plain_http: HashSet::new(),
        };
        (root, hosts)
    }

    #[test]
    fn without_a_directory_the_registry_itself() {
        let hosts = Hosts::default();
        let e = hosts.endpoints("docker.io").unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].origin, "https://registry-1.docker.io");
        assert_eq!(
            e[0].url("docker.io", "library/x", "manifests/1"),
            "https://registry-1.docker.io/v2/library/x/manifests/1"
        );
        let plain = Hosts {
            dir: None,
            plain_http: ["reg:5000".to_string()].into(),
        };
        assert_eq!(
            plain.endpoints("reg:5000").unwrap()[0].origin,
            "http://reg:5000"
        );
    }

    #[test]
    fn mirrors_in_file_order_then_the_server() {
        let (_root, hosts) = hosts_with(
            "docker.io",
            Some(
                r#"
server = "https://registry-1.docker.io"
[host."https://zz-mirror.local:5000"]
  capabilities = ["pull", "resolve"]
  ca = "ca.pem"
[host."http://aa-mirror.local/base/v2"]
  capabilities = ["pull"]
  override_path = true
  [host."http://aa-mirror.local/base/v2".header]
    x-team = ["a", "b"]
"#,
            ),
        );
        let e = hosts.endpoints("docker.io").unwrap();
        let origins: Vec<&str> = e.iter().map(|e| e.origin.as_str()).collect();
        assert_eq!(
            origins,
            [
                "https://zz-mirror.local:5000",
                "http://aa-mirror.local",
                "https://registry-1.docker.io"
            ]
        );
        assert!(e[0].mirror && e[0].resolve && e[0].pull);
        assert!(e[0].tls.ca_files[0].ends_with("docker.io/ca.pem"));
        assert!(!e[1].resolve && e[1].pull);
        assert_eq!(
            e[1].url("docker.io", "library/x", "blobs/sha256:1"),
            "http://aa-mirror.local/base/v2/library/x/blobs/sha256:1?ns=docker.io"
        );
        assert_eq!(
            e[1].headers,
            vec![("x-team".into(), "a".into()), ("x-team".into(), "b".into())]
        );
        assert!(!e[2].mirror);
    }

    #[test]
    fn port_directories_and_default_fallback() {
        let (_root, hosts) = hosts_with(
            "reg_5000_",
            Some("server = \"https://reg:5000\"\nskip_verify = true\n"),
        );
        let e = hosts.endpoints("reg:5000").unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0].tls.skip_verify);
        let (_root, hosts) = hosts_with("_default", Some("[host.\"https://cache.local\"]\n"));
        let e = hosts.endpoints("quay.io").unwrap();
        assert_eq!(e[0].origin, "https://cache.local");
        assert_eq!(e[1].origin, "https://quay.io");
    }

    #[test]
    fn docker_style_certificate_directories() {
        let (root, hosts) = hosts_with("reg.local", None);
        let d = root.path().join("reg.local");
        for f in ["ca.crt", "client.cert", "client.key"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let e = hosts.endpoints("reg.local").unwrap();
        assert_eq!(e[0].tls.ca_files, vec![d.join("ca.crt")]);
        assert_eq!(
            e[0].tls.client,
            Some((d.join("client.cert"), Some(d.join("client.key"))))
        );
    }

    #[test]
    fn client_paths_and_pairs_as_containerd_reads_them() {
        let client_of = |toml: &str| {
            let (root, hosts) = hosts_with("reg.local", Some(toml));
            let d = root.path().join("reg.local");
            let e = hosts.endpoints("reg.local").unwrap();
            let (cert, key) = e[0].tls.client.clone().unwrap();
            (
                cert.strip_prefix(&d).unwrap().to_path_buf(),
                key.map(|k| k.strip_prefix(&d).unwrap().to_path_buf()),
            )
        };
        let both = (PathBuf::from("both.pem"), None);
        assert_eq!(client_of("client = \"both.pem\"\n"), both);
        // A list of paths is a list of files that each hold a certificate and its key.
        assert_eq!(client_of("client = [\"both.pem\", \"other.pem\"]\n"), both);
        assert_eq!(client_of("client = [[\"both.pem\", \"\"]]\n"), both);
        assert_eq!(
            client_of("client = [\"both.pem\", [\"c.cert\", \"c.key\"]]\n"),
            both
        );
        assert_eq!(
            client_of("client = [[\"c.cert\", \"c.key\"], [\"both.pem\", \"\"]]\n"),
            (PathBuf::from("c.cert"), Some(PathBuf::from("c.key")))
        );
        let (_root, hosts) = hosts_with(
            "reg.local",
            Some("[host.\"https://m.local\"]\n  client = [[\"c.cert\"]]\n"),
        );
        let err = hosts.endpoints("reg.local").unwrap_err().to_string();
        assert!(
            err.contains("hosts.toml") && err.contains("m.local") && err.contains("pair"),
            "{err}"
        );
    }

    #[test]
    fn a_docker_style_cert_without_its_key_holds_the_key() {
        let (root, hosts) = hosts_with("reg.local", None);
        let d = root.path().join("reg.local");
        std::fs::write(d.join("client.cert"), "x").unwrap();
        let e = hosts.endpoints("reg.local").unwrap();
        assert_eq!(e[0].tls.client, Some((d.join("client.cert"), None)));
    }

    #[test]
    fn bad_files_name_the_file_and_the_problem() {
        let (_root, hosts) = hosts_with("reg.local", Some("[host.\"mirror.local\"]\n"));
        let err = hosts.endpoints("reg.local").unwrap_err().to_string();
        assert!(
            err.contains("hosts.toml") && err.contains("scheme"),
            "{err}"
        );
        for (toml, names) in [
            ("dial_timeout = \"5 seconds\"\n", "dial_timeout"),
            (
                "[host.\"https://m.local\"]\n  dial_timeout = \"-\"\n",
                "m.local",
            ),
            ("skip_verify = \"yes\"\n", "skip_verify"),
            ("server = 5\n", "server"),
            ("host = 5\n", "host"),
            ("[host]\n\"https://m.local\" = 5\n", "m.local"),
            ("server = \"https://x\"\n[[broken\n", "hosts.toml"),
        ] {
            let (_root, hosts) = hosts_with("reg.local", Some(toml));
            let err = crate::error_chain(&hosts.endpoints("reg.local").unwrap_err());
            assert!(
                err.contains("hosts.toml") && err.contains(names),
                "{toml}: {err}"
            );
        }
    }

    #[test]
    fn tls_advice_names_the_place_to_configure() {
        let (root, hosts) = hosts_with(
            "reg.local",
            Some("server = \"https://reg.local\"\n[host.\"https://m.local\"]\n  ca = \"m.pem\"\n"),
        );
        let toml = root.path().join("reg.local").join("hosts.toml");
        let e = hosts.endpoints("reg.local").unwrap();
        let mirror = hosts.ca_advice("reg.local", &e[0]);
        assert!(
            mirror.contains("m.pem")
                && mirror.contains(&format!(
                    "write ca = \"<CA certificate file>\" in the [host.\"https://m.local\"] table of {}",
                    toml.display()
                )),
            "{mirror}"
        );
        assert_eq!(
            hosts.ca_advice("reg.local", &e[1]),
            format!("write ca = \"<CA certificate file>\" in {}", toml.display())
        );
        assert_eq!(
            hosts.scheme_advice("reg.local", &e[0], false),
            format!(
                "write http://m.local instead of https://m.local in {}",
                toml.display()
            )
        );
        // No hosts.toml: a Docker-style CA file in containerd's first choice of directory.
        let (root, hosts) = hosts_with("other", None);
        let e = hosts.endpoints("reg:5000").unwrap();
        let advice = hosts.ca_advice("reg:5000", &e[0]);
        assert!(
            advice.contains(&root.path().join("reg_5000_/ca.crt").display().to_string()),
            "{advice}"
        );
        assert_eq!(
            hosts.scheme_advice("reg:5000", &e[0], false),
            "pass --plain-http reg:5000"
        );
        let advice = Hosts::default().ca_advice("reg:5000", &e[0]);
        assert!(advice.contains("--hosts-dir"), "{advice}");
    }

    #[test]
    fn keys_containerd_does_not_know_are_ignored_and_the_known_keep_their_meaning() {
        let (_root, hosts) = hosts_with(
            "reg.local",
            Some(
                r#"
server = "https://reg.local"
sever = "https://typo.local"
dial_timeout = "1.5s"
future_option = { nested = true }
[host."https://m.local"]
  capabilities = ["Pull"]
  dial_timeout = "250ms"
  mirror_weight = 3
"#,
            ),
        );
        let e = hosts.endpoints("reg.local").unwrap();
        let origins: Vec<&str> = e.iter().map(|e| e.origin.as_str()).collect();
        assert_eq!(origins, ["https://m.local", "https://reg.local"]);
        assert_eq!(e[0].dial_timeout, Some(Duration::from_millis(250)));
        assert!(
            e[0].pull && !e[0].resolve,
            "capabilities are case-insensitive"
        );
        assert_eq!(e[1].dial_timeout, Some(Duration::from_millis(1500)));
        let mut unknown = Vec::new();
        let mut table: toml::Table = "a = 1\nca = \"x\"\ndial_timeout = \"1s\"\nzz = 2\n"
            .parse()
            .unwrap();
        take_unknown_keys(&mut table, "host.\"m\".", &mut unknown);
        assert_eq!(unknown, ["host.\"m\".a", "host.\"m\".zz"]);
        assert_eq!(table.len(), 2);
    }
}
