#!/usr/bin/env bash
# Builds twill and runs every check and test: what CI runs (.ci/run). Run as root on Debian 12:
# the tests create network namespaces, links and netfilter state (and remove them).
#
#   scripts/test.sh                 everything
#   TWILL_TEST_THREADS=N            parallel tests per test binary (default 4)
#
# Under CI=true every test that needs root or namespaces fails instead of skipping.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/host.sh
. "$TWILL_ROOT/scripts/lib/host.sh"
# shellcheck source=lib/static.sh
. "$TWILL_ROOT/scripts/lib/static.sh"
cd "$TWILL_ROOT"

need_root "scripts/test.sh"
ensure_packages "${TWILL_DEBIAN_PACKAGES[@]}"
ensure_cargo
ensure_rust_components
load_modules
ensure_netns
clean_stale_namespaces

LOG_DIR="$TWILL_TARGET_DIR/test-logs"
mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR"/*.log # the summary reads only this run's logs
# Tests mostly wait on the kernel and child processes, so a few more threads than the 2 cores help;
# more would make timing-sensitive cluster tests flaky.
THREADS="${TWILL_TEST_THREADS:-4}"

declare -a STEPS=() RESULTS=()
failed=0

# step NAME CMD...: runs CMD with its output teed to a log, records PASS/FAIL and the time taken.
step() {
  local name="$1" log="$LOG_DIR/$1.log" start rc=0
  shift
  log "$name: $*"
  start=$(date +%s)
  set +e
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  STEPS+=("$name")
  if [ "$rc" -eq 0 ]; then
    RESULTS+=("PASS  $(($(date +%s) - start))s")
  else
    RESULTS+=("FAIL  $(($(date +%s) - start))s (exit $rc, log: $log)")
    failed=1
  fi
  return "$rc"
}

summary() {
  echo
  echo "================ twill test summary ================"
  local i
  for i in "${!STEPS[@]}"; do
    printf '  %-8s %s\n' "${STEPS[$i]}" "${RESULTS[$i]}"
  done
  local name passed fails
  for name in test shipped; do
    [ -f "$LOG_DIR/$name.log" ] || continue
    # A log without result lines (the tests did not build) counts 0: grep's "no match" must not end the summary.
    passed=$({ grep -Eo '[0-9]+ passed' "$LOG_DIR/$name.log" || true; } | awk '{s+=$1} END {print s+0}')
    fails=$({ grep -Eo '[0-9]+ failed' "$LOG_DIR/$name.log" || true; } | awk '{s+=$1} END {print s+0}')
    echo "  $name: $passed passed, $fails failed"
    grep -E '^test .* FAILED$' "$LOG_DIR/$name.log" | sed 's/^/    /' || true
  done
  if [ "$failed" -eq 0 ]; then echo "  RESULT: PASS"; else echo "  RESULT: FAIL"; fi
  echo "===================================================="
}
trap summary EXIT

# The README's first command as a newcomer runs it, from a host without demo leftovers (a demo left up by an
# aborted run is taken down first): `demo.sh` comes up and reports, `demo.sh down` removes it, a start that
# times out tears itself down, and the host has no namespace, process, file, link or rule more than before.
# It runs the binaries of the build step (no release build). Step runs it without errexit: explicit checks.
demo_round() {
  local state="${TWILL_DEMO_STATE:-/run/twill-demo}" snap rc=0
  if [ -n "$(demo_leftovers "$state")" ]; then
    log "a demo left by an earlier run: tearing it down"
    scripts/demo.sh down || rc=1
  fi
  [ -z "$(demo_leftovers "$state")" ] || { echo "leftovers of an earlier demo:"; demo_leftovers "$state"; return 1; }
  snap="$(mktemp -d)" || return 1
  host_links >"$snap/links" && host_rules >"$snap/rules" || { rm -rf "$snap"; return 1; }
  TWILL_DEMO_PROFILE=debug scripts/demo.sh || rc=1
  scripts/demo.sh down || rc=1
  # A start that misses its timeout (0 s: right after it began) must tear down what it started.
  ! TWILL_DEMO_PROFILE=debug TWILL_DEMO_UP_TIMEOUT=0 scripts/demo.sh || { echo "demo.sh ignored its timeout"; rc=1; }
  { demo_leftovers "$state" || echo "cannot list demo leftovers"
    host_links >"$snap/links.now" || echo "cannot list host links"
    host_rules >"$snap/rules.now" || echo "cannot list host rules"
    comm -13 "$snap/links" "$snap/links.now" | sed 's/^/added host link: /'
    comm -13 "$snap/rules" "$snap/rules.now" | sed 's/^/added host rule: /'; } >"$snap/left"
  if [ -s "$snap/left" ]; then echo "LEFT after demo.sh down:"; cat "$snap/left"; rc=1; else echo "nothing left"; fi
  rm -rf "$snap"
  return "$rc"
}

