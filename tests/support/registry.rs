//! A real docker-registry (distribution 2.8) on a free loopback port, with filesystem storage in a
//! temp dir and deletes enabled. [`Registry::start`] is plain HTTP without auth;
//! [`Registry::start_with`] adds htpasswd (Basic) or token (Bearer) auth and/or TLS with a
//! certificate from a test CA. Stopped and cleaned up on Drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::auth::TokenAuth;
use super::image::{PushAuth, PushTarget};
use super::process::{self, Deadline};
use super::tls::TestCa;

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Another process may take the port between our probe and the registry's bind.
const PORT_ATTEMPTS: usize = 5;

/// bcrypt cost of the htpasswd entries: 4 is the minimum both the `bcrypt` crate and Go's
/// `x/crypto/bcrypt` accept, and keeps every Basic-authenticated request cheap for the registry.
const BCRYPT_COST: u32 = 4;

/// How a registry authenticates and serves. The default is what [`Registry::start`] runs.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Users and passwords for `auth.htpasswd` (Basic auth). Exclusive with `token`.
    pub htpasswd: Vec<(String, String)>,
    /// `auth.token`: Bearer auth delegated to a token server (see `auth::TokenServer`).
    pub token: Option<TokenAuth>,
    /// Serve HTTPS with a certificate for `127.0.0.1` and `localhost` signed by this CA.
    pub tls: Option<TestCa>,
}

impl RegistryOptions {
    pub fn htpasswd_user(mut self, user: &str, password: &str) -> Self {
        self.htpasswd.push((user.into(), password.into()));
        self
    }

    pub fn token(mut self, token: TokenAuth) -> Self {
        self.token = Some(token);
        self
    }

    pub fn tls(mut self, ca: &TestCa) -> Self {
        self.tls = Some(ca.clone());
        self
    }
}

pub struct Registry {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    storage: PathBuf,
    opts: RegistryOptions,
    /// Rendered `auth` and `http.tls` sections (their files live in `dir`).
    extra_config: String,
    dir: process::BenchDir,
}

/// docker-registry's YAML config for one instance; `extra` holds indented `http.tls` lines and a
/// top-level `auth` section.
fn render_config(storage: &Path, port: u16, extra: &(String, String)) -> String {
    // A random secret avoids the "No HTTP secret provided" warning and keeps upload state tokens
    // of different instances apart.
    let secret = hex::encode(rand::random::<[u8; 16]>());
    format!(
        r#"version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: "{storage}"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: "127.0.0.1:{port}"
  secret: "{secret}"
{tls}{auth}"#,
        storage = storage.display(),
        tls = extra.0,
        auth = extra.1,
    )
}

/// YAML double-quoted string (paths and URLs made by the bench; no exotic characters expected).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("quote a YAML string")
}

/// Writes the files the options need into `dir` and returns the `http.tls` lines and the `auth`
/// section.
fn render_security(opts: &RegistryOptions, dir: &Path) -> (String, String) {
    assert!(
        opts.htpasswd.is_empty() || opts.token.is_none(),
        "docker-registry takes one access controller: htpasswd or token, not both"
    );
    let tls = match &opts.tls {
        Some(ca) => {
            let cert = ca.issue_server(&["127.0.0.1", "localhost"], dir, "registry");
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                yaml_str(&cert.cert_path.display().to_string()),
                yaml_str(&cert.key_path.display().to_string())
            )
        }
        None => String::new(),
    };
    let auth = if !opts.htpasswd.is_empty() {
        let path = dir.join("htpasswd");
        let mut file = String::new();
        for (user, password) in &opts.htpasswd {
            assert!(
                !user.contains(':') && !user.contains('\n'),
                "htpasswd user names cannot contain ':' or newlines: {user:?}"
            );
            let hash = bcrypt::hash(password, BCRYPT_COST).expect("bcrypt a password");
            file.push_str(&format!("{user}:{hash}\n"));
        }
        std::fs::write(&path, file).expect("write htpasswd");
        format!(
            "auth:\n  htpasswd:\n    realm: \"prepull-test-registry\"\n    path: {}\n",
            yaml_str(&path.display().to_string())
        )
    } else if let Some(token) = &opts.token {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            yaml_str(&token.realm),
            yaml_str(&token.service),
            yaml_str(&token.issuer),
            yaml_str(&token.rootcertbundle.display().to_string()),
        )
    } else {
        String::new()
    };
    (tls, auth)
}

enum Start {
    Ready,
    PortTaken,
}

impl Registry {
    /// Plain HTTP, no auth.
    pub async fn start() -> Registry {
        Registry::start_with(RegistryOptions::default()).await
    }

