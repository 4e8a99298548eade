//! Step 1: the image name as the kubelet asks for it.

use super::{Step, Verdict};
use crate::reference::{Reference, Target};

/// The reference `image` names, normalized as the kubelet normalizes it, and the step saying so.
pub fn check(image: &str) -> (Option<Reference>, Step) {
    let reference = match Reference::parse(image) {
        Ok(r) => r,
        Err(e) => {
            let step = Step::found(
                "reference",
                Verdict::Fail,
                "bad-reference",
                format!("{image:?} is not an image name: {e}"),
                "write it as [registry/]repository[:tag|@sha256:digest], as in the pod's spec",
            );
            return (None, step);
        }
    };
    let mut details = Vec::new();
    let last = image.rsplit('/').next().unwrap_or(image);
    if !last.contains(':') && !last.contains('@') {
        details.push("no tag given: the kubelet asks for :latest".to_string());
    }
    if reference.to_string() != image {
        details.push(format!(
            "{image} is {reference} for the kubelet and containerd"
        ));
    }
    let step = match reference.target() {
        Target::Tag(tag) if tag == "latest" => Step::found(
            "reference",
            Verdict::Warning,
            "latest-tag",
            format!("{reference}"),
            "a pod using a :latest image gets imagePullPolicy: Always unless it sets one: it goes \
             to the registry at every start, pre-pulled or not; use a fixed tag or a digest, or \
             set imagePullPolicy: IfNotPresent",
        ),
        _ => Step::ok("reference", reference.to_string()),
    };
    (Some(reference), step.with_details(details))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_latest_is_explained() {
        let (r, step) = check("nginx");
        assert_eq!(r.unwrap().to_string(), "docker.io/library/nginx:latest");
        assert_eq!(step.cause, Some("latest-tag"));
        assert!(step.details.iter().any(|d| d.contains("no tag given")));
        let (_, step) = check("registry.example.com/app:1.4");
        assert_eq!(step.status, Verdict::Ok);
        let (r, step) = check("Bad Name");
        assert!(r.is_none());
        assert_eq!(step.cause, Some("bad-reference"));
    }
}
