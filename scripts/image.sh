#!/usr/bin/env bash
# Builds the container image of twill for Kubernetes (conf/kubernetes/kube-twill.yml) on this machine, with
# no registry: the static binaries of the committed HEAD (lib/static.sh, the build scripts/release.sh makes)
# in a FROM-scratch image, no shell and no libc files:
#   /opt/bin/twilld           the daemon (the entrypoint)
#   /opt/bin/twill-install    the init containers' installer (atomic copy onto the node)
#   /opt/twill/cni/           flannel bridge host-local portmap loopback, installed into /opt/cni/bin
# named localhost/twill:<version> (the manifest's image) and saved as a docker archive, which
# `kind load image-archive`, `ctr -n k8s.io images import`, `podman load` and `docker load` all take.
# podman builds it in a storage of its own under the work directory, removed afterwards: the machine's
# images are neither used nor changed.
#
# usage: scripts/image.sh [--out FILE]   (default dist/twill-image-v<version>.tar)
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/static.sh
. "$TWILL_ROOT/scripts/lib/static.sh"
cd "$TWILL_ROOT"

PLUGINS=(flannel bridge host-local portmap loopback)
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a file"; out="$2"; shift 2 ;;
    --out=*) out="${1#*=}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
command -v podman >/dev/null 2>&1 || die "podman is missing (Debian package podman)"

static_build "${PLUGINS[@]}" twilld twill-install
image="localhost/twill:$version"
[ -n "$out" ] || out="$TWILL_ROOT/dist/twill-image-v$version.tar"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
mkdir -p "$(dirname "$out")"

ctx="$work/image"
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/opt/bin" "$ctx/rootfs/opt/twill/cni"
install -m 0755 "$rel/twilld" "$rel/twill-install" "$ctx/rootfs/opt/bin/"
for p in "${PLUGINS[@]}"; do install -m 0755 "$rel/$p" "$ctx/rootfs/opt/twill/cni/$p"; done
find "$ctx/rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
cat >"$ctx/Containerfile" <<CONTAINERFILE
FROM scratch
COPY rootfs/ /
LABEL org.opencontainers.image.title="twill" \\
      org.opencontainers.image.description="twill CNI plugins and twilld, the flannel-compatible overlay daemon" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.revision="$commit"
ENTRYPOINT ["/opt/bin/twilld"]
CONTAINERFILE

storage="$work/podman"
rm -rf "$storage"
mkdir -p "$storage/tmp"
pod() {
  podman --root "$storage/root" --runroot "$storage/run" --tmpdir "$storage/tmp" --storage-driver vfs \
    --cgroup-manager cgroupfs --events-backend file "$@"
}
cleanup() { pod rmi -af >/dev/null 2>&1 || true; rm -rf "$storage"; }
trap cleanup EXIT
log "building $image"
pod build --quiet --timestamp "$SOURCE_DATE_EPOCH" --network none -t "$image" -f "$ctx/Containerfile" "$ctx" >/dev/null
rm -f "$out"
pod save --quiet --format docker-archive -o "$out" "$image"
log "image $image ($commit) saved to $out ($(du -h "$out" | cut -f1))"
printf '%s\n' "$out"
