//! Snapshot directories compared with what their layers say: each path's type, size, content,
//! mode, owner, link target and device numbers; overlayfs' whiteouts and opaque markers; paths
//! the layer does not have; directories gone or emptied.
//!
//! Nothing here follows a symbolic link: paths are looked up component by component, files are
//! opened with `O_NOFOLLOW`, so a damaged (or hostile) snapshot cannot lead the check outside it.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, Metadata};
use std::hash::BuildHasher;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::content::{self, Buffers, Compared, Content};
use super::expect::{expected, Change, Expected, LayerArchive, MergedTree, OPAQUE_MARKER};
use super::finding::{Finding, FindingKind, Findings, LayerId};
use super::tar_walk::Kind;
use super::{Context, DeepError};
use crate::digest::Digest;

/// overlayfs' opaque-directory attribute (`userxattr` mounts use the `user.` name).
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// Compares one layer's own directory (overlayfs keeps each layer's files apart) with the layer
/// blob `blob`, entry by entry as the archive streams (a regular file's bytes read in step with
/// its entry's); then lists the directory for paths the layer does not have. Only a key per path
/// is held, not the layer's file list.
pub fn check_layer<R: Read>(
    layer: &LayerId,
    diff_id: &Digest,
    blob: R,
    dir: &Path,
    ctx: &Context,
) -> Result<Findings, DeepError> {
    let mut findings = Findings::new(ctx.max_findings);
    let Some(empty) = directory_state(layer, dir, &mut findings) else {
        return Ok(findings);
    };
    let mut keys = PathKeys::new(layer, ctx.max_entries);
    let mut lookup = Lookup::new(dir);
    let mut buffers = Buffers::new();
    let mut archive = LayerArchive::open(layer, diff_id, blob, ctx)?;
    let base = layer.index == 0;
    while let Some(change) = archive.next_change()? {
        match change {
            Change::Root => {}
            Change::Put { path, header } => {
                keys.insert_with_parents(&path)?;
                let key = keys.key(&path);
                findings.forget(key);
                let on_disk = lookup.lstat(&path);
                let compared = match &header.kind {
                    Kind::HardLink(target) => {
                        // containerd refuses links to a lower layer's file when unpacking
                        // into overlayfs: the target is this layer's. It chowns and chmods the
                        // link after making it, so the link's header decides the shared file's
                        // owner and mode, not the target's.
                        findings.forget_where(keys.key(target), |k| {
                            matches!(k, FindingKind::Mode | FindingKind::Owner)
                        });
                        check_hard_link(layer, &mut lookup, &path, target, key, &mut findings);
                        if let Ok(Some(meta)) = &on_disk {
                            if meta.is_file() {
                                check_owner_and_mode(
                                    layer,
                                    &path,
                                    meta,
                                    &header,
                                    key,
                                    &mut findings,
                                );
                            }
                        }
                        continue;
                    }
                    Kind::File => {
                        // A file of another size or type is reported as such: its bytes are
                        // left for the archive to skip.
                        let file = match &on_disk {
                            Ok(Some(m)) if m.is_file() && m.len() == header.size => {
                                Some(content::open(&dir.join(&path)))
                            }
                            _ => None,
                        };
                        content::compare_entry(&mut archive, file, &mut buffers, ctx, false)?
                            .content
                    }
                    _ => Content::NotCompared,
                };
                compare_at(
                    layer,
                    &path,
                    &dir.join(&path),
                    on_disk,
                    &expected(&header),
                    &compared,
                    key,
                    &mut findings,
                );
            }
            Change::Delete { path } => {
                keys.insert_with_parents(&path)?;
                let key = keys.key(&path);
                findings.forget(key);
                // The base layer is unpacked without overlayfs: a whiteout there removes the
                // path and leaves nothing behind.
                let expect = if base {
                    Expected::Absent
                } else {
                    Expected::Whiteout
                };
                let on_disk = lookup.lstat(&path);
                compare_at(
                    layer,
                    &path,
                    &dir.join(&path),
                    on_disk,
                    &expect,
                    &Content::NotCompared,
                    key,
                    &mut findings,
                );
            }
            Change::Opaque { dir: opaque } => {
                keys.insert_with_parents(&opaque)?;
                let key = keys.key(&opaque.join(OPAQUE_MARKER));
                findings.forget(key);
                if !base {
                    check_opaque(layer, &mut lookup, &opaque, key, &mut findings);
                }
            }
        }
    }
    archive.finish()?;
    walk_extras(ctx, layer, dir, &keys, &mut findings)?;
    if empty {
        findings.summarize_empty(layer, dir);
    }
    Ok(findings)
}

