//! What a kubelet credential-provider plugin prints (`CredentialProviderResponse` JSON), read
//! as prepull reads it after the plugin exits: checked, its `cacheDuration` parsed as Go parses
//! durations, its `auth` keys matched against the image.
//!
//! Checks: no panic (an out-of-range `cacheDuration` once panicked); the cache time fits the
//! clock; the cache key is the one `cacheKeyType` names; no password shows in a Debug print.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use prepull::credentials::Secret;
use prepull::fuzzing::credential_provider_response;
use prepull_fuzz::shows_secret;

const IMAGES: &[&str] = &[
    "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app",
    "us-docker.pkg.dev/project/repo/app",
    "registry.example:5000/app",
];
const DEFAULT_CACHE: Duration = Duration::from_secs(600);

fuzz_target!(|data: &[u8]| {
    // Lossy: the reader skips fields it does not know without looking at their text.
    let response = serde_json::from_str::<serde_json::Value>(&String::from_utf8_lossy(data)).ok();
    for image in IMAGES {
        let Ok((cache_key, ttl, credentials)) =
            credential_provider_response(data, image, DEFAULT_CACHE)
        else {
            continue;
        };
        let response = response.as_ref().expect("what was read is JSON");
        let expected_key = match response["cacheKeyType"].as_str() {
            Some("Image") => image.to_string(),
            Some("Registry") => image.split('/').next().unwrap_or("").to_string(),
            Some("Global") => String::new(),
            other => panic!("read with cacheKeyType {other:?}"),
        };
        assert_eq!(cache_key, expected_key);
        if response
            .get("cacheDuration")
            .is_none_or(serde_json::Value::is_null)
        {
            assert_eq!(ttl, DEFAULT_CACHE);
        }
        // What the cache does with it.
        let _ = Instant::now().checked_add(ttl);
        assert!(ttl <= Duration::from_secs(9_223_372_036));

        let keys: Vec<&str> = response["auth"]
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert!(credentials.len() <= keys.len().max(1));
        let printed = format!("{credentials:?}");
        for credential in &credentials {
            if let Secret::Basic { password, .. } = &credential.secret {
                assert!(!shows_secret(&printed, password, &keys), "{printed}");
            }
        }
    }
});
