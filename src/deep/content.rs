//! A regular file's bytes against its layer entry's: both read in step, a chunk at a time, and
//! compared as bytes. Neither side is hashed: comparing costs a small fraction of SHA-256, and it
//! tells where the file differs, not only that it does.
//!
//! `native` snapshots need one thing more. A file's path may be replaced by a later layer, and a
//! hard link made by a later layer then names the earlier file, whose bytes streamed by when the
//! path on disk no longer held them. So [`compare_entry`] can keep the SHA-256 of an entry whose
//! path does not hold its bytes ([`Compared::sha256`]): only those entries are hashed.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::expect::LayerArchive;
use super::{Context, DeepError};

/// Bytes read at a time from the archive and from the file.
const CHUNK: usize = 256 << 10;

/// What comparing a file on disk with its layer's bytes found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Not compared: the path is not a regular file of the entry's size, which is reported as
    /// such.
    NotCompared,
    /// The same bytes.
    Same,
    /// The first byte that differs.
    Differs {
        /// Its offset.
        offset: u64,
        /// The layer's byte there.
        expected: u8,
        /// The file's byte there; `None` when the file ends before it (it shrank after its
        /// size was read).
        found: Option<u8>,
    },
    /// The file differs from the layer's bytes, known by their SHA-256 only (a hard link whose
    /// target's path holds other bytes).
    HashDiffers {
        /// SHA-256 of the layer's bytes.
        expected: [u8; 32],
        /// SHA-256 of the file.
        found: [u8; 32],
    },
    /// Reading the file failed.
    Unreadable(String),
}

impl Content {
    /// What differs, in words: the `expected` and `found` of a finding (`None` when the bytes
    /// are the same or were not compared).
    pub fn describe(&self, size: u64) -> Option<(String, String)> {
        match self {
            Content::NotCompared | Content::Same => None,
            Content::Differs {
                offset,
                expected,
                found,
            } => Some((
                format!("the layer's {size} bytes"),
                match found {
                    Some(found) => format!(
                        "different bytes from offset {offset} on (0x{found:02x} where the layer has 0x{expected:02x})"
                    ),
                    None => format!("the file ending at byte {offset}"),
                },
            )),
            Content::HashDiffers { expected, found } => Some((
                format!("the layer's {size} bytes, sha256:{}", hex::encode(expected)),
                format!("sha256:{}", hex::encode(found)),
            )),
            Content::Unreadable(_) => None,
        }
    }
}

/// What [`compare_entry`] found, and the entry's SHA-256 when asked to keep it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compared {
    /// The verdict.
    pub content: Content,
    /// SHA-256 of the entry's bytes, when the caller asked for it and the file did not hold
    /// them (when it does, the file on disk stands for them).
    pub sha256: Option<[u8; 32]>,
}

/// The two buffers a comparison reads into, allocated once per layer.
pub struct Buffers {
    ours: Box<[u8]>,
    theirs: Box<[u8]>,
}

impl Buffers {
    /// Buffers for one comparison at a time.
    pub fn new() -> Buffers {
        Buffers {
            ours: vec![0u8; CHUNK].into_boxed_slice(),
            theirs: vec![0u8; CHUNK].into_boxed_slice(),
        }
    }
}

impl Default for Buffers {
    fn default() -> Buffers {
        Buffers::new()
    }
}

/// Opens a snapshot file for reading, never through a symbolic link.
pub fn open(path: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
}

/// Compares the archive's current entry with `file` (`None`: nothing to compare it with), read
/// in step at the check's rate. With `keep_hash`, hashes the entry's bytes when the file does
/// not hold them (the equal part before the first difference read again from the file); without
/// it, the rest of the entry is left for the archive to skip.
pub fn compare_entry(
    archive: &mut LayerArchive<'_>,
    file: Option<io::Result<File>>,
    buffers: &mut Buffers,
    ctx: &Context,
    keep_hash: bool,
) -> Result<Compared, DeepError> {
    let (content, file, chunk_start, chunk_len) = match file {
        None => (Content::NotCompared, None, 0, 0),
        Some(Err(e)) => (Content::Unreadable(e.to_string()), None, 0, 0),
        Some(Ok(mut file)) => match in_step(archive, &mut file, buffers, ctx)? {
            None => {
                return Ok(Compared {
                    content: Content::Same,
                    sha256: None,
                })
            }
            Some((content, start, len)) => (content, Some(file), start, len),
        },
    };
    if !keep_hash {
        return Ok(Compared {
            content,
            sha256: None,
        });
    }
    let mut hasher = Sha256::new();
    let mut whole = true;
    if let Some(file) = &file {
        // The bytes before the chunk that differs were the file's.
        whole = hash_prefix(file, chunk_start, &mut buffers.theirs, &mut hasher, ctx).is_ok();
        if ctx.cancel.is_cancelled() {
            return Err(DeepError::Cancelled);
        }
        hasher.update(&buffers.ours[..chunk_len]);
    }
    let sha256 = hash_rest(archive, &mut buffers.ours, hasher)?;
    Ok(Compared {
        content,
        // A file that cannot be read again leaves the entry without a hash.
        sha256: whole.then_some(sha256),
    })
}

