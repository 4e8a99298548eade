//! The report's opening: the machine, the prepull under test, what each mode compares, the
//! setup and the commands, and how every figure is measured.

use std::fmt::Write as _;

use super::Context;
use crate::command::{command_line, GNU_TIME};
use crate::proc::{load_average, mem_total, QUIET_SHARE, QUIET_WINDOW};
use crate::results::WorkloadResult;
use crate::run::Bench;
use crate::sample::{Mode, Tool, DISTURBED_SHARE};
use crate::workload::WorkloadId;

pub fn write(md: &mut String, results: &[WorkloadResult], bench: &Bench, cx: &Context) {
    let nproc = command_line("nproc", &[]);
    machine(md, bench, cx, &nproc);
    modes(md, bench, cx);
    setup(md, results, bench, cx);
    method(md, bench, &nproc);
}

/// The title, the machine, its load before and after, and the prepull binary.
fn machine(md: &mut String, bench: &Bench, cx: &Context, nproc: &str) {
    let _ = writeln!(
        md,
        "# prepull vs ctr and CRI PullImage: pulling images into containerd"
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Machine: `{}`, {} cores, {} RAM, containerd {} (`{}`), `{}`. Date: {}.",
        command_line("uname", &["-srm"]),
        nproc,
        mem_total(),
        cx.containerd_version,
        cx.ctr.display(),
        command_line(&cx.ctr.to_string_lossy(), &["--version"]),
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Load average (1/5/15 min) before the bench: {}; after: {}.",
        cx.load_before,
        load_average()
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "prepull: `{}` (release build; git HEAD {} when the bench started{}){}.",
        bench.prepull.display(),
        cx.git_head,
        if cx.dirty {
            ", with uncommitted changes to the sources"
        } else {
            ""
        },
        cx.binary_note
    );
    let _ = writeln!(md);
}

/// What the two modes compare, or why there is only one.
fn modes(md: &mut String, bench: &Bench, cx: &Context) {
    if bench.prepull_unpacks {
        let _ = writeln!(
            md,
            "> **This prepull unpacks layers by default** (it has `--no-unpack`), so the bench compares like with like in two modes: \
             **fetch** = `prepull pull --no-unpack` vs `ctr content fetch` (content store + image record), and \
             **pull** = `prepull pull` vs `ctr images pull` and CRI `PullImage` (the kubelet's own pull), all unpacking into the `{}` snapshotter (CRI's in these containerds). \
             W4 in pull mode is a loop of 100 `ctr images pull`, and CRI PullImage one image at a time (the kubelet's default, `serializeImagePulls: true`) and four at a time.",
            cx.snapshotter
        );
    } else {
        let _ = writeln!(
            md,
            "> **prepull does not unpack layers yet** (no `--no-unpack` in its help), so every workload compares it against \
             `ctr content fetch` (fetch + verify into the content store + image record), not `ctr images pull`. \
             W4 is specified as a loop of 100 `ctr images pull`; here it is a loop of 100 `ctr content fetch` for the same reason."
        );
    }
    let _ = writeln!(md);
}

