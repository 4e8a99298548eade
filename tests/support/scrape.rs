//! Reading the agent's `/metrics` with the Prometheus project's own OpenMetrics parser (Debian's
//! python3-prometheus-client), so what the tests assert on is what Prometheus would read.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// One sample: its name (with `_total`, `_bucket`… as exposed), labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// Each family's name and type, as the parser read them.
    pub types: BTreeMap<String, String>,
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {"samples": [], "types": {}}
for family in text_string_to_metric_families(sys.stdin.read()):
    out["types"][family.name] = family.type
    for s in family.samples:
        out["samples"].append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

impl Scrape {
    /// Parses `text` strictly as OpenMetrics; panics with the parser's complaint if it is not.
    pub fn parse(text: &str) -> Scrape {
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", PARSER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run /usr/bin/python3 (scripts/setup.sh installs python3-prometheus-client)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the OpenMetrics parser refused the exposition: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let samples = json["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Sample {
                name: s["name"].as_str().unwrap().to_string(),
                labels: s["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
                value: s["value"].as_f64().unwrap(),
            })
            .collect();
        let types = json["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        Scrape { samples, types }
    }

    /// The value of the sample `name` whose labels include `labels`; `None` if there is none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// [`Scrape::get`], or a panic naming what is missing and listing the samples of `name`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            let seen: Vec<_> = self.samples.iter().filter(|s| s.name == name).collect();
            panic!("no sample {name} with {labels:?}; samples of {name}: {seen:?}")
        })
    }
}
