//! The engine against directories unpacked here the way containerd unpacks them, then damaged
//! one way at a time. Needs root (owners, device nodes, `trusted.` attributes), as containerd
//! itself does.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::digest::Digest;

/// A layer entry, built into a tar and unpacked into a directory alike.
#[derive(Clone)]
enum E {
    Dir(&'static str, u32),
    File(&'static str, u32, &'static [u8]),
    Link(&'static str, &'static str),
    /// A hard link with its header's mode, which containerd gives the shared file.
    Hard(&'static str, &'static str, u32),
    Whiteout(&'static str),
    Opaque(&'static str),
}

struct Layer {
    blob: Vec<u8>,
    diff_id: Digest,
    id: LayerId,
}

fn build(index: usize, entries: &[E], gzip: bool) -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Hard(p, target, mode) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Whiteout(p) => {
                let path = Path::new(p);
                let name = format!(".wh.{}", path.file_name().unwrap().to_str().unwrap());
                let full = path.parent().unwrap().join(name);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, full, std::io::empty()).unwrap();
            }
            E::Opaque(dir) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, format!("{dir}/.wh..wh..opq"), std::io::empty())
                    .unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let diff_id = Digest::sha256(&tar);
    let blob = if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    } else {
        tar
    };
    let digest = Digest::sha256(&blob);
    Layer {
        blob,
        diff_id,
        id: LayerId {
            index,
            digest,
            chain_id: Digest::sha256(index.to_string().as_bytes()),
        },
    }
}

/// Unpacks like containerd's applier: into the layer's own directory with overlayfs' whiteout
/// conversion (`overlay`), or onto the whole filesystem (native).
fn unpack(dir: &Path, entries: &[E], overlay: bool) {
    for e in entries {
        match e {
            E::Dir(p, mode) => {
                std::fs::create_dir_all(dir.join(p)).unwrap();
                std::fs::set_permissions(dir.join(p), PermissionsExt::from_mode(*mode)).unwrap();
            }
            E::File(p, mode, data) => {
                let _ = std::fs::remove_file(dir.join(p));
                std::fs::write(dir.join(p), data).unwrap();
                std::fs::set_permissions(dir.join(p), PermissionsExt::from_mode(*mode)).unwrap();
            }
            E::Link(p, target) => symlink(target, dir.join(p)).unwrap(),
            E::Hard(p, target, mode) => {
                std::fs::hard_link(dir.join(target), dir.join(p)).unwrap();
                std::fs::set_permissions(dir.join(p), PermissionsExt::from_mode(*mode)).unwrap();
            }
            E::Whiteout(p) if overlay => mknod_whiteout(&dir.join(p)),
            E::Whiteout(p) => {
                let _ = std::fs::remove_file(dir.join(p));
                let _ = std::fs::remove_dir_all(dir.join(p));
            }
            E::Opaque(d) if overlay => set_opaque(&dir.join(d)),
            E::Opaque(_) => {}
        }
    }
}

