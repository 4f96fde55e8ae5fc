//! A cluster whose nodes run either twilld or the real flanneld on one etcd: the same underlay switch, node
//! namespaces, per-node CNI side (twill's stock flannel + portmap conflist through the real libcni) and checks
//! as the twilld-only cluster in `e2e/`, plus switching one node's daemon mid-life (same node, same
//! `subnet.env`, same lease, pods kept).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::cluster::{wait_until, DaemonProcess, Node, Switch, Twilld, TwilldArgs};
use crate::e2e::{
    cni_add, node_info, wait_none_missing, ClusterPod, ClusterState, NodeCni, CONFIG_KEY,
};
use crate::etcd::Etcd;
use crate::flanneld::{Flanneld, FlanneldArgs};
use crate::netns::Netns;

/// How long a daemon may take to write subnet.env, and the mesh to converge.
pub const READY_TIMEOUT: Duration = Duration::from_secs(40);

/// Which daemon a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Twilld,
    Flanneld,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Twilld => "twilld",
            Kind::Flanneld => "flanneld",
        })
    }
}

/// A running daemon of either kind.
pub enum Daemon {
    Twilld(Twilld),
    Flanneld(Flanneld),
}

impl Daemon {
    pub fn kind(&self) -> Kind {
        match self {
            Daemon::Twilld(_) => Kind::Twilld,
            Daemon::Flanneld(_) => Kind::Flanneld,
        }
    }

