//! Whether an image's process can start, judged from its unpacked root filesystem alone.
//!
//! The root filesystem is given as layer directories, top (newest) first, merged with overlayfs
//! semantics: the first layer holding an entry wins, a whiteout (a 0/0 character device) hides the
//! entry in lower layers, and an opaque directory (`trusted.overlay.opaque` or
//! `user.overlay.opaque` = `y`) hides what lower layers hold under it. One directory is the
//! `native` snapshotter's case, where the chain is already merged; a chain of `overlayfs`
//! snapshots is each snapshot's `fs` directory, the image's top layer first.
//!
//! [`check_start`] looks up the image's command as runc would (`Entrypoint` + `Cmd`, a bare name
//! searched in the image's `PATH`) and checks what the kernel checks at `execve`: a regular,
//! executable, non-empty file, an ELF binary for the image's architecture or a `#!` script whose
//! interpreter passes the same checks. What it finds wrong is a [`Finding`]; it says nothing about
//! a command a pod spec sets instead of the image's.
//!
//! Symbolic links resolve inside the root filesystem as they do inside the container: an absolute
//! target starts at the image's root, `..` stops there, and more than [`MAX_LINK_HOPS`] links make
//! a loop. No link is ever followed on the host: every component is looked up with `lstat` below a
//! layer directory. Reads are bounded (a few hundred bytes of the one file that would be run, and
//! of its interpreter) and synchronous: async callers use `spawn_blocking`. The layers are meant
//! to be committed snapshots, which nothing rewrites: the check does not guard against a layer
//! changing while it runs.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::oci::ImageConfig;
use crate::platform::Platform;

/// The `PATH` containerd gives a process whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How many symbolic links one lookup may follow, as the kernel (`MAXSYMLINKS`).
pub const MAX_LINK_HOPS: usize = 40;
/// How much of a `#!` line is read after the `#!`, as the kernel (`BINPRM_BUF_SIZE`).
const SHEBANG_MAX: usize = 256;

/// The image's command can start: `path` is the file `execve` gets, as seen in the container
/// (after the `PATH` search, before following links).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startable {
    /// The command resolves to a file the kernel would run.
    Yes {
        /// e.g. `/bin/sh` for a command `sh`.
        path: String,
    },
    /// It would not start, and why.
    No(Finding),
}

/// Why an image's own command cannot start. Paths are as seen inside the container.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    /// Neither `Entrypoint` nor `Cmd` is set.
    #[error(
        "the image has no command (its config sets neither Entrypoint nor Cmd): a pod must set \
         its own command, or its container cannot be created"
    )]
    NoCommand,
    /// The command does not exist. `path_dirs` are the `PATH` directories searched for a bare
    /// name; `None` when the command has a `/` and was looked up as it is.
    #[error("{}", not_found(.command, .path_dirs.as_deref()))]
    NotFound {
        /// The command as the image's config names it.
        command: String,
        /// The directories searched, in order.
        path_dirs: Option<Vec<String>>,
    },
    /// The command is a directory, a device, a socket or a pipe.
    #[error(
        "{path} is a {kind}, not a regular file: the container would fail to start with \
         'permission denied'"
    )]
    NotRegularFile {
        /// The command's path.
        path: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// The command is a file of 0 bytes, as a layer unpacked just before a power loss leaves it.
    #[error(
        "{path} is empty (0 bytes), as a layer unpacked before a power loss leaves it: the \
         container would fail with 'exec format error'; prepull repair --deep unpacks it again"
    )]
    Empty {
        /// The command's path.
        path: String,
    },
    /// No execute bit is set.
    #[error(
        "{path} is not executable (mode {mode:04o}): the container would fail to start with \
         'permission denied'"
    )]
    NotExecutable {
        /// The command's path.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Neither an ELF binary nor a `#!` script (zeros, where a crash lost the data, are typical).
    #[error(
        "{path} is neither an ELF binary nor a #! script (it starts with {magic}): the container \
         would fail with 'exec format error'; if the file should be a program, remove the image \
         and pull it again"
    )]
    UnknownFormat {
        /// The command's path.
        path: String,
        /// Its first bytes, in hex.
        magic: String,
    },
    /// An ELF binary built for another architecture than the image's platform.
    #[error(
        "{path} is an ELF binary for {found}, but the image is for {expected}: the container \
         would fail with 'exec format error'; the image was built for the wrong platform"
    )]
    WrongArchitecture {
        /// The binary's path.
        path: String,
        /// What its header says.
        found: ElfTarget,
        /// The image's architecture (e.g. `amd64`).
        expected: String,
    },
    /// A `#!` script whose interpreter cannot run (missing, or itself one of these findings).
    #[error("{}", interpreter_problem(.script, .interpreter, .problem))]
    Interpreter {
        /// The script's path.
        script: String,
        /// The interpreter as the `#!` line (or `env`'s argument) names it.
        interpreter: String,
        /// What is wrong with it.
        problem: Box<Finding>,
    },
    /// Resolving the path takes more than [`MAX_LINK_HOPS`] symbolic links.
    #[error(
        "{path} goes through more than {MAX_LINK_HOPS} symbolic links (a loop): the container \
         would fail with 'too many levels of symbolic links'"
    )]
    LinkLoop {
        /// The path whose lookup looped.
        path: String,
    },
}

