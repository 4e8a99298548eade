//! A real docker-registry (distribution 2.8) on a free loopback port, with filesystem storage in a
//! temp dir and deletes enabled. [`Registry::start`] is plain HTTP without auth;
//! [`Registry::start_with`] adds htpasswd (Basic) or token (Bearer) auth and/or TLS with a
//! certificate from a test CA, optionally requiring client certificates from a test CA (mutual
//! TLS). Stopped and cleaned up on Drop.
//!
//! A registry that requires client certificates refuses the bench's pusher, which presents none,
//! so it gets a sibling: a second docker-registry on the same storage, plain HTTP on its own port,
//! which [`Registry::push_target`] points at. What is pushed there is served by the mutual-TLS
//! registry (no cache is configured, so both read the same files).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::auth::TokenAuth;
use super::image::{PushAuth, PushTarget};
use super::process::{self, Deadline};
use super::tls::{ClientCert, TestCa};

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
    /// Require a TLS client certificate signed by this CA (`http.tls.clientcas`); needs `tls`.
    /// docker-registry then refuses handshakes without a certificate it can verify.
    pub client_ca: Option<TestCa>,
    /// Run as a pull-through cache of this registry (`proxy.remoteurl`, e.g.
    /// `http://127.0.0.1:5000`): blobs and manifests fetched once are served from the cache's
    /// own storage; pushes are refused.
    pub proxy_remote: Option<String>,
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

    /// A pull-through cache of the registry at `remote_url` (see [`RegistryOptions::proxy_remote`]).
    pub fn pull_through(mut self, remote_url: &str) -> Self {
        self.proxy_remote = Some(remote_url.to_string());
        self
    }

    /// Mutual TLS: clients must present a certificate issued by `ca` (see `TestCa::issue_client`).
    pub fn require_client_cert(mut self, ca: &TestCa) -> Self {
        self.client_ca = Some(ca.clone());
        self
    }
}

