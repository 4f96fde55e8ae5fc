//! Dual-stack and IPv6-only overlay clusters: the switch and nodes of [`crate::cluster`] with an IPv6 underlay
//! next to the IPv4 one (`fd00:250::<index>/64` on every node's `eth0`), twilld or flanneld on each node, and
//! pods added through the real libcni with the stock flannel conflist, so each pod gets an address of every
//! family the network runs. The pod matrix is checked per family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{wait_until, DaemonProcess, Node, Switch, TwilldArgs};
use crate::e2e::NodeCni;
use crate::etcd::Etcd;
use crate::flanneld::FlanneldArgs;
use crate::libcni::LibCni;
use crate::netns::Netns;

pub const CONFIG_KEY: &str = "/coreos.com/network/config";
pub const SUBNETS: &str = "/coreos.com/network/subnets/";
pub const READY: Duration = Duration::from_secs(30);

/// The switch's IPv6 address on `br0`.
pub const SWITCH_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 0xfe);

/// Node `index`'s IPv6 underlay address.
pub fn underlay_ip6(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, u16::from(index))
}

static POD_COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Twilld,
    Flanneld,
}

pub struct DualNode {
    pub process: Option<DaemonProcess>,
    pub kind: Daemon,
    pub cni: NodeCni,
    pub node: Node,
}

pub struct DualPod {
    pub name: String,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub lib: LibCni,
    pub net: String,
    pub ns: Netns,
}

/// Field order is drop order: pods, daemons and nodes, etcd, then the switch.
pub struct DualCluster {
    pub pods: Vec<DualPod>,
    pub nodes: Vec<DualNode>,
    pub etcd: Etcd,
    pub switch: Switch,
    workdir: tempfile::TempDir,
    prefix: String,
    /// Flags every twilld gets besides the usual ones.
    pub twilld_extra: Vec<String>,
}

/// `KEY=value` of a subnet.env text.
pub fn env_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

impl DualCluster {
    /// Switch (with its IPv6 address) and etcd holding `net_config`; no nodes yet.
    pub fn new(prefix: &str, net_config: &str) -> DualCluster {
        crate::bins::require_root();
        let switch = Switch::with_prefix(prefix);
        switch.ns.ip(&[
            "addr",
            "add",
            &format!("{SWITCH_IP6}/64"),
            "dev",
            "br0",
            "nodad",
        ]);
        let etcd = switch.start_etcd();
        etcd.put(CONFIG_KEY, net_config);
        DualCluster {
            pods: Vec::new(),
            nodes: Vec::new(),
            etcd,
            switch,
            workdir: tempfile::Builder::new()
                .prefix(&format!("twill-{prefix}-"))
                .tempdir()
                .unwrap_or_else(|e| panic!("create the cluster's work dir: {e}")),
            prefix: prefix.to_string(),
            twilld_extra: vec!["--ip-masq".into()],
        }
    }

