# shellcheck shell=bash
# How tests/upstream/cri-tools is built: run by build_upstream (scripts/lib/upstream.sh) with bash in this
# directory, GO = the Go binary, BIN = the directory to write the programs into. The cache entry's hash
# covers this file with the module's go.mod, go.sum and *.go files, and nothing else: everything that
# decides what is built is here, and changing one module's recipe rebuilds that module only.
set -euo pipefail
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
# The pinned version of module $1, as go.mod resolves it.
pinned() { "$GO" list -m -f '{{.Version}}' "$1"; }

v="$(pinned sigs.k8s.io/cri-tools)"
# critest is the test binary of cmd/critest, built with `go test -c` as cri-tools' Makefile does.
"$GO" test -c -ldflags="-s -X sigs.k8s.io/cri-tools/pkg/version.Version=${v#v}" \
  -o "$BIN/critest" sigs.k8s.io/cri-tools/cmd/critest
