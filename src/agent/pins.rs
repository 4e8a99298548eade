//! Pins the agent sets and releases, and who owns them.
//!
//! A pin is CRI's label `io.cri-containerd.pinned=pinned` on an image record: the kubelet's image
//! GC leaves the image alone. Several lists may keep images on one node (a bootstrap list run with
//! `prepull agent --once`, the DaemonSet's list), so each pin prepull sets also carries an
//! ownership label, `prepull.io/pinned-by.<owner>=<entry>`: the owner names the list (see
//! [`PinOwner`]), the value the list entry that wants the image. An agent releases only its own
//! ownership labels, and removes CRI's pin only when no owner is left. A record pinned without
//! any ownership label (CRI's own pin on the sandbox image, `prepull pull --pin`, an operator) is
//! never claimed nor released.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::list::{Entry, List};
use crate::image::labels::{self, LEGACY_PINNED_FOR, PINNED_BY};
use crate::store::{Store, StoreError, StoredImage};

/// The most characters an owner name may have (a DNS label's length).
const MAX_OWNER: usize = 63;

/// Who pinned a record: one list on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinOwner(String);

/// Why a name cannot be a pin owner.
#[derive(Debug, thiserror::Error)]
#[error("pin owner {name:?}: {problem}")]
pub struct OwnerError {
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl PinOwner {
    /// An owner named by the operator: 1 to 63 letters, digits, `.`, `_` or `-`, starting with a
    /// letter or digit.
    pub fn new(name: &str) -> Result<PinOwner, OwnerError> {
        let problem = if name.is_empty() || name.len() > MAX_OWNER {
            Some("must be 1 to 63 characters")
        } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            Some("must start with a letter or digit")
        } else if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            Some("may hold only letters, digits, '.', '_' and '-'")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(OwnerError {
                name: name.to_string(),
                problem,
            }),
            None => Ok(PinOwner(name.to_string())),
        }
    }

    /// The owner a list file stands for when none is named: its path as given (not resolved, so a
    /// ConfigMap's `..data` swaps keep it), `/` as `-`: `/etc/prepull/list.yaml` is
    /// `etc-prepull-list.yaml`. A long path keeps its end and a hash of the whole.
    pub fn for_list(path: &Path) -> PinOwner {
        let text = path.to_string_lossy();
        let mut name: String = text
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        name = name
            .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_string();
        if name.len() > MAX_OWNER || name.is_empty() {
            let hash = hex::encode(&Sha256::digest(text.as_bytes())[..6]);
            let keep = MAX_OWNER - hash.len() - 1;
            let tail = &name[name.len().saturating_sub(keep)..];
            let tail = tail.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
            name = if tail.is_empty() {
                hash
            } else {
                format!("{tail}-{hash}")
            };
        }
        PinOwner(name)
    }

    /// The owner's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its ownership label key.
    fn label(&self) -> String {
        format!("{PINNED_BY}{}", self.0)
    }
}

impl std::fmt::Display for PinOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether any prepull list (or an earlier version of prepull) owns a pin on this record.
fn owned_by_prepull(labels: &HashMap<String, String>) -> bool {
    labels
        .keys()
        .any(|k| k.starts_with(PINNED_BY) || k == LEGACY_PINNED_FOR)
}

/// Whether a record's pin belongs to nobody but `owner`'s label `key` (so removing that label
/// leaves the pin unowned and it must go too).
fn only_owner(labels: &HashMap<String, String>, key: &str) -> bool {
    !labels
        .keys()
        .any(|k| (k.starts_with(PINNED_BY) && k != key) || k == LEGACY_PINNED_FOR)
}

/// The pins of one list: sets them for its entries and releases them when it no longer wants
/// them.
pub struct Pins<'a> {
    store: &'a Store,
    owner: &'a PinOwner,
}

