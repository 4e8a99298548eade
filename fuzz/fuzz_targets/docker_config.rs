//! Docker credential files (`config.json`, `.dockerconfigjson`, legacy `.dockercfg`), read from
//! a file as prepull reads a pull secret or the node's file; then every key matched against
//! images the way the kubelet's keyring matches them.
//!
//! Checks: no panic and no runaway matching (a key's globs against a host); an entry comes from
//! a key of the file; no secret shows in a Debug print or a problem's message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prepull::credentials::{load_auth_file, Keyring, Secret};
use prepull_fuzz::{shows_secret, write_input};

fuzz_target!(|data: &[u8]| {
    let path = write_input("docker/config.json", data);
    let Ok((entries, problems)) = load_auth_file(&path) else {
        return;
    };
    let keys: Vec<String> = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| {
            let map = v.get("auths").unwrap_or(&v).as_object()?.clone();
            Some(map.keys().cloned().collect())
        })
        .unwrap_or_default();
    assert!(
        entries.len() <= keys.len(),
        "{} entries from {} keys",
        entries.len(),
        keys.len()
    );
    let shown_path = path.display().to_string();
    let mut allowed: Vec<&str> = keys.iter().map(String::as_str).collect();
    allowed.push(&shown_path);

    let printed = format!(
        "{entries:?} {}",
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (key, credential) in &entries {
        assert!(
            keys.contains(key),
            "entry for {key:?}, which the file does not have"
        );
        let secrets: Vec<&str> = match &credential.secret {
            Secret::Basic { password, .. } => vec![password],
            Secret::IdentityToken { token, .. } => vec![token],
            Secret::RegistryToken(token) => vec![token],
        };
        for secret in secrets {
            assert!(
                !shows_secret(&printed, secret, &allowed),
                "a secret of {key:?} shows in {printed:?}"
            );
        }
    }

    let count = entries.len();
    let mut keyring = Keyring::new();
    keyring.push_layer(entries);
    let mut images: Vec<String> = vec![
        "docker.io/library/busybox".into(),
        "registry.example.com:5000/team/app".into(),
        "a.b.c.d.e.f.g.h.i.j.example.com/x".into(),
    ];
    for (key, _) in keyring.keys().into_iter().take(8) {
        let host = key.split('/').next().unwrap_or("");
        images.push(format!(
            "{}/library/app",
            host.replace(['*', '?', '[', ']', '\\'], "x")
        ));
    }
    for image in &images {
        let found = keyring.lookup(image);
        let _ = keyring.near_misses(image);
        assert!(
            found.len() <= count,
            "{} credentials of {count}",
            found.len()
        );
    }
});
