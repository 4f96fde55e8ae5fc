//! A real Kubernetes cluster on one machine, with twill deployed the way users deploy it.
//!
//! The control plane (`ControlPlane`: etcd, kube-apiserver, kube-controller-manager with every default
//! controller) plus kube-scheduler run in the switch namespace; each node ([`KubeNode`]) is a network
//! namespace on the switch with a mount namespace of its own, running containerd, a kubelet and
//! kube-proxy. Node 1 is the control-plane node: labelled `node-role.kubernetes.io/control-plane` and,
//! as kubeadm and kind set it up, tainted `NoSchedule` unless `ClusterOptions::schedulable_control_plane`
//! (the twill DaemonSet tolerates the taint; workloads land on the workers).
//!
//! `deploy_twill` imports the twill image into each node's containerd (no registry) and applies
//! `conf/kubernetes/kube-twill.yml` unchanged with kubectl; the DaemonSet's init containers install the
//! CNI plugins and the conflist into the node's `/opt/cni/bin` and `/etc/cni/net.d`, and the kubelets
//! turn Ready once they see it.
//!
//! Everything is torn down on drop: nodes first (their pods through CRI), then the scheduler, the control
//! plane and the switch.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::node::{KubeNode, NodeOptions};
use super::{output_text, tail, twill_image, ControlPlane, Options};
use crate::bins::workspace_dir;
use crate::cluster::{wait_until, DaemonProcess, Switch, SWITCH_IP};

/// The control-plane node's role label and taint (kubeadm's).
pub const CONTROL_PLANE_ROLE: &str = "node-role.kubernetes.io/control-plane";

/// How a cluster is built.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of nodes (node1 is the control-plane node).
    pub nodes: u8,
    /// Address plan and controllers of the control plane.
    pub kube: Options,
    /// Per-node settings (kube-proxy mode, extra labels and taints).
    pub node: NodeOptions,
    /// Leave node1 without the control-plane `NoSchedule` taint.
    pub schedulable_control_plane: bool,
    /// Prefix of the cluster's namespace names (`tw-<prefix>sw-...`), so an abandoned cluster can be swept.
    pub prefix: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        let mut kube = Options::ipv4();
        // A cluster that runs workloads needs them all: Deployments, DaemonSets, EndpointSlices, garbage
        // collection, namespaces, node lifecycle, ServiceAccount tokens.
        kube.controllers = vec!["*".into()];
        ClusterOptions {
            nodes: 3,
            kube,
            node: NodeOptions::default(),
            schedulable_control_plane: false,
            prefix: "k".into(),
        }
    }
}

/// A running cluster. Fields drop in order: nodes, scheduler, control plane, switch, files.
pub struct KubeCluster {
    nodes: Vec<KubeNode>,
    scheduler: Option<DaemonProcess>,
    cp: ControlPlane,
    switch: Switch,
    opts: ClusterOptions,
    twill_archive: Option<PathBuf>,
    dir: tempfile::TempDir,
}

