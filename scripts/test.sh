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
  if [ -f "$LOG_DIR/test.log" ]; then
    local passed fails
    passed=$(grep -Eo '[0-9]+ passed' "$LOG_DIR/test.log" | awk '{s+=$1} END {print s+0}')
    fails=$(grep -Eo '[0-9]+ failed' "$LOG_DIR/test.log" | awk '{s+=$1} END {print s+0}')
    echo "  tests: $passed passed, $fails failed"
    grep -E '^test .* FAILED$' "$LOG_DIR/test.log" | sed 's/^/    /' || true
  fi
  if [ "$failed" -eq 0 ]; then echo "  RESULT: PASS"; else echo "  RESULT: FAIL"; fi
  echo "===================================================="
}
trap summary EXIT

# Formatting and lints do not stop the run, so one pass shows every problem.
step fmt cargo fmt --all -- --check || true
step clippy cargo clippy --workspace --all-targets -- -D warnings || true
step build cargo build --workspace --bins || exit 1
step cnitool build_cnitool || exit 1
# Reference plugins of the newest release, cnitool on the newest libcni, flanneld and critest, built from
# the pinned Go modules under tests/upstream (cached outside the clone; the first build takes minutes).
step upstream build_upstream || exit 1
step test cargo test --workspace -- --test-threads="$THREADS" || true

exit "$failed"
