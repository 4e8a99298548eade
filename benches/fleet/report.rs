//! The markdown report: the runs side by side, then each run's detail (requests by kind, the
//! request rate over time, every node's timeline), the cache's comparison with one node, the
//! moved tag per node, the pull budgets (per node, and one for the fleet) side by side and per
//! node, and the fleet's memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use testbench::Record;

use crate::fleet::{Memory, NodeTimes};
use crate::node::BUDGET_RESERVE_PERCENT;
use crate::runs::{BudgetRun, BudgetScope, FleetRun, MovedRun};
use crate::traffic::{self, Kind, Tally};

/// How the bench ran, for the report's head.
pub struct Context {
    pub command: String,
    pub git: String,
    pub cores: usize,
    pub memory: String,
    pub load_before: String,
    pub containerd: String,
    pub snapshotter: String,
    pub nodes: usize,
    pub splay: Duration,
    pub images: String,
}

/// Everything measured.
#[derive(Default)]
pub struct Results {
    pub random: Vec<FleetRun>,
    pub named: Vec<FleetRun>,
    pub no_splay: Option<FleetRun>,
    pub moved: Option<MovedRun>,
    pub cache_one: Option<FleetRun>,
    pub cache_fleet: Vec<FleetRun>,
    pub cache_burst: Vec<FleetRun>,
    pub budget: Vec<BudgetRun>,
}

const BUCKET: Duration = Duration::from_millis(100);
const SECOND: Duration = Duration::from_secs(1);

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), secs)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

pub fn report(cx: &Context, r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Fleet: what N nodes started together send a registry\n"
    );
    let _ = writeln!(
        md,
        "`{}` at {}; {} cores, {} memory, load before {}; containerd {} ({} snapshotter) per \
         node; {} nodes, `--splay {}s`; list: {}. Every node is its own containerd (root, \
         state, socket) and its own `prepull agent` (status file, HTTP port, `--interval 1h`), \
         all reading one list file laid out as a ConfigMap volume. Upstream is one \
         docker-registry behind a counting proxy that names the process behind each connection \
         (from the kernel's socket table). Times are seconds since the agents were started \
         (runs 1, 2, 4) or since the list edit (run 3); the bench reads each status file every \
         100 ms and asks `/warmz` every 250 ms once a node's status shows its pass ended.\n",
        cx.command,
        cx.git,
        cx.cores,
        cx.memory,
        cx.load_before,
        cx.containerd,
        cx.snapshotter,
        cx.nodes,
        cx.splay.as_secs(),
        cx.images,
    );
    summary(&mut md, cx, r);
    // The first round of each run in detail (the summary has every round).
    for run in [r.random.first(), r.named.first(), r.no_splay.as_ref()]
        .into_iter()
        .flatten()
    {
        fleet_detail(&mut md, run);
    }
    if let (Some(one), Some(fleet)) = (&r.cache_one, r.cache_fleet.first()) {
        cache_detail(&mut md, one, fleet, r.cache_burst.first());
    }
    if let Some(moved) = &r.moved {
        moved_detail(&mut md, moved, cx.splay);
    }
    if !r.budget.is_empty() {
        budget_summary(&mut md, &r.budget);
    }
    for budget in &r.budget {
        budget_detail(&mut md, budget);
    }
    memory(&mut md, r);
    md
}

fn fleet_runs(r: &Results) -> Vec<&FleetRun> {
    r.random
        .iter()
        .chain(&r.named)
        .chain(&r.no_splay)
        .chain(&r.cache_one)
        .chain(&r.cache_fleet)
        .chain(&r.cache_burst)
        .collect()
}

/// First requests of the nodes (not the cache) upstream or, through a cache, to the cache.
fn node_first_requests(run: &FleetRun) -> Vec<Duration> {
    let records = run.cache.as_ref().unwrap_or(&run.upstream);
    let firsts = traffic::first_requests(records, run.origin);
    run.times
        .iter()
        .filter_map(|t| firsts.get(&t.name).copied())
        .collect()
}