    /// The process, whichever daemon it runs.
    pub fn process(&self) -> &DaemonProcess {
        match self {
            Daemon::Twilld(d) | Daemon::Flanneld(d) => d,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process().pid()
    }

    /// SIGTERM and wait: both daemons leave their kernel state and their lease in place.
    pub fn terminate(&mut self) -> Option<i32> {
        match self {
            Daemon::Twilld(d) | Daemon::Flanneld(d) => d.terminate(),
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self {
            Daemon::Twilld(d) | Daemon::Flanneld(d) => d.is_running(),
        }
    }
}

/// One node: its daemon, its CNI side and its namespace. Field order is drop order.
pub struct MixedNode {
    pub daemon: Option<Daemon>,
    pub cni: NodeCni,
    pub node: Node,
}

impl MixedNode {
    pub fn name(&self) -> String {
        self.node.name()
    }

    pub fn kind(&self) -> Option<Kind> {
        self.daemon.as_ref().map(Daemon::kind)
    }

    /// The node's twilld and flanneld logs, whichever exist.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (what, path) in [
            ("twilld", self.node.log_file()),
            ("flanneld", crate::flanneld::log_file(&self.node)),
        ] {
            if let Ok(text) = std::fs::read_to_string(&path) {
                // flanneld logs a lot at start-up; the tail is what explains a failure.
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                out.push_str(&format!("--- {} {what} log (tail) ---\n", self.name()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for MixedNode {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let _ = std::fs::remove_dir_all(&self.cni.dir);
        let _ = std::fs::remove_file(crate::flanneld::log_file(&self.node));
    }
}

static POD_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The cluster. Field order is drop order: pods, nodes (daemons killed), etcd, switch, work dir.
pub struct MixedCluster {
    pub pods: Vec<ClusterPod>,
    pub nodes: Vec<MixedNode>,
    pub etcd: Etcd,
    pub switch: Switch,
    workdir: tempfile::TempDir,
    prefix: String,
    twilld_resync_secs: f64,
    /// Peers on the node's segment are reached by a plain route via their underlay address:
    /// `Backend.DirectRouting` of a vxlan network config, or a host-gw one.
    direct_routing: bool,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl MixedCluster {
    /// Switch + etcd with `net_config`, one node per entry of `kinds` running that daemon (waiting until
    /// each wrote subnet.env and every node programmed every other), then `pods_per_node` pods on each node.
    pub fn up(
        prefix: &str,
        kinds: &[Kind],
        net_config: &str,
        pods_per_node: usize,
    ) -> MixedCluster {
        Self::up_with_resync(prefix, kinds, net_config, pods_per_node, 2.0)
    }

    /// [`MixedCluster::up`] with twilld's `--resync` period (benchmarks use its 10 s default).
    pub fn up_with_resync(
        prefix: &str,
        kinds: &[Kind],
        net_config: &str,
        pods_per_node: usize,
        twilld_resync_secs: f64,
    ) -> MixedCluster {
        crate::bins::require_root();
        let workdir = tempfile::Builder::new()
            .prefix(&format!("twill-{prefix}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("create the cluster's work dir: {e}"));
        let switch = Switch::with_prefix(prefix);
        let etcd = switch.start_etcd();
        etcd.put(CONFIG_KEY, net_config);
        let mut c = MixedCluster {
            pods: Vec::new(),
            nodes: Vec::new(),
            etcd,
            switch,
            workdir,
            prefix: prefix.to_string(),
            twilld_resync_secs,
            direct_routing: serde_json::from_str::<Value>(net_config)
                .ok()
                .is_some_and(|v| {
                    v["Backend"]["DirectRouting"].as_bool() == Some(true)
                        || v["Backend"]["Type"].as_str() == Some("host-gw")
                }),
        };
        for (i, kind) in kinds.iter().enumerate() {
            let node = c.switch.add_node(i as u8 + 1);
            let cni = NodeCni::create(&node, c.workdir.path().join(node.name()));
            c.nodes.push(MixedNode {
                daemon: None,
                cni,
                node,
            });
            c.start_daemon(i, *kind);
        }
        for i in 0..c.nodes.len() {
            c.wait_ready(i, None);
        }
        c.wait_mesh();
        for i in 0..c.nodes.len() {
            for _ in 0..pods_per_node {
                c.add_pod(i).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
            }
        }
        c
    }

    /// A new node namespace (with its CNI side) on the switch, no daemon yet; returns its position.
    pub fn add_node(&mut self) -> usize {
        let index = self.nodes.iter().map(|n| n.node.index).max().unwrap_or(0) + 1;
        let node = self.switch.add_node(index);
        let cni = NodeCni::create(&node, self.workdir.path().join(node.name()));
        self.nodes.push(MixedNode {
            daemon: None,
            cni,
            node,
        });
        self.nodes.len() - 1
    }

    /// Node `i` leaves: its pods go, its daemon is stopped, its lease deleted from etcd, its namespace removed.
    pub fn remove_node(&mut self, i: usize) {
        let name = self.nodes[i].name();
        self.pods.retain(|p| p.node != name);
        let mut n = self.nodes.remove(i);
        if let Some(mut d) = n.daemon.take() {
            d.terminate();
        }
        if let Some((net, len)) = n.node.subnet() {
            self.etcd
                .del(&format!("{}{net}-{len}", crate::e2e::SUBNETS_PREFIX));
        }
    }

    /// Starts `kind` on node `i` (which must have no daemon running); does not wait.
    pub fn start_daemon(&mut self, i: usize, kind: Kind) {
        let etcd = self.etcd.underlay_endpoint();
        let resync_secs = self.twilld_resync_secs;
        let n = &mut self.nodes[i];
        assert!(n.daemon.is_none(), "{} already runs a daemon", n.name());
        n.daemon = Some(match kind {
            Kind::Twilld => Daemon::Twilld(n.node.start_twilld(&TwilldArgs {
                etcd,
                resync_secs,
                extra: vec!["--ip-masq".to_string()],
            })),
            Kind::Flanneld => {
                Daemon::Flanneld(crate::flanneld::start(&n.node, &FlanneldArgs::new(&etcd)))
            }
        });
    }

    /// Waits until node `i` has a subnet.env (newer than `since` when given); panics with the logs.
    pub fn wait_ready(&mut self, i: usize, since: Option<SystemTime>) -> (Ipv4Addr, u8) {
        let file = self.nodes[i].node.subnet_file();
        let ok = wait_until(READY_TIMEOUT, || {
            self.nodes[i].node.subnet().is_some() && (since.is_none() || mtime(&file) != since)
        });
        let running = self.nodes[i]
            .daemon
            .as_mut()
            .is_some_and(Daemon::is_running);
        if !ok || !running {
            panic!(
                "{} ({}) did not write {} within {READY_TIMEOUT:?} (running: {running})\n{}",
                self.nodes[i].name(),
                self.nodes[i]
                    .kind()
                    .map(|k| k.to_string())
                    .unwrap_or_default(),
                file.display(),
                self.logs()
            );
        }
        self.nodes[i]
            .node
            .subnet()
            .unwrap_or_else(|| unreachable!("checked above"))
    }

    /// Waits until every node has programmed every other node's lease: route, neighbour and FDB entry on
    /// `flannel.1`, or with DirectRouting (all nodes share the underlay segment) a plain route via the peer.
    pub fn wait_mesh(&self) {
        let result = if self.direct_routing {
            self.wait_direct_mesh()
        } else {
            self.state().wait_mesh(READY_TIMEOUT)
        };
        if let Err(e) = result {
            panic!("{e}\n{}", self.logs());
        }
    }

    /// What is missing for DirectRouting: per node, for every other lease, `<subnet> via <peer underlay IP>
    /// dev eth0` when the peer is on the node's underlay network (`/24`), else the route, neighbour and FDB
    /// entry on `flannel.1` (docs/architecture.md, flannel contracts, VXLAN programming: DirectRouting falls back to
    /// VXLAN for peers behind a router).
    pub fn direct_mesh_missing(&self) -> Result<Vec<String>, String> {
        let leases = self.state().leases()?;
        let same_segment = |a: Ipv4Addr, b: Ipv4Addr| u32::from(a) >> 8 == u32::from(b) >> 8;
        let mut missing = Vec::new();
        for n in &self.nodes {
            let routes = n.node.ip(&["-4", "route", "show", "dev", "eth0"]);
            for l in leases.iter().filter(|l| l.public_ip != n.node.underlay_ip) {
                if same_segment(n.node.underlay_ip, l.public_ip) {
                    let want = format!("{}/{} via {} ", l.subnet, l.len, l.public_ip);
                    if !routes.contains(&want) {
                        missing.push(format!("{} lacks route {want}", n.name()));
                    }
                } else if !ClusterState::node_knows(n.node.ns.name(), l) {
                    missing.push(format!(
                        "{} lacks the VXLAN entries of {}/{} ({})",
                        n.name(),
                        l.subnet,
                        l.len,
                        l.public_ip
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

    fn wait_direct_mesh(&self) -> Result<(), String> {
        wait_none_missing("direct routes", READY_TIMEOUT, || {
            self.direct_mesh_missing()
        })
    }

    /// Node `i` changes daemon: SIGTERM to the running one, `kind` started, until it has rewritten
    /// subnet.env. Returns how long the node was without a ready daemon.
    pub fn switch_daemon(&mut self, i: usize, kind: Kind) -> Duration {
        let before = mtime(&self.nodes[i].node.subnet_file());
        // Older and newer file systems keep mtime at different granularities: make sure a rewrite shows.
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        if let Some(mut d) = self.nodes[i].daemon.take() {
            d.terminate();
        }
        self.start_daemon(i, kind);
        self.wait_ready(i, before);
        start.elapsed()
    }

    /// ADDs a pod on node `i`; returns its position in `pods`.
    pub fn add_pod(&mut self, i: usize) -> Result<usize, String> {
        let n = &self.nodes[i];
        let k = self.pods.iter().filter(|p| p.node == n.name()).count() + 1;
        let name = format!("{}-pod{k}", n.name());
        let ns = Netns::new(&format!("{}{name}", self.prefix));
        let container_id = format!(
            "{}{name}-{}",
            self.prefix,
            POD_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let lib = n.cni.lib.with_container_id(&container_id);
        let ip = cni_add(&lib, &n.cni.net, &ns).map_err(|e| {
            format!(
                "{name} on {} ({}): {e}",
                n.name(),
                n.kind().map(|k| k.to_string()).unwrap_or_default()
            )
        })?;
        self.pods.push(ClusterPod {
            name,
            node: n.name(),
            ip,
            container_id,
            host_port: None,
            lib,
            net: n.cni.net.clone(),
            deleted: false,
            ns,
        });
        Ok(self.pods.len() - 1)
    }

    /// FDB entries on a node's `flannel.1` for a MAC that no current lease carries, as "node3: <mac> dst
    /// <ip>" (what a peer keeps when a node's VTEP MAC changed and the peer never removed the old entry).
    pub fn stale_fdb_entries(&self) -> Result<Vec<String>, String> {
        let macs: BTreeSet<String> = self
            .state()
            .leases()?
            .into_iter()
            .map(|l| l.vtep_mac)
            .collect();
        let mut out = Vec::new();
        for n in &self.nodes {
            let fdb = n.node.fdb("flannel.1");
            for line in fdb.lines().filter(|l| l.contains(" dst ")) {
                let mac = line.split_whitespace().next().unwrap_or("");
                if !macs.contains(mac) {
                    out.push(format!("{}: {}", n.name(), line.trim()));
                }
            }
        }
        Ok(out)
    }

    /// Starts recording every change to the lease keys (`etcdctl watch`) until [`LeaseWatch::finish`].
    pub fn watch_leases(&self) -> LeaseWatch {
        let endpoint = self.etcd.endpoint();
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.switch.ns.name()])
            .args(["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", &endpoint])
            .args(["watch", "--prefix", crate::e2e::SUBNETS_PREFIX])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting etcdctl watch: {e}"));
        let out = child.stdout.take().unwrap_or_else(|| unreachable!("piped"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut { out }, &mut text);
            let _ = tx.send(text);
        });
        // etcdctl prints nothing when the watch is established; give it a moment before anything changes.
        std::thread::sleep(Duration::from_millis(300));
        LeaseWatch {
            child: Some(child),
            rx,
        }
    }

    /// The serialisable description the checks of `e2e/state.rs` work on.
    pub fn state(&self) -> ClusterState {
        ClusterState {
            prefix: self.prefix.clone(),
            switch_ns: self.switch.ns.name().to_string(),
            etcd_endpoint: self.etcd.endpoint(),
            supervisor_pid: None,
            workdir: self.workdir.path().to_path_buf(),
            nodes: self
                .nodes
                .iter()
                .map(|n| {
                    let log = match n.kind() {
                        Some(Kind::Flanneld) => crate::flanneld::log_file(&n.node),
                        _ => n.node.log_file(),
                    };
                    let pid = n.daemon.as_ref().and_then(Daemon::pid);
                    node_info(n.name(), &n.node, &n.cni, log, pid)
                })
                .collect(),
            pods: self.pods.iter().map(ClusterPod::info).collect(),
        }
    }

    /// Every daemon's log tail and every node's overlay state, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&n.logs());
            let ns = n.node.ns.name();
            out.push_str(&format!(
                "--- {} ({}) kernel ---\n{}{}{}",
                n.name(),
                n.kind()
                    .map(|k| k.to_string())
                    .unwrap_or("no daemon".into()),
                n.node.ip(&["-4", "route"]),
                // Not `Node::ip`: a host-gw node has no flannel.1, and a failure report must not panic.
                Command::new("ip")
                    .args(["-n", ns, "-4", "neigh", "show", "dev", "flannel.1"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default(),
                Command::new("bridge")
                    .args(["-n", ns, "fdb", "show", "dev", "flannel.1"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            ));
        }
        out.push_str(&format!(
            "--- etcd ---\n{}",
            self.etcd
                .get_prefix("/coreos.com/network/")
                .into_iter()
                .map(|(k, v)| format!("{k} {v}\n"))
                .collect::<String>()
        ));
        out
    }
}

/// The lease-key changes seen by `etcdctl watch`; the process is killed on drop.
pub struct LeaseWatch {
    child: Option<Child>,
    rx: std::sync::mpsc::Receiver<String>,
}

impl LeaseWatch {
    /// Stops watching; returns `(PUT|DELETE, key)` for every change, in order.
    pub fn finish(mut self) -> Vec<(String, String)> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let text = self
            .rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        // Each event is three lines: the operation, the key, the value (empty for DELETE).
        let lines: Vec<&str> = text.lines().collect();
        let mut events = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if matches!(*l, "PUT" | "DELETE") {
                if let Some(key) = lines.get(i + 1) {
                    events.push((l.to_string(), key.to_string()));
                }
            }
        }
        events
    }
}

impl Drop for LeaseWatch {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
