//! Test bench: real containerd and docker-registry processes, synthetic images pushed through the
//! registry's HTTP API, a recording reverse proxy and CRI helpers.
//!
//! A crate of its own (`testbench`, a dev-dependency), used by the integration tests, benches and
//! examples as `use testbench as support;`. Every daemon lives in its own temp dir, on its own
//! socket or loopback port, so tests may run in parallel threads or processes.

#![allow(dead_code)]

pub mod auth;
pub mod busybox;
pub mod campaign;
pub mod containerd;
pub mod cri;
pub mod damage;
pub mod disk;
pub mod hostile;
pub mod image;
pub mod layer;
pub mod oci_archive;
pub mod pod;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod run;
pub mod scrape;
pub mod snapshots;
pub mod tls;
pub mod volume;

// Re-exports for convenience; each includer uses a few, and unused ones must not warn.
#[allow(unused_imports)]
pub use auth::{PostSupport, RequestKind, TokenServer, TokenServerOptions};
#[allow(unused_imports)]
pub use containerd::{Containerd, ContainerdOptions};
#[allow(unused_imports)]
pub use hostile::{Hostile, Reply, Seen};
#[allow(unused_imports)]
pub use image::{
    push_image, push_index, Blob, ImageSpec, MediaFamily, Platform, PushedImage, PushedIndex,
};
#[allow(unused_imports)]
pub use image::{
    push_image_over, push_image_with, push_index_with, tag_image, PushAuth, PushTarget,
};
#[allow(unused_imports)]
pub use proxy::{Action, Connections, DeadHost, Proxy, Record, Shape, TcpRelay};
#[allow(unused_imports)]
pub use registry::{Registry, RegistryOptions};
#[allow(unused_imports)]
pub use run::{text, Prepull};
pub use scrape::Scrape;
#[allow(unused_imports)]
pub use tls::TestCa;
#[allow(unused_imports)]
pub use volume::KubeletVolume;
