# shellcheck shell=bash
# How tests/upstream/cni is built: run by build_upstream (scripts/lib/upstream.sh) with bash in this
# directory, GO = the Go binary, BIN = the directory to write the programs into. The cache entry's hash
# covers this file with the module's go.mod, go.sum and *.go files, and nothing else: everything that
# decides what is built is here, and changing one module's recipe rebuilds that module only.
set -euo pipefail
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
# The pinned version of module $1, as go.mod resolves it.
pinned() { "$GO" list -m -f '{{.Version}}' "$1"; }

"$GO" build -ldflags=-s -o "$BIN/cnitool" github.com/containernetworking/cni/cnitool
"$GO" build -ldflags=-s -o "$BIN/libcni-driver" ./libcni-driver
