#!/usr/bin/env bash
# Tests the release artifacts as a node operator gets them (test.sh runs it as its release step):
#   1. scripts/release.sh builds them from a clean clone; every .sha256/.sha512 checks out.
#   2. The tarball unpacked into an empty directory passes the libcni conformance tests (loopback,
#      bridge + host-local + portmap, flannel) with CNI_PATH pointing there and nowhere else.
#   3. In a Debian 11 (bullseye) root filesystem (another, older C library than the build machine's) the binaries answer
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

PLUGINS=(bridge loopback portmap bandwidth firewall flannel host-local ptp tuning static sbr macvlan host-device tap dhcp)
tmp="$(mktemp -d /tmp/twill-release-test.XXXXXX)"
netns=()
pids=()
cleanup() {
  local ns pid
  for pid in "${pids[@]+"${pids[@]}"}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]+"${pids[@]}"}"; do wait "$pid" 2>/dev/null || true; done
  unmount_rootfs "$tmp/bullseye"
  unmount_rootfs "$tmp/bookworm"
  for ns in "${netns[@]+"${netns[@]}"}"; do ip netns delete "$ns" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
pass() { printf 'ok: %s\n' "$*"; }

# new_netns PREFIX: sets made to a new namespace named as the tests name theirs (tw-<prefix>-<pid>-<n>), so
# test.sh's stale namespace sweep knows it. Not in a subshell: the cleanup needs the list.
new_netns() {
  made="tw-$1-$$-${#netns[@]}"
  ip netns add "$made"
  netns+=("$made")
  ip -n "$made" link set lo up
}

# hold_netns NAME: starts a process sleeping in namespace NAME (killed by the cleanup) and sets held to
# /proc/<its pid>/ns/net: the namespace's path inside a chroot with its own /proc.
hold_netns() {
  ip netns exec "$1" sleep 3600 &
  pids+=("$!")
  held="/proc/$!/ns/net"
  local _
  for _ in $(seq 50); do
    [ "$(readlink "$held" 2>/dev/null)" = "$(ip netns exec "$1" readlink /proc/self/ns/net)" ] && return 0
    sleep 0.1
  done
  fail "no process in namespace $1"
}

if [ -z "$dist" ]; then
  dist="$tmp/dist"
  start=$(date +%s)
  scripts/release.sh --out "$dist"
  log "release.sh took $(($(date +%s) - start)) s"
fi
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
tarball="$dist/twill-cni-plugins-linux-amd64-v$version.tgz"
twilld="$dist/twilld-linux-amd64-v$version"
deb="$dist/twill_${version}-1_amd64.deb"
for f in "$tarball" "$twilld" "$deb"; do [ -f "$f" ] || fail "$f is missing"; done

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
# How they are linked (scripts/lib/musl-link.sh): static, stripped, relocations packed; twilld by lld, with the
# function order of overlay-daemon/link-order.txt (the linker script refuses a list that no longer matches).
for b in "${PLUGINS[@]/#/$plugins/}" "$twilld"; do
  sections="$(readelf -SW "$b")" segments="$(readelf -lW "$b")"
  ! grep -q 'program interpreter' <<<"$segments" || fail "$(basename "$b") is not static"
  ! grep -q ' \.symtab ' <<<"$sections" || fail "$(basename "$b") is not stripped"
  grep -q ' \.relr\.dyn ' <<<"$sections" || fail "$(basename "$b") has no packed relocations"
done
grep -q 'Linker: LLD' <<<"$(readelf -p .comment "$twilld")" || fail "twilld was not linked by lld (no function order)"
pass "static, stripped, packed relocations; twilld linked in function order"
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
  case "$about" in *"(twill)"*" v"[0-9]*", commit "[0-9a-f]*) ;; *) fail "$p about line: $about" ;; esac
done
chroot "$root" /usr/local/bin/twilld --version | grep -Eq '^twilld v[0-9.]+, commit [0-9a-f]{40}$' \
  || fail "twilld --version in bullseye"
