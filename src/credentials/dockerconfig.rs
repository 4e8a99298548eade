//! Docker credential files: `config.json` / `.dockerconfigjson` (`{"auths": {...}}`), the legacy
//! `.dockercfg` (the `auths` map at the top level), and directories holding a mounted
//! Kubernetes pull secret.
//!
//! A broken entry is reported with the file, the registry key and the fix, and the valid
//! entries of the same file keep working. Secret values never appear in any message.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::{Credential, Secret};

/// A file that cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// Unreadable.
    #[error("cannot read credentials file {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not JSON, or JSON of another shape.
    #[error("credentials file {}: {message}", path.display())]
    Invalid {
        /// The path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// An entry that was skipped, and why (the other entries still count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// The registry key in `auths`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// Whether the entry is still used (a key that looks mistaken but is valid) or skipped.
    pub kept: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: auths[{:?}]: {}{}",
            self.path.display(),
            self.key,
            self.message,
            if self.kept { "" } else { " (entry skipped)" }
        )
    }
}

#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// `(registry key, credential)` pairs read from a file, in file order.
pub type Entries = Vec<(String, Credential)>;

/// Reads one credentials file or mounted-secret directory into entries, plus the entries it
/// had to skip.
pub fn load_auth_file(path: &Path) -> Result<(Entries, Vec<Problem>), AuthFileError> {
    let file = if path.is_dir() {
        secret_file(path)?
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|source| AuthFileError::Io {
        path: file.clone(),
        source,
    })?;
    let invalid = |message: String| AuthFileError::Invalid {
        path: file.clone(),
        message,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid(
            "is empty: the secret was created without data; recreate it with `kubectl create secret docker-registry`".into(),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "is not valid JSON ({e}); expected a Docker config with an \"auths\" map"
        ))
    })?;
    let serde_json::Value::Object(mut top) = value else {
        return Err(invalid(
            "is not a JSON object; expected a Docker config with an \"auths\" map".into(),
        ));
    };
    let auths = match top.remove("auths") {
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err(invalid("\"auths\" is not an object".into())),
        // Legacy .dockercfg: registry keys at the top level.
        None if top.values().all(|v| v.is_object()) => top,
        None => {
            return Err(invalid(
                "has no \"auths\" map: is it a Docker config.json / .dockerconfigjson?".into(),
            ))
        }
    };

    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (key, raw) in auths {
        let problem = |message: String| Problem {
            path: file.clone(),
            key: key.clone(),
            message,
            kept: false,
        };
        // serde's messages quote the values they reject, which here are secrets: say only
        // what kind of value was found.
        let shape = json_kind(&raw);
        let entry: Entry = match serde_json::from_value(raw) {
            Ok(e) => e,
            Err(_) => {
                problems.push(problem(format!(
                    "not a credentials entry ({shape}); expected an object with \"auth\", or \
                     \"username\" and \"password\", each a string"
                )));
                continue;
            }
        };
        let Some(normalized) = super::keyring::normalize_key(&key) else {
            problems.push(problem("the registry key is empty or has no host".into()));
            continue;
        };
        if let Some(advice) = docker_hub_habit(&normalized) {
            problems.push(Problem {
                kept: true,
                ..problem(advice)
            });
        }
        match secret_of(entry) {
            Ok(secret) => entries.push((
                key.clone(),
                Credential {
                    source: format!("{}: auths[{key:?}]", file.display()),
                    secret,
                },
            )),
            Err(message) => problems.push(problem(message)),
        }
    }
    Ok((entries, problems))
}

/// What a JSON value is, without its content: for messages about values that may be secret.
fn json_kind(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let odd: Vec<&str> = m
                .iter()
                .filter(|(_, v)| !v.is_string() && !v.is_null())
                .map(|(k, _)| k.as_str())
                .collect();
            if odd.is_empty() {
                "an object".to_string()
            } else {
                format!(
                    "an object whose {} not a string",
                    odd.join(", ") + if odd.len() == 1 { " is" } else { " are" }
                )
            }
        }
        serde_json::Value::String(_) => "a string".into(),
        serde_json::Value::Array(_) => "an array".into(),
        serde_json::Value::Number(_) => "a number".into(),
        serde_json::Value::Bool(_) => "a boolean".into(),
        serde_json::Value::Null => "null".into(),
    }
}

