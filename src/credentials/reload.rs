//! Credentials that follow their files: mounted pull secrets, the node's config and the
//! credential-provider config are re-read when they change on disk.
//!
//! A change shows in the files' [`Fingerprint`] (Kubernetes swaps a mounted secret's `..data`
//! symlink), which is checked at most once per interval on lookup; when they differ, every source is loaded again and replaces the old
//! one at once. A reload that fails (a half-edited file) keeps the previous credentials and says
//! why. Each reload bumps [`CredentialSource::generation`], which tells the registry client to
//! drop tokens minted from the old credentials.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{
    load_auth_file, node_credential_files, AuthFileError, Credential, CredentialSource, Keyring,
    PluginConfigError, Plugins, Problem, Sources,
};
use crate::watch::Fingerprint;

/// Where a run's credentials come from.
#[derive(Clone, Debug, Default)]
pub struct CredentialConfig {
    /// Docker config files or mounted pull-secret directories, tried first, in order.
    pub auth_files: Vec<PathBuf>,
    /// The kubelet's `CredentialProviderConfig` and the plugins' directory.
    pub plugins: Option<(PathBuf, PathBuf)>,
    /// How long a plugin may run.
    pub plugin_timeout: Option<Duration>,
    /// The kubelet's root directory, to find the node's own credential file; `None` ignores
    /// the node's files.
    pub kubelet_root: Option<PathBuf>,
    /// A long-running agent keeps going when a named file cannot be used (an optional secret
    /// not created yet, a broken edit): the file is reported in [`Loaded::unusable`] and
    /// skipped until it changes. Otherwise such a file is an error.
    pub lenient: bool,
}

/// A source that cannot be loaded at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A named credentials file or secret directory.
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    /// The credential-provider config.
    #[error(transparent)]
    Plugins(#[from] PluginConfigError),
}

/// What loading found besides the credentials: entries skipped or kept with a warning.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Problems with entries, each naming the file, the key and the fix.
    pub problems: Vec<Problem>,
    /// The node file in use, if any.
    pub node_file: Option<PathBuf>,
    /// Why the node's file was ignored (it is not named by the operator, so it cannot stop a
    /// run).
    pub node_error: Option<String>,
    /// Named sources skipped in lenient mode, each with why.
    pub unusable: Vec<String>,
    /// What each named source gave, for keeping it when a later update cannot be read.
    kept: Kept,
}

/// The last good contents of each named source.
#[derive(Clone, Debug, Default)]
struct Kept {
    files: std::collections::HashMap<PathBuf, super::Entries>,
    plugins: Option<Arc<Plugins>>,
}

impl CredentialConfig {
    /// Reads every source once. A file named in `auth_files` or the plugin config that cannot
    /// be used is an error; a bad entry inside a file is reported in [`Loaded::problems`] and
    /// skipped; a broken node file is reported and ignored.
    pub fn load(&self) -> Result<(Sources, Loaded), LoadError> {
        self.load_keeping(&Kept::default())
    }

