//! A whole twill cluster on one machine, as a runtime and an operator see it (docs/testing.md,
//! topologies): an underlay switch namespace running etcd, N node namespaces each running `twilld`, and pods
//! created and deleted through the real libcni driver inside their node with the stock flannel + portmap
//! conflist (docs/architecture.md, flannel contracts), every node with its own CNI config dir, result cache, host-local
//! and flannel data dirs and the subnet file its own twilld writes (subnet.env, same page).
//!
//! Two halves:
//! - [`Cluster`] owns everything (guards from `cluster.rs`, removed on drop even after a panic) and changes the
//!   cluster: nodes join and leave, daemons restart or die, etcd restarts, pods come and go.
//! - [`ClusterState`] (module `state`) is a plain, serialisable description (names, addresses, directories)
//!   with every check: the lease table, the pod-to-pod matrix, the host-port check, throughput, leftovers per node. The end-to-end
//!   tests call it on their in-process cluster; `twill-cluster report` calls it on the state file the
//!   supervisor (`twill-cluster up`) wrote, from another process.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::bins::bin;
use crate::cluster::{wait_until, Node, Switch, Twilld, TwilldArgs};
use crate::etcd::Etcd;
use crate::libcni::LibCni;
use crate::netns::Netns;

mod snapshot;
mod state;
mod traffic;
pub use snapshot::*;
pub use state::*;
pub use traffic::iperf;

/// The network config every cluster runs with (`conf/net-conf.json`: 10.244.0.0/16, /24 per node, VXLAN VNI 1).
pub const NET_CONFIG: &str = include_str!("../../../conf/net-conf.json");
/// The stock Kubernetes conflist (flannel + portmap), as shipped in `conf/`.
pub const STOCK_CONFLIST: &str = include_str!("../../../conf/10-flannel.conflist");
/// etcd key of the network config (docs/architecture.md, flannel contracts, etcd layout).
pub const CONFIG_KEY: &str = "/coreos.com/network/config";
/// etcd prefix of the node leases (docs/architecture.md, flannel contracts, etcd layout).
pub const SUBNETS_PREFIX: &str = "/coreos.com/network/subnets/";
/// The port every pod's greeting server listens on for the host-port check.
pub const POD_PORT: u16 = 8080;
/// The plugins a node's CNI bin dir holds (what the DaemonSet / `scripts/install.sh` put in /opt/cni/bin).
pub const PLUGINS: [&str; 5] = ["flannel", "bridge", "host-local", "portmap", "loopback"];

/// How a cluster is built.
#[derive(Clone)]
pub struct Options {
    /// Namespace prefix (`tw-<prefix>sw-...`); the demo uses `twdemo-` so `twill-cluster down` can sweep.
    pub prefix: String,
    pub nodes: u8,
    pub pods_per_node: usize,
    /// `--subnet-lease-ttl` for every twilld (None: flannel's 24 h).
    pub lease_ttl: Option<u64>,
    /// `--resync` for every twilld.
    pub resync_secs: f64,
    /// When set, the first pod of every node maps this host port to [`POD_PORT`] (portmap capability).
    pub host_port: Option<u16>,
    /// Where the nodes' CNI directories live; None: a temp dir. Removed on drop either way.
    pub workdir: Option<PathBuf>,
    /// Called with each progress line.
    pub progress: Arc<dyn Fn(&str) + Send + Sync>,
    /// When it becomes true, building stops (panics "interrupted", so every guard built so far is dropped).
    pub abort: Option<&'static AtomicBool>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: "e2e".to_string(),
            nodes: 3,
            pods_per_node: 2,
            lease_ttl: None,
            resync_secs: 2.0,
            host_port: None,
            workdir: None,
            progress: Arc::new(|_| {}),
            abort: None,
        }
    }
}

/// How long a node's twilld may take to write subnet.env, and the mesh to converge.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

enum WorkDir {
    Temp(tempfile::TempDir),
    /// A given path; `created` says whether `up` created it (only then is it removed on drop: a directory
    /// that existed before belongs to whoever made it).
    Fixed {
        path: PathBuf,
        created: bool,
    },
}

