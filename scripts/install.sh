#!/usr/bin/env bash
# Builds twill in release mode and installs it:
#   CNI plugins bridge loopback portmap bandwidth firewall flannel host-local ptp tuning static sbr macvlan host-device tap dhcp
#                                                                     -> /opt/cni/bin   (--prefix DIR)
#   twilld                                                            -> /usr/local/bin (--bindir DIR)
# DESTDIR, when set, is prepended to both (for packaging). Idempotent: unchanged binaries are left
# alone. Each binary is copied to a temporary file in the target directory and renamed over the old
# one, so a kubelet or runtime exec'ing a plugin at that moment gets the old or the new file, never a
# half-written one ("text file busy" cannot happen either: the running file is replaced, not written).
#
# usage: scripts/install.sh [--prefix DIR] [--bindir DIR] [--no-build]
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$TWILL_ROOT"

PLUGINS=(bridge loopback portmap bandwidth firewall flannel host-local ptp tuning static sbr macvlan host-device tap dhcp)
DAEMONS=(twilld)
prefix=/opt/cni/bin
bindir=/usr/local/bin
build=1

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix="$2"; shift 2 ;;
    --prefix=*) prefix="${1#*=}"; shift ;;
    --bindir) [ $# -ge 2 ] || die "--bindir needs a directory"; bindir="$2"; shift 2 ;;
    --bindir=*) bindir="${1#*=}"; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

release="$TWILL_TARGET_DIR/release"
if [ "$build" -eq 1 ]; then
  ensure_cargo
  args=()
  for b in "${PLUGINS[@]}" "${DAEMONS[@]}"; do args+=(--bin "$b"); done
  log "building release binaries: ${PLUGINS[*]} ${DAEMONS[*]}"
  cargo build --release --workspace "${args[@]}"
fi

# install_atomic SRC DIR: copy SRC into DIR under a temporary name, then rename over DIR/<name>.
install_atomic() {
  local src="$1" dir="$2" name tmp
  name="$(basename "$src")"
  [ -f "$src" ] || die "$src is missing (build failed or --no-build without a build)"
  mkdir -p "$dir"
  if [ -f "$dir/$name" ] && cmp -s "$src" "$dir/$name"; then
    log "unchanged: $dir/$name"
    return 0
  fi
  # Same directory as the target, so the rename below is atomic (one filesystem).
  tmp="$(mktemp "$dir/.$name.XXXXXX")"
  if ! { cp "$src" "$tmp" && chmod 0755 "$tmp" && { sync -f "$tmp" 2>/dev/null || true; } \
      && mv -f "$tmp" "$dir/$name"; }; then
    rm -f "$tmp"
    die "installing $dir/$name failed"
  fi
  log "installed: $dir/$name"
}

for p in "${PLUGINS[@]}"; do install_atomic "$release/$p" "${DESTDIR:-}$prefix"; done
for d in "${DAEMONS[@]}"; do install_atomic "$release/$d" "${DESTDIR:-}$bindir"; done
