# shellcheck shell=bash
# Upstream programs the tests compare with or drive (reference CNI plugins, cnitool on upstream libcni,
# flanneld, flannel's CNI plugin, critest), built from the pinned Go modules under tests/upstream/<name>/
# into a cache outside the clone, so a fresh CI clone reuses binaries built by an earlier run. Sourced by
# common.sh.
#
# Cache: ${TWILL_UPSTREAM_CACHE:-/var/cache/twill/upstream}/<name>-<hash>/bin, where <hash> covers this
# file and the module's go.mod, go.sum and *.go files (twill_tests::bins::upstream_dir computes the same
# hash), so a changed pin or recipe builds anew.
# Go's module and build caches stay in their default per-user places.

TWILL_UPSTREAM_CACHE="${TWILL_UPSTREAM_CACHE:-/var/cache/twill/upstream}"
TWILL_UPSTREAM_MODULES=(cni plugins flannel flannel-cni cri-tools)
# The Go the modules are built with: the machine's own toolchain, not Debian's golang-go (1.19, too old
# for these modules; installed only for the GOPATH-mode libcni driver in tests/cnitool). go.mod files
# name go 1.26.8, and GOTOOLCHAIN=local keeps go from fetching another toolchain.
TWILL_GO="${TWILL_GO:-/usr/local/go/bin/go}"
TWILL_GO_MIN="1.26.8"

# Prints the Go binary to use, or dies saying what is wrong.
upstream_go() {
  [ -x "$TWILL_GO" ] || die "Go toolchain $TWILL_GO not found: the upstream test programs need Go >= $TWILL_GO_MIN (set TWILL_GO to its go binary)"
  local v
  v="$(GOTOOLCHAIN=local "$TWILL_GO" env GOVERSION 2>/dev/null)" || die "$TWILL_GO does not run"
  v="${v#go}"
  if [ "$(printf '%s\n%s\n' "$TWILL_GO_MIN" "$v" | sort -V | head -n1)" != "$TWILL_GO_MIN" ]; then
    die "$TWILL_GO is Go $v; the upstream test programs need Go >= $TWILL_GO_MIN (set TWILL_GO)"
  fi
  printf '%s\n' "$TWILL_GO"
}

# Hash of this file (the build recipe) followed by the module's go.mod, go.sum and *.go files (sorted by
# path, C locale), first 16 hex digits.
upstream_hash() {
  local dir="$TWILL_ROOT/tests/upstream/$1"
  {
    cat "$TWILL_ROOT/scripts/lib/upstream.sh"
    (cd "$dir" && find . -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) -print | LC_ALL=C sort |
      while IFS= read -r f; do cat "$f"; done)
  } | sha256sum | cut -c1-16
}

# Directory holding module NAME's binaries (whether or not it is built yet).
upstream_dir() {
  printf '%s/%s-%s/bin\n' "$TWILL_UPSTREAM_CACHE" "$1" "$(upstream_hash "$1")"
}

# build_upstream [NAME...]: builds the named modules (default: all) unless their cache entry exists.
# A module's build is written to a temporary directory and renamed into place, so a concurrent reader
# never sees half a set of binaries.
build_upstream() {
  local names=("$@") name go
  [ "${#names[@]}" -gt 0 ] || names=("${TWILL_UPSTREAM_MODULES[@]}")
  go="$(upstream_go)"
  for name in "${names[@]}"; do
    [ -f "$TWILL_ROOT/tests/upstream/$name/go.mod" ] || die "no upstream module tests/upstream/$name"
    local out entry tmp start
    out="$(upstream_dir "$name")"
    entry="$(dirname "$out")"
    if [ -f "$entry/.complete" ]; then
      touch "$entry/.complete" # marks it used, so pruning keeps it
      log "upstream $name: cached in $out"
      continue
    fi
    mkdir -p "$TWILL_UPSTREAM_CACHE"
    tmp="$(mktemp -d "$TWILL_UPSTREAM_CACHE/.$name.XXXXXX")"
    start=$(date +%s)
    log "upstream $name: building with $("$go" version) into $out"
    if ! (cd "$TWILL_ROOT/tests/upstream/$name" && upstream_build_module "$go" "$name" "$tmp/bin"); then
      rm -rf "$tmp"
      die "building upstream module tests/upstream/$name failed (Go module proxy reachable? see the go output above)"
    fi
    touch "$tmp/.complete"
    rm -rf "$entry"
    mv "$tmp" "$entry"
    log "upstream $name: built in $(($(date +%s) - start))s: $(cd "$out" && printf '%s ' *)"
    upstream_prune "$name" "$entry"
  done
}

