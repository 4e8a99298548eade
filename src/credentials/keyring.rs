//! The kubelet's keyring (`pkg/credentialprovider/keyring.go`), reproduced: how a registry key
//! from a Docker config matches an image.
//!
//! - A key gets `https://` if it has no scheme and is URL-parsed; a leading `/v1/` or `/v2/` of
//!   its path is dropped (`https://index.docker.io/v1/` is `index.docker.io`).
//! - Keys are tried in reverse lexical order (more specific first).
//! - A key matches an image when the ports are equal (no port only matches no port), the hosts
//!   have as many dot-separated labels, each label glob-matches (`*.example.com`), and the key's
//!   path is a plain string prefix of the image's path (`reg.io/foo` matches `reg.io/foobar`).
//! - Every matching credential is returned; Docker Hub images fall back to the
//!   `index.docker.io` entry.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Credential;

const DEFAULT_REGISTRY_KEY: &str = "index.docker.io";

/// Credentials by registry key, looked up like the kubelet does. Several keyrings (pod pull
/// secrets, then the node's) are chained by [`Keyring::extend`], keeping their order.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    /// Each layer is one source of keys (e.g. one secret or one node file), matched on its own
    /// and tried in order.
    layers: Vec<BTreeMap<String, Vec<Arc<Credential>>>>,
}

impl Keyring {
    /// An empty keyring: every image is pulled anonymously.
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// Adds a layer of `(registry key, credential)` entries, tried after the layers before it.
    pub fn push_layer(&mut self, entries: impl IntoIterator<Item = (String, Credential)>) {
        let mut layer: BTreeMap<String, Vec<Arc<Credential>>> = BTreeMap::new();
        for (key, credential) in entries {
            if let Some(k) = normalize_key(&key) {
                layer.entry(k).or_default().push(Arc::new(credential));
            }
        }
        self.layers.push(layer);
    }

    /// Appends another keyring's layers after this one's.
    pub fn extend(&mut self, other: Keyring) {
        self.layers.extend(other.layers);
    }

    /// Every key (normalized), with where its first credential came from, in trial order.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.layers
            .iter()
            .flat_map(|layer| layer.iter())
            .filter_map(|(key, creds)| creds.first().map(|c| (key.clone(), c.source.clone())))
            .collect()
    }

    /// Whether there are no credentials at all.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(BTreeMap::is_empty)
    }

    /// Every credential for `image` (`registry/repository`, normalized), in trial order.
    pub fn lookup(&self, image: &str) -> Vec<Arc<Credential>> {
        let mut out = Vec::new();
        for layer in &self.layers {
            let mut found: Vec<Arc<Credential>> = layer
                .iter()
                .rev()
                .filter(|(key, _)| urls_match(key, image))
                .flat_map(|(_, creds)| creds.iter().cloned())
                .collect();
            if found.is_empty() && is_default_registry(image) {
                if let Some(creds) = layer.get(DEFAULT_REGISTRY_KEY) {
                    found.extend(creds.iter().cloned());
                }
            }
            out.extend(found);
        }
        out
    }
}

impl Keyring {
    /// Keys that look meant for `image` but cannot match it, each with the reason: the same
    /// host with another port (or none), or the same host with a path that is not a prefix.
    pub fn near_misses(&self, image: &str) -> Vec<String> {
        let (target_host, target_port, target_path) = split(image);
        let mut out = Vec::new();
        for key in self.layers.iter().flat_map(BTreeMap::keys) {
            if urls_match(key, image) {
                continue;
            }
            let (host, port, path) = split(key);
            if host != target_host {
                continue;
            }
            let shown = |p: &str| {
                if p.is_empty() {
                    "no port".to_string()
                } else {
                    format!("port {p}")
                }
            };
            if port != target_port {
                out.push(format!(
                    "key {key:?} has {} but the image has {}: ports must match exactly",
                    shown(port),
                    shown(target_port)
                ));
            } else if !target_path.starts_with(path) {
                out.push(format!(
                    "key {key:?} is for path {path:?}, which {image} is not under"
                ));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// `https://index.docker.io/v1/` -> `index.docker.io`; `reg.io:5000/team` -> `reg.io:5000/team`.
pub(super) fn normalize_key(key: &str) -> Option<String> {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return None;
    }
    // Like url.Parse: no query or fragment in the path.
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = if path.starts_with("/v2/") || path.starts_with("/v1/") {
        &path[3..]
    } else {
        path
    };
    Some(if path.is_empty() || path == "/" {
        host.to_string()
    } else {
        format!("{host}{path}")
    })
}

fn split(url: &str) -> (Vec<&str>, &str, &str) {
    let (hostport, path) = match url.find('/') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (hostport, ""),
    };
    (host.split('.').collect(), port, path)
}

pub(super) fn urls_match(key: &str, image: &str) -> bool {
    let (glob_parts, glob_port, glob_path) = split(key);
    let (target_parts, target_port, target_path) = split(image);
    glob_port == target_port
        && glob_parts.len() == target_parts.len()
        && target_path.starts_with(glob_path)
        && glob_parts
            .iter()
            .zip(&target_parts)
            .all(|(g, t)| glob_match(g, t))
}

fn is_default_registry(image: &str) -> bool {
    let mut parts = image.splitn(2, '/');
    let first = parts.next().unwrap_or("");
    if first.is_empty() {
        return false;
    }
    match parts.next() {
        None => true,
        Some(_) => {
            first == "docker.io" || first == DEFAULT_REGISTRY_KEY || !first.contains(['.', ':'])
        }
    }
}

/// Go's `filepath.Match` on one host label: `*` (any run), `?` (one character), `[…]` classes
/// with ranges and `^` negation, `\` escapes. A malformed pattern matches nothing.
///
/// Linear in the label for each position of the pattern (one backtrack point, the last `*`, as
/// in the kubelet's matching), so a key with many `*` costs no more than the text times the
/// pattern: a credential key cannot make a lookup take exponential time.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let Some(p) = tokens(pattern) else {
        return false;
    };
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and where in the text it is taken to end now.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(Token::Star) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(token) if token.matches(t[ti]) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last `*` take one more character and go on from there.
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    pi = sp + 1;
                    ti = st + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|token| matches!(token, Token::Star))
}

