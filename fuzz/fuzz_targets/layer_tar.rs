//! Layer archives as the deep verifier reads them (`src/deep/`): the streaming tar reader on
//! its own, then the whole layer compared with a small snapshot directory, alone (overlayfs) and
//! merged (native).
//!
//! Checks: no panic, no allocation a header asks for; every path is relative and clean (no
//! `.`, `..` or root: nothing leaves the snapshot); only regular files carry data, and exactly as
//! much as their header says unless the archive ends early; the end of an archive stays the end.
#![no_main]

use std::path::{Component, Path};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prepull::deep::tar_walk::{Kind, TarError, TarReader};
use prepull::deep::{check_layer, check_merged, Context, LayerId, MergedTree};
use prepull::digest::Digest;
use prepull_fuzz::scratch_dir;
use tokio_util::sync::CancellationToken;

/// The most entries one input is read for (a header block each, so far more than an input of
/// `-max_len` bytes holds).
const MAX_ENTRIES: usize = 10_000;

fuzz_target!(|data: &[u8]| {
    walk(data);
    // zstd lets a few bytes stand for gigabytes, which the verifier reads through as it must
    // (the blob's digest was checked); that is time, not a finding.
    if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return;
    }
    let ctx = Context {
        max_entries: 1_000,
        ..Context::new(CancellationToken::new())
    };
    let diff_id = Digest::sha256(data);
    let layer = LayerId {
        index: 0,
        digest: diff_id.clone(),
        chain_id: diff_id.clone(),
    };
    let _ = check_layer(&layer, &diff_id, data, snapshot(), &ctx);
    let mut tree = MergedTree::new(snapshot());
    if tree.apply(&layer, &diff_id, data, &ctx).is_ok() {
        let _ = tree.live_links().count();
        let _ = check_merged(&mut tree, &ctx);
    }
});

/// Reads `data` as an uncompressed archive, entry by entry, checking each header.
fn walk(data: &[u8]) {
    let mut tar = TarReader::new(data);
    for _ in 0..MAX_ENTRIES {
        let header = match tar.next_header() {
            Ok(Some(header)) => header,
            Ok(None) => {
                assert!(
                    matches!(tar.next_header(), Ok(None)),
                    "the end did not stay the end"
                );
                return;
            }
            Err(_) => return,
        };
        assert!(clean(&header.path), "{:?}", header.path);
        if let Kind::HardLink(target) = &header.kind {
            assert!(clean(target), "{target:?}");
        }
        assert!(header.mode <= 0o7777);
        if header.kind != Kind::File {
            assert_eq!(header.size, 0, "{:?} carries data", header.kind);
        }
        let mut read = 0u64;
        let mut buf = [0u8; 4096];
        loop {
            match tar.read_data(&mut buf) {
                Ok(0) => {
                    assert_eq!(read, header.size);
                    break;
                }
                Ok(n) => read += n as u64,
                Err(TarError::Truncated { .. }) => return,
                Err(e) => panic!("reading an entry's data from memory failed: {e}"),
            }
        }
        assert!(tar.offset() <= data.len() as u64);
    }
}

/// Relative, with nothing but names in it.
fn clean(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// A snapshot to compare layers with: a few directories, a file, a symbolic link out of it.
fn snapshot() -> &'static Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_dir().join("snapshot");
        std::fs::create_dir_all(dir.join("etc")).expect("create the snapshot");
        std::fs::create_dir_all(dir.join("bin")).expect("create the snapshot");
        std::fs::write(dir.join("etc/hostname"), b"node\n").expect("create the snapshot");
        let _ = std::os::unix::fs::symlink("/", dir.join("root"));
        dir
    })
}
