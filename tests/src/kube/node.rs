//! A Kubernetes node on one machine: a node network namespace on the cluster's switch (as every cluster
//! test has) plus a mount namespace of its own, in which a containerd, a kubelet and a kube-proxy run.
//!
//! Nodes share one filesystem, real nodes do not: the twill DaemonSet's hostPath volumes
//! (`/opt/cni/bin`, `/etc/cni/net.d`, `/run/flannel`) and what a kubelet and containerd keep under fixed
//! paths must land per node. So each node's mount namespace (kept alive by a bind-mounted namespace file,
//! `unshare --mount=FILE`) bind-mounts a directory of the node's own over each of them (one the machine
//! lacks is made inside the namespace only, see `MountNs`); everything the node's programs exec (CNI
//! plugins, runc, the containers' hostPath mounts) sees the node's files.
//! The mount namespace is private: nothing mounted in it reaches the machine, and it goes when the last
//! process in it exits and its file is unmounted.
//!
//! Everything is undone on drop, even when the test panics: kube-proxy, kubelet, containerd (which tears
//! down its pods through CRI, so CNI DEL runs), leftover container processes and the node's cgroups, the
//! namespace file, the node's directory, and the network namespace.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::mount_ns::MountNs;
use super::{kube_bin, tail, ControlPlane, Credentials};
use crate::cluster::{DaemonProcess, Node};
use crate::runtimes::containerd::{Containerd, Placement};

/// Paths a node keeps to itself (a directory of the node's bind-mounted over each, inside its mount
/// namespace): the CNI directories the DaemonSet installs into, flannel's subnet.env, CNI and IPAM state,
/// pod logs, and the runtime's network namespace mounts.
pub const NODE_PATHS: &[&str] = &[
    "/opt/cni/bin",
    "/etc/cni/net.d",
    "/run/flannel",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    "/run/netns",
];

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// kube-proxy's mode (`iptables` or `nftables`).
    pub proxy_mode: String,
    /// Taints the node registers with (`key=value:Effect` or `key:Effect`).
    pub taints: Vec<String>,
    /// Labels the node registers with.
    pub labels: Vec<(String, String)>,
    /// The kubelet's `clusterDNS` (the cluster DNS Service's address, written into pods'
    /// resolv.conf with the `cluster.local` search domains); empty: pods get the node's resolv.conf.
    pub cluster_dns: Vec<String>,
    /// containerd's log level on the node (its default when `None`).
    pub containerd_log_level: Option<String>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            proxy_mode: "iptables".into(),
            taints: Vec::new(),
            labels: Vec::new(),
            cluster_dns: Vec::new(),
            containerd_log_level: None,
        }
    }
}

/// A running Kubernetes node. Drop order: kube-proxy, kubelet, containerd, container processes and
/// cgroups, mounts, directory, network namespace.
pub struct KubeNode {
    kube_proxy: Option<DaemonProcess>,
    kubelet: Option<DaemonProcess>,
    containerd: Option<Containerd>,
    cgroup_root: String,
    mounts: Option<MountNs>,
    /// The node's network namespace on the switch.
    pub net: Node,
    dir: tempfile::TempDir,
}

impl KubeNode {
    /// Starts containerd, the kubelet (which registers the node) and kube-proxy in `net`, a node namespace
    /// on the switch of `cp`.
    pub fn start(cp: &ControlPlane, net: Node, opts: &NodeOptions) -> KubeNode {
        let dir = tempfile::Builder::new()
            .prefix(&format!("twill-{}-", net.name()))
            .tempdir()
            .unwrap_or_else(|e| panic!("creating the node's directory: {e}"));
        let mounts = MountNs::create_over(dir.path(), NODE_PATHS);
        let cgroup_root = format!("/twill-{}", net.ns.name());
        let mut node = KubeNode {
            kube_proxy: None,
            kubelet: None,
            containerd: None,
            cgroup_root,
            mounts: Some(mounts),
            net,
            dir,
        };
        node.containerd = Some(Containerd::start_with(
            &Placement {
                bin_dir: "/opt/cni/bin".into(),
                conf_dir: Some("/etc/cni/net.d".into()),
                netns: Some(node.net.ns.name().to_string()),
                mount_ns: Some(node.mounts().file().to_path_buf()),
                log_level: opts.containerd_log_level.clone(),
            },
            None,
        ));
        node.start_kubelet(cp, opts);
        node.start_kube_proxy(cp, opts);
        node
    }

    fn mounts(&self) -> &MountNs {
        self.mounts.as_ref().expect("the node's mount namespace")
    }

