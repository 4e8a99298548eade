#!/usr/bin/env bash
# Sets up this machine (containerd, docker-registry, protoc from Debian) and runs the whole test
# suite: unit tests, and integration tests against real containerd and registry processes that
# the tests start themselves. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --locked "$@"
