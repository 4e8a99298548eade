//! The pull's lease: labelled with the image and the process that holds it, so that a run which
//! completes an image can tell the leases that earlier runs of it left behind when they died
//! (killed, crashed, or failed) from those of runs still under way, and release them.
//!
//! A lease is held by a process: its boot (the kernel's boot ID), its PID namespace, its PID and
//! the time it started (in clock ticks since boot, which tells a reused PID apart). A lease is
//! left behind when:
//! - the node booted since it was taken;
//! - its process is in this PID namespace and no longer runs;
//! - it is this process's own, and no pull of this process holds it any more (the agent lives
//!   long: a pull of its that failed an earlier pass left it).
//!
//! A lease taken in another PID namespace (the agent in its pod, seen from a `prepull pull` on
//! the node, or an agent container that was restarted) cannot be judged from here: it is left
//! alone until containerd drops it at its expiry. Leases of live processes are never touched.
//!
//! What a failed run keeps: everything its lease holds (partial downloads in ingests, which the
//! next run resumes from byte-exact; committed blobs; unpacked layers), until a run that
//! completes the image releases it. A run that failed for disk space releases its lease at once
//! instead, waiting for containerd's garbage collection (and having it go over the snapshotter
//! again, see [`collect_snapshots`]), so a full filesystem is given back: its partial downloads
//! are lost, and the next run downloads them again.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use crate::reference::Reference;
use crate::store::{Lease, ListedLease, Store, StoreError};

/// The image a pull's lease is for (the reference as normalized).
pub const IMAGE: &str = "prepull.io/image";
/// The boot ID of the node when the lease was taken.
pub const BOOT: &str = "prepull.io/boot";
/// The PID namespace (`pid:[inode]`) of the process holding the lease.
pub const PID_NAMESPACE: &str = "prepull.io/pid-namespace";
/// The PID of the process holding the lease.
pub const PID: &str = "prepull.io/pid";
/// When the process holding the lease started, in clock ticks since boot.
pub const PROCESS_STARTED: &str = "prepull.io/process-started";
/// When the lease was taken (RFC 3339).
pub const CREATED: &str = "prepull.io/created";

/// The process that holds a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    boot: String,
    pid_namespace: String,
    pid: u32,
    started: u64,
}

/// Whether the process that took a lease still holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// A running process holds it: never touched.
    Live,
    /// Its process is gone (or, for this process, no pull holds it any more).
    LeftBehind,
    /// Taken in another PID namespace: left to expire.
    Unknown,
}

impl Holder {
    /// This process, as `/proc` describes it; `None` where `/proc` cannot say (its leases are
    /// then not labelled with a holder, and never released by another run).
    pub fn current() -> Option<&'static Holder> {
        static ME: OnceLock<Option<Holder>> = OnceLock::new();
        ME.get_or_init(|| {
            Some(Holder {
                boot: boot_id()?,
                pid_namespace: std::fs::read_link("/proc/self/ns/pid")
                    .ok()?
                    .to_string_lossy()
                    .into_owned(),
                pid: std::process::id(),
                started: started(&std::fs::read_to_string("/proc/self/stat").ok()?)?,
            })
        })
        .as_ref()
    }

    /// The labels that name this holder on a lease.
    pub fn labels(&self) -> [(&'static str, String); 4] {
        [
            (BOOT, self.boot.clone()),
            (PID_NAMESPACE, self.pid_namespace.clone()),
            (PID, self.pid.to_string()),
            (PROCESS_STARTED, self.started.to_string()),
        ]
    }

    fn from_labels(labels: &HashMap<String, String>) -> Option<Holder> {
        Some(Holder {
            boot: labels.get(BOOT)?.clone(),
            pid_namespace: labels.get(PID_NAMESPACE)?.clone(),
            pid: labels.get(PID)?.parse().ok()?,
            started: labels.get(PROCESS_STARTED)?.parse().ok()?,
        })
    }

    /// Whether the lease `id` this holder took is still held, as seen by `me`: `running(pid)`
    /// is the start time of the process `pid` in `me`'s PID namespace, if one runs, and
    /// `mine(id)` whether a pull of `me` holds the lease.
    fn holds(
        &self,
        me: &Holder,
        id: &str,
        running: impl Fn(u32) -> Option<u64>,
        mine: impl Fn(&str) -> bool,
    ) -> Held {
        if self.boot != me.boot {
            return Held::LeftBehind;
        }
        if self.pid_namespace != me.pid_namespace {
            return Held::Unknown;
        }
        if self.pid == me.pid && self.started == me.started {
            return if mine(id) {
                Held::Live
            } else {
                Held::LeftBehind
            };
        }
        if running(self.pid) == Some(self.started) {
            Held::Live
        } else {
            Held::LeftBehind
        }
    }
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|id| !id.is_empty())
}

