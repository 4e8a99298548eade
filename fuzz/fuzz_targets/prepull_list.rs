//! The prepull list (YAML), read from a file by the loader the agent uses ([`List::load`]),
//! with its size and nesting bounds.
//!
//! Checks: no panic; a list that loads holds each image once, each a reference that prints
//! and parses back to itself; text the nesting bound lets through nests no deeper than the
//! bound, as the YAML parser sees it (the bound is what keeps parsing time linear).
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use prepull::agent::list::{List, MAX_NESTING};
use prepull::fuzzing::list_nesting_depth;
use prepull::reference::Reference;
use prepull_fuzz::write_input;
use serde_yaml_ng::Value;

fuzz_target!(|data: &[u8]| {
    let path = write_input("list/images.yaml", data);
    if let Ok(list) = List::load(&path) {
        let mut seen = HashSet::new();
        for entry in &list.entries {
            let shown = entry.reference.to_string();
            assert_eq!(Reference::parse(&shown).as_ref(), Ok(&entry.reference));
            assert!(seen.insert(shown), "{:?} listed twice", entry.reference);
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if list_nesting_depth(text) <= MAX_NESTING {
        for document in serde_yaml_ng::Deserializer::from_str(text) {
            use serde::Deserialize as _;
            let Ok(value) = Value::deserialize(document) else {
                break;
            };
            let depth = depth(&value);
            assert!(
                depth <= MAX_NESTING,
                "counted at most {MAX_NESTING} levels deep, but parses {depth} deep"
            );
        }
    }
});

/// How many collections are nested in `value` (a scalar is 0 deep).
fn depth(value: &Value) -> usize {
    match value {
        Value::Sequence(s) => 1 + s.iter().map(depth).max().unwrap_or(0),
        Value::Mapping(m) => {
            1 + m
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        Value::Tagged(t) => depth(&t.value),
        _ => 0,
    }
}
