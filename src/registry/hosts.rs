//! Where to send a registry's requests, read from containerd's own per-host configuration
//! (`/etc/containerd/certs.d/<host>/hosts.toml`), so prepull uses the same mirrors, CAs and
//! client certificates as the node's containerd.
//!
//! The directory for `host:5000` is `host_5000_`, else `host:5000`, else `_default`; the first
//! that exists is used. In it, `hosts.toml` lists mirrors (`[host."https://…"]`, tried in file
//! order, each with `capabilities`, `ca`, `client`, `skip_verify`, `header`, `override_path`)
//! and the upstream `server`, tried last. Without `hosts.toml`, Docker-style files apply to the
//! upstream: `*.crt` are CAs, `*.cert` + `*.key` a client certificate.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::reference::DOCKER_HUB;

/// The API host behind `docker.io`.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// TLS settings for one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tls {
    /// Extra CA certificates (PEM files) to trust.
    pub ca_files: Vec<PathBuf>,
    /// Client certificate and key (PEM files); the key may be in the certificate file.
    pub client: Option<(PathBuf, Option<PathBuf>)>,
    /// Accept any server certificate (explicitly configured only).
    pub skip_verify: bool,
}

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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    #[serde(default)]
    server: Option<String>,
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
    host: toml::map::Map<String, toml::Value>,
}

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

/// `client = "both.pem"`, `client = ["cert.pem", "key.pem"]` or `[["cert", "key"], …]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientCerts {
    One(String),
    Pair(Vec<String>),
    Pairs(Vec<Vec<String>>),
}

impl ClientCerts {
    fn first(self) -> Option<(PathBuf, Option<PathBuf>)> {
        match self {
            ClientCerts::One(c) => Some((c.into(), None)),
            ClientCerts::Pair(v) => {
                let mut it = v.into_iter();
                Some((it.next()?.into(), it.next().map(PathBuf::from)))
            }
            ClientCerts::Pairs(v) => {
                let mut it = v.into_iter().next()?.into_iter();
                Some((it.next()?.into(), it.next().map(PathBuf::from)))
            }
        }
    }
}

impl Hosts {
    /// The endpoints to try for `registry` (as written in image names), mirrors first and the
    /// registry itself last.
    pub fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
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
        let mut upstream = Endpoint {
            origin: format!("{scheme}://{api_host}"),
            api_path: "/v2".into(),
            host: api_host.to_string(),
            mirror: false,
            resolve: true,
            pull: true,
            tls: Tls::default(),
            headers: Vec::new(),
        };
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
        let parsed: HostsFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;

        let mut out = Vec::new();
        for (url, value) in parsed.host {
            let entry: HostEntry = value
                .try_into()
                .map_err(|e: toml::de::Error| invalid(format!("[host.{url:?}]: {e}")))?;
            let mut endpoint =
                endpoint_from(&url, true).map_err(|m| invalid(format!("[host.{url:?}]: {m}")))?;
            let caps = entry
                .capabilities
                .unwrap_or_else(|| vec!["pull".into(), "resolve".into()]);
            endpoint.pull = caps.iter().any(|c| c == "pull");
            endpoint.resolve = caps.iter().any(|c| c == "resolve");
            endpoint.tls = tls_of(&dir, entry.ca, entry.client, entry.skip_verify);
            endpoint.headers = headers(entry.header);
            if entry.override_path == Some(true) {
                endpoint.api_path = api_path_of(&url);
            }
            // The registry itself may appear as a host entry; then it is not a mirror.
            if endpoint.host == api_host || endpoint.host == registry {
                endpoint.mirror = false;
            }
            out.push(endpoint);
        }
        if let Some(server) = parsed.server {
            let mut e =
                endpoint_from(&server, false).map_err(|m| invalid(format!("server: {m}")))?;
            if parsed.override_path == Some(true) {
                e.api_path = api_path_of(&server);
            }
            upstream = e;
        }
        let caps = parsed
            .capabilities
            .unwrap_or_else(|| vec!["pull".into(), "resolve".into()]);
        upstream.pull = caps.iter().any(|c| c == "pull");
        upstream.resolve = caps.iter().any(|c| c == "resolve");
        upstream.tls = tls_of(&dir, parsed.ca, parsed.client, parsed.skip_verify);
        upstream.headers = headers(parsed.header);
        if !out.iter().any(|e| e.origin == upstream.origin) {
            out.push(upstream);
        }
        Ok(out)
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

/// TLS settings from a `hosts.toml` table; relative paths are relative to its directory.
fn tls_of(
    dir: &Path,
    ca: Option<OneOrMany>,
    client: Option<ClientCerts>,
    skip_verify: Option<bool>,
) -> Tls {
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
    Tls {
        ca_files: ca
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .map(|p| resolve(PathBuf::from(p)))
            .collect(),
        client: client
            .and_then(ClientCerts::first)
            .map(|(cert, key)| (resolve(cert), key.map(resolve))),
        skip_verify: skip_verify.unwrap_or(false),
    }
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
    Ok(Endpoint {
        origin: format!("{scheme}://{host}"),
        api_path: "/v2".into(),
        host: host.to_string(),
        mirror,
        resolve: true,
        pull: true,
        tls: Tls::default(),
        headers: Vec::new(),
    })
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
                let key = path.with_extension("key");
                if key.is_file() {
                    tls.client = Some((path, Some(key)));
                }
            }
            _ => {}
        }
    }
    Ok(tls)
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
    fn bad_files_name_the_file_and_the_problem() {
        let (_root, hosts) = hosts_with("reg.local", Some("[host.\"mirror.local\"]\n"));
        let err = hosts.endpoints("reg.local").unwrap_err().to_string();
        assert!(
            err.contains("hosts.toml") && err.contains("scheme"),
            "{err}"
        );
        let (_root, hosts) = hosts_with("reg.local", Some("sever = \"https://x\"\n"));
        let err = hosts.endpoints("reg.local").unwrap_err().to_string();
        assert!(err.contains("hosts.toml") && err.contains("sever"), "{err}");
    }
}
