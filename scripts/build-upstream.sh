#!/usr/bin/env bash
# Builds the upstream programs the tests use (tests/upstream/<name>: cni, plugins, flannel, flannel-cni,
# cri-tools, kubernetes, kubernetes-e2e, coredns) into their cache, and prints where each one is. scripts/test.sh runs this as its own step.
#
#   scripts/build-upstream.sh [NAME...]     default: all
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

build_upstream "$@"
names=("$@")
[ "${#names[@]}" -gt 0 ] || names=("${TWILL_UPSTREAM_MODULES[@]}")
for name in "${names[@]}"; do
  printf '%s\t%s\n' "$name" "$(upstream_dir "$name")"
done