/// The registry, the fresh containerd per run, the order of the runs and each command.
fn setup(md: &mut String, results: &[WorkloadResult], bench: &Bench, cx: &Context) {
    let _ = writeln!(
        md,
        "Setup: one docker-registry on loopback (plain HTTP), synthetic images with random layers (gzip level 0); \
         every run gets a fresh containerd (snapshotter `{}`, empty content store), started before and removed after the timed part, \
         and is checked afterwards (every blob in the content store; in pull mode, a committed snapshot per layer). \
         Runs alternate prepull, ctr, CRI (pull mode), prepull, … (and the modes alternate within each round). Commands:",
        cx.snapshotter
    );
    let _ = writeln!(md);
    for mode in &cx.modes {
        let _ = writeln!(
            md,
            "- {}: `{} --containerd SOCK --plain-http HOST --output json IMAGE...` (all images in one invocation) vs \
             `ctr --address SOCK -n k8s.io {} --plain-http IMAGE` (one invocation per image, sequentially); both at their default download concurrency",
            mode.name(),
            mode.command(Tool::Prepull, bench.prepull_unpacks),
            mode.command(Tool::Ctr, bench.prepull_unpacks).trim_start_matches("ctr "),
        );
    }
    if cx.modes.contains(&Mode::Pull) {
        let _ = writeln!(
            md,
            "- pull, CRI: `runtime.v1.ImageService/PullImage` with the image as the pod names it, called from the bench process over containerd's socket \
             (no client process: its client RSS is n/a and client CPU 0; containerd does the pull). On containerd 2.x this is the CRI image service's \
             own pull (transfer service or its local pull, as the daemon's config decides), what the kubelet gets. \
             **cri sync_fs**: the same with `image_pull_with_sync_fs = true` in CRI's config, so CRI flushes each layer's files before committing its snapshot, \
             as prepull always does (on containerd 2.x that setting also makes CRI use its local pull instead of the transfer service): the like-for-like peer for durability."
        );
    }
    let _ = writeln!(
        md,
        "- floor: `dd if=SRC of=DST bs=1M count=MiB conv=fsync`, SRC a random file in tmpfs, DST inside a containerd root (same filesystem). \
         It writes the blob bytes once, with one fsync; the tools fsync each blob, and in pull mode also write every layer's files into a snapshot."
    );
    if results.iter().any(|r| r.workload.id == WorkloadId::W5) {
        let _ = writeln!(
            md,
            "- W5: the W1 image from a second docker-registry process serving the same storage inside its own network namespace, \
             joined to the root namespace by an emulated link with delay and rate in both directions; \
             both clients pull from the namespace end's address (`--plain-http`). How the link was emulated is under *W5* below; \
             the registry's CPU includes this bench process's (a userspace link forwarder, when there is one)."
        );
    }
    if results.iter().any(|r| r.workload.id == WorkloadId::W6) {
        let _ = writeln!(
            md,
            "- W6: each run first pulls all images once with the same tool and mode into its fresh containerd (untimed), then times a second pass \
             (prepull: one invocation with all tags; ctr: one invocation per tag). The registry sits behind a recording HTTP proxy (in the bench process) \
             that counts every request of the timed pass; its CPU is counted as the registry's."
        );
    }
    let _ = writeln!(md);
}

/// How wall time, memory and CPU are measured, and what makes a run disturbed.
fn method(md: &mut String, bench: &Bench, nproc: &str) {
    let _ = writeln!(
        md,
        "Wall time is a monotonic clock around the child process (W4 ctr: around the whole loop). Peak RSS is GNU time's `%M` of the client (W4 ctr: the largest of the 100); \
         containerd RSS is its VmHWM after the run. MB/s = 10^6 bytes per second of the workload's bytes (manifests + configs + layers) at the median time. \
         CPU s is user + system time during the timed part: the client's from GNU time (W4 ctr: summed over the loop), containerd's and the registry's from /proc/PID/stat before and after; \
         \"other\" is the machine's busy CPU (/proc/stat) minus those three: kernel writeback, this bench's own process and whatever else ran meanwhile. \
         Before each timed run the bench waits (up to {wait} s) until less than {share:.0}% of the machine's CPU was busy over {window} s; \
         \"Busy before\" and \"Waited\" in the raw tables show how that went. \
         A run counts as *disturbed* when \"other\" CPU exceeded {disturbed:.0}% of the machine's capacity during it; \"Top other\" in the raw tables names the processes behind it. \
         With {cores} cores, a run cannot be faster than (client + containerd + registry CPU) / {cores}. \
         time / prepull's > 1 means prepull is faster than that peer; x floor = median / the fsync floor's median.",
        cores = nproc,
        wait = bench.quiet_wait.as_secs(),
        share = QUIET_SHARE * 100.0,
        window = QUIET_WINDOW.as_secs(),
        disturbed = DISTURBED_SHARE * 100.0
    );
    if !bench.gnu_time {
        let _ = writeln!(md);
        let _ = writeln!(md, "**{GNU_TIME} was missing, so client peak RSS and CPU were not measured** (`apt-get install -y time`).");
    }
    let _ = writeln!(md);
}