/// Reads the entry and the file in step until they differ: `None` when they do not, else what
/// differs, and the offset and length of the chunk (left in `buffers.ours`) where it does.
fn in_step(
    archive: &mut LayerArchive<'_>,
    file: &mut File,
    buffers: &mut Buffers,
    ctx: &Context,
) -> Result<Option<(Content, u64, usize)>, DeepError> {
    let mut offset = 0u64;
    loop {
        let n = archive.read_data(&mut buffers.ours)?;
        if n == 0 {
            return Ok(None);
        }
        match compare_chunk(
            &buffers.ours[..n],
            file,
            &mut buffers.theirs[..n],
            offset,
            ctx,
        ) {
            Ok(None) => offset += n as u64,
            Ok(Some(content)) => return Ok(Some((content, offset, n))),
            Err(_) if ctx.cancel.is_cancelled() => return Err(DeepError::Cancelled),
            Err(e) => return Ok(Some((Content::Unreadable(e.to_string()), offset, n))),
        }
    }
}

/// Reads as many bytes as `ours` holds from `file` into `theirs` and compares them: `None` when
/// they are the same; `offset` is where `ours` starts.
fn compare_chunk(
    ours: &[u8],
    file: &mut File,
    theirs: &mut [u8],
    offset: u64,
    ctx: &Context,
) -> io::Result<Option<Content>> {
    let got = read_full(file, theirs, ctx)?;
    if got == ours.len() && ours == &theirs[..] {
        return Ok(None);
    }
    let at = ours[..got]
        .iter()
        .zip(&theirs[..got])
        .position(|(a, b)| a != b)
        .unwrap_or(got);
    Ok(Some(Content::Differs {
        offset: offset + at as u64,
        expected: ours[at],
        found: theirs[..got].get(at).copied(),
    }))
}

/// SHA-256 of a file on disk, read at the check's rate.
pub fn hash_file(file: &mut File, buffers: &mut Buffers, ctx: &Context) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    loop {
        let n = read_some(file, &mut buffers.theirs, ctx)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buffers.theirs[..n]);
    }
}

/// Compares two files on disk of the same size (a hard link's target, known to hold the layer's
/// bytes, and the link found to be a separate file).
pub fn compare_files(
    expected: &mut File,
    found: &mut File,
    buffers: &mut Buffers,
    ctx: &Context,
) -> Result<Content, DeepError> {
    let mut offset = 0u64;
    let outcome = loop {
        let n = match read_some(expected, &mut buffers.ours, ctx) {
            Ok(0) => break Ok(Content::Same),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        match compare_chunk(
            &buffers.ours[..n],
            found,
            &mut buffers.theirs[..n],
            offset,
            ctx,
        ) {
            Ok(None) => offset += n as u64,
            Ok(Some(content)) => break Ok(content),
            Err(e) => break Err(e),
        }
    };
    match outcome {
        Ok(content) => Ok(content),
        Err(_) if ctx.cancel.is_cancelled() => Err(DeepError::Cancelled),
        Err(e) => Ok(Content::Unreadable(e.to_string())),
    }
}

/// Hashes the rest of the archive's current entry into `hasher`.
fn hash_rest(
    archive: &mut LayerArchive<'_>,
    buf: &mut [u8],
    mut hasher: Sha256,
) -> Result<[u8; 32], DeepError> {
    loop {
        let n = archive.read_data(buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// Hashes the file's first `len` bytes into `hasher`.
fn hash_prefix(
    file: &File,
    len: u64,
    buf: &mut [u8],
    hasher: &mut Sha256,
    ctx: &Context,
) -> io::Result<()> {
    let mut at = 0u64;
    while at < len {
        if ctx.cancel.is_cancelled() {
            return Err(io::Error::other("the deep check was cancelled"));
        }
        let want = buf.len().min((len - at).min(usize::MAX as u64) as usize);
        let n = match file.read_at(&mut buf[..want], at) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ctx.pace(n);
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

/// Fills `buf` from `file` unless it ends first: the bytes read.
fn read_full(file: &mut File, buf: &mut [u8], ctx: &Context) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_some(file, &mut buf[filled..], ctx)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// One read, at the check's rate, stopping when the check is cancelled.
fn read_some(file: &mut File, buf: &mut [u8], ctx: &Context) -> io::Result<usize> {
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(io::Error::other("the deep check was cancelled"));
        }
        match file.read(buf) {
            Ok(n) => {
                ctx.pace(n);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
