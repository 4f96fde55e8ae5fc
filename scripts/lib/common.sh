# Shared helpers for twill's scripts. Source it after `set -euo pipefail`.

TWILL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TWILL_TARGET_DIR="${CARGO_TARGET_DIR:-$TWILL_ROOT/target}"
case "$TWILL_TARGET_DIR" in /*) ;; *) TWILL_TARGET_DIR="$TWILL_ROOT/$TWILL_TARGET_DIR" ;; esac

# Everything twill needs on a Debian 12 machine: kernel tools, Debian's Go and libcni sources
# for the libcni driver (GOPATH mode; the upstream modules are built by the machine's own Go, with gcc for
# flanneld's cgo), the reference plugins (the oracle the tests and benches compare against),
# protobuf for etcd-client's build, etcd for the overlay daemon's tests, the container runtimes that drive
# the plugins in the runtime tests (podman with its CNI backend, containerd's CRI; busybox-static is their
# root filesystem; curl, netcat-openbsd and dash go into the Kubernetes e2e test image, whose tests exec
# them), tools for benches/demos, and for releases: help2man (the man page of twilld) and
# debootstrap (the Debian root filesystems the release artifacts are tested in).
TWILL_DEBIAN_PACKAGES=(
  iproute2 nftables iptables
  golang-go golang-github-appc-cni-dev gcc libc6-dev
  containernetworking-plugins
  protobuf-compiler libprotobuf-dev
  etcd-server etcd-client
  podman runc conmon golang-github-containers-common netavark containerd busybox-static
  conntrack iperf3 hyperfine procps psmisc iputils-ping openssl curl netcat-openbsd dash dnsmasq-base systemd
  debootstrap help2man
)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# A script never dies silently: when errexit is about to end it, name the failed command, its status (of
# each pipeline member), where it is and the chain of calls that led there. errtrace carries the trap into
# functions and subshells. Failures the script handles (`|| true`, `if`, `!`, all but the last command of
# an && / || list) never reach the trap; in a `set +e` region (test.sh's step runs commands that way and
# counts their failures itself) the trap stays silent. Command substitutions run without errexit (bash's
# default, kept: inherit_errexit would report failures inside `"$(...)"` arguments whose status bash
# ignores), so a failure there is reported where it ends the script: at the `x="$(...)"` that failed.
twill_on_error() {
  local rc="$1" statuses="$2" cmd="$3" i where
  case "$-" in *e*) ;; *) return 0 ;; esac
  where="${BASH_SOURCE[1]:-$0}:${BASH_LINENO[0]:-?}"
  [ "$statuses" = "$rc" ] && statuses="" || statuses=" (pipeline statuses: $statuses)"
  printf 'error: command failed with exit %s%s at %s: %s\n' "$rc" "$statuses" "$where" "$cmd" >&2
  for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do
    printf '  in %s(), called from %s:%s\n' "${FUNCNAME[$i]}" "${BASH_SOURCE[$((i + 1))]}" "${BASH_LINENO[$i]}" >&2
  done
}
set -o errtrace
trap 'twill_on_error "$?" "${PIPESTATUS[*]}" "$BASH_COMMAND"' ERR

need_root() {
  [ "$(id -u)" -eq 0 ] || die "$1 needs root (network namespaces, links, netfilter); run it as root"
}

# Puts rustup's cargo on PATH when it is not there yet.
ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs)"
}

# Adds rustfmt/clippy when rustup manages the toolchain and they are missing.
ensure_rust_components() {
  local missing=()
  cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
  cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
  if [ "${#missing[@]}" -gt 0 ]; then
    command -v rustup >/dev/null 2>&1 || die "cargo ${missing[*]} missing and rustup not available"
    log "adding rust components: ${missing[*]}"
    rustup component add "${missing[@]}"
  fi
}

# Adds the standard library of a compilation target (e.g. x86_64-unknown-linux-musl) when rustup manages the
# toolchain and it is missing.
ensure_rust_target() {
  [ -d "$(rustc --print sysroot)/lib/rustlib/$1/lib" ] && return 0
  command -v rustup >/dev/null 2>&1 || die "the Rust target $1 is missing and rustup is not available"
  log "adding the Rust target $1"
  rustup target add "$1"
}

package_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# Installs the missing ones among the given Debian packages (one apt-get update, no recommends,
# no prompts, and no services started by maintainer scripts while installing).
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    package_installed "$p" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  need_root "installing ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    # A packaged etcd starting on 127.0.0.1:2379 would only get in the tests' way.
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
  if [ "$rc" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
  fi
  [ "$made_policy" -eq 1 ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get failed installing: ${missing[*]}"
}

# Builds the cnitool-compatible libcni driver where the tests look for it (twill_tests::libcni),
# so the first test does not pay for it and a Go problem shows up as its own step.
build_cnitool() {
  local dir="$TWILL_TARGET_DIR/cnitool"
  mkdir -p "$dir"
  local go
  go="$(upstream_go)"
  GO111MODULE=off GOPATH="/usr/share/gocode:$dir/gopath" GOCACHE="$dir/gocache" GOFLAGS='' GOTOOLCHAIN=local \
    "$go" build -o "$dir/cnitool.tmp.$$" "$TWILL_ROOT/tests/cnitool/main.go" \
    && mv -f "$dir/cnitool.tmp.$$" "$dir/cnitool"
}

# `ip netns add` needs /run/netns; prove namespaces work before any test relies on them.
ensure_netns() {
  mkdir -p /run/netns
  local probe="twill-probe-$$"
  ip netns add "$probe" || die "cannot create network namespaces (ip netns add failed)"
  ip netns delete "$probe"
}

# Best effort: modules the tests use; they may be built in, and a container may not load modules.
load_modules() {
  command -v modprobe >/dev/null 2>&1 || return 0
  local m
  for m in veth bridge vxlan nf_tables nft_chain_nat nf_nat nf_conntrack br_netfilter; do
    modprobe -q "$m" 2>/dev/null || true
  done
}

# Removes namespaces left by test processes that were killed before their Drop guards ran
# (twill_tests::netns names them tw-<prefix>-<pid>-<n>); namespaces of live processes are kept.
clean_stale_namespaces() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    case "$ns" in tw-*) ;; *) continue ;; esac
    pid="$(printf '%s\n' "$ns" | awk -F- '{print $(NF-1)}')"
    case "$pid" in '' | *[!0-9]*) continue ;; esac
    if ! kill -0 "$pid" 2>/dev/null; then
      ip netns delete "$ns" 2>/dev/null && log "removed stale namespace $ns" || true
    fi
  done
}

# shellcheck source=upstream.sh
. "$TWILL_ROOT/scripts/lib/upstream.sh"