pass "VERSION and about lines in bullseye"
new_netns relnode
node="$made"
new_netns relpod
pod="$made"
hold_netns "$pod"
pod_path="$held"
conf='{"cniVersion":"1.0.0","name":"relnet","type":"bridge","bridge":"cni-rel0","isGateway":true,
  "ipam":{"type":"host-local","subnet":"10.99.0.0/24","dataDir":"/var/lib/cni/networks"}}'
# cni VERB: the bridge plugin run from the chroot inside the node namespace, as a runtime there would.
cni() {
  CNI_COMMAND="$1" CNI_CONTAINERID=release-test CNI_NETNS="$pod_path" CNI_IFNAME=eth0 \
    CNI_PATH=/opt/cni/bin ip netns exec "$node" chroot "$root" /opt/cni/bin/bridge <<<"$conf"
}
result="$(cni ADD)" || fail "bridge ADD in bullseye: $result"
ip -n "$pod" -4 addr show eth0 2>/dev/null | grep -- 'inet 10\.99\.0\.' >/dev/null || fail "pod has no address after ADD: $result"
ip -n "$node" link show cni-rel0 >/dev/null 2>&1 || fail "no bridge in the node after ADD"
cni DEL >/dev/null || fail "bridge DEL in bullseye"
! ip -n "$pod" link show eth0 >/dev/null 2>&1 || fail "eth0 still in the pod after DEL"
! find "$root/var/lib/cni/networks/relnet" -name '10.*' | grep -- . >/dev/null || fail "lease left after DEL"
pass "bridge ADD/DEL from bullseye"

# twilld from the chroot reaches an etcd named by host name: its static musl resolves `localhost` through
# /etc/hosts (a node has one; debootstrap makes none) without loading the chroot's NSS modules.
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
ip -n "$node" link add und0 type veth peer name und1
ip -n "$node" link set und1 up
ip -n "$node" addr add 192.0.2.10/24 dev und0
ip -n "$node" link set und0 up
ip netns exec "$node" etcd --name twill-release-test --data-dir "$tmp/etcd" \
  --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster twill-release-test=http://127.0.0.1:23800 >"$tmp/etcd.log" 2>&1 &
etcd_pid=$!
pids+=("$etcd_pid")
for _ in $(seq 100); do
  ip netns exec "$node" etcdctl --endpoints=http://127.0.0.1:23790 put /coreos.com/network/config \
    '{"Network":"10.97.0.0/16","Backend":{"Type":"vxlan"}}' >/dev/null 2>&1 && break
  sleep 0.1
done
ip netns exec "$node" chroot "$root" /usr/local/bin/twilld --etcd-endpoints=http://localhost:23790 \
  --iface=und0 --subnet-file=/run/subnet.env --node-name=release-test >"$tmp/twilld.log" 2>&1 &
twilld_pid=$!
pids+=("$twilld_pid")
for _ in $(seq 100); do [ -s "$root/run/subnet.env" ] && break; sleep 0.1; done
kill "$twilld_pid" "$etcd_pid" 2>/dev/null || true
wait "$twilld_pid" "$etcd_pid" 2>/dev/null || true
grep -q '^FLANNEL_SUBNET=10\.97\.' "$root/run/subnet.env" 2>/dev/null \
  || { cat "$tmp/twilld.log" >&2; fail "twilld in bullseye got no lease from etcd at localhost"; }
pass "twilld in bullseye reaches etcd at http://localhost:23790"
unmount_rootfs "$tmp/bullseye"

