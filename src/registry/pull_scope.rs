//! Credentials looked up once per host and pull, as containerd looks them up once per host of a
//! pull and the kubelet once per image.
//!
//! A pull makes several requests (a `HEAD`, manifests, the config, every layer), some at once.
//! Looking credentials up for each would run a credential-provider plugin per request (always,
//! with `cacheDuration: 0s`, and again for every request when it fails). While a [`PullScope`]
//! for an image is held, the first request to each host looks its credentials up and the
//! others, concurrent ones included, wait for and reuse that answer; the next pull asks afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::credentials::Credential;

/// What one lookup found: every matching credential, best first.
type Found = Vec<Arc<Credential>>;

/// The credentials of the pulls under way, per image name (`registry/repository`).
#[derive(Default)]
pub(super) struct PullCredentials {
    pulls: Mutex<HashMap<String, Pull>>,
}

#[derive(Default)]
struct Pull {
    /// Scopes held for this image (concurrent pulls of one image share the answers).
    holders: usize,
    /// Per lookup name (the registry's `registry/repository`, or a mirror's `host/repository`).
    found: HashMap<String, Arc<OnceCell<Found>>>,
}

impl PullCredentials {
    /// Starts a scope for `image`.
    pub(super) fn begin(self: &Arc<Self>, image: String) -> PullScope {
        self.lock().entry(image.clone()).or_default().holders += 1;
        PullScope {
            pulls: self.clone(),
            image,
        }
    }

    /// The credentials for `lookup` during a pull of `image`: looked up by `look` once per
    /// scope, or on every call when no scope is held.
    pub(super) async fn get(
        &self,
        image: &str,
        lookup: &str,
        look: impl FnOnce() -> Found,
    ) -> Found {
        let cell = {
            let mut pulls = self.lock();
            match pulls.get_mut(image) {
                Some(pull) => pull.found.entry(lookup.to_string()).or_default().clone(),
                None => return look(),
            }
        };
        cell.get_or_init(|| async { look() }).await.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pull>> {
        self.pulls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Held while an image is pulled; see the module docs. Dropping the last scope of an image
/// forgets what was found for it.
#[must_use = "credentials are shared only while the scope is held"]
pub struct PullScope {
    pulls: Arc<PullCredentials>,
    image: String,
}

impl Drop for PullScope {
    fn drop(&mut self) {
        let mut pulls = self.pulls.lock();
        if let Some(pull) = pulls.get_mut(&self.image) {
            pull.holders -= 1;
            if pull.holders == 0 {
                pulls.remove(&self.image);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_lookup_per_host_while_a_scope_is_held_and_afresh_after() {
        let pulls = Arc::new(PullCredentials::default());
        let runs = AtomicUsize::new(0);
        let look = || {
            runs.fetch_add(1, Ordering::SeqCst);
            Vec::new()
        };
        // Without a scope: every request looks up.
        pulls.get("reg/app", "reg/app", look).await;
        pulls.get("reg/app", "reg/app", look).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);

        let scope = pulls.begin("reg/app".into());
        let second = pulls.begin("reg/app".into());
        for _ in 0..3 {
            pulls.get("reg/app", "reg/app", look).await;
        }
        pulls.get("reg/app", "mirror/app", look).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4, "once per host");
        drop(scope);
        pulls.get("reg/app", "reg/app", look).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "a concurrent pull still holds it"
        );
        drop(second);
        let _next = pulls.begin("reg/app".into());
        pulls.get("reg/app", "reg/app", look).await;
        assert_eq!(runs.load(Ordering::SeqCst), 5, "the next pull asks afresh");
    }
}