/// Field 22 of `/proc/<pid>/stat` (`starttime`), read after the command name, which may hold
/// spaces and parentheses.
fn started(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields from the 3rd (state) on; starttime is the 22nd.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// The start time of process `pid` in this PID namespace, if it runs.
fn running(pid: u32) -> Option<u64> {
    started(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Leases the pulls of this process hold now.
fn held_here() -> &'static Mutex<HashSet<String>> {
    static HELD: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

fn is_held_here(id: &str) -> bool {
    held_here()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(id)
}

/// A lease a pull of this process holds; dropping it (the pull ended, or was abandoned) lets a
/// later run of the image release the lease.
pub struct HeldLease {
    lease: Lease,
}

impl HeldLease {
    /// The lease, for the `containerd-lease` header.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The lease, no longer held by a pull of this process.
    fn into_lease(self) -> Lease {
        let lease = self.lease.clone();
        drop(self);
        lease
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        held_here()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.lease.id());
    }
}

/// Takes the lease a pull of `image` writes under, labelled with the image and this process.
pub async fn take(
    store: &Store,
    image: &Reference,
    expire: std::time::Duration,
) -> Result<HeldLease, StoreError> {
    let mut labels = HashMap::from([
        (IMAGE.to_string(), image.to_string()),
        (
            CREATED.to_string(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ),
    ]);
    if let Some(me) = Holder::current() {
        labels.extend(me.labels().map(|(k, v)| (k.to_string(), v)));
    }
    let lease = store.create_labelled_lease("pull", expire, labels).await?;
    held_here()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(lease.id().to_string());
    Ok(HeldLease { lease })
}

/// On a marker lease: the snapshotter of snapshots unpacked but not yet flushed to disk.
pub const UNFLUSHED: &str = "prepull.io/unflushed";
/// On a marker lease: the image whose unpack it marks (for logs).
pub const UNFLUSHED_IMAGE: &str = "prepull.io/unflushed-image";
/// On a marker lease, with a number after it: one snapshot (chain ID) it marks, base first.
const UNFLUSHED_CHAIN: &str = "prepull.io/unflushed-chain.";

/// How long a marker lease lasts: past any node's downtime, so the run after a power cut finds
/// it. It holds no resources, so it keeps nothing from containerd's garbage collection.
const UNFLUSHED_EXPIRY: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

/// Marks `chains` (snapshots of `snapshotter` about to be unpacked by containerd, which does not
/// flush them) as not yet on disk, until [`flushed`]. A run after a power cut removes them
/// ([`sweep_unflushed`]): their files may be empty, and a pull finding them would build on them.
pub async fn mark_unflushed(
    store: &Store,
    image: &Reference,
    snapshotter: &str,
    chains: &[crate::digest::Digest],
) -> Result<HeldLease, StoreError> {
    let mut labels = HashMap::from([
        (UNFLUSHED.to_string(), snapshotter.to_string()),
        (UNFLUSHED_IMAGE.to_string(), image.to_string()),
    ]);
    labels.extend(
        chains
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("{UNFLUSHED_CHAIN}{i}"), c.to_string())),
    );
    if let Some(me) = Holder::current() {
        labels.extend(me.labels().map(|(k, v)| (k.to_string(), v)));
    }
    let lease = store
        .create_labelled_lease("unflushed", UNFLUSHED_EXPIRY, labels)
        .await?;
    held_here()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(lease.id().to_string());
    Ok(HeldLease { lease })
}

/// The marked snapshots are on disk: the marker goes. A marker that cannot be deleted now is
/// deleted by a later run of this boot (its snapshots are then left alone).
pub async fn flushed(store: &Store, marker: HeldLease) {
    let lease = marker.into_lease();
    if let Err(e) = store.delete_lease(lease).await {
        tracing::warn!(error = %e, "cannot delete the unflushed-snapshots marker; a later run does");
    }
}

/// Goes over the markers left by runs that did not get to flush ([`mark_unflushed`]): those of
/// an earlier boot (a power cut or crash of the node may have emptied their files) have their
/// snapshots removed, top first, so they are unpacked again; those of a dead process of this
/// boot are simply deleted (the kernel still holds and writes back their files). Markers of
/// live processes, or of another PID namespace in this boot, are left. Returns how many
/// snapshots were removed.
pub async fn sweep_unflushed(store: &Store) -> Result<usize, StoreError> {
    let Some(me) = Holder::current() else {
        return Ok(0);
    };
    let mut removed = 0;
    for listed in store.leases_with_label(UNFLUSHED).await? {
        let Some(holder) = Holder::from_labels(&listed.labels) else {
            continue;
        };
        match holder.holds(me, listed.lease.id(), running, is_held_here) {
            Held::Live | Held::Unknown => continue,
            Held::LeftBehind => {}
        }
        if let (true, Some(snapshotter)) = (holder.boot != me.boot, listed.labels.get(UNFLUSHED)) {
            let image = listed.labels.get(UNFLUSHED_IMAGE).map(String::as_str);
            let mut chains: Vec<(usize, &String)> = listed
                .labels
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(UNFLUSHED_CHAIN)?.parse().ok()?, v)))
                .collect();
            chains.sort();
            for (_, chain) in chains.into_iter().rev() {
                if !store.snapshot_exists(snapshotter, chain).await? {
                    continue;
                }
                match store.remove_snapshot(snapshotter, chain).await {
                    Ok(()) => {
                        removed += 1;
                        tracing::warn!(image, snapshotter, snapshot = chain, "removed a snapshot unpacked but not flushed before the node went down; it is unpacked again");
                    }
                    Err(e) => {
                        tracing::warn!(image, snapshotter, snapshot = chain, error = %e, "cannot remove a snapshot that may not have reached disk before the node went down (in use?); `prepull verify --deep` checks its files")
                    }
                }
            }
        }
        store.delete_lease(listed.lease).await?;
    }
    Ok(removed)
}

