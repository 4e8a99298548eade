//! Image references as written in a pod spec or the prepull list: parsing never panics, and a
//! parsed reference prints as text that parses back to the same reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prepull::digest::Digest;
use prepull::reference::{Reference, Target};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(reference) = Reference::parse(text) else {
        return;
    };
    let shown = reference.to_string();
    let again = Reference::parse(&shown)
        .unwrap_or_else(|e| panic!("{text:?} parsed to {shown:?}, which does not parse: {e}"));
    assert_eq!(again, reference, "{text:?} -> {shown:?}");
    assert_eq!(again.to_string(), shown);

    // Normalized as the kubelet normalizes: no legacy Hub host, Hub images under a namespace,
    // a lowercase repository, and the name is the registry and repository.
    assert_ne!(reference.registry(), "index.docker.io");
    if reference.registry() == "docker.io" {
        assert!(reference.repository().contains('/'), "{shown}");
    }
    assert!(!reference
        .repository()
        .bytes()
        .any(|b| b.is_ascii_uppercase()));
    assert_eq!(
        reference.name(),
        format!("{}/{}", reference.registry(), reference.repository())
    );
    match reference.target() {
        Target::Tag(tag) => assert!(shown.ends_with(&format!(":{tag}"))),
        Target::Digest(digest) => assert!(shown.ends_with(&format!("@{digest}"))),
    }

    // The same repository pinned to a digest, as the pull records it, round-trips too.
    let pinned = reference.with_digest(Digest::sha256(data));
    assert_eq!(Reference::parse(&pinned.to_string()), Ok(pinned));
});
