#!/usr/bin/env bash
# Tests the release artifacts as a node operator gets them (test.sh runs it as its release step):
#   1. scripts/release.sh builds them from a clean clone; every .sha256/.sha512 checks out.
#   2. The tarball unpacked into an empty directory passes the libcni conformance tests (loopback,
#      bridge + host-local + portmap, flannel) with CNI_PATH pointing there and nowhere else.
#   3. In a Debian 11 (bullseye) root filesystem (older glibc than the build machine's) the binaries answer
#      VERSION, twilld --version, and a bridge ADD/DEL attaches and detaches a pod in a test namespace.
#   4. In a Debian 12 root filesystem with containernetworking-plugins installed: `dpkg -i` of the .deb
#      replaces it, a lease the reference host-local made stays taken and is released by ours, `dpkg -r`
#      leaves exactly the files there were before minus the reference's, and `apt-get install
#      containernetworking-plugins` (from the package debootstrap downloaded) brings the reference back.
# The dpkg part runs in a chroot, never on this host: other tests use the host's /usr/lib/cni meanwhile.
# Root filesystems are made once by debootstrap and cached under /var/cache/twill; each run works on an
# overlay of them. Needs root.
#
# usage: scripts/release-test.sh [--dist DIR]   (DIR: artifacts already built; default: build them)
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/rootfs.sh
. "$TWILL_ROOT/scripts/lib/rootfs.sh"
cd "$TWILL_ROOT"

need_root "scripts/release-test.sh"
dist=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dist) [ $# -ge 2 ] || die "--dist needs a directory"; dist="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

PLUGINS=(bridge loopback portmap flannel host-local)
tmp="$(mktemp -d /tmp/twill-release-test.XXXXXX)"
netns=()
cleanup() {
  local ns
  unmount_rootfs "$tmp/bullseye"
  unmount_rootfs "$tmp/bookworm"
  for ns in "${netns[@]+"${netns[@]}"}"; do ip netns delete "$ns" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
pass() { printf 'ok: %s\n' "$*"; }

# new_netns PREFIX: a namespace named as the tests name theirs (tw-<prefix>-<pid>-<n>), so test.sh's stale
# namespace sweep knows it.
new_netns() {
  local name="tw-$1-$$-${#netns[@]}"
  ip netns add "$name"
  netns+=("$name")
  ip -n "$name" link set lo up
  printf '%s\n' "$name"
}

if [ -z "$dist" ]; then
  dist="$tmp/dist"
  start=$(date +%s)
  scripts/release.sh --out "$dist"
  log "release.sh took $(($(date +%s) - start)) s"
fi
tarball="$(ls "$dist"/twill-cni-plugins-linux-amd64-v*.tgz)"
twilld="$(ls "$dist"/twilld-linux-amd64-v* | grep -v '\.sha')"
deb="$(ls "$dist"/twill_*_amd64.deb)"

# 1. Checksums.
for f in "$tarball" "$twilld" "$deb" "$dist/twilld.service"; do
  (cd "$dist" && sha256sum --quiet -c "$(basename "$f").sha256" && sha512sum --quiet -c "$(basename "$f").sha512") \
    || fail "checksums of $(basename "$f")"
done
pass "checksums"

# 2. The tarball alone passes the libcni conformance tests.
plugins="$tmp/plugins"
mkdir "$plugins"
tar -xzf "$tarball" -C "$plugins"
for p in "${PLUGINS[@]}"; do [ -x "$plugins/$p" ] || fail "$p missing from the tarball"; done
build_cnitool
TWILL_BIN_DIR="$plugins" TWILL_BRIDGE_CNI_PATH="$plugins" \
  cargo test -p twill-tests --test loopback --test bridge --test portmap --test flannel -- \
  libcni_add_check_del_with_loopback_conflist libcni_version_lists_every_spec_version \
  libcni_add_check_del_with_pings_between_host_and_pods \
  tcp_and_udp_host_ports_reach_the_pod_from_another_host_the_node_and_the_pod_itself \
  stock_conflist_add_del_through_libcni --test-threads=2 \
  || fail "libcni conformance with CNI_PATH=$plugins"
pass "libcni conformance of the unpacked tarball"

# 3. Debian 11: VERSION, --version and a bridge ADD/DEL from inside the chroot.
root="$(overlay_rootfs "$(ensure_rootfs bullseye)" "$tmp/bullseye")"
mkdir -p "$root/opt/cni/bin"
cp -a "$plugins/." "$root/opt/cni/bin/"
install -m 0755 "$twilld" "$root/usr/local/bin/twilld"
log "glibc in the chroot: $(chroot "$root" ldd --version | head -n 1)"
for p in "${PLUGINS[@]}"; do
  out="$(CNI_COMMAND=VERSION chroot "$root" "/opt/cni/bin/$p" </dev/null)" || fail "$p VERSION in bullseye"
  case "$out" in *'"supportedVersions":'*'"1.1.0"'*) ;; *) fail "$p VERSION answered: $out" ;; esac
  about="$(env -u CNI_COMMAND chroot "$root" "/opt/cni/bin/$p" 2>&1 </dev/null)"
  case "$about" in *"twill) v"*", commit "[0-9a-f]*) ;; *) fail "$p about line: $about" ;; esac
