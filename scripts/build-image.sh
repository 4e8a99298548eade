#!/usr/bin/env bash
# Builds prepull's container image on this machine, without a network: FROM scratch, holding the
# stripped binary (cargo profile `dist`), the shared libraries it loads (glibc's, as ldd lists
# them), the CA bundle registries' TLS is checked against, and nothing else: no shell, no package
# manager. Run as root (buildah with the vfs storage driver needs no daemon and no FUSE).
#
#   scripts/build-image.sh [DESTINATION]
#
# DESTINATION is any buildah push destination (e.g. docker://registry.example.com/prepull:0.1.0);
# the default is an OCI archive, target/image/prepull-<version>.oci.tar, which the tests read.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
archive=target/image/prepull-$version.oci.tar
destination=${1:-oci-archive:$archive:prepull:$version}
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot

cargo build --locked --profile dist --bin prepull
binary=target/dist/prepull

container=$(buildah from scratch)
trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
root=$(buildah mount "$container")
install -D -m 0755 "$binary" "$root/usr/local/bin/prepull"
# The dynamic loader and each library ldd resolves, at the paths the binary asks for them.
for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
# Where the DaemonSet mounts its volumes (a read-only root filesystem cannot create them).
mkdir -p "$root/run/containerd" "$root/run/prepull" "$root/var/lib/containerd" \
    "$root/etc/containerd/certs.d" "$root/etc/prepull/list" "$root/etc/prepull/pull-secret" \
    "$root/var/lib/prepull-node-credentials"
buildah umount "$container" >/dev/null

buildah config \
    --entrypoint '["/usr/local/bin/prepull"]' --cmd '["--help"]' \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --os linux --arch "$(dpkg --print-architecture)" \
    --label org.opencontainers.image.title=prepull \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.description="Keeps a node's images warm in containerd" \
    "$container"
image=$(buildah commit --quiet --format oci --rm "$container" "localhost/prepull:$version")
trap - EXIT
mkdir -p target/image
rm -f "$archive"
buildah push --quiet "$image" "$destination"
buildah rmi "$image" >/dev/null
echo "build-image: prepull $version: binary $(du -h "$binary" | cut -f1), image $(du -h "$archive" 2>/dev/null | cut -f1 || echo '?') -> $destination"
