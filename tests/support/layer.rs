//! Layer blobs: a tar of random regular files, gzip'd, written to an anonymous temp file.
//!
//! Tests run unoptimized, where the Rust deflate, SHA-256 and RNG crates crawl (flate2 level 1
//! ~7 MB/s, sha2 ~25 MB/s). So the hot paths avoid them: SHA-256 comes from ring (assembly),
//! level 0 is written as deflate "stored" blocks here (just a copy plus CRC), levels 1-9 run the
//! system's `gzip` in a child process, and file content is copied from a per-layer pool of random
//! bytes. A 256 MiB layer then takes seconds, not minutes.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::process::{Command, Stdio};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use ring::digest::{Context, SHA256};

/// A finished layer: the blob in `file` (rewound), its digest and size, and the diff_id.
pub struct BuiltLayer {
    pub file: File,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

/// Regular files in a layer are at most this big, so large layers hold a few files.
const MAX_FILE: usize = 64 << 20;

/// Builds a gzip'd tar of random files totalling `size` bytes, compressed at `level` (0 = stored).
/// Random data does not compress, so the blob is about `size` bytes too.
pub fn build_layer(size: usize, level: u32) -> BuiltLayer {
    assert!(level <= 9, "gzip level {level} is not in 0..=9");
    let mut file = tempfile::tempfile().expect("create a temp file for a layer");
    let diff_id = if level == 0 {
        let mut gz = StoredGzip::new(BufWriter::with_capacity(1 << 20, &file));
        let diff_id = write_tar(size, &mut gz).expect("write layer tar");
        gz.finish().expect("finish gzip stream");
        diff_id
    } else {
        gzip_with_child(size, level, &file)
    };
    file.rewind().expect("rewind layer file");
    let (digest, size) = sha256_reader(&mut file).expect("hash layer file");
    file.rewind().expect("rewind layer file");
    BuiltLayer {
        file,
        digest,
        size,
        diff_id,
    }
}

/// Pipes the tar through `gzip -<level> -n` into `out`; returns the diff_id.
fn gzip_with_child(size: usize, level: u32, out: &File) -> String {
    let mut child = Command::new("gzip")
        .arg(format!("-{level}"))
        .arg("-n")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(out.try_clone().expect("clone layer file handle"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run gzip (Debian package gzip): {e}"));
    let stdin = child.stdin.take().expect("gzip stdin");
    let mut writer = BufWriter::with_capacity(1 << 20, stdin);
    let written = write_tar(size, &mut writer).and_then(|d| writer.flush().map(|_| d));
    drop(writer); // closes gzip's stdin so it finishes
    let output = child.wait_with_output().expect("wait for gzip");
    assert!(
        output.status.success(),
        "gzip -{level} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    written.expect("write layer tar into gzip")
}

/// Writes a tar of random files totalling `size` bytes; returns its sha256 (the diff_id).
fn write_tar(size: usize, out: &mut impl Write) -> io::Result<String> {
    let mut out = HashingWriter::new(out);
    let mut pool = RandomPool::new();
    let files = size.div_ceil(MAX_FILE).max(1);
    let mut left = size;
    for i in 0..files {
        let len = left.min(MAX_FILE);
        left -= len;
        let mut header = tar::Header::new_gnu();
        header.set_path(format!("data/blob-{i}.bin"))?;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(len as u64);
        header.set_mtime(0);
        header.set_cksum();
        out.write_all(header.as_bytes())?;
        pool.write_random(len, &mut out)?;
        out.write_all(&[0u8; 512][..(512 - len % 512) % 512])?;
    }
    // End of archive: two zero blocks.
    out.write_all(&[0u8; 1024])?;
    Ok(out.digest())
}

/// Random bytes at memcpy speed: 64 KiB slices of a 4 MiB random pool, never the same slice twice
/// in a row. Deflate looks back at most 32 KiB, so it finds nothing to compress.
struct RandomPool {
    pool: Vec<u8>,
    rng: SmallRng,
    last: usize,
}

const SLICE: usize = 64 << 10;
const SLICES: usize = 64;

impl RandomPool {
    fn new() -> Self {
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let mut pool = vec![0u8; SLICE * SLICES];
        rng.fill_bytes(&mut pool);
        RandomPool {
            pool,
            rng,
            last: SLICES,
        }
    }

    fn write_random(&mut self, mut len: usize, out: &mut impl Write) -> io::Result<()> {
        while len > 0 {
            let mut slot = self.rng.random_range(0..SLICES - 1);
            if slot >= self.last {
                slot += 1;
            }
            self.last = slot;
            let n = len.min(SLICE);
            out.write_all(&self.pool[slot * SLICE..slot * SLICE + n])?;
            len -= n;
        }
        Ok(())
    }
}

/// A gzip member made of deflate "stored" blocks: what `gzip`/zlib level 0 produce.
struct StoredGzip<W: Write> {
    inner: W,
    block: Vec<u8>,
    crc: flate2::Crc,
    header_written: bool,
}

/// The largest stored block deflate allows.
const STORED_MAX: usize = 65535;

impl<W: Write> StoredGzip<W> {
    fn new(inner: W) -> Self {
        StoredGzip {
            inner,
            block: Vec::with_capacity(STORED_MAX),
            crc: flate2::Crc::new(),
            header_written: false,
        }
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // magic, CM=deflate, no flags, mtime 0, XFL 0, OS=unix
            self.inner
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3])?;
            self.header_written = true;
        }
        Ok(())
    }

    fn emit_block(&mut self, last: bool) -> io::Result<()> {
        self.write_header()?;
        let len = self.block.len() as u16;
        let mut head = [0u8; 5];
        head[0] = u8::from(last); // BFINAL, BTYPE=00 (stored), padded to the byte boundary
        head[1..3].copy_from_slice(&len.to_le_bytes());
        head[3..5].copy_from_slice(&(!len).to_le_bytes());
        self.inner.write_all(&head)?;
        self.inner.write_all(&self.block)?;
        self.block.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        self.emit_block(true)?;
        let crc = self.crc.sum();
        let isize = self.crc.amount();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&isize.to_le_bytes())?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for StoredGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Blocks are emitted only once full, so the final (BFINAL) block is known at finish().
        if self.block.len() == STORED_MAX {
            self.emit_block(false)?;
        }
        let n = buf.len().min(STORED_MAX - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes (sha256) what passes through.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Context,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Context::new(&SHA256),
        }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finish()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&SHA256, bytes))
    )
}

/// `sha256:<hex>` and length of everything `r` yields.
pub fn sha256_reader(r: &mut impl Read) -> io::Result<(String, u64)> {
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        total += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(ctx.finish())), total))
}
