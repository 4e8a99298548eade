//! Step 3 and 4: each endpoint the pull would use (the mirrors `hosts.toml` names, then the
//! registry itself) resolves and accepts a connection.

use std::time::Duration;

use super::{Step, Verdict};
use crate::reference::Reference;
use std::sync::Arc;

use crate::credentials::Keyring;
use crate::registry::{Endpoint, Options, RegistryClient};

/// How long a name lookup or a connection may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One step per endpoint, in the order a pull tries them. `false` with them when the registry
/// itself (the last endpoint) cannot be reached: the steps after need it.
pub async fn check(options: &Options, reference: &Reference) -> (bool, Vec<Step>) {
    let hosts = &options.hosts;
    let endpoints = match hosts.endpoints(reference.registry()) {
        Ok(e) => e,
        Err(e) => {
            let step = Step::found(
                "network",
                Verdict::Fail,
                "hosts-config",
                crate::error_chain(&e),
                "fix the named hosts.toml (containerd reads the same file)",
            );
            return (false, vec![step]);
        }
    };
    let mut steps = Vec::new();
    let mut reachable = true;
    let last = endpoints.len().saturating_sub(1);
    // Asks each mirror's API root as the pull would (its TLS settings, no credentials).
    let client = RegistryClient::new(options.clone(), Arc::new(Keyring::new())).ok();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let fallback = i < last;
        let reached = match reach(endpoint).await {
            Ok(summary) if endpoint.mirror => match &client {
                Some(c) => match c.ping(reference.registry(), endpoint).await {
                    Ok(status) if status < 500 => Ok(format!(
                        "{summary}; answers {}/ with HTTP {status}",
                        endpoint.api_path
                    )),
                    Ok(status) => Err((
                        "connect",
                        format!("answers {}/ with HTTP {status}", endpoint.api_path),
                    )),
                    Err(e) => Err(("connect", crate::error_chain(&e))),
                },
                None => Ok(summary),
            },
            other => other,
        };
        let step = match reached {
            Ok(summary) => Step::ok(name(endpoint), summary),
            Err((cause, why)) if fallback => Step::found(
                name(endpoint),
                Verdict::Warning,
                "mirror-down",
                format!("{}: {why}", endpoint.origin),
                format!(
                    "pulls fall back to the next host, after a delay; fix the mirror or remove \
                     it from {} ({cause})",
                    endpoint
                        .named_in
                        .as_ref()
                        .map_or("hosts.toml".to_string(), |p| p.display().to_string())
                ),
            ),
            Err((cause, why)) => {
                reachable = false;
                Step::found(
                    name(endpoint),
                    Verdict::Fail,
                    cause,
                    format!("{}: {why}", endpoint.origin),
                    match cause {
                        "dns" => format!(
                            "check the registry's name in the image ({}) and the node's DNS \
                             (/etc/resolv.conf)",
                            reference.registry()
                        ),
                        _ => "check that the registry runs and that the node's network \
                              (firewall, proxy, security groups) lets it reach that port"
                            .to_string(),
                    },
                )
            }
        };
        steps.push(step);
    }
    (reachable, steps)
}

fn name(endpoint: &Endpoint) -> &'static str {
    if endpoint.mirror {
        "mirror"
    } else {
        "network"
    }
}

/// Resolves the endpoint's host and connects to it: what was found, or a cause (`dns`,
/// `connect`) and why.
async fn reach(endpoint: &Endpoint) -> Result<String, (&'static str, String)> {
    let url = reqwest::Url::parse(&endpoint.origin)
        .map_err(|e| ("hosts-config", format!("not a URL: {e}")))?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let lookup = tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((host.as_str(), port)));
    let addresses: Vec<std::net::SocketAddr> = match lookup.await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => return Err(("dns", format!("{host} does not resolve ({e})"))),
        Err(_) => return Err(("dns", format!("looking up {host} took over 5 s"))),
    };
    let Some(first) = addresses.first() else {
        return Err(("dns", format!("{host} resolves to no address")));
    };
    let mut last_error = String::new();
    for address in &addresses {
        match tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) => {
                return Ok(format!(
                    "{} resolves to {} and accepts connections on port {port}",
                    endpoint.origin,
                    address.ip()
                ))
            }
            Ok(Err(e)) => last_error = format!("{address}: {e}"),
            Err(_) => last_error = format!("{address}: no answer within 5 s"),
        }
    }
    Err((
        "connect",
        format!(
            "resolves to {} but refuses or drops connections ({last_error})",
            first.ip()
        ),
    ))
}
