# shellcheck shell=bash
# How tests/upstream/coredns is built: run by build_upstream (scripts/lib/upstream.sh) with bash in this
# directory, GO = the Go binary, BIN = the directory to write the programs into. The cache entry's hash
# covers this file with the module's go.mod, go.sum and *.go files, and nothing else.
#
# coredns: the cluster DNS of the Kubernetes test cluster (main.go: the upstream server with the plugins
# a cluster's Corefile uses), static as CoreDNS releases are.
set -euo pipefail
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
"$GO" build -ldflags=-s -o "$BIN/coredns" .