fn mknod_whiteout(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; mknod reads nothing else.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn set_opaque(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new("trusted.overlay.opaque").unwrap();
    // SAFETY: NUL-terminated strings and a 1-byte value whose length is passed.
    let rc = unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    assert_eq!(
        rc,
        0,
        "setxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn ctx() -> Context {
    Context::new(CancellationToken::new())
}

fn overlay_check(layer: &Layer, dir: &Path) -> Vec<Finding> {
    let findings = check_layer(&layer.id, &layer.diff_id, &layer.blob[..], dir, &ctx()).unwrap();
    findings.into_parts().0
}

fn kinds(findings: &[Finding]) -> Vec<(FindingKind, String)> {
    findings.iter().map(|f| (f.kind, f.path.clone())).collect()
}

const UPPER: &[E] = &[
    E::Dir("bin", 0o755),
    E::File("bin/tool", 0o4755, b"#!/bin/sh\necho tool\n"),
    E::Hard("bin/tool-again", "bin/tool", 0o4755),
    E::Link("bin/sh", "tool"),
    E::Dir("etc", 0o755),
    E::File("etc/config", 0o640, b"key=value\n"),
    E::Whiteout("etc/secret"),
    E::Dir("var", 0o755),
    E::Opaque("var"),
    E::File("var/new", 0o600, b"new"),
];

/// A fresh overlayfs layer directory for `UPPER` (index 1) and its blob.
fn upper() -> (tempfile::TempDir, Layer) {
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path(), UPPER, true);
    (dir, build(1, UPPER, true))
}

#[test]
fn an_intact_overlay_layer_has_no_findings() {
    let (dir, layer) = upper();
    assert_eq!(kinds(&overlay_check(&layer, dir.path())), vec![]);
}

#[test]
fn each_kind_of_damage_to_an_overlay_layer_is_named_with_its_path() {
    type Damage = fn(&Path);
    let cases: Vec<(&str, Damage, FindingKind, &str)> = vec![
        (
            "zeroed",
            |d| std::fs::write(d.join("etc/config"), [0u8; 10]).unwrap(),
            FindingKind::Content,
            "/etc/config",
        ),
        (
            "truncated",
            |d| std::fs::write(d.join("etc/config"), b"key").unwrap(),
            FindingKind::Size,
            "/etc/config",
        ),
        (
            "mode",
            |d| {
                std::fs::set_permissions(d.join("etc/config"), PermissionsExt::from_mode(0o644))
                    .unwrap()
            },
            FindingKind::Mode,
            "/etc/config",
        ),
        (
            "deleted",
            |d| std::fs::remove_file(d.join("etc/config")).unwrap(),
            FindingKind::Missing,
            "/etc/config",
        ),
        (
            "added",
            |d| std::fs::write(d.join("etc/extra"), b"x").unwrap(),
            FindingKind::Added,
            "/etc/extra",
        ),
        (
            "retargeted",
            |d| {
                std::fs::remove_file(d.join("bin/sh")).unwrap();
                symlink("/elsewhere", d.join("bin/sh")).unwrap();
            },
            FindingKind::LinkTarget,
            "/bin/sh",
        ),
        (
            "whiteout removed",
            |d| std::fs::remove_file(d.join("etc/secret")).unwrap(),
            FindingKind::Whiteout,
            "/etc/secret",
        ),
        (
            "whiteout replaced",
            |d| {
                std::fs::remove_file(d.join("etc/secret")).unwrap();
                std::fs::write(d.join("etc/secret"), b"back").unwrap();
            },
            FindingKind::Whiteout,
            "/etc/secret",
        ),
        (
            "opaque removed",
            |d| {
                let c = CString::new(d.join("var").as_os_str().as_bytes()).unwrap();
                let n = CString::new("trusted.overlay.opaque").unwrap();
                // SAFETY: NUL-terminated strings.
                assert_eq!(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }, 0);
            },
            FindingKind::Opaque,
            "/var/.wh..wh..opq",
        ),
        (
            "hard link broken",
            |d| {
                std::fs::remove_file(d.join("bin/tool-again")).unwrap();
                std::fs::copy(d.join("bin/tool"), d.join("bin/tool-again")).unwrap();
            },
            FindingKind::HardLink,
            "/bin/tool-again",
        ),
        (
            "owner",
            |d| std::os::unix::fs::lchown(d.join("var/new"), Some(7), None).unwrap(),
            FindingKind::Owner,
            "/var/new",
        ),
        (
            "dir replaced",
            |d| {
                std::fs::remove_dir_all(d.join("var")).unwrap();
                std::fs::write(d.join("var"), b"").unwrap();
            },
            FindingKind::Type,
            "/var",
        ),
        (
            "directory deleted",
            |d| std::fs::remove_dir_all(d).unwrap(),
            FindingKind::DirectoryMissing,
            "/",
        ),
        (
            "directory emptied",
            |d| {
                for e in std::fs::read_dir(d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        std::fs::remove_dir_all(p).unwrap()
                    } else {
                        std::fs::remove_file(p).unwrap()
                    }
                }
            },
            FindingKind::DirectoryEmpty,
            "/",
        ),
    ];
    for (what, damage, kind, path) in cases {
        let (dir, layer) = upper();
        damage(dir.path());
        let found = overlay_check(&layer, dir.path());
        assert!(
            found
                .iter()
                .any(|f| f.kind == kind && f.path == path && f.layer == layer.id),
            "{what}: expected {kind:?} at {path}, got {:?}",
            kinds(&found)
        );
        // One damage, one finding (a replaced directory also loses what was in it).
        if !matches!(kind, FindingKind::Type) {
            assert_eq!(found.len(), 1, "{what}: {:?}", kinds(&found));
        }
    }
}

