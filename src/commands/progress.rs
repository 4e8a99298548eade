//! Progress on a terminal: while `prepull pull` runs, a line per image with bytes stored of its
//! size and the rate, on stderr. Nothing when stderr is not a terminal or the output is JSON:
//! logs and scripts get the results only.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Output;
use crate::pull::{PullProgress, Stage};
use crate::reference::Reference;

/// How often the lines are redrawn.
const TICK: Duration = Duration::from_millis(100);

/// The lines of the pulls under way; [`Pulls::finish`] leaves each at its final state.
pub struct Pulls {
    lines: Vec<(ProgressBar, Arc<PullProgress>)>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Pulls {
    /// A line per image, when `output` is text and stderr a terminal; `None` otherwise. The
    /// progress of each image is its element of the returned vector in both cases.
    pub fn start(images: &[Reference], output: Output) -> (Option<Pulls>, Vec<Arc<PullProgress>>) {
        let progress: Vec<Arc<PullProgress>> = images.iter().map(|_| Arc::default()).collect();
        if output != Output::Text || !std::io::stderr().is_terminal() {
            return (None, progress);
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix} {bar:24} {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let width = images
            .iter()
            .map(|r| r.to_string().len())
            .max()
            .unwrap_or(0);
        let lines: Vec<_> = images
            .iter()
            .zip(&progress)
            .map(|(image, p)| {
                let bar = multi.add(ProgressBar::new(0).with_style(style.clone()));
                bar.set_prefix(format!("{:width$}", image.to_string()));
                bar.set_message("resolving");
                (bar, p.clone())
            })
            .collect();
        let ticking = lines.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                draw(&ticking);
            }
        });
        (Some(Pulls { lines, ticker }), progress)
    }

    /// Draws the final state of every line, saying which pulls failed (`failed`, in image
    /// order), and stops redrawing.
    pub fn finish(self, failed: &[bool]) {
        self.ticker.abort();
        draw(&self.lines);
        for ((bar, _), failed) in self.lines.iter().zip(failed) {
            if *failed {
                // What it got to says nothing useful; the error follows on its own line.
                let plain = ProgressStyle::with_template("{prefix} {msg}");
                bar.set_style(plain.unwrap_or_else(|_| ProgressStyle::default_bar()));
                bar.finish_with_message("failed");
            } else {
                bar.finish_with_message("done");
            }
        }
    }
}

fn draw(lines: &[(ProgressBar, Arc<PullProgress>)]) {
    for (bar, progress) in lines {
        match progress.stage() {
            Stage::Resolving => {}
            Stage::Fetching => {
                bar.set_length(progress.total());
                bar.set_position(progress.done());
                bar.set_message("");
            }
            Stage::Done => {
                bar.set_length(progress.total());
                bar.set_position(progress.done());
            }
        }
    }
}

/// One line counting bytes read out of a known total (`verify --deep` reading layers), on a
/// terminal only.
pub struct Reading {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Reading {
    /// A line labelled `what` following `read` up to `total`, when `output` is text and stderr
    /// a terminal; `None` otherwise.
    pub fn start(
        what: &str,
        total: u64,
        read: Arc<std::sync::atomic::AtomicU64>,
        output: Output,
    ) -> Option<Reading> {
        if output != Output::Text || !std::io::stderr().is_terminal() {
            return None;
        }
        let style = ProgressStyle::with_template(
            "{prefix} {bar:24} {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_prefix(what.to_string());
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                ticking.set_position(read.load(std::sync::atomic::Ordering::Relaxed).min(total));
            }
        });
        Some(Reading { bar, ticker })
    }

    /// Stops the line, leaving it at its last count.
    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
