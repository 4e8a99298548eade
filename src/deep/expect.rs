//! What a layer says its files are: the blob decompressed and read entry by entry, each entry
//! turned into an expectation about a path; and, for snapshotters that copy the whole chain into
//! each snapshot, the merged expectation of every layer of an image.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use sha2::{Digest as _, Sha256};

use super::compare::TopFiles;
use super::content::{Compared, Content};
use super::tar_walk::{Header, Kind, TarError, TarReader};
use super::{Context, DeepError, LayerId};
use crate::digest::Digest;

/// The whiteout prefix of the OCI layer format: `.wh.NAME` deletes `NAME` of lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The marker making its directory opaque: nothing of lower layers shows through.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The largest zstd window accepted, as a power of two (128 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Ownership and permission bits, as the layer records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
}

/// What a path must be on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// A regular file of this size and the bytes of its entry (compared as the entry streams
    /// by, see [`super::content`]).
    File {
        /// Length in bytes.
        size: u64,
        /// Ownership and mode.
        meta: Meta,
    },
    /// A directory.
    Dir(Meta),
    /// A directory the applier creates for an entry below it; only its type is known.
    ImpliedDir,
    /// A symbolic link to `target` (its mode means nothing on Linux).
    Symlink {
        /// Where it points, as written.
        target: PathBuf,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
    },
    /// A character (`block == false`) or block device.
    Device {
        /// A block device.
        block: bool,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
        /// Ownership and mode.
        meta: Meta,
    },
    /// A named pipe.
    Fifo(Meta),
    /// overlayfs' whiteout: a character device 0/0 hiding the lower layers' path.
    Whiteout,
    /// Nothing: the path was deleted by a whiteout.
    Absent,
}

/// What a layer entry does to the filesystem.
#[derive(Debug)]
pub enum Change {
    /// Puts a file, directory, link or device at `path`.
    Put {
        /// The path.
        path: PathBuf,
        /// What it must be (a regular file's data follows in the archive).
        header: Header,
    },
    /// Deletes `path` (a `.wh.` entry).
    Delete {
        /// The path deleted.
        path: PathBuf,
    },
    /// Hides everything of lower layers in `dir` (a `.wh..wh..opq` entry).
    Opaque {
        /// The directory.
        dir: PathBuf,
    },
    /// The root directory itself: nothing to compare.
    Root,
}

impl Change {
    /// What the entry with `header` does.
    pub fn of(header: Header) -> Change {
        let Some(name) = header.path.file_name() else {
            return Change::Root;
        };
        let name = name.as_bytes();
        let parent = header
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if name == OPAQUE_MARKER.as_bytes() {
            return Change::Opaque { dir: parent };
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if !hidden.is_empty() {
                return Change::Delete {
                    path: parent.join(OsStr::from_bytes(hidden)),
                };
            }
        }
        Change::Put {
            path: header.path.clone(),
            header,
        }
    }
}

/// The expectation for an entry (a regular file's bytes are compared apart).
pub fn expected(header: &Header) -> Expected {
    let meta = Meta {
        mode: header.mode,
        uid: header.uid,
        gid: header.gid,
    };
    match &header.kind {
        Kind::File | Kind::HardLink(_) => Expected::File {
            size: header.size,
            meta,
        },
        Kind::Dir => Expected::Dir(meta),
        Kind::Symlink(target) => Expected::Symlink {
            target: target.clone(),
            uid: header.uid,
            gid: header.gid,
        },
        Kind::Char { major, minor } => Expected::Device {
            block: false,
            major: *major,
            minor: *minor,
            meta,
        },
        Kind::Block { major, minor } => Expected::Device {
            block: true,
            major: *major,
            minor: *minor,
            meta,
        },
        Kind::Fifo => Expected::Fifo(meta),
    }
}

