use rand::{RngCore, SeedableRng};
use sha2::Digest;
use std::io::Write;
fn main() {
    let n = 64usize << 20;
    let mut buf = vec![0u8; n];
    let t = std::time::Instant::now();
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    for c in buf.chunks_mut(8192) { rng.fill_bytes(c); }
    println!("rng 64MiB {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let mut h = sha2::Sha256::new();
    for c in buf.chunks(8192) { h.update(c); }
    h.finalize();
    println!("sha256 64MiB {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let mut c = flate2::Crc::new(); c.update(&buf);
    println!("crc 64MiB {:?}", t.elapsed());
    for level in [0,1] {
    let t = std::time::Instant::now();
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(n+n/10), flate2::Compression::new(level));
    for c in buf.chunks(8192) { e.write_all(c).unwrap(); }
    e.finish().unwrap();
    println!("gz{level} 64MiB {:?}", t.elapsed());
    }
    let t = std::time::Instant::now();
    let mut out = vec![0u8; n];
    for (i, c) in out.chunks_mut(8192).enumerate() { let o = (i * 7919) % (n - 8192); c.copy_from_slice(&buf[o..o + c.len()]); }
    println!("memcpy 64MiB {:?}", t.elapsed());
}
