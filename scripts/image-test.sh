#!/usr/bin/env bash
# Tests the Kubernetes image as a user gets it (scripts/test.sh runs it as its image step):
#   1. scripts/image.sh builds it from a clean clone of HEAD into a docker archive.
#   2. The archive holds one layer with exactly the files the manifest uses, every binary static (no
#      interpreter: the image has no libc), owned by root.
#   3. podman (a storage of its own) loads it under the name conf/kubernetes/kube-twill.yml uses, with
#      /opt/bin/twilld as entrypoint; the install-cni-plugins init container's command, run from the image
#      with a fresh directory as the node's /opt/cni/bin, installs the five plugins, each answering VERSION;
#      the install-cni one installs the conflist; twilld --version runs from the image.
#   4. containerd (a temporary one) imports it as `kind load image-archive` does (`ctr -n k8s.io images
#      import`), finds it under the manifest's name, and runs the plugin installer from it.
#
# usage: scripts/image-test.sh [--archive FILE]   (FILE: an archive already built; default: build it)
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$TWILL_ROOT"

need_root "scripts/image-test.sh"
archive=""
while [ $# -gt 0 ]; do
  case "$1" in
    --archive) [ $# -ge 2 ] || die "--archive needs a file"; archive="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

work="$(mktemp -d /tmp/twill-image-test.XXXXXX)"
storage="$work/podman"
mkdir -p "$storage/tmp"
pod() {
  podman --root "$storage/root" --runroot "$storage/run" --tmpdir "$storage/tmp" --storage-driver vfs \
    --cgroup-manager cgroupfs --events-backend file "$@"
}
containerd_pid=""
cleanup() {
  if [ -n "$containerd_pid" ]; then
    kill "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" 2>/dev/null || true
  fi
  pod rm -af >/dev/null 2>&1 || true
  pod rmi -af >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

manifest="conf/kubernetes/kube-twill.yml"
image="$(sed -n 's/^ *image: *//p' "$manifest" | sort -u)"
[ "$(printf '%s\n' "$image" | wc -l)" -eq 1 ] || fail "$manifest names several images: $image"
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[ "$image" = "localhost/twill:$version" ] || fail "$manifest uses $image, the workspace is version $version"

if [ -z "$archive" ]; then
  archive="$work/twill-image.tar"
  scripts/image.sh --out "$archive" >/dev/null
fi
log "image archive: $archive ($(du -h "$archive" | cut -f1))"

# 2. The layer's files.
mkdir "$work/archive" "$work/layer"
tar -xf "$archive" -C "$work/archive"
[ -f "$work/archive/manifest.json" ] || fail "no manifest.json: not a docker archive"
mapfile -t layers < <(cd "$work/archive" && find . -name '*.tar' -type f | sort)
[ "${#layers[@]}" -eq 1 ] || fail "expected one layer, found: ${layers[*]}"
tar -xf "$work/archive/${layers[0]}" -C "$work/layer"
want="./opt/bin/twill-install
./opt/bin/twilld
./opt/twill/cni/bridge
./opt/twill/cni/flannel
./opt/twill/cni/host-local
./opt/twill/cni/loopback
./opt/twill/cni/portmap"
got="$(cd "$work/layer" && find . -type f | LC_ALL=C sort)"
[ "$got" = "$want" ] || fail "the layer's files are not the expected ones:$(printf '\n%s' "$got")"
for f in $got; do
  if readelf -l "$work/layer/$f" | grep -- 'Requesting program interpreter' >/dev/null; then
    fail "$f is dynamically linked"
  fi
done
owners="$(tar -tvf "$work/archive/${layers[0]}" | awk '{print $2}' | sort -u)"
[ "$owners" = "0/0" ] || fail "layer entries not all owned by root: $owners"
log "layer: $(printf '%s\n' "$got" | grep -c .) static binaries, owned by root"

# 3. What a runtime does with it.
loaded="$(pod load -i "$archive" 2>&1)" || fail "podman load: $loaded"
case "$loaded" in *"$image"*) ;; *) fail "podman load did not name $image: $loaded" ;; esac
entrypoint="$(pod image inspect --format '{{json .Config.Entrypoint}}' "$image")"
[ "$entrypoint" = '["/opt/bin/twilld"]' ] || fail "entrypoint is $entrypoint"

