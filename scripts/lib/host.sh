# Snapshots of the host's network namespace and of what a demo cluster leaves behind, to prove a run added
# nothing. Source it after lib/common.sh. Each helper prints one item per line and succeeds when there is
# nothing to print: an empty rule set, no namespace and no process are the normal outcome on a fresh machine,
# so no helper may let a filter's "no match" status (grep's 1, pgrep's 1) fail it under pipefail.
# tests/tests/scripts.rs runs them in a fresh network namespace, where every rule set is empty.

# Names of the links of the current network namespace, sorted.
host_links() { ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | sort; }

# Policy rules, nftables ruleset and iptables rules of the current network namespace, without counters.
# A tool that fails (rather than finding nothing) fails the snapshot: a comparison against half a snapshot
# would report rules as added or removed that never were.
host_rules() {
  {
    ip -4 rule show
    ip -6 rule show
    nft list ruleset | sed -E 's/packets [0-9]+ bytes [0-9]+//'
    # Only the rules: chain policies carry counters, and iptables-save prints comment lines with dates.
    iptables-save 2>/dev/null | awk '/^-A /'
    ip6tables-save 2>/dev/null | awk '/^-A /'
  } | sort -u
}

# Network namespaces whose name starts with $1.
namespaces_named() { ip netns list | awk -v p="$1" 'index($1, p) == 1 { print $1 }'; }

# Processes of the demo cluster that are still running: the supervisor, twilld, etcd and iperf3 name the
# state directory $1 on their command line (--state, --subnet-file, --data-dir).
processes_naming() {
  local rc=0 out
  out="$(pgrep -af -- "$1")" || rc=$?
  # pgrep: 1 is "no process matched", anything above is an error.
  [ "$rc" -le 1 ] || return "$rc"
  printf '%s\n' "$out" | awk '/twill-cluster|twilld|etcd|iperf3/'
}

# Those of the given paths that exist (an unmatched glob stays a pattern and does not exist).
existing_paths() {
  local p
  for p in "$@"; do
    if [ -e "$p" ] || [ -L "$p" ]; then printf '%s\n' "$p"; fi
  done
}

# What a demo cluster with state directory $1 leaves when it is not (fully) down: its namespaces, processes,
# state directory and temp files (scripts/demo.sh names them tw-twdemo-*).
demo_leftovers() {
  namespaces_named tw-twdemo- | sed 's/^/namespace: /'
  processes_naming "$1" | sed 's/^/process: /'
  existing_paths "$1" /tmp/tw-twdemo-* | sed 's/^/file: /'
}
