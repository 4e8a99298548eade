//! Registry credentials: where they come from, how they match an image (exactly as the kubelet's
//! keyring matches), and how they stay out of every log line and Debug print.

mod dockerconfig;
mod keyring;
mod plugin;
mod reload;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

pub use dockerconfig::{load_auth_file, AuthFileError, Entries, Problem};
pub use keyring::{glob_match, Keyring};
pub(crate) use plugin::{go_duration, Answer as PluginAnswer};
pub use plugin::{PluginConfigError, Plugins, DEFAULT_TIMEOUT as DEFAULT_PLUGIN_TIMEOUT};
pub use reload::{CredentialConfig, LoadError, Loaded, Reloading};

/// A secret a registry accepts.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Secret {
    /// Username and password (or an access token used as a password).
    Basic {
        /// The username.
        username: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken` in a Docker config), exchanged at the token
    /// endpoint with a POST.
    IdentityToken {
        /// The username, if the config had one.
        username: String,
        /// The refresh token.
        token: String,
    },
    /// A bearer token sent to the registry as it is (`registrytoken` in a Docker config).
    RegistryToken(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Basic { username, .. } => write!(f, "Basic({username}:***)"),
            Secret::IdentityToken { username, .. } => write!(f, "IdentityToken({username}:***)"),
            Secret::RegistryToken(_) => f.write_str("RegistryToken(***)"),
        }
    }
}

/// One credential and where it came from (a file and key: never the secret).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    /// Where it came from, e.g. `/etc/prepull/config.json: auths["registry.example.com"]`.
    pub source: String,
    /// The secret.
    pub secret: Secret,
}

impl Credential {
    /// A stable identity for caches (tokens minted from it), changing when the secret changes,
    /// without keeping the secret in the key's text.
    pub fn id(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({} from {})", kind(&self.secret), self.source)
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn kind(s: &Secret) -> &'static str {
    match s {
        Secret::Basic { .. } => "username/password",
        Secret::IdentityToken { .. } => "identity token",
        Secret::RegistryToken(_) => "registry token",
    }
}

/// Gives the credentials to try for an image, best first.
pub trait CredentialSource: Send + Sync {
    /// Every credential matching `image` (`registry/repository`, normalized), in the order the
    /// kubelet would try them. Empty: pull anonymously.
    fn lookup(&self, image: &str) -> Vec<Arc<Credential>>;

    /// Why configured credentials do not apply to `image`, when some look meant for it.
    fn near_misses(&self, _image: &str) -> Vec<String> {
        Vec::new()
    }

    /// Changes whenever the credentials were reloaded, so tokens minted from older ones are
    /// dropped.
    fn generation(&self) -> u64 {
        0
    }
}

/// All credential sources of a run, in the order they are tried: explicit files (like pod pull
/// secrets), then credential-provider plugins, then the node's own file.
#[derive(Default)]
pub struct Sources {
    /// `--auth-file`s, in order.
    pub files: Keyring,
    /// The kubelet's credential-provider plugins.
    pub plugins: Option<Arc<Plugins>>,
    /// The node's credential file.
    pub node: Keyring,
}

impl CredentialSource for Sources {
    fn lookup(&self, image: &str) -> Vec<Arc<Credential>> {
        let mut out = self.files.lookup(image);
        if let Some(plugins) = &self.plugins {
            // Plugins are processes that may take a while: keep the async workers free.
            let run = || plugins.lookup(image);
            let multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            out.extend(if multi_thread {
                tokio::task::block_in_place(run)
            } else {
                run()
            });
        }
        out.extend(self.node.lookup(image));
        out
    }

    fn near_misses(&self, image: &str) -> Vec<String> {
        let mut out = self.files.near_misses(image);
        if let Some(plugins) = &self.plugins {
            out.extend(plugins.near_misses(image));
        }
        out.extend(self.node.near_misses(image));
        out
    }
}

impl CredentialSource for Keyring {
    fn lookup(&self, image: &str) -> Vec<Arc<Credential>> {
        Keyring::lookup(self, image)
    }

    fn near_misses(&self, image: &str) -> Vec<String> {
        Keyring::near_misses(self, image)
    }
}

/// The node's own credential files, in the kubelet's search order: `config.json` in the
/// kubelet's root dir, the working directory, `$HOME/.docker` and `/.docker`, then `.dockercfg`
/// in the kubelet's root dir, the working directory, `$HOME` and `/`. Like the kubelet, only
/// the first file that exists is used.
pub fn node_credential_files(kubelet_root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let mut out = vec![kubelet_root.join("config.json"), cwd.join("config.json")];
    if let Some(h) = &home {
        out.push(h.join(".docker").join("config.json"));
    }
    out.push(std::path::PathBuf::from("/.docker/config.json"));
    out.push(kubelet_root.join(".dockercfg"));
    out.push(cwd.join(".dockercfg"));
    if let Some(h) = &home {
        out.push(h.join(".dockercfg"));
    }
    out.push(std::path::PathBuf::from("/.dockercfg"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_secrets() {
        let creds = [
            Credential {
                source: "f: auths[\"r\"]".into(),
                secret: Secret::Basic {
                    username: "bob".into(),
                    password: "hunter2".into(),
                },
            },
            Credential {
                source: "f".into(),
                secret: Secret::IdentityToken {
                    username: "<token>".into(),
                    token: "refresh-s3cret".into(),
                },
            },
            Credential {
                source: "f".into(),
                secret: Secret::RegistryToken("bearer-s3cret".into()),
            },
        ];
        for c in &creds {
            let shown = format!("{c:?} {c} {:?}", c.secret);
            for secret in ["hunter2", "refresh-s3cret", "bearer-s3cret"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert_ne!(creds[0].id(), creds[1].id());
    }
}
