# shellcheck shell=bash
# Debian root filesystems for testing the release artifacts on other Debian versions than the host's.
# Source after common.sh. Needs root.

TWILL_ROOTFS_CACHE="${TWILL_ROOTFS_CACHE:-/var/cache/twill}"
TWILL_DEBIAN_MIRROR="${TWILL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# ensure_rootfs SUITE [PACKAGE,...]: prints the path of a minbase root filesystem of SUITE with the given
# extra packages, made by debootstrap the first time and cached (a stamp records what it was made with, so
# a changed package list makes a new one). Built in a temporary directory and renamed: an interrupted
# debootstrap never leaves a half-made cache.
ensure_rootfs() {
  local suite="$1" include="${2:-}" dir stamp tmp
  dir="$TWILL_ROOTFS_CACHE/rootfs-$suite"
  stamp="debootstrap --variant=minbase --include=$include $suite"
  if [ -f "$dir/.twill-rootfs" ] && [ "$(cat "$dir/.twill-rootfs")" = "$stamp" ]; then
    printf '%s\n' "$dir"
    return 0
  fi
  mkdir -p "$TWILL_ROOTFS_CACHE"
  tmp="$TWILL_ROOTFS_CACHE/.rootfs-$suite.$$"
  rm -rf "$tmp"
  log "debootstrap $suite${include:+ with $include} into $dir (cached for later runs)"
  debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$tmp" "$TWILL_DEBIAN_MIRROR" \
    >"$tmp.log" 2>&1 || { tail -n 20 "$tmp.log" >&2; rm -rf "$tmp" "$tmp.log"; return 1; }
  rm -f "$tmp.log"
  printf '%s\n' "$stamp" >"$tmp/.twill-rootfs"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  printf '%s\n' "$dir"
}

# overlay_rootfs LOWER DIR: mounts a writable overlay of LOWER on DIR/root (changes go to DIR/upper, the
# cache stays untouched) with /proc inside; prints DIR/root. Nothing of the host's /run/netns is bound in: it
# is a shared mount, and unmounting a bind of it would unmount every namespace file of the host with it.
# Name namespaces inside the chroot as /proc/<pid>/ns/net of a process living in them.
overlay_rootfs() {
  local lower="$1" dir="$2"
  mkdir -p "$dir/upper" "$dir/work" "$dir/root"
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
  mount -t proc proc "$dir/root/proc"
  printf '%s\n' "$dir/root"
}

# unmount_rootfs DIR: undoes overlay_rootfs (best effort, for traps).
unmount_rootfs() {
  local dir="$1"
  mountpoint -q "$dir/root" 2>/dev/null || return 0
  umount -R "$dir/root" 2>/dev/null || umount -R -l "$dir/root" 2>/dev/null || true
}
