#!/usr/bin/env bash
# Sets up this machine (containerd, docker-registry, protoc from Debian; containerd 1.7 and 2.x
# unpacked beside the system's) and runs the whole test suite: unit tests, and integration tests
# against real containerd and registry processes that the tests start themselves. Run as root.
#
# The full suite runs against the system's containerd (Debian bookworm's 1.6) with the `native`
# snapshotter; then the containerd-facing suites (pull, store, resume, offline_pod, agent, verify,
# verify_deep, repair_deep) run again against each newer series scripts/containerd-versions.sh installed
# (PREPULL_TEST_CONTAINERD=<series>): 1.x with `native`, 2.x with `overlayfs`, what real nodes run
# (PREPULL_TEST_SNAPSHOTTER), plus verify, verify_deep and repair_deep with `native` on 2.x, and
# the fault campaigns (tests/campaign.rs, printing their figures) on 2.x with `overlayfs`.
# Arguments go to the first, full run only. PREPULL_TEST_VERSIONS="1.7" picks the extra series
# ("" skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/containerd-versions.sh

cache=${PREPULL_CONTAINERD_CACHE:-/var/cache/prepull-test}
# The tests' containerd instances live in /tmp on this machine's disk, however full it is: keep
# 64 MiB free there rather than 15% (tests/space.rs checks the default on its own tmpfs).
export PREPULL_MIN_FREE_SPACE=${PREPULL_MIN_FREE_SPACE:-64MiB}
started=$SECONDS

# Style and lints first: they fail in seconds where the suite takes minutes.
echo "=== cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings

# Every parser of untrusted input fuzzed for a bounded time (fuzz/, the nightly toolchain): a
# crash, a panic or a slow input fails the run and names its reproducer. 9 targets at
# PREPULL_FUZZ_SECONDS each (30: 4.5 min); the instrumented build and the corpora the runs grow
# are kept in the cache, so only a cold cache pays the full build.
echo "=== fuzz targets (scripts/fuzz.sh)"
PREPULL_FUZZ_TARGET_DIR=${PREPULL_FUZZ_TARGET_DIR:-$cache/fuzz} scripts/fuzz.sh "${PREPULL_FUZZ_SECONDS:-30}"

# The agent's container image, which tests/deploy.rs starts through CRI.
echo "=== the agent's image (scripts/build-image.sh)"
scripts/build-image.sh
echo "=== deploy/ rendered with kustomize, every component combination, validated offline"
scripts/validate-deploy.sh

echo "=== containerd 1.6 (system: $(containerd --version | awk '{print $3}')), snapshotter native: full suite"
PREPULL_TEST_SNAPSHOTTER=native cargo test --locked "$@"

if [ -z "${PREPULL_TEST_VERSIONS+set}" ]; then
    PREPULL_TEST_VERSIONS=$(awk '{print $1}' "$cache/installed" | tr '\n' ' ')
fi
failed=()
suites=(--test pull --test store --test resume --test offline_pod --test agent --test verify --test transfer
    --test verify_deep --test repair_deep)
for series in $PREPULL_TEST_VERSIONS; do
    what=$(awk -v s="$series" '$1 == s {print $2 ", Debian " $3}' "$cache/installed")
    # Real nodes run containerd 2.x with overlayfs; 1.6 (above) and 1.7 keep native covered.
    case $series in
        1.*) snapshotter=native ;;
        *) snapshotter=overlayfs ;;
    esac
    echo "=== containerd $series (${what:-not installed}), snapshotter $snapshotter: ${suites[*]}"
    # --no-fail-fast: report every suite of this series, then go on to the next series.
    if ! PREPULL_TEST_CONTAINERD=$series PREPULL_TEST_SNAPSHOTTER=$snapshotter \
        cargo test --locked --no-fail-fast "${suites[@]}"; then
        failed+=("$series/$snapshotter")
    fi
    if [ "$snapshotter" != native ]; then
        # Faults in loops, on what real nodes run; their figures (faults, runs, bytes fetched
        # again, time) and seeds are printed (PREPULL_CAMPAIGN_SEED=<seed> replays a plan).
        echo "=== containerd $series, snapshotter $snapshotter: fault campaigns (tests/campaign.rs)"
        if ! PREPULL_TEST_CONTAINERD=$series PREPULL_TEST_SNAPSHOTTER=$snapshotter \
            cargo test --locked --test campaign -- --nocapture; then
            failed+=("$series/$snapshotter campaigns")
        fi
        # verify and repair read snapshots back: check them on native too.
        echo "=== containerd $series, snapshotter native: verify, verify_deep, repair_deep"
        if ! PREPULL_TEST_CONTAINERD=$series PREPULL_TEST_SNAPSHOTTER=native \
            cargo test --locked --no-fail-fast --test verify --test verify_deep --test repair_deep; then
            failed+=("$series/native")
        fi
    fi
done

echo "=== tests took $((SECONDS - started)) s"
if [ ${#failed[@]} -ne 0 ]; then
    echo "=== FAILED against containerd ${failed[*]}" >&2
    exit 1
fi
