#!/usr/bin/env bash
# Installs the newer containerd releases the test bench runs against besides the system's own
# (Debian bookworm's 1.6): whatever containerd Debian trixie (1.7) and forky (2.x) serve today.
# Nothing is installed system-wide: each .deb is fetched with a private apt source list (same
# mirror as the machine's own), unpacked with `dpkg -x` into
#
#   ${PREPULL_CONTAINERD_CACHE:-/var/cache/prepull-test}/containerd-<major.minor>/usr/bin/{containerd,ctr,containerd-shim-runc-v2}
#
# and recorded in `installed` there (one line per suite: series, full version, suite), which
# scripts/test.sh reads to know which series to test. The tests pick a series with
# PREPULL_TEST_CONTAINERD=<major.minor> (see tests/support/containerd.rs).
#
# Idempotent: once a suite's containerd is unpacked and runs, nothing is fetched again (the
# archive may have moved on since; the cached build keeps working). `--refresh` fetches anew.
# Run as root (or with a writable cache dir). Needs apt, dpkg and Debian's archive keyring.
set -euo pipefail

cache=${PREPULL_CONTAINERD_CACHE:-/var/cache/prepull-test}
suites=(trixie forky)
refresh=false
if [ "${1:-}" = "--refresh" ]; then
    refresh=true
fi

mkdir -p "$cache"

# Whether $1 is an unpacked containerd that runs; prints its version (e.g. 1.7.24~ds1).
runs() {
    local bin=$1/usr/bin/containerd
    [ -x "$bin" ] && [ -x "$1/usr/bin/ctr" ] && [ -x "$1/usr/bin/containerd-shim-runc-v2" ] &&
        "$bin" --version 2>/dev/null | awk '{print $3}'
}

# The series recorded for a suite by an earlier run, if its unpacked tree still runs.
cached_series() {
    local suite=$1 series
    [ -s "$cache/$suite.series" ] || return 1
    series=$(cat "$cache/$suite.series")
    runs "$cache/containerd-$series" >/dev/null || return 1
    echo "$series"
}

fetch() { # fetch SUITE: downloads and unpacks that suite's containerd; prints its series
    local suite=$1
    local work=$cache/apt-$suite
    local uri
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" {print ($2 ~ /^\[/) ? $3 : $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    uri=${uri:-http://deb.debian.org/debian}
    rm -rf "$work"
    mkdir -p "$work/lists/partial" "$work/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" >"$work/sources.list"
    # A private list and state: the machine's own apt sources and package lists stay untouched.
    # Sandbox::User=root: the _apt user cannot write into this cache dir.
    local opts=(
        -o "Dir::Etc::SourceList=$work/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$work/lists"
        -o "Dir::Cache::Archives=$work/archives"
        -o "APT::Sandbox::User=root"
        -o "Debug::NoLocking=1"
    )
    apt-get "${opts[@]}" -qq update >&2
    (cd "$work" && apt-get "${opts[@]}" -qq download containerd >&2)
    local deb
    deb=$(ls "$work"/containerd_*.deb)
    local version series
    version=$(dpkg-deb -f "$deb" Version)
    series=$(echo "$version" | sed -E 's/^([0-9]+\.[0-9]+)\..*/\1/')
    local dest=$cache/containerd-$series
    rm -rf "$dest.new"
    dpkg -x "$deb" "$dest.new"
    runs "$dest.new" >/dev/null || {
        echo "containerd-versions: containerd $version from $suite does not run here" >&2
        exit 1
    }
    rm -rf "$dest"
    mv "$dest.new" "$dest"
    echo "$version" >"$dest/VERSION"
    echo "$series" >"$cache/$suite.series"
    rm -rf "$work"
    echo "$series"
}

installed=()
for suite in "${suites[@]}"; do
    if ! $refresh && series=$(cached_series "$suite"); then
        :
    else
        echo "containerd-versions: fetching containerd from Debian $suite" >&2
        series=$(fetch "$suite")
    fi
    version=$(cat "$cache/containerd-$series/VERSION")
    installed+=("$series $version $suite")
    echo "containerd-versions: containerd $series = $version (Debian $suite) in $cache/containerd-$series"
done
printf '%s\n' "${installed[@]}" >"$cache/installed"
