#!/usr/bin/env bash
# Sets up this machine (containerd, docker-registry, protoc from Debian), builds prepull, and runs
# the guided demo against a throwaway containerd and registry. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bin prepull --example demo
exec target/release/examples/demo "$PWD/target/release/prepull"
