# shellcheck shell=bash
# The static release build of the committed HEAD, shared by scripts/release.sh (tarball, .deb) and
# scripts/image.sh (the Kubernetes image): a clean clone built for musl (x86_64-unknown-linux-musl, static by
# default), reproducibly (SOURCE_DATE_EPOCH = the commit's time, build paths
# remapped out of the binaries). Both use the same clone and target directory, under target/release-build
# (TWILL_RELEASE_WORK), so the second of them rebuilds nothing that the first built. Sourced after common.sh.

# musl, not a static glibc: glibc's start-up asks the CPU for its cache geometry (CPUID leaves 2 and 4, dozens of
# times), and on a virtual machine every CPUID is an exit to the hypervisor. That cost 0.65 ms of every plugin
# exec on the project's VMs (a static glibc program doing nothing: 0.75 ms; the same under musl: 0.11 ms), more
# than most plugins' own work. Debian's musl-tools gives the C compiler that ring (twilld's TLS) needs for it.
TRIPLE=x86_64-unknown-linux-musl
# Every binary that release.sh or image.sh ships. Both build all of them, whatever they ship, so whichever runs
# second finds everything built: a --bin set of its own would compile and link (fat LTO: minutes) the binaries
# the first one left out.
STATIC_BINS=(bridge loopback portmap bandwidth firewall flannel host-local ptp tuning static sbr macvlan host-device tap
  dhcp twilld twill-install)

# static_build BIN...: clones HEAD into $work/src and builds STATIC_BINS there (the named binaries must be
# among them). Sets (globals) work, src, commit, version, rel (the directory holding the binaries) and exports
# SOURCE_DATE_EPOCH. Dies when a named binary is not static.
static_build() {
  ensure_cargo
  ensure_rust_target "$TRIPLE"
  ensure_packages musl-tools
  local b
  for b in "$@"; do
    [[ " ${STATIC_BINS[*]} " == *" $b "* ]] || die "static_build: $b is not in STATIC_BINS (scripts/lib/static.sh)"
  done
  work="${TWILL_RELEASE_WORK:-$TWILL_TARGET_DIR/release-build}"
  src="$work/src"
  mkdir -p "$work"
  # A clone of this very commit with nothing changed in it is reused: a new clone gives every file a new
  # time, which makes cargo rebuild the workspace (minutes with fat LTO) though nothing changed.
  if [ "$(git -C "$src" rev-parse HEAD 2>/dev/null)" = "$(git -C "$TWILL_ROOT" rev-parse HEAD)" ] &&
    [ -z "$(git -C "$src" status --porcelain --ignored 2>/dev/null)" ]; then
    log "reusing the clone of $(git -C "$TWILL_ROOT" rev-parse --short HEAD) in $src"
  else
    log "cloning $(git -C "$TWILL_ROOT" rev-parse --short HEAD) into $src"
    rm -rf "$src"
    # HEAD by name, not the default branch: CI may build a detached commit that no branch points at.
    git clone --quiet --no-local --no-checkout "$TWILL_ROOT" "$src"
    git -C "$src" fetch --quiet "$TWILL_ROOT" HEAD
    git -C "$src" checkout --quiet --detach FETCH_HEAD
  fi
  [ "$(git -C "$src" rev-parse HEAD)" = "$(git -C "$TWILL_ROOT" rev-parse HEAD)" ] || die "the clone is not at HEAD"

  commit="$(git -C "$src" rev-parse HEAD)"
  SOURCE_DATE_EPOCH="$(git -C "$src" log -1 --format=%ct)"
  export SOURCE_DATE_EPOCH
  version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$src/Cargo.toml")"
  [ -n "$version" ] || die "no version in [workspace.package] of Cargo.toml"
  local cargo_home="${CARGO_HOME:-$HOME/.cargo}"

  # --target keeps RUSTFLAGS off build scripts and proc macros (they stay dynamic host programs). Remapped
  # paths keep the clone, the registry and the target directory out of panic locations: same bytes anywhere.
  export CARGO_TARGET_DIR="$work/target"
  export TWILL_COMMIT="$commit"
  export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$src=/twill \
--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$CARGO_TARGET_DIR=/target"
  local bins=() start
  for b in "${STATIC_BINS[@]}"; do bins+=(--bin "$b"); done
  log "building v$version ($commit) for $TRIPLE, static: ${STATIC_BINS[*]}"
  start=$(date +%s)
  (cd "$src" && cargo build --release --locked --target "$TRIPLE" --workspace "${bins[@]}")
  log "build took $(($(date +%s) - start)) s"
  rel="$CARGO_TARGET_DIR/$TRIPLE/release"
  for b in "$@"; do
    # A dynamic executable names its interpreter (ld-linux); a static one has none.
    if readelf -l "$rel/$b" | grep -- 'Requesting program interpreter' >/dev/null; then
      die "$b is dynamically linked: the static build did not take"
    fi
  done
}
