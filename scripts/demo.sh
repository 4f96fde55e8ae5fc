#!/usr/bin/env bash
# A twill cluster on this machine, as root: a real etcd on an underlay "switch" namespace, N node namespaces
# each running twilld (VXLAN overlay, flannel's etcd layout), and pods created through the real libcni with
# the stock flannel + portmap conflist. Prints the lease table, a pod-to-pod matrix across all nodes, a
# host-port check and cross-node throughput next to the raw underlay, then leaves the cluster up to explore.
#
#   scripts/demo.sh [--nodes N] [--pods M]   install missing packages, build, start (default 3 nodes x 2 pods)
#   scripts/demo.sh report                   print the report again
#   scripts/demo.sh status                   up / down / stale
#   scripts/demo.sh down                     tear everything down and verify nothing is left
#   scripts/demo.sh --kubernetes [--nodes N] a real Kubernetes cluster instead (default 3 nodes: node1 the
#                                            control plane, the rest workers) with twill deployed by its
#                                            manifest, a Deployment spread over the workers and a Service;
#                                            prints nodes and pods and a cross-node request through the
#                                            Service (scripts/lib/demo-kube.sh); report and down handle it too
#
# State, logs and every temporary file live in $TWILL_DEMO_STATE (default /run/twill-demo); every namespace is
# named tw-twdemo-*. Nothing is created in the host namespace.
#
#   TWILL_DEMO_PROFILE=debug        run the dev-profile binaries instead of release ones (scripts/test.sh
#                                   does, to reuse the build it just made rather than a release build)
#   TWILL_DEMO_UP_TIMEOUT=S         give up (and tear down) when the cluster is not up after S s (default 240;
#                                   0 gives up right after starting it: scripts/test.sh tests the teardown so)
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/host.sh
. "$TWILL_ROOT/scripts/lib/host.sh"
# shellcheck source=lib/demo-kube.sh
. "$TWILL_ROOT/scripts/lib/demo-kube.sh"
cd "$TWILL_ROOT"

STATE="${TWILL_DEMO_STATE:-/run/twill-demo}"
PREFIX="twdemo-"
PROFILE="${TWILL_DEMO_PROFILE:-release}"
# The debug build is scripts/test.sh's own build command, so it is a no-op there: a narrower --bin selection
# unifies dependency features differently and would rebuild (and later make `cargo test` rebuild) the daemon.
case "$PROFILE" in
  release) BUILD_ARGS=(--release --workspace) ;;
  debug) BUILD_ARGS=(--workspace --bins) ;;
  *) die "TWILL_DEMO_PROFILE: release or debug, not $PROFILE" ;;
esac
BIN_DIR="$TWILL_TARGET_DIR/$PROFILE"
UP_TIMEOUT="${TWILL_DEMO_UP_TIMEOUT:-240}"
[[ "$UP_TIMEOUT" =~ ^[0-9]+$ ]] || die "TWILL_DEMO_UP_TIMEOUT: seconds, not $UP_TIMEOUT"
# The supervisor is built in the dev profile: the release profile has panic = "abort", and the supervisor
# relies on unwinding to remove a half-built cluster when a step fails. The cluster runs $PROFILE binaries.
CLUSTER="$TWILL_TARGET_DIR/debug/twill-cluster"
BINS=(twilld flannel bridge host-local portmap loopback)
SUP="" # pid of the supervisor this run started
# Host links before the demo started, kept outside STATE so `down` can compare after removing STATE.
HOST_LINKS="${STATE%/}.host-links"
HOST_RULES="${STATE%/}.host-rules"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

supervisor_pid() {
  local pid cmdline
  pid="$(cat "$STATE/supervisor.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *twill-cluster* ]] || return 1
  echo "$pid"
}

demo_namespaces() { namespaces_named "tw-$PREFIX"; }

explore_help() {
  cat <<EOF

The cluster stays up. Look around with the commands above, or:
  scripts/demo.sh report      # the report again
  scripts/demo.sh down        # tear everything down (namespaces, processes, $STATE)
EOF
}

# We create $STATE and its up.log before the supervisor marks the directory as its own (after creating tmp/),
# and twill-cluster down leaves an unmarked directory alone: without the mark, ours and empty ones go here.
remove_empty_state() {
  [ -d "$STATE" ] && [ ! -e "$STATE/.twill-cluster" ] || return 0
  rm -f "$STATE/up.log"
  rmdir "$STATE/tmp" "$STATE" 2>/dev/null || true
}

