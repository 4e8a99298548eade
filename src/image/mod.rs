//! An image as containerd and CRI hold it: the labels their pulls write and read
//! ([`labels`]), the names CRI gives an image's records ([`names`]), and the steps of the image
//! graph, top document -> index -> manifest -> config -> diff IDs -> chain IDs ([`graph`]).
//!
//! Pure vocabulary, no I/O: the pull writes it, the warm check, `unpin` and `verify` read it
//! back (through [`crate::store`]'s graph reads), and all of them must agree with containerd's
//! garbage collector and with CRI, so each rule is written once, here.

pub mod graph;
pub mod labels;
pub mod names;

pub use graph::{
    chain_ids, choose_manifest, diff_ids, only_nested_indexes, ConfigError, NoPlatform,
};