# Removes entries of module $1 other than $2 that no build_upstream call used for 14 days (older pins
# and recipes), so the cache does not grow with every change.
upstream_prune() {
  local name="$1" keep="$2" mark
  find "$TWILL_UPSTREAM_CACHE" -mindepth 2 -maxdepth 2 -path "$TWILL_UPSTREAM_CACHE/$name-*/.complete" \
    -mtime +14 -print 2>/dev/null | while IFS= read -r mark; do
    [ "$(dirname "$mark")" = "$keep" ] && continue
    log "upstream $name: removing unused $(dirname "$mark")"
    rm -rf "$(dirname "$mark")"
  done
}

# Runs in the module's directory; writes its programs into $3. Versions are stamped the way each
# project's release build does (-X of its version variable), so the programs report what go.mod pins.
upstream_build_module() {
  local go="$1" name="$2" bin="$3"
  mkdir -p "$bin"
  local -a genv=(env GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0)
  pinned() { GOTOOLCHAIN=local GOFLAGS=-mod=readonly "$go" list -m -f '{{.Version}}' "$1"; }
  local v
  case "$name" in
    cni)
      "${genv[@]}" "$go" build -ldflags=-s -o "$bin/cnitool" github.com/containernetworking/cni/cnitool
      if [ -d libcni-driver ]; then
        "${genv[@]}" "$go" build -ldflags=-s -o "$bin/libcni-driver" ./libcni-driver
      fi
      ;;
    plugins)
      # Every Linux plugin, as the project's build_linux.sh does; names are the package directories.
      local pkgs
      pkgs="$(sed -n 's/^[[:space:]]*_ "\(github.com\/containernetworking\/plugins\/plugins\/[^"]*\)"$/\1/p' tools.go)"
      [ -n "$pkgs" ] || { echo "no plugin packages in tools.go" >&2; return 1; }
      v="$(pinned github.com/containernetworking/plugins)" || return 1
      # shellcheck disable=SC2086
      "${genv[@]}" "$go" build \
        -ldflags="-s -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$v" \
        -o "$bin/" $pkgs
      ;;
    flannel)
      v="$(pinned github.com/flannel-io/flannel)" || return 1
      # Its udp backend is cgo (as in flannel's own amd64 builds).
      "${genv[@]}" CGO_ENABLED=1 "$go" build \
        -ldflags="-s -X github.com/flannel-io/flannel/pkg/version.Version=$v" \
        -o "$bin/flanneld" github.com/flannel-io/flannel
      ;;
    flannel-cni)
      # flannel's CNI plugin as it was before its move to flannel-io/cni-plugin (which the Go module
      # proxy does not serve): the meta plugin of the reference plugins v0.9.1, named as flannel ships it.
      v="$(pinned github.com/containernetworking/plugins)" || return 1
      "${genv[@]}" "$go" build \
        -ldflags="-s -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$v" \
        -o "$bin/flannel" github.com/containernetworking/plugins/plugins/meta/flannel
      ;;
    cri-tools)
      v="$(pinned sigs.k8s.io/cri-tools)" || return 1
      # critest is the test binary of cmd/critest, built with `go test -c` as cri-tools' Makefile does.
      "${genv[@]}" "$go" test -c -ldflags="-s -X sigs.k8s.io/cri-tools/pkg/version.Version=${v#v}" \
        -o "$bin/critest" sigs.k8s.io/cri-tools/cmd/critest
      ;;
    *)
      echo "unknown upstream module $name" >&2
      return 1
      ;;
  esac
}
