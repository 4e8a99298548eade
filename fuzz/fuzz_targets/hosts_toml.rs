//! containerd's `hosts.toml`, read from a hosts directory as prepull reads the node's
//! (`<dir>/<host>_<port>_/hosts.toml`), into the endpoints a pull would use.
//!
//! Checks: no panic; a file that reads gives at least one endpoint, each with an http(s)
//! origin, its API path under it, file paths resolved (absolute), and a dial timeout that is not
//! zero.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prepull::registry::Hosts;
use prepull_fuzz::{scratch_dir, write_input};

const REGISTRY: &str = "registry.example:5000";

fuzz_target!(|data: &[u8]| {
    write_input("certs.d/registry.example_5000_/hosts.toml", data);
    let hosts = Hosts {
        dir: Some(scratch_dir().join("certs.d")),
        ..Hosts::default()
    };
    let Ok(endpoints) = hosts.endpoints(REGISTRY) else {
        return;
    };
    assert!(!endpoints.is_empty());
    for endpoint in &endpoints {
        assert!(
            endpoint.origin.starts_with("https://") || endpoint.origin.starts_with("http://"),
            "{endpoint:?}"
        );
        assert!(endpoint.origin.ends_with(&endpoint.host), "{endpoint:?}");
        let url = endpoint.url(REGISTRY, "team/app", "manifests/latest");
        assert!(url.starts_with(&format!("{}{}/", endpoint.origin, endpoint.api_path)));
        assert!(endpoint.tls.ca_files.iter().all(|p| p.is_absolute()));
        if let Some((cert, key)) = &endpoint.tls.client {
            assert!(cert.is_absolute() && key.as_ref().is_none_or(|k| k.is_absolute()));
        }
        assert!(endpoint.dial_timeout.is_none_or(|d| !d.is_zero()));
        let _ = hosts.ca_advice(REGISTRY, endpoint);
        let _ = hosts.client_certificate_advice(REGISTRY, endpoint);
        let _ = hosts.scheme_advice(REGISTRY, endpoint, true);
    }
});
