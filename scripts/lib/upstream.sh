# Upstream programs the tests compare with or drive (reference CNI plugins, cnitool on upstream libcni,
# flanneld, critest), built from the pinned Go modules under tests/upstream/<name>/ into a cache outside
# the clone, so a fresh CI clone reuses binaries built by an earlier run. Sourced by common.sh.
#
# Cache: ${TWILL_UPSTREAM_CACHE:-/var/cache/twill/upstream}/<name>-<hash>/bin, where <hash> covers the
# module's go.mod, go.sum and *.go files (twill_tests::bins::upstream_dir computes the same hash).
# Go's module and build caches stay in their default per-user places.

TWILL_UPSTREAM_CACHE="${TWILL_UPSTREAM_CACHE:-/var/cache/twill/upstream}"
TWILL_UPSTREAM_MODULES=(cni plugins flannel cri-tools)
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

# Hash of a module's go.mod, go.sum and *.go files (sorted by path, C locale), first 16 hex digits.
upstream_hash() {
  local dir="$TWILL_ROOT/tests/upstream/$1"
  (cd "$dir" && find . -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) -print | LC_ALL=C sort |
    while IFS= read -r f; do cat "$f"; done | sha256sum | cut -c1-16)
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
    log "upstream $name: built in $(($(date +%s) - start))s: $(ls "$out" | tr '\n' ' ')"
  done
}

# Runs in the module's directory; writes its programs into $3.
upstream_build_module() {
  local go="$1" name="$2" bin="$3"
  mkdir -p "$bin"
  local -a gob=(env GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0
    "$go" build -ldflags=-s)
  case "$name" in
    cni)
      "${gob[@]}" -o "$bin/cnitool" github.com/containernetworking/cni/cnitool
      if [ -d libcni-driver ]; then "${gob[@]}" -o "$bin/libcni-driver" ./libcni-driver; fi
      ;;
    plugins)
      # Every Linux plugin, as the project's build_linux.sh does; names are the package directories.
      local pkgs
      pkgs="$(sed -n 's/^[[:space:]]*_ "\(github.com\/containernetworking\/plugins\/plugins\/[^"]*\)"$/\1/p' tools.go)"
      [ -n "$pkgs" ] || { echo "no plugin packages in tools.go" >&2; return 1; }
      # shellcheck disable=SC2086
      "${gob[@]}" -o "$bin/" $pkgs
      ;;
    flannel)
      # Its udp backend is cgo (as in flannel's own amd64 builds).
      env GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=1 \
        "$go" build -ldflags=-s -o "$bin/flanneld" github.com/flannel-io/flannel
      ;;
    cri-tools)
      # critest is the test binary of cmd/critest, built with `go test -c` as cri-tools' Makefile does.
      env GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false -trimpath" CGO_ENABLED=0 \
        "$go" test -c -ldflags=-s -o "$bin/critest" sigs.k8s.io/cri-tools/cmd/critest
      ;;
    *)
      echo "unknown upstream module $name" >&2
      return 1
      ;;
  esac
}