fn summary(md: &mut String, cx: &Context, r: &Results) {
    if fleet_runs(r).is_empty() {
        return;
    }
    let _ = writeln!(md, "## Runs 1 and 2 side by side\n");
    let _ = writeln!(
        md,
        "| run | nodes | upstream requests | upstream bytes | / listed images' bytes | peak req/s upstream (1 s buckets) | most upstream requests in any 1 s | most in any 100 ms | first requests' spread over the splay (KS distance; 0 = even) | all warm after (s) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for run in fleet_runs(r) {
        let tally = Tally::of(&run.upstream);
        let span = run.span() + SECOND;
        let per_second = traffic::series(&run.upstream, run.origin, SECOND, span);
        let (in_second, _) = traffic::peak_in_window(&run.upstream, run.origin, SECOND);
        let (in_bucket, _) = traffic::peak_in_window(&run.upstream, run.origin, BUCKET);
        let firsts = node_first_requests(run);
        let ks = if firsts.len() > 1 && !run.splay.is_zero() {
            format!("{:.2}", traffic::ks_distance(&firsts, run.splay))
        } else {
            "-".into()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} ({}) | {} | {:.2} | {} | {} | {} | {} | {} |",
            run.label,
            run.nodes,
            tally.requests(),
            tally.summary(),
            mib(tally.bytes()),
            tally.bytes() as f64 / run.image_bytes as f64,
            per_second.iter().max().copied().unwrap_or(0),
            in_second,
            in_bucket,
            ks,
            opt_secs(run.all_warm()),
        );
    }
    let groups: [(&str, &[FleetRun]); 4] = [
        ("1a: random splay", &r.random),
        ("1b: slots from node names", &r.named),
        ("2: the fleet through the cache", &r.cache_fleet),
        ("2: the fleet through the cache, no splay", &r.cache_burst),
    ];
    if groups.iter().any(|(_, runs)| runs.len() > 1) {
        let _ = writeln!(
            md,
            "\nRound by round (each round a fresh fleet; through a fresh cache in run 2):\n"
        );
        let _ = writeln!(
            md,
            "| run | most upstream requests in any 1 s, each round | median | upstream bytes / listed images' bytes, each round |"
        );
        let _ = writeln!(md, "|---|---|---|---|");
        for (label, runs) in groups.iter().filter(|(_, runs)| !runs.is_empty()) {
            let mut peaks: Vec<u64> = runs
                .iter()
                .map(|run| traffic::peak_in_window(&run.upstream, run.origin, SECOND).0)
                .collect();
            let each: Vec<String> = peaks.iter().map(u64::to_string).collect();
            let bytes: Vec<String> = runs
                .iter()
                .map(|run| {
                    format!(
                        "{:.2}",
                        Tally::of(&run.upstream).bytes() as f64 / run.image_bytes as f64
                    )
                })
                .collect();
            peaks.sort_unstable();
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} |",
                each.join(", "),
                peaks[peaks.len() / 2],
                bytes.join(", ")
            );
        }
    }
    let _ = writeln!(
        md,
        "\nThe listed images are {} per node. For n points spread at random the KS distance is \
         about 0.87/sqrt(n) on average ({:.2} for {} nodes); a node's slot from its name is a \
         hash, so it is spread the same way, not more evenly: what the name buys is that each \
         node keeps its slot, at every interval and after a restart. 1c (no splay at all) is \
         the reference for what the splay spreads out.\n",
        mib(fleet_runs(r).first().map_or(0, |x| x.image_bytes)),
        0.87 / (cx.nodes as f64).sqrt(),
        cx.nodes
    );
}

/// Requests by method and kind, as a table.
fn tally_table(md: &mut String, tally: &Tally) {
    let _ = writeln!(md, "| method | kind | requests | bytes |");
    let _ = writeln!(md, "|---|---|---|---|");
    for ((method, kind), (n, bytes)) in &tally.by {
        let _ = writeln!(md, "| {method} | {} | {n} | {} |", kind.name(), bytes);
    }
    if !tally.errors.is_empty() {
        let errors: Vec<String> = tally
            .errors
            .iter()
            .map(|(code, n)| format!("{n} x {code}"))
            .collect();
        let _ = writeln!(md, "\nAnswered with an error: {}.", errors.join(", "));
    }
    let _ = writeln!(md);
}

