# shellcheck shell=bash
# scripts/demo.sh --kubernetes: a real Kubernetes cluster on this machine running on twill
# (twill_tests::kube::cluster through the twill-kube-cluster supervisor): control plane and kube-scheduler
# in a switch namespace, N nodes (node1 the control-plane node, tainted; the rest workers), each a network
# namespace with a mount namespace of its own running containerd, a kubelet and kube-proxy; twill deployed
# with conf/kubernetes/kube-twill.yml and its image imported into every node (built from the dev-profile
# binaries under test); a web Deployment spread over the workers behind a Service. Sourced by demo.sh
# after common.sh and host.sh.

KSTATE="${TWILL_KUBE_DEMO_STATE:-/run/twill-kube-demo}"
KPREFIX="tw-kdemo-"
KCLUSTER="$TWILL_TARGET_DIR/debug/twill-kube-cluster"
KUP_TIMEOUT="${TWILL_KUBE_DEMO_UP_TIMEOUT:-600}"

kube_supervisor_pid() {
  local pid cmdline
  pid="$(cat "$KSTATE/supervisor.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *twill-kube-cluster* ]] || return 1
  echo "$pid"
}

kube_demo_up() {
  local nodes=3
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) [ $# -ge 2 ] || die "--nodes needs a number"; nodes="$2"; shift 2 ;;
      --nodes=*) nodes="${1#*=}"; shift ;;
      -h|--help) usage; exit 0 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
  done
  [[ "$nodes" =~ ^[0-9]+$ ]] && [ "$nodes" -ge 2 ] && [ "$nodes" -le 20 ] || die "--nodes: 2..20"
  need_root "scripts/demo.sh --kubernetes"
  local pid
  if pid="$(kube_supervisor_pid)"; then
    echo "A Kubernetes demo cluster is already up (supervisor pid $pid, state $KSTATE)."
    echo "  scripts/demo.sh report      # show it"
    echo "  scripts/demo.sh down        # tear it down"
    exit 0
  fi
  ensure_packages "${TWILL_DEBIAN_PACKAGES[@]}"
  ensure_cargo
  load_modules
  ensure_netns
  log "building the dev-profile binaries (the image twill is deployed from) and the supervisor"
  cargo build --workspace --bins
  build_upstream kubernetes
  if [ -n "$(namespaces_named "$KPREFIX")" ] || [ -e "$KSTATE" ]; then
    log "cleaning up what an earlier Kubernetes demo left behind"
    "$KCLUSTER" down --state "$KSTATE"
  fi
  local start=$SECONDS
  mkdir -p "$KSTATE"
  log "starting Kubernetes on twill: $nodes nodes (state $KSTATE, log $KSTATE/up.log)"
  setsid "$KCLUSTER" up --state "$KSTATE" --nodes "$nodes" </dev/null >"$KSTATE/up.log" 2>&1 &
  local sup=$!
  trap 'echo; kill -TERM '"$sup"' 2>/dev/null; wait '"$sup"' 2>/dev/null; "$KCLUSTER" down --state "$KSTATE"; exit 130' INT TERM
  while [ ! -e "$KSTATE/state.json" ]; do
    if ! kill -0 "$sup" 2>/dev/null; then
      tail -n 60 "$KSTATE/up.log" >&2 || true
      "$KCLUSTER" down --state "$KSTATE" >&2 || true
      die "the Kubernetes cluster did not come up (log above)"
    fi
    if [ $((SECONDS - start)) -ge "$KUP_TIMEOUT" ]; then
      tail -n 60 "$KSTATE/up.log" >&2 || true
      kill -TERM "$sup" 2>/dev/null || true
      "$KCLUSTER" down --state "$KSTATE" >&2 || true
      die "the Kubernetes cluster did not come up within $KUP_TIMEOUT s"
    fi
    sleep 1
  done
  trap - INT TERM
  echo
  local rc=0
  "$KCLUSTER" report --state "$KSTATE" || rc=$?
  echo
  echo "Kubernetes on twill up and reported in $((SECONDS - start)) s (after the build)."
  echo "  scripts/demo.sh report      # the report again"
  echo "  scripts/demo.sh down        # tear everything down"
  exit "$rc"
}

# True when a Kubernetes demo is up or left something behind.
kube_demo_present() {
  [ -e "$KSTATE" ] || [ -n "$(namespaces_named "$KPREFIX")" ]
}

# kube_demo_down: stops the supervisor (it tears the cluster down) and sweeps; then verifies.
kube_demo_down() {
  [ -x "$KCLUSTER" ] || die "$KCLUSTER is missing: build it (cargo build --workspace --bins) to tear down"
  "$KCLUSTER" down --state "$KSTATE"
  local left bad=0
  left="$(namespaces_named "$KPREFIX")"
  if [ -n "$left" ]; then echo "LEFT: namespaces: $left"; bad=1; fi
  left="$(processes_naming "$KSTATE")"
  if [ -n "$left" ]; then echo "LEFT: processes: $left"; bad=1; fi
  if [ -e "$KSTATE" ]; then echo "LEFT: $KSTATE"; bad=1; fi
  if grep -q " $KSTATE" /proc/self/mounts; then echo "LEFT: mounts under $KSTATE"; bad=1; fi
  if ls -d /sys/fs/cgroup/*/twill-"$KPREFIX"* >/dev/null 2>&1; then echo "LEFT: cgroups twill-$KPREFIX*"; bad=1; fi
  [ "$bad" -eq 0 ] || die "the Kubernetes demo's teardown left things behind (see above)"
  echo "Kubernetes demo: down, nothing left (namespaces, processes, mounts, cgroups, $KSTATE)"
}