# The Kubernetes demo as the README shows it: `demo.sh --kubernetes` comes up (3 nodes, twill deployed by its
# manifest, a Service answering from another node) and `demo.sh down` removes it (it verifies no namespace,
# process, mount or cgroup is left); the host has no link or rule more than before.
kube_demo_round() {
  local snap rc=0
  snap="$(mktemp -d)" || return 1
  host_links >"$snap/links" && host_rules >"$snap/rules" || { rm -rf "$snap"; return 1; }
  scripts/demo.sh --kubernetes || rc=1
  scripts/demo.sh down || rc=1
  { host_links >"$snap/links.now" || echo "cannot list host links"
    host_rules >"$snap/rules.now" || echo "cannot list host rules"
    comm -13 "$snap/links" "$snap/links.now" | sed 's/^/added host link: /'
    comm -13 "$snap/rules" "$snap/rules.now" | sed 's/^/added host rule: /'; } >"$snap/left"
  if [ -s "$snap/left" ]; then echo "LEFT after demo.sh down:"; cat "$snap/left"; rc=1; else echo "nothing left"; fi
  rm -rf "$snap"
  return "$rc"
}

# The tests of the plugins and of twilld, on the binaries users get: the static musl build that the release
# step made (lib/static.sh), so a difference between musl and the debug build's glibc fails here rather than on
# a node. Helpers that are not shipped (twill-tun-attach) come from the debug build.
SHIPPED_TESTS=(protocol loopback bridge bridge_diff bridge_race portmap host_local host_local_interop static_ipam
  ptp_diff tuning_diff tuning_libcni bandwidth_diff firewall_diff macvlan_diff sbr_diff tap_diff host_device_diff
  dhcp_diff kindnet flannel libcni_upstream upstream_integration overlay overlay_dual_stack kube_mode)
shipped_round() {
  local rel="${TWILL_RELEASE_WORK:-$TWILL_TARGET_DIR/release-build}/target/$TRIPLE/release"
  local dir="$TWILL_TARGET_DIR/shipped-bin" b t args=()
  rm -rf "$dir" && mkdir -p "$dir" || return 1
  for b in "${STATIC_BINS[@]}"; do
    [ -x "$rel/$b" ] || { echo "$rel/$b is missing: the release step builds it"; return 1; }
    ln -s "$rel/$b" "$dir/$b" || return 1
  done
  ln -s "$TWILL_TARGET_DIR/debug/twill-tun-attach" "$dir/twill-tun-attach" || return 1
  for t in "${SHIPPED_TESTS[@]}"; do args+=(--test "$t"); done
  TWILL_BIN_DIR="$dir" cargo test -p twill-tests "${args[@]}" --no-fail-fast -- --test-threads="$THREADS"
}

# Formatting and lints do not stop the run, so one pass shows every problem.
step fmt cargo fmt --all -- --check || true
step clippy cargo clippy --workspace --all-targets -- -D warnings || true
step build cargo build --workspace --bins || exit 1
step cnitool build_cnitool || exit 1
# Reference plugins of the newest release, cnitool on the newest libcni, flanneld, critest and the
# Kubernetes programs, its e2e suite and CoreDNS, built from the pinned Go modules under tests/upstream (cached outside the
# clone; the first build takes minutes, Kubernetes' the longest).
step upstream build_upstream || exit 1
step demo demo_round || true
step kube-demo kube_demo_round || true
step test cargo test --workspace --no-fail-fast -- --test-threads="$THREADS" || true
# The release artifacts from a clean clone: tarball conformance, Debian 11 chroot, .deb in a Debian 12 chroot.
step release scripts/release-test.sh || true
# The plugin and twilld tests again, on the static musl binaries of that build (see shipped_round).
step shipped shipped_round || true
# The Kubernetes image from the same clean-clone build: its files, static binaries, entrypoint, and its
# init containers' commands run from it by podman.
step image scripts/image-test.sh || true

exit "$failed"
