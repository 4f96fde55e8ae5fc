#!/usr/bin/env bash
# twilld: lease-to-kernel convergence (10 and 30 nodes; IPv4 and the IPv6 half of dual-stack leases), idle RSS/CPU,
# pod-to-pod iperf3 vs hand-built VXLAN, over IPv4 and over IPv6 (tests/tests/overlay_v6_bench.rs);
# host-gw: convergence and pod-to-pod iperf3 vs the raw underlay.
# Called by scripts/bench.sh with TWILL_BIN_DIR set to the release binaries; also runs standalone (builds
# release twilld itself). Needs root, etcd-server, etcd-client, iproute2 and iperf3. Everything runs in
# network namespaces the benchmark creates (tests/tests/overlay_bench.rs) and removes again.
# Then twilld against the real flanneld (tests/upstream/flannel, built if needed) in one run, clusters side
# by side: convergence, idle RSS/CPU, start to subnet.env, restart to ready (tests/tests/flanneld_bench.rs).
#
#   --rounds N          leases written per cluster size (default 200: a p99 of 40 is their maximum)
#   --sizes A,B         cluster sizes (default 10,30)
#   --idle-secs N       idle measurement of one daemon (default 60)
#   --iperf-secs N      duration of each iperf3 run (default 5)
#   --peers N           one daemon with N peer leases: programming, removal, CPU per idle resync
#                       (default 10000; 0 skips; tests/tests/overlay_peers_bench.rs)
#   --out FILE          also write the results to FILE
#   --etcd-tmpfs        etcd's data and the daemons' log files (TMPDIR) on /dev/shm: convergence without the
#                       disk (both daemons alike). etcd's fsync, and the journal update each logged lease line
#                       costs in a log file on ext4, are the disk's; a daemon in a pod or a unit logs to a pipe
set -euo pipefail
# shellcheck source=../lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
root="$TWILL_ROOT"
cd "$root"
samples=200 sizes=10,30 idle=60 iperf=5 peers=10000 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) samples="$2"; shift 2 ;;
    --warmup) shift 2 ;; # accepted for scripts/bench.sh; the benchmark waits for convergence itself
    --sizes) sizes="$2"; shift 2 ;;
    --idle-secs) idle="$2"; shift 2 ;;
    --iperf-secs) iperf="$2"; shift 2 ;;
    --peers) peers="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --etcd-tmpfs) export TWILL_ETCD_DIR=/dev/shm TMPDIR=/dev/shm; shift ;;
    -h|--help) sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "overlay.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "overlay.sh: needs root (network namespaces)" >&2; exit 1; }
for tool in etcd etcdctl ip bridge iperf3; do
  command -v "$tool" >/dev/null || { echo "overlay.sh: $tool is missing" >&2; exit 1; }
done
if [ -z "${TWILL_BIN_DIR:-}" ]; then
  cargo build --release -p twilld
  TWILL_BIN_DIR="$TWILL_TARGET_DIR/release"
fi
[ -x "$TWILL_BIN_DIR/twilld" ] || { echo "overlay.sh: no twilld in $TWILL_BIN_DIR" >&2; exit 1; }
# Both benchmarks in overlay_bench (VXLAN, host-gw) append to the output file.
if [ -n "$out" ]; then : >"$out"; fi
echo "==> twilld benchmark (VXLAN and host-gw): sizes $sizes, $samples leases each, idle ${idle}s, iperf3 ${iperf}s ($TWILL_BIN_DIR/twilld)" >&2
TWILL_BIN_DIR="$TWILL_BIN_DIR" TWILL_BENCH_SIZES="$sizes" TWILL_BENCH_SAMPLES="$samples" \
  TWILL_BENCH_IDLE_SECS="$idle" TWILL_BENCH_IPERF_SECS="$iperf" TWILL_BENCH_OUT="$out" \
  cargo test --release -p twill-tests --test overlay_bench -- --ignored --nocapture --test-threads=1
if [ "$iperf" -gt 0 ]; then
  echo "==> IPv6 VXLAN throughput: twilld vs a hand-built IPv6 VXLAN path, iperf3 ${iperf}s" >&2
  TWILL_BIN_DIR="$TWILL_BIN_DIR" TWILL_BENCH_IPERF_SECS="$iperf" TWILL_BENCH_OUT="$out" \
    cargo test --release -p twill-tests --test overlay_v6_bench -- --ignored --nocapture --test-threads=1
fi
if [ "$peers" -gt 0 ]; then
  echo "==> twilld at $peers peers" >&2
  TWILL_BIN_DIR="$TWILL_BIN_DIR" TWILL_BENCH_PEERS="$peers" TWILL_BENCH_OUT="${out:+$out.peers}" \
    cargo test --release -p twill-tests --test overlay_peers_bench -- --ignored --nocapture --test-threads=1
  if [ -n "$out" ]; then
    cat "$out.peers" >> "$out"
    rm -f "$out.peers"
  fi
fi
echo "==> twilld against flanneld: sizes $sizes, $samples leases each, idle ${idle}s" >&2
# shellcheck source=../lib/common.sh
. "$root/scripts/lib/common.sh"
build_upstream flannel
TWILL_BIN_DIR="$TWILL_BIN_DIR" TWILL_BENCH_SIZES="$sizes" TWILL_BENCH_SAMPLES="$samples" \
  TWILL_BENCH_IDLE_SECS="$idle" TWILL_BENCH_OUT="${out:+$out.flanneld}" \
  cargo test --release -p twill-tests --test flanneld_bench -- --ignored --nocapture --test-threads=1
if [ -n "$out" ]; then
  cat "$out.flanneld" >> "$out"
  rm -f "$out.flanneld"
fi