    pub async fn start_with(opts: RegistryOptions) -> Registry {
        let dir = process::tempdir("bench-registry-");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("create registry storage dir");
        let config = dir.path().join("config.yml");
        let log = dir.path().join("registry.log");
        let extra = render_security(&opts, dir.path());
        let mut me = Registry {
            child: None,
            port: 0,
            log,
            storage,
            opts,
            extra_config: format!("{}{}", extra.0, extra.1),
            dir,
        };
        for _ in 0..PORT_ATTEMPTS {
            me.port = process::free_port();
            std::fs::write(&config, render_config(&me.storage, me.port, &extra))
                .expect("write registry config");
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve").arg(&config);
            // REGISTRY_* variables override the config file; a developer's shell must not leak in.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            me.child = Some(process::spawn_logged(cmd, &me.log));
            match me.wait_ready().await {
                Start::Ready => return me,
                Start::PortTaken => me.stop(),
            }
        }
        me.fail(&format!(
            "docker-registry could not bind a free port in {PORT_ATTEMPTS} attempts"
        ))
    }

    async fn wait_ready(&mut self) -> Start {
        let client = self
            .client_builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("build HTTP client");
        let url = format!("{}/v2/", self.url());
        // With auth, `/v2/` answers 401 with the configured challenge once the registry is up.
        let ready_status = if self.has_auth() {
            reqwest::StatusCode::UNAUTHORIZED
        } else {
            reqwest::StatusCode::OK
        };
        let deadline = Deadline::after(START_TIMEOUT);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                if process::log_tail(&self.log, 5).contains("address already in use") {
                    return Start::PortTaken;
                }
                self.fail(&format!(
                    "docker-registry exited during startup with {status}"
                ));
            }
            let last_error = match client.get(&url).send().await {
                Ok(r) if r.status() == ready_status => return Start::Ready,
                Ok(r) => format!("GET /v2/ answered {}", r.status()),
                Err(e) => format!("GET /v2/: {e}"),
            };
            if deadline.expired() {
                self.fail(&format!(
                    "docker-registry not ready after {START_TIMEOUT:?}: {last_error}"
                ));
            }
            deadline.tick().await;
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        let tail = process::log_tail(&self.log, 25);
        self.stop();
        panic!("{why}\n--- tail of {} ---\n{tail}", self.log.display());
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.host())
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// The CA that signed the registry's certificate, when it serves TLS.
    pub fn ca(&self) -> Option<&TestCa> {
        self.opts.tls.as_ref()
    }

    pub fn has_auth(&self) -> bool {
        !self.opts.htpasswd.is_empty() || self.opts.token.is_some()
    }

    /// A reqwest builder that reaches this registry: no proxy, and the test CA (only) as root
    /// when it serves TLS. Carries no credentials.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder().no_proxy();
        match &self.opts.tls {
            Some(ca) => builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca.reqwest_certificate()),
            None => builder,
        }
    }

    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("build HTTP client")
    }

    /// Where and how the bench pushes to this registry: the first htpasswd user, or push tokens
    /// minted directly with the token server's key (the token server sees no requests).
    pub fn push_target(&self) -> PushTarget {
        let auth = if let Some((user, password)) = self.opts.htpasswd.first() {
            PushAuth::Basic {
                user: user.clone(),
                password: password.clone(),
            }
        } else if let Some(token) = &self.opts.token {
            PushAuth::Bearer(token.minter.clone())
        } else {
            PushAuth::None
        };
        PushTarget {
            host: self.host(),
            scheme: self.scheme().to_string(),
            ca_pem: self.opts.tls.as_ref().map(|ca| ca.cert_pem().to_string()),
            auth,
        }
    }

    /// Writes `<certs_d>/<host:port>/hosts.toml` for containerd-style clients (`ctr --hosts-dir`,
    /// a CRI `config_path`): the registry as the server, with the test CA when it serves TLS.
    /// Needed for TLS on loopback: containerd 1.6 defaults `127.0.0.1`/`localhost` to plain HTTP.
    /// Returns the file's path.
    pub fn write_hosts_toml(&self, certs_d: &Path) -> PathBuf {
        let dir = certs_d.join(self.host());
        std::fs::create_dir_all(&dir).expect("create the hosts.toml dir");
        let mut toml = format!(
            "server = {url}\n\n[host.{url}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            url = yaml_str(&self.url())
        );
        if let Some(ca) = &self.opts.tls {
            toml.push_str(&format!(
                "  ca = {}\n",
                yaml_str(&ca.pem_path().display().to_string())
            ));
        }
        let path = dir.join("hosts.toml");
        std::fs::write(&path, toml).expect("write hosts.toml");
        path
    }

    /// The rendered `http.tls` and `auth` config (no secrets: htpasswd holds bcrypt hashes).
    pub fn security_config(&self) -> &str {
        &self.extra_config
    }

    /// The registry's private dir (config, log, certificates, htpasswd).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's filesystem storage root.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// The file holding a blob's bytes (`sha256:...`), e.g. for flipping bytes to simulate a
    /// corrupt registry. The registry serves it without re-hashing.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let (algo, hex) = digest
            .split_once(':')
            .unwrap_or_else(|| panic!("not a digest: {digest:?}"));
        assert!(hex.len() > 2, "not a digest: {digest:?}");
        self.storage
            .join("docker/registry/v2/blobs")
            .join(algo)
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log, lines)
    }

    /// Kills the registry now (for offline tests). Its storage stays until Drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_child(&mut child);
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- tail of {} ---\n{}",
                self.log.display(),
                self.log_tail(20)
            );
        }
        self.stop();
    }
}
