//! `WWW-Authenticate` headers of a 401 (one header per input line): parsing never panics, a
//! Bearer realm is taken only from a Bearer challenge with a realm, and the challenges written
//! back as one header parse to the same challenges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prepull::registry::challenge::{self, Challenge};
use prepull::registry::Realm;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let challenges = challenge::parse(text.split('\n'));
    for c in &challenges {
        assert!(!c.scheme.is_empty());
        assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
        assert!(c.params.keys().all(|k| *k == k.to_ascii_lowercase()));
        match Realm::from_challenge(c) {
            Some(realm) => {
                assert_eq!(c.scheme, "bearer");
                assert_eq!(Some(realm.realm.as_str()), c.param("realm"));
                assert_eq!(realm.service.as_deref(), c.param("service"));
            }
            None => assert!(c.scheme != "bearer" || c.param("realm").is_none()),
        }
    }
    let written = challenges.iter().map(write).collect::<Vec<_>>().join(", ");
    assert_eq!(
        challenge::parse([written.as_str()]),
        challenges,
        "{text:?} written back as {written:?}"
    );
});

/// A challenge as a registry would write it: every parameter quoted.
fn write(c: &Challenge) -> String {
    let mut out = c.scheme.clone();
    for (i, (key, value)) in c.params.iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        out.push_str(key);
        out.push_str("=\"");
        for ch in value.chars() {
            if ch == '"' || ch == '\\' {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
    out
}
