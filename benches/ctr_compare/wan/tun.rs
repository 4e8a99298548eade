//! The TUN wire: the link W5 uses where the kernel has no `sch_netem`. A TUN device on each side
//! of the namespace and a forwarder in the bench process that delays every IP packet by half the
//! round trip (`tc tbf` on the devices sets the rate).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

/// `TUNSETIFF`, `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Creates the TUN device `name` (IP packets, no packet-info header) in the calling thread's
/// network namespace. It lives as long as the returned file.
pub fn open_tun(name: &str) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("open /dev/net/tun")?;
    // struct ifreq: the name (16 bytes, NUL-terminated), then the flags (a short).
    let mut ifr = [0u8; 40];
    if name.len() >= 16 {
        bail!("interface name {name:?} is too long");
    }
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough to hold.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, ifr.as_mut_ptr()) };
    if rc < 0 {
        bail!(
            "create TUN device {name}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(file)
}

/// [`open_tun`] inside the network namespace `netns` (from a short-lived thread that joins it).
pub fn open_tun_in(netns: &str, name: &str) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/run/netns/{netns}");
    let thread_name = name.to_string();
    std::thread::spawn(move || -> anyhow::Result<std::fs::File> {
        let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns on an open namespace file; it only moves this thread, which ends here.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("join {path}: {}", std::io::Error::last_os_error());
        }
        open_tun(&thread_name)
    })
    .join()
    .map_err(|_| anyhow!("the thread opening TUN {netns}/{name} panicked"))?
}

/// The forwarder between two TUN devices: per direction, a reader stamps each packet with
/// "now + delay" and a writer hands it to the other device at that moment (constant delay, so
/// order is kept). Stops and closes both devices on Drop.
pub struct TunWire {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// How often the forwarder's threads look at the stop flag when the link is idle.
const TUN_POLL: Duration = Duration::from_millis(100);

impl TunWire {
    pub fn start(a: std::fs::File, b: std::fs::File, delay: Duration) -> TunWire {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut threads = Vec::new();
        for (from, to) in [(a.clone(), b.clone()), (b, a)] {
            let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
            let stop_r = stop.clone();
            threads.push(std::thread::spawn(move || {
                tun_reader(&from, &tx, delay, &stop_r)
            }));
            let stop_w = stop.clone();
            threads.push(std::thread::spawn(move || tun_writer(&to, &rx, &stop_w)));
        }
        TunWire { stop, threads }
    }
}

fn tun_reader(
    from: &std::fs::File,
    tx: &std::sync::mpsc::Sender<(Instant, Vec<u8>)>,
    delay: Duration,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::Read as _;
    use std::os::fd::AsRawFd as _;
    let mut buf = vec![0u8; 65536];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, TUN_POLL.as_millis() as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        match (&*from).read(&mut buf) {
            Ok(n) if n > 0 => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn tun_writer(
    to: &std::fs::File,
    rx: &std::sync::mpsc::Receiver<(Instant, Vec<u8>)>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::Write as _;
    loop {
        match rx.recv_timeout(TUN_POLL) {
            Ok((due, packet)) => {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                // A packet the other end refuses is lost on the wire, as on a real link.
                let _ = (&*to).write(&packet);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Drop for TunWire {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
