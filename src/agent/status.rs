//! What the agent tells the operator: per listed image, one state that says whether a pod using it
//! will start without the network, and why not.
//!
//! "Could not re-check" is not "not warm": an image that is on the node and complete stays usable
//! while its registry is down or its credentials are broken, so it is [`ImageState::Stale`], not
//! [`ImageState::Failed`], and keeps the digest that is present. Damage found by the periodic
//! verify is kept, with when it was found and when it was mended, until newer damage replaces it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use super::list::Entry;
use crate::pull::{PullError, PullReport};
use crate::store::StoreError;
use crate::ErrorKind;

/// Where a listed image stands on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageState {
    /// Present, complete, and what the list resolves to now.
    Warm,
    /// Present and usable, but the last re-check against the registry failed (`kind`, `error`,
    /// `since`): a pod starts, possibly on an image older than the tag's newest.
    Stale,
    /// On the node, not checked yet against the registry (before its first pass).
    Unchecked,
    /// Not on the node, and no pull tried yet.
    Missing,
    /// Not on the node, and the pull failed (`kind`, `error`, `since`).
    Failed,
    /// Found damaged on the node, and not mended yet (`damage`; the pull that mends it failed).
    Corrupt,
}

impl ImageState {
    /// The state's name, as in the status file.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Warm => "warm",
            ImageState::Stale => "stale",
            ImageState::Unchecked => "unchecked",
            ImageState::Missing => "missing",
            ImageState::Failed => "failed",
            ImageState::Corrupt => "corrupt",
        }
    }

    /// Whether a pod using the image starts without the network, as far as the last pass knows
    /// (an `unchecked` image is not known yet).
    pub fn usable(self) -> bool {
        matches!(self, ImageState::Warm | ImageState::Stale)
    }
}

/// Damage the periodic verify found in a stored image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// When it was found (RFC 3339).
    pub found: String,
    /// What was wrong, one line per problem.
    pub problems: Vec<String>,
    /// Why this node cannot mend it (a bad blob another containerd namespace holds, and the fix),
    /// if so: the image stays corrupt until a verify finds it sound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// When a pull made the image whole again (RFC 3339), if one has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mended: Option<String>,
}

/// One listed image.
#[derive(Clone, Debug, Serialize)]
pub struct ImageStatus {
    /// The list entry, normalized.
    pub image: String,
    /// Where it stands.
    pub state: ImageState,
    /// Whether the entry asks for a pin.
    pub pin: bool,
    /// The digest on the node: what the list resolved to when warm, what is present when stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Bytes of its content on the node (config and layers, compressed), when it is there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Bytes downloaded for it in the last pass.
    pub bytes_fetched: u64,
    /// When it was last confirmed warm (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_warm: Option<String>,
    /// Since when it has been stale, failed or corrupt (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The failure's kind (see the documented set), when the last check failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    /// The whole error, naming registry, repository and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last damage the periodic verify found, and whether it was mended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damage: Option<Damage>,
    /// Why a pod could not start from it even though it is on the node (its own command does
    /// not resolve to a file the kernel runs: missing, emptied, for another architecture), as
    /// the last pass found; see `start_kind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_error: Option<String>,
    /// The kind of `start_error` (`not-found`, `empty`, `wrong-architecture`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_kind: Option<&'static str>,
    /// Why an entry to pin is on the node unpinned: pinning it would pass the pin budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpinned: Option<String>,
    /// The pass that checked it last (none before its first check). While a pass is under way,
    /// the images it has checked already carry its number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<u64>,
}

/// How one image's check in a pass ended.
pub enum Outcome<'a> {
    /// Pulled, or confirmed warm.
    Warm(&'a PullReport),
    /// Found damaged in a way this node cannot mend (`reason`: what holds the bad content and
    /// what to do); `present` is what the node holds.
    Unmendable {
        /// What stops the mending, and the fix.
        reason: &'a str,
        /// What is on the node.
        present: Option<&'a PullReport>,
    },
    /// The pull failed; `present` is the complete image the node holds for the entry, if any.
    Failed {
        /// Why.
        error: &'a PullError,
        /// What is on the node.
        present: Option<&'a PullReport>,
        /// Bytes it downloaded before it failed (the next pull resumes from them).
        fetched: u64,
    },
}