/// One element of a label pattern.
enum Token {
    /// `*`
    Star,
    /// `?`
    Any,
    /// A character, escaped or not.
    Literal(char),
    /// `[…]`: inclusive ranges (a single character is a range of one), negated with `^`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Literal(l) => *l == c,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
            }
        }
    }
}

/// A pattern's tokens; `None` when it is malformed (Go's `ErrBadPattern`).
fn tokens(pattern: &str) -> Option<Vec<Token>> {
    let mut chars = pattern.chars().peekable();
    let mut out = Vec::new();
    while let Some(c) = chars.next() {
        out.push(match c {
            '*' => Token::Star,
            '?' => Token::Any,
            '\\' => Token::Literal(chars.next()?),
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                let mut ranges = Vec::new();
                loop {
                    if !ranges.is_empty() && chars.next_if_eq(&']').is_some() {
                        break;
                    }
                    let lo = class_char(&mut chars)?;
                    let hi = if chars.next_if_eq(&'-').is_some() {
                        class_char(&mut chars)?
                    } else {
                        lo
                    };
                    if hi < lo {
                        return None;
                    }
                    ranges.push((lo, hi));
                }
                Token::Class { negated, ranges }
            }
            c => Token::Literal(c),
        });
    }
    Some(out)
}

/// One character of a class: escaped with `\`, else anything but `-` and `]`.
fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    match chars.next()? {
        '\\' => chars.next(),
        '-' | ']' => None,
        c => Some(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;

    fn cred(name: &str) -> Credential {
        Credential {
            source: name.to_string(),
            secret: Secret::Basic {
                username: name.to_string(),
                password: "p".into(),
            },
        }
    }

    fn ring(keys: &[&str]) -> Keyring {
        let mut k = Keyring::new();
        k.push_layer(keys.iter().map(|key| (key.to_string(), cred(key))));
        k
    }

    fn found(k: &Keyring, image: &str) -> Vec<String> {
        k.lookup(image).iter().map(|c| c.source.clone()).collect()
    }

    #[test]
    fn normalizes_keys_like_the_kubelet() {
        assert_eq!(
            normalize_key("https://index.docker.io/v1/").as_deref(),
            Some("index.docker.io")
        );
        assert_eq!(
            normalize_key("http://reg.io:5000/v2/").as_deref(),
            Some("reg.io:5000")
        );
        assert_eq!(
            normalize_key("reg.io/team/").as_deref(),
            Some("reg.io/team/")
        );
        assert_eq!(
            normalize_key("reg.io/v2/team").as_deref(),
            Some("reg.io/team")
        );
        assert_eq!(normalize_key("reg.io/").as_deref(), Some("reg.io"));
        assert_eq!(normalize_key("https://"), None);
    }

    // Cases mirror the kubelet's keyring_test.go.
    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.kubernetes.io", "prefix.kubernetes.io/foo", true),
            ("*.kubernetes.io", "kubernetes.io/foo", false),
            ("*.*.kubernetes.io", "prefix.sub.kubernetes.io/foo", true),
            ("*.io", "kubernetes.io/foo", true),
            ("*.io", "k8s.kubernetes.io/foo", false),
            (
                "*-good.kubernetes.io",
                "prefix-good.kubernetes.io/foo",
                true,
            ),
            (
                "*-good.kubernetes.io",
                "prefix-bad.kubernetes.io/foo",
                false,
            ),
            ("prefix.*.io", "prefix.kubernetes.io/foo", true),
            ("prefix.*.io", "prefix.k8s.io/foo", true),
            (
                "*.kubernetes.io:1111",
                "prefix.kubernetes.io:1111/foo",
                true,
            ),
            (
                "*.kubernetes.io:1111",
                "prefix.kubernetes.io:2222/foo",
                false,
            ),
            ("*.kubernetes.io", "prefix.kubernetes.io:1111/foo", false),
            ("kubernetes.io:1111", "kubernetes.io/foo", false),
            ("reg.io/foo", "reg.io/foobar/baz", true),
            ("reg.io/foo", "reg.io/bar", false),
            ("reg.io/foo/bar", "reg.io/foo", false),
            (
                "registry.example.com",
                "registry.example.com/any/path",
                true,
            ),
            ("[a-c]reg.io", "breg.io/x", true),
            ("[^a-c]reg.io", "breg.io/x", false),
            ("r?g.io", "reg.io/x", true),
        ];
        for (key, image, want) in cases {
            assert_eq!(
                !found(&ring(&[key]), image).is_empty(),
                *want,
                "key {key} image {image}"
            );
        }
    }

    #[test]
    fn more_specific_keys_first_and_all_matches_returned() {
        let k = ring(&["reg.io", "reg.io/team", "*.io", "other.io"]);
        assert_eq!(
            found(&k, "reg.io/team/app"),
            ["reg.io/team", "reg.io", "*.io"]
        );
    }

    #[test]
    fn docker_hub_falls_back_to_the_index_entry() {
        let k = ring(&["https://index.docker.io/v1/"]);
        assert_eq!(
            found(&k, "docker.io/library/nginx"),
            ["https://index.docker.io/v1/"]
        );
        assert!(found(&k, "quay.io/x/y").is_empty());
        // A `docker.io` key matches directly.
        let k = ring(&["docker.io"]);
        assert_eq!(found(&k, "docker.io/library/nginx"), ["docker.io"]);
    }

    #[test]
    fn layers_keep_their_order() {
        let mut pod = ring(&["reg.io"]);
        let node = ring(&["reg.io/team"]);
        pod.extend(node);
        // Pod secrets first even though the node's key is more specific.
        assert_eq!(found(&pod, "reg.io/team/app"), ["reg.io", "reg.io/team"]);
    }

    #[test]
    fn near_misses_explain_why_a_key_does_not_apply() {
        let k = ring(&["localhost", "reg.io:443", "reg.io/other", "elsewhere.io"]);
        let m = k.near_misses("localhost:5000/app");
        assert_eq!(m.len(), 1);
        assert!(
            m[0].contains("\"localhost\"") && m[0].contains("port 5000"),
            "{m:?}"
        );
        let m = k.near_misses("reg.io/team/app");
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m.iter().any(|x| x.contains("port 443")));
        assert!(m.iter().any(|x| x.contains("/other")));
        assert!(k.near_misses("elsewhere.io/x").is_empty());
    }

    #[test]
    fn globs_match_as_go_does() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "anything", true),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*-good", "prefix-good", true),
            ("r?g", "reg", true),
            ("r?g", "rg", false),
            ("[a-c]reg", "breg", true),
            ("[^a-c]reg", "breg", false),
            ("[^a-c]reg", "dreg", true),
            ("[ab-]x", "ax", false),
            ("\\*x", "*x", true),
            ("\\*x", "ax", false),
            ("[", "[", false),
            ("[]", "]", false),
            ("[a", "a", false),
            ("ab\\", "ab", false),
            ("*a*a*a", "aaa", true),
            ("*a*a*a", "aa", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob_match(pattern, text), *want, "{pattern} vs {text}");
        }
    }

    #[test]
    fn many_stars_match_in_linear_time() {
        // Exponential backtracking took minutes on this; linear matching takes microseconds.
        let key = format!("{}.example.com", "*a".repeat(10) + "*b");
        let host = format!("{}.example.com/app", "a".repeat(60));
        let started = std::time::Instant::now();
        assert!(found(&ring(&[&key]), &host).is_empty());
        assert!(!glob_match(&"*a".repeat(30), &"a".repeat(29)));
        assert!(glob_match(&"*a".repeat(30), &"a".repeat(200)));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn ports_must_be_equal() {
        let k = ring(&["localhost:5000"]);
        assert_eq!(found(&k, "localhost:5000/a").len(), 1);
        assert!(found(&k, "localhost/a").is_empty());
        assert!(found(&k, "localhost:5001/a").is_empty());
    }
}