impl KubeCluster {
    /// Starts the control plane, the scheduler and `opts.nodes` nodes, and waits until every node is
    /// registered. Nodes stay NotReady until a network is deployed (`deploy_twill`).
    pub fn start(opts: ClusterOptions) -> KubeCluster {
        crate::bins::require_root();
        let dir = tempfile::Builder::new()
            .prefix("twill-kube-cluster-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating the cluster's directory: {e}"));
        let switch = Switch::with_prefix(&opts.prefix);
        let cp = ControlPlane::start(&switch, opts.kube.clone());
        let mut cluster = KubeCluster {
            nodes: Vec::new(),
            scheduler: None,
            cp,
            switch,
            opts,
            twill_archive: None,
            dir,
        };
        cluster.start_scheduler();
        for index in 1..=cluster.opts.nodes {
            cluster.add_node(index);
        }
        cluster
    }

    /// `start` then `deploy_twill`: a cluster whose nodes are Ready on twill.
    pub fn start_with_twill(opts: ClusterOptions) -> KubeCluster {
        let mut cluster = Self::start(opts);
        cluster.deploy_twill();
        cluster
    }

    fn start_scheduler(&mut self) {
        let creds = self
            .cp
            .client_cert("scheduler", "system:kube-scheduler", &[]);
        let kubeconfig = self.cp.kubeconfig("scheduler.kubeconfig", &creds);
        let args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--authentication-kubeconfig={}", kubeconfig.display()),
            format!("--authorization-kubeconfig={}", kubeconfig.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--profiling=false".into(),
        ];
        let mut scheduler = self.cp.spawn("kube-scheduler", &args);
        std::thread::sleep(Duration::from_millis(300));
        if !scheduler.is_running() {
            panic!(
                "kube-scheduler exited at start; its log:\n{}",
                tail(&self.cp.dir().join("kube-scheduler.log"), 60)
            );
        }
        self.scheduler = Some(scheduler);
    }

    /// Starts node `index` (10.250.0.<index>, named `node<index>`), waits until it is registered, and
    /// imports the twill image into it when twill is deployed. Node 1 is the control-plane node.
    pub fn add_node(&mut self, index: u8) -> &KubeNode {
        let net = self.switch.add_node(index);
        // Programs that pick "the" interface by the default route (twilld and flanneld by default)
        // find eth0; the switch routes nowhere further.
        net.ns
            .ip(&["route", "add", "default", "via", &SWITCH_IP.to_string()]);
        let mut node_opts = self.opts.node.clone();
        if index == 1 && !self.opts.schedulable_control_plane {
            node_opts
                .taints
                .push(format!("{CONTROL_PLANE_ROLE}:NoSchedule"));
        }
        let node = KubeNode::start(&self.cp, net, &node_opts);
        let name = node.name();
        if let Some(archive) = &self.twill_archive {
            node.containerd().import_tar(archive);
        }
        self.nodes.push(node);
        let registered = wait_until(Duration::from_secs(60), || self.cp.node(&name).is_some());
        if !registered {
            panic!("node {name} did not register within 60 s\n{}", self.logs());
        }
        if index == 1 {
            // A kubelet may not set node-role labels on its own node (NodeRestriction); kubeadm sets it.
            self.kubectl_ok(&["label", "node", &name, &format!("{CONTROL_PLANE_ROLE}=")]);
        }
        self.cp.wait_pod_cidrs(&name, Duration::from_secs(30));
        self.nodes.last().expect("the node just added")
    }

    /// Deletes node `name` as an operator does: drains it (`kubectl drain`), deletes its Node object, stops
    /// its kubelet, kube-proxy and containerd and removes the node.
    pub fn remove_node(&mut self, name: &str) {
        let pos = self
            .nodes
            .iter()
            .position(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        self.kubectl_ok(&[
            "drain",
            name,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--force",
            "--timeout=60s",
        ]);
        self.cp.delete_node(name);
        drop(self.nodes.remove(pos));
    }

    /// Builds (or takes, see `twill_image::archive`) the twill image, imports it into every node's
    /// containerd, applies `conf/kubernetes/kube-twill.yml` and waits until the DaemonSet runs on every
    /// node and every node is Ready.
    pub fn deploy_twill(&mut self) {
        let start = Instant::now();
        let archive = twill_image::archive(self.dir.path());
        self.import_image(&archive);
        self.twill_archive = Some(archive);
        let manifest = workspace_dir().join("conf/kubernetes/kube-twill.yml");
        self.kubectl_ok(&["apply", "-f", &manifest.display().to_string()]);
        self.wait_twill_ready(Duration::from_secs(180));
        self.wait_nodes_ready(Duration::from_secs(120));
        eprintln!("twill deployed and nodes Ready in {:?}", start.elapsed());
    }

    /// Waits until the twill DaemonSet has an available, up-to-date pod on every node.
    pub fn wait_twill_ready(&self, timeout: Duration) {
        let mut last = Value::Null;
        let ok = wait_until(timeout, || {
            let out = self.kubectl(&[
                "-n",
                "kube-twill",
                "get",
                "ds",
                "kube-twill-ds",
                "-o",
                "json",
            ]);
            let Ok(ds) = serde_json::from_slice::<Value>(&out.stdout) else {
                return false;
            };
            let s = &ds["status"];
            let want = self.nodes.len() as u64;
            let ok = s["observedGeneration"] == ds["metadata"]["generation"]
                && s["desiredNumberScheduled"].as_u64() == Some(want)
                && s["numberAvailable"].as_u64() == Some(want)
                && s["updatedNumberScheduled"].as_u64() == Some(want);
            last = s.clone();
            ok
        });
        if !ok {
            panic!(
                "the twill DaemonSet is not ready on {} nodes within {timeout:?}: {last}\n{}\n{}",
                self.nodes.len(),
                self.kubectl_text(&["-n", "kube-twill", "get", "pods", "-o", "wide"]),
                self.logs()
            );
        }
    }

    /// Waits until every node reports Ready.
    pub fn wait_nodes_ready(&self, timeout: Duration) {
        let names = self.node_names();
        let mut not_ready = names.clone();
        let ok = wait_until(timeout, || {
            not_ready.retain(|n| !self.node_ready(n));
            not_ready.is_empty()
        });
        if !ok {
            panic!(
                "nodes {not_ready:?} not Ready within {timeout:?}\n{}\n{}",
                self.kubectl_text(&["get", "nodes", "-o", "wide"]),
                self.logs()
            );
        }
    }

    /// Whether node `name` reports Ready.
    pub fn node_ready(&self, name: &str) -> bool {
        self.cp
            .node(name)
            .and_then(|n| n["status"]["conditions"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    }

    /// Imports an image archive (OCI layout or docker archive) into every node's containerd.
    pub fn import_image(&self, archive: &Path) {
        for n in &self.nodes {
            n.containerd().import_tar(archive);
        }
    }

    /// The control plane (API server, certificates, kubectl helpers).
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// The switch (underlay) namespace.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The cluster-admin kubeconfig (server `https://10.250.0.254:6443`, reachable from the switch and
    /// every node namespace).
    pub fn kubeconfig(&self) -> &Path {
        self.cp.admin_kubeconfig()
    }

    pub fn nodes(&self) -> &[KubeNode] {
        &self.nodes
    }

    /// Node `name`.
    pub fn node(&self, name: &str) -> &KubeNode {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(KubeNode::name).collect()
    }

    /// The nodes workloads are scheduled on (all but a tainted control-plane node).
    pub fn worker_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| self.opts.schedulable_control_plane || n.net.index != 1)
            .map(KubeNode::name)
            .collect()
    }

    /// kubectl as cluster admin; its output whatever the status.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.cp.kubectl(args)
    }

    /// kubectl as cluster admin; stdout, or a panic with kubectl's output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.cp.kubectl_ok(args)
    }

    /// kubectl as cluster admin; stdout and stderr whatever the status (for messages).
    pub fn kubectl_text(&self, args: &[&str]) -> String {
        output_text(&self.kubectl(args))
    }

    /// `kubectl apply -f -` of `manifest` as cluster admin.
    pub fn apply(&self, manifest: &str) -> String {
        self.cp.apply(manifest)
    }

    /// The last lines of every component's and node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = self.cp.logs();
        text.push_str(&format!(
            "--- kube-scheduler ---\n{}\n",
            tail(&self.cp.dir().join("kube-scheduler.log"), 20)
        ));
        for n in &self.nodes {
            text.push_str(&n.logs());
        }
        text
    }
}
