# shellcheck shell=bash
# Upstream programs the tests compare with or drive (reference CNI plugins, cnitool on upstream libcni,
# flanneld, flannel's CNI plugin, critest, the Kubernetes control plane), built from the pinned Go modules
# under tests/upstream/<name>/ into a cache outside the clone, so a fresh CI clone reuses binaries built
# by an earlier run. Sourced by common.sh.
#
# A module is a directory tests/upstream/<name>/ with go.mod, go.sum, a tools.go naming what it pins, and
# build.sh, its recipe (run with GO and BIN set; see any of them).
# Cache: ${TWILL_UPSTREAM_CACHE:-/var/cache/twill/upstream}/<name>-<hash>/bin, where <hash> covers the
# module's build.sh, go.mod, go.sum and *.go files and nothing outside its directory
# (twill_tests::bins::upstream_dir computes the same hash), so a changed pin or recipe rebuilds that
# module alone, and editing this file rebuilds nothing: keep what decides a build in the build.sh files.
# Go's module and build caches stay in their default per-user places.

TWILL_UPSTREAM_CACHE="${TWILL_UPSTREAM_CACHE:-/var/cache/twill/upstream}"
# Every module: the directories with a recipe.
upstream_modules() {
  local f
  for f in "$TWILL_ROOT"/tests/upstream/*/build.sh; do
    [ -f "$f" ] && basename "$(dirname "$f")"
  done
}
mapfile -t TWILL_UPSTREAM_MODULES < <(upstream_modules)
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

# Hash of the module's build.sh, go.mod, go.sum and *.go files (sorted by path, C locale), first 16
# hex digits.
upstream_hash() {
  local dir="$TWILL_ROOT/tests/upstream/$1"
  (cd "$dir" && find . -type f \( -name build.sh -o -name go.mod -o -name go.sum -o -name '*.go' \) -print |
    LC_ALL=C sort | while IFS= read -r f; do cat "$f"; done) | sha256sum | cut -c1-16
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
    [ -f "$TWILL_ROOT/tests/upstream/$name/build.sh" ] || die "no upstream module tests/upstream/$name (no build.sh)"
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
    mkdir "$tmp/bin"
    if ! (cd "$TWILL_ROOT/tests/upstream/$name" && GO="$go" BIN="$tmp/bin" bash ./build.sh); then
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
