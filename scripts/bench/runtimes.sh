#!/usr/bin/env bash
# podman run --rm and a containerd CRI sandbox lifecycle with our plugins vs the reference (and netavark).
# Called by scripts/bench.sh with TWILL_BIN_DIR set to the release binaries; extra options pass through.
# A container run costs about half a second, so the default is 20 rounds rather than the harness's 200.
set -euo pipefail
# shellcheck source=../lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
release="${TWILL_BIN_DIR:?run through scripts/bench.sh}"
rounds=(--rounds 20 --warmup 2)
for a in "$@"; do case "$a" in --rounds|--warmup) rounds=() ;; esac; done
exec "$release/twill-bench" --ours "$release" --reference /usr/lib/cni "${rounds[@]}" "$@" \
  runtimes-podman runtimes-containerd
