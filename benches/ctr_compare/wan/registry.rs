//! The docker-registry inside the WAN's namespace: its config on the bench registry's storage,
//! its start (ready once it answers over the link) and the round trip the clients see.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::Wan;
use crate::command::tail;
use crate::proc::find_pid;
use crate::results::median;

impl Wan {
    /// Starts docker-registry inside the namespace on `storage` (the bench registry's), and
    /// waits until it answers.
    pub(super) async fn start_registry(&mut self, storage: &Path) -> anyhow::Result<()> {
        let config = self.dir.path().join("config.yml");
        let secret = hex::encode(rand::random::<[u8; 16]>());
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: \"{}\"\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: \"{}:{}\"\n  secret: \"{secret}\"\n",
                storage.display(),
                self.addr_registry,
                self.port
            ),
        )
        .context("write the WAN registry's config")?;
        let log = std::fs::File::create(self.dir.path().join("registry.log"))
            .context("create the WAN registry's log")?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "docker-registry", "serve"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone a log handle")?)
            .stderr(log);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        self.registry = Some(
            cmd.spawn()
                .context("start docker-registry in the namespace")?,
        );
        self.wait_ready().await?;
        self.registry_pid = find_pid("docker-registry", self.dir.path());
        Ok(())
    }

    /// Waits until the registry answers `GET /v2/` over the link; fails if it exits first or
    /// does not answer within 30 s.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let url = format!("http://{}/v2/", self.host());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .registry
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "docker-registry in {} exited with {status}: {}",
                    self.netns,
                    tail(
                        &std::fs::read_to_string(self.dir.path().join("registry.log"))
                            .unwrap_or_default(),
                        10
                    )
                );
            }
            match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(r) => bail!("WAN registry answers GET /v2/ with {}", r.status()),
                Err(e) => bail!("WAN registry not reachable at {url}: {e}"),
            }
        }
        Ok(())
    }

    /// Median time of small HTTP requests on one kept-alive connection: the RTT the clients see.
    pub(super) async fn measure_rtt(&self) -> anyhow::Result<Duration> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let url = format!("http://{}/v2/", self.host());
        client.get(&url).send().await?.bytes().await?;
        let mut samples = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            client.get(&url).send().await?.bytes().await?;
            samples.push(started.elapsed().as_secs_f64());
        }
        Ok(Duration::from_secs_f64(median(&samples).unwrap_or(0.0)))
    }

    /// `ADDR:PORT` of the registry inside the namespace.
    pub fn host(&self) -> String {
        format!("{}:{}", self.addr_registry, self.port)
    }
}