impl WorkDir {
    fn path(&self) -> &Path {
        match self {
            WorkDir::Temp(t) => t.path(),
            WorkDir::Fixed { path, .. } => path,
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let WorkDir::Fixed {
            path,
            created: true,
        } = self
        {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// One node's CNI side, laid out like a real node: `bin/` (= /opt/cni/bin), `net.d/` (= /etc/cni/net.d),
/// `cache/` (= /var/lib/cni, libcni's result cache), `networks/` (host-local dataDir), `flannel/` (the flannel
/// plugin's saved delegate configs).
#[derive(Clone, Debug)]
pub struct NodeCni {
    pub lib: LibCni,
    pub net: String,
    pub dir: PathBuf,
}

impl NodeCni {
    pub fn create(node: &Node, dir: PathBuf) -> NodeCni {
        let bin_dir = dir.join("bin");
        for d in [&bin_dir, &dir.join("net.d"), &dir.join("cache")] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        // Hard links (a copy across file systems) rather than symlinks: the node keeps the plugin versions it
        // started with even while cargo replaces the files in the target dir.
        for name in PLUGINS {
            let dst = bin_dir.join(name);
            let src = bin(name);
            let _ = std::fs::remove_file(&dst);
            std::fs::hard_link(&src, &dst)
                .or_else(|_| std::fs::copy(&src, &dst).map(|_| ()))
                .unwrap_or_else(|e| panic!("put {} into {}: {e}", name, bin_dir.display()));
        }
        let mut list: Value = serde_json::from_str(STOCK_CONFLIST)
            .unwrap_or_else(|e| panic!("conf/10-flannel.conflist is not JSON: {e}"));
        list["plugins"][0]["subnetFile"] = json!(node.subnet_file());
        list["plugins"][0]["dataDir"] = json!(dir.join("flannel"));
        list["plugins"][0]["ipam"] = json!({"dataDir": dir.join("networks")});
        let lib = LibCni::new(dir.join("net.d"), vec![bin_dir], dir.join("cache"))
            .in_netns(node.ns.path());
        let net = lib.write_conflist(&list);
        NodeCni { lib, net, dir }
    }
}

/// A node of the cluster: its namespace (with the switch port), its CNI side and its daemon.
/// Field order is drop order: the daemon dies before its namespace goes.
pub struct ClusterNode {
    pub daemon: Option<Twilld>,
    pub cni: NodeCni,
    pub node: Node,
}

impl ClusterNode {
    pub fn name(&self) -> String {
        self.node.name()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.cni.dir);
    }
}

/// A pod added through libcni on a node; DEL'd through libcni (best effort) and its namespace removed on drop.
pub struct ClusterPod {
    pub name: String,
    pub node: String,
    pub container_id: String,
    pub ip: Ipv4Addr,
    pub host_port: Option<u16>,
    pub(crate) lib: LibCni,
    pub(crate) net: String,
    pub(crate) deleted: bool,
    pub ns: Netns,
}

impl ClusterPod {
    /// The serialisable description of this pod.
    pub fn info(&self) -> PodInfo {
        PodInfo {
            name: self.name.clone(),
            node: self.node.clone(),
            ns: self.ns.name().to_string(),
            ip: self.ip,
            container_id: self.container_id.clone(),
            host_port: self.host_port,
        }
    }

    /// CNI DEL through libcni; the namespace stays until drop.
    pub fn del(&mut self) -> Result<(), String> {
        let out = self.lib.del(&self.net, self.ns.path());
        if out.success() {
            self.deleted = true;
            Ok(())
        } else {
            Err(format!("DEL of pod {}: {}", self.name, out.describe()))
        }
    }
}

impl Drop for ClusterPod {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = self.lib.del(&self.net, self.ns.path());
        }
    }
}

static POD_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running cluster. Field order is drop order: pods (DEL'd), nodes (daemons killed, namespaces removed),
/// etcd, the switch, the work dir.
pub struct Cluster {
    pub pods: Vec<ClusterPod>,
    pub nodes: Vec<ClusterNode>,
    pub etcd: Etcd,
    pub switch: Switch,
    workdir: WorkDir,
    opts: Options,
    next_index: u8,
}

/// The libcni driver for one attachment on a node: container id, and the portmap capability argument when the
/// pod maps a host port (libcni passes it as `runtimeConfig.portMappings`, docs/cni-spec-notes.md §3; the same on DEL).
fn attachment(cni: &NodeCni, container_id: &str, host_port: Option<u16>) -> LibCni {
    let lib = cni.lib.with_container_id(container_id);
    match host_port {
        Some(hp) => lib.with_cap_args(json!({"portMappings": [
            {"hostPort": hp, "containerPort": POD_PORT, "protocol": "tcp"}
        ]})),
        None => lib,
    }
}

/// The serialisable description of node `name`, whose daemon (pid `daemon_pid`) logs to `daemon_log`.
pub(crate) fn node_info(
    name: String,
    node: &Node,
    cni: &NodeCni,
    daemon_log: PathBuf,
    daemon_pid: Option<u32>,
) -> NodeInfo {
    NodeInfo {
        name,
        ns: node.ns.name().to_string(),
        underlay_ip: node.underlay_ip,
        subnet_file: node.subnet_file(),
        twilld_log: daemon_log,
        cni_dir: cni.dir.clone(),
        net: cni.net.clone(),
        twilld_pid: daemon_pid,
    }
}

/// Polls `missing` until it lists nothing; else an error naming `what` and the last things missing.
pub(crate) fn wait_none_missing(
    what: &str,
    timeout: Duration,
    mut missing: impl FnMut() -> Result<Vec<String>, String>,
) -> Result<(), String> {
    let mut last = Vec::new();
    let ok = wait_until(timeout, || match missing() {
        Ok(m) => {
            last = m;
            last.is_empty()
        }
        Err(e) => {
            last = vec![e];
            false
        }
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} not complete after {timeout:?}: {}",
            last.join("; ")
        ))
    }
}