/// Compares a snapshot holding the whole filesystem (`native` copies every layer below into
/// each snapshot), the tree's top, with the merged expectation of its layers (whose regular
/// files were compared as the layers were applied). Each finding names the layer that wrote the
/// path; a path no layer has is the top layer's.
pub fn check_merged(tree: &mut MergedTree, ctx: &Context) -> Result<Findings, DeepError> {
    let top = tree.top().to_path_buf();
    let top = top.as_path();
    let mut findings = Findings::new(ctx.max_findings);
    let layers = tree.layers().to_vec();
    let Some(top_layer) = layers.last() else {
        return Ok(findings);
    };
    let Some(empty) = directory_state(top_layer, top, &mut findings) else {
        return Ok(findings);
    };
    if empty {
        if !tree.is_empty() {
            findings.push(
                0,
                Finding::new(
                    top_layer,
                    Path::new(""),
                    FindingKind::DirectoryEmpty,
                    "the image's files",
                    format!("{} empty", top.display()),
                ),
            );
        }
        return Ok(findings);
    }
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let here = top.join(&rel);
        let entries = match fs::read_dir(&here) {
            Ok(e) => e,
            Err(e) => {
                findings.push(0, unreadable(top_layer, &rel, &e));
                continue;
            }
        };
        for entry in entries {
            if ctx.cancel.is_cancelled() {
                return Err(DeepError::Cancelled);
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    findings.push(0, unreadable(top_layer, &rel, &e));
                    break;
                }
            };
            let path = rel.join(entry.file_name());
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    findings.push(0, unreadable(top_layer, &path, &e));
                    continue;
                }
            };
            let Some(node) = tree.node_mut(&path) else {
                findings.push(0, added(top_layer, &path, &meta));
                continue;
            };
            let layer = &layers[node.layer.min(layers.len() - 1)];
            node.seen = true;
            let content = node
                .content
                .as_deref()
                .map_or(&Content::Same, |c| &c.content);
            compare_at(
                layer,
                &path,
                &entry.path(),
                Ok(Some(meta.clone())),
                &node.expected,
                content,
                0,
                &mut findings,
            );
            if !same_type(&node.expected, &meta) {
                node.pruned = true;
            } else if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    // What the layers have and the walk did not find; below a path reported as a whole,
    // nothing more.
    let mut pruned: Option<PathBuf> = None;
    for (path, node) in tree.nodes_mut() {
        if pruned.as_ref().is_some_and(|p| path.starts_with(p)) {
            continue;
        }
        if node.pruned {
            pruned = Some(path.clone());
        } else if !node.seen && node.expected != Expected::Absent {
            let layer = &layers[node.layer.min(layers.len() - 1)];
            findings.push(
                0,
                Finding::new(
                    layer,
                    path,
                    FindingKind::Missing,
                    describe_expected(&node.expected),
                    "nothing",
                ),
            );
            pruned = Some(path.clone());
        }
    }
    let links: Vec<_> = tree.live_links().cloned().collect();
    let mut lookup = Lookup::new(top);
    for link in links {
        let layer = tree
            .node_mut(&link.path)
            .map(|n| n.layer)
            .unwrap_or_default();
        let layer = &layers[layer.min(layers.len() - 1)];
        check_hard_link(
            layer,
            &mut lookup,
            &link.path,
            &link.target,
            0,
            &mut findings,
        );
    }
    Ok(findings)
}

/// Checks that a snapshot directory of a chain is there and, when `expect_files`, not empty
/// (`native`'s snapshots below the top only need to be present).
pub fn check_present(layer: &LayerId, dir: &Path, expect_files: bool) -> Findings {
    let mut findings = Findings::new(4);
    if let Some(true) = directory_state(layer, dir, &mut findings) {
        if expect_files {
            findings.push(
                0,
                Finding::new(
                    layer,
                    Path::new(""),
                    FindingKind::DirectoryEmpty,
                    "the files of the layers up to this one",
                    format!("{} empty", dir.display()),
                ),
            );
        }
    }
    findings
}

