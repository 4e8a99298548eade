#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo fuzz, libFuzzer, the nightly toolchain) for a bounded
# time each, starting from the committed seeds (fuzz/corpus/<target>) plus what earlier runs on
# this machine found (<target dir>/run/corpus/<target>, where new inputs go).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 30 s, every target)
#
# PREPULL_FUZZ_TARGET_DIR (default fuzz/target) holds the build and the grown corpora: a cold
# build of the instrumented targets takes 10-20 minutes on two cores, a warm one about one.
#
# A crash, a panic, an input slower than PREPULL_FUZZ_TIMEOUT seconds (default 10) or one using
# more than PREPULL_FUZZ_RSS_MB (default 2048) counts as a finding: the run goes on with the
# other targets, then exits 1, printing each reproducer and the command that replays it.
# Installs cargo-fuzz (and the nightly toolchain) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

per_target=${1:-30}
shift || true
toolchain=${PREPULL_FUZZ_TOOLCHAIN:-nightly}
timeout=${PREPULL_FUZZ_TIMEOUT:-10}
rss_mb=${PREPULL_FUZZ_RSS_MB:-2048}
target_dir=$(realpath -m "${PREPULL_FUZZ_TARGET_DIR:-fuzz/target}")

# The longest input each target is given: each format's realistic size, so that mutations are
# spent on structure (a list, a manifest and a layer get room to nest and to hold many entries).
declare -A max_len=(
    [reference]=1024
    [www_authenticate]=4096
    [token_response]=8192
    [credential_provider]=16384
    [docker_config]=16384
    [hosts_toml]=16384
    [manifest]=65536
    [prepull_list]=65536
    [layer_tar]=65536
)

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "=== installing the $toolchain toolchain"
    rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "=== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +"$toolchain" fuzz list)
fi
for target in "${targets[@]}"; do
    if [ -z "${max_len[$target]:-}" ]; then
        echo "scripts/fuzz.sh: no -max_len for target $target: add it to the table" >&2
        exit 2
    fi
done

echo "=== building the fuzz targets (release, debug assertions, AddressSanitizer)"
cargo +"$toolchain" fuzz build --target-dir "$target_dir"

work=$target_dir/run
mkdir -p "$work"
# The targets that read files write them here; it goes when the run ends.
scratch=$(mktemp -d "$work/tmp.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

failed=()
summary=()
for target in "${targets[@]}"; do
    corpus=$work/corpus/$target
    artifacts=$root/fuzz/artifacts/$target
    log=$work/$target.log
    mkdir -p "$corpus" "$artifacts"
    stamp=$(mktemp "$work/stamp.XXXXXX")
    echo "=== fuzzing $target for ${per_target} s (log: $log)"
    status=0
    TMPDIR=$scratch cargo +"$toolchain" fuzz run --target-dir "$target_dir" "$target" \
        "$corpus" "corpus/$target" -- \
        -max_total_time="$per_target" -max_len="${max_len[$target]}" -timeout="$timeout" \
        -rss_limit_mb="$rss_mb" -malloc_limit_mb="$rss_mb" -artifact_prefix="$artifacts/" \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
    found=$(find "$artifacts" -type f -newer "$stamp" | sort)
    rm -f "$stamp"
    if [ "$status" -ne 0 ] || [ -n "$found" ]; then
        failed+=("$target")
        summary+=("$(printf '%-20s %12s runs  FAILED' "$target" "${runs:-?}")")
        grep -E "^(==[0-9]+==|thread '|SUMMARY|ALARM|.*panicked at)" "$log" | head -20 >&2 || true
        tail -5 "$log" >&2
        for input in $found; do
            echo "reproducer: $input" >&2
            echo "  replay with: (cd fuzz && cargo +$toolchain fuzz run --target-dir $target_dir $target $input)" >&2
        done
        if [ -z "$found" ]; then
            echo "$target exited with $status without writing a reproducer; see $log" >&2
        fi
    else
        summary+=("$(printf '%-20s %12s runs  ok' "$target" "${runs:-?}")")
    fi
done

echo "=== fuzzing: ${#targets[@]} targets, ${per_target} s each"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "=== fuzzing FAILED: ${failed[*]}" >&2
    exit 1
fi
