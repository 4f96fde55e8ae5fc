//! The real flanneld (upstream `github.com/flannel-io/flannel`, built from its Go module) running inside a
//! test node, in etcd mode, beside or instead of twilld: same etcd, same `--iface=eth0`, and the same
//! `subnet.env` path twilld uses on that node (so a node can switch daemons and keep its lease and its pods).
//! SIGKILLed on drop; its kernel state and firewall rules stay in the node namespace, which goes with the node.

use std::path::PathBuf;
use std::process::Command;

use crate::cluster::{DaemonProcess, Node};

/// The flanneld binary: the build of `tests/upstream/flannel` (`scripts/build-upstream.sh flannel`).
pub fn flanneld_bin() -> PathBuf {
    crate::bins::upstream_bin("flannel", "flanneld")
}

/// Options for one flanneld run (flag names are flanneld's own).
#[derive(Debug, Clone)]
pub struct FlanneldArgs {
    /// `--etcd-endpoints`.
    pub etcd: String,
    /// `--etcd-prefix`; None: flanneld's default `/coreos.com/network`.
    pub etcd_prefix: Option<String>,
    /// `--ip-masq`.
    pub ip_masq: bool,
    /// `--healthz-port` (0 = off, flanneld's default).
    pub healthz_port: u16,
    pub extra: Vec<String>,
}

impl FlanneldArgs {
    pub fn new(etcd: &str) -> FlanneldArgs {
        FlanneldArgs {
            etcd: etcd.to_string(),
            etcd_prefix: None,
            ip_masq: true,
            healthz_port: 0,
            extra: Vec::new(),
        }
    }
}

/// flanneld's log on `node` (stderr of every run there, appended).
pub fn log_file(node: &Node) -> PathBuf {
    std::env::temp_dir().join(format!("{}-flanneld.log", node.ns.name()))
}

/// A running flanneld.
pub type Flanneld = DaemonProcess;

/// Starts flanneld inside `node`: underlay `eth0`, subnet file = the node's `subnet.env`.
pub fn start(node: &Node, args: &FlanneldArgs) -> Flanneld {
    let bin = flanneld_bin();
    let log = log_file(node);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node.ns.name()])
        .arg(&bin)
        .arg(format!("--etcd-endpoints={}", args.etcd))
        .arg("--iface=eth0")
        .arg(format!("--subnet-file={}", node.subnet_file().display()))
        .arg(format!("--healthz-port={}", args.healthz_port));
    if let Some(prefix) = &args.etcd_prefix {
        cmd.arg(format!("--etcd-prefix={prefix}"));
    }
    if args.ip_masq {
        cmd.arg("--ip-masq");
    }
    cmd.args(&args.extra);
    DaemonProcess::spawn(cmd, log)
}

/// Starts flanneld inside `node` in Kubernetes mode (`--kube-subnet-mgr`) as kube-flannel.yml runs it: the
/// node name from `NODE_NAME`, the network config from a file, the API server and credentials from
/// `kubeconfig`; underlay `eth0`, subnet file = the node's `subnet.env`.
pub fn start_kube(
    node: &Node,
    kubeconfig: &std::path::Path,
    net_conf: &std::path::Path,
) -> Flanneld {
    start_kube_with(node, kubeconfig, net_conf, &[])
}

/// [`start_kube`] with more flags (e.g. `--kube-annotation-prefix`).
pub fn start_kube_with(
    node: &Node,
    kubeconfig: &std::path::Path,
    net_conf: &std::path::Path,
    extra: &[String],
) -> Flanneld {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node.ns.name()])
        .arg(flanneld_bin())
        .arg("--kube-subnet-mgr")
        .arg(format!("--kubeconfig-file={}", kubeconfig.display()))
        .arg(format!("--net-config-path={}", net_conf.display()))
        .arg("--iface=eth0")
        .arg("--ip-masq")
        .arg(format!("--subnet-file={}", node.subnet_file().display()))
        .args(extra)
        .env("NODE_NAME", node.name());
    DaemonProcess::spawn(cmd, log_file(node))
}
