//! Process plumbing shared by the bench's daemons: private temp dirs, log files, readiness
//! deadlines and teardown (killing stray shims, unmounting leftovers).

use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A bench daemon's private temp dir, locked (flock on [`LOCK_FILE`]) for as long as it lives, so
/// a later test process can tell it from one orphaned by a killed test process: the kernel drops
/// the lock when its holder dies, however it dies. Removed on Drop.
pub struct BenchDir {
    dir: TempDir,
    _lock: File,
}

pub const LOCK_FILE: &str = ".bench.lock";

impl BenchDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Creates and locks a bench dir named `<prefix>XXXXXX` in the temp dir, after reclaiming orphans.
pub fn tempdir(prefix: &str) -> BenchDir {
    sweep_orphans_once();
    let base = temp_base();
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("cannot create a temp dir in {}: {e}", base.display()));
    let lock = File::create(dir.path().join(LOCK_FILE)).expect("create the bench dir lock file");
    assert!(try_lock(&lock), "cannot lock a fresh bench dir");
    BenchDir { dir, _lock: lock }
}

/// Non-blocking exclusive flock.
fn try_lock(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Unix socket paths are limited to 108 bytes; a long `$TMPDIR` would make containerd's sockets
/// unusable, so fall back to `/tmp` when the default location is too deep.
fn temp_base() -> PathBuf {
    let base = std::env::temp_dir();
    if base.as_os_str().len() > 40 {
        PathBuf::from("/tmp")
    } else {
        base
    }
}

/// Prefixes of the temp dirs of bench daemons, which [`sweep_orphans_once`] may reclaim.
pub const DIR_PREFIXES: [&str; 2] = ["bench-containerd-", "bench-registry-"];

/// A bench dir without its lock file is either being created right now or was made by a test
/// binary built before the lock existed; it is reclaimed only once this old and unused.
const UNLOCKED_AGE: Duration = Duration::from_secs(600);

/// Once per process, reclaims what killed test processes left behind: their daemons died with
/// them (PDEATHSIG), but containerd shims run detached and keep their containers, mounts, shim
/// sockets and temp dirs (content stores can be large).
pub fn sweep_orphans_once() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_orphans);
}

fn sweep_orphans() {
    let Ok(entries) = fs::read_dir(temp_base()) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().to_string();
        if !DIR_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = entry.path();
        // Held while we clean up, so two sweepers never work on the same dir.
        let lock = match File::open(dir.join(LOCK_FILE)) {
            Ok(lock) if try_lock(&lock) => Some(lock),
            Ok(_) => continue, // its owner is alive
            Err(_) if older_than(&dir, UNLOCKED_AGE) && !named_by_a_daemon(&dir) => None,
            Err(_) => continue,
        };
        reclaim(&dir);
        drop(lock);
    }
}

/// Kills the shims (and containers) of a dead bench containerd in `dir`, then removes the dir.
fn reclaim(dir: &Path) {
    let socket = dir.join("containerd.sock").display().to_string();
    let shims = pids_with_args("-address", &socket);
    let shim_sockets: Vec<PathBuf> = shims
        .iter()
        .filter_map(|pid| super::containerd::shim_socket(&socket, &cmdline(*pid)))
        .collect();
    if !shims.is_empty() {
        kill_pids(&with_descendants(&shims));
    }
    for path in shim_sockets {
        let _ = fs::remove_file(path);
    }
    unmount_under(dir);
    let _ = fs::remove_dir_all(dir);
}

/// Whether a live process other than a containerd shim has a path inside `dir` in its argv
/// (containerd's `--config`, the registry's config, a client's `--address`).
fn named_by_a_daemon(dir: &Path) -> bool {
    let inside = format!("{}/", dir.display());
    all_processes().into_iter().any(|(pid, _)| {
        let args = cmdline(pid);
        let is_shim = args.first().is_some_and(|a| a.contains("containerd-shim"));
        !is_shim && args.iter().any(|a| a.starts_with(&inside))
    })
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().map(|a| a > age).unwrap_or(false))
        .unwrap_or(false)
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Starts `cmd` with stdout and stderr appended to `log`, dying with the test process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, not the process. Test threads
/// end after each test, and a fixture might outlive the test that started it, so all daemons are
/// forked from one thread that lives as long as the process. That way a test binary killed by a
/// timeout or Ctrl-C takes its containerd and registry along instead of leaking them.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let out = File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    let err = out.try_clone().expect("clone log file handle");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("test process exited during spawn"));
            }
            Ok(())
        });
    }
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("bench-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the bench spawner thread");
        Mutex::new(tx)
    });
    let program = format!("{:?}", cmd.get_program());
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply_tx))
        .expect("bench spawner thread is gone");
    reply_rx
        .recv()
        .expect("bench spawner thread is gone")
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

/// The last `lines` lines of a log file, for panic messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The last `lines` lines of a log at level warning or worse (Go daemons log `level=error`), which
/// a plain tail would bury under startup chatter: containerd reports a plugin that failed to load
/// as a warning.
pub fn log_errors(path: &Path, lines: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["warning", "error", "fatal", "panic"]
                .iter()
                .any(|lvl| l.contains(&format!("level={lvl}")))
        })
        .collect();
    errors[errors.len().saturating_sub(lines)..].join("\n")
}

/// A deadline for readiness polling: `poll_interval` paces the loop, the deadline bounds it.
pub struct Deadline {
    end: Instant,
}

impl Deadline {
    pub fn after(timeout: Duration) -> Self {
        Deadline {
            end: Instant::now() + timeout,
        }
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.end
    }

    /// Waits one polling step (never past the deadline).
    pub async fn tick(&self) {
        let left = self.end.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(25))).await;
    }
}

/// SIGKILLs a child we started and reaps it.
pub fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Pids of processes whose argv holds `flag` immediately followed by `value`, e.g. the shims of a
/// containerd instance (`containerd-shim-runc-v2 ... -address <socket>`).
pub fn pids_with_args(flag: &str, value: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for (pid, _) in all_processes() {
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// A process's argv, or nothing if it is gone.
pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The argument after `flag` in `args`.
pub fn arg_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.windows(2)
        .find(|w| w[0] == flag)
        .map(|w| w[1].as_str())
}

/// `roots` and all their descendants (containers run below their shim).
pub fn with_descendants(roots: &[i32]) -> Vec<i32> {
    let procs = all_processes();
    let mut out: Vec<i32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for (pid, ppid) in &procs {
            if *ppid == parent && !out.contains(pid) {
                out.push(*pid);
            }
        }
        i += 1;
    }
    out
}

/// SIGKILLs processes that are not our children and waits (bounded) until they are gone or zombies.
pub fn kill_pids(pids: &[i32]) {
    for pid in pids {
        // SAFETY: plain syscall on a pid we found in /proc.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
    }
    let deadline = Deadline::after(Duration::from_secs(5));
    while !deadline.expired() && pids.iter().any(|p| is_alive(*p)) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// (pid, ppid) of every process.
fn all_processes() -> Vec<(i32, i32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may contain spaces and parentheses: parse after the last ')'.
            let (_, rest) = stat.rsplit_once(')')?;
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first, so the temp dir can be
/// removed even after containers or overlay snapshots left mounts behind.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: valid NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A loopback TCP port that was free a moment ago. Another process may grab it before the daemon
/// binds it, so callers retry on "address already in use".
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}