#[test]
fn the_base_layer_is_unpacked_without_whiteout_devices() {
    let entries = [E::Dir("etc", 0o755), E::Whiteout("etc/gone")];
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path(), &entries, false);
    let layer = build(0, &entries, false);
    assert_eq!(kinds(&overlay_check(&layer, dir.path())), vec![]);
    std::fs::write(dir.path().join("etc/gone"), b"").unwrap();
    let found = overlay_check(&layer, dir.path());
    assert_eq!(found[0].kind, FindingKind::Whiteout, "{found:?}");
}

#[test]
fn a_layer_that_is_not_its_diff_id_or_not_a_tar_is_an_error() {
    let (dir, mut layer) = upper();
    layer.diff_id = Digest::sha256(b"another layer");
    let e = check_layer(
        &layer.id,
        &layer.diff_id,
        &layer.blob[..],
        dir.path(),
        &ctx(),
    )
    .unwrap_err();
    assert!(matches!(e, DeepError::DiffId { index: 1, .. }), "{e}");
    let e = check_layer(
        &layer.id,
        &layer.diff_id,
        &b"\x1f\x8bnot gzip"[..],
        dir.path(),
        &ctx(),
    )
    .unwrap_err();
    assert!(matches!(e, DeepError::Archive { .. }), "{e}");
    let e = check_layer(
        &layer.id,
        &layer.diff_id,
        &b"\x28\xb5\x2f\xfdnot zstd"[..],
        dir.path(),
        &ctx(),
    )
    .unwrap_err();
    assert!(matches!(e, DeepError::Archive { .. }), "{e}");
}

#[test]
fn zstd_and_uncompressed_layers_are_read_too() {
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path(), UPPER, true);
    let plain = build(1, UPPER, false);
    assert_eq!(kinds(&overlay_check(&plain, dir.path())), vec![]);
    let zstd = Layer {
        blob: zstd::stream::encode_all(&plain.blob[..], 3).unwrap(),
        ..plain
    };
    assert_eq!(kinds(&overlay_check(&zstd, dir.path())), vec![]);
    std::fs::write(dir.path().join("etc/config"), b"key=VALUE\n").unwrap();
    assert_eq!(
        kinds(&overlay_check(&zstd, dir.path())),
        vec![(FindingKind::Content, "/etc/config".into())]
    );
}

#[test]
fn a_cancelled_check_stops() {
    let (dir, layer) = upper();
    let c = ctx();
    c.cancel.cancel();
    let e = check_layer(&layer.id, &layer.diff_id, &layer.blob[..], dir.path(), &c).unwrap_err();
    assert!(matches!(e, DeepError::Cancelled), "{e}");
}

#[test]
fn the_paths_held_are_bounded() {
    let (dir, layer) = upper();
    let mut c = ctx();
    c.max_entries = 3;
    let e = check_layer(&layer.id, &layer.diff_id, &layer.blob[..], dir.path(), &c).unwrap_err();
    assert!(
        matches!(e, DeepError::TooManyEntries { limit: 3, .. }),
        "{e}"
    );
}