/// A layer blob opened as a tar archive: decompressed (gzip, zstd or none, recognized by
/// their magic bytes), read at the check's rate, and hashed as read so that [`LayerArchive::finish`]
/// can confirm it is the diff ID the image's config names.
pub struct LayerArchive<'c> {
    layer: LayerId,
    diff_id: Digest,
    tar: TarReader<Hashing<Box<dyn Read + 'c>>>,
    ctx: &'c Context,
}

impl<'c> LayerArchive<'c> {
    /// Opens `blob`, the compressed layer `layer` whose uncompressed digest is `diff_id`.
    pub fn open<R: Read + 'c>(
        layer: &LayerId,
        diff_id: &Digest,
        blob: R,
        ctx: &'c Context,
    ) -> Result<LayerArchive<'c>, DeepError> {
        let mut buffered = BufReader::with_capacity(64 << 10, Paced { inner: blob, ctx });
        let magic = buffered.fill_buf().map_err(|source| {
            ctx.error_or_cancelled(DeepError::Archive {
                index: layer.index,
                digest: layer.digest.clone(),
                source: TarError::Read { offset: 0, source },
            })
        })?;
        let decoded: Box<dyn Read + 'c> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(MultiGzDecoder::new(buffered))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let decoder = zstd::stream::read::Decoder::with_buffer(buffered)
                .and_then(|mut d| {
                    // A frame may ask for a window of gigabytes: refuse more than 128 MiB (what
                    // zstd itself accepts by default, said here so that it stays so).
                    d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                    Ok(d)
                })
                .map_err(|source| DeepError::Archive {
                    index: layer.index,
                    digest: layer.digest.clone(),
                    source: TarError::Read { offset: 0, source },
                })?;
            Box::new(decoder)
        } else {
            Box::new(buffered)
        };
        Ok(LayerArchive {
            layer: layer.clone(),
            diff_id: diff_id.clone(),
            tar: TarReader::new(Hashing {
                inner: decoded,
                hasher: Sha256::new(),
            }),
            ctx,
        })
    }

    /// The next entry's change.
    pub fn next_change(&mut self) -> Result<Option<Change>, DeepError> {
        if self.ctx.cancel.is_cancelled() {
            return Err(DeepError::Cancelled);
        }
        match self.tar.next_header() {
            Ok(h) => Ok(h.map(Change::of)),
            Err(e) => Err(self.archive_error(e)),
        }
    }

    /// Reads the current entry's data; 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, DeepError> {
        self.tar.read_data(buf).map_err(|e| self.archive_error(e))
    }

    /// Reads the rest of the archive and checks that it is the layer the config names.
    pub fn finish(mut self) -> Result<(), DeepError> {
        if let Err(e) = self.tar.drain() {
            return Err(self.archive_error(e));
        }
        let found = hex::encode(self.tar.into_inner().hasher.finalize());
        if self.diff_id.algorithm() != crate::digest::Algorithm::Sha256
            || found != self.diff_id.hex()
        {
            return Err(DeepError::DiffId {
                index: self.layer.index,
                digest: self.layer.digest.clone(),
                expected: self.diff_id.clone(),
                found: format!("sha256:{found}"),
            });
        }
        Ok(())
    }

    fn archive_error(&self, source: TarError) -> DeepError {
        self.ctx.error_or_cancelled(DeepError::Archive {
            index: self.layer.index,
            digest: self.layer.digest.clone(),
            source,
        })
    }
}

/// The compressed blob, read at the check's rate and stopping when the check is cancelled.
struct Paced<'c, R> {
    inner: R,
    ctx: &'c Context,
}