/// Ends a pull's hold on its lease: deleted, or with `collect`, deleted with containerd's
/// garbage collection run to completion (what only it held is gone when this returns).
pub async fn release(store: &Store, held: HeldLease, collect: bool) -> Result<(), StoreError> {
    let lease = held.into_lease();
    if collect {
        store.delete_lease_collecting(lease).await
    } else {
        store.delete_lease(lease).await
    }
}

/// Releases the leases that earlier runs of `image` left behind (see the module's rules),
/// then has containerd collect what only they held. Returns how many were released.
pub async fn release_left_behind(store: &Store, image: &Reference) -> Result<usize, StoreError> {
    let Some(me) = Holder::current() else {
        return Ok(0);
    };
    let name = image.to_string();
    let left: Vec<ListedLease> = store
        .leases_with_label(IMAGE)
        .await?
        .into_iter()
        .filter(|l| l.labels.get(IMAGE) == Some(&name))
        .filter(|l| {
            Holder::from_labels(&l.labels).is_some_and(|h| {
                h.holds(me, l.lease.id(), running, is_held_here) == Held::LeftBehind
            })
        })
        .collect();
    let count = left.len();
    for (i, listed) in left.into_iter().enumerate() {
        tracing::info!(image = %name, lease = listed.lease.id(), created = listed.labels.get(CREATED).map(String::as_str), "releasing a lease an earlier run of the image left behind");
        if i + 1 == count {
            store.delete_lease_collecting(listed.lease).await?;
        } else {
            store.delete_lease(listed.lease).await?;
        }
    }
    Ok(count)
}