done
chroot "$root" /usr/local/bin/twilld --version | grep -Eq '^twilld v[0-9.]+, commit [0-9a-f]{40}$' \
  || fail "twilld --version in bullseye"
pass "VERSION and about lines in bullseye"
node="$(new_netns relnode)"
pod="$(new_netns relpod)"
conf='{"cniVersion":"1.0.0","name":"relnet","type":"bridge","bridge":"cni-rel0","isGateway":true,
  "ipam":{"type":"host-local","subnet":"10.99.0.0/24","dataDir":"/var/lib/cni/networks"}}'
# cni VERB: the bridge plugin run from the chroot inside the node namespace, as a runtime there would.
cni() {
  CNI_COMMAND="$1" CNI_CONTAINERID=release-test CNI_NETNS="/run/netns/$pod" CNI_IFNAME=eth0 \
    CNI_PATH=/opt/cni/bin ip netns exec "$node" chroot "$root" /opt/cni/bin/bridge <<<"$conf"
}
result="$(cni ADD)" || fail "bridge ADD in bullseye: $result"
ip -n "$pod" -4 addr show eth0 | grep -q 'inet 10\.99\.0\.' || fail "pod has no address after ADD: $result"
ip -n "$node" link show cni-rel0 >/dev/null || fail "no bridge in the node after ADD"
cni DEL >/dev/null || fail "bridge DEL in bullseye"
! ip -n "$pod" link show eth0 >/dev/null 2>&1 || fail "eth0 still in the pod after DEL"
[ -z "$(ls -A "$root/var/lib/cni/networks/relnet" | grep -v -e '^lock$' -e '^last_reserved_ip')" ] \
  || fail "lease left after DEL"
pass "bridge ADD/DEL from bullseye"
unmount_rootfs "$tmp/bullseye"

