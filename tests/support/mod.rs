//! Test bench: real containerd and docker-registry processes, synthetic images pushed through the
//! registry's HTTP API, a recording reverse proxy and CRI helpers.
//!
//! Integration tests include it with `mod support;`; benches and examples with
//! `#[path = "../tests/support/mod.rs"] mod support;`. Every daemon lives in its own temp dir, on its
//! own socket or loopback port, so tests may run in parallel threads or processes. Each includer
//! uses a subset of the items, hence the module-wide `allow`s.

#![allow(dead_code, unused_imports)]

pub mod containerd;
pub mod cri;
pub mod image;
pub mod layer;
pub mod process;
pub mod proxy;
pub mod registry;

pub use containerd::{Containerd, ContainerdOptions};
pub use image::{push_image, push_index, Blob, ImageSpec, MediaFamily, Platform, PushedImage, PushedIndex};
pub use proxy::{Proxy, Record};
pub use registry::Registry;
