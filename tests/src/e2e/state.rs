//! The serialisable half of the cluster: [`ClusterState`] describes a running cluster (names, addresses,
//! directories) and carries every check (lease table, pod-to-pod matrix, host-port check, throughput,
//! leftovers per node), so a test's in-process cluster and `twill-cluster report` (another process) run the
//! same checks.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::traffic::{fetch_from, iperf, Greeter};
use super::{exec_in, ip_n, ping_from, wait_none_missing, POD_PORT, SUBNETS_PREFIX};

/// What the supervisor writes to `<state>/cluster.json` and `report` reads back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    pub prefix: String,
    pub switch_ns: String,
    /// etcd's endpoint inside the switch namespace.
    pub etcd_endpoint: String,
    pub supervisor_pid: Option<u32>,
    pub workdir: PathBuf,
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<PodInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub ns: String,
    pub underlay_ip: Ipv4Addr,
    pub subnet_file: PathBuf,
    pub twilld_log: PathBuf,
    pub cni_dir: PathBuf,
    pub net: String,
    pub twilld_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodInfo {
    pub name: String,
    pub node: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub host_port: Option<u16>,
}

/// One lease record from etcd (docs/architecture.md, flannel contracts, etcd layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Addr,
    pub len: u8,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: String,
    pub node_name: Option<String>,
}

/// A row of the lease table: what etcd says next to what the node's kernel has.
#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub lease: Lease,
    /// The node whose daemon holds the lease, if it is one of ours.
    pub node: Option<String>,
    /// MAC of that node's `flannel.1`.
    pub kernel_mac: Option<String>,
    /// The subnet in that node's subnet.env.
    pub subnet_env: Option<String>,
}

/// Pod-to-pod reachability: `cells[i][j]` = pod i pinged pod j (`None` on the diagonal).
#[derive(Debug, Clone)]
pub struct Matrix {
    pub pods: Vec<PodInfo>,
    pub cells: Vec<Vec<Option<bool>>>,
    pub elapsed: Duration,
}

impl Matrix {
    pub fn is_full(&self) -> bool {
        self.cells.iter().flatten().all(|c| *c != Some(false))
    }

    pub fn reachable(&self) -> (usize, usize) {
        let cells: Vec<bool> = self.cells.iter().flatten().filter_map(|c| *c).collect();
        (cells.iter().filter(|c| **c).count(), cells.len())
    }

    /// "node1-pod1 (10.244.3.2) -> node2-pod2 (10.244.7.3)" for every failed cell.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, row) in self.cells.iter().enumerate() {
            for (j, c) in row.iter().enumerate() {
                if *c == Some(false) {
                    let (a, b) = (&self.pods[i], &self.pods[j]);
                    out.push(format!("{} ({}) -> {} ({})", a.name, a.ip, b.name, b.ip));
                }
            }
        }
        out
    }

    pub fn render(&self) -> String {
        let label = |p: &PodInfo| p.name.replace("node", "n").replace("-pod", "p");
        let w = self
            .pods
            .iter()
            .map(|p| label(p).len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!("{:<w$} {:<15}", "from\\to", "");
        for p in &self.pods {
            out.push_str(&format!(" {:>w$}", label(p)));
        }
        out.push('\n');
        for (i, row) in self.cells.iter().enumerate() {
            let p = &self.pods[i];
            out.push_str(&format!("{:<w$} {:<15}", label(p), p.ip));
            for c in row {
                let s = match c {
                    None => "-",
                    Some(true) => "ok",
                    Some(false) => "FAIL",
                };
                out.push_str(&format!(" {s:>w$}"));
            }
            out.push('\n');
        }
        let (ok, all) = self.reachable();
        out.push_str(&format!(
            "{ok}/{all} pod pairs reachable (ICMP echo, checked in {:.1}s)\n",
            self.elapsed.as_secs_f64()
        ));
        out
    }
}

/// One host-port probe: a client (a node, or a pod on it) connects to `<node IP>:<hostPort>` of another node.
#[derive(Debug, Clone)]
pub struct PortCheck {
    pub from: String,
    pub target: String,
    pub answer: Result<String, String>,
    pub expected: String,
}

impl PortCheck {
    pub fn ok(&self) -> bool {
        self.answer
            .as_deref()
            .is_ok_and(|a| a.trim() == self.expected)
    }
}