/// `ADD` through libcni in namespace `ns`; returns the pod's IPv4 address from the result.
pub(crate) fn cni_add(lib: &LibCni, net: &str, ns: &Netns) -> Result<Ipv4Addr, String> {
    let id = lib.container_id.clone().unwrap_or_default();
    let out = lib.add(net, ns.path());
    if !out.success() {
        return Err(format!("ADD of {id}: {}", out.describe()));
    }
    let result = out.json.unwrap_or(Value::Null);
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("ADD of {id}: no IPv4 address in {result}"))
}

fn cni_del(lib: &LibCni, net: &str, ns: &Netns) -> Result<(), String> {
    let out = lib.del(net, ns.path());
    if out.success() {
        Ok(())
    } else {
        Err(format!(
            "DEL of {}: {}",
            lib.container_id.clone().unwrap_or_default(),
            out.describe()
        ))
    }
}

impl Cluster {
    /// Builds the whole cluster: switch + etcd + network config, the nodes with their daemons (waiting until
    /// every node has written subnet.env and every node has programmed every other), then the pods.
    pub fn up(opts: Options) -> Cluster {
        crate::bins::require_root();
        let workdir = match &opts.workdir {
            Some(p) => {
                let created = !p.exists();
                std::fs::create_dir_all(p)
                    .unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
                WorkDir::Fixed {
                    path: p.clone(),
                    created,
                }
            }
            None => WorkDir::Temp(
                tempfile::Builder::new()
                    .prefix(&format!("twill-{}-", opts.prefix.trim_end_matches('-')))
                    .tempdir()
                    .unwrap_or_else(|e| panic!("create the cluster's work dir: {e}")),
            ),
        };
        let progress = opts.progress.clone();
        let step = |msg: &str| {
            if opts
                .abort
                .as_ref()
                .is_some_and(|a| a.load(Ordering::SeqCst))
            {
                panic!("interrupted");
            }
            progress(msg);
        };
        step("underlay switch (bridge br0, 10.250.0.254/24)");
        let switch = Switch::with_prefix(&opts.prefix);
        step("etcd on the switch (10.250.0.254:2379)");
        let etcd = switch.start_etcd();
        etcd.put(CONFIG_KEY, NET_CONFIG);
        let mut cluster = Cluster {
            pods: Vec::new(),
            nodes: Vec::new(),
            etcd,
            switch,
            workdir,
            opts: opts.clone(),
            next_index: 1,
        };
        for _ in 0..opts.nodes {
            let name = format!("node{}", cluster.next_index);
            step(&format!(
                "{name}: namespace, eth0 = 10.250.0.{}, twilld",
                cluster.next_index
            ));
            cluster.start_node();
        }
        for i in 0..cluster.nodes.len() {
            let subnet = cluster.wait_node_ready(i);
            step(&format!(
                "{}: subnet {}/{} leased, subnet.env written",
                cluster.nodes[i].name(),
                subnet.0,
                subnet.1
            ));
        }
        step("waiting until every node has a route, neighbour and FDB entry for every other node");
        if let Err(e) = cluster.state().wait_mesh(READY_TIMEOUT) {
            panic!("{e}\n{}", cluster.logs());
        }
        for i in 0..cluster.nodes.len() {
            for k in 0..opts.pods_per_node {
                let host_port = if k == 0 { opts.host_port } else { None };
                let pod = cluster
                    .add_pod(i, host_port)
                    .unwrap_or_else(|e| panic!("{e}"));
                let pod = &cluster.pods[pod];
                step(&format!(
                    "{}: pod {} = {}{} (libcni ADD, stock flannel + portmap conflist)",
                    pod.node,
                    pod.name,
                    pod.ip,
                    pod.host_port
                        .map(|p| format!(", host port {p} -> {POD_PORT}"))
                        .unwrap_or_default()
                ));
            }
        }
        cluster
    }

