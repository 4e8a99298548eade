//! Entry points for the fuzz targets (`fuzz/`) into parsers that are private to their modules:
//! each runs the module's own code on untrusted bytes, as the agent would on what a registry,
//! a plugin or a list gave it. Not an API.

use std::sync::Arc;
use std::time::Duration;

use crate::credentials::{Credential, PluginAnswer};
use crate::registry::{Realm, RegistryError};

/// What a credential-provider plugin's standard output gives for `image`: the cache key its
/// `cacheKeyType` asks for, how long it is cached, and the credentials for `image`, in order.
pub fn credential_provider_response(
    stdout: &[u8],
    image: &str,
    default_cache: Duration,
) -> Result<(String, Duration, Vec<Arc<Credential>>), String> {
    let answer = PluginAnswer::read(stdout, image, "fuzz", default_cache)?;
    Ok((answer.cache_key, answer.ttl, answer.keyring.lookup(image)))
}

/// A token server's successful answer: the `Authorization` header value and how long the token
/// is used before it is refreshed.
pub fn token_response(
    registry: &str,
    realm: &Realm,
    body: &[u8],
) -> Result<(String, Duration), RegistryError> {
    crate::registry::read_token_body(registry, realm, body)
}

/// How deep the prepull list's pre-parse check counts `text` to nest (a list deeper than
/// [`crate::agent::list::MAX_NESTING`] is refused before it is parsed).
pub fn list_nesting_depth(text: &str) -> usize {
    crate::agent::list::nesting_depth(text)
}
