# shellcheck shell=bash
# How tests/upstream/flannel is built: run by build_upstream (scripts/lib/upstream.sh) with bash in this
# directory, GO = the Go binary, BIN = the directory to write the programs into. The cache entry's hash
# covers this file with the module's go.mod, go.sum and *.go files, and nothing else: everything that
# decides what is built is here, and changing one module's recipe rebuilds that module only.
set -euo pipefail
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
# The pinned version of module $1, as go.mod resolves it.
pinned() { "$GO" list -m -f '{{.Version}}' "$1"; }

v="$(pinned github.com/flannel-io/flannel)"
# Its udp backend is cgo (as in flannel's own amd64 builds).
CGO_ENABLED=1 "$GO" build \
  -ldflags="-s -X github.com/flannel-io/flannel/pkg/version.Version=$v" \
  -o "$BIN/flanneld" github.com/flannel-io/flannel