    fn twilld_args(&self) -> TwilldArgs {
        let mut extra = vec!["--ip-masq".to_string()];
        if let Some(ttl) = self.opts.lease_ttl {
            extra.push(format!("--subnet-lease-ttl={ttl}"));
        }
        TwilldArgs {
            etcd: self.etcd.underlay_endpoint(),
            resync_secs: self.opts.resync_secs,
            extra,
        }
    }

    /// Adds a node namespace and starts its twilld (not waiting for it); returns its position in `nodes`.
    fn start_node(&mut self) -> usize {
        let node = self.switch.add_node(self.next_index);
        self.next_index += 1;
        let daemon = node.start_twilld(&self.twilld_args());
        let cni = NodeCni::create(&node, self.workdir.path().join(node.name()));
        self.nodes.push(ClusterNode {
            daemon: Some(daemon),
            cni,
            node,
        });
        self.nodes.len() - 1
    }

    /// Waits for subnet.env of node `i`; panics with its twilld log when it does not come.
    fn wait_node_ready(&self, i: usize) -> (Ipv4Addr, u8) {
        let n = &self.nodes[i];
        if !wait_until(READY_TIMEOUT, || n.node.subnet().is_some()) {
            panic!(
                "{} did not write {} within {READY_TIMEOUT:?}\n{}",
                n.name(),
                n.node.subnet_file().display(),
                self.logs()
            );
        }
        n.node
            .subnet()
            .unwrap_or_else(|| unreachable!("checked above"))
    }

    /// A node joins: namespace, twilld, subnet.env, and every live node has learned it. Returns its position.
    pub fn join_node(&mut self) -> usize {
        let i = self.start_node();
        self.wait_node_ready(i);
        if let Err(e) = self.state().wait_mesh(READY_TIMEOUT) {
            panic!(
                "after {} joined: {e}\n{}",
                self.nodes[i].name(),
                self.logs()
            );
        }
        i
    }

    /// A node leaves for good, as an operator removes one: its pods are deleted, its twilld stopped, its lease
    /// removed from etcd (flannel in etcd mode would otherwise keep it until the TTL runs out), and its
    /// namespace goes. Returns the removed lease's subnet.
    pub fn remove_node(&mut self, i: usize) -> Option<(Ipv4Addr, u8)> {
        let name = self.nodes[i].name();
        let mut kept = Vec::new();
        for mut pod in std::mem::take(&mut self.pods) {
            if pod.node == name {
                pod.del().unwrap_or_else(|e| panic!("{e}"));
            } else {
                kept.push(pod);
            }
        }
        self.pods = kept;
        let mut node = self.nodes.remove(i);
        let subnet = node.node.subnet();
        if let Some(mut d) = node.daemon.take() {
            d.terminate();
        }
        if let Some((net, len)) = subnet {
            self.etcd.del(&format!("{SUBNETS_PREFIX}{net}-{len}"));
        }
        drop(node);
        subnet
    }

    /// Restarts node `i`'s twilld (SIGTERM, start again) and waits until it has written subnet.env anew.
    pub fn restart_daemon(&mut self, i: usize) {
        let args = self.twilld_args();
        let n = &mut self.nodes[i];
        let file = n.node.subnet_file();
        let before = mtime(&file);
        if let Some(mut d) = n.daemon.take() {
            d.terminate();
        }
        // Older and newer file systems keep mtime at different granularities: make sure a rewrite shows.
        std::thread::sleep(Duration::from_millis(20));
        n.daemon = Some(n.node.start_twilld(&args));
        let log = || n.daemon.as_ref().map(Twilld::log_text).unwrap_or_default();
        assert!(
            wait_until(READY_TIMEOUT, || mtime(&file) != before
                && n.node.subnet().is_some()),
            "{} did not rewrite {} after restart; log:\n{}",
            n.name(),
            file.display(),
            log()
        );
    }

    /// SIGKILLs node `i`'s twilld: no cleanup, its lease stays in etcd until it expires.
    pub fn kill_daemon(&mut self, i: usize) {
        drop(self.nodes[i].daemon.take());
    }

