//! A real docker-registry (distribution 2.8) on a free loopback port, with filesystem storage in a
//! temp dir, deletes enabled and no auth. Stopped and cleaned up on Drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::process::{self, Deadline};

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Another process may take the port between our probe and the registry's bind.
const PORT_ATTEMPTS: usize = 5;

pub struct Registry {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    storage: PathBuf,
    dir: process::BenchDir,
}

/// docker-registry's YAML config for one instance.
fn render_config(storage: &Path, port: u16) -> String {
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
"#,
        storage = storage.display()
    )
}

enum Start {
    Ready,
    PortTaken,
}

impl Registry {
    pub async fn start() -> Registry {
        let dir = process::tempdir("bench-registry-");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("create registry storage dir");
        let config = dir.path().join("config.yml");
        let log = dir.path().join("registry.log");
        let mut me = Registry {
            child: None,
            port: 0,
            log,
            storage,
            dir,
        };
        for _ in 0..PORT_ATTEMPTS {
            me.port = process::free_port();
            std::fs::write(&config, render_config(&me.storage, me.port))
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
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("build HTTP client");
        let url = format!("{}/v2/", self.url());
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
                Ok(r) if r.status() == reqwest::StatusCode::OK => return Start::Ready,
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

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
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