const BASE: &[E] = &[
    E::Dir("bin", 0o755),
    E::File("bin/app", 0o755, b"version 1"),
    E::Link("bin/run", "app"),
    E::Dir("etc", 0o755),
    E::File("etc/hosts", 0o644, b"127.0.0.1 localhost\n"),
];
const MIDDLE: &[E] = &[
    E::File("etc/secret", 0o600, b"password"),
    E::Dir("opt/lib", 0o700),
    E::File("opt/lib/old", 0o644, b"old"),
];
const TOP: &[E] = &[
    E::Whiteout("etc/secret"),
    E::File("bin/app", 0o755, b"version 2"),
    E::Opaque("opt/lib"),
    E::File("opt/lib/new", 0o644, b"new"),
];

/// A native snapshot of BASE, MIDDLE and TOP: one directory with all of them applied.
fn native() -> (tempfile::TempDir, Vec<Layer>) {
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path(), BASE, false);
    unpack(dir.path(), MIDDLE, false);
    unpack(dir.path(), TOP, false);
    std::fs::remove_file(dir.path().join("opt/lib/old")).unwrap();
    let layers = vec![
        build(0, BASE, true),
        build(1, MIDDLE, false),
        build(2, TOP, true),
    ];
    (dir, layers)
}

fn native_check(layers: &[Layer], dir: &Path) -> Vec<Finding> {
    let c = ctx();
    let mut tree = MergedTree::new(dir);
    for l in layers {
        tree.apply(&l.id, &l.diff_id, &l.blob[..], &c).unwrap();
    }
    check_merged(&mut tree, &c).unwrap().into_parts().0
}

#[test]
fn an_intact_native_snapshot_matches_its_layers_merged() {
    let (dir, layers) = native();
    assert_eq!(kinds(&native_check(&layers, dir.path())), vec![]);
}

#[test]
fn native_findings_name_the_layer_that_wrote_the_path() {
    type Damage = fn(&Path);
    let cases: Vec<(&str, Damage, FindingKind, &str, usize)> = vec![
        (
            "base file changed",
            |d| std::fs::write(d.join("etc/hosts"), b"127.0.0.1 evil.host\n").unwrap(),
            FindingKind::Content,
            "/etc/hosts",
            0,
        ),
        (
            "replaced file truncated",
            |d| std::fs::write(d.join("bin/app"), b"v").unwrap(),
            FindingKind::Size,
            "/bin/app",
            2,
        ),
        (
            "whiteout undone",
            |d| std::fs::write(d.join("etc/secret"), b"password").unwrap(),
            FindingKind::Whiteout,
            "/etc/secret",
            2,
        ),
        (
            "opaque undone",
            |d| std::fs::write(d.join("opt/lib/old"), b"old").unwrap(),
            FindingKind::Added,
            "/opt/lib/old",
            2,
        ),
        (
            "middle dir mode",
            |d| {
                std::fs::set_permissions(d.join("opt/lib"), PermissionsExt::from_mode(0o755))
                    .unwrap()
            },
            FindingKind::Mode,
            "/opt/lib",
            1,
        ),
        (
            "implied dir removed",
            |d| std::fs::remove_dir_all(d.join("opt")).unwrap(),
            FindingKind::Missing,
            "/opt",
            1,
        ),
        (
            "symlink deleted",
            |d| std::fs::remove_file(d.join("bin/run")).unwrap(),
            FindingKind::Missing,
            "/bin/run",
            0,
        ),
    ];
    for (what, damage, kind, path, layer) in cases {
        let (dir, layers) = native();
        damage(dir.path());
        let found = native_check(&layers, dir.path());
        assert_eq!(kinds(&found), vec![(kind, path.to_string())], "{what}");
        assert_eq!(found[0].layer, layers[layer].id, "{what}");
    }
}

