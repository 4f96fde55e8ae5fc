# shellcheck shell=bash
# How tests/upstream/kubernetes-e2e is built: run by build_upstream (scripts/lib/upstream.sh) with bash in
# this directory, GO = the Go binary, BIN = the directory to write the programs into. The cache entry's
# hash covers this file with the module's go.mod, go.sum and *.go files, and nothing else.
#
# Kubernetes' conformance tooling of the release tests/upstream/kubernetes runs, kept in a module of its
# own so that changing it never rebuilds the cluster's programs (and the other way round):
#   e2e.test  the end-to-end suite, `go test -c k8s.io/kubernetes/test/e2e` as hack/make-rules does
#   ginkgo    the CLI of the ginkgo version Kubernetes' go.mod pins (the suite refuses a mismatched one)
#   agnhost   the test image's program (test/images/agnhost), packed into an image by the tests
set -euo pipefail
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
# The pinned version of module $1, as go.mod resolves it.
pinned() { "$GO" list -m -f '{{.Version}}' "$1"; }

# Stamped as tests/upstream/kubernetes stamps its programs, so e2e.test reports the pinned release.
v="$(pinned k8s.io/kubernetes)"
minor="${v#v*.}"
minor="${minor%%.*}"
ldflags=(-s)
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ldflags+=("-X '$pkg.gitVersion=$v'" "-X '$pkg.gitMajor=1'" "-X '$pkg.gitMinor=$minor'"
    "-X '$pkg.gitTreeState=clean'" "-X '$pkg.buildDate=1970-01-01T00:00:00Z'")
done
"$GO" test -c -ldflags="${ldflags[*]}" -o "$BIN/e2e.test" k8s.io/kubernetes/test/e2e
"$GO" build -ldflags="${ldflags[*]}" -o "$BIN/" github.com/onsi/ginkgo/v2/ginkgo k8s.io/kubernetes/test/images/agnhost