fn not_found(command: &str, dirs: Option<&[String]>) -> String {
    match dirs {
        Some(dirs) => format!(
            "{command:?} is in none of the image's PATH directories ({}): the container would \
             fail with 'executable file not found in $PATH'",
            dirs.join(":")
        ),
        None => format!(
            "{command} does not exist in the image: the container would fail with 'no such file \
             or directory'"
        ),
    }
}

fn interpreter_problem(script: &str, interpreter: &str, problem: &Finding) -> String {
    if interpreter.is_empty() {
        format!(
            "{script} starts with #! but names no interpreter: the container would fail with \
             'exec format error'"
        )
    } else {
        format!("{script} is a script run by {interpreter}, which cannot start: {problem}")
    }
}

impl Finding {
    /// A bounded label for metrics and status files.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::NoCommand => "no-command",
            Finding::NotFound { .. } => "not-found",
            Finding::NotRegularFile { .. } => "not-regular-file",
            Finding::Empty { .. } => "empty",
            Finding::NotExecutable { .. } => "not-executable",
            Finding::UnknownFormat { .. } => "unknown-format",
            Finding::WrongArchitecture { .. } => "wrong-architecture",
            Finding::Interpreter { .. } => "interpreter",
            Finding::LinkLoop { .. } => "link-loop",
        }
    }
}

/// What an ELF header says a binary runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElfTarget {
    /// `e_machine` (62 is x86-64).
    pub machine: u16,
    /// 32 or 64 (`EI_CLASS`).
    pub bits: u8,
    /// `EI_DATA`.
    pub big_endian: bool,
}

impl ElfTarget {
    /// What `arch` (an OCI architecture, e.g. `arm64`) runs, if it is one this module knows.
    pub fn of_architecture(arch: &str) -> Option<ElfTarget> {
        let arch = Platform::new("linux", arch, None);
        let (machine, bits, big_endian) = match arch.architecture() {
            "amd64" => (62, 64, false),
            "arm64" => (183, 64, false),
            "arm" => (40, 32, false),
            "386" => (3, 32, false),
            "ppc64le" => (21, 64, false),
            "s390x" => (22, 64, true),
            "riscv64" => (243, 64, false),
            _ => return None,
        };
        Some(ElfTarget {
            machine,
            bits,
            big_endian,
        })
    }

    /// Whether a binary for `self` runs where `want` does: the same machine and byte order.
    fn runs_as(&self, want: &ElfTarget) -> bool {
        self.machine == want.machine && self.big_endian == want.big_endian
    }

    fn machine_name(&self) -> Option<&'static str> {
        Some(match self.machine {
            3 => "386",
            21 => "ppc64",
            22 => "s390x",
            40 => "arm",
            62 => "amd64",
            183 => "arm64",
            243 => "riscv",
            _ => return None,
        })
    }
}

impl fmt::Display for ElfTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = if self.big_endian { "big" } else { "little" };
        match self.machine_name() {
            Some(name) => write!(f, "{name} (machine {})", self.machine)?,
            None => write!(f, "machine {}", self.machine)?,
        }
        write!(f, ", {}-bit {order}-endian", self.bits)
    }
}