    /// ADDs a pod on node `i` through libcni; returns its position in `pods`.
    pub fn add_pod(&mut self, i: usize, host_port: Option<u16>) -> Result<usize, String> {
        let n = &self.nodes[i];
        let k = self.pods.iter().filter(|p| p.node == n.name()).count() + 1;
        let name = format!("{}-pod{k}", n.name());
        let ns = Netns::new(&format!("{}{name}", self.opts.prefix));
        let container_id = format!(
            "{}{name}-{}",
            self.opts.prefix,
            POD_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let lib = attachment(&n.cni, &container_id, host_port);
        let ip = cni_add(&lib, &n.cni.net, &ns)?;
        self.pods.push(ClusterPod {
            name,
            node: n.name(),
            container_id,
            ip,
            host_port,
            lib,
            net: n.cni.net.clone(),
            deleted: false,
            ns,
        });
        Ok(self.pods.len() - 1)
    }

    /// One full pod life on node `i` (fresh namespace, ADD, the pod reaches its gateway, DEL, namespace
    /// removed), safe to run from many threads at once.
    pub fn pod_cycle(&self, i: usize, host_port: Option<u16>) -> Result<(), String> {
        let n = &self.nodes[i];
        let id = POD_COUNTER.fetch_add(1, Ordering::Relaxed);
        let container_id = format!("{}churn-{}-{id}", self.opts.prefix, n.name());
        let ns = Netns::new(&format!("{}churn", self.opts.prefix));
        let lib = attachment(&n.cni, &container_id, host_port);
        let ip = cni_add(&lib, &n.cni.net, &ns)?;
        // The bridge gateway is the node subnet's first address (docs/architecture.md, flannel contracts:
        // FLANNEL_SUBNET = network + 1).
        let (net, _) = n
            .node
            .subnet()
            .ok_or_else(|| format!("{} has no subnet.env", n.name()))?;
        let gw = Ipv4Addr::from(u32::from(net) + 1);
        let reached = ping_from(ns.name(), &gw.to_string());
        cni_del(&lib, &n.cni.net, &ns)?;
        if !reached {
            return Err(format!(
                "pod {container_id} ({ip}) on {} could not ping its gateway {gw}",
                n.name()
            ));
        }
        Ok(())
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == name)
    }

    /// The serialisable description every check works on.
    pub fn state(&self) -> ClusterState {
        ClusterState {
            prefix: self.opts.prefix.clone(),
            switch_ns: self.switch.ns.name().to_string(),
            etcd_endpoint: self.etcd.endpoint(),
            supervisor_pid: None,
            workdir: self.workdir.path().to_path_buf(),
            nodes: self
                .nodes
                .iter()
                .map(|n| {
                    let pid = n.daemon.as_ref().and_then(Twilld::pid);
                    node_info(n.name(), &n.node, &n.cni, n.node.log_file(), pid)
                })
                .collect(),
            pods: self.pods.iter().map(ClusterPod::info).collect(),
        }
    }

    /// Every twilld log, for failure messages.
    /// Every twilld log plus the underlay's state (links, neighbours, routes, the switch's FDB, whether each
    /// node reaches etcd's address), for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let ns = n.node.ns.name();
            out.push_str(&format!("--- {} ({ns}) twilld log ---\n", n.name()));
            out.push_str(&std::fs::read_to_string(n.node.log_file()).unwrap_or_default());
            let reaches = ping_from(ns, &crate::cluster::SWITCH_IP.to_string());
            out.push_str(&format!(
                "--- {} underlay: pings {}: {reaches} ---\n{}{}{}",
                n.name(),
                crate::cluster::SWITCH_IP,
                ip_n(ns, &["-br", "link"]),
                ip_n(ns, &["-4", "neigh"]),
                ip_n(ns, &["-4", "route"])
            ));
        }
        let sw = self.switch.ns.name();
        out.push_str(&format!(
            "--- switch ({sw}) ---\n{}{}{}",
            ip_n(sw, &["-br", "link"]),
            ip_n(sw, &["-4", "neigh"]),
            Command::new("bridge")
                .args(["-n", sw, "fdb", "show", "br", "br0"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        ));
        out
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// `ip -n <ns> <args>` stdout, empty when it fails (a node that is gone has no state).
fn ip_n(ns: &str, args: &[&str]) -> String {
    Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Runs a command inside a named namespace; Ok(stdout) on success.
fn exec_in(ns: &str, cmd: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .map_err(|e| format!("run {} in {ns}: {e}", cmd.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} in {ns} failed ({}): {}{}",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// One ping from namespace `ns` to `ip` (up to 3 tries: the first packet may wait for a neighbour).
fn ping_from(ns: &str, ip: &str) -> bool {
    (0..3).any(|_| exec_in(ns, &["ping", "-n", "-q", "-c", "1", "-W", "1", ip]).is_ok())
}
