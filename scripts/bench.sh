#!/usr/bin/env bash
# Benchmarks twill against the reference CNI plugins, interleaved in one run: by default the current
# upstream release (built from tests/upstream/plugins) and Debian's 1.1.1 in /usr/lib/cni, both in every
# round; prints medians, p90, the ratio against each and floors.
#
#   scripts/bench.sh                          list scenarios
#   scripts/bench.sh loopback [--rounds N] [--warmup N]
#   scripts/bench.sh scale [--pods 0,200,1000] [--rounds 30]   pods already on the bridge
#   scripts/bench.sh bridge --reference DIR   compare with the plugins in DIR only (repeatable)
#   scripts/bench.sh ptp tuning static kindnet   the ptp, tuning and static plugins and kind's chain
#   scripts/bench.sh sbr                      the sbr plugin
#   scripts/bench.sh macvlan                  macvlan + host-local, the master from the node's default route
#   scripts/bench.sh host-device              host-device + host-local, a node device into the pod and back
#   scripts/bench.sh tap                      tap + host-local (multi-queue, owner and group)
#   scripts/bench.sh kube-pods [--pods 30] [--rounds 2]   Kubernetes pod start-up, twill vs reference + flanneld
#   scripts/bench.sh --etcd-tmpfs overlay     etcd's data and the daemons' logs on /dev/shm: convergence without the disk
#   scripts/bench.sh --static ptp ...         ours as shipped (release tarball, .deb, image): static musl binaries;
#                                             the reference binaries are static too, so neither side pays a loader
#
# Rust scenarios are tests/src/bench/<name>.rs (run by the twill-bench binary); shell scenarios are
# scripts/bench/<name>.sh and get the same options. Builds release binaries first. Needs root.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/static.sh
. "$TWILL_ROOT/scripts/lib/static.sh"
cd "$TWILL_ROOT"

ensure_cargo
scenarios=()
options=()
static=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds|--warmup|--ours|--reference|--pods)
      [ $# -ge 2 ] || die "$1 needs a value"; options+=("$1" "$2"); shift 2 ;;
    --static) static=1; shift ;;
    --etcd-tmpfs) export TWILL_ETCD_DIR=/dev/shm TMPDIR=/dev/shm; shift ;; # see scripts/bench/overlay.sh
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) scenarios+=("$1"); shift ;;
  esac
done

if [ "$static" = 1 ]; then
  # The target of scripts/lib/static.sh (musl), on the working tree; --target gives the build its own
  # directory, so the dynamic release build stays as it is.
  ensure_rust_target "$TRIPLE"
  ensure_packages musl-tools
  log "building static release binaries ($TRIPLE)"
  cargo build --release --target "$TRIPLE" --workspace --bins
  release="$TWILL_TARGET_DIR/$TRIPLE/release"
else
  log "building release binaries"
  cargo build --release --workspace --bins
  release="$TWILL_TARGET_DIR/release"
fi
bench=("$release/twill-bench" --ours "$release")

if [ "${#scenarios[@]}" -eq 0 ]; then
  echo "scenarios:"
  "${bench[@]}" --help | sed -n '/^scenarios:/,$p' | tail -n +2
  for f in scripts/bench/*.sh; do
    [ -e "$f" ] || continue
    printf '  %-12s (shell) %s\n' "$(basename "$f" .sh)" "$(sed -n '2s/^# *//p' "$f")"
  done
  exit 0
fi

need_root "scripts/bench.sh"
build_upstream plugins
rc=0
for s in "${scenarios[@]}"; do
  if [ -f "scripts/bench/$s.sh" ]; then
    TWILL_BIN_DIR="$release" bash "scripts/bench/$s.sh" "${options[@]+"${options[@]}"}" || rc=1
  else
    TWILL_BIN_DIR="$release" "${bench[@]}" "${options[@]+"${options[@]}"}" "$s" || rc=1
  fi
done
exit "$rc"
