//! Fault campaigns: loops of injected faults drawn from one seeded generator, so a failing run
//! can be replayed, and the figures a campaign reports when it ends (faults injected, runs,
//! bytes fetched again, time).
//!
//! `PREPULL_CAMPAIGN_SEED=<seed>` (see [`SEED_ENV`]) replays every campaign's plan: which faults,
//! where and when. The data of the images is random anew each run; the plan is not.

use std::fmt::Display;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;

/// The seed of every campaign's plan; unset, a random one is drawn and printed.
pub const SEED_ENV: &str = "PREPULL_CAMPAIGN_SEED";

/// One campaign under way: its generator, its clock and the figures it will print.
pub struct Campaign {
    name: &'static str,
    seed: u64,
    rng: SmallRng,
    started: Instant,
    figures: Vec<(String, String)>,
}

impl Campaign {
    /// Starts the campaign `name`, with the seed [`SEED_ENV`] names or a fresh one, and says
    /// which at once (a campaign that hangs has still named its seed).
    pub fn start(name: &'static str) -> Campaign {
        let seed = match std::env::var(SEED_ENV) {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_ENV}={v:?} is not a number")),
            _ => rand::random(),
        };
        // Each campaign draws its own sequence from the one seed.
        let own = name.bytes().fold(seed, |h: u64, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        println!("campaign {name}: seed {seed} ({SEED_ENV}={seed} replays it)");
        Campaign {
            name,
            seed,
            rng: SmallRng::seed_from_u64(own),
            started: Instant::now(),
            figures: Vec::new(),
        }
    }

    /// The campaign's generator: every random choice of its plan comes from here.
    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// How to replay this campaign, for assertion messages.
    pub fn replay(&self) -> String {
        format!(
            "campaign {}, seed {} ({SEED_ENV}={} replays it)",
            self.name, self.seed, self.seed
        )
    }

    /// Since the campaign started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records a figure to print at the end.
    pub fn figure(&mut self, name: &str, value: impl Display) {
        self.figures.push((name.to_string(), value.to_string()));
    }

    /// Prints the figures, with the time the campaign took.
    pub fn finish(mut self) {
        let took = format!("{:.1} s", self.elapsed().as_secs_f64());
        self.figure("time", took);
        let width = self.figures.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("campaign {} (seed {}):\n", self.name, self.seed);
        for (name, value) in &self.figures {
            out.push_str(&format!("  {name:<width$}  {value}\n"));
        }
        print!("{out}");
    }
}

/// `bytes` in MiB with one decimal, for figures.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}
