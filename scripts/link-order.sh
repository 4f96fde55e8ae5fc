#!/usr/bin/env bash
# Regenerates overlay-daemon/link-order.txt, the functions a running twilld executes, which
# scripts/lib/musl-link.sh places next to each other when it links the static twilld (docs/architecture.md,
# "Design decisions"). Run it after changes that move twilld's work to other functions: stale entries only cost
# memory, and a list mostly gone stale fails twilld's link.
#
# How: a twilld with symbols, from an ext4 image mounted with readahead off and a cold page cache, so the
# program pages it maps are exactly those it touches (fault-around maps only pages already cached). It starts
# against an etcd on loopback in a scratch network namespace, takes lease puts, an update, a delete, a
# hand-deleted route, its device flapping and full resyncs, then idles. The functions on the text pages it
# mapped, demangled and without their hashes, become the list. Needs root, etcd, etcdctl, nm, mkfs.ext4.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/static.sh
. "$TWILL_ROOT/scripts/lib/static.sh"
cd "$TWILL_ROOT"
need_root "scripts/link-order.sh"
ensure_cargo
ensure_rust_target "$TRIPLE"
ensure_packages musl-tools etcd-server etcd-client e2fsprogs binutils
for tool in etcd etcdctl nm mkfs.ext4 blockdev; do command -v "$tool" >/dev/null || die "$tool is missing"; done

log "building twilld with symbols ($TRIPLE)"
CARGO_PROFILE_RELEASE_STRIP=false cargo build --release --target "$TRIPLE" -p twilld \
  --target-dir "$TWILL_TARGET_DIR/link-order"
bin="$TWILL_TARGET_DIR/link-order/$TRIPLE/release/twilld"

work="$(mktemp -d)"
ns="tw-linkorder-$$"
etcd_pid="" twilld_pid=""
cleanup() {
  [ -z "$twilld_pid" ] || kill "$twilld_pid" 2>/dev/null || true
  [ -z "$etcd_pid" ] || kill "$etcd_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  umount "$work/mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A fresh file system holds the binary; mounting it again leaves none of its pages cached.
truncate -s 256M "$work/fs.img"
mkfs.ext4 -q "$work/fs.img"
mkdir "$work/mnt"
mount -o loop "$work/fs.img" "$work/mnt"
cp "$bin" "$work/mnt/twilld"
umount "$work/mnt"
mount -o loop,ro "$work/fs.img" "$work/mnt"
blockdev --setra 0 "$(findmnt -n -o SOURCE "$work/mnt")"

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add eth0 type veth peer name eth1
ip -n "$ns" addr add 10.251.0.2/24 dev eth0
ip -n "$ns" link set eth0 up
ip -n "$ns" link set eth1 up
ip netns exec "$ns" etcd --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 >"$work/etcd.log" 2>&1 &
etcd_pid=$!
etcdctl() { ip netns exec "$ns" etcdctl --endpoints http://127.0.0.1:2379 "$@" >/dev/null; }
lease() { printf '{"PublicIP":"%s","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}' "$1" "$2"; }
for _ in $(seq 50); do etcdctl endpoint health 2>/dev/null && break; sleep 0.2; done
etcdctl put /coreos.com/network/config '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
etcdctl put /coreos.com/network/subnets/10.244.77.0-24 "$(lease 10.251.0.77 aa:bb:cc:dd:ee:77)"

log "profiling twilld"
ip netns exec "$ns" "$work/mnt/twilld" --etcd-endpoints=http://127.0.0.1:2379 --iface=eth0 \
  --subnet-file="$work/subnet.env" --node-name=n1 --resync=1 --healthz-port=8471 >"$work/twilld.log" 2>&1 &
twilld_pid=$!
for _ in $(seq 50); do [ -s "$work/subnet.env" ] && break; sleep 0.2; done
[ -s "$work/subnet.env" ] || die "twilld did not start: $(tail -3 "$work/twilld.log")"
for k in 1 2 3; do etcdctl put "/coreos.com/network/subnets/10.244.5$k.0-24" "$(lease "10.251.0.1$k" "aa:bb:cc:dd:ee:0$k")"; done
etcdctl put /coreos.com/network/subnets/10.244.51.0-24 "$(lease 10.251.0.21 aa:bb:cc:dd:ee:21)"
etcdctl del /coreos.com/network/subnets/10.244.52.0-24
ip -n "$ns" route del 10.244.53.0/24 2>/dev/null || true
ip -n "$ns" link set flannel.1 down
sleep 1
ip -n "$ns" link set flannel.1 up
ip netns exec "$ns" bash -c 'exec 3<>/dev/tcp/127.0.0.1/8471 && printf "GET /readyz HTTP/1.0\r\n\r\n" >&3 && cat <&3' \
  >/dev/null 2>&1 || true
sleep 12 # full resyncs (every 10th pass at --resync=1), then idle
# The daemon may run as a child of `ip netns exec` or in its place.
pid="$(pgrep -f "^$work/mnt/twilld" | head -1)"
[ -n "$pid" ] || die "twilld exited: $(tail -3 "$work/twilld.log")"

# Pages of the text mapping present in the daemon's page table (pagemap bit 63), as offsets from the load address.
base="$(awk -v f="$work/mnt/twilld" '$6 == f && $3 == "00000000" { print $1; exit }' "/proc/$pid/maps")"
base=$((16#${base%-*}))
text="$(awk -v f="$work/mnt/twilld" '$6 == f && $2 == "r-xp" { print $1; exit }' "/proc/$pid/maps")"
start=$((16#${text%-*})) end=$((16#${text#*-}))
# dd seeks to the mapping's entries; od would read its way there through the whole pagemap.
dd if="/proc/$pid/pagemap" bs=8 skip=$((start / 4096)) count=$(((end - start) / 4096)) status=none |
  od -An -v -t x8 | tr -s ' ' '\n' |
  awk -v s=$((start - base)) 'NF { n++ } NF && substr($1, 1, 1) ~ /[89a-f]/ { print s + (n - 1) * 4096 }' >"$work/pages"
log "$(wc -l <"$work/pages") text pages touched of $(((end - start) / 4096))"
# Functions (address, size, demangled name) overlapping a touched page, first seen first.
nm -S -t d --demangle --defined-only "$bin" |
  awk '$3 ~ /^[tTwW]$/ && NF >= 4 { a = $1; z = $2; sub(/^[^ ]+ [^ ]+ [^ ]+ /, ""); print a "\t" z "\t" $0 }' |
  awk -F '\t' 'NR == FNR { p[$1] = 1; next }
    { for (q = int($1 / 4096) * 4096; q < $1 + $2; q += 4096) if (q in p) { if (!seen[$3]++) print $3; break } }' \
    "$work/pages" - >overlay-daemon/link-order.txt
log "overlay-daemon/link-order.txt: $(wc -l <overlay-daemon/link-order.txt) functions"
