//! A streaming tar reader for layer archives: headers one at a time, entry data read through,
//! every size bounded.
//!
//! Layers come from a registry and from disk, so the archive may be hostile or damaged: a GNU
//! long name or a PAX header claiming gigabytes must not be read into memory, and nothing may
//! panic. Only what containerd's applier honours is interpreted: ustar and GNU headers, GNU long
//! names and link names, PAX `path`, `linkpath`, `size`, `uid`, `gid` records. Sparse files and
//! unknown entry types are refused, as containerd refuses them when unpacking.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The largest GNU long name or PAX header accepted (a path is at most 4096 bytes on Linux;
/// PAX headers also carry extended attributes).
pub const MAX_EXTENSION_BYTES: u64 = 1 << 20;

const BLOCK: usize = 512;

/// Why an archive cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Reading the archive (or decompressing it) failed.
    #[error("reading the archive at byte {offset}")]
    Read {
        /// Where in the uncompressed archive.
        offset: u64,
        /// The reader's error.
        #[source]
        source: io::Error,
    },
    /// The archive ends inside a header or an entry's data.
    #[error("the archive ends early, at byte {offset}")]
    Truncated {
        /// Where in the uncompressed archive.
        offset: u64,
    },
    /// A header that is not a tar header.
    #[error("invalid tar header at byte {offset}: {why}")]
    Header {
        /// Where in the uncompressed archive.
        offset: u64,
        /// What is wrong with it.
        why: String,
    },
    /// An entry of a kind containerd does not unpack.
    #[error("entry {path:?} at byte {offset} has type {kind:?}, which containerd does not unpack")]
    Unsupported {
        /// Where in the uncompressed archive.
        offset: u64,
        /// The entry's path as written.
        path: String,
        /// The tar type flag.
        kind: char,
    },
    /// A path that leaves the root filesystem (containerd refuses such layers).
    #[error("entry {path:?} at byte {offset} leaves the root filesystem")]
    Breakout {
        /// Where in the uncompressed archive.
        offset: u64,
        /// The entry's path as written.
        path: String,
    },
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A hard link to an earlier entry (the path, normalized like entry paths).
    HardLink(PathBuf),
    /// A symbolic link and its target, as written.
    Symlink(PathBuf),
    /// A character device.
    Char {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    Block {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A directory.
    Dir,
    /// A named pipe.
    Fifo,
}

/// One entry's header, with extensions applied.
#[derive(Clone, Debug)]
pub struct Header {
    /// Normalized path relative to the root filesystem (no `.`, `..`, leading or trailing `/`);
    /// empty for the root itself.
    pub path: PathBuf,
    /// What it is.
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Bytes of data following the header (regular files only).
    pub size: u64,
}

/// Reads an archive's entries in order. Data not read by the caller is skipped by
/// [`TarReader::next_header`]; everything is read through, so a hashing reader below sees the
/// whole archive.
pub struct TarReader<R> {
    inner: R,
    offset: u64,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    ended: bool,
}

/// PAX and GNU extensions waiting for the entry they describe.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
}

impl<R: Read> TarReader<R> {
    /// Reads the archive from `inner` (uncompressed).
    pub fn new(inner: R) -> TarReader<R> {
        TarReader {
            inner,
            offset: 0,
            remaining: 0,
            padding: 0,
            ended: false,
        }
    }