# Small explicit limits: podman's defaults may exceed this machine's, which only a process with
# CAP_SYS_RESOURCE may set; lowering them is always allowed.
run() { pod run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$@"; }
mkdir -p "$work/node/opt/cni/bin" "$work/node/etc/cni/net.d" "$work/cfg"
# The init containers' commands and args, as the manifest has them.
run -v "$work/node/opt/cni/bin:/host/opt/cni/bin" --entrypoint /opt/bin/twill-install "$image" \
  /opt/twill/cni/flannel /opt/twill/cni/bridge /opt/twill/cni/host-local /opt/twill/cni/portmap \
  /opt/twill/cni/loopback /host/opt/cni/bin/ >/dev/null || fail "installing the plugins from the image"
for p in flannel bridge host-local portmap loopback; do
  out="$(CNI_COMMAND=VERSION "$work/node/opt/cni/bin/$p" </dev/null)" || fail "$p VERSION: $out"
  case "$out" in *supportedVersions*) ;; *) fail "$p VERSION answered: $out" ;; esac
done
leftover="$(find "$work/node/opt/cni/bin" -name '.*')"
[ -z "$leftover" ] || fail "temporary files left in /opt/cni/bin: $leftover"
printf '{"name":"cbr0"}\n' >"$work/cfg/cni-conf.json"
run -v "$work/node/etc/cni/net.d:/etc/cni/net.d" -v "$work/cfg:/etc/kube-flannel:ro" \
  --entrypoint /opt/bin/twill-install "$image" \
  /etc/kube-flannel/cni-conf.json /etc/cni/net.d/10-flannel.conflist >/dev/null || fail "installing the conflist"
cmp -s "$work/cfg/cni-conf.json" "$work/node/etc/cni/net.d/10-flannel.conflist" || fail "conflist differs"
ver="$(run "$image" --version)" || fail "twilld --version from the image: $ver"
case "$ver" in "twilld v$version"*) ;; *) fail "twilld --version said: $ver" ;; esac

# 4. containerd, as on a kind or kubeadm node.
cd_dir="$work/containerd"
mkdir -p "$cd_dir"
sock="$cd_dir/containerd.sock"
cat >"$cd_dir/config.toml" <<TOML
version = 2
root = "$cd_dir/root"
state = "$cd_dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
TOML
containerd --config "$cd_dir/config.toml" >"$cd_dir/containerd.log" 2>&1 &
containerd_pid=$!
ctr_() { ctr --address "$sock" -n k8s.io "$@"; }
for _ in $(seq 1 100); do
  ctr_ version >/dev/null 2>&1 && break
  kill -0 "$containerd_pid" 2>/dev/null || fail "containerd exited: $(cat "$cd_dir/containerd.log")"
  sleep 0.1
done
ctr_ images import --all-platforms "$archive" >/dev/null || fail "ctr images import"
names="$(ctr_ images ls -q)"
ref=""
while IFS= read -r name; do
  case "$name" in "$image" | "docker.io/$image") ref="$name" ;; esac
done <<<"$names"
[ -n "$ref" ] || fail "containerd does not list $image: $names"
rm -rf "$work/node/opt/cni/bin"
mkdir -p "$work/node/opt/cni/bin"
ctr_ run --rm --mount "type=bind,src=$work/node/opt/cni/bin,dst=/host/opt/cni/bin,options=rbind:rw" \
  "$ref" twill-install-test /opt/bin/twill-install /opt/twill/cni/flannel /opt/twill/cni/bridge \
  /opt/twill/cni/host-local /opt/twill/cni/portmap /opt/twill/cni/loopback /host/opt/cni/bin/ >/dev/null ||
  fail "running the installer under containerd"
for p in flannel bridge host-local portmap loopback; do
  [ -x "$work/node/opt/cni/bin/$p" ] || fail "containerd run did not install $p"
done
log "image OK: $image (containerd: $ref), entrypoint $entrypoint, $ver"
