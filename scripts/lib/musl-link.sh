#!/usr/bin/env bash
# The linker of the static (musl) builds, named in .cargo/config.toml: the C compiler, as rustc would call it, with
# packed relative relocations (`-z pack-relative-relocs`). A static-pie relocates itself at start: with the
# classic table of one 24-byte entry per pointer (twilld: 430 KB), every exec reads all of it; packed, it is
# bitmaps of a few KB.
#
# twilld is linked with lld and the function order of overlay-daemon/link-order.txt: the functions a running
# twilld executes (start-up, lease events, resyncs, idle) placed together at the start of the text. The kernel maps
# program text 64 KB at a time around each page touched (fault-around), so with those functions spread over the
# whole text a running twilld kept most of it resident (docs/architecture.md, "Design decisions"). The list holds
# demangled names without their hashes, so it survives a new compiler or dependency; scripts/link-order.sh
# regenerates it, and the link fails when under half of its names are found. Without lld or the list, or with
# arguments in a response file, twilld is linked as the rest.
set -euo pipefail
relocs=-Wl,-z,pack-relative-relocs
out="" prev=""
for a in "$@"; do
  [ "$prev" = -o ] && out="$a"
  prev="$a"
done
order="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/overlay-daemon/link-order.txt"
case "${out##*/}" in twilld-*) ;; *) exec cc "$@" "$relocs" ;; esac
[[ " $* " != *" @"* ]] || exec cc "$@" "$relocs"
[ -f "$order" ] || exec cc "$@" "$relocs"
command -v rustc >/dev/null || exec cc "$@" "$relocs"
host="$(rustc -vV | sed -n 's/^host: //p')"
gcc_ld="$(rustc --print sysroot)/lib/rustlib/$host/bin/gcc-ld"
[ -x "$gcc_ld/ld.lld" ] || exec cc "$@" "$relocs"

# The inputs whose functions the list may name: object files, archives, and the archives of -l options (musl's
# libc.a among them) found in the -L directories.
objects=() dirs=() libs=()
prev=""
for a in "$@"; do
  case "$a" in
    *.o | *.a | *.rlib) [ -f "$a" ] && objects+=("$a") ;;
    -L?*) dirs+=("${a#-L}") ;;
    -l?*) libs+=("${a#-l}") ;;
  esac
  [ "$prev" = -L ] && dirs+=("$a")
  prev="$a"
done
for l in "${libs[@]+"${libs[@]}"}"; do
  for d in "${dirs[@]+"${dirs[@]}"}"; do
    if [ -f "$d/lib$l.a" ]; then
      objects+=("$d/lib$l.a")
      break
    fi
  done
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The same symbols twice, mangled and demangled, line for line; the ordering file takes the mangled names of
# those whose demangled name is on the list. nm's complaints (an rlib's metadata member is no object) are no
# reason to fail the link: both runs skip the same members.
functions() {
  { nm --defined-only "$@" "${objects[@]}" 2>/dev/null || true; } |
    awk '$2 ~ /^[tTwW]$/ { sub(/^[^ ]+ [^ ]+ /, ""); print }'
}
functions >"$tmp/mangled"
functions --demangle >"$tmp/demangled"
paste -d '\t' "$tmp/demangled" "$tmp/mangled" |
  awk -F '\t' 'NR == FNR { want[$0] = 1; next } $1 in want { print $2; found[$1] = 1 }
    END { n = 0; for (f in found) n++; print n > "/dev/stderr" }' "$order" - >"$tmp/order" 2>"$tmp/found"
# A list most of whose names the build no longer has (a new compiler's demangling, a redesign) orders nothing:
# fail loudly rather than ship a twilld that silently lost it.
listed="$(grep -c . "$order")" found="$(cat "$tmp/found")"
if [ $((found * 2)) -lt "$listed" ]; then
  echo "musl-link.sh: only $found of the $listed functions of overlay-daemon/link-order.txt are in twilld;" \
    "regenerate the list with scripts/link-order.sh" >&2
  exit 1
fi
cc "$@" "$relocs" -B"$gcc_ld" -fuse-ld=lld -Wl,--symbol-ordering-file="$tmp/order" -Wl,--no-warn-symbol-ordering