# 4. Debian 12 with the reference package: dpkg -i, leases, dpkg -r, apt-get install.
root="$(overlay_rootfs "$(ensure_rootfs bookworm containernetworking-plugins)" "$tmp/bookworm")"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
# files: every file and link of the root filesystem but package manager state and logs.
files() {
  (cd "$root" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./run -o -path ./tmp -o -path ./var/lib/dpkg \
    -o -path ./var/log -o -path ./var/cache -o -path ./var/lib/apt \) -prune -o -print | sort)
}
ref_pkg="$(find "$root/var/cache/apt/archives" -name 'containernetworking-plugins_*.deb' | head -n 1)"
[ -n "$ref_pkg" ] || fail "debootstrap kept no containernetworking-plugins package"
files >"$tmp/files.before"
ipam() { # ipam VERB CONTAINER: host-local as installed in /usr/lib/cni
  in_root env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="$pod_path" CNI_IFNAME=eth0 \
    CNI_PATH=/usr/lib/cni /usr/lib/cni/host-local \
    <<<'{"cniVersion":"1.0.0","name":"leases","ipam":{"type":"host-local","subnet":"10.98.0.0/24"}}'
}
first="$(ipam ADD before-upgrade)" || fail "reference host-local ADD: $first"
first_ip="$(sed -n 's/.*"address": *"\([0-9.]*\)\/.*/\1/p' <<<"$first")"
[ -f "$root/var/lib/cni/networks/leases/$first_ip" ] || fail "no lease file for $first_ip"
cp "$deb" "$root/tmp/twill.deb"
in_root dpkg -i /tmp/twill.deb || fail "dpkg -i over containernetworking-plugins"
in_root dpkg-query -W -f="\${Status}" containernetworking-plugins 2>/dev/null | grep -- 'install ok installed' >/dev/null \
  && fail "containernetworking-plugins still installed after dpkg -i"
env -u CNI_COMMAND chroot "$root" /usr/lib/cni/bridge 2>&1 </dev/null | grep -- '(twill)' >/dev/null \
  || fail "/usr/lib/cni/bridge is not ours after dpkg -i"
for p in "${PLUGINS[@]}"; do
  [ "$(readlink "$root/opt/cni/bin/$p")" = "/usr/lib/cni/$p" ] || fail "/opt/cni/bin/$p is not our link"
done
for f in lib/systemd/system/twilld.service usr/bin/twilld usr/share/man/man8/twilld.8.gz; do
  [ -f "$root/$f" ] || fail "/$f not installed"
done
second="$(ipam ADD after-upgrade)" || fail "our host-local ADD: $second"
grep -q "\"$first_ip/" <<<"$second" && fail "our host-local handed out $first_ip, leased by the reference"
ipam DEL before-upgrade >/dev/null || fail "our host-local DEL of the reference's lease"
[ ! -e "$root/var/lib/cni/networks/leases/$first_ip" ] || fail "the reference's lease survived our DEL"
ipam DEL after-upgrade >/dev/null || fail "our host-local DEL"
pass "dpkg -i replaces the reference; its leases stay valid"
in_root dpkg -r twill || fail "dpkg -r twill"
files >"$tmp/files.removed"
# Only the reference's files (and the lease directory the test made) may differ from before.
# With merged /usr, the package's ./lib/... is found as ./usr/lib/...
dpkg-deb -c "$ref_pkg" | awk '{print $6}' | sed -e 's|/$||' -e 'p' -e 's|^\./lib/|./usr/lib/|' | sort -u >"$tmp/ref.files"
comm -3 "$tmp/files.before" "$tmp/files.removed" | sed 's/^\t//' | grep -v -x -F -f "$tmp/ref.files" \
  | grep -v '^\./var/lib/cni' >"$tmp/diff" || true
[ ! -s "$tmp/diff" ] || { cat "$tmp/diff" >&2; fail "dpkg -r left or removed files"; }
pass "dpkg -r restores a clean state"
cp "$ref_pkg" "$root/tmp/"
in_root apt-get install -y -q --no-install-recommends "/tmp/$(basename "$ref_pkg")" \
  || fail "apt-get install containernetworking-plugins"
env -u CNI_COMMAND chroot "$root" /usr/lib/cni/bridge 2>&1 </dev/null | grep -- 'twill' >/dev/null \
  && fail "/usr/lib/cni/bridge is still ours"
files >"$tmp/files.after"
comm -3 "$tmp/files.before" "$tmp/files.after" | grep -v '^\s*\./var/lib/cni' >"$tmp/diff" || true
[ ! -s "$tmp/diff" ] || { cat "$tmp/diff" >&2; fail "the reference reinstalled does not give the same files"; }
pass "apt-get install containernetworking-plugins brings the reference back"