impl<'a> Pins<'a> {
    /// The pins `owner` holds in `store`.
    pub fn new(store: &'a Store, owner: &'a PinOwner) -> Pins<'a> {
        Pins { store, owner }
    }

    /// Brings the records `names` of `entry` in line with it: a pinned entry pins them (or joins
    /// the other lists that pinned them); an unpinned one gives up this list's share.
    pub async fn apply(&self, entry: &Entry, names: &[String]) -> Result<(), StoreError> {
        let key = self.owner.label();
        let wanted_by = entry.reference.to_string();
        for name in names {
            let Some(record) = self.store.image(name).await? else {
                continue;
            };
            let pinned = record.labels.contains_key(labels::CRI_PINNED);
            let ours = record.labels.get(&key);
            if entry.pin {
                // Pinned by someone who is not a prepull list: theirs, not ours to share.
                // Ours and still pinned: nothing to do. Ours but the pin went (removed by hand):
                // set again below.
                if pinned && (ours.is_some() || !owned_by_prepull(&record.labels)) {
                    continue;
                }
                self.store
                    .update_image_labels(
                        name,
                        &[
                            (labels::CRI_PINNED, Some(labels::PINNED)),
                            (&key, Some(&wanted_by)),
                        ],
                    )
                    .await?;
            } else if ours == Some(&wanted_by) {
                self.give_up(&record, &key).await?;
            }
        }
        Ok(())
    }

    /// Releases this list's pins on records no pinned entry wants any more: the entry left the
    /// list, turned `pin: false`, or its tag now resolves to another image. `resolved` holds the
    /// digest each entry resolved to in this pass, `None` when it could not be checked (its pins
    /// stay). A pin another entry of the list still wants is handed over to it. Returns how many
    /// records were released.
    pub async fn release(
        &self,
        list: &List,
        resolved: &HashMap<String, Option<String>>,
    ) -> Result<usize, StoreError> {
        let key = self.owner.label();
        let listed: BTreeMap<String, bool> = list
            .entries
            .iter()
            .map(|e| (e.reference.to_string(), e.pin))
            .collect();
        // The image each pinned entry wants kept: what it resolved to in this pass, or, when it
        // could not be checked (a registry outage), what its record points at now.
        let mut wanted: Vec<(String, String)> = Vec::new();
        for entry in list.entries.iter().filter(|e| e.pin) {
            let name = entry.reference.to_string();
            let digest = match resolved.get(&name) {
                Some(Some(d)) => Some(d.clone()),
                _ => self
                    .store
                    .image(&name)
                    .await?
                    .and_then(|r| r.target)
                    .map(|t| t.digest.to_string()),
            };
            if let Some(d) = digest {
                wanted.push((name, d));
            }
        }
        let mut released = 0;
        for record in self.store.images_with_label(&key).await? {
            let entry = record.labels.get(&key).cloned().unwrap_or_default();
            let target = record.target.as_ref().map(|t| t.digest.to_string());
            let target = target.as_deref();
            let why = match (listed.get(&entry), resolved.get(&entry)) {
                (None, _) => "its image left the prepull list",
                (Some(false), _) => "its list entry is no longer pinned",
                // The entry's tag now points elsewhere: this record is the old image's.
                (Some(true), Some(Some(now))) if target != Some(now.as_str()) => {
                    "its tag moved to another image"
                }
                _ => continue,
            };
            // Another pinned entry wants the same image: the pin stays, and is now that entry's.
            if let Some((heir, _)) = wanted.iter().find(|(_, d)| Some(d.as_str()) == target) {
                if heir != &entry {
                    self.store
                        .update_image_labels(&record.name, &[(&key, Some(heir))])
                        .await?;
                    tracing::info!(record = %record.name, from = %entry, to = %heir, "pin handed over");
                }
                continue;
            }
            let unpinned = self.give_up(&record, &key).await?;
            tracing::info!(
                record = %record.name,
                for_entry = %entry,
                owner = %self.owner,
                why,
                still_pinned_by_another_list = !unpinned,
                "pin released"
            );
            released += 1;
        }
        Ok(released)
    }

    /// Removes this list's ownership of `record`'s pin, and the pin itself when no other list
    /// owns it. `true` when the pin went.
    async fn give_up(&self, record: &StoredImage, key: &str) -> Result<bool, StoreError> {
        // Read again just before deciding: another list's agent may have joined since.
        let labels = match self.store.image(&record.name).await? {
            Some(now) => now.labels,
            None => return Ok(false),
        };
        let last = only_owner(&labels, key);
        let mut changes = vec![(key, None)];
        if last {
            changes.push((labels::CRI_PINNED, None));
        }
        self.store
            .update_image_labels(&record.name, &changes)
            .await?;
        Ok(last)
    }
}

/// The labels `prepull unpin` removes from a record: CRI's pin and every ownership label, so no
/// list's agent takes the record for its own afterwards (it pins it again on its next pass if
/// the image is still on its list).
pub fn unpin_labels(record: &StoredImage) -> Vec<&str> {
    let mut out = vec![labels::CRI_PINNED];
    out.extend(
        record
            .labels
            .keys()
            .map(String::as_str)
            .filter(|k| k.starts_with(PINNED_BY) || *k == LEGACY_PINNED_FOR),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_checked_names() {
        assert!(PinOwner::new("node-bootstrap").is_ok());
        assert!(PinOwner::new("daemonset.v2_x").is_ok());
        for bad in ["", "-x", "a/b", "has space", &"x".repeat(64)] {
            assert!(PinOwner::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_list_path_gives_a_stable_valid_owner() {
        let owner = PinOwner::for_list(Path::new("/etc/prepull/list.yaml"));
        assert_eq!(owner.as_str(), "etc-prepull-list.yaml");
        assert_eq!(
            PinOwner::for_list(Path::new("boot.yaml")).as_str(),
            "boot.yaml"
        );
        let long = format!("/var/lib/{}/list.yaml", "deep/".repeat(30));
        let a = PinOwner::for_list(Path::new(&long));
        assert!(PinOwner::new(a.as_str()).is_ok(), "{a}");
        assert!(a.as_str().len() <= MAX_OWNER, "{a}");
        assert!(
            a.as_str().contains("-deep--list.yaml-"),
            "the end is kept: {a}"
        );
        // Two long paths with the same end are still told apart.
        let b = PinOwner::for_list(Path::new(&format!("/x{long}")));
        assert_ne!(a, b);
        assert!(PinOwner::new(PinOwner::for_list(Path::new("///")).as_str()).is_ok());
    }

    #[test]
    fn the_pin_goes_only_with_its_last_owner() {
        let key = PinOwner::new("a").unwrap().label();
        let labels = |keys: &[&str]| -> HashMap<String, String> {
            keys.iter()
                .map(|k| (k.to_string(), "x".to_string()))
                .collect()
        };
        assert!(only_owner(&labels(&[labels::CRI_PINNED, &key]), &key));
        assert!(!only_owner(
            &labels(&[labels::CRI_PINNED, &key, "prepull.io/pinned-by.b"]),
            &key
        ));
        assert!(!only_owner(&labels(&[&key, LEGACY_PINNED_FOR]), &key));
        assert!(!owned_by_prepull(&labels(&[labels::CRI_PINNED])));
        assert!(owned_by_prepull(&labels(&["prepull.io/pinned-by.b"])));
    }
}
