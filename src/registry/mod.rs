//! The registry adapter: the OCI distribution API over HTTP, with token auth and verified
//! streaming of manifests and blobs.
//!
//! One [`RegistryClient`] serves every registry of a run: it keeps one connection pool per host
//! (HTTP/2 where the registry offers it) and one token cache. This file is its face: resolve a
//! tag, fetch a manifest, open a blob. Behind it, one file per concern:
//! - `request`: sending over a registry's endpoints (mirrors first), with retries and
//!   `Retry-After`, and error statuses explained;
//! - `authorize`: which credential a request carries and what a `401`/`403` means, one request's
//!   way through the candidates being an `AuthAttempt`; `token` and [`challenge`]:
//!   bearer tokens and `WWW-Authenticate` parsing; `pull_scope`: credentials looked up once per
//!   pull;
//! - `blob`: verified blob streams, `Range` resume and foreign layer URLs;
//! - `body`: every answer read under a size cap and [`MinProgress`], whoever sends it;
//! - `redirect`: what a redirect target (S3, a CDN) may ask for: never the registry's
//!   credentials;
//! - `hosts`: containerd's `hosts.toml` (mirrors, capabilities, per-host settings);
//!   `unreachable`: mirrors skipped while they do not answer;
//! - `tls`: TLS settings and files, and what a TLS failure means and how to fix it;
//! - `error`: [`RegistryError`], its kinds and whether to retry.
//!
//! How often anything is tried again is [`crate::retry`]'s to say.

mod authorize;
mod blob;
mod body;
mod budget;
pub mod challenge;
mod error;
mod hosts;
mod manifest;
mod pull_scope;
mod redirect;
mod request;
mod tls;
mod token;
mod unreachable;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

pub use blob::{BlobCheck, BlobStream, OpenedBlob};
pub use body::MinProgress;
pub use budget::{BudgetReserve, Low as BudgetLow};
pub use error::RegistryError;
pub use hosts::{Endpoint, Hosts, HostsError};
pub use manifest::FetchedManifest;
pub use pull_scope::PullScope;
pub use tls::Tls;
pub(crate) use token::read_token_body;
pub use token::Realm;

use crate::credentials::CredentialSource;
use crate::reference::Reference;
use body::ConnectionSlot;
use request::client_builder;

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where each registry is reached: mirrors, plain HTTP, TLS settings.
    pub hosts: Hosts,
    /// Requests in flight to one host at once, so connections open to it (each request holds
    /// its connection until its body is read); as many idle ones are kept for reuse.
    pub connections_per_host: NonZeroUsize,
    /// How a request to a registry's last host is retried; `None`: [`crate::retry::REQUEST`].
    /// (`prepull doctor` asks once, to report what the registry said.)
    pub request_policy: Option<crate::retry::Backoff>,
    /// The least progress every request must make (see [`MinProgress`]).
    pub min_progress: MinProgress,
    /// What is kept of a registry's announced request budget for the kubelet's own pulls (see
    /// `budget`).
    pub budget_reserve: BudgetReserve,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hosts: Hosts::default(),
            connections_per_host: CONNECTIONS_PER_HOST,
            request_policy: None,
            min_progress: MinProgress::default(),
            budget_reserve: BudgetReserve::default(),
        }
    }
}

/// [`Options::connections_per_host`] unless told otherwise.
pub const CONNECTIONS_PER_HOST: NonZeroUsize = match NonZeroUsize::new(16) {
    Some(n) => n,
    None => unreachable!(),
};

/// A client for every registry of a run.
pub struct RegistryClient {
    http: reqwest::Client,
    /// Clients for endpoints with their own TLS settings or `dial_timeout`, built on first use.
    endpoint_clients: Mutex<HashMap<(Tls, Option<Duration>), reqwest::Client>>,
    options: Options,
    /// Schemes, tokens and credentials: what authorizing requests remembers.
    auth: authorize::Authorizer,
    /// What each host announced of its request budget.
    budgets: budget::Budgets,
    /// Mirrors that did not answer lately, skipped while their back-off runs.
    unreachable: unreachable::Unreachable,
    /// Per host, the slots for requests in flight (see [`Options::connections_per_host`]).
    connections: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl RegistryClient {
    /// A client with its own connection pool and token cache, authorizing with `credentials`.
    pub fn new(
        options: Options,
        credentials: Arc<dyn CredentialSource>,
    ) -> Result<RegistryClient, RegistryError> {
        let http = client_builder(&options)
            .build()
            .map_err(RegistryError::Client)?;
        let progress = options.min_progress;
        let budgets = budget::Budgets::new(options.budget_reserve);
        Ok(RegistryClient {
            http,
            endpoint_clients: Mutex::default(),
            options,
            auth: authorize::Authorizer::new(credentials, progress),
            budgets,
            unreachable: unreachable::Unreachable::default(),
            connections: Mutex::default(),
        })
    }

    /// Waits for a free connection slot to `host`; the request holds it until its body is read.
    async fn connection_slot(&self, host: &str) -> Option<ConnectionSlot> {
        let slots = lock(&self.connections)
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.options.connections_per_host.get())))
            .clone();
        // The semaphore is never closed, so a slot always comes.
        slots.acquire_owned().await.ok().map(ConnectionSlot::new)
    }

    /// Starts a pull of `reference`: until the scope is dropped, the credentials for each host
    /// are looked up once (a credential-provider plugin runs once per host and pull, however many
    /// requests the pull makes), as containerd and the kubelet look them up per pull.
    pub fn begin_pull(&self, reference: &Reference) -> PullScope {
        self.auth.begin_pull(reference)
    }

    /// For containerd fetching `reference` itself: per host it may fetch from (mirrors and the
    /// registry, as `host[:port]`), the credentials it may be given (see
    /// `Authorizer::hand_over`).
    pub async fn hand_over(
        &self,
        reference: &Reference,
    ) -> Result<HashMap<String, crate::store::TransferAuth>, RegistryError> {
        let endpoints = self
            .options
            .hosts
            .endpoints(reference.registry())
            .map_err(|source| RegistryError::Hosts {
                registry: reference.registry().to_string(),
                source,
            })?;
        let mut auth = HashMap::new();
        for endpoint in endpoints {
            if let Some(a) = self.auth.hand_over(&endpoint, reference).await {
                auth.insert(endpoint.host.clone(), a);
            }
        }
        Ok(auth)
    }

    /// The least progress every request must make (`--min-progress`).
    pub fn min_progress(&self) -> MinProgress {
        self.options.min_progress
    }

    /// The hosts directory and plain-HTTP registries prepull reaches registries by.
    pub fn hosts(&self) -> &Hosts {
        &self.options.hosts
    }

    /// The last `ratelimit-remaining` a registry reported (Docker Hub's pull quota).
    pub fn rate_limit_remaining(&self, registry: &str) -> Option<u64> {
        self.budgets.remaining(registry)
    }
}

/// Locks one of the client's maps. A panic while holding one cannot leave it inconsistent (single
/// inserts and removals), so a poisoned lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