# stop_supervisor PID: the supervisor we started may not have recorded its pid for twill-cluster down yet.
# SIGTERM makes it remove what it built; one that does not finish within 60 s is killed (down sweeps after it).
stop_supervisor() {
  kill -TERM "$1" 2>/dev/null || return 0
  local i
  for ((i = 0; i < 600; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
}

# abort_up STATUS WHY: a cluster that did not come up is torn down before the script exits (the supervisor
# runs in its own session, so neither our exit nor a Ctrl-C reaches it); its log goes with the state
# directory, so its tail is shown first.
abort_up() {
  trap - INT TERM
  echo "$2; last lines of $STATE/up.log:" >&2
  tail -n 40 "$STATE/up.log" >&2 || true
  log "tearing the half-built cluster down"
  [ -z "$SUP" ] || stop_supervisor "$SUP"
  remove_empty_state
  "$CLUSTER" down --state "$STATE" >&2 || echo "teardown failed: run scripts/demo.sh down" >&2
  rm -f "$HOST_LINKS" "$HOST_RULES"
  exit "$1"
}

cmd_up() {
  local nodes=3 pods=2
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) [ $# -ge 2 ] || die "--nodes needs a number"; nodes="$2"; shift 2 ;;
      --nodes=*) nodes="${1#*=}"; shift ;;
      --pods) [ $# -ge 2 ] || die "--pods needs a number"; pods="$2"; shift 2 ;;
      --pods=*) pods="${1#*=}"; shift ;;
      -h|--help) usage; exit 0 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
  done
  [[ "$nodes" =~ ^[0-9]+$ ]] && [ "$nodes" -ge 1 ] && [ "$nodes" -le 200 ] || die "--nodes: 1..200"
  [[ "$pods" =~ ^[0-9]+$ ]] && [ "$pods" -le 200 ] || die "--pods: 0..200"
  need_root "scripts/demo.sh"

  local pid
  if pid="$(supervisor_pid)"; then
    echo "A twill demo cluster is already up (supervisor pid $pid, state $STATE); not starting another."
    echo "  scripts/demo.sh report      # show it"
    echo "  scripts/demo.sh down        # tear it down, then run scripts/demo.sh again"
    exit 0
  fi

  ensure_packages "${TWILL_DEBIAN_PACKAGES[@]}"
  ensure_cargo
  load_modules
  ensure_netns
  local b
  if [ "$PROFILE" = release ]; then for b in "${BINS[@]}"; do BUILD_ARGS+=(--bin "$b"); done; fi
  log "building $PROFILE binaries: ${BINS[*]}"
  cargo build "${BUILD_ARGS[@]}"
  # The debug build above already holds the supervisor (it is one of the workspace's bins); building it alone
  # would unify features differently and rebuild half the dependency tree.
  if [ "$PROFILE" = release ]; then
    log "building the cluster supervisor: twill-cluster"
    cargo build -p twill-tests --bin twill-cluster
  fi
  log "building the libcni driver (Go, Debian's libcni)"
  build_cnitool

  if [ -n "$(demo_namespaces)" ] || [ -e "$STATE/cluster.json" ]; then
    log "cleaning up what an earlier demo left behind"
    "$CLUSTER" down --state "$STATE"
  fi

  local start=$SECONDS
  trap 'echo; abort_up 130 "interrupted"' INT TERM
  mkdir -p "$STATE"
  host_links >"$HOST_LINKS"
  host_rules >"$HOST_RULES"
  log "starting the cluster: $nodes nodes x $pods pods (state $STATE)"
  TWILL_BIN_DIR="$BIN_DIR" TWILL_CNITOOL="$TWILL_TARGET_DIR/cnitool/cnitool" \
    setsid "$CLUSTER" up --state "$STATE" --nodes "$nodes" --pods "$pods" \
    </dev/null >"$STATE/up.log" 2>&1 &
  SUP=$!
  local shown=0 lines
  while [ ! -e "$STATE/ready" ]; do
    if [ -f "$STATE/progress" ]; then
      lines=$(wc -l <"$STATE/progress")
      if [ "$lines" -gt "$shown" ]; then
        sed -n "$((shown + 1)),${lines}p" "$STATE/progress"
        shown=$lines
      fi
    fi
    kill -0 "$SUP" 2>/dev/null || abort_up 1 "twill-cluster up failed"
    [ $((SECONDS - start)) -lt "$UP_TIMEOUT" ] || abort_up 1 "the cluster did not come up within $UP_TIMEOUT s"
    sleep 0.2
  done
  trap - INT TERM
  [ -f "$STATE/progress" ] && tail -n +"$((shown + 1))" "$STATE/progress"
  echo
  local rc=0
  TWILL_BIN_DIR="$BIN_DIR" "$CLUSTER" report --state "$STATE" || rc=$?
  echo
  echo "Up and reported in $((SECONDS - start)) s (after the build)."
  explore_help
  [ "$rc" -eq 0 ] || echo "WARNING: some checks above failed (exit $rc)" >&2
  exit "$rc"
}