/// iperf3 runs per path in [`ClusterState::throughput`] (alternating overlay and underlay).
pub const THROUGHPUT_ROUNDS: usize = 2;

/// iperf3 results, bits per second.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub overlay_bps: f64,
    pub underlay_bps: f64,
    pub overlay_path: String,
    pub underlay_path: String,
    pub seconds: u32,
}

impl Throughput {
    pub fn render(&self) -> String {
        format!(
            "pod -> pod across nodes (VXLAN) {:>8.2} Gbit/s   {}\n\
             node -> node (raw underlay)    {:>8.2} Gbit/s   {}\n\
             overlay / underlay             {:>8.0} %        (iperf3, one TCP stream, {} s, best of {THROUGHPUT_ROUNDS} alternating runs)\n",
            self.overlay_bps / 1e9,
            self.overlay_path,
            self.underlay_bps / 1e9,
            self.underlay_path,
            100.0 * self.overlay_bps / self.underlay_bps.max(1.0),
            self.seconds
        )
    }
}

impl ClusterState {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The same cluster without node `name` and its pods (checks among the survivors of a node loss).
    pub fn without_node(&self, name: &str) -> ClusterState {
        let mut s = self.clone();
        s.nodes.retain(|n| n.name != name);
        s.pods.retain(|p| p.node != name);
        s
    }

