//! prepull: pre-pulls container images into a node's containerd, verified, so pods start without
//! touching the network.
//!
//! Where to start reading:
//! - [`commands`]: what each CLI subcommand does, composed from the pieces below.
//! - [`pull`]: the pull of one image, from a reference to image records CRI can see, a file per
//!   step; [`image`]: the labels, record names and graph steps containerd and CRI agree on.
//! - Domain: [`reference`] (image names as the kubelet normalizes them), [`digest`] (verified
//!   streaming), [`platform`] (choosing a manifest from an index), [`oci`] (manifest documents).
//! - [`agent`]: the DaemonSet's loop: the prepull list, its schedule, pins owned per list, and
//!   per-image states; [`kind`]: the fixed set of failure kinds every error maps to.
//! - Adapters at the edge: [`registry`] (the distribution API over HTTP), [`store`] (containerd
//!   over gRPC), [`cri`] (the kubelet's view of the node's images).
//! - [`repair`]: mending damaged images, for `prepull repair` and the agent alike; [`doctor`]:
//!   why one image's pull fails, step by step.
//! - [`rootfs`]: whether an image's own command can start, judged from its unpacked layers;
//!   [`start_check`] runs it on an image's snapshots in containerd.
//! - [`deep`]: snapshots compared file by file with their layers (`verify --deep`), run against
//!   containerd by [`deep_verify`].
//! - [`retry`]: every retry policy and the bound per blob they add up to.
//! - [`metrics`]: the Prometheus counters events are counted into, served by the agent.
//! - [`printable`]: text from registries and plugins escaped before it is printed or stored.

// Errors carry the registry, repository, digest and image they concern, and tonic's own Status is
// large; they travel only on the failure path, where their size costs nothing measurable.
#![allow(clippy::result_large_err)]

pub mod agent;
pub mod commands;
pub mod credentials;
pub mod cri;
pub mod deep;
pub mod deep_verify;
pub mod digest;
pub mod doctor;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod kind;
pub mod metrics;
pub mod oci;
pub mod platform;
pub mod printable;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod repair;
pub mod retry;
pub mod rootfs;
pub mod space;
pub mod start_check;
pub mod store;
pub mod verify;
pub mod watch;

pub use kind::ErrorKind;

/// An error and its sources on one line, without repeating text a source already carries.
/// Control characters are escaped ([`printable::escape_controls`]): errors carry what registries
/// and plugins said, and the line must stay one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    match printable::escape_controls(&out) {
        std::borrow::Cow::Borrowed(_) => out,
        std::borrow::Cow::Owned(escaped) => escaped,
    }
}