/// The root filesystem could not be read: not a finding about the image, but about the check.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A layer directory given to the check is missing or not a directory.
    #[error("layer directory {path} of the image's root filesystem is missing or not a directory")]
    Layer {
        /// The directory.
        path: PathBuf,
        /// Why it could not be used (`None`: it is not a directory).
        #[source]
        source: Option<io::Error>,
    },
    /// A file or directory in a layer could not be read (I/O error, permissions).
    #[error("cannot read {path} in a layer of the image's root filesystem")]
    Read {
        /// The file on the host.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Whether the process of an image with `config`, whose root filesystem is `layers` (top first),
/// can start on a node of architecture `arch` (an OCI architecture such as `amd64`; one this
/// module does not know skips the ELF check).
pub fn check_start<P: AsRef<Path>>(
    layers: &[P],
    config: &ImageConfig,
    arch: &str,
) -> Result<Startable, CheckError> {
    let rootfs = Rootfs::open(layers)?;
    let argv: Vec<&String> = config
        .entrypoint
        .iter()
        .flatten()
        .chain(config.cmd.iter().flatten())
        .collect();
    let Some(command) = argv.first() else {
        return Ok(Startable::No(Finding::NoCommand));
    };
    let process = Process {
        path_dirs: config.path_dirs(),
        cwd: config
            .working_dir
            .as_deref()
            .filter(|d| !d.is_empty())
            .unwrap_or("/")
            .to_string(),
        arch: ElfTarget::of_architecture(arch),
        arch_name: arch.to_string(),
    };
    Ok(match process.check_command(&rootfs, command, 0)? {
        Ok(path) => Startable::Yes { path },
        Err(finding) => Startable::No(finding),
    })
}

impl ImageConfig {
    /// The `PATH` directories a bare command is searched in: the last `PATH=` of `Env`, else
    /// [`DEFAULT_PATH`]. Relative and empty entries are skipped, as runc's lookup refuses them.
    fn path_dirs(&self) -> Vec<String> {
        let path = self
            .env
            .iter()
            .flatten()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(str::to_string)
            .collect()
    }
}

/// What the container's process is started with, as far as finding its program goes.
struct Process {
    path_dirs: Vec<String>,
    cwd: String,
    arch: Option<ElfTarget>,
    arch_name: String,
}

/// Either the path that starts, or why nothing does; the outer error is the check's own.
type Outcome = Result<Result<String, Finding>, CheckError>;

impl Process {
    /// Finds `command` (via `PATH` when it has no `/`) and checks the file found. `depth` is 0 for
    /// the image's command, 1 for an interpreter, whose own `#!` is not followed further.
    fn check_command(&self, rootfs: &Rootfs, command: &str, depth: u8) -> Outcome {
        if command.contains('/') {
            let path = absolute(&self.cwd, command);
            return Ok(match rootfs.resolve(&path)? {
                Lookup::Found(entry) => self.check_file(rootfs, &path, &entry, depth)?,
                Lookup::Missing => Err(Finding::NotFound {
                    command: command.to_string(),
                    path_dirs: None,
                }),
                Lookup::Loop => Err(Finding::LinkLoop { path }),
            });
        }
        // As runc's lookup: the first candidate that is an executable non-directory is run;
        // others are skipped, but say more than "not found" when nothing better turns up.
        let mut rejected = None;
        for dir in &self.path_dirs {
            let path = format!("{}/{command}", dir.trim_end_matches('/'));
            let finding = match rootfs.resolve(&path)? {
                Lookup::Found(entry) => {
                    if !entry.meta.is_dir() && entry.meta.permissions().mode() & 0o111 != 0 {
                        return self.check_file(rootfs, &path, &entry, depth);
                    }
                    file_kind(&path, &entry.meta).err()
                }
                Lookup::Missing => None,
                Lookup::Loop => Some(Finding::LinkLoop { path }),
            };
            rejected = rejected.or(finding);
        }
        Ok(Err(rejected.unwrap_or_else(|| Finding::NotFound {
            command: command.to_string(),
            path_dirs: Some(self.path_dirs.clone()),
        })))
    }

    /// What `execve` of the file at `path` would make of it.
    fn check_file(&self, rootfs: &Rootfs, path: &str, entry: &Entry, depth: u8) -> Outcome {
        if let Err(finding) = file_kind(path, &entry.meta) {
            return Ok(Err(finding));
        }
        if entry.meta.len() == 0 {
            return Ok(Err(Finding::Empty {
                path: path.to_string(),
            }));
        }
        let head = read_head(&entry.host, SHEBANG_MAX + 2)?;
        if head.starts_with(b"\x7fELF") {
            return Ok(self.check_elf(path, &head).map(|()| path.to_string()));
        }
        if let Some(line) = head.strip_prefix(b"#!") {
            if depth > 0 {
                // An interpreter that is itself a script: the kernel goes on; one level of
                // checking is what this module promises.
                return Ok(Ok(path.to_string()));
            }
            return self.check_script(rootfs, path, line);
        }
        Ok(Err(Finding::UnknownFormat {
            path: path.to_string(),
            magic: hex::encode(&head[..head.len().min(4)]),
        }))
    }

    fn check_elf(&self, path: &str, head: &[u8]) -> Result<(), Finding> {
        let unknown = || Finding::UnknownFormat {
            path: path.to_string(),
            magic: hex::encode(&head[..head.len().min(8)]),
        };
        // e_ident (16 bytes), e_type (2), e_machine (2): the same offsets in both classes.
        if head.len() < 20 {
            return Err(unknown());
        }
        let bits = match head[4] {
            1 => 32,
            2 => 64,
            _ => return Err(unknown()),
        };
        let big_endian = match head[5] {
            1 => false,
            2 => true,
            _ => return Err(unknown()),
        };
        let raw = [head[18], head[19]];
        let machine = if big_endian {
            u16::from_be_bytes(raw)
        } else {
            u16::from_le_bytes(raw)
        };
        let found = ElfTarget {
            machine,
            bits,
            big_endian,
        };
        match &self.arch {
            Some(want) if !found.runs_as(want) => Err(Finding::WrongArchitecture {
                path: path.to_string(),
                found,
                expected: self.arch_name.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// A `#!` script: its interpreter (the first word of the line, not searched in `PATH`) must
    /// start; for `env`, so must the program `env` is told to run.
    fn check_script(&self, rootfs: &Rootfs, script: &str, line: &[u8]) -> Outcome {
        let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
        let unusable = |interpreter: &str, problem: Finding| Finding::Interpreter {
            script: script.to_string(),
            interpreter: interpreter.to_string(),
            problem: Box::new(problem),
        };
        let Some(interpreter) = words.next() else {
            let empty = Finding::NotFound {
                command: String::new(),
                path_dirs: None,
            };
            return Ok(Err(unusable("", empty)));
        };
        // The kernel opens the interpreter by its path, relative to the working directory.
        let as_path = if interpreter.contains('/') {
            interpreter.to_string()
        } else {
            format!("./{interpreter}")
        };
        if let Err(problem) = self.check_command(rootfs, &as_path, 1)? {
            return Ok(Err(unusable(interpreter, problem)));
        }
        if interpreter.rsplit('/').next() == Some("env") {
            // `#!/usr/bin/env -S sh -e` hands "-S sh -e" to env: its first operand is the program.
            if let Some(program) = words.find(|w| !w.starts_with('-') && !w.contains('=')) {
                if let Err(problem) = self.check_command(rootfs, program, 1)? {
                    return Ok(Err(unusable(program, problem)));
                }
            }
        }
        Ok(Ok(script.to_string()))
    }
}

/// A regular file with an execute bit, or the finding that says what else it is.
fn file_kind(path: &str, meta: &Metadata) -> Result<(), Finding> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o111 == 0 {
            return Err(Finding::NotExecutable {
                path: path.to_string(),
                mode,
            });
        }
        return Ok(());
    } else if t.is_dir() {
        "directory"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "named pipe"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    };
    Err(Finding::NotRegularFile {
        path: path.to_string(),
        kind,
    })
}

/// At most `limit` bytes from the start of the regular file `host`, never following a link.
fn read_head(host: &Path, limit: usize) -> Result<Vec<u8>, CheckError> {
    let read = |source| CheckError::Read {
        path: host.to_path_buf(),
        source,
    };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(host)
        .map_err(read)?;
    let mut head = Vec::with_capacity(limit);
    file.take(limit as u64)
        .read_to_end(&mut head)
        .map_err(read)?;
    Ok(head)
}

/// `path` (absolute, or relative to `cwd`) as an absolute path string, without `.` or empty
/// components (`..` stays: after a link it is not lexical).
fn absolute(cwd: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{cwd}/{path}")
    };
    let kept: Vec<&str> = joined
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", kept.join("/"))
}

/// The layers of one root filesystem, merged on lookup.
struct Rootfs {
    /// The root directory of each layer, top first.
    layers: Vec<PathBuf>,
}

/// A non-whiteout entry found in the merged tree.
struct Entry {
    /// Where it is on the host: in the topmost layer holding it.
    host: PathBuf,
    meta: Metadata,
    /// For a directory, the host directories merged into it, top first.
    merged: Vec<PathBuf>,
}

enum Lookup {
    Found(Box<Entry>),
    Missing,
    Loop,
}

impl Rootfs {
    fn open<P: AsRef<Path>>(layers: &[P]) -> Result<Rootfs, CheckError> {
        let mut dirs = Vec::with_capacity(layers.len());
        for layer in layers {
            let path = layer.as_ref().to_path_buf();
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => dirs.push(path),
                Ok(_) => return Err(CheckError::Layer { path, source: None }),
                Err(e) => {
                    return Err(CheckError::Layer {
                        path,
                        source: Some(e),
                    })
                }
            }
        }
        Ok(Rootfs { layers: dirs })
    }

    /// Resolves the absolute `path`, following every link (the last one too), as the kernel does
    /// inside the container: links resolve against the image's root, `..` stops at it.
    fn resolve(&self, path: &str) -> Result<Lookup, CheckError> {
        let mut todo: VecDeque<OsString> = components(OsStr::new(path)).collect();
        // The merged directories from the root to where the walk is; the root is every layer.
        let mut stack: Vec<Vec<PathBuf>> = vec![self.layers.clone()];
        let mut hops = 0;
        while let Some(name) = todo.pop_front() {
            if name == "." {
                continue;
            }
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let dir = stack.last().map(Vec::as_slice).unwrap_or_default();
            let Some(entry) = self.child(dir, &name)? else {
                return Ok(Lookup::Missing);
            };
            let t = entry.meta.file_type();
            if t.is_symlink() {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Ok(Lookup::Loop);
                }
                let target = fs::read_link(&entry.host).map_err(|source| CheckError::Read {
                    path: entry.host.clone(),
                    source,
                })?;
                if target.as_os_str().as_bytes().starts_with(b"/") {
                    stack.truncate(1);
                }
                let rest = std::mem::take(&mut todo);
                todo.extend(components(target.as_os_str()));
                todo.extend(rest);
            } else if t.is_dir() {
                if todo.is_empty() {
                    return Ok(Lookup::Found(Box::new(entry)));
                }
                stack.push(entry.merged);
            } else if todo.is_empty() {
                return Ok(Lookup::Found(Box::new(entry)));
            } else {
                // A file where a directory should be: ENOTDIR.
                return Ok(Lookup::Missing);
            }
        }
        // The path named a directory ("/", or ending in "." or ".."): present, and a directory.
        let top = stack.pop().unwrap_or_default();
        let Some(host) = top.first().cloned() else {
            return Ok(Lookup::Missing);
        };
        let meta = lstat(&host)?.ok_or(CheckError::Read {
            path: host.clone(),
            source: io::ErrorKind::NotFound.into(),
        })?;
        Ok(Lookup::Found(Box::new(Entry {
            host,
            meta,
            merged: top,
        })))
    }

    /// The entry `name` of the merged directory made of `dirs` (top first), `None` if no layer
    /// has it or a whiteout hides it.
    fn child(&self, dirs: &[PathBuf], name: &OsStr) -> Result<Option<Entry>, CheckError> {
        let mut found: Option<Entry> = None;
        for dir in dirs {
            let host = dir.join(name);
            let Some(meta) = lstat(&host)? else {
                continue;
            };
            let whiteout = meta.file_type().is_char_device() && meta.rdev() == 0;
            match &mut found {
                None if whiteout => return Ok(None),
                None => {
                    let is_dir = meta.is_dir();
                    let opaque = is_dir && is_opaque(&host)?;
                    found = Some(Entry {
                        host: host.clone(),
                        meta,
                        merged: if is_dir { vec![host] } else { Vec::new() },
                    });
                    if !is_dir || opaque {
                        break;
                    }
                }
                // Below a directory, lower directories of the same name merge into it until an
                // opaque one; anything else of that name ends the merge.
                Some(upper) => {
                    if !meta.is_dir() {
                        break;
                    }
                    let opaque = is_opaque(&host)?;
                    upper.merged.push(host);
                    if opaque {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }
}

/// The non-empty components of a path (a leading `/` is implied: lookups start at the root or
/// continue where a link was found).
fn components(path: &OsStr) -> impl Iterator<Item = OsString> + '_ {
    path.as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| OsStr::from_bytes(c).to_os_string())
}

/// `lstat`, with "not there" (also: a file where a directory was expected) as `None`.
fn lstat(path: &Path) -> Result<Option<Metadata>, CheckError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR)
                || e.raw_os_error() == Some(libc::ENAMETOOLONG) =>
        {
            Ok(None)
        }
        Err(source) => Err(CheckError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether the directory `path` is marked opaque for overlayfs (privileged or user namespace
/// of the xattr).
fn is_opaque(path: &Path) -> Result<bool, CheckError> {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Ok(false);
    };
    for name in [c"trusted.overlay.opaque", c"user.overlay.opaque"] {
        let mut value = [0u8; 2];
        // SAFETY: both strings are NUL-terminated and `value` is writable for its length.
        let n = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n == 1 && value[0] == b'y' {
            return Ok(true);
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENODATA | libc::ENOTSUP | libc::ERANGE) => {}
                _ => {
                    return Err(CheckError::Read {
                        path: path.to_path_buf(),
                        source: e,
                    })
                }
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::ffi::CString;
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::symlink;

    use tempfile::TempDir;

    /// The node's architecture: the copied busybox is a native binary.
    fn host_arch() -> String {
        Platform::host().architecture().to_string()
    }

    fn other_arch() -> &'static str {
        if host_arch() == "arm64" {
            "amd64"
        } else {
            "arm64"
        }
    }

    struct Layers {
        _tmp: TempDir,
        /// Top first.
        dirs: Vec<PathBuf>,
    }

    impl Layers {
        /// `n` empty layer directories, index 0 the top.
        fn new(n: usize) -> Layers {
            let tmp = tempfile::tempdir().unwrap();
            let dirs = (0..n)
                .map(|i| {
                    let d = tmp.path().join(format!("layer{i}"));
                    fs::create_dir(&d).unwrap();
                    d
                })
                .collect();
            Layers { _tmp: tmp, dirs }
        }

        fn path(&self, layer: usize, rel: &str) -> PathBuf {
            let p = self.dirs[layer].join(rel);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).unwrap();
            }
            p
        }

        fn file(&self, layer: usize, rel: &str, bytes: &[u8], mode: u32) -> &Self {
            let p = self.path(layer, rel);
            fs::write(&p, bytes).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            self
        }

        fn busybox(&self, layer: usize, rel: &str) -> &Self {
            fs::copy("/bin/busybox", self.path(layer, rel))
                .expect("busybox-static at /bin/busybox");
            self
        }

        fn link(&self, layer: usize, rel: &str, target: &str) -> &Self {
            symlink(target, self.path(layer, rel)).unwrap();
            self
        }

        fn dir(&self, layer: usize, rel: &str) -> &Self {
            fs::create_dir_all(self.dirs[layer].join(rel)).unwrap();
            self
        }

        /// An overlayfs whiteout: a character device 0/0.
        fn whiteout(&self, layer: usize, rel: &str) -> &Self {
            let p = CString::new(self.path(layer, rel).into_os_string().into_vec()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o600, 0) };
            assert_eq!(rc, 0, "mknod: {}", io::Error::last_os_error());
            self
        }

        fn opaque(&self, layer: usize, rel: &str, xattr: &str) -> &Self {
            self.dir(layer, rel);
            let p = CString::new(self.dirs[layer].join(rel).into_os_string().into_vec()).unwrap();
            let name = CString::new(xattr).unwrap();
            // SAFETY: valid NUL-terminated strings and a one-byte value.
            let rc =
                unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
            assert_eq!(rc, 0, "setxattr {xattr}: {}", io::Error::last_os_error());
            self
        }

        fn check(&self, config: &ImageConfig) -> Startable {
            check_start(&self.dirs, config, &host_arch()).unwrap()
        }
    }

    fn strings(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    fn cmd(argv: &[&str]) -> ImageConfig {
        ImageConfig {
            cmd: strings(argv),
            ..Default::default()
        }
    }

    fn yes(path: &str) -> Startable {
        Startable::Yes {
            path: path.to_string(),
        }
    }

    fn finding(s: Startable) -> Finding {
        match s {
            Startable::No(f) => f,
            other => panic!("expected a finding, got {other:?}"),
        }
    }

    /// The first 64 bytes of an ELF binary: class, byte order and machine as given.
    fn elf(bits: u8, big_endian: bool, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = if bits == 64 { 2 } else { 1 };
        h[5] = if big_endian { 2 } else { 1 };
        h[6] = 1;
        let m = if big_endian {
            machine.to_be_bytes()
        } else {
            machine.to_le_bytes()
        };
        h[18..20].copy_from_slice(&m);
        h
    }

    #[test]
    fn a_real_busybox_starts_by_path_and_by_name_through_a_link() {
        let l = Layers::new(1);
        l.busybox(0, "bin/busybox").link(0, "bin/sh", "busybox");
        assert_eq!(
            l.check(&cmd(&["/bin/busybox", "true"])),
            yes("/bin/busybox")
        );
        assert_eq!(l.check(&cmd(&["sh", "-c", "true"])), yes("/bin/sh"));
        // Entrypoint comes first, Cmd are its arguments.
        let config = ImageConfig {
            entrypoint: strings(&["busybox"]),
            cmd: strings(&["/nonexistent"]),
            ..Default::default()
        };
        assert_eq!(l.check(&config), yes("/bin/busybox"));
        // A relative command is looked up from the working directory.
        let config = ImageConfig {
            cmd: strings(&["./busybox"]),
            working_dir: Some("/bin".into()),
            ..Default::default()
        };
        assert_eq!(l.check(&config), yes("/bin/busybox"));
    }

    #[test]
    fn a_binary_for_another_architecture_is_a_finding() {
        let l = Layers::new(1);
        l.busybox(0, "bin/busybox");
        let other = other_arch();
        let found = check_start(&l.dirs, &cmd(&["/bin/busybox"]), other).unwrap();
        let f = finding(found);
        let Finding::WrongArchitecture {
            path,
            found,
            expected,
        } = &f
        else {
            panic!("{f:?}");
        };
        assert_eq!(path, "/bin/busybox");
        assert_eq!(expected, other);
        assert_eq!(Some(*found), ElfTarget::of_architecture(&host_arch()));
        let text = f.to_string();
        assert!(
            text.contains("/bin/busybox") && text.contains("exec format error"),
            "{text}"
        );
        // An architecture the module does not know is not judged.
        assert_eq!(
            check_start(&l.dirs, &cmd(&["/bin/busybox"]), "mips64le").unwrap(),
            yes("/bin/busybox")
        );
    }

    #[test]
    fn elf_headers_are_read_in_their_own_class_and_byte_order() {
        let l = Layers::new(1);
        l.file(0, "s390x", &elf(64, true, 22), 0o755)
            .file(0, "arm64", &elf(64, false, 183), 0o755)
            .file(0, "arm", &elf(32, false, 40), 0o755)
            .file(0, "ppc64be", &elf(64, true, 21), 0o755)
            .file(0, "short", b"\x7fELF\x02\x01", 0o755)
            .file(
                0,
                "badclass",
                &{
                    let mut h = elf(64, false, 62);
                    h[4] = 9;
                    h
                },
                0o755,
            );
        let run = |path: &str, arch: &str| check_start(&l.dirs, &cmd(&[path]), arch).unwrap();
        assert_eq!(run("/s390x", "s390x"), yes("/s390x"));
        assert_eq!(run("/arm64", "aarch64"), yes("/arm64"));
        assert_eq!(run("/arm", "arm"), yes("/arm"));
        let f = finding(run("/s390x", "amd64"));
        assert_eq!(
            f,
            Finding::WrongArchitecture {
                path: "/s390x".into(),
                found: ElfTarget {
                    machine: 22,
                    bits: 64,
                    big_endian: true
                },
                expected: "amd64".into(),
            }
        );
        assert!(
            f.to_string()
                .contains("s390x (machine 22), 64-bit big-endian"),
            "{f}"
        );
        // Same machine, other byte order: ppc64 (big-endian) does not run on ppc64le.
        assert!(matches!(
            finding(run("/ppc64be", "ppc64le")),
            Finding::WrongArchitecture { .. }
        ));
        for bad in ["/short", "/badclass"] {
            assert!(
                matches!(finding(run(bad, "amd64")), Finding::UnknownFormat { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn no_entrypoint_and_no_cmd_is_a_finding() {
        let l = Layers::new(1);
        l.busybox(0, "bin/busybox");
        let f = finding(l.check(&ImageConfig::default()));
        assert_eq!(f, Finding::NoCommand);
        assert!(f.to_string().contains("Entrypoint"), "{f}");
        let empty = ImageConfig {
            entrypoint: Some(vec![]),
            cmd: Some(vec![]),
            ..Default::default()
        };
        assert_eq!(finding(l.check(&empty)), Finding::NoCommand);
    }

    #[test]
    fn a_bare_name_is_searched_in_the_images_path_and_the_finding_lists_it() {
        let l = Layers::new(1);
        l.busybox(0, "opt/tools/busybox");
        let f = finding(l.check(&cmd(&["busybox"])));
        assert_eq!(
            f,
            Finding::NotFound {
                command: "busybox".into(),
                path_dirs: Some(DEFAULT_PATH.split(':').map(String::from).collect()),
            }
        );
        assert!(
            f.to_string()
                .contains("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "{f}"
        );
        // The last PATH in Env counts; relative entries are not searched.
        let config = ImageConfig {
            cmd: strings(&["busybox"]),
            env: strings(&["PATH=/nowhere", "HOME=/", "PATH=tools:/opt/tools"]),
            ..Default::default()
        };
        assert_eq!(l.check(&config), yes("/opt/tools/busybox"));
        // By path, the finding names the path.
        let f = finding(l.check(&cmd(&["/app/server"])));
        assert_eq!(
            f,
            Finding::NotFound {
                command: "/app/server".into(),
                path_dirs: None
            }
        );
        assert!(f.to_string().contains("/app/server does not exist"), "{f}");
    }

    #[test]
    fn the_path_search_skips_what_cannot_run_and_reports_it_when_nothing_else_is_found() {
        let l = Layers::new(1);
        l.file(0, "usr/bin/tool", &elf(64, false, 62), 0o644)
            .dir(0, "usr/local/bin/tool");
        assert_eq!(
            finding(l.check(&cmd(&["tool"]))),
            Finding::NotRegularFile {
                path: "/usr/local/bin/tool".into(),
                kind: "directory"
            }
        );
        l.busybox(0, "bin/tool");
        assert_eq!(l.check(&cmd(&["tool"])), yes("/bin/tool"));
    }

    #[test]
    fn empty_non_executable_and_non_regular_files_are_findings() {
        let l = Layers::new(1);
        l.file(0, "bin/empty", b"", 0o755)
            .file(0, "bin/plain", &elf(64, false, 62), 0o644)
            .dir(0, "bin/dir")
            .file(0, "bin/zeros", &[0u8; 4096], 0o755);
        let f = finding(l.check(&cmd(&["/bin/empty"])));
        assert_eq!(
            f,
            Finding::Empty {
                path: "/bin/empty".into()
            }
        );
        assert!(
            f.to_string().contains("0 bytes") && f.to_string().contains("prepull repair --deep"),
            "{f}"
        );
        let f = finding(l.check(&cmd(&["/bin/plain"])));
        assert_eq!(
            f,
            Finding::NotExecutable {
                path: "/bin/plain".into(),
                mode: 0o644
            }
        );
        assert!(f.to_string().contains("mode 0644"), "{f}");
        assert_eq!(
            finding(l.check(&cmd(&["/bin/dir"]))),
            Finding::NotRegularFile {
                path: "/bin/dir".into(),
                kind: "directory"
            }
        );
        let f = finding(l.check(&cmd(&["/bin/zeros"])));
        assert_eq!(
            f,
            Finding::UnknownFormat {
                path: "/bin/zeros".into(),
                magic: "00000000".into()
            }
        );
        // A file where a directory is expected ends the lookup.
        assert!(matches!(
            finding(l.check(&cmd(&["/bin/empty/x"]))),
            Finding::NotFound { .. }
        ));
    }

    #[test]
    fn the_top_layer_wins_and_lower_directories_merge() {
        let l = Layers::new(2);
        // Lower: a good binary; upper: the same path emptied, as after a power loss.
        l.busybox(1, "app/run").file(0, "app/run", b"", 0o755);
        assert_eq!(
            finding(l.check(&cmd(&["/app/run"]))),
            Finding::Empty {
                path: "/app/run".into()
            }
        );
        // Directories merge: a file only the lower layer has is found through the upper's dir.
        l.busybox(1, "app/other")
            .file(0, "app/readme", b"hi", 0o644);
        assert_eq!(l.check(&cmd(&["/app/other"])), yes("/app/other"));
        // A whiteout in a lower layer does not hide an upper layer's file.
        let l = Layers::new(2);
        l.busybox(0, "bin/x").whiteout(1, "bin/x");
        assert_eq!(l.check(&cmd(&["/bin/x"])), yes("/bin/x"));
    }

    #[test]
    fn a_whiteout_hides_a_lower_layers_file_and_directory() {
        let l = Layers::new(3);
        l.busybox(2, "app/run").busybox(2, "bin/busybox");
        assert_eq!(l.check(&cmd(&["/app/run"])), yes("/app/run"));
        l.whiteout(1, "app/run");
        assert_eq!(
            finding(l.check(&cmd(&["/app/run"]))),
            Finding::NotFound {
                command: "/app/run".into(),
                path_dirs: None
            }
        );
        // A whiteout of a directory hides everything below it.
        l.whiteout(0, "bin");
        assert!(matches!(
            finding(l.check(&cmd(&["/bin/busybox"]))),
            Finding::NotFound { .. }
        ));
    }

    #[test]
    fn an_opaque_directory_hides_lower_contents() {
        for xattr in ["trusted.overlay.opaque", "user.overlay.opaque"] {
            let l = Layers::new(2);
            l.busybox(1, "app/run").busybox(1, "app/keep");
            l.opaque(0, "app", xattr).busybox(0, "app/keep");
            assert_eq!(
                finding(l.check(&cmd(&["/app/run"]))),
                Finding::NotFound {
                    command: "/app/run".into(),
                    path_dirs: None
                },
                "{xattr}"
            );
            assert_eq!(l.check(&cmd(&["/app/keep"])), yes("/app/keep"), "{xattr}");
        }
        // Opaque in the middle: the top layer's files stay, the bottom layer's go.
        let l = Layers::new(3);
        l.busybox(2, "app/bottom")
            .opaque(1, "app", "trusted.overlay.opaque");
        l.busybox(1, "app/middle").busybox(0, "app/top");
        assert_eq!(l.check(&cmd(&["/app/top"])), yes("/app/top"));
        assert_eq!(l.check(&cmd(&["/app/middle"])), yes("/app/middle"));
        assert!(matches!(
            finding(l.check(&cmd(&["/app/bottom"]))),
            Finding::NotFound { .. }
        ));
    }

    #[test]
    fn links_resolve_inside_the_rootfs_across_layers_and_in_any_component() {
        let l = Layers::new(2);
        l.busybox(1, "bin/busybox");
        // Across layers, relative.
        l.link(0, "bin/sh", "busybox");
        assert_eq!(l.check(&cmd(&["sh"])), yes("/bin/sh"));
        // A directory component that is a link (usr/bin -> /bin), absolute.
        l.link(0, "usr/bin", "/bin");
        assert_eq!(
            l.check(&cmd(&["/usr/bin/busybox"])),
            yes("/usr/bin/busybox")
        );
        // `..` stops at the image's root.
        l.link(0, "opt/deep/bb", "../../../../../../bin/busybox");
        assert_eq!(l.check(&cmd(&["/opt/deep/bb"])), yes("/opt/deep/bb"));
        // A link to /bin/busybox is the image's, never the host's (which exists here).
        let bare = Layers::new(1);
        bare.link(0, "entry", "/bin/busybox")
            .link(0, "up", "../../../../bin/busybox");
        for path in ["/entry", "/up"] {
            assert_eq!(
                finding(bare.check(&cmd(&[path]))),
                Finding::NotFound {
                    command: path.into(),
                    path_dirs: None
                }
            );
        }
    }

    #[test]
    fn a_link_loop_is_a_finding() {
        let l = Layers::new(1);
        l.link(0, "bin/a", "b").link(0, "bin/b", "/bin/a");
        let f = finding(l.check(&cmd(&["/bin/a"])));
        assert_eq!(
            f,
            Finding::LinkLoop {
                path: "/bin/a".into()
            }
        );
        assert!(f.to_string().contains("symbolic links"), "{f}");
        // A long chain under the bound resolves.
        let l = Layers::new(1);
        l.busybox(0, "bin/l0");
        for i in 1..=MAX_LINK_HOPS {
            l.link(0, &format!("bin/l{i}"), &format!("l{}", i - 1));
        }
        let top = format!("/bin/l{MAX_LINK_HOPS}");
        assert_eq!(l.check(&cmd(&[&top])), yes(&top));
        l.link(0, "bin/over", &top);
        assert!(matches!(
            finding(l.check(&cmd(&["/bin/over"]))),
            Finding::LinkLoop { .. }
        ));
    }

    #[test]
    fn a_script_needs_its_interpreter() {
        let l = Layers::new(1);
        l.busybox(0, "bin/busybox")
            .file(0, "app/start", b"#!/bin/sh -e\necho hi\n", 0o755)
            .file(0, "app/env", b"#! /usr/bin/env  sh\necho hi\n", 0o755)
            .file(0, "app/python", b"#!/usr/bin/env -S python3 -u\n", 0o755)
            .file(0, "app/none", b"#!\n", 0o755);
        let f = finding(l.check(&cmd(&["/app/start"])));
        assert_eq!(
            f,
            Finding::Interpreter {
                script: "/app/start".into(),
                interpreter: "/bin/sh".into(),
                problem: Box::new(Finding::NotFound {
                    command: "/bin/sh".into(),
                    path_dirs: None
                }),
            }
        );
        assert!(
            f.to_string().contains("/app/start")
                && f.to_string().contains("/bin/sh does not exist"),
            "{f}"
        );
        l.link(0, "bin/sh", "busybox");
        assert_eq!(l.check(&cmd(&["/app/start"])), yes("/app/start"));

        // `env`: itself, then its program in PATH.
        assert!(matches!(
            finding(l.check(&cmd(&["/app/env"]))),
            Finding::Interpreter { ref interpreter, .. } if interpreter == "/usr/bin/env"
        ));
        l.link(0, "usr/bin/env", "/bin/busybox");
        assert_eq!(l.check(&cmd(&["/app/env"])), yes("/app/env"));
        let f = finding(l.check(&cmd(&["/app/python"])));
        assert!(
            matches!(&f, Finding::Interpreter { interpreter, problem, .. }
                if interpreter == "python3" && matches!(**problem, Finding::NotFound { path_dirs: Some(_), .. })),
            "{f:?}"
        );
        assert!(f.to_string().contains("python3"), "{f}");
        let f = finding(l.check(&cmd(&["/app/none"])));
        assert!(f.to_string().contains("names no interpreter"), "{f}");
    }

    #[test]
    fn an_interpreter_for_another_architecture_or_empty_is_a_finding() {
        let l = Layers::new(1);
        l.file(0, "bin/sh", &elf(64, true, 22), 0o755)
            .file(0, "app/start", b"#!/bin/sh\n", 0o755);
        let f = finding(l.check(&cmd(&["/app/start"])));
        assert!(
            matches!(&f, Finding::Interpreter { problem, .. } if matches!(**problem, Finding::WrongArchitecture { .. })),
            "{f:?}"
        );
        l.file(0, "bin/sh", b"", 0o755);
        let f = finding(l.check(&cmd(&["/app/start"])));
        assert!(
            matches!(&f, Finding::Interpreter { problem, .. } if matches!(**problem, Finding::Empty { .. })),
            "{f:?}"
        );
    }

    #[test]
    fn only_the_head_of_a_long_shebang_line_is_read() {
        let l = Layers::new(1);
        let mut script = b"#!/bin/".to_vec();
        script.extend(std::iter::repeat_n(b'x', 10_000));
        l.file(0, "app/long", &script, 0o755);
        let f = finding(l.check(&cmd(&["/app/long"])));
        let Finding::Interpreter { interpreter, .. } = &f else {
            panic!("{f:?}");
        };
        assert!(interpreter.len() <= SHEBANG_MAX, "{}", interpreter.len());
    }

    #[test]
    fn a_missing_layer_directory_is_an_error_naming_it() {
        let l = Layers::new(1);
        let gone = l.dirs[0].join("nope");
        let err = check_start(&[&gone], &cmd(&["/x"]), "amd64").unwrap_err();
        assert!(
            err.to_string().contains(&gone.display().to_string()),
            "{err}"
        );
        assert!(matches!(err, CheckError::Layer { .. }));
    }
}