/// Requests per second as a table row, and per 100 ms as a sparkline.
fn rate_over_time(
    md: &mut String,
    what: &str,
    records: &[Record],
    origin: Instant,
    span: Duration,
) {
    let per_second = traffic::series(records, origin, SECOND, span + SECOND);
    let per_bucket = traffic::series(records, origin, BUCKET, span + SECOND);
    let _ = writeln!(md, "{what}, per second from the start:\n");
    let head: Vec<String> = (0..per_second.len()).map(|i| i.to_string()).collect();
    let _ = writeln!(md, "| s | {} |", head.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(per_second.len()));
    let counts: Vec<String> = per_second.iter().map(u64::to_string).collect();
    let _ = writeln!(md, "| requests | {} |\n", counts.join(" | "));
    let _ = writeln!(
        md,
        "Per 100 ms (one character each, the tallest {} requests):\n\n```\n{}\n```\n",
        per_bucket.iter().max().copied().unwrap_or(0),
        traffic::sparkline(&per_bucket).trim_end()
    );
}

/// When a slot of `slot` seconds (into each window of `splay` on the wall clock) first comes
/// after the wall time `wall`, in seconds from `wall`.
fn slot_due(slot: f64, wall: Duration, splay: Duration) -> f64 {
    let window = splay.as_secs_f64();
    let into = wall.as_secs_f64() % window;
    (slot - into).rem_euclid(window)
}