    /// The reader below.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Bytes of the uncompressed archive consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next entry, or `None` at the end of the archive.
    pub fn next_header(&mut self) -> Result<Option<Header>, TarError> {
        let mut pending = Pending::default();
        loop {
            self.skip_rest()?;
            if self.ended {
                return Ok(None);
            }
            let at = self.offset;
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                // No end-of-archive marker: tolerated, as Go's archive/tar tolerates it.
                self.ended = true;
                return Ok(None);
            }
            if block.iter().all(|b| *b == 0) {
                self.ended = true;
                return Ok(None);
            }
            check_checksum(&block).map_err(|why| TarError::Header { offset: at, why })?;
            let header_err = |why: String| TarError::Header { offset: at, why };
            let size = match pending.size.take() {
                Some(s) => s,
                None => number(&block[124..136]).map_err(|e| header_err(format!("size: {e}")))?,
            };
            let flag = block[156];
            self.remaining = size;
            self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
            match flag {
                b'x' | b'L' | b'K' => {
                    if size > MAX_EXTENSION_BYTES {
                        return Err(header_err(format!(
                            "extension header of {size} bytes (at most {MAX_EXTENSION_BYTES})"
                        )));
                    }
                    let data = self.read_data_all(size)?;
                    match flag {
                        b'x' => apply_pax(&data, &mut pending).map_err(header_err)?,
                        b'L' => pending.path = Some(trim_nul(&data).to_vec()),
                        _ => pending.link = Some(trim_nul(&data).to_vec()),
                    }
                    continue;
                }
                // Global PAX headers set defaults nobody relies on for these fields.
                b'g' => continue,
                _ => {}
            }
            let raw_path = match pending.path.take() {
                Some(p) => p,
                None => {
                    let name = trim_nul(&block[0..100]);
                    let posix = &block[257..263] == b"ustar\0";
                    let prefix = trim_nul(&block[345..500]);
                    if posix && !prefix.is_empty() {
                        [prefix, b"/", name].concat()
                    } else {
                        name.to_vec()
                    }
                }
            };
            let shown = String::from_utf8_lossy(&raw_path).into_owned();
            let path = normalize(&raw_path).ok_or_else(|| TarError::Breakout {
                offset: at,
                path: shown.clone(),
            })?;
            let link = pending
                .link
                .take()
                .unwrap_or_else(|| trim_nul(&block[157..257]).to_vec());
            let field = |range: std::ops::Range<usize>, what: &str| {
                number(&block[range]).map_err(|e| header_err(format!("{what}: {e}")))
            };
            let device = |what: &str| -> Result<(u32, u32), TarError> {
                let major = field(329..337, what)?;
                let minor = field(337..345, what)?;
                match (u32::try_from(major), u32::try_from(minor)) {
                    (Ok(major), Ok(minor)) => Ok((major, minor)),
                    _ => Err(header_err(format!("{what} number out of range"))),
                }
            };
            let kind = match flag {
                b'0' | b'\0' | b'7' => Kind::File,
                b'1' => Kind::HardLink(normalize(&link).ok_or_else(|| TarError::Breakout {
                    offset: at,
                    path: String::from_utf8_lossy(&link).into_owned(),
                })?),
                b'2' => Kind::Symlink(PathBuf::from(OsStr::from_bytes(&link))),
                b'3' => {
                    let (major, minor) = device("device")?;
                    Kind::Char { major, minor }
                }
                b'4' => {
                    let (major, minor) = device("device")?;
                    Kind::Block { major, minor }
                }
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                other => {
                    return Err(TarError::Unsupported {
                        offset: at,
                        path: shown,
                        kind: other as char,
                    })
                }
            };
            // Only regular files carry data; anything else's size is skipped.
            let size = if kind == Kind::File { size } else { 0 };
            let mode = field(100..108, "mode")? as u32 & 0o7777;
            let uid = match pending.uid.take() {
                Some(u) => u,
                None => field(108..116, "uid")?,
            };
            let gid = match pending.gid.take() {
                Some(g) => g,
                None => field(116..124, "gid")?,
            };
            return Ok(Some(Header {
                path,
                kind,
                mode,
                uid,
                gid,
                size,
            }));
        }
    }

    /// Reads the current entry's data.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.read_some(&mut buf[..want])?;
        if n == 0 {
            return Err(TarError::Truncated {
                offset: self.offset,
            });
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    /// Reads whatever follows the end of the archive (padding to the record size), so that a
    /// reader below has seen every byte.
    pub fn drain(&mut self) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while self.read_some(&mut buf)? > 0 {}
        Ok(())
    }

    fn read_data_all(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        let mut data = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < data.len() {
            filled += self.read_data(&mut data[filled..])?;
        }
        Ok(data)
    }

    fn skip_rest(&mut self) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while self.remaining > 0 {
            self.read_data(&mut buf)?;
        }
        while self.padding > 0 {
            let want = (self.padding as usize).min(buf.len());
            let n = self.read_some(&mut buf[..want])?;
            if n == 0 {
                return Err(TarError::Truncated {
                    offset: self.offset,
                });
            }
            self.padding -= n as u64;
        }
        Ok(())
    }

    /// A whole block; `false` at a clean end of input.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < BLOCK {
            let n = self.read_some(&mut block[filled..])?;
            if n == 0 {
                return if filled == 0 {
                    Ok(false)
                } else {
                    Err(TarError::Truncated {
                        offset: self.offset,
                    })
                };
            }
            filled += n;
        }
        Ok(true)
    }

    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(TarError::Read {
                        offset: self.offset,
                        source,
                    })
                }
            }
        }
    }
}