/// Whether `dir` is there (`Some(empty?)`), or the finding saying it is not.
fn directory_state(layer: &LayerId, dir: &Path, findings: &mut Findings) -> Option<bool> {
    let missing = |found: String| {
        Finding::new(
            layer,
            Path::new(""),
            FindingKind::DirectoryMissing,
            format!("directory {}", dir.display()),
            found,
        )
    };
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(m) => {
            findings.push(0, missing(describe(&m)));
            return None;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            findings.push(0, missing("nothing".into()));
            return None;
        }
        Err(e) => {
            findings.push(0, unreadable(layer, Path::new(""), &e));
            return None;
        }
    }
    match fs::read_dir(dir) {
        Ok(mut entries) => Some(entries.next().is_none()),
        Err(e) => {
            findings.push(0, unreadable(layer, Path::new(""), &e));
            None
        }
    }
}

/// Compares what `lstat` found at `full` with `expected` (and, for a regular file of the
/// right size, what comparing its bytes found).
#[allow(clippy::too_many_arguments)]
fn compare_at(
    layer: &LayerId,
    rel: &Path,
    full: &Path,
    on_disk: io::Result<Option<Metadata>>,
    expected: &Expected,
    content: &Content,
    key: u64,
    findings: &mut Findings,
) {
    let mut report = |kind: FindingKind, e: String, f: String| {
        findings.push(key, Finding::new(layer, rel, kind, e, f));
    };
    let meta = match on_disk {
        Ok(Some(m)) => m,
        Ok(None) => {
            match expected {
                Expected::Absent => {}
                Expected::Whiteout => report(
                    FindingKind::Whiteout,
                    describe_expected(expected),
                    "nothing: the path of the layers below shows through".into(),
                ),
                _ => report(
                    FindingKind::Missing,
                    describe_expected(expected),
                    "nothing".into(),
                ),
            }
            return;
        }
        Err(e) => {
            report(
                FindingKind::Unreadable,
                describe_expected(expected),
                e.to_string(),
            );
            return;
        }
    };
    if !same_type(expected, &meta) {
        let kind = match expected {
            Expected::Whiteout | Expected::Absent => FindingKind::Whiteout,
            _ => FindingKind::Type,
        };
        report(kind, describe_expected(expected), describe(&meta));
        return;
    }
    let (mode, uid, gid) = (
        meta.mode() & 0o7777,
        u64::from(meta.uid()),
        u64::from(meta.gid()),
    );
    let owner_and_mode = |report: &mut dyn FnMut(FindingKind, String, String),
                          want: &super::expect::Meta,
                          check_mode: bool| {
        if check_mode && want.mode != mode {
            report(
                FindingKind::Mode,
                format!("{:04o}", want.mode),
                format!("{mode:04o}"),
            );
        }
        if (want.uid, want.gid) != (uid, gid) {
            report(
                FindingKind::Owner,
                format!("{}:{}", want.uid, want.gid),
                format!("{uid}:{gid}"),
            );
        }
    };
    match expected {
        Expected::File { size, meta: want } => {
            if meta.len() != *size {
                report(
                    FindingKind::Size,
                    format!("{size} bytes"),
                    format!("{} bytes", meta.len()),
                );
            } else if let Content::Unreadable(e) = content {
                report(
                    FindingKind::Unreadable,
                    format!("{size} bytes to read"),
                    e.clone(),
                );
            } else if let Some((expected, found)) = content.describe(*size) {
                report(FindingKind::Content, expected, found);
            }
            owner_and_mode(&mut report, want, true);
        }
        Expected::Dir(want) | Expected::Fifo(want) => owner_and_mode(&mut report, want, true),
        Expected::ImpliedDir | Expected::Absent => {}
        Expected::Symlink {
            target,
            uid: u,
            gid: g,
        } => {
            match fs::read_link(full) {
                Ok(found) if &found == target => {}
                Ok(found) => report(
                    FindingKind::LinkTarget,
                    target.display().to_string(),
                    found.display().to_string(),
                ),
                Err(e) => report(
                    FindingKind::Unreadable,
                    target.display().to_string(),
                    e.to_string(),
                ),
            }
            let want = super::expect::Meta {
                mode: 0,
                uid: *u,
                gid: *g,
            };
            owner_and_mode(&mut report, &want, false);
        }
        Expected::Device {
            major,
            minor,
            meta: want,
            ..
        } => {
            let (found_major, found_minor) = device_numbers(&meta);
            if (*major, *minor) != (found_major, found_minor) {
                report(
                    FindingKind::Device,
                    format!("{major}/{minor}"),
                    format!("{found_major}/{found_minor}"),
                );
            }
            owner_and_mode(&mut report, want, true);
        }
        Expected::Whiteout => {
            if meta.rdev() != 0 {
                report(
                    FindingKind::Whiteout,
                    describe_expected(expected),
                    describe(&meta),
                );
            }
        }
    }
}