#[test]
fn a_native_snapshot_emptied_or_gone_is_one_finding() {
    let (dir, layers) = native();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::remove_dir_all(e.unwrap().path()).unwrap();
    }
    let found = native_check(&layers, dir.path());
    assert_eq!(
        kinds(&found),
        vec![(FindingKind::DirectoryEmpty, "/".into())]
    );
    std::fs::remove_dir(dir.path()).unwrap();
    let found = native_check(&layers, dir.path());
    assert_eq!(
        kinds(&found),
        vec![(FindingKind::DirectoryMissing, "/".into())]
    );
    assert_eq!(found[0].layer, layers[2].id);
    let present = check_present(&layers[0].id, dir.path(), true)
        .into_parts()
        .0;
    assert_eq!(
        kinds(&present),
        vec![(FindingKind::DirectoryMissing, "/".into())]
    );
}

#[test]
fn findings_are_capped_and_counted() {
    let (dir, layers) = native();
    for i in 0..30 {
        std::fs::write(dir.path().join(format!("etc/extra-{i}")), b"").unwrap();
    }
    let c = Context {
        max_findings: 10,
        ..ctx()
    };
    let mut tree = MergedTree::new(dir.path());
    for l in &layers {
        tree.apply(&l.id, &l.diff_id, &l.blob[..], &c).unwrap();
    }
    let (kept, omitted) = check_merged(&mut tree, &c).unwrap().into_parts();
    assert_eq!((kept.len(), omitted), (10, 20));
}

#[test]
fn native_hard_links_share_their_file_and_the_links_mode() {
    const LINKED: &[E] = &[
        E::Dir("bin", 0o755),
        E::File("bin/tool", 0o755, b"tool"),
        E::Hard("bin/tool-again", "bin/tool", 0o644),
    ];
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path(), LINKED, false);
    // containerd chmods the link, and so the one file both names share, to the link's mode.
    std::fs::set_permissions(
        dir.path().join("bin/tool"),
        PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let layers = vec![build(0, LINKED, false)];
    assert_eq!(kinds(&native_check(&layers, dir.path())), vec![]);
    std::fs::remove_file(dir.path().join("bin/tool-again")).unwrap();
    std::fs::copy(
        dir.path().join("bin/tool"),
        dir.path().join("bin/tool-again"),
    )
    .unwrap();
    let found = native_check(&layers, dir.path());
    assert_eq!(
        kinds(&found),
        vec![(FindingKind::HardLink, "/bin/tool-again".into())]
    );
}

#[test]
fn an_overlay_hard_link_gives_its_mode_to_the_file_it_shares() {
    const LINKED: &[E] = &[
        E::Dir("bin", 0o755),
        E::File("bin/tool", 0o755, b"tool"),
        E::Hard("bin/tool-again", "bin/tool", 0o644),
    ];
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path(), LINKED, true);
    // The link's header says 0644: containerd chmods the shared file to it.
    std::fs::set_permissions(
        dir.path().join("bin/tool"),
        PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let layer = build(1, LINKED, false);
    assert_eq!(kinds(&overlay_check(&layer, dir.path())), vec![]);
    std::fs::set_permissions(
        dir.path().join("bin/tool"),
        PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let found = overlay_check(&layer, dir.path());
    assert_eq!(
        kinds(&found),
        vec![(FindingKind::Mode, "/bin/tool-again".into())]
    );
}

/// Flips the bits of the byte at `offset` of the file at `path`, in place.
fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[!byte[0]], offset).unwrap();
}

/// Bytes that are not all alike, more than the comparison reads at a time.
fn big_file() -> &'static [u8] {
    let bytes: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    Box::leak(bytes.into_boxed_slice())
}