impl<R: Read> Read for Paced<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ctx.cancel.is_cancelled() {
            return Err(io::Error::other("the deep check was cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.ctx.pace(n);
        Ok(n)
    }
}

/// Hashes what passes through: the uncompressed archive, for its diff ID.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// One path of the merged expectation.
#[derive(Clone, Debug)]
pub struct Node {
    /// The layer that last wrote (or deleted) it.
    pub layer: usize,
    /// What it must be.
    pub expected: Expected,
    /// For a regular file, what comparing its bytes found when they were not the same (`None`:
    /// the same, or not a file).
    pub content: Option<Box<Compared>>,
    /// Set by the comparison once the path was found on disk.
    pub seen: bool,
    /// Set by the comparison when the path was reported as a whole (its type is wrong): paths
    /// below it are not reported again.
    pub pruned: bool,
    generation: u64,
}

/// A hard link the merged state holds: `path` must be the same file as `target` while
/// `target` is still the entry it linked to.
#[derive(Clone, Debug)]
pub struct HardLink {
    /// The link.
    pub path: PathBuf,
    /// What it links to.
    pub target: PathBuf,
    generation: u64,
}

/// What the whole image's root filesystem must hold: every layer applied in order (later
/// layers replace earlier paths, whiteouts delete them and what is below them), each path
/// remembering the layer that wrote it. For snapshotters such as `native`, whose snapshots each
/// hold a full copy of their chain. Holds at most [`Context::max_entries`] paths.
///
/// Regular files are compared with the top snapshot's as their entries stream by (the data is
/// not kept): a later layer replacing the path replaces what was found too.
#[derive(Debug)]
pub struct MergedTree {
    top: PathBuf,
    nodes: BTreeMap<PathBuf, Node>,
    links: Vec<HardLink>,
    generation: u64,
    layers: Vec<LayerId>,
}

impl MergedTree {
    /// An empty tree for the chain whose top snapshot is the directory `top`.
    pub fn new(top: impl Into<PathBuf>) -> MergedTree {
        MergedTree {
            top: top.into(),
            nodes: BTreeMap::new(),
            links: Vec::new(),
            generation: 0,
            layers: Vec::new(),
        }
    }

    /// The top snapshot's directory.
    pub fn top(&self) -> &Path {
        &self.top
    }

    /// Applies the next layer, read from `blob` (layers must come base first).
    pub fn apply<R: Read>(
        &mut self,
        layer: &LayerId,
        diff_id: &Digest,
        blob: R,
        ctx: &Context,
    ) -> Result<(), DeepError> {
        let index = layer.index;
        self.layers.push(layer.clone());
        let top_dir = self.top.clone();
        let mut top = TopFiles::new(&top_dir);
        let mut archive = LayerArchive::open(layer, diff_id, blob, ctx)?;
        while let Some(change) = archive.next_change()? {
            match change {
                Change::Root => {}
                Change::Delete { path } => {
                    self.remove_below(&path, None);
                    self.insert(ctx, layer, path, Expected::Absent, None)?;
                }
                Change::Opaque { dir } => self.remove_below(&dir, Some(index)),
                Change::Put { path, header } => {
                    self.imply_parents(ctx, layer, &path)?;
                    let (expected, content) = match &header.kind {
                        Kind::HardLink(target) => match self.nodes.get_mut(target) {
                            Some(node) if node.expected != Expected::Absent => {
                                let mut content = None;
                                if let Expected::File { meta, size } = &mut node.expected {
                                    // containerd chowns and chmods the link after making it:
                                    // the link's header decides the shared file's owner and mode.
                                    *meta = Meta {
                                        mode: header.mode,
                                        uid: header.uid,
                                        gid: header.gid,
                                    };
                                    self.links.push(HardLink {
                                        path: path.clone(),
                                        target: target.clone(),
                                        generation: node.generation,
                                    });
                                    content = top.compare_link(
                                        &path,
                                        target,
                                        *size,
                                        node.content.as_deref(),
                                        ctx,
                                    )?;
                                }
                                (node.expected.clone(), content)
                            }
                            // A link to nothing: containerd fails to unpack such a layer, so
                            // its snapshot cannot exist.
                            _ => {
                                return Err(DeepError::Archive {
                                    index,
                                    digest: layer.digest.clone(),
                                    source: TarError::Header {
                                        offset: 0,
                                        why: format!(
                                            "hard link {} points at {}, which no layer has",
                                            path.display(),
                                            target.display()
                                        ),
                                    },
                                });
                            }
                        },
                        Kind::File => {
                            let compared =
                                top.compare_file(&path, header.size, &mut archive, ctx)?;
                            let content =
                                (compared.content != Content::Same).then(|| Box::new(compared));
                            (expected(&header), content)
                        }
                        _ => (expected(&header), None),
                    };
                    let replaces_dir = matches!(
                        self.nodes.get(&path).map(|n| &n.expected),
                        Some(Expected::Dir(_) | Expected::ImpliedDir)
                    );
                    if replaces_dir && !matches!(expected, Expected::Dir(_)) {
                        self.remove_below(&path, None);
                    }
                    self.insert(ctx, layer, path, expected, content)?;
                }
            }
        }
        archive.finish()
    }

