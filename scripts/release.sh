#!/usr/bin/env bash
# Builds the release artifacts of the committed HEAD, from a clean clone, into dist/ (--out DIR):
#   twill-cni-plugins-linux-amd64-v<version>.tgz   bridge loopback portmap bandwidth firewall flannel host-local
#                                                  ptp tuning static sbr macvlan host-device tap dhcp
#                                                  (flat, as the reference cni-plugins-linux-amd64-*.tgz)
#   twilld-linux-amd64-v<version>                  the overlay daemon
#   twilld.service                                 its systemd unit (ExecStart=/usr/local/bin/twilld)
#   twill_<version>-1_amd64.deb                    all of it for Debian/Ubuntu (cargo-deb)
# each with .sha256 and .sha512 files. Uncommitted changes are not part of a release: commit first.
#
# Binaries are static (musl, see lib/static.sh), so they run on distributions older than the build machine. The build is reproducible: file times are SOURCE_DATE_EPOCH (the commit's time),
# archives are sorted with owner root, and build paths are remapped out of the binaries (lib/static.sh).
#
# The clone and its target directory are kept under target/release-build (TWILL_RELEASE_WORK), so a second
# release of a close commit, or scripts/image.sh, rebuilds only what changed. cargo-deb is installed
# (cargo install --locked) when missing.
#
# usage: scripts/release.sh [--out DIR]
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/static.sh
. "$TWILL_ROOT/scripts/lib/static.sh"
cd "$TWILL_ROOT"

PLUGINS=(bridge loopback portmap bandwidth firewall flannel host-local ptp tuning static sbr macvlan host-device tap dhcp)
out="$TWILL_ROOT/dist"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out="$2"; shift 2 ;;
    --out=*) out="${1#*=}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

ensure_cargo
command -v help2man >/dev/null 2>&1 || die "help2man is missing (Debian package help2man)"
if ! cargo deb --version >/dev/null 2>&1; then
  log "installing cargo-deb"
  cargo install --locked cargo-deb
fi

static_build "${PLUGINS[@]}" twilld

rm -rf "$out"
mkdir -p "$out"
stage="$work/stage"
rm -rf "$stage"
mkdir -p "$stage/plugins"

# checksums FILE: FILE.sha256 and FILE.sha512 in sha256sum's format, naming FILE without its directory.
checksums() {
  local dir name
  dir="$(dirname "$1")" name="$(basename "$1")"
  (cd "$dir" && sha256sum "$name" >"$name.sha256" && sha512sum "$name" >"$name.sha512")
}

# reproducible_tgz DIR OUT: DIR's content as ./name entries, sorted, owned by root, dated SOURCE_DATE_EPOCH.
reproducible_tgz() {
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" --format=gnu \
    -C "$1" -cf - . | gzip -n -9 >"$2"
}

for p in "${PLUGINS[@]}"; do install -m 0755 "$rel/$p" "$stage/plugins/$p"; done
install -m 0644 "$src/README.md" "$src/CHANGELOG.md" "$stage/plugins/"
find "$stage/plugins" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
tarball="$out/twill-cni-plugins-linux-amd64-v$version.tgz"
reproducible_tgz "$stage/plugins" "$tarball"
checksums "$tarball"

install -m 0755 "$rel/twilld" "$out/twilld-linux-amd64-v$version"
checksums "$out/twilld-linux-amd64-v$version"
install -m 0644 "$src/conf/twilld.service" "$out/twilld.service"
checksums "$out/twilld.service"

# The package's files cargo-deb takes from the target directory: the unit with the packaged binary's path,
# and a man page made from `twilld --help` and `--version`.
sed 's|/usr/local/bin/twilld|/usr/bin/twilld|' "$src/conf/twilld.service" >"$rel/twilld.service"
help2man --no-info --section=8 --source="twill v$version" \
  --name="flannel-compatible VXLAN overlay daemon of the twill CNI plugins" \
  --version-string="$version" "$rel/twilld" | gzip -n -9 >"$rel/twilld.8.gz"
log "packaging the .deb"
(cd "$src" && cargo deb --no-build --no-strip --target "$TRIPLE" -p twilld --deb-revision 1 \
  --output "$out/twill_${version}-1_amd64.deb")
checksums "$out/twill_${version}-1_amd64.deb"

log "artifacts of v$version ($commit) in $out:"
(cd "$out" && ls -l)
