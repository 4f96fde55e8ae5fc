# shellcheck shell=bash
# How tests/upstream/kubernetes is built: run by build_upstream (scripts/lib/upstream.sh) with bash in this
# directory, GO = the Go binary, BIN = the directory to write the programs into. The cache entry's hash
# covers this file with the module's go.mod, go.sum and *.go files, and nothing else: everything that
# decides what is built is here, and changing one module's recipe rebuilds that module only.
set -euo pipefail
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
# The pinned version of module $1, as go.mod resolves it.
pinned() { "$GO" list -m -f '{{.Version}}' "$1"; }

# The control plane (with its scheduler), its client and the programs of a node, static (CGO_ENABLED=0) as
# Kubernetes' release builds them, with the version stamped as its hack/lib/version.sh does, so
# `kubectl version`, the API server and the kubelets report the pinned release.
programs=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
v="$(pinned k8s.io/kubernetes)"
minor="${v#v*.}"
minor="${minor%%.*}"
ldflags=(-s)
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ldflags+=("-X '$pkg.gitVersion=$v'" "-X '$pkg.gitMajor=1'" "-X '$pkg.gitMinor=$minor'"
    "-X '$pkg.gitTreeState=clean'" "-X '$pkg.buildDate=1970-01-01T00:00:00Z'")
done
pkgs=()
for p in "${programs[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$p"); done
"$GO" build -ldflags="${ldflags[*]}" -o "$BIN/" "${pkgs[@]}"