    /// The node's name (its Node object).
    pub fn name(&self) -> String {
        self.net.name()
    }

    /// Its address on the underlay (the Node's InternalIP).
    pub fn ip(&self) -> Ipv4Addr {
        self.net.underlay_ip
    }

    /// Its network namespace's name.
    pub fn netns(&self) -> &str {
        self.net.ns.name()
    }

    /// The node's containerd.
    pub fn containerd(&self) -> &Containerd {
        self.containerd.as_ref().expect("the node's containerd")
    }

    /// Its containerd's CRI socket.
    pub fn containerd_socket(&self) -> &Path {
        &self.containerd().socket
    }

    /// The network namespace of pod `namespace/name` on this node, as a path inside the node's mount
    /// namespace (where containerd mounted it).
    pub fn pod_netns(&self, namespace: &str, name: &str) -> String {
        let sock = self.containerd_socket().display().to_string();
        let filter = format!(
            "labels.\"io.cri-containerd.kind\"==sandbox,labels.\"io.kubernetes.pod.name\"=={name},\
             labels.\"io.kubernetes.pod.namespace\"=={namespace}"
        );
        let out = self.exec(&[
            "ctr",
            "--address",
            &sock,
            "-n",
            "k8s.io",
            "containers",
            "ls",
            "-q",
            &filter,
        ]);
        let ids = String::from_utf8_lossy(&out.stdout).into_owned();
        let id = ids
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no sandbox of pod {namespace}/{name} on {}", self.name()));
        self.containerd().sandbox_netns(id.trim())
    }

    /// A command run inside pod `namespace/name`'s network namespace on this node (append the program).
    pub fn pod_command(&self, namespace: &str, name: &str) -> Command {
        let netns = self.pod_netns(namespace, name);
        let mut c = self.command("nsenter");
        c.arg(format!("--net={netns}"));
        c
    }

    /// The node's own directory standing for `path` (one of [`NODE_PATHS`]), as seen from the machine.
    pub fn host_path(&self, path: &str) -> PathBuf {
        assert!(NODE_PATHS.contains(&path), "{path} is not kept per node");
        MountNs::own(self.dir.path(), path)
    }

