//! Leftover checks: what a node holds for pods (veths, leases, saved configs, cached results, rules), to
//! compare before and after a workload.

use std::collections::BTreeSet;
use std::path::Path;

use super::{exec_in, ip_n, ClusterState};

/// What a node holds for pods, to compare before and after: host-side veths, host-local leases, flannel's
/// saved delegate configs, libcni's cached results, and policy rules + nftables + iptables rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub node: String,
    pub veths: BTreeSet<String>,
    pub leases: BTreeSet<String>,
    pub saved: BTreeSet<String>,
    pub cached: BTreeSet<String>,
    pub rules: BTreeSet<String>,
}

impl NodeSnapshot {
    /// Everything present now and not in `before`, as "node1: veth vethab12cd".
    pub fn leaked_since(&self, before: &NodeSnapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (what, now, then) in [
            ("veth", &self.veths, &before.veths),
            ("host-local lease", &self.leases, &before.leases),
            ("saved delegate config", &self.saved, &before.saved),
            ("cached result", &self.cached, &before.cached),
            ("rule", &self.rules, &before.rules),
        ] {
            out.extend(
                now.difference(then)
                    .map(|l| format!("{}: {what} {l}", self.node)),
            );
        }
        out
    }
}

fn dir_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// nft/iptables lines without their counters (which move with traffic).
fn strip_counters(line: &str) -> String {
    let mut out = Vec::new();
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if (w == "packets" || w == "bytes")
            && words.peek().is_some_and(|n| n.parse::<u64>().is_ok())
        {
            words.next();
            continue;
        }
        out.push(w);
    }
    out.join(" ")
}

impl ClusterState {
    /// What node `name` holds for pods right now.
    pub fn snapshot(&self, name: &str) -> NodeSnapshot {
        let Some(n) = self.node(name) else {
            return NodeSnapshot::default();
        };
        let veths = ip_n(&n.ns, &["-o", "link", "show", "type", "veth"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|s| s.split('@').next().unwrap_or(s).to_string())
            .filter(|s| s != "eth0")
            .collect();
        let leases = dir_names(&n.cni_dir.join("networks").join(&n.net))
            .into_iter()
            .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
            .collect();
        let mut rules: BTreeSet<String> = ip_n(&n.ns, &["rule", "show"])
            .lines()
            .map(|l| format!("ip rule: {l}"))
            .collect();
        if let Ok(nft) = exec_in(&n.ns, &["nft", "list", "ruleset"]) {
            rules.extend(
                nft.lines()
                    .map(strip_counters)
                    .filter(|l| !l.is_empty() && l != "}")
                    .map(|l| format!("nft: {l}")),
            );
        }
        for tool in ["iptables-save", "ip6tables-save"] {
            if let Ok(out) = exec_in(&n.ns, &[tool]) {
                rules.extend(
                    out.lines()
                        .filter(|l| l.starts_with("-A"))
                        .map(|l| format!("{tool}: {l}")),
                );
            }
        }
        NodeSnapshot {
            node: n.name.clone(),
            veths,
            leases,
            saved: dir_names(&n.cni_dir.join("flannel")),
            cached: dir_names(&n.cni_dir.join("cache").join("results")),
            rules,
        }
    }

    pub fn snapshots(&self) -> Vec<NodeSnapshot> {
        self.nodes.iter().map(|n| self.snapshot(&n.name)).collect()
    }
}
