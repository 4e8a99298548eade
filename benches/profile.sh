#!/usr/bin/env bash
# Profiles prepull, ctr, containerd and the registry while they pull W1 (8 x 32 MiB) in fetch mode,
# and turns the profiles into flamegraphs and top-symbol lists.
#
#   benches/profile.sh [OUT_DIR]            (default target/profile; run as root)
#
# Env: WORKLOADS (default w1), MODES (default fetch), RUNS (default 1), QUIET_WAIT (default 120 s:
# how long each run waits for the machine to go idle).
#
# The runs are `cargo bench --bench ctr_compare -- --profile OUT_DIR …`: the usual fresh containerd
# per run, with `perf record` around the client (DWARF call graphs for prepull, frame pointers for
# Go) and attached to containerd and the registry (`perf record -p`). The event is `cycles` where
# the machine has hardware counters, `cpu-clock` otherwise. Results, per run and process:
#   NAME.data           perf's recording
#   NAME.svg            flamegraph (inferno)
#   NAME.top.txt        self time by symbol, `perf report --no-children --sort dso,sym`
#   ctr_compare.md      the bench's report for these (profiled, hence slower) runs: CPU seconds
#                       of client, containerd and registry
#   summary.md          samples per process and the top symbols of each, for docs/performance.md
set -euo pipefail

cd "$(dirname "$0")/.."
out=${1:-target/profile}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ "$(id -u)" -ne 0 ]; then
    echo "profile: run as root (containerd, perf -p)" >&2
    exit 1
fi
scripts/setup.sh >/dev/null
if ! command -v inferno-flamegraph >/dev/null || ! command -v inferno-collapse-perf >/dev/null; then
    echo "profile: installing inferno (flamegraphs) with cargo"
    cargo install inferno --locked
fi
# Symbols of the processes perf attaches to; a kernel that hides them gives [unknown] frames.
if [ -w /proc/sys/kernel/kptr_restrict ]; then echo 0 >/proc/sys/kernel/kptr_restrict; fi
if [ -w /proc/sys/kernel/perf_event_paranoid ]; then echo -1 >/proc/sys/kernel/perf_event_paranoid; fi

rm -f "$out"/*.data "$out"/*.data.old "$out"/*.svg "$out"/*.top.txt "$out"/*.folded
cargo bench --bench ctr_compare -- \
    --workloads "${WORKLOADS:-w1}" --modes "${MODES:-fetch}" --runs "${RUNS:-1}" \
    --quiet-wait "${QUIET_WAIT:-120}" --profile "$out" >/dev/null

summary="$out/summary.md"
datas=("$out"/*.data)
first=${datas[0]}
event=$(perf evlist -i "$first" 2>/dev/null | sed -n 1p)
{
    echo "# Profiles ($(date -u '+%Y-%m-%d %H:%M UTC'), git $(git rev-parse --short HEAD))"
    echo
    echo "perf event \`$event\` at 999 Hz. With \`cpu-clock\` a sample's weight is the CPU time it stands"
    echo "for, so a profile's total is the process's CPU seconds during the run (perf's own start-up aside)."
    echo
} >"$summary"

for data in "$out"/*.data; do
    name=$(basename "$data" .data)
    # Each .data holds one process tree: the client and its threads, or one daemon. The folded
    # stacks carry each sample's period: nanoseconds for cpu-clock, cycles for cycles.
    perf script -i "$data" 2>/dev/null | inferno-collapse-perf >"$out/$name.folded"
    if [ "$event" = cpu-clock ]; then
        total=$(awk '{n += $NF} END {printf "%.2f CPU-s", n / 1e9}' "$out/$name.folded")
    else
        total=$(awk '{n += $NF} END {printf "%.0f %s", n, "'"$event"'"}' "$out/$name.folded")
    fi
    inferno-flamegraph --title "$name: $total" <"$out/$name.folded" >"$out/$name.svg"
    perf report -i "$data" --no-children -g none --sort dso,sym --stdio --percent-limit 1 2>/dev/null |
        grep -v '^#' | grep -v '^$' | sed -n '1,25p' >"$out/$name.top.txt"
    {
        echo "## $name: $total"
        echo
        echo '```'
        sed -n '1,12p' "$out/$name.top.txt"
        echo '```'
        echo
    } >>"$summary"
    rm -f "$out/$name.folded"
done

echo "profile: flamegraphs, top symbols and summary.md in $out"
ls -la "$out"/*.svg