pub struct Registry {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    storage: PathBuf,
    opts: RegistryOptions,
    /// The certificate the bench itself presents when the registry requires one.
    bench_identity: Option<ClientCert>,
    /// The plain-HTTP sibling on the same storage that the bench pushes to when the registry
    /// requires client certificates.
    push_side: Option<Sibling>,
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
# Foreign (non-distributable) layers carry URLs; the registry refuses them unless allowed.
validation:
  manifests:
    urls:
      allow:
        - '^https?://'
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
    assert!(
        opts.client_ca.is_none() || opts.tls.is_some(),
        "client certificates need TLS: add RegistryOptions::tls"
    );
    let tls = match &opts.tls {
        Some(ca) => {
            let cert = ca.issue_server(&["127.0.0.1", "localhost"], dir, "registry");
            let mut tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                yaml_str(&cert.cert_path.display().to_string()),
                yaml_str(&cert.key_path.display().to_string())
            );
            // distribution 2.8: any `clientcas` makes the server require and verify a client
            // certificate (Go's tls.RequireAndVerifyClientCert) against these CAs.
            if let Some(client_ca) = &opts.client_ca {
                tls.push_str(&format!(
                    "    clientcas:\n      - {}\n",
                    yaml_str(&client_ca.pem_path().display().to_string())
                ));
            }
            tls
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

/// `docker-registry serve <config>`, without the caller's `REGISTRY_*` variables (they override
/// the config file; a developer's shell must not leak in).
fn registry_command(config: &Path) -> Command {
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(config);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

enum Start {
    Ready,
    PortTaken,
}

struct Sibling {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

/// Polls `GET <url>/v2/` until it answers `ready_status`. `Err` carries why the registry is not
/// up (it exited, or the deadline passed).
async fn wait_until_ready(
    child: &mut Child,
    log: &Path,
    client: &reqwest::Client,
    url: &str,
    ready_status: reqwest::StatusCode,
) -> Result<Start, String> {
    let url = format!("{url}/v2/");
    let deadline = Deadline::after(START_TIMEOUT);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            if process::log_tail(log, 5).contains("address already in use") {
                return Ok(Start::PortTaken);
            }
            return Err(format!(
                "docker-registry exited during startup with {status}"
            ));
        }
        let last_error = match client.get(&url).send().await {
            Ok(r) if r.status() == ready_status => return Ok(Start::Ready),
            Ok(r) => format!("GET /v2/ answered {}", r.status()),
            Err(e) => format!("GET /v2/: {}", prepull::error_chain(&e)),
        };
        if deadline.expired() {
            return Err(format!(
                "docker-registry not ready after {START_TIMEOUT:?}: {last_error}"
            ));
        }
        deadline.tick().await;
    }
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
        let mut extra = render_security(&opts, dir.path());
        if let Some(remote) = &opts.proxy_remote {
            extra
                .1
                .push_str(&format!("proxy:\n  remoteurl: {}\n", yaml_str(remote)));
        }
        let bench_identity = opts.client_ca.as_ref().map(|ca| {
            ca.issue_client(
                "prepull bench",
                dir.path(),
                "bench-client.cert",
                "bench-client.key",
            )
        });
        let mut me = Registry {
            child: None,
            port: 0,
            log,
            storage,
            opts,
            bench_identity,
            push_side: None,
            extra_config: format!("{}{}", extra.0, extra.1),
            dir,
        };
        for _ in 0..PORT_ATTEMPTS {
            me.port = process::free_port();
            std::fs::write(&config, render_config(&me.storage, me.port, &extra))
                .expect("write registry config");
            let cmd = registry_command(&config);
            me.child = Some(process::spawn_logged(cmd, &me.log));
            match me.wait_ready().await {
                Start::Ready => {
                    if me.opts.client_ca.is_some() {
                        me.start_push_side(&config).await;
                    }
                    return me;
                }
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
        // With auth, `/v2/` answers 401 with the configured challenge once the registry is up.
        let ready_status = if self.has_auth() {
            reqwest::StatusCode::UNAUTHORIZED
        } else {
            reqwest::StatusCode::OK
        };
        let url = self.url();
        let child = self.child.as_mut().expect("the registry was spawned");
        match wait_until_ready(child, &self.log, &client, &url, ready_status).await {
            Ok(start) => start,
            Err(why) => self.fail(&why),
        }
    }

    /// Starts the plain-HTTP sibling on the same storage (see the module docs). `config` is the
    /// main instance's config file; the sibling's sits next to it.
    async fn start_push_side(&mut self, config: &Path) {
        let config = config.with_file_name("push-side.yml");
        let log = self.dir.path().join("push-side.log");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("build HTTP client");
        let no_security = (String::new(), String::new());
        for _ in 0..PORT_ATTEMPTS {
            let port = process::free_port();
            std::fs::write(&config, render_config(&self.storage, port, &no_security))
                .expect("write the push side's config");
            let mut child = process::spawn_logged(registry_command(&config), &log);
            let url = format!("http://127.0.0.1:{port}");
            let started =
                wait_until_ready(&mut child, &log, &client, &url, reqwest::StatusCode::OK).await;
            let mut sibling = Sibling {
                child: Some(child),
                port,
                log: log.clone(),
            };
            match started {
                Ok(Start::Ready) => {
                    self.push_side = Some(sibling);
                    return;
                }
                Ok(Start::PortTaken) => sibling.stop(),
                Err(why) => {
                    sibling.stop();
                    let tail = process::log_tail(&log, 25);
                    self.fail(&format!(
                        "push side: {why}\n--- tail of {} ---\n{tail}",
                        log.display()
                    ));
                }
            }
        }
        self.fail(&format!(
            "the push side could not bind a free port in {PORT_ATTEMPTS} attempts"
        ))
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

    /// The CA whose client certificates the registry accepts, when it requires them.
    pub fn client_ca(&self) -> Option<&TestCa> {
        self.opts.client_ca.as_ref()
    }

    pub fn has_auth(&self) -> bool {
        !self.opts.htpasswd.is_empty() || self.opts.token.is_some()
    }

    /// A reqwest builder that reaches this registry: no proxy, the test CA (only) as root when it
    /// serves TLS, and the bench's client certificate when it requires one. Carries no
    /// credentials.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let mut builder = reqwest::Client::builder().no_proxy();
        if let Some(ca) = &self.opts.tls {
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca.reqwest_certificate());
        }
        if let Some(identity) = &self.bench_identity {
            builder = builder.identity(identity.reqwest_identity());
        }
        builder
    }

    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("build HTTP client")
    }

    /// Where and how the bench pushes to this registry: the first htpasswd user, or push tokens
    /// minted directly with the token server's key (the token server sees no requests). A
    /// registry that requires client certificates is pushed to through its plain-HTTP sibling.
    pub fn push_target(&self) -> PushTarget {
        if let Some(side) = &self.push_side {
            return PushTarget::plain(&format!("127.0.0.1:{}", side.port));
        }
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

    /// Kills the registry (and its push side) now, for offline tests. Its storage stays until
    /// Drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_child(&mut child);
        }
        if let Some(side) = self.push_side.as_mut() {
            side.stop();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The registry's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Sibling {
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_child(&mut child);
        }
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