fn same_type(expected: &Expected, meta: &Metadata) -> bool {
    let t = meta.file_type();
    match expected {
        Expected::File { .. } => t.is_file(),
        Expected::Dir(_) | Expected::ImpliedDir => t.is_dir(),
        Expected::Symlink { .. } => t.is_symlink(),
        Expected::Device { block: false, .. } | Expected::Whiteout => t.is_char_device(),
        Expected::Device { block: true, .. } => t.is_block_device(),
        Expected::Fifo(_) => t.is_fifo(),
        Expected::Absent => false,
    }
}

fn device_numbers(meta: &Metadata) -> (u32, u32) {
    let rdev = meta.rdev();
    (libc::major(rdev), libc::minor(rdev))
}

/// What a path on disk is, in words.
fn describe(meta: &Metadata) -> String {
    let t = meta.file_type();
    if t.is_file() {
        format!("regular file of {} bytes", meta.len())
    } else if t.is_dir() {
        "directory".into()
    } else if t.is_symlink() {
        "symlink".into()
    } else if t.is_char_device() || t.is_block_device() {
        let (major, minor) = device_numbers(meta);
        let kind = if t.is_char_device() { "char" } else { "block" };
        format!("{kind} device {major}/{minor}")
    } else if t.is_fifo() {
        "fifo".into()
    } else if t.is_socket() {
        "socket".into()
    } else {
        "unknown file type".into()
    }
}

/// What a path must be, in words.
fn describe_expected(expected: &Expected) -> String {
    match expected {
        Expected::File { size, .. } => format!("regular file of {size} bytes"),
        Expected::Dir(_) | Expected::ImpliedDir => "directory".into(),
        Expected::Symlink { target, .. } => format!("symlink to {}", target.display()),
        Expected::Device {
            block,
            major,
            minor,
            ..
        } => {
            let kind = if *block { "block" } else { "char" };
            format!("{kind} device {major}/{minor}")
        }
        Expected::Fifo(_) => "fifo".into(),
        Expected::Whiteout => "whiteout (char device 0/0)".into(),
        Expected::Absent => "nothing (deleted by a whiteout)".into(),
    }
}

fn added(layer: &LayerId, rel: &Path, meta: &Metadata) -> Finding {
    Finding::new(layer, rel, FindingKind::Added, "nothing", describe(meta))
}

fn unreadable(layer: &LayerId, rel: &Path, e: &io::Error) -> Finding {
    Finding::new(
        layer,
        rel,
        FindingKind::Unreadable,
        "readable",
        e.to_string(),
    )
}

/// The top snapshot of a chain whose snapshots each hold the whole filesystem (`native`): its
/// regular files compared with the layers' entries as [`MergedTree::apply`] streams them.
pub(crate) struct TopFiles<'r> {
    lookup: Lookup<'r>,
    buffers: Buffers,
}