    /// A command run inside the node: its network and mount namespaces.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.mounts().enter();
        c.arg(format!("--net=/run/netns/{}", self.netns()))
            .arg(program);
        c
    }

    /// Runs `cmd` inside the node; its output whatever the status.
    pub fn exec(&self, cmd: &[&str]) -> std::process::Output {
        self.command(cmd[0])
            .args(&cmd[1..])
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?} in {}: {e}", self.name()))
    }

    fn spawn(&self, program: &str, args: &[String]) -> DaemonProcess {
        let mut cmd = self.command(kube_bin(program));
        cmd.args(args);
        DaemonProcess::spawn(cmd, self.log_path(program))
    }

    fn log_path(&self, program: &str) -> PathBuf {
        self.dir.path().join(format!("{program}.log"))
    }

    fn start_kubelet(&mut self, cp: &ControlPlane, opts: &NodeOptions) {
        let d = self.dir.path();
        let name = self.name();
        let creds = cp.client_cert(
            &format!("kubelet-{}", self.netns()),
            &format!("system:node:{name}"),
            &["system:nodes"],
        );
        let kubeconfig = cp.kubeconfig_at(&d.join("kubelet.kubeconfig"), &creds);
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.ip().to_string(),
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            // The API server authenticates with its kubelet-client certificate; others ask the API server.
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": true},
                "x509": {"clientCAFile": cp.ca_cert()},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": format!("unix://{}", self.containerd_socket().display()),
            "cgroupDriver": "cgroupfs",
            // This machine has cgroup v1 (hybrid); kubelet 1.37 refuses it unless told.
            "failCgroupV1": false,
            "failSwapOn": false,
            "clusterDNS": opts.cluster_dns,
            "clusterDomain": "cluster.local",
            // Per-QoS cgroups and node-allocatable enforcement need cgroup controllers the kubelet owns at
            // the root; the node's pods go into a cgroup subtree of their own instead (removed on drop).
            "cgroupsPerQOS": false,
            "enforceNodeAllocatable": [],
            "cgroupRoot": self.cgroup_root,
            // Fail rather than rewrite machine-wide kernel settings (see mount_ns::KUBELET_SYSCTLS).
            "protectKernelDefaults": true,
            // Lowering its own oom_score_adj needs CAP_SYS_RESOURCE, which this machine lacks.
            "oomScoreAdj": 0,
            "localStorageCapacityIsolation": false,
            // Thresholds near zero: nodes share the machine's disk and memory with other tests.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": false,
            "nodeStatusUpdateFrequency": "4s",
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "registerWithTaints": opts.taints.iter().map(|t| taint(t)).collect::<Vec<_>>(),
        });
        let config_path = d.join("kubelet-config.json");
        std::fs::write(&config_path, config.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let mut args = vec![
            format!("--config={}", config_path.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={}", d.join("kubelet").display()),
            format!("--hostname-override={name}"),
            format!("--node-ip={}", self.ip()),
        ];
        if !opts.labels.is_empty() {
            let labels: Vec<String> = opts
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            args.push(format!("--node-labels={}", labels.join(",")));
        }
        let mut kubelet = self.spawn("kubelet", &args);
        std::thread::sleep(Duration::from_millis(300));
        if !kubelet.is_running() {
            panic!(
                "kubelet of {name} exited at start; its log:\n{}",
                tail(&self.log_path("kubelet"), 60)
            );
        }
        self.kubelet = Some(kubelet);
    }

    fn start_kube_proxy(&mut self, cp: &ControlPlane, opts: &NodeOptions) {
        let d = self.dir.path();
        let creds: Credentials = cp.client_cert(
            &format!("kube-proxy-{}", self.netns()),
            "system:kube-proxy",
            &[],
        );
        let kubeconfig = cp.kubeconfig_at(&d.join("kube-proxy.kubeconfig"), &creds);
        let args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={}", self.name()),
            format!("--proxy-mode={}", opts.proxy_mode),
            format!("--cluster-cidr={}", cp.options().cluster_cidrs.join(",")),
            // conntrack's table size and timeouts are machine-wide: leave them as they are.
            "--conntrack-max-per-core=0".into(),
            "--conntrack-tcp-timeout-established=0s".into(),
            "--conntrack-tcp-timeout-close-wait=0s".into(),
            "--metrics-bind-address=127.0.0.1:10249".into(),
            "--healthz-bind-address=127.0.0.1:10256".into(),
        ];
        let mut proxy = self.spawn("kube-proxy", &args);
        std::thread::sleep(Duration::from_millis(300));
        if !proxy.is_running() {
            panic!(
                "kube-proxy of {} exited at start; its log:\n{}",
                self.name(),
                tail(&self.log_path("kube-proxy"), 60)
            );
        }
        self.kube_proxy = Some(proxy);
    }

    /// The last lines of the node's logs (kubelet, kube-proxy, containerd), for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for program in ["kubelet", "kube-proxy"] {
            text.push_str(&format!(
                "--- {} {program} ---\n{}\n",
                self.name(),
                tail(&self.log_path(program), 30)
            ));
        }
        if let Some(c) = &self.containerd {
            text.push_str(&format!(
                "--- {} containerd ---\n{}\n",
                self.name(),
                c.log()
            ));
        }
        text
    }

    /// The node's directory (logs, kubelet root, containerd state); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Ids of the containers (sandboxes included) a containerd whose directory is `dir` runs or ran in the CRI
/// namespace `k8s.io`.
pub fn task_ids(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("state/io.containerd.runtime.v2.task/k8s.io"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process left in cgroup `root` (a cgroup root as given to a kubelet, e.g. `/twill-<netns>`) of
/// every controller, and removes its cgroups, deepest first.
pub fn remove_cgroups(root: &str) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for c in controllers.flatten() {
        let root = c.path().join(root.trim_start_matches('/'));
        if !root.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&root, &mut dirs);
        for d in &dirs {
            for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
            {
                // SAFETY: plain kill(2) of a process in the node's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for d in dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// `key[=value]:Effect` as a taint object.
fn taint(text: &str) -> serde_json::Value {
    let (kv, effect) = text
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("taint {text} has no :Effect"));
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    json!({"key": key, "value": value, "effect": effect})
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        if let Some(mut p) = self.kube_proxy.take() {
            p.terminate();
        }
        if let Some(mut k) = self.kubelet.take() {
            k.terminate();
        }
        // containerd's own drop stops and removes the pods (CNI DEL) and kills its shims. Containers of
        // pods it could not stop are found by their cgroups (containerd's `/k8s.io/<id>`, as the kubelet
        // gives it no parent with `cgroupsPerQOS: false`).
        let tasks = self
            .containerd
            .as_ref()
            .map(|c| task_ids(c.dir()))
            .unwrap_or_default();
        self.containerd.take();
        for id in tasks {
            remove_cgroups(&format!("/k8s.io/{id}"));
        }
        remove_cgroups(&self.cgroup_root);
        self.mounts.take();
        crate::runtimes::unmount_below(self.dir.path());
    }
}