    /// [`CredentialConfig::load`]; in lenient mode, a named source that cannot be read now
    /// keeps what it gave before (a broken update never takes working credentials away).
    fn load_keeping(&self, before: &Kept) -> Result<(Sources, Loaded), LoadError> {
        let mut loaded = Loaded::default();
        let mut files = Keyring::new();
        for file in &self.auth_files {
            match load_auth_file(file) {
                Ok((entries, problems)) => {
                    loaded.problems.extend(problems);
                    loaded.kept.files.insert(file.clone(), entries.clone());
                    files.push_layer(entries);
                }
                Err(e) if self.lenient => {
                    let mut why = crate::error_chain(&e);
                    if let Some(entries) = before.files.get(file) {
                        why.push_str("; keeping the credentials it held before");
                        loaded.kept.files.insert(file.clone(), entries.clone());
                        files.push_layer(entries.clone());
                    }
                    loaded.unusable.push(why);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let plugins = match &self.plugins {
            Some((config, bin_dir)) => match Plugins::load(config, bin_dir) {
                Ok(p) => Some(Arc::new(match self.plugin_timeout {
                    Some(t) => p.with_timeout(t),
                    None => p,
                })),
                Err(e) if self.lenient => {
                    let mut why = crate::error_chain(&e);
                    if before.plugins.is_some() {
                        why.push_str("; keeping the plugin configuration loaded before");
                    }
                    loaded.unusable.push(why);
                    before.plugins.clone()
                }
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        loaded.kept.plugins = plugins.clone();
        let mut node = Keyring::new();
        // Like the kubelet, only the first node file that exists is used.
        if let Some(file) = self.node_candidates().into_iter().find(|p| p.is_file()) {
            match load_auth_file(&file) {
                Ok((entries, problems)) => {
                    loaded.problems.extend(problems);
                    node.push_layer(entries);
                }
                Err(e) => {
                    loaded.node_error = Some(crate::error_chain(&e));
                }
            }
            loaded.node_file = Some(file);
        }
        Ok((
            Sources {
                files,
                plugins,
                node,
            },
            loaded,
        ))
    }

    fn node_candidates(&self) -> Vec<PathBuf> {
        self.kubelet_root
            .as_deref()
            .map(node_credential_files)
            .unwrap_or_default()
    }

    /// What identifies the current contents of every input.
    fn fingerprint(&self) -> Fingerprint {
        let mut paths: Vec<PathBuf> = self.auth_files.clone();
        if let Some((config, _)) = &self.plugins {
            paths.push(config.clone());
        }
        paths.extend(self.node_candidates());
        Fingerprint::of(&paths)
    }
}

struct Current {
    sources: Arc<Sources>,
    fingerprint: Fingerprint,
    kept: Kept,
}

/// [`Sources`] that reload when their files change.
pub struct Reloading {
    config: CredentialConfig,
    check_every: Duration,
    current: RwLock<Current>,
    /// When the files were last looked at; held while one lookup checks them.
    checked: Mutex<Instant>,
    generation: AtomicU64,
}

impl Reloading {
    /// Loads `config` now (errors stop the caller) and checks its files again at most every
    /// `check_every` on lookup.
    pub fn new(
        config: CredentialConfig,
        check_every: Duration,
    ) -> Result<(Reloading, Loaded), LoadError> {
        let fingerprint = config.fingerprint();
        let (sources, loaded) = config.load()?;
        Ok((
            Reloading {
                config,
                check_every,
                current: RwLock::new(Current {
                    sources: Arc::new(sources),
                    fingerprint,
                    kept: loaded.kept.clone(),
                }),
                checked: Mutex::new(Instant::now()),
                generation: AtomicU64::new(0),
            },
            loaded,
        ))
    }

    /// The sources in use, reloaded first if their files changed.
    fn sources(&self) -> Arc<Sources> {
        self.maybe_reload();
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .sources
            .clone()
    }

    fn maybe_reload(&self) {
        // One lookup checks; the others use what is loaded meanwhile.
        let Ok(mut checked) = self.checked.try_lock() else {
            return;
        };
        if checked.elapsed() < self.check_every {
            return;
        }
        *checked = Instant::now();
        let fingerprint = self.config.fingerprint();
        let unchanged = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .fingerprint
            == fingerprint;
        if unchanged {
            return;
        }
        let before = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .kept
            .clone();
        match self.config.load_keeping(&before) {
            Ok((sources, loaded)) => {
                for problem in &loaded.problems {
                    tracing::warn!(problem = %problem, "credentials entry");
                }
                if let Some(e) = &loaded.node_error {
                    tracing::warn!(error = %e, "ignoring node credentials");
                }
                for e in &loaded.unusable {
                    tracing::warn!(error = %e, "skipping a credentials source until it changes");
                }
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Current {
                    sources: Arc::new(sources),
                    fingerprint,
                    kept: loaded.kept,
                };
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                tracing::info!(generation, "credentials changed on disk; reloaded");
            }
            Err(e) => {
                // Keep what works; the next check tries again, since the stamp is not taken.
                tracing::warn!(
                    error = %crate::error_chain(&e),
                    "credentials changed on disk but cannot be loaded; keeping the previous ones"
                );
            }
        }
    }
}

impl CredentialSource for Reloading {
    fn lookup(&self, image: &str) -> Vec<Arc<Credential>> {
        self.sources().lookup(image)
    }

    fn near_misses(&self, image: &str) -> Vec<String> {
        self.sources().near_misses(image)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use std::path::Path;

    fn secret_json(user: &str, password: &str) -> String {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!(r#"{{"auths":{{"reg.example":{{"auth":"{auth}"}}}}}}"#)
    }

    /// Lays out a secret volume the way the kubelet does: a timestamped directory, `..data`
    /// pointing at it, and the key as a symlink through `..data`.
    fn mount_secret(dir: &Path, version: &str, text: &str) {
        let data = dir.join(format!("..{version}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join(".dockerconfigjson"), text).unwrap();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        let key = dir.join(".dockerconfigjson");
        if std::fs::symlink_metadata(&key).is_err() {
            std::os::unix::fs::symlink("..data/.dockerconfigjson", &key).unwrap();
        }
    }

    fn user_of(source: &Reloading) -> String {
        let found = source.lookup("reg.example/app");
        assert_eq!(found.len(), 1, "{found:?}");
        match &found[0].secret {
            super::super::Secret::Basic { username, .. } => username.clone(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_swapped_data_symlink_is_picked_up_and_a_broken_update_keeps_the_old_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pull-secret");
        std::fs::create_dir(&secret).unwrap();
        mount_secret(
            &secret,
            "2026_11_22_10_00_00.1",
            &secret_json("alice", "pw-a"),
        );
        let config = CredentialConfig {
            auth_files: vec![secret.clone()],
            ..Default::default()
        };
        let (source, loaded) = Reloading::new(config, Duration::ZERO).unwrap();
        assert!(loaded.problems.is_empty());
        assert_eq!(user_of(&source), "alice");
        assert_eq!(source.generation(), 0);
        // Nothing changed: no reload.
        assert_eq!(user_of(&source), "alice");
        assert_eq!(source.generation(), 0);

        mount_secret(
            &secret,
            "2026_11_22_10_05_00.2",
            &secret_json("bob", "pw-b"),
        );
        assert_eq!(user_of(&source), "bob");
        assert_eq!(source.generation(), 1);

        // A broken update keeps bob, and is retried until it is fixed.
        mount_secret(&secret, "2026_11_22_10_10_00.3", "{not json");
        assert_eq!(user_of(&source), "bob");
        assert_eq!(source.generation(), 1);
        mount_secret(
            &secret,
            "2026_11_22_10_15_00.4",
            &secret_json("carol", "pw-c"),
        );
        assert_eq!(user_of(&source), "carol");
        assert_eq!(source.generation(), 2);
    }

    #[test]
    fn lenient_mode_skips_an_unusable_named_file_until_it_is_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("optional-secret");
        std::fs::create_dir(&secret).unwrap();
        let config = CredentialConfig {
            auth_files: vec![secret.clone()],
            ..Default::default()
        };
        assert!(Reloading::new(config.clone(), Duration::ZERO).is_err());
        let (source, loaded) = Reloading::new(
            CredentialConfig {
                lenient: true,
                ..config
            },
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(loaded.unusable.len(), 1, "{loaded:?}");
        assert!(loaded.unusable[0].contains("optional-secret"), "{loaded:?}");
        assert!(source.lookup("reg.example/app").is_empty());
        mount_secret(
            &secret,
            "2026_11_22_10_00_00.1",
            &secret_json("alice", "pw-a"),
        );
        assert_eq!(user_of(&source), "alice");
        // A broken update keeps alice, here too.
        mount_secret(&secret, "2026_11_22_10_05_00.2", "{not json");
        assert_eq!(user_of(&source), "alice");
        mount_secret(
            &secret,
            "2026_11_22_10_10_00.3",
            &secret_json("bob", "pw-b"),
        );
        assert_eq!(user_of(&source), "bob");
    }

    #[test]
    fn files_are_checked_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, secret_json("alice", "pw-a")).unwrap();
        let config = CredentialConfig {
            auth_files: vec![file.clone()],
            ..Default::default()
        };
        let (source, _) = Reloading::new(config, Duration::from_secs(3600)).unwrap();
        std::fs::write(&file, secret_json("bob", "pw-bob-longer")).unwrap();
        assert_eq!(
            user_of(&source),
            "alice",
            "not checked again within the hour"
        );
    }
}
