# shellcheck shell=bash
# How tests/upstream/flannel-cni is built: run by build_upstream (scripts/lib/upstream.sh) with bash in this
# directory, GO = the Go binary, BIN = the directory to write the programs into. The cache entry's hash
# covers this file with the module's go.mod, go.sum and *.go files, and nothing else: everything that
# decides what is built is here, and changing one module's recipe rebuilds that module only.
set -euo pipefail
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
# The pinned version of module $1, as go.mod resolves it.
pinned() { "$GO" list -m -f '{{.Version}}' "$1"; }

# flannel's CNI plugin as it was before its move to flannel-io/cni-plugin (which the Go module proxy
# does not serve): the meta plugin of the reference plugins v0.9.1, named as flannel ships it.
v="$(pinned github.com/containernetworking/plugins)"
"$GO" build \
  -ldflags="-s -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$v" \
  -o "$BIN/flannel" github.com/containernetworking/plugins/plugins/meta/flannel
