//! A whole twill cluster on one machine, as a runtime and an operator see it (docs/testing.md,
//! topologies): an underlay switch namespace running etcd, N node namespaces each running `twilld`, and pods
//! created and deleted through the real libcni driver inside their node with the stock flannel + portmap
//! conflist (docs/architecture.md, flannel contracts), every node with its own CNI config dir, result cache, host-local
//! and flannel data dirs and the subnet file its own twilld writes (subnet.env, same page).
//!
//! Two halves:
//! - [`Cluster`] owns everything (guards from `cluster.rs`, removed on drop even after a panic) and changes the
//!   cluster: nodes join and leave, daemons restart or die, etcd restarts, pods come and go.
//! - [`ClusterState`] is a plain, serialisable description (names, addresses, directories) with every check:
//!   the lease table, the pod-to-pod matrix, the host-port check, throughput, leftovers per node. The end-to-end
//!   tests call it on their in-process cluster; `twill-cluster report` calls it on the state file the
//!   supervisor (`twill-cluster up`) wrote, from another process.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::bins::bin;
use crate::cluster::{wait_until, Node, Switch, Twilld, TwilldArgs};
use crate::etcd::Etcd;
use crate::libcni::LibCni;
use crate::netns::{Netns, NETNS_RUN_DIR};

/// The network config every cluster runs with (`conf/net-conf.json`: 10.244.0.0/16, /24 per node, VXLAN VNI 1).
pub const NET_CONFIG: &str = include_str!("../../conf/net-conf.json");
/// The stock Kubernetes conflist (flannel + portmap), as shipped in `conf/`.
pub const STOCK_CONFLIST: &str = include_str!("../../conf/10-flannel.conflist");
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

/// Runs `f` on a fresh thread that has entered the network namespace `/run/netns/<ns>`; the caller's thread
/// never changes namespace.
fn spawn_in_netns<F, R>(ns: &str, f: F) -> std::thread::JoinHandle<Result<R, String>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let path = Path::new(NETNS_RUN_DIR).join(ns);
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        // SAFETY: setns on this (new, short-lived) thread with a valid namespace fd.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "setns into {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
}

/// A TCP server inside a pod answering every connection with one line; stopped on drop.
struct Greeter {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Greeter {
    fn start(ns: &str, port: u16, greeting: String) -> Result<Greeter, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let flag = stop.clone();
        let handle = spawn_in_netns(ns, move || {
            let listener = match TcpListener::bind(("0.0.0.0", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(format!("bind 0.0.0.0:{port}: {e}")));
                    return;
                }
            };
            let _ = listener.set_nonblocking(true);
            let _ = tx.send(Ok(()));
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(format!("{greeting}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| Err(format!("greeting server in {ns} did not start")));
        let g = Greeter {
            stop,
            handle: Some(handle),
        };
        ready.map_err(|e| format!("greeting server in {ns}: {e}"))?;
        Ok(g)
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects from namespace `ns` to `addr` and reads the greeting line.
fn fetch_from(ns: &str, addr: SocketAddr) -> Result<String, String> {
    spawn_in_netns(ns, move || -> Result<String, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut text = String::new();
                    s.read_to_string(&mut text)
                        .map_err(|e| format!("read from {addr}: {e}"))?;
                    return Ok(text);
                }
                Err(e) => last = format!("connect {addr}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(last)
    })
    .join()
    .map_err(|_| "client thread panicked".to_string())??
}

/// A background process inside a namespace, killed on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// iperf3 from `client_ns` to a server started in `server_ns` at `ip`; bits per second received.
pub fn iperf(server_ns: &str, client_ns: &str, ip: Ipv4Addr, secs: u32) -> Result<f64, String> {
    let port = "5201";
    let _server = Background(
        Command::new("ip")
            .args(["netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start iperf3 server (install iperf3): {e}"))?,
    );
    let mut last = String::new();
    // Bounded everywhere: the cluster (namespaces, daemons) can go away under a report run by another
    // process, and an iperf3 client waiting on a vanished peer would otherwise wait for minutes.
    let deadline = Instant::now() + IPERF_RETRY_WINDOW;
    while Instant::now() < deadline {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", client_ns, "iperf3", "-J", "-c"])
            .arg(ip.to_string())
            .args(["-p", port, "-t", &secs.to_string()])
            .args([
                "--connect-timeout",
                &IPERF_CONNECT_TIMEOUT.as_millis().to_string(),
            ]);
        let out = crate::exec::run_command(cmd, None, &[], iperf_timeout(secs))
            .map_err(|e| format!("run iperf3 client: {e}"))?;
        if out.timed_out {
            return Err(format!(
                "iperf3 {client_ns} -> {ip}: no result within {:?} (killed)",
                iperf_timeout(secs)
            ));
        }
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps);
        }
        last = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| out.stderr.clone());
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("iperf3 {client_ns} -> {ip}: {last}"))
}

/// How long the iperf3 client waits for the control connection (the server may still be starting).
const IPERF_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack for a running test that stalls: the client only sends, so iperf3's own `--rcv-timeout` (valid only
/// in receiving mode) cannot bound it; the kill in [`iperf_timeout`] does.
const IPERF_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`iperf`] keeps retrying a client that could not connect (server not listening yet).
const IPERF_RETRY_WINDOW: Duration = Duration::from_secs(10);

/// The most one iperf3 client run of `secs` seconds may take before it is killed.
fn iperf_timeout(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs))
        + IPERF_CONNECT_TIMEOUT
        + IPERF_IDLE_TIMEOUT
        + Duration::from_secs(5)
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