# 4. Debian 12 with the reference package: dpkg -i, leases, dpkg -r, apt-get install.
root="$(overlay_rootfs "$(ensure_rootfs bookworm containernetworking-plugins)" "$tmp/bookworm")"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
# files: every file and link of the root filesystem but package manager state and logs.
files() {
  (cd "$root" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./run -o -path ./tmp -o -path ./var/lib/dpkg \
    -o -path ./var/log -o -path ./var/cache -o -path ./var/lib/apt \) -prune -o -print | sort)
}
ref_pkg="$(ls "$root"/var/cache/apt/archives/containernetworking-plugins_*.deb | head -n 1)"
[ -n "$ref_pkg" ] || fail "debootstrap kept no containernetworking-plugins package"
files >"$tmp/files.before"
ipam() { # ipam VERB CONTAINER: host-local as installed in /usr/lib/cni
  in_root env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$pod" CNI_IFNAME=eth0 \
    CNI_PATH=/usr/lib/cni /usr/lib/cni/host-local \
    <<<'{"cniVersion":"1.0.0","name":"leases","ipam":{"type":"host-local","subnet":"10.98.0.0/24"}}'
}
first="$(ipam ADD before-upgrade)" || fail "reference host-local ADD: $first"
first_ip="$(sed -n 's/.*"address":"\([0-9.]*\)\/.*/\1/p' <<<"$first")"
[ -f "$root/var/lib/cni/networks/leases/$first_ip" ] || fail "no lease file for $first_ip"
cp "$deb" "$root/tmp/twill.deb"
in_root dpkg -i /tmp/twill.deb || fail "dpkg -i over containernetworking-plugins"
in_root dpkg-query -W -f='${Status}' containernetworking-plugins 2>/dev/null | grep -q 'install ok installed' \
  && fail "containernetworking-plugins still installed after dpkg -i"
env -u CNI_COMMAND chroot "$root" /usr/lib/cni/bridge 2>&1 </dev/null | grep -q '(twill)' \
  || fail "/usr/lib/cni/bridge is not ours after dpkg -i"
for p in "${PLUGINS[@]}"; do
  [ "$(readlink "$root/opt/cni/bin/$p")" = "/usr/lib/cni/$p" ] || fail "/opt/cni/bin/$p is not our link"
done
[ -f "$root/lib/systemd/system/twilld.service" ] && [ -x "$root/usr/bin/twilld" ] \
  && [ -f "$root/usr/share/man/man8/twilld.8.gz" ] || fail "twilld, its unit or its man page not installed"
second="$(ipam ADD after-upgrade)" || fail "our host-local ADD: $second"
grep -q "\"$first_ip/" <<<"$second" && fail "our host-local handed out $first_ip, leased by the reference"
ipam DEL before-upgrade >/dev/null || fail "our host-local DEL of the reference's lease"
[ ! -e "$root/var/lib/cni/networks/leases/$first_ip" ] || fail "the reference's lease survived our DEL"
ipam DEL after-upgrade >/dev/null || fail "our host-local DEL"
pass "dpkg -i replaces the reference; its leases stay valid"
in_root dpkg -r twill || fail "dpkg -r twill"
files >"$tmp/files.removed"
# Only the reference's files (and the lease directory the test made) may differ from before.
dpkg-deb -c "$ref_pkg" | awk '{print $6}' | sed 's|/$||' | sort >"$tmp/ref.files"
comm -3 "$tmp/files.before" "$tmp/files.removed" | sed 's/^\t//' | grep -v -x -F -f "$tmp/ref.files" \
  | grep -v '^\./var/lib/cni' >"$tmp/diff" || true
[ ! -s "$tmp/diff" ] || { cat "$tmp/diff" >&2; fail "dpkg -r left or removed files"; }
pass "dpkg -r restores a clean state"
cp "$ref_pkg" "$root/tmp/"
in_root apt-get install -y -q --no-install-recommends "/tmp/$(basename "$ref_pkg")" \
  || fail "apt-get install containernetworking-plugins"
env -u CNI_COMMAND chroot "$root" /usr/lib/cni/bridge 2>&1 </dev/null | grep -q 'twill' \
  && fail "/usr/lib/cni/bridge is still ours"
files >"$tmp/files.after"
comm -3 "$tmp/files.before" "$tmp/files.after" | grep -v '^\s*\./var/lib/cni' >"$tmp/diff" || true
[ ! -s "$tmp/diff" ] || { cat "$tmp/diff" >&2; fail "the reference reinstalled does not give the same files"; }
pass "apt-get install containernetworking-plugins brings the reference back"