/// `slots`: the wall time of the table's origin and the splay, when the nodes have slots.
fn node_table(
    md: &mut String,
    times: &[NodeTimes],
    records: &[Record],
    origin: Instant,
    slots: Option<(Duration, Duration)>,
) {
    let with_slot = slots.is_some();
    let by_source = traffic::by_source(records);
    let firsts = traffic::first_requests(records, origin);
    let _ = writeln!(
        md,
        "| node |{} first request (s) | pass start seen (s) | pass end seen (s) | /warmz 200 (s) | pass took (s) | requests | bytes | /warmz |",
        if with_slot {
            " slot (s into each splay window) | slot due (s) |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "|---|{}---|---|---|---|---|---|---|---|",
        if with_slot { "---|---|" } else { "" }
    );
    for t in times {
        let mine = by_source
            .get(&t.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let tally = Tally::of(mine);
        let slot = match (slots, t.slot) {
            (Some((wall, splay)), Some(s)) if !splay.is_zero() => {
                format!(" {s:.2} | {:.1} |", slot_due(s, wall, splay))
            }
            (Some(_), Some(_)) => " - | - |".to_string(),
            (Some(_), None) => " - | - |".to_string(),
            (None, _) => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} |{} {} | {} | {} | {} | {} | {} | {} | {} |",
            t.name,
            slot,
            opt_secs(firsts.get(&t.name).copied()),
            opt_secs(t.pass_started),
            opt_secs(t.goal),
            opt_secs(t.warm),
            t.pass_seconds.map_or("-".into(), |s| format!("{s:.2}")),
            tally.summary(),
            tally.bytes(),
            t.warmz.replace('|', "/"),
        );
    }
    let _ = writeln!(md);
}

fn spread(md: &mut String, firsts: &[Duration], splay: Duration) {
    if firsts.len() < 2 || splay.is_zero() {
        return;
    }
    let mut sorted = firsts.to_vec();
    sorted.sort();
    let even = splay / firsts.len() as u32;
    let (min_gap, max_gap) = traffic::gaps(&sorted).unwrap_or_default();
    let mut buckets = [0u32; 10];
    for d in &sorted {
        let i = ((d.as_secs_f64() / splay.as_secs_f64()) * 10.0) as usize;
        buckets[i.min(9)] += 1;
    }
    let _ = writeln!(
        md,
        "First requests of the nodes: KS distance {:.2}; gaps between consecutive nodes {} s to {} s \
         (an even spread would be {:.2} s each); nodes per tenth of the splay: {:?}.\n",
        traffic::ks_distance(&sorted, splay),
        secs(min_gap),
        secs(max_gap),
        even.as_secs_f64(),
        buckets
    );
}

fn fleet_detail(md: &mut String, run: &FleetRun) {
    let splay = run.splay;
    let _ = writeln!(md, "## Run {}\n", run.label);
    let tally = Tally::of(&run.upstream);
    let _ = writeln!(
        md,
        "Upstream saw {} requests, {} ({:.2} x the listed images' {}).\n",
        tally.requests(),
        mib(tally.bytes()),
        tally.bytes() as f64 / run.image_bytes as f64,
        mib(run.image_bytes)
    );
    tally_table(md, &tally);
    rate_over_time(
        md,
        "Requests upstream",
        &run.upstream,
        run.origin,
        run.span(),
    );
    spread(md, &node_first_requests(run), splay);
    let slots = run.named.then_some((run.wall_origin, splay));
    node_table(md, &run.times, &run.upstream, run.origin, slots);
}

fn cache_detail(md: &mut String, one: &FleetRun, fleet: &FleetRun, burst: Option<&FleetRun>) {
    let _ = writeln!(md, "## Run 2: through a pull-through cache\n");
    let _ = writeln!(
        md,
        "Each node's `hosts.toml` names the cache (docker-registry in proxy mode, its own empty \
         storage, `proxy.remoteurl` the upstream's counting proxy) as a mirror before the \
         upstream server. A fresh cache per part: one node alone, then the fleet of {} with \
         `--splay {}s`{}.\n",
        fleet.nodes,
        fleet.splay.as_secs(),
        if burst.is_some() {
            ", then the fleet with no splay (every node's first requests at once on a cold cache)"
        } else {
            ""
        }
    );
    let mut runs: Vec<(&str, &FleetRun)> = vec![("one node", one), ("fleet", fleet)];
    if let Some(burst) = burst {
        runs.push(("fleet, no splay", burst));
    }
    let upstream: Vec<Tally> = runs.iter().map(|(_, r)| Tally::of(&r.upstream)).collect();
    let cache: Vec<Tally> = runs
        .iter()
        .map(|(_, r)| Tally::of(r.cache.as_deref().unwrap_or_default()))
        .collect();
    let head: Vec<String> = runs
        .iter()
        .skip(1)
        .map(|(name, r)| format!("{name} ({} nodes) | / one node", r.nodes))
        .collect();
    let _ = writeln!(md, "| | one node | {} |", head.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---|---|".repeat(runs.len() - 1));
    let row = |md: &mut String, what: &str, values: &[u64], show: &dyn Fn(u64) -> String| {
        let rest: Vec<String> = values
            .iter()
            .skip(1)
            .map(|v| format!("{} | {}", show(*v), ratio(*v, values[0])))
            .collect();
        let _ = writeln!(
            md,
            "| {what} | {} | {} |",
            show(values[0]),
            rest.join(" | ")
        );
    };
    let mut keys: Vec<(String, Kind)> =
        upstream.iter().flat_map(|t| t.by.keys().cloned()).collect();
    keys.sort();
    keys.dedup();
    for key in &keys {
        let values: Vec<u64> = upstream
            .iter()
            .map(|t| t.by.get(key).map_or(0, |v| v.0))
            .collect();
        row(
            md,
            &format!("upstream {} {}", key.0, key.1.name()),
            &values,
            &|v| v.to_string(),
        );
    }
    let values: Vec<u64> = upstream.iter().map(Tally::bytes).collect();
    row(md, "upstream bytes", &values, &|v| mib(v));
    let per_image: Vec<String> = runs
        .iter()
        .zip(&upstream)
        .map(|((_, r), t)| format!("{:.2}", t.bytes() as f64 / r.image_bytes as f64))
        .collect();
    let mut cells = vec![per_image[0].clone()];
    for v in &per_image[1..] {
        cells.extend([v.clone(), String::new()]);
    }
    let _ = writeln!(
        md,
        "| upstream bytes / listed images' bytes | {} |",
        cells.join(" | ")
    );
    let values: Vec<u64> = cache.iter().map(Tally::requests).collect();
    row(md, "requests to the cache", &values, &|v| v.to_string());
    let values: Vec<u64> = cache.iter().map(Tally::bytes).collect();
    row(md, "bytes from the cache", &values, &|v| mib(v));
    let mut cells = vec![opt_secs(one.all_warm())];
    for (_, r) in &runs[1..] {
        cells.extend([opt_secs(r.all_warm()), String::new()]);
    }
    let _ = writeln!(md, "| all warm after (s) | {} |\n", cells.join(" | "));
    for (name, run) in runs.iter().skip(1) {
        let sources: Vec<String> = traffic::by_source(&run.upstream).into_keys().collect();
        let _ = writeln!(
            md,
            "Who sent the upstream requests ({name}): {}.\n",
            sources.join(", ")
        );
    }

    let fetches: Vec<_> = runs
        .iter()
        .map(|(_, r)| traffic::blob_fetches(&r.upstream))
        .collect();
    let asked: Vec<_> = runs
        .iter()
        .map(|(_, r)| traffic::blob_fetches(r.cache.as_deref().unwrap_or_default()))
        .collect();
    let _ = writeln!(
        md,
        "Each blob: GETs upstream, the most of them in flight at once, and the nodes' GETs of it \
         to the cache with the most in flight at once:\n"
    );
    let head: Vec<String> = runs
        .iter()
        .skip(1)
        .map(|(name, _)| {
            format!(
                "GETs upstream, {name} | most at once upstream | nodes' GETs to the cache | most at once to the cache"
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "| blob | GETs upstream, one node | {} |",
        head.join(" | ")
    );
    let _ = writeln!(md, "|---|---|{}", "---|---|---|---|".repeat(runs.len() - 1));
    let mut digests: Vec<&String> = fetches
        .iter()
        .chain(&asked)
        .flat_map(|f| f.keys())
        .collect();
    digests.sort();
    digests.dedup();
    for d in digests {
        let get = |m: &BTreeMap<String, (u64, u64, usize)>| m.get(d).copied().unwrap_or_default();
        let rest: Vec<String> = (1..runs.len())
            .map(|i| {
                let (up, ask) = (get(&fetches[i]), get(&asked[i]));
                format!("{} | {} | {} | {}", up.0, up.2, ask.0, ask.2)
            })
            .collect();
        let short = d.get(..19).unwrap_or(d);
        let _ = writeln!(
            md,
            "| `{short}…` | {} | {} |",
            get(&fetches[0]).0,
            rest.join(" | ")
        );
    }
    let _ = writeln!(md);
    for (name, run) in runs.iter().skip(1) {
        let _ = writeln!(md, "### {}: {name}\n", run.label);
        let _ = writeln!(md, "Requests the nodes made to the cache:\n");
        tally_table(md, &Tally::of(run.cache.as_deref().unwrap_or_default()));
        if let Some(cache) = &run.cache {
            rate_over_time(md, "Requests to the cache", cache, run.origin, run.span());
            spread(md, &node_first_requests(run), run.splay);
        }
        rate_over_time(
            md,
            "Requests upstream (from the cache)",
            &run.upstream,
            run.origin,
            run.span(),
        );
        let _ = writeln!(md, "The nodes (requests to the cache):\n");
        node_table(
            md,
            &run.times,
            run.cache.as_deref().unwrap_or_default(),
            run.origin,
            run.named.then_some((run.wall_origin, run.splay)),
        );
    }
}

fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.2}", a as f64 / b as f64)
    }
}

fn moved_detail(md: &mut String, run: &MovedRun, splay: Duration) {
    let _ = writeln!(md, "## Run 3: a tag moved under the warm fleet\n");
    let tally = Tally::of(&run.upstream);
    let _ = writeln!(
        md,
        "The app's tag was pushed again upstream (its three base layers kept, a new top layer, \
         config and manifest: {} new; now `{}`), then the list was edited (a comment), so every \
         agent ran a pass at its slot. Upstream saw {} requests, {} in all ({:.2} x the new \
         bytes per node, x {} nodes = {:.2} per node).\n",
        mib(run.new_bytes),
        run.new_digest,
        tally.requests(),
        mib(tally.bytes()),
        tally.bytes() as f64 / run.new_bytes as f64,
        run.nodes,
        tally.bytes() as f64 / run.new_bytes as f64 / run.nodes as f64,
    );
    tally_table(md, &tally);
    let by_source = traffic::by_source(&run.upstream);
    let firsts = traffic::first_requests(&run.upstream, run.origin);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let _ = writeln!(
        md,
        "| node | HEAD manifest | GET manifest | GET blob | other | bytes | first request (s) | new digest seen (s) | /warmz 200 (s) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for t in &run.times {
        let mine = by_source
            .get(&t.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let tally = Tally::of(mine);
        let head = tally.count("HEAD", Some(Kind::Manifest));
        let get_m = tally.count("GET", Some(Kind::Manifest));
        let get_b = tally.count("GET", Some(Kind::Blob));
        let other = tally.requests() - head - get_m - get_b;
        let _ = writeln!(
            md,
            "| {} | {head} | {get_m} | {get_b} | {other} | {} | {} | {} | {} |",
            t.name,
            tally.bytes(),
            opt_secs(firsts.get(&t.name).copied()),
            opt_secs(t.goal),
            opt_secs(t.warm),
        );
        *per_node
            .entry(format!(
                "{head} HEAD, {get_m} GET manifest, {get_b} GET blob, {other} other"
            ))
            .or_default() += 1;
    }
    let _ = writeln!(md);
    let shapes: Vec<String> = per_node
        .iter()
        .map(|(shape, n)| format!("{n} nodes: {shape}"))
        .collect();
    let _ = writeln!(md, "Per node: {}.\n", shapes.join("; "));
    let offsets: Vec<Duration> = run
        .times
        .iter()
        .filter_map(|t| firsts.get(&t.name).copied())
        .collect();
    spread(md, &offsets, splay);
}

/// Run 4's budgets side by side: who got warm, who was held back, and what was spent of what
/// the agents keep.
fn budget_summary(md: &mut String, runs: &[BudgetRun]) {
    let _ = writeln!(md, "## Run 4: pull budgets side by side\n");
    let _ = writeln!(
        md,
        "A budget per node counts each node's manifest GETs apart (each node its own source \
         address); one budget for the fleet counts every node's together, as a registry that \
         counts per source address does for nodes behind one NAT. A cold node needs one manifest \
         GET per listed image. Each agent keeps {BUDGET_RESERVE_PERCENT}% of the announced limit \
         (`--registry-budget-reserve`) for the kubelet's own pulls: once a registry's last \
         `ratelimit-remaining` is down to that, the agent fetches no manifest from it and \
         reports the image `rate-limited` until a later pass. GETs are counted over the whole \
         run, the re-check pass included.\n"
    );
    let _ = writeln!(
        md,
        "| run | nodes warm | nodes with an image `rate-limited` | manifest GETs answered | of a budget of | refused (429) | kept by each agent | lowest `ratelimit-remaining` sent | into the reserve | re-check after a list edit |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for run in runs {
        let times = &run.cold.times;
        let warm = times.iter().filter(|t| t.warm.is_some()).count();
        let limited = times
            .iter()
            .filter(|t| t.failures.iter().any(|k| k == "rate-limited"))
            .count();
        let spent: u32 = run.spent.values().sum();
        let of = match run.scope {
            BudgetScope::PerNode => format!(
                "{} per node ({} in all)",
                run.budget,
                run.budget as usize * run.cold.nodes
            ),
            BudgetScope::Shared => format!("{} for the fleet", run.budget),
        };
        let refused: u64 = run.refused.values().sum();
        let (lowest, kept) = (run.lowest_remaining(), run.kept());
        let into = match kept.checked_sub(u64::from(lowest)) {
            Some(0) | None => "no".to_string(),
            Some(n) => format!("yes, by {n}"),
        };
        let recheck = run
            .recheck
            .as_ref()
            .map_or("-".into(), |(_, records, _)| Tally::of(records).summary());
        let _ = writeln!(
            md,
            "| {} | {warm} of {} | {limited} | {spent} | {of} | {refused} | {kept} | {lowest} | {into} | {recheck} |",
            run.cold.label,
            times.len(),
        );
    }
    let _ = writeln!(md);
}

fn budget_detail(md: &mut String, run: &BudgetRun) {
    let (heading, counted) = match run.scope {
        BudgetScope::PerNode => (
            format!("a pull budget of {} manifest GETs per node", run.budget),
            "each node's manifest GETs (`GET …/manifests/…`) against its own budget",
        ),
        BudgetScope::Shared => (
            format!(
                "one pull budget of {} manifest GETs for the fleet",
                run.budget
            ),
            "the manifest GETs (`GET …/manifests/…`) of all nodes together against one budget, \
             as for nodes behind one NAT",
        ),
    };
    let _ = writeln!(md, "## Run {}: {heading}\n", run.cold.label);
    let started = if run.cold.splay.is_zero() {
        "with no splay: every node's first requests at once".to_string()
    } else {
        format!("with `--splay {}s`", run.cold.splay.as_secs())
    };
    let _ = writeln!(
        md,
        "The agents were started together {started}. The upstream proxy counts {counted}, as \
         Docker Hub counts pulls (HEADs and blobs are free), adds `ratelimit-limit: {b};w=21600` \
         and `ratelimit-remaining` to every answer, and answers 429 `TOOMANYREQUESTS` with \
         `Retry-After: 30` beyond the budget. The window never resets within the run. \
         Converged: {}.\n",
        match run.cold.all_warm() {
            Some(at) => format!("yes, every node warm after {} s", secs(at)),
            None => format!(
                "no: {} of {} nodes warm when the watch ended",
                run.cold.times.iter().filter(|t| t.warm.is_some()).count(),
                run.cold.nodes
            ),
        },
        b = run.budget
    );
    if run.scope == BudgetScope::Shared {
        let mut answered: Vec<&Record> = run
            .cold
            .upstream
            .iter()
            .filter(|r| r.method == "GET" && Kind::of(&r.path) == Kind::Manifest && r.status != 429)
            .collect();
        answered.sort_by_key(|r| r.at);
        let kept = run.kept();
        let budget = u64::from(run.budget);
        let reserve_at = answered
            .get((budget.saturating_sub(kept) as usize).saturating_sub(1))
            .map(|r| secs(r.at.saturating_duration_since(run.cold.origin)));
        let _ = writeln!(
            md,
            "The fleet's manifest GETs, in the order they were answered: {} of {budget} \
             answered (the agents may spend {} and keep {kept}){}.\n",
            answered.len(),
            budget.saturating_sub(kept),
            match reserve_at {
                Some(at) if answered.len() as u64 >= budget.saturating_sub(kept) =>
                    format!("; the remainder reached the reserve at {at} s"),
                _ => String::new(),
            }
        );
    }
    let by_source = traffic::by_source(&run.cold.upstream);
    let recheck = run
        .recheck
        .as_ref()
        .map(|(_, records, _)| traffic::by_source(records));
    let _ = writeln!(
        md,
        "| node | GET manifest (answered) | GET manifest refused (429), at (s) | GET blob | HEAD | images when the watch ended | /warmz | re-check after a list edit |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for t in &run.cold.times {
        let mine = by_source
            .get(&t.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let tally = Tally::of(mine);
        let refused_at: Vec<String> = mine
            .iter()
            .filter(|r| r.status == 429)
            .map(|r| secs(r.at.saturating_duration_since(run.cold.origin)))
            .collect();
        let refused = run.refused.get(&t.name).copied().unwrap_or(0);
        let again = recheck.as_ref().map_or("-".into(), |r| {
            Tally::of(r.get(&t.name).map(Vec::as_slice).unwrap_or_default()).summary()
        });
        let _ = writeln!(
            md,
            "| {} | {} | {refused}{} | {} | {} | {} | {} | {} |",
            t.name,
            tally.count("GET", Some(Kind::Manifest)) - refused,
            if refused_at.is_empty() {
                String::new()
            } else {
                format!(": {}", refused_at.join(", "))
            },
            tally.count("GET", Some(Kind::Blob)),
            tally.count("HEAD", None),
            t.states,
            t.warmz.replace('|', "/"),
            again
        );
    }
    let _ = writeln!(md);
    if let Some((_, records, times)) = &run.recheck {
        let warm = times.iter().filter(|t| t.warm.is_some()).count();
        let _ = writeln!(
            md,
            "Re-check pass after a list edit: {} upstream ({}); {} of {} nodes warm after it.\n",
            Tally::of(records).requests(),
            Tally::of(records).summary(),
            warm,
            times.len()
        );
    }
}

fn memory(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## Memory of the fleet's processes\n");
    let _ = writeln!(
        md,
        "Summed over the nodes when the watch ended (VmRSS) and each process's peak (VmHWM), MiB.\n"
    );
    let _ = writeln!(
        md,
        "| run | nodes | containerd now | containerd peaks | largest containerd peak | agents now | agent peaks | largest agent peak |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let mut rows: Vec<(&str, usize, Memory)> = fleet_runs(r)
        .into_iter()
        .map(|run| (run.label.as_str(), run.nodes, run.memory))
        .collect();
    for b in &r.budget {
        rows.push((b.cold.label.as_str(), b.cold.nodes, b.cold.memory));
    }
    let m = |kib: u64| format!("{:.0}", kib as f64 / 1024.0);
    for (label, nodes, mem) in rows {
        let _ = writeln!(
            md,
            "| {label} | {nodes} | {} | {} | {} | {} | {} | {} |",
            m(mem.containerd_rss),
            m(mem.containerd_peak),
            m(mem.containerd_peak_max),
            m(mem.agent_rss),
            m(mem.agent_peak),
            m(mem.agent_peak_max)
        );
    }
    let _ = writeln!(md);
}