cmd_down() {
  need_root "scripts/demo.sh down"
  if [ -x "$CLUSTER" ]; then
    "$CLUSTER" down --state "$STATE"
    remove_empty_state
  elif [ -z "$(demo_namespaces)" ] && [ ! -e "$STATE" ]; then
    echo "nothing to tear down"
  else
    die "$CLUSTER is missing: build it (scripts/demo.sh builds it) to tear down"
  fi

  # Verify: no namespace, no process, no state or temp dir, no new host link.
  local bad=0 left
  left="$(demo_namespaces)"
  if [ -n "$left" ]; then echo "LEFT: namespaces: $left"; bad=1; else echo "namespaces: none left (tw-$PREFIX*)"; fi
  # Our processes name the state dir on their command line (--state, --subnet-file, --data-dir).
  left="$(processes_naming "$STATE")"
  if [ -n "$left" ]; then echo "LEFT: processes: $left"; bad=1; else echo "processes: none left (twill-cluster, twilld, etcd, iperf3)"; fi
  left="$(existing_paths "$STATE" /tmp/tw-"$PREFIX"*)"
  if [ -n "$left" ]; then echo "LEFT: files: $left"; bad=1; else echo "files: $STATE and temp files removed"; fi
  # Nothing is created in the host namespace; compare with what it had when the demo started (other
  # software may have changed it meanwhile, so a difference is reported, not treated as ours).
  if [ -f "$HOST_LINKS" ]; then
    host_links >"$HOST_LINKS.now"
    left="$(comm -13 "$HOST_LINKS" "$HOST_LINKS.now")"
    if [ -n "$left" ]; then echo "NOTE: host links added since the demo started (not created by it): $left"
    else echo "links: none added to the host namespace"; fi
  fi
  if [ -f "$HOST_RULES" ]; then
    host_rules >"$HOST_RULES.now"
    left="$(comm -13 "$HOST_RULES" "$HOST_RULES.now")"
    if [ -n "$left" ]; then echo "NOTE: host rules added since the demo started (not created by it):"; echo "$left"
    else echo "rules: none added to the host namespace (ip rule, nftables, iptables)"; fi
  fi
  rm -f "$HOST_LINKS" "$HOST_RULES" "$HOST_LINKS.now" "$HOST_RULES.now"
  [ "$bad" -eq 0 ] || die "teardown left things behind (see above)"
  echo "twill demo: down, nothing left"
}

# report and status answer with their exit status (failed checks; 3 = down): exec, so it is not an error here.
case "${1:-}" in
  --kubernetes) shift; kube_demo_up "$@" ;;
  down) shift; if kube_demo_present; then need_root "scripts/demo.sh down"; kube_demo_down; fi; cmd_down "$@" ;;
  report) if kube_supervisor_pid >/dev/null; then need_root "scripts/demo.sh report"; exec "$KCLUSTER" report --state "$KSTATE"; fi
          need_root "scripts/demo.sh report"; [ -x "$CLUSTER" ] || die "no demo built yet: run scripts/demo.sh"
          TWILL_BIN_DIR="$BIN_DIR" exec "$CLUSTER" report --state "$STATE" ;;
  status) [ -x "$CLUSTER" ] || { echo "down"; exit 3; }; exec "$CLUSTER" status --state "$STATE" ;;
  -h|--help) usage ;;
  *) cmd_up "$@" ;;
esac