fn trim_nul(bytes: &[u8]) -> &[u8] {
    match bytes.iter().position(|b| *b == 0) {
        Some(end) => &bytes[..end],
        None => bytes,
    }
}

/// A numeric field: octal text (NUL or space padded) or GNU base-256.
fn number(field: &[u8]) -> Result<u64, String> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] == 0xff {
            return Err("negative number".into());
        }
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(*b)))
                .ok_or("number too large")?;
        }
        return Ok(value);
    }
    let text = trim_nul(field);
    let digits = std::str::from_utf8(text)
        .map_err(|_| "not a number".to_string())?
        .trim_matches(|c: char| c == ' ' || c == '\0');
    if digits.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(digits, 8).map_err(|_| format!("{digits:?} is not an octal number"))
}

fn check_checksum(block: &[u8; BLOCK]) -> Result<(), String> {
    let recorded = number(&block[148..156]).map_err(|e| format!("checksum: {e}"))?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if recorded == unsigned || i64::try_from(recorded).is_ok_and(|r| r == signed) {
        Ok(())
    } else {
        Err(format!("checksum {recorded} does not match {unsigned}"))
    }
}

/// PAX records: `<length> <key>=<value>\n`.
fn apply_pax(mut data: &[u8], pending: &mut Pending) -> Result<(), String> {
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("PAX record without a length")?;
        let length: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record length is not a number")?;
        if length <= space + 1 || length > data.len() || data[length - 1] != b'\n' {
            return Err("PAX record length out of bounds".into());
        }
        let record = &data[space + 1..length - 1];
        data = &data[length..];
        let Some(eq) = record.iter().position(|b| *b == b'=') else {
            return Err("PAX record without '='".into());
        };
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let numeric = || -> Result<u64, String> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("PAX {} is not a number", String::from_utf8_lossy(key)))
        };
        match key {
            b"path" => pending.path = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" => pending.size = Some(numeric()?),
            b"uid" => pending.uid = Some(numeric()?),
            b"gid" => pending.gid = Some(numeric()?),
            k if k.starts_with(b"GNU.sparse.") => {
                return Err("sparse files are not supported".into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// Cleans a path as containerd does before joining it to the root (`filepath.Clean`); `None`
/// when `..` would leave the root.
pub fn normalize(raw: &[u8]) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(c) => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(1000);
        h.set_gid(100);
        h
    }

    fn entries(bytes: &[u8]) -> Result<Vec<(Header, Vec<u8>)>, TarError> {
        let mut r = TarReader::new(bytes);
        let mut out = Vec::new();
        while let Some(h) = r.next_header()? {
            let mut data = Vec::new();
            let mut buf = [0u8; 7];
            loop {
                let n = r.read_data(&mut buf)?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            out.push((h, data));
        }
        r.drain()?;
        assert_eq!(r.offset(), bytes.len() as u64);
        Ok(out)
    }

    #[test]
    fn entries_come_out_with_their_metadata_and_data() {
        let long = format!("{}/file", "d".repeat(150));
        let bytes = archive(|b| {
            let mut h = header(tar::EntryType::Directory, 0o1755, 0);
            b.append_data(&mut h, "./a/", io::empty()).unwrap();
            let mut h = header(tar::EntryType::Regular, 0o4755, 11);
            b.append_data(&mut h, "a/b", &b"hello world"[..]).unwrap();
            let mut h = header(tar::EntryType::Regular, 0o644, 3);
            b.append_data(&mut h, &long, &b"xyz"[..]).unwrap();
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, "a/l", "../target").unwrap();
            let mut h = header(tar::EntryType::Link, 0o644, 0);
            b.append_link(&mut h, "a/h", "/a/b").unwrap();
            let mut h = header(tar::EntryType::Char, 0o600, 0);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            b.append_data(&mut h, "dev/null", io::empty()).unwrap();
        });
        let got = entries(&bytes).unwrap();
        let paths: Vec<_> = got.iter().map(|(h, _)| h.path.clone()).collect();
        assert_eq!(
            paths,
            ["a", "a/b", long.as_str(), "a/l", "a/h", "dev/null"]
                .map(PathBuf::from)
                .to_vec()
        );
        assert_eq!((got[0].0.kind.clone(), got[0].0.mode), (Kind::Dir, 0o1755));
        assert_eq!(got[1].1, b"hello world");
        assert_eq!(
            (got[1].0.mode, got[1].0.uid, got[1].0.gid),
            (0o4755, 1000, 100)
        );
        assert_eq!(got[2].1, b"xyz");
        assert_eq!(got[3].0.kind, Kind::Symlink("../target".into()));
        assert_eq!(got[4].0.kind, Kind::HardLink("a/b".into()));
        assert_eq!(got[5].0.kind, Kind::Char { major: 1, minor: 3 });
    }

    #[test]
    fn pax_records_override_the_header() {
        let bytes = archive(|b| {
            let mut h = header(tar::EntryType::Regular, 0o644, 2);
            b.append_pax_extensions([("path", &b"p/from-pax"[..]), ("uid", b"70000")])
                .unwrap();
            b.append_data(&mut h, "short", &b"ok"[..]).unwrap();
        });
        let got = entries(&bytes).unwrap();
        assert_eq!(got[0].0.path, PathBuf::from("p/from-pax"));
        assert_eq!(got[0].0.uid, 70000);
        assert_eq!(got[0].1, b"ok");
    }

    #[test]
    fn hostile_archives_are_errors_not_allocations_or_panics() {
        // A GNU long name claiming 8 GiB.
        let mut h = header(tar::EntryType::GNULongName, 0, 8 << 30);
        h.set_path("././@LongLink").unwrap();
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        assert!(matches!(
            entries(&bytes),
            Err(TarError::Header { why, .. }) if why.contains("extension header")
        ));
        // A path leaving the root.
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"a/../../x");
        h.set_cksum();
        assert!(matches!(
            entries(h.as_bytes()),
            Err(TarError::Breakout { .. })
        ));
        // A damaged checksum, a truncated entry, random bytes.
        let good = archive(|b| {
            let mut h = header(tar::EntryType::Regular, 0o644, 600);
            b.append_data(&mut h, "f", &[1u8; 600][..]).unwrap();
        });
        let mut bad = good.clone();
        bad[10] ^= 1;
        assert!(matches!(entries(&bad), Err(TarError::Header { .. })));
        assert!(matches!(
            entries(&good[..700]),
            Err(TarError::Truncated { .. })
        ));
        let mut noise = vec![0u8; 4096];
        for (i, b) in noise.iter_mut().enumerate() {
            *b = (i * 7919 % 251) as u8;
        }
        assert!(entries(&noise).is_err());
        // Sparse entries are refused like containerd refuses them.
        let mut h = header(tar::EntryType::GNUSparse, 0o644, 0);
        h.set_path("s").unwrap();
        h.set_cksum();
        assert!(matches!(
            entries(h.as_bytes()),
            Err(TarError::Unsupported { kind: 'S', .. })
        ));
    }

    #[test]
    fn every_single_byte_corruption_reads_or_fails_without_panicking() {
        let long = format!("{}/file", "d".repeat(120));
        let good = archive(|b| {
            let mut h = header(tar::EntryType::Regular, 0o644, 5);
            b.append_pax_extensions([("path", &b"pax/name"[..]), ("size", b"5")])
                .unwrap();
            b.append_data(&mut h, "x", &b"12345"[..]).unwrap();
            let mut h = header(tar::EntryType::Regular, 0o644, 3);
            b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, "l", "target").unwrap();
        });
        for at in 0..good.len() {
            for value in [0x00, 0xff, b'7', b' '] {
                let mut bad = good.clone();
                bad[at] = value;
                // Either outcome is fine; a panic or a huge allocation is not.
                let _ = entries(&bad);
            }
        }
    }

    #[test]
    fn paths_are_cleaned_like_containerd_cleans_them() {
        assert_eq!(normalize(b"./a//b/./c/"), Some(PathBuf::from("a/b/c")));
        assert_eq!(normalize(b"/a/x/../b"), Some(PathBuf::from("a/b")));
        assert_eq!(normalize(b"./"), Some(PathBuf::new()));
        assert_eq!(normalize(b"../etc/passwd"), None);
    }

    #[test]
    fn numbers_are_octal_or_base_256() {
        assert_eq!(number(b"0000644\0"), Ok(0o644));
        assert_eq!(number(b"  17 \0"), Ok(0o17));
        assert_eq!(
            number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]),
            Ok(2 << 24)
        );
        assert!(number(&[0xff; 12]).is_err());
        assert!(number(b"12x").is_err());
    }
}
