#!/usr/bin/env bash
# Kubernetes pod start-up: 30 pods at once, created -> Ready and CNI ADD, twill vs reference + flanneld.
# Called by scripts/bench.sh with TWILL_BIN_DIR set to the release binaries (the twill image is built from
# them); also runs standalone (builds them itself). A 3-node cluster (2 workers) per setup and round, the
# order alternating (tests/tests/kube_pod_bench.rs); everything runs in namespaces it creates and removes.
#
#   --rounds N          rounds, each on fresh clusters (default 2)
#   --pods N            pods created at once (default 30)
#   --out FILE          also write the table to FILE
set -euo pipefail
# shellcheck source=../lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
cd "$TWILL_ROOT"
rounds=2 pods=30 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --warmup) shift 2 ;; # accepted for scripts/bench.sh; every round starts fresh clusters
    --pods) pods="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "kube-pods.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "kube-pods.sh: needs root (namespaces, containerd)" >&2; exit 1; }
if [ -z "${TWILL_BIN_DIR:-}" ]; then
  cargo build --release --workspace --bins
  TWILL_BIN_DIR="$TWILL_TARGET_DIR/release"
fi
build_upstream kubernetes plugins flannel flannel-cni
echo "==> pod start-up: $pods pods, $rounds rounds, twill from $TWILL_BIN_DIR" >&2
TWILL_BIN_DIR="$TWILL_BIN_DIR" TWILL_BENCH_PODS="$pods" TWILL_BENCH_ROUNDS="$rounds" TWILL_BENCH_OUT="$out" \
  cargo test -p twill-tests --test kube_pod_bench -- --ignored --nocapture --test-threads=1