    /// Whether the tree holds no path at all (deleted ones aside).
    pub fn is_empty(&self) -> bool {
        !self.nodes.values().any(|n| n.expected != Expected::Absent)
    }

    /// The layers applied, base first.
    pub fn layers(&self) -> &[LayerId] {
        &self.layers
    }

    /// Every path, in order (a directory before what is below it).
    pub fn nodes_mut(&mut self) -> impl Iterator<Item = (&PathBuf, &mut Node)> {
        self.nodes.iter_mut()
    }

    /// The node of `path`.
    pub fn node_mut(&mut self, path: &Path) -> Option<&mut Node> {
        self.nodes.get_mut(path)
    }

    /// Hard links whose target is still the file they linked to.
    pub fn live_links(&self) -> impl Iterator<Item = &HardLink> {
        self.links.iter().filter(|l| {
            self.nodes
                .get(&l.target)
                .is_some_and(|n| n.generation == l.generation)
                && self
                    .nodes
                    .get(&l.path)
                    .is_some_and(|n| matches!(n.expected, Expected::File { .. }))
        })
    }

    fn insert(
        &mut self,
        ctx: &Context,
        layer: &LayerId,
        path: PathBuf,
        expected: Expected,
        content: Option<Box<Compared>>,
    ) -> Result<(), DeepError> {
        if self.nodes.len() + self.links.len() >= ctx.max_entries && !self.nodes.contains_key(&path)
        {
            return Err(DeepError::TooManyEntries {
                index: layer.index,
                digest: layer.digest.clone(),
                limit: ctx.max_entries,
            });
        }
        self.generation += 1;
        self.nodes.insert(
            path,
            Node {
                layer: layer.index,
                expected,
                content,
                seen: false,
                pruned: false,
                generation: self.generation,
            },
        );
        Ok(())
    }

    /// Directories the applier creates for `path`'s entry when its layer has none for them.
    fn imply_parents(
        &mut self,
        ctx: &Context,
        layer: &LayerId,
        path: &Path,
    ) -> Result<(), DeepError> {
        let mut missing = Vec::new();
        for parent in path.ancestors().skip(1) {
            if parent.as_os_str().is_empty() {
                break;
            }
            match self.nodes.get(parent).map(|n| &n.expected) {
                Some(Expected::Dir(_) | Expected::ImpliedDir) => break,
                _ => missing.push(parent.to_path_buf()),
            }
        }
        for parent in missing.into_iter().rev() {
            // A file or link in the way is replaced by the directory.
            self.remove_below(&parent, None);
            self.insert(ctx, layer, parent, Expected::ImpliedDir, None)?;
        }
        Ok(())
    }

    /// Removes every path strictly below `dir` (written by a layer below `below`, when given).
    fn remove_below(&mut self, dir: &Path, below: Option<usize>) {
        let doomed: Vec<PathBuf> = self
            .nodes
            .range::<Path, _>((Bound::Excluded(dir), Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(dir))
            .filter(|(_, n)| below.is_none_or(|b| n.layer < b))
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.nodes.remove(&p);
        }
    }
}
