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

/// Unix socket paths are limited to 108 bytes; a long `$TMPDIR` would make containerd's sockets
/// unusable, so fall back to `/tmp` when the default location is too deep.
pub fn tempdir(prefix: &str) -> TempDir {
    let base = std::env::temp_dir();
    let base = if base.as_os_str().len() > 40 {
        PathBuf::from("/tmp")
    } else {
        base
    };
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("cannot create a temp dir in {}: {e}", base.display()))
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

fn is_alive(pid: i32) -> bool {
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
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
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
