//! Shared by the twilld integration tests (`overlay.rs`, `overlay_etcd.rs`): a namespaced cluster with etcd
//! in the switch namespace, and small helpers. Not a test target itself (a subdirectory module).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::Duration;

use twill_tests::cluster::{
    assert_pods_reach, http_get, wait_until, Node, Pod, Switch, Twilld, TwilldArgs,
};
use twill_tests::etcd::Etcd;

pub const NET_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
pub const CONFIG_KEY: &str = "/coreos.com/network/config";
pub const SUBNETS: &str = "/coreos.com/network/subnets/";
pub const READY: Duration = Duration::from_secs(20);
pub const HEALTH_PORT: u16 = 8471;

/// Fields drop in order: daemons, then nodes (namespaces), then etcd, then the switch.
pub struct Cluster {
    pub daemons: Vec<Twilld>,
    pub nodes: Vec<Node>,
    pub etcd: Etcd,
    pub switch: Switch,
    pub resync: f64,
    /// Flags every twilld of this cluster gets besides the usual ones.
    pub extra: Vec<String>,
}

impl Cluster {
    pub fn new(nodes: u8, resync: f64) -> Cluster {
        Cluster::with_flags(nodes, resync, &[])
    }

    pub fn with_flags(nodes: u8, resync: f64, extra: &[&str]) -> Cluster {
        let switch = Switch::new();
        let etcd = switch.start_etcd();
        etcd.put(CONFIG_KEY, NET_CONFIG);
        let mut c = Cluster {
            daemons: Vec::new(),
            nodes: Vec::new(),
            etcd,
            switch,
            resync,
            extra: extra.iter().map(|f| f.to_string()).collect(),
        };
        for _ in 0..nodes {
            c.join();
        }
        c
    }

    pub fn args(&self) -> TwilldArgs {
        TwilldArgs {
            etcd: self.etcd.underlay_endpoint(),
            resync_secs: self.resync,
            // Every node serves health on the same port: each node is its own namespace.
            extra: std::iter::once(format!("--healthz-port={HEALTH_PORT}"))
                .chain(self.extra.iter().cloned())
                .collect(),
        }
    }

    /// Adds a node, starts its twilld and waits until it is ready. Returns its index in `nodes`.
    pub fn join(&mut self) -> usize {
        let node = self.switch.add_node(self.nodes.len() as u8 + 1);
        let d = node.start_twilld(&self.args());
        self.nodes.push(node);
        self.daemons.push(d);
        let i = self.nodes.len() - 1;
        self.wait_ready(i);
        i
    }

    pub fn wait_ready(&self, i: usize) -> (Ipv4Addr, u8) {
        let node = &self.nodes[i];
        if !wait_until(READY, || node.subnet().is_some()) {
            panic!(
                "{} not ready; log:\n{}",
                node.name(),
                self.daemons[i].log_text()
            );
        }
        node.subnet().unwrap_or_else(|| unreachable!())
    }

    pub fn mac(&self, i: usize) -> String {
        self.nodes[i]
            .link_mac("flannel.1")
            .unwrap_or_else(|| panic!("{} has no flannel.1", self.nodes[i].name()))
    }

    /// Whether node `i` has all entries for node `j`.
    pub fn knows(&self, i: usize, j: usize) -> bool {
        let Some((net, len)) = self.nodes[j].subnet() else {
            return false;
        };
        let Some(mac) = self.nodes[j].link_mac("flannel.1") else {
            return false;
        };
        self.nodes[i].has_peer(net, len, &mac, self.nodes[j].underlay_ip)
    }

    pub fn all_know_each_other(&self, among: &[usize]) -> bool {
        among
            .iter()
            .all(|&i| among.iter().filter(|&&j| j != i).all(|&j| self.knows(i, j)))
    }

    pub fn wait_mesh(&self, among: &[usize], timeout: Duration) {
        if !wait_until(timeout, || self.all_know_each_other(among)) {
            panic!(
                "nodes {among:?} did not learn each other within {timeout:?}\n{}",
                self.dump()
            );
        }
    }

    /// Every pod pings every other pod within 10 s each; a failure shows the last ping and the cluster state.
    pub fn assert_pods_reach_each_other(&self, pods: &[Pod]) {
        let pods: Vec<&Pod> = pods.iter().collect();
        assert_pods_reach(&pods, Duration::from_secs(10), || self.dump());
    }

    pub fn dump(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            s.push_str(&format!(
                "--- {} subnet {:?}\nlinks:\n{}routes:\n{}neigh:\n{}fdb:\n{}log:\n{}\n",
                n.name(),
                n.subnet(),
                String::from_utf8_lossy(&n.ns.exec(&["ip", "-br", "addr"]).stdout),
                n.ns.exec(&["ip", "route"])
                    .stdout
                    .iter()
                    .map(|&b| b as char)
                    .collect::<String>(),
                n.ns.exec(&["ip", "neigh", "show", "dev", "flannel.1"])
                    .stdout
                    .iter()
                    .map(|&b| b as char)
                    .collect::<String>(),
                n.fdb("flannel.1"),
                self.daemons
                    .get(i)
                    .map(|d| d.log_text())
                    .unwrap_or_default()
            ));
        }
        s.push_str(&format!(
            "--- etcd subnets: {:?}\n",
            self.etcd.get_prefix(SUBNETS)
        ));
        s
    }
}

/// GET `path` from twilld's health server inside the node; see [`http_get`].
pub fn curl(node: &Node, port: u16, path: &str) -> (String, String) {
    http_get(node, port, path)
}

/// A lease exactly as flanneld writes it (no NodeName), for a node that exists only in etcd.
pub fn flannel_lease(public_ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}
