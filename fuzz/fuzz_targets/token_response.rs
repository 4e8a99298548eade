//! A token server's answer to a token request (`{"token": …, "expires_in": …}`), read as the
//! bearer flow reads it.
//!
//! Checks: no panic (a negative or huge `expires_in` is no lifetime, not an overflow); a token
//! read is never empty and is refreshed within the 60 s to one day the flow allows.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prepull::fuzzing::token_response;
use prepull::registry::Realm;

fuzz_target!(|data: &[u8]| {
    let realm = Realm {
        realm: "https://auth.example/token".into(),
        service: Some("registry.example".into()),
    };
    match token_response("registry.example", &realm, data) {
        Ok((header, lifetime)) => {
            let token = header.strip_prefix("Bearer ").expect("a Bearer header");
            assert!(!token.is_empty());
            assert!(
                lifetime >= Duration::from_secs(54) && lifetime <= Duration::from_secs(77_760),
                "{lifetime:?}"
            );
        }
        Err(e) => {
            let _ = prepull::error_chain(&e);
        }
    }
});