    /// A node with both underlay families, running `kind`; waits for its subnet.env. Returns its position.
    pub fn join(&mut self, kind: Daemon) -> usize {
        let index = self.nodes.iter().map(|n| n.node.index).max().unwrap_or(0) + 1;
        let node = self.switch.add_node(index);
        node.ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", underlay_ip6(index)),
            "dev",
            "eth0",
            "nodad",
        ]);
        node.ns
            .exec_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
        let cni = NodeCni::create(&node, self.workdir.path().join(node.name()));
        self.nodes.push(DualNode {
            process: None,
            kind,
            cni,
            node,
        });
        let i = self.nodes.len() - 1;
        self.start(i);
        self.wait_ready(i);
        i
    }

    /// Starts node `i`'s daemon (none may be running).
    pub fn start(&mut self, i: usize) {
        let etcd = self.etcd.underlay_endpoint();
        let extra = self.twilld_extra.clone();
        let n = &mut self.nodes[i];
        assert!(n.process.is_none());
        n.process = Some(match n.kind {
            Daemon::Twilld => n.node.start_twilld(&TwilldArgs {
                etcd,
                resync_secs: 1.0,
                extra,
            }),
            Daemon::Flanneld => crate::flanneld::start(&n.node, &FlanneldArgs::new(&etcd)),
        });
    }

    pub fn subnet_env(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].node.subnet_file()).unwrap_or_default()
    }

    pub fn wait_ready(&self, i: usize) {
        let ok = wait_until(READY, || {
            env_value(&self.subnet_env(i), "FLANNEL_MTU").is_some()
        });
        assert!(
            ok,
            "{} wrote no subnet.env within {READY:?}\n{}",
            self.nodes[i].node.name(),
            self.logs()
        );
    }

    /// ADDs a pod on node `i` through libcni; returns its position.
    pub fn add_pod(&mut self, i: usize) -> usize {
        let n = &self.nodes[i];
        let name = format!(
            "{}-pod{}",
            n.node.name(),
            POD_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Netns::new(&format!("{}{name}", self.prefix));
        let lib = n
            .cni
            .lib
            .with_container_id(&format!("{}{name}", self.prefix));
        let out = lib.add(&n.cni.net, ns.path());
        assert!(
            out.success(),
            "ADD of {name}: {}\n{}",
            out.describe(),
            self.logs()
        );
        let result = out.json.unwrap_or(Value::Null);
        let (mut v4, mut v6) = (None, None);
        for ip in result["ips"].as_array().into_iter().flatten() {
            let addr = ip["address"].as_str().and_then(|a| a.split('/').next());
            match addr.and_then(|a| a.parse::<IpAddr>().ok()) {
                Some(IpAddr::V4(a)) => v4 = Some(a),
                Some(IpAddr::V6(a)) => v6 = Some(a),
                None => {}
            }
        }
        self.pods.push(DualPod {
            name,
            v4,
            v6,
            lib,
            net: n.cni.net.clone(),
            ns,
        });
        self.pods.len() - 1
    }

    /// Pairs (from, to, address) that do not answer a ping within `timeout`, for the addresses of one family.
    pub fn unreachable(&self, v6: bool, timeout: Duration) -> Vec<String> {
        let mut failed = Vec::new();
        for a in &self.pods {
            for b in &self.pods {
                if a.name == b.name {
                    continue;
                }
                let to = if v6 {
                    b.v6.map(IpAddr::V6)
                } else {
                    b.v4.map(IpAddr::V4)
                };
                let Some(to) = to else {
                    failed.push(format!("{} has no {} address", b.name, family(v6)));
                    continue;
                };
                let ok = wait_until(timeout, || {
                    a.ns.exec(&["ping", "-c", "1", "-W", "1", &to.to_string()])
                        .status
                        .success()
                });
                if !ok {
                    failed.push(format!("{} -> {} ({to})", a.name, b.name));
                }
            }
        }
        failed
    }

    /// Every pod reaches every other pod over `v6` (or IPv4); panics with the state otherwise.
    pub fn assert_matrix(&self, v6: bool) {
        let failed = self.unreachable(v6, Duration::from_secs(10));
        assert!(
            failed.is_empty(),
            "{} pod matrix incomplete: {failed:?}\n{}",
            family(v6),
            self.dump()
        );
    }

    /// The etcd keys under `subnets/` with their values.
    pub fn leases(&self) -> Vec<(String, String)> {
        self.etcd.get_prefix(SUBNETS)
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let log = n.process.as_ref().map(|p| p.log_text()).unwrap_or_default();
            s.push_str(&format!(
                "--- {} ({:?}) log:\n{log}\n",
                n.node.name(),
                n.kind
            ));
        }
        s
    }

    pub fn dump(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            s.push_str(&format!(
                "--- {} subnet.env:\n{}addrs:\n{}v6 routes:\n{}v6 neigh:\n{}",
                n.node.name(),
                self.subnet_env(i),
                n.node.ns.ip(&["-br", "addr"]),
                n.node.ns.ip(&["-6", "route"]),
                n.node.ns.ip(&["-6", "neigh"]),
            ));
        }
        s.push_str(&format!("--- leases: {:?}\n", self.leases()));
        s.push_str(&self.logs());
        s
    }
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}