impl<'r> TopFiles<'r> {
    pub(crate) fn new(top: &'r Path) -> TopFiles<'r> {
        TopFiles {
            lookup: Lookup::new(top),
            buffers: Buffers::new(),
        }
    }

    /// The archive's current entry, a regular file of `size` bytes at `path`, compared with
    /// the file there. Its SHA-256 is kept when the file does not hold its bytes: a later layer
    /// may replace the path and link another to this entry's file.
    pub(crate) fn compare_file(
        &mut self,
        path: &Path,
        size: u64,
        archive: &mut LayerArchive<'_>,
        ctx: &Context,
    ) -> Result<Compared, DeepError> {
        let file = match self.lookup.lstat(path) {
            Ok(Some(m)) if m.is_file() && m.len() == size => {
                Some(content::open(&self.lookup.root.join(path)))
            }
            // Another type, another size or nothing: the walk of the snapshot reports it.
            _ => None,
        };
        content::compare_entry(archive, file, &mut self.buffers, ctx, true)
    }

    /// What the hard link `path` to `target` (a file of `size` bytes, whose own comparison
    /// found `target_content`, `None` for the same bytes) holds; `None` for the layer's bytes.
    pub(crate) fn compare_link(
        &mut self,
        path: &Path,
        target: &Path,
        size: u64,
        target_content: Option<&Compared>,
        ctx: &Context,
    ) -> Result<Option<Box<Compared>>, DeepError> {
        let not_compared = || {
            Ok(Some(Box::new(Compared {
                content: Content::NotCompared,
                sha256: None,
            })))
        };
        let link = match self.lookup.lstat(path) {
            Ok(Some(m)) if m.is_file() && m.len() == size => m,
            _ => return not_compared(),
        };
        if let Ok(Some(to)) = self.lookup.lstat(target) {
            if (to.dev(), to.ino()) == (link.dev(), link.ino()) {
                return Ok(target_content.map(|c| Box::new(c.clone())));
            }
        }
        // A separate file: the link was broken (reported as such), or a later layer replaced
        // the target's path. Compare it with the target's file when that holds the layer's
        // bytes, or else with their hash.
        let root = self.lookup.root;
        let content = match target_content {
            None => match (
                content::open(&root.join(target)),
                content::open(&root.join(path)),
            ) {
                (Ok(mut expected), Ok(mut found)) => {
                    content::compare_files(&mut expected, &mut found, &mut self.buffers, ctx)?
                }
                (Err(e), _) | (_, Err(e)) => Content::Unreadable(e.to_string()),
            },
            Some(Compared {
                sha256: Some(expected),
                ..
            }) => {
                let found = content::open(&root.join(path))
                    .and_then(|mut f| content::hash_file(&mut f, &mut self.buffers, ctx));
                match found {
                    Ok(found) if found == *expected => Content::Same,
                    Ok(found) => Content::HashDiffers {
                        expected: *expected,
                        found,
                    },
                    Err(_) if ctx.cancel.is_cancelled() => return Err(DeepError::Cancelled),
                    Err(e) => Content::Unreadable(e.to_string()),
                }
            }
            Some(_) => return not_compared(),
        };
        // A link holding the layer's bytes stands for them, as its target does.
        let sha256 = target_content.and_then(|c| c.sha256);
        Ok((content != Content::Same).then(|| Box::new(Compared { content, sha256 })))
    }
}

/// The owner and mode a hard link's header gives the file it shares.
fn check_owner_and_mode(
    layer: &LayerId,
    path: &Path,
    meta: &Metadata,
    header: &super::tar_walk::Header,
    key: u64,
    findings: &mut Findings,
) {
    let mode = meta.mode() & 0o7777;
    if mode != header.mode {
        findings.push(
            key,
            Finding::new(
                layer,
                path,
                FindingKind::Mode,
                format!("{:04o}", header.mode),
                format!("{mode:04o}"),
            ),
        );
    }
    let (uid, gid) = (u64::from(meta.uid()), u64::from(meta.gid()));
    if (uid, gid) != (header.uid, header.gid) {
        findings.push(
            key,
            Finding::new(
                layer,
                path,
                FindingKind::Owner,
                format!("{}:{}", header.uid, header.gid),
                format!("{uid}:{gid}"),
            ),
        );
    }
}

/// `path` and `target` must be one file.
fn check_hard_link(
    layer: &LayerId,
    lookup: &mut Lookup,
    path: &Path,
    target: &Path,
    key: u64,
    findings: &mut Findings,
) {
    let (link, to) = (lookup.lstat(path), lookup.lstat(target));
    let found = match (&link, &to) {
        (Ok(Some(a)), Ok(Some(b))) if (a.dev(), a.ino()) == (b.dev(), b.ino()) => return,
        (Ok(Some(a)), Ok(Some(_))) => format!("a separate {}", describe(a)),
        (Ok(None), _) => "nothing".to_string(),
        (_, Ok(None)) => format!("its target /{} missing", target.display()),
        (Err(e), _) | (_, Err(e)) => e.to_string(),
    };
    let kind = match link {
        Ok(None) => FindingKind::Missing,
        Err(_) => FindingKind::Unreadable,
        Ok(Some(_)) => FindingKind::HardLink,
    };
    findings.push(
        key,
        Finding::new(
            layer,
            path,
            kind,
            format!("hard link to /{}", target.display()),
            found,
        ),
    );
}

/// overlayfs' opaque marker on `dir`.
fn check_opaque(
    layer: &LayerId,
    lookup: &mut Lookup,
    dir: &Path,
    key: u64,
    findings: &mut Findings,
) {
    let marker = dir.join(OPAQUE_MARKER);
    let found = match lookup.lstat(dir) {
        Ok(Some(m)) if m.is_dir() => {
            let full = lookup.root.join(dir);
            if OPAQUE_XATTRS
                .iter()
                .any(|name| xattr(&full, name).is_some_and(|v| v == b"y"))
            {
                return;
            }
            "a directory without the attribute".to_string()
        }
        Ok(Some(m)) => describe(&m),
        Ok(None) => "nothing".to_string(),
        Err(e) => e.to_string(),
    };
    findings.push(
        key,
        Finding::new(
            layer,
            &marker,
            FindingKind::Opaque,
            format!("directory /{} with trusted.overlay.opaque=y", dir.display()),
            found,
        ),
    );
}

/// An extended attribute of `path` itself (not followed), at most 64 bytes of it.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let c_name = CString::new(name).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live across the call; the buffer's length is
    // passed with it, and the kernel writes at most that many bytes.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

/// Lists a layer's directory for paths its layer does not have.
fn walk_extras(
    ctx: &Context,
    layer: &LayerId,
    dir: &Path,
    keys: &PathKeys,
    findings: &mut Findings,
) -> Result<(), DeepError> {
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let entries = match fs::read_dir(dir.join(&rel)) {
            Ok(e) => e,
            // Reported by the comparison already (a directory the layer has, unreadable).
            Err(_) => continue,
        };
        for entry in entries {
            if ctx.cancel.is_cancelled() {
                return Err(DeepError::Cancelled);
            }
            let Ok(entry) = entry else { break };
            let path = rel.join(entry.file_name());
            let Ok(meta) = entry.metadata() else { continue };
            if !keys.contains(&path) {
                findings.push(0, added(layer, &path, &meta));
            } else if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(())
}

/// Keys of the paths a layer has (and the directories above them): 8 bytes a path, instead of
/// the path. A collision (one in 2^64 per pair) could hide one added path.
struct PathKeys<'l> {
    hasher: RandomState,
    keys: HashSet<u64>,
    layer: &'l LayerId,
    cap: usize,
}

impl<'l> PathKeys<'l> {
    fn new(layer: &'l LayerId, cap: usize) -> PathKeys<'l> {
        PathKeys {
            hasher: RandomState::new(),
            keys: HashSet::new(),
            layer,
            cap,
        }
    }

    fn key(&self, path: &Path) -> u64 {
        // 0 stands for "no path" in `Findings`.
        self.hasher.hash_one(path.as_os_str().as_bytes()).max(1)
    }

    fn contains(&self, path: &Path) -> bool {
        self.keys.contains(&self.key(path))
    }

    fn insert_with_parents(&mut self, path: &Path) -> Result<(), DeepError> {
        for p in path.ancestors() {
            if p.as_os_str().is_empty() || !self.keys.insert(self.key(p)) {
                break;
            }
            if self.keys.len() > self.cap {
                return Err(DeepError::TooManyEntries {
                    index: self.layer.index,
                    digest: self.layer.digest.clone(),
                    limit: self.cap,
                });
            }
        }
        Ok(())
    }
}

/// `lstat` of paths below a root, component by component: a path below anything that is not
/// a real directory (a symlink, say) is not there.
struct Lookup<'r> {
    root: &'r Path,
    /// The last parent directory found to be real all the way down.
    parent: Option<PathBuf>,
}

impl<'r> Lookup<'r> {
    fn new(root: &'r Path) -> Lookup<'r> {
        Lookup { root, parent: None }
    }

    fn lstat(&mut self, rel: &Path) -> io::Result<Option<Metadata>> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if self.parent.as_deref() != Some(parent) {
            let mut prefix = PathBuf::new();
            for component in parent.components() {
                prefix.push(component);
                match fs::symlink_metadata(self.root.join(&prefix)) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            self.parent = Some(parent.to_path_buf());
        }
        match fs::symlink_metadata(self.root.join(rel)) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