/// The most bytes the status file may take: the DaemonSet writes it to a 1 MiB in-memory volume,
/// and a write that does not fit fails and leaves the previous status in place.
pub const MAX_STATUS_BYTES: usize = 768 << 10;

/// The most characters of one error kept in the status; the log has the rest.
const MAX_ERROR_CHARS: usize = 2048;

/// The most problems of one image's damage kept in the status.
const MAX_PROBLEMS: usize = 20;

/// `text`, cut to `max` characters (marked with `…`).
fn capped(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// Time as the status file writes it.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl ImageStatus {
    /// Whether a pod using the image starts without the network: it is usable (warm or stale)
    /// and its command resolves in its unpacked layers.
    pub fn ready(&self) -> bool {
        self.state.usable() && self.start_error.is_none()
    }

    /// Whether damage is open on the image: found, and not mended yet.
    pub fn damage_open(&self) -> bool {
        self.damage.as_ref().is_some_and(|d| d.mended.is_none())
    }

    /// An entry before any pass checked it: `present` is the complete image the node holds.
    pub fn before_check(entry: &Entry, present: Option<&PullReport>) -> ImageStatus {
        ImageStatus {
            image: entry.reference.to_string(),
            state: if present.is_some() {
                ImageState::Unchecked
            } else {
                ImageState::Missing
            },
            pin: entry.pin,
            digest: present.map(|p| p.digest.to_string()),
            size: present.map(|p| p.size),
            bytes_fetched: 0,
            last_warm: None,
            since: None,
            kind: None,
            error: None,
            damage: None,
            start_error: None,
            start_kind: None,
            unpinned: None,
            pass: None,
        }
    }

    /// The entry's status after a pass: `previous` is its status before it, `found` the damage
    /// the verify before this pass found (if it ran and found any).
    pub fn after_pass(
        entry: &Entry,
        previous: Option<&ImageStatus>,
        found: Option<Vec<String>>,
        outcome: Outcome<'_>,
        now: SystemTime,
    ) -> ImageStatus {
        let at = timestamp(now);
        let mut damage = match found {
            Some(problems) => Some(Damage::found(problems, &at)),
            None => previous.and_then(|p| p.damage.clone()),
        };
        let unmended = damage.as_ref().is_some_and(|d| d.mended.is_none());
        // Since when it has been wrong: kept while it stays wrong.
        let since = previous
            .filter(|p| {
                matches!(
                    p.state,
                    ImageState::Stale | ImageState::Failed | ImageState::Corrupt
                )
            })
            .and_then(|p| p.since.clone())
            .unwrap_or_else(|| at.clone());
        let base = ImageStatus {
            image: entry.reference.to_string(),
            state: ImageState::Warm,
            pin: entry.pin,
            digest: None,
            size: None,
            bytes_fetched: 0,
            last_warm: previous.and_then(|p| p.last_warm.clone()),
            since: None,
            kind: None,
            error: None,
            damage: None,
            start_error: None,
            start_kind: None,
            unpinned: None,
            pass: None,
        };
        let status = match outcome {
            Outcome::Warm(report) => ImageStatus::warm(base, report, &mut damage, &at),
            Outcome::Unmendable { reason, present } => ImageStatus {
                state: ImageState::Corrupt,
                digest: present.map(|p| p.digest.to_string()),
                size: present.map(|p| p.size),
                since: Some(since),
                kind: Some(ErrorKind::Corrupt),
                error: Some(capped(
                    format!("cannot be mended on this node: {reason}"),
                    MAX_ERROR_CHARS,
                )),
                ..base
            },
            Outcome::Failed {
                error,
                present,
                fetched,
            } => ImageStatus {
                state: match (unmended, present) {
                    (true, _) => ImageState::Corrupt,
                    (false, Some(_)) => ImageState::Stale,
                    (false, None) => ImageState::Failed,
                },
                digest: present.map(|p| p.digest.to_string()),
                size: present.map(|p| p.size),
                bytes_fetched: fetched,
                since: Some(since),
                kind: Some(error.kind()),
                error: Some(capped(crate::error_chain(error), MAX_ERROR_CHARS)),
                ..base
            },
        };
        ImageStatus { damage, ..status }
    }

    /// A warm image whose pin could not be set: its error says so.
    pub fn pin_failed(&mut self, e: &StoreError) {
        self.kind = Some(e.kind());
        self.error = Some(capped(
            format!(
                "pulled, but the pin could not be set: {}",
                crate::error_chain(e)
            ),
            MAX_ERROR_CHARS,
        ));
    }

    /// Whether damage found on it is open and cannot be mended on this node.
    pub fn unmendable(&self) -> bool {
        self.damage
            .as_ref()
            .is_some_and(|d| d.mended.is_none() && d.blocked.is_some())
    }

    /// Warm as `report` says, the damage (if any was still open) mended now.
    fn warm(
        base: ImageStatus,
        report: &PullReport,
        damage: &mut Option<Damage>,
        at: &str,
    ) -> ImageStatus {
        if let Some(d) = damage.as_mut().filter(|d| d.mended.is_none()) {
            d.mended = Some(at.to_string());
        }
        ImageStatus {
            digest: Some(report.digest.to_string()),
            size: Some(report.size),
            bytes_fetched: report.bytes_fetched,
            last_warm: Some(at.to_string()),
            ..base
        }
    }
}