    /// `etcdctl` inside the switch namespace.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = vec![
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            "--endpoints",
            &self.etcd_endpoint,
            "--dial-timeout",
            "2s",
            "--command-timeout",
            "5s",
        ];
        cmd.extend_from_slice(args);
        exec_in(&self.switch_ns, &cmd)
    }

    /// Every lease in etcd, parsed (docs/architecture.md, flannel contracts, etcd layout); keys of other shapes are
    /// skipped.
    pub fn leases(&self) -> Result<Vec<Lease>, String> {
        let out = self.etcdctl(&["get", "--prefix", SUBNETS_PREFIX])?;
        let lines: Vec<&str> = out.lines().collect();
        let mut leases = Vec::new();
        for kv in lines.chunks(2) {
            let [key, value] = kv else { continue };
            let Some((net, len)) = key
                .strip_prefix(SUBNETS_PREFIX)
                .and_then(|k| k.split_once('-'))
            else {
                continue;
            };
            let (Ok(subnet), Ok(len)) = (net.parse(), len.parse()) else {
                continue;
            };
            let v: Value = serde_json::from_str(value).unwrap_or(Value::Null);
            leases.push(Lease {
                subnet,
                len,
                public_ip: v["PublicIP"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
                vtep_mac: v["BackendData"]["VtepMAC"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                node_name: v["NodeName"].as_str().map(str::to_string),
            });
        }
        Ok(leases)
    }

    /// The lease table: one row per lease, joined with the node it belongs to (by public IP).
    pub fn lease_table(&self) -> Result<Vec<LeaseRow>, String> {
        let mut leases = self.leases()?;
        leases.sort_by_key(|l| (l.public_ip, l.subnet));
        Ok(leases
            .into_iter()
            .map(|lease| {
                let node = self.nodes.iter().find(|n| n.underlay_ip == lease.public_ip);
                LeaseRow {
                    node: node.map(|n| n.name.clone()),
                    kernel_mac: node.and_then(|n| link_mac(&n.ns, "flannel.1")),
                    subnet_env: node.and_then(|n| {
                        std::fs::read_to_string(&n.subnet_file).ok().and_then(|t| {
                            t.lines()
                                .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
                                .map(str::to_string)
                        })
                    }),
                    lease,
                }
            })
            .collect())
    }

    pub fn render_lease_table(&self, rows: &[LeaseRow]) -> String {
        let mut out = format!(
            "{:<8} {:<16} {:<12} {:<19} {:<14} {:>4}\n",
            "node", "subnet", "public IP", "VTEP MAC (etcd)", "flannel.1 MAC", "pods"
        );
        for r in rows {
            let node = r.node.clone().unwrap_or_else(|| "?".into());
            let mac_ok = match &r.kernel_mac {
                Some(m) if *m == r.lease.vtep_mac => "same".to_string(),
                Some(m) => format!("DIFFERS {m}"),
                None => "none".to_string(),
            };
            let pods = self.pods.iter().filter(|p| p.node == node).count();
            out.push_str(&format!(
                "{:<8} {:<16} {:<12} {:<19} {:<14} {:>4}\n",
                node,
                format!("{}/{}", r.lease.subnet, r.lease.len),
                r.lease.public_ip,
                r.lease.vtep_mac,
                mac_ok,
                pods
            ));
        }
        out
    }

    /// Whether the node in namespace `ns` has the route, permanent neighbour and FDB entry for `lease`
    /// (docs/architecture.md, flannel contracts, VXLAN programming).
    pub fn node_knows(ns: &str, lease: &Lease) -> bool {
        let routes = ip_n(ns, &["route", "show", "dev", "flannel.1"]);
        let neigh = ip_n(ns, &["neigh", "show", "dev", "flannel.1"]);
        let fdb = bridge_fdb(ns);
        routes.contains(&format!(
            "{}/{} via {} ",
            lease.subnet, lease.len, lease.subnet
        )) && neigh.contains(&format!(
            "{} lladdr {} PERMANENT",
            lease.subnet, lease.vtep_mac
        )) && fdb.contains(&format!("{} dst {} ", lease.vtep_mac, lease.public_ip))
    }

    /// Whether the node in namespace `ns` still has any route, neighbour or FDB entry for `lease`.
    pub fn node_has_trace_of(ns: &str, lease: &Lease) -> bool {
        ip_n(ns, &["route", "show", "dev", "flannel.1"]).contains(&format!("{}/", lease.subnet))
            || ip_n(ns, &["neigh", "show", "dev", "flannel.1"])
                .contains(&format!("{} ", lease.subnet))
            || (!lease.vtep_mac.is_empty() && bridge_fdb(ns).contains(&lease.vtep_mac))
    }

    /// Every node has programmed every other node's lease; Err describes what is missing.
    pub fn mesh_missing(&self) -> Result<Vec<String>, String> {
        let leases = self.leases()?;
        let mut missing = Vec::new();
        for n in &self.nodes {
            for l in leases.iter().filter(|l| l.public_ip != n.underlay_ip) {
                if !Self::node_knows(&n.ns, l) {
                    missing.push(format!(
                        "{} lacks {}/{} ({})",
                        n.name, l.subnet, l.len, l.public_ip
                    ));
                }
            }
        }
        if leases.len() < self.nodes.len() {
            missing.push(format!(
                "{} leases in etcd for {} nodes",
                leases.len(),
                self.nodes.len()
            ));
        }
        Ok(missing)
    }

    pub fn wait_mesh(&self, timeout: Duration) -> Result<(), String> {
        wait_none_missing("mesh", timeout, || self.mesh_missing())
    }

    /// Every pod pings every other pod (in parallel, 3 tries each).
    pub fn matrix(&self) -> Matrix {
        let n = self.pods.len();
        let start = Instant::now();
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .collect();
        let results: Vec<AtomicU32> = pairs.iter().map(|_| AtomicU32::new(0)).collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..pairs.len().min(16) {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(i, j)) = pairs.get(k) else { break };
                    let ok = ping_from(&self.pods[i].ns, &self.pods[j].ip.to_string());
                    results[k].store(if ok { 1 } else { 2 }, Ordering::SeqCst);
                });
            }
        });
        let mut cells = vec![vec![None; n]; n];
        for (k, &(i, j)) in pairs.iter().enumerate() {
            cells[i][j] = Some(results[k].load(Ordering::SeqCst) == 1);
        }
        Matrix {
            pods: self.pods.clone(),
            cells,
            elapsed: start.elapsed(),
        }
    }

    /// The matrix, retried until full or `timeout` (routes to a node that just joined may take a moment).
    pub fn wait_full_matrix(&self, timeout: Duration) -> Matrix {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.matrix();
            if m.is_full() || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// For every pod with a host port: a greeting server in the pod on [`POD_PORT`], then from every other
    /// node, and from a pod on it, a connection to `<node underlay IP>:<hostPort>` must get the greeting.
    pub fn host_port_check(&self) -> Result<Vec<PortCheck>, String> {
        let mut greeters = Vec::new();
        for p in self.pods.iter().filter(|p| p.host_port.is_some()) {
            greeters.push(Greeter::start(
                &p.ns,
                POD_PORT,
                format!("hello from {}", p.name),
            )?);
        }
        let mut checks = Vec::new();
        for target in self.pods.iter().filter(|p| p.host_port.is_some()) {
            let Some(node) = self.node(&target.node) else {
                continue;
            };
            let hp = target.host_port.unwrap_or(0);
            let addr = SocketAddr::from((node.underlay_ip, hp));
            for other in self.nodes.iter().filter(|n| n.name != node.name) {
                let mut clients = vec![(other.name.clone(), other.ns.clone())];
                if let Some(p) = self.pods.iter().find(|p| p.node == other.name) {
                    clients.push((p.name.clone(), p.ns.clone()));
                }
                for (from, ns) in clients {
                    checks.push(PortCheck {
                        from,
                        target: format!(
                            "{}:{hp} ({} -> {}:{POD_PORT})",
                            node.underlay_ip, node.name, target.name
                        ),
                        answer: fetch_from(&ns, addr),
                        expected: format!("hello from {}", target.name),
                    });
                }
            }
        }
        drop(greeters);
        Ok(checks)
    }

    /// iperf3 between the first pods of the first two nodes, next to the same between the nodes themselves.
    pub fn throughput(&self, secs: u32) -> Result<Throughput, String> {
        let [a, b, ..] = self.nodes.as_slice() else {
            return Err("throughput needs two nodes".into());
        };
        let pa = self.pods.iter().find(|p| p.node == a.name);
        let pb = self.pods.iter().find(|p| p.node == b.name);
        let (Some(pa), Some(pb)) = (pa, pb) else {
            return Err("throughput needs a pod on each of the first two nodes".into());
        };
        // Alternating runs, best of each: on a shared machine one run of either can be slowed by other work.
        let (mut overlay_bps, mut underlay_bps) = (0f64, 0f64);
        for _ in 0..THROUGHPUT_ROUNDS {
            overlay_bps = overlay_bps.max(iperf(&pa.ns, &pb.ns, pa.ip, secs)?);
            underlay_bps = underlay_bps.max(iperf(&a.ns, &b.ns, a.underlay_ip, secs)?);
        }
        Ok(Throughput {
            overlay_bps,
            underlay_bps,
            overlay_path: format!("{} ({}) -> {} ({})", pb.name, pb.ip, pa.name, pa.ip),
            underlay_path: format!(
                "{} ({}) -> {} ({})",
                b.name, b.underlay_ip, a.name, a.underlay_ip
            ),
            seconds: secs,
        })
    }

    /// Commands to look around the running cluster.
    pub fn explore_hints(&self) -> String {
        let mut out = String::new();
        if let (Some(a), Some(b)) = (self.pods.first(), self.pods.last()) {
            out.push_str(&format!(
                "  ip netns exec {} ping -c 3 {}          # {} -> {}\n",
                a.ns, b.ip, a.name, b.name
            ));
        }
        if let Some(n) = self.nodes.first() {
            out.push_str(&format!(
                "  ip -n {} route; bridge -n {} fdb show dev flannel.1   # {}'s overlay routes and FDB\n",
                n.ns, n.ns, n.name
            ));
            out.push_str(&format!(
                "  cat {}     # written by {}'s twilld\n",
                n.subnet_file.display(),
                n.name
            ));
            out.push_str(&format!("  tail -f {}\n", n.twilld_log.display()));
            out.push_str(&format!(
                "  ls {}/{{net.d,bin,flannel,networks/{}}}   # {}'s CNI dirs\n",
                n.cni_dir.display(),
                n.net,
                n.name
            ));
        }
        out.push_str(&format!(
            "  ip netns exec {} env ETCDCTL_API=3 etcdctl --endpoints {} get --prefix /coreos.com/network\n",
            self.switch_ns, self.etcd_endpoint
        ));
        out.push_str(&format!("  ip netns list | grep tw-{}\n", self.prefix));
        out
    }
}

fn bridge_fdb(ns: &str) -> String {
    Command::new("bridge")
        .args(["-n", ns, "fdb", "show", "dev", "flannel.1"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn link_mac(ns: &str, dev: &str) -> Option<String> {
    let text = ip_n(ns, &["-o", "link", "show", "dev", dev]);
    let pos = text.find("link/ether ")?;
    Some(text[pos + 11..].split_whitespace().next()?.to_string())
}