/// Docker Hub keys that can never match an image: the kubelet names Hub images `docker.io/…`
/// and falls back to the `index.docker.io` key alone, so Hub's API and web hosts, or a path
/// under `index.docker.io`, are never used for them.
fn docker_hub_habit(normalized: &str) -> Option<String> {
    const FIX: &str =
        "use \"https://index.docker.io/v1/\" (what `docker login` writes) or \"docker.io\"";
    let (host, path) = normalized
        .split_once('/')
        .map_or((normalized, ""), |(h, p)| (h, p));
    match host {
        "registry-1.docker.io"
        | "registry.hub.docker.com"
        | "hub.docker.com"
        | "auth.docker.io" => Some(format!(
            "{host} is one of Docker Hub's service hosts, which image names never use, so this \
             key never matches a Docker Hub image: {FIX}"
        )),
        "index.docker.io" if !path.is_empty() => Some(format!(
            "a path under index.docker.io never matches a Docker Hub image (only the bare host \
             is consulted for Hub): {FIX}, or \"docker.io/{path}\" to limit it to that path"
        )),
        _ => None,
    }
}

fn secret_of(e: Entry) -> Result<Secret, String> {
    if let Some(t) = e.registrytoken.filter(|t| !t.is_empty()) {
        return Ok(Secret::RegistryToken(t));
    }
    if let Some(t) = e.identitytoken.filter(|t| !t.is_empty()) {
        return Ok(Secret::IdentityToken {
            username: e.username.unwrap_or_default(),
            token: t,
        });
    }
    if let Some(auth) = e.auth.filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .or_else(|_| {
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(auth.trim().trim_end_matches('='))
            })
            .map_err(|_| {
                "\"auth\" is not valid base64; it must be base64(\"username:password\")".to_string()
            })?;
        let decoded = String::from_utf8(decoded).map_err(|_| {
            "\"auth\" does not decode to text; it must be base64(\"username:password\")".to_string()
        })?;
        let (username, password) = decoded.split_once(':').ok_or_else(|| {
            "\"auth\" decodes to a value without ':'; it must be base64(\"username:password\")"
                .to_string()
        })?;
        return Ok(Secret::Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    match (
        e.username.filter(|u| !u.is_empty()),
        e.password.filter(|p| !p.is_empty()),
    ) {
        (Some(username), Some(password)) => Ok(Secret::Basic { username, password }),
        (Some(_), None) => Err("has a username but no password".into()),
        _ => Err("has no credentials (set \"auth\", or \"username\" and \"password\")".into()),
    }
}

/// The file inside a mounted secret directory; a secret of the wrong type is named as such.
fn secret_file(dir: &Path) -> Result<PathBuf, AuthFileError> {
    for name in [".dockerconfigjson", ".dockercfg", "config.json"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let keys: BTreeMap<String, ()> = std::fs::read_dir(dir)
        .map_err(|source| AuthFileError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".."))
        .map(|n| (n, ()))
        .collect();
    let found: Vec<&str> = keys.keys().map(String::as_str).collect();
    Err(AuthFileError::Invalid {
        path: dir.to_path_buf(),
        message: format!(
            "holds no .dockerconfigjson or .dockercfg key (it has: {}); a pull secret must be of type \
             kubernetes.io/dockerconfigjson (create it with `kubectl create secret docker-registry`), \
             not Opaque",
            if found.is_empty() { "nothing".to_string() } else { found.join(", ") }
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn reads_every_entry_form_and_reports_bad_ones_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"{{"auths": {{
                "a.io": {{"auth": "{}"}},
                "b.io": {{"auth": "{}"}},
                "c.io": {{"username": "u", "password": "pw-c"}},
                "d.io": {{"identitytoken": "id-tok"}},
                "e.io": {{"registrytoken": "reg-tok"}},
                "f.io": {{"auth": "!!!notbase64"}},
                "g.io": {{"auth": "{}"}},
                "h.io": {{}},
                "i.io": {{"auth": "{}"}}
            }}}}"#,
            b64("alice:pw-a:with:colons"),
            b64("bob:pw-b").trim_end_matches('='),
            b64("nocolon-secret"),
            b64("x:")
        );
        let path = write(dir.path(), "config.json", &text);
        let (entries, problems) = load_auth_file(&path).unwrap();
        let by_key: BTreeMap<_, _> = entries
            .iter()
            .map(|(k, c)| (k.as_str(), &c.secret))
            .collect();
        assert_eq!(
            by_key["a.io"],
            &Secret::Basic {
                username: "alice".into(),
                password: "pw-a:with:colons".into()
            }
        );
        assert_eq!(
            by_key["b.io"],
            &Secret::Basic {
                username: "bob".into(),
                password: "pw-b".into()
            }
        );
        assert_eq!(
            by_key["c.io"],
            &Secret::Basic {
                username: "u".into(),
                password: "pw-c".into()
            }
        );
        assert!(matches!(by_key["d.io"], Secret::IdentityToken { .. }));
        assert_eq!(by_key["e.io"], &Secret::RegistryToken("reg-tok".into()));
        assert_eq!(
            by_key["i.io"],
            &Secret::Basic {
                username: "x".into(),
                password: "".into()
            }
        );
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["f.io", "g.io", "h.io"]);
        let all = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            all.contains("config.json") && all.contains("base64") && all.contains("without ':'"),
            "{all}"
        );
        assert!(
            !all.contains("nocolon-secret") && !all.contains(&b64("nocolon-secret")),
            "{all}"
        );
    }

    #[test]
    fn legacy_dockercfg_and_secret_directories() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("mounted");
        std::fs::create_dir(&secret).unwrap();
        write(
            &secret,
            ".dockercfg",
            &format!(r#"{{"reg.io:5000": {{"auth": "{}"}}}}"#, b64("u:p")),
        );
        let (entries, problems) = load_auth_file(&secret).unwrap();
        assert_eq!(entries[0].0, "reg.io:5000");
        assert!(
            entries[0]
                .1
                .source
                .ends_with(r#".dockercfg: auths["reg.io:5000"]"#),
            "{}",
            entries[0].1.source
        );
        assert!(problems.is_empty());
    }

    #[test]
    fn opaque_secret_and_empty_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let opaque = dir.path().join("opaque");
        std::fs::create_dir(&opaque).unwrap();
        write(&opaque, "username", "u");
        write(&opaque, "password", "p");
        let err = load_auth_file(&opaque).unwrap_err().to_string();
        assert!(
            err.contains("Opaque")
                && err.contains("kubernetes.io/dockerconfigjson")
                && err.contains("password, username"),
            "{err}"
        );

        let empty = write(dir.path(), "empty.json", "\n");
        let err = load_auth_file(&empty).unwrap_err().to_string();
        assert!(err.contains("empty") && err.contains("empty.json"), "{err}");

        let garbage = write(dir.path(), "g.json", "{not json");
        assert!(load_auth_file(&garbage)
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        let other = write(dir.path(), "o.json", r#"{"credsStore": "desktop"}"#);
        assert!(load_auth_file(&other)
            .unwrap_err()
            .to_string()
            .contains("no \"auths\""));
    }

    #[test]
    fn docker_hub_keys_that_never_match_are_kept_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let auth = b64("u:p");
        let file = write(
            dir.path(),
            "hub.json",
            &format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                    "docker.io": {{"auth": "{auth}"}},
                    "registry-1.docker.io": {{"auth": "{auth}"}},
                    "index.docker.io/team": {{"auth": "{auth}"}}
                }}}}"#
            ),
        );
        let (entries, problems) = load_auth_file(&file).unwrap();
        assert_eq!(entries.len(), 4, "every entry is still usable");
        let flagged: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(flagged, ["index.docker.io/team", "registry-1.docker.io"]);
        assert!(problems.iter().all(|p| p.kept));
        let shown = problems[1].to_string();
        assert!(
            shown.contains("hub.json")
                && shown.contains("registry-1.docker.io")
                && shown.contains("https://index.docker.io/v1/")
                && !shown.contains("skipped"),
            "{shown}"
        );
        assert!(problems[0].to_string().contains("docker.io/team"));
    }

    #[test]
    fn entries_of_the_wrong_shape_are_reported_without_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "shapes.json",
            r#"{"auths": {"a.io": "dXNlcjpodW50ZXIy", "b.io": {"auth": ["c2VjcmV0LXZhbHVl"]}}}"#,
        );
        let (entries, problems) = load_auth_file(&file).unwrap();
        assert!(entries.is_empty());
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(shown[0].contains("a string"), "{shown:?}");
        assert!(shown[1].contains("auth is not a string"), "{shown:?}");
        for s in &shown {
            assert!(
                !s.contains("dXNlcjpodW50ZXIy") && !s.contains("c2VjcmV0LXZhbHVl"),
                "{s}"
            );
        }
    }
}