impl Damage {
    /// Damage found at `at`, its problems capped in number and length.
    fn found(problems: Vec<String>, at: &str) -> Damage {
        Damage {
            found: at.to_string(),
            problems: problems
                .into_iter()
                .take(MAX_PROBLEMS)
                .map(|p| capped(p, MAX_ERROR_CHARS))
                .collect(),
            blocked: None,
            mended: None,
        }
    }
}

/// The status file's content.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The list file.
    pub list: String,
    /// The name this agent's pins carry (`prepull.io/pinned-by.<owner>`).
    pub pin_owner: String,
    /// The node's name (`--node-name`), if given: it sets the node's slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Where in each splay window of the wall clock (Unix time modulo `--splay`) this node's
    /// passes start, in seconds, when its name gives it a slot (plus a jitter of up to 1% of the
    /// splay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot_seconds: Option<f64>,
    /// Where the agent serves its endpoints (`--listen`), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Whether a list is in force (the last good one, when the file on disk cannot be used).
    #[serde(skip)]
    pub list_in_force: bool,
    /// Why the list on disk is not the one in use, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_error: Option<String>,
    /// When this file was written (RFC 3339): the agent writes it when its list loads, when a
    /// pass starts, as the pull of each image in a pass ends (at most a few times a second) and
    /// when the pass ends, so a file much older than `--interval` comes from an agent that
    /// stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written: Option<String>,
    /// When the agent that wrote this file started (RFC 3339): pass numbers count from 1 again
    /// in each agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_started: Option<String>,
    /// The pass under way when this file was written, if one was. Each image's status is the
    /// outcome of its own last check: the images this pass has checked already carry its
    /// number (`pass`), the others are still as pass `passes` (ended at `last_pass`) left them.
    /// The pass-level fields (`passes`, `last_pass`, `last_success`, `released`, `pin_budget`)
    /// change only when a pass ends, and so do pins. Left in place by an agent killed mid-pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_under_way: Option<PassUnderWay>,
    /// When the last pass finished (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_pass: Option<String>,
    /// When the last pass finished, on this process's clock.
    #[serde(skip)]
    pub last_pass_at: Option<tokio::time::Instant>,
    /// When a pass last ended with every listed image warm or stale (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    /// The same, as seconds since the Unix epoch.
    #[serde(skip)]
    pub last_success_unix: Option<f64>,
    /// When the last pass finished, as seconds since the Unix epoch.
    #[serde(skip)]
    pub last_pass_unix: Option<f64>,
    /// How long it took.
    pub last_pass_seconds: f64,
    /// Passes so far.
    pub passes: u64,
    /// Images in each state.
    pub warm: usize,
    /// Present and usable, but not re-checked.
    pub stale: usize,
    /// Not yet checked.
    pub unchecked: usize,
    /// Not on the node yet.
    pub missing: usize,
    /// Not on the node, pull failed.
    pub failed: usize,
    /// Damaged and not mended.
    pub corrupt: usize,
    /// Pins released in the last pass (images that left the list or moved on).
    pub released: usize,
    /// The pin budget and what the node's pinned images take of it, as of the last pass
    /// (none without a free-space check to measure the filesystem).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_budget: Option<super::pin_budget::PinBudget>,
    /// When listed images were last read back and hashed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_verify: Option<String>,
    /// Per image, in list order.
    pub images: Vec<ImageStatus>,
    /// Images left out of `images` to keep the file within its size bound (0: none).
    #[serde(skip_serializing_if = "is_zero")]
    pub images_omitted: usize,
}

