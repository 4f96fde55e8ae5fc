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
#
# State, logs and every temporary file live in $TWILL_DEMO_STATE (default /run/twill-demo); every namespace is
# named tw-twdemo-*. Nothing is created in the host namespace.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$TWILL_ROOT"

STATE="${TWILL_DEMO_STATE:-/run/twill-demo}"
PREFIX="twdemo-"
RELEASE="$TWILL_TARGET_DIR/release"
# The supervisor is built in the dev profile: the release profile has panic = "abort", and the supervisor
# relies on unwinding to remove a half-built cluster when a step fails. The cluster runs release binaries.
CLUSTER="$TWILL_TARGET_DIR/debug/twill-cluster"
BINS=(twilld flannel bridge host-local portmap loopback)
# Host links before the demo started, kept outside STATE so `down` can compare after removing STATE.
HOST_LINKS="${STATE%/}.host-links"
HOST_RULES="${STATE%/}.host-rules"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

supervisor_pid() {
  local pid
  pid="$(cat "$STATE/supervisor.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q twill-cluster || return 1
  echo "$pid"
}

demo_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^tw-$PREFIX" || true; }

host_links() { ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort; }
# Policy rules, nftables and iptables rules of the host namespace, without counters.
host_rules() {
  { ip rule show; ip -6 rule show; nft list ruleset 2>/dev/null | sed -E 's/packets [0-9]+ bytes [0-9]+//'
    iptables-save 2>/dev/null | grep '^-A'; } | sort -u
}

explore_help() {
  cat <<EOF

The cluster stays up. Look around with the commands above, or:
  scripts/demo.sh report      # the report again
  scripts/demo.sh down        # tear everything down (namespaces, processes, $STATE)
EOF
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
  local args=() b
  for b in "${BINS[@]}"; do args+=(--bin "$b"); done
  log "building release binaries: ${BINS[*]}"
  cargo build --release --workspace "${args[@]}"
  log "building the cluster supervisor: twill-cluster"
  cargo build -p twill-tests --bin twill-cluster
  log "building the libcni driver (Go, Debian's libcni)"
  build_cnitool

  if [ -n "$(demo_namespaces)" ] || [ -e "$STATE/cluster.json" ]; then
    log "cleaning up what an earlier demo left behind"
    "$CLUSTER" down --state "$STATE"
  fi

  local start=$SECONDS
  mkdir -p "$STATE"
  host_links >"$HOST_LINKS"
  host_rules >"$HOST_RULES"
  log "starting the cluster: $nodes nodes x $pods pods (state $STATE)"
  TWILL_BIN_DIR="$RELEASE" TWILL_CNITOOL="$TWILL_TARGET_DIR/cnitool/cnitool" \
    setsid "$CLUSTER" up --state "$STATE" --nodes "$nodes" --pods "$pods" \
    </dev/null >"$STATE/up.log" 2>&1 &
  local sup=$! shown=0 lines
  # Ctrl-C while the cluster is being built: the supervisor runs in its own session, so stop it explicitly.
  trap 'echo; log "interrupted: tearing the half-built cluster down"; "$CLUSTER" down --state "$STATE"; rm -f "$HOST_LINKS" "$HOST_RULES"; exit 130' INT TERM
  while [ ! -e "$STATE/ready" ]; do
    if [ -f "$STATE/progress" ]; then
      lines=$(wc -l <"$STATE/progress")
      if [ "$lines" -gt "$shown" ]; then
        tail -n +"$((shown + 1))" "$STATE/progress" | head -n "$((lines - shown))"
        shown=$lines
      fi
    fi
    if ! kill -0 "$sup" 2>/dev/null; then
      echo "twill-cluster up failed:" >&2
      tail -n 40 "$STATE/up.log" >&2 || true
      "$CLUSTER" down --state "$STATE" >/dev/null 2>&1 || true
      rm -f "$HOST_LINKS" "$HOST_RULES"
      exit 1
    fi
    if [ $((SECONDS - start)) -gt 240 ]; then
      echo "the cluster did not come up within 240 s; log: $STATE/up.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  trap - INT TERM
  [ -f "$STATE/progress" ] && tail -n +"$((shown + 1))" "$STATE/progress"
  echo
  local rc=0
  TWILL_BIN_DIR="$RELEASE" "$CLUSTER" report --state "$STATE" || rc=$?
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
  left="$(pgrep -af -- "$STATE" | grep -E 'twill-cluster|twilld|etcd' | grep -v pgrep || true)"
  if [ -n "$left" ]; then echo "LEFT: processes: $left"; bad=1; else echo "processes: none left (twill-cluster, twilld, etcd, iperf3)"; fi
  left="$(ls -d "$STATE" /tmp/tw-"$PREFIX"* 2>/dev/null || true)"
  if [ -n "$left" ]; then echo "LEFT: files: $left"; bad=1; else echo "files: $STATE and temp files removed"; fi
  # Nothing is created in the host namespace; compare with what it had when the demo started (other
  # software may have changed it meanwhile, so a difference is reported, not treated as ours).
  if [ -f "$HOST_LINKS" ]; then
    left="$(comm -13 "$HOST_LINKS" <(host_links) || true)"
    if [ -n "$left" ]; then echo "NOTE: host links added since the demo started (not created by it): $left"
    else echo "links: none added to the host namespace"; fi
  fi
  if [ -f "$HOST_RULES" ]; then
    left="$(comm -13 "$HOST_RULES" <(host_rules) || true)"
    if [ -n "$left" ]; then echo "NOTE: host rules added since the demo started (not created by it):"; echo "$left"
    else echo "rules: none added to the host namespace (ip rule, nftables, iptables)"; fi
  fi
  rm -f "$HOST_LINKS" "$HOST_RULES"
  [ "$bad" -eq 0 ] || die "teardown left things behind (see above)"
  echo "twill demo: down, nothing left"
}

case "${1:-}" in
  down) shift; cmd_down "$@" ;;
  report) need_root "scripts/demo.sh report"; [ -x "$CLUSTER" ] || die "no demo built yet: run scripts/demo.sh"
          TWILL_BIN_DIR="$RELEASE" "$CLUSTER" report --state "$STATE" ;;
  status) [ -x "$CLUSTER" ] || { echo "down"; exit 3; }; "$CLUSTER" status --state "$STATE" ;;
  -h|--help) usage ;;
  *) cmd_up "$@" ;;
esac
