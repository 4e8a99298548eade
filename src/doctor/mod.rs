//! `prepull doctor`: why a pod's image pull fails (`ErrImagePull`, `ImagePullBackOff`), found by
//! walking, on the node, every step the pull takes, in the kubelet's order.
//!
//! Each step is one file and ends with a [`Step`]: `ok`, `warning` (the pull may work, but
//! something is off), `fail` (this is why it does not work) or `skipped` (an earlier step
//! failed). A failing step says what is wrong as a stable [`Step::cause`] and how to fix it,
//! naming the file, key, registry or command. Steps: [`reference`] (the name as the kubelet
//! asks for it), [`credentials`] (which sources exist and which entries match), [`network`]
//! (each endpoint resolves and connects, mirrors included), [`registry`] (TLS, the challenge and
//! each matching credential in turn, the tag, rate-limit headroom, the platforms), [`node`]
//! (what containerd and CRI hold, and free space) and [`kubelet`] (its settings that defeat
//! pre-pulled images).
//!
//! Secrets never appear: credentials are named by where they come from.

pub mod credentials;
pub mod kubelet;
pub mod network;
pub mod node;
pub mod reference;
pub mod registry;

use serde::Serialize;

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As it should be.
    Ok,
    /// Not why a pull fails, but worth fixing.
    Warning,
    /// Why the pull fails, or a pod would not start.
    Fail,
    /// Not checked: an earlier step failed.
    Skipped,
}

impl Verdict {
    /// The word printed for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warning => "warning",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "skipped",
        }
    }
}

/// One step of the walk.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Which step (stable: `reference`, `credentials`, `network`, `mirror`, `registry`,
    /// `manifest`, `platform`, `node`, `kubelet`).
    pub step: &'static str,
    /// How it ended.
    pub status: Verdict,
    /// One line: what was found.
    pub summary: String,
    /// Why it is not ok, as a stable word for tools (e.g. `unauthorized`, `tag-not-found`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<&'static str>,
    /// What was looked at, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Step {
    /// A step that found what it should.
    pub fn ok(step: &'static str, summary: impl Into<String>) -> Step {
        Step {
            step,
            status: Verdict::Ok,
            summary: summary.into(),
            cause: None,
            details: Vec::new(),
            fix: None,
        }
    }

    /// A step that found `cause`, with `verdict` (warning or fail) and the fix.
    pub fn found(
        step: &'static str,
        verdict: Verdict,
        cause: &'static str,
        summary: impl Into<String>,
        fix: impl Into<String>,
    ) -> Step {
        Step {
            status: verdict,
            cause: Some(cause),
            fix: Some(fix.into()),
            ..Step::ok(step, summary)
        }
    }

    /// A step not taken because an earlier one failed.
    pub fn skipped(step: &'static str, why: impl Into<String>) -> Step {
        Step {
            status: Verdict::Skipped,
            ..Step::ok(step, why)
        }
    }

    /// The step with `details` added.
    pub fn with_details(mut self, details: impl IntoIterator<Item = String>) -> Step {
        self.details.extend(details);
        self
    }
}

/// Everything the walk found about one image.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The image as given.
    pub image: String,
    /// Whether no step failed.
    pub ok: bool,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Report {
    /// A report of `steps`.
    pub fn new(image: &str, steps: Vec<Step>) -> Report {
        Report {
            image: image.to_string(),
            ok: !steps.iter().any(|s| s.status == Verdict::Fail),
            steps,
        }
    }

    /// The first failing step, if any.
    pub fn failure(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.status == Verdict::Fail)
    }
}
