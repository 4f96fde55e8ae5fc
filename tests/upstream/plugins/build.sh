# shellcheck shell=bash
# How tests/upstream/plugins is built: run by build_upstream (scripts/lib/upstream.sh) with bash in this
# directory, GO = the Go binary, BIN = the directory to write the programs into. The cache entry's hash
# covers this file with the module's go.mod, go.sum and *.go files, and nothing else: everything that
# decides what is built is here, and changing one module's recipe rebuilds that module only.
set -euo pipefail
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
# The pinned version of module $1, as go.mod resolves it.
pinned() { "$GO" list -m -f '{{.Version}}' "$1"; }

# Every Linux plugin, as the project's build_linux.sh does; names are the package directories.
pkgs="$(sed -n 's/^[[:space:]]*_ "\(github.com\/containernetworking\/plugins\/plugins\/[^"]*\)"$/\1/p' tools.go)"
[ -n "$pkgs" ] || { echo "no plugin packages in tools.go" >&2; exit 1; }
v="$(pinned github.com/containernetworking/plugins)"
# shellcheck disable=SC2086
"$GO" build \
  -ldflags="-s -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$v" \
  -o "$BIN/" $pkgs