#[test]
fn a_differing_file_is_named_with_the_offset_of_its_first_difference() {
    let entries = [E::Dir("opt", 0o755), E::File("opt/big", 0o644, big_file())];
    for overlay in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        unpack(dir.path(), &entries, overlay);
        let layer = build(0, &entries, true);
        let check = |dir: &Path| {
            if overlay {
                overlay_check(&layer, dir)
            } else {
                native_check(std::slice::from_ref(&layer), dir)
            }
        };
        assert_eq!(kinds(&check(dir.path())), vec![], "overlay: {overlay}");
        flip_byte(&dir.path().join("opt/big"), 500_000);
        let found = check(dir.path());
        assert_eq!(
            kinds(&found),
            vec![(FindingKind::Content, "/opt/big".into())],
            "overlay: {overlay}"
        );
        assert_eq!(found[0].expected, "the layer's 600000 bytes");
        let expected = big_file()[500_000];
        assert_eq!(
            found[0].found,
            format!(
                "different bytes from offset 500000 on (0x{:02x} where the layer has 0x{expected:02x})",
                !expected
            ),
            "overlay: {overlay}"
        );
    }
}

#[test]
fn a_native_hard_link_whose_target_a_later_layer_replaced_keeps_the_earlier_bytes() {
    const FIRST: &[E] = &[
        E::Dir("etc", 0o755),
        E::File("etc/motd", 0o644, b"first message\n"),
        E::Hard("etc/motd.orig", "etc/motd", 0o644),
    ];
    // The same size, other bytes: the base layer's entry differs from what its path holds.
    const SECOND: &[E] = &[E::File("etc/motd", 0o644, b"other message\n")];
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path(), FIRST, false);
    unpack(dir.path(), SECOND, false);
    let layers = vec![build(0, FIRST, true), build(1, SECOND, false)];
    assert_eq!(kinds(&native_check(&layers, dir.path())), vec![]);
    std::fs::write(dir.path().join("etc/motd.orig"), b"first MESSAGE\n").unwrap();
    let found = native_check(&layers, dir.path());
    assert_eq!(
        kinds(&found),
        vec![(FindingKind::Content, "/etc/motd.orig".into())]
    );
    assert_eq!(found[0].layer, layers[0].id);
    assert!(found[0].found.starts_with("sha256:"), "{:?}", found[0]);
}

#[test]
fn a_broken_native_hard_link_with_other_bytes_is_named_twice() {
    const LINKED: &[E] = &[
        E::Dir("bin", 0o755),
        E::File("bin/tool", 0o755, b"tool"),
        E::Hard("bin/tool-again", "bin/tool", 0o755),
    ];
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path(), LINKED, false);
    let layers = vec![build(0, LINKED, false)];
    std::fs::remove_file(dir.path().join("bin/tool-again")).unwrap();
    std::fs::write(dir.path().join("bin/tool-again"), b"toot").unwrap();
    std::fs::set_permissions(
        dir.path().join("bin/tool-again"),
        PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let found = native_check(&layers, dir.path());
    assert_eq!(
        kinds(&found),
        vec![
            (FindingKind::Content, "/bin/tool-again".into()),
            (FindingKind::HardLink, "/bin/tool-again".into())
        ]
    );
    assert_eq!(
        found[0].found,
        "different bytes from offset 3 on (0x74 where the layer has 0x6c)"
    );
}

#[test]
fn a_native_hard_link_is_compared_whole_when_its_target_differs_past_the_first_chunk() {
    let mut other = big_file().to_vec();
    other[500_000] ^= 0xff;
    let first = [
        E::Dir("opt", 0o755),
        E::File("opt/big", 0o644, big_file()),
        E::Hard("opt/big.orig", "opt/big", 0o644),
    ];
    let second = [E::File(
        "opt/big",
        0o644,
        Box::leak(other.into_boxed_slice()),
    )];
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path(), &first, false);
    unpack(dir.path(), &second, false);
    let layers = vec![build(0, &first, true), build(1, &second, true)];
    // The base layer's bytes before the difference are read back from opt/big to hash them.
    assert_eq!(kinds(&native_check(&layers, dir.path())), vec![]);
    flip_byte(&dir.path().join("opt/big.orig"), 10);
    assert_eq!(
        kinds(&native_check(&layers, dir.path())),
        vec![(FindingKind::Content, "/opt/big.orig".into())]
    );
}