/// A pass that started and has not ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PassUnderWay {
    /// Its number (the first pass of an agent is 1).
    pub number: u64,
    /// When it started (RFC 3339).
    pub started: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Status {
    /// Replaces the status of the `i`th image of the list in force (as its pull in a pass ends)
    /// and recounts the states.
    pub fn set_image(&mut self, i: usize, image: ImageStatus) {
        let mut images = std::mem::take(&mut self.images);
        if let Some(slot) = images.get_mut(i) {
            *slot = image;
        }
        self.set_images(images);
    }

    /// Replaces the per-image statuses and recounts the states.
    pub fn set_images(&mut self, images: Vec<ImageStatus>) {
        let count = |state| images.iter().filter(|i| i.state == state).count();
        self.warm = count(ImageState::Warm);
        self.stale = count(ImageState::Stale);
        self.unchecked = count(ImageState::Unchecked);
        self.missing = count(ImageState::Missing);
        self.failed = count(ImageState::Failed);
        self.corrupt = count(ImageState::Corrupt);
        self.images = images;
    }

    /// The status as JSON in at most [`MAX_STATUS_BYTES`]: when the whole does not fit, error
    /// texts and damage lists are cut shorter and shorter, and as a last resort the per-image
    /// list is cut (`images_omitted` says how many are left out; the counts stay whole).
    pub fn to_bounded_json(&self) -> Vec<u8> {
        let fits = |json: &Vec<u8>| json.len() <= MAX_STATUS_BYTES;
        let whole = serde_json::to_vec_pretty(self).unwrap_or_default();
        if fits(&whole) {
            return whole;
        }
        let mut cut = self.clone();
        for (chars, problems) in [(512, 8), (128, 2), (32, 1)] {
            cut = self.with_texts_cut(chars, problems);
            let json = serde_json::to_vec_pretty(&cut).unwrap_or_default();
            if fits(&json) {
                return json;
            }
        }
        // Even the shortest texts do not fit: halve the list until it does.
        let mut keep = cut.images.len();
        loop {
            keep /= 2;
            let mut fewer = cut.clone();
            fewer.images_omitted = fewer.images.len() - keep;
            fewer.images.truncate(keep);
            let json = serde_json::to_vec_pretty(&fewer).unwrap_or_default();
            if fits(&json) || keep == 0 {
                return json;
            }
        }
    }

    /// A copy with every error cut to `chars` characters and each damage to `problems` problems.
    fn with_texts_cut(&self, chars: usize, problems: usize) -> Status {
        let mut cut = self.clone();
        for image in &mut cut.images {
            image.error = image.error.take().map(|e| capped(e, chars));
            if let Some(d) = image.damage.as_mut() {
                d.problems.truncate(problems);
                for p in &mut d.problems {
                    *p = capped(std::mem::take(p), chars);
                }
            }
        }
        cut.list_error = cut.list_error.take().map(|e| capped(e, chars * 4));
        cut
    }

    /// Writes the status to `path` atomically: to a temporary file beside it, created anew (a
    /// symlink planted under the temporary name is removed, never written through), then
    /// renamed over `path` (which replaces a symlink there rather than following it).
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(&self.to_bounded_json())?;
        drop(file);
        std::fs::rename(&tmp, path)
    }

    /// An image's status, by its normalized name.
    pub fn image(&self, name: &str) -> Option<&ImageStatus> {
        self.images.iter().find(|i| i.image == name)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::digest::Digest;
    use crate::reference::Reference;
    use crate::registry::RegistryError;

    fn entry() -> Entry {
        Entry {
            reference: Reference::parse("registry.example.com/app:1").unwrap(),
            pin: true,
            expect: None,
        }
    }

    fn report(tag: &[u8]) -> PullReport {
        PullReport {
            reference: entry().reference,
            digest: Digest::sha256(tag),
            config: Digest::sha256(b"config"),
            platform: crate::platform::Platform::host(),
            names: Vec::new(),
            layers: 1,
            size: 100,
            snapshotter: None,
            blobs_fetched: 0,
            blobs_present: 2,
            bytes_fetched: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn outage() -> PullError {
        PullError::Registry {
            image: "registry.example.com/app:1".into(),
            source: RegistryError::Status {
                registry: "registry.example.com".into(),
                repository: "app".into(),
                action: "HEAD manifest 1".into(),
                status: 503,
                code: None,
                message: None,
            },
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn a_present_image_whose_check_fails_is_stale_with_its_digest_and_since() {
        let warm =
            ImageStatus::after_pass(&entry(), None, None, Outcome::Warm(&report(b"a")), at(0));
        assert_eq!(warm.state, ImageState::Warm);
        let error = outage();
        let present = report(b"a");
        let failed = |prev: &ImageStatus, t| {
            ImageStatus::after_pass(
                &entry(),
                Some(prev),
                None,
                Outcome::Failed {
                    error: &error,
                    present: Some(&present),
                    fetched: 0,
                },
                t,
            )
        };
        let stale = failed(&warm, at(60));
        assert_eq!(stale.state, ImageState::Stale);
        assert_eq!(stale.digest, warm.digest);
        assert_eq!(stale.kind, Some(ErrorKind::RegistryUnavailable));
        assert_eq!(stale.since, Some(timestamp(at(60))));
        assert_eq!(stale.last_warm, Some(timestamp(at(0))));
        // Still failing later: since when is kept.
        let still = failed(&stale, at(120));
        assert_eq!(still.since, Some(timestamp(at(60))));
        // Back: warm, no error, no since.
        let back = ImageStatus::after_pass(
            &entry(),
            Some(&still),
            None,
            Outcome::Warm(&report(b"b")),
            at(180),
        );
        assert_eq!(back.state, ImageState::Warm);
        assert!(back.since.is_none() && back.error.is_none() && back.kind.is_none());
    }

    #[test]
    fn an_absent_image_whose_pull_fails_is_failed_without_a_digest() {
        let error = outage();
        let s = ImageStatus::after_pass(
            &entry(),
            None,
            None,
            Outcome::Failed {
                error: &error,
                present: None,
                fetched: 4096,
            },
            at(0),
        );
        assert_eq!(s.state, ImageState::Failed);
        assert!(s.digest.is_none());
        assert_eq!(s.bytes_fetched, 4096, "what the next pull resumes from");
        assert!(s.error.unwrap().contains("503"));
    }

    #[test]
    fn damage_is_kept_and_marked_mended_and_unmended_damage_is_corrupt() {
        let error = outage();
        let present = report(b"a");
        let corrupt = ImageStatus::after_pass(
            &entry(),
            None,
            Some(vec!["layer sha256:… is corrupt".into()]),
            Outcome::Failed {
                error: &error,
                present: Some(&present),
                fetched: 0,
            },
            at(0),
        );
        assert_eq!(corrupt.state, ImageState::Corrupt);
        let mended = ImageStatus::after_pass(
            &entry(),
            Some(&corrupt),
            None,
            Outcome::Warm(&present),
            at(60),
        );
        assert_eq!(mended.state, ImageState::Warm);
        let damage = mended.damage.clone().unwrap();
        assert_eq!(damage.found, timestamp(at(0)));
        assert_eq!(damage.mended, Some(timestamp(at(60))));
        // A later pass without a verify keeps the record of it, mended time unchanged.
        let later = ImageStatus::after_pass(
            &entry(),
            Some(&mended),
            None,
            Outcome::Warm(&present),
            at(120),
        );
        assert_eq!(later.damage, Some(damage));
    }

    #[test]
    fn the_status_stays_within_its_bound_and_valid_json() {
        let error = PullError::Registry {
            image: "registry.example.com/app:1".into(),
            source: RegistryError::Status {
                registry: "registry.example.com".into(),
                repository: "app".into(),
                action: "GET manifest 1".into(),
                status: 404,
                code: Some("MANIFEST_UNKNOWN".into()),
                message: Some("é".repeat(60_000)),
            },
        };
        let failed = ImageStatus::after_pass(
            &entry(),
            None,
            Some(vec!["x".repeat(50_000); 40]),
            Outcome::Failed {
                error: &error,
                present: None,
                fetched: 0,
            },
            at(0),
        );
        assert!(failed.error.as_ref().unwrap().chars().count() <= MAX_ERROR_CHARS + 1);
        let mut status = Status::default();
        status.set_images(vec![failed; 300]);
        let json = status.to_bounded_json();
        assert!(json.len() <= MAX_STATUS_BYTES, "{}", json.len());
        let back: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(back["corrupt"], 300, "the counts stay whole");
        assert_eq!(
            back["images"].as_array().unwrap().len(),
            300,
            "errors cut first"
        );
        // So many images that even cut errors do not fit: the list is cut, the counts are not.
        let mut many = Status::default();
        many.set_images(vec![ImageStatus::before_check(&entry(), None); 20_000]);
        let json = many.to_bounded_json();
        assert!(json.len() <= MAX_STATUS_BYTES, "{}", json.len());
        let back: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(back["missing"], 20_000);
        let shown = back["images"].as_array().unwrap().len();
        assert!(shown > 0);
        assert_eq!(
            back["images_omitted"].as_u64().unwrap() as usize + shown,
            20_000
        );
        // A small status is written whole.
        let mut small = Status::default();
        small.set_images(vec![ImageStatus::before_check(&entry(), None)]);
        assert_eq!(
            small.to_bounded_json(),
            serde_json::to_vec_pretty(&small).unwrap()
        );
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = dir.path().join("status.json");
        std::os::unix::fs::symlink(&victim, path.with_extension("tmp")).unwrap();
        Status::default().write_to(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["passes"], 0);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn counts_follow_the_images() {
        let mut status = Status::default();
        let error = outage();
        let present = report(b"a");
        status.set_images(vec![
            ImageStatus::after_pass(&entry(), None, None, Outcome::Warm(&present), at(0)),
            ImageStatus::after_pass(
                &entry(),
                None,
                None,
                Outcome::Failed {
                    error: &error,
                    present: Some(&present),
                    fetched: 0,
                },
                at(0),
            ),
            ImageStatus::before_check(&entry(), None),
        ]);
        assert_eq!(
            (status.warm, status.stale, status.missing, status.failed),
            (1, 1, 1, 0)
        );
        assert!(ImageState::Stale.usable() && !ImageState::Missing.usable());
        // One image's pull ends: its status is replaced and the counts follow.
        let pulled = ImageStatus::after_pass(&entry(), None, None, Outcome::Warm(&present), at(1));
        status.set_image(2, pulled);
        assert_eq!((status.warm, status.missing), (2, 0));
        assert_eq!(status.images.len(), 3);
    }
}