/// Has containerd's garbage collection go over `snapshotter` once more, now that the space
/// given back lets it write: a collection that ran while the disk was full can fail to remove
/// a partial unpack from the snapshotter (its own records cannot be written), and containerd
/// looks at a snapshotter again only when a snapshot of it goes. So one does: an empty
/// snapshot, taken and removed under a lease of its own.
pub async fn collect_snapshots(store: &Store, snapshotter: &str) -> Result<(), StoreError> {
    let lease = store
        .create_lease("collect-snapshots", std::time::Duration::from_secs(600))
        .await?;
    let key = format!("prepull-collect-{:016x}", rand::random::<u64>());
    let made = store
        .prepare_snapshot(&lease, snapshotter, &key, "", HashMap::new())
        .await;
    let removed = match made {
        Ok(_) => store.remove_snapshot(snapshotter, &key).await,
        Err(e) => Err(e),
    };
    let collected = store.delete_lease_collecting(lease).await;
    removed.and(collected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(boot: &str, ns: &str, pid: u32, started: u64) -> Holder {
        Holder {
            boot: boot.into(),
            pid_namespace: ns.into(),
            pid,
            started,
        }
    }

    #[test]
    fn the_start_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000000 200 18446744073709551615";
        assert_eq!(started(stat), Some(987_654));
        assert_eq!(started("garbage"), None);
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(started(&me).is_some_and(|t| t > 0), "{me}");
        assert!(Holder::current().is_some());
    }

    #[test]
    fn only_leases_of_gone_processes_are_left_behind() {
        let me = holder("boot-a", "pid:[1]", 100, 5000);
        let none = |_| None;
        let never = |_: &str| false;
        // Another boot: whatever held it is gone.
        assert_eq!(
            holder("boot-b", "pid:[1]", 100, 5000).holds(&me, "l", none, never),
            Held::LeftBehind
        );
        // Another PID namespace: cannot be judged from here.
        assert_eq!(
            holder("boot-a", "pid:[2]", 7, 1).holds(&me, "l", none, never),
            Held::Unknown
        );
        // A process that runs, with the same start time: live.
        let other = holder("boot-a", "pid:[1]", 7, 1);
        assert_eq!(other.holds(&me, "l", |_| Some(1), never), Held::Live);
        // The PID reused by a later process, or no process at all: gone.
        assert_eq!(other.holds(&me, "l", |_| Some(2), never), Held::LeftBehind);
        assert_eq!(other.holds(&me, "l", none, never), Held::LeftBehind);
        // This process: live while one of its pulls holds the lease.
        let mine = holder("boot-a", "pid:[1]", 100, 5000);
        assert_eq!(mine.holds(&me, "l", none, |id| id == "l"), Held::Live);
        assert_eq!(mine.holds(&me, "l", none, never), Held::LeftBehind);
    }

    #[test]
    fn labels_name_the_holder_and_read_back() {
        let h = holder("b", "pid:[4026531836]", 12, 34);
        let labels: HashMap<String, String> = h
            .labels()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(Holder::from_labels(&labels), Some(h));
        assert_eq!(Holder::from_labels(&HashMap::new()), None);
    }
}
