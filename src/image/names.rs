//! The names CRI's own pull gives an image's records, which the kubelet looks images up by: the
//! tag (when pulled by tag), the digest reference (`repository@<top digest>`) and the image ID
//! (the config digest, `sha256:…`).

use crate::digest::Digest;
use crate::reference::{Reference, Target};

/// The record names CRI gives an image pulled as `reference`, tag first: the tag (if pulled by
/// tag), the digest reference and the image ID.
pub fn record_names(reference: &Reference, top: &Digest, config: &Digest) -> Vec<String> {
    let mut names = Vec::with_capacity(3);
    if let Target::Tag(_) = reference.target() {
        names.push(reference.to_string());
    }
    names.push(digest_name(reference, top));
    names.push(config.to_string());
    names
}

/// The digest reference: `reference`'s repository at `top`.
pub fn digest_name(reference: &Reference, top: &Digest) -> String {
    reference.with_digest(top.clone()).to_string()
}

/// Whether a record name is an image ID (`sha256:<config>`), not a reference.
pub fn is_id(name: &str) -> bool {
    name.starts_with("sha256:")
}

/// Whether a record name is a digest reference (`repository@sha256:…`).
pub fn is_digest_reference(name: &str) -> bool {
    name.contains('@')
}

/// Orders an image's record names as they are shown: tags, then digest references, then the ID.
pub fn display_order(name: &str) -> (bool, bool, String) {
    (is_id(name), is_digest_reference(name), name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_match_cri() {
        let top = Digest::sha256(b"top");
        let config = Digest::sha256(b"config");
        let by_tag = Reference::parse("reg:5000/app:v1").unwrap();
        assert_eq!(
            record_names(&by_tag, &top, &config),
            vec![
                "reg:5000/app:v1".to_string(),
                format!("reg:5000/app@{top}"),
                config.to_string()
            ]
        );
        let by_digest = Reference::parse(&format!("reg:5000/app@{top}")).unwrap();
        assert_eq!(
            record_names(&by_digest, &top, &config),
            vec![format!("reg:5000/app@{top}"), config.to_string()]
        );
    }

    #[test]
    fn names_are_told_apart_and_ordered_tags_first() {
        let mut names = vec!["sha256:cfg", "reg/app@sha256:top", "reg/app:v1"];
        names.sort_by_key(|n| display_order(n));
        assert_eq!(names, ["reg/app:v1", "reg/app@sha256:top", "sha256:cfg"]);
        assert!(is_id("sha256:cfg") && !is_id("reg/app:v1"));
    }
}
