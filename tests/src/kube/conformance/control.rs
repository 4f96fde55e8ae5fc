//! The control run's network: what kube-flannel.yml installs, from the upstream builds instead of
//! twill. The current reference plugins (`tests/upstream/plugins`) and flannel's CNI plugin
//! (`tests/upstream/flannel-cni`) go into a node's `/opt/cni/bin`, kube-flannel's conflist into its
//! `/etc/cni/net.d`, and flanneld (`tests/upstream/flannel`) runs on the node in Kubernetes mode with
//! kube-flannel's RBAC. flanneld runs as a process in the node's namespaces rather than as a
//! DaemonSet pod: that needs no flannel image, and the conformance specs judge the pod network, not
//! how its daemon was started. A spec that fails on twill and passes here is twill's fault; one that
//! fails on both is the harness's.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::bins::{upstream_bin, Reference};

/// kube-flannel.yml's `cni-conf.json` at the spec version its flannel plugin of the old days spoke:
/// the plugin built here (`tests/upstream/flannel-cni`, the reference meta plugin v0.9.1, since the
/// module proxy does not serve flannel-io/cni-plugin) supports up to 0.4.0, and refuses the manifest's
/// current 1.0.0. The delegated bridge and host-local and portmap are current and take 0.4.0 too.
pub const CONFLIST: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.4.0",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

/// The conflist's file name in `/etc/cni/net.d`, as kube-flannel's init container names it.
pub const CONFLIST_NAME: &str = "10-flannel.conflist";

/// Namespace and ServiceAccount flanneld runs as.
pub const NAMESPACE: &str = "kube-flannel";
pub const SERVICE_ACCOUNT: &str = "flannel";

/// The plugins the conflist calls, and the ones its delegation reaches (bridge, host-local), as
/// `(name, binary)`.
pub fn plugins() -> Vec<(&'static str, PathBuf)> {
    let mut out: Vec<(&'static str, PathBuf)> = ["bridge", "host-local", "loopback", "portmap"]
        .into_iter()
        .map(|p| (p, Reference::Current.bin(p)))
        .collect();
    out.push(("flannel", upstream_bin("flannel-cni", "flannel")));
    out
}

/// The flanneld binary of the pinned flannel release.
pub fn flanneld_bin() -> PathBuf {
    upstream_bin("flannel", "flanneld")
}

/// Copies [`plugins`] into `bin_dir` and writes [`CONFLIST`] into `conf_dir` (a node's `/opt/cni/bin`
/// and `/etc/cni/net.d` as the machine sees them), as kube-flannel's init containers do.
pub fn install(bin_dir: &Path, conf_dir: &Path) {
    for dir in [bin_dir, conf_dir] {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    for (name, binary) in plugins() {
        let dest = bin_dir.join(name);
        // A fresh file, never a write through an existing one (a runtime may be executing it).
        let tmp = bin_dir.join(format!(".{name}.tmp"));
        std::fs::copy(&binary, &tmp)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", binary.display(), tmp.display()));
        std::fs::rename(&tmp, &dest).unwrap_or_else(|e| panic!("rename {}: {e}", dest.display()));
    }
    std::fs::write(conf_dir.join(CONFLIST_NAME), CONFLIST)
        .unwrap_or_else(|e| panic!("write {CONFLIST_NAME}: {e}"));
}

/// kube-flannel.yml's RBAC: namespace, ServiceAccount, ClusterRole `flannel` and its binding.
pub fn rbac_manifest() -> String {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "flannel"},
             "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
             ]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "flannel"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"},
             "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]},
        ],
    })
    .to_string()
}

/// flanneld's arguments as kube-flannel.yml runs it (`--ip-masq --kube-subnet-mgr`), with the API
/// server and credentials from `kubeconfig`, the network config from `net_conf`, the underlay `eth0`.
/// The node name comes from the environment: set `NODE_NAME`.
pub fn flanneld_args(kubeconfig: &Path, net_conf: &Path) -> Vec<String> {
    vec![
        "--ip-masq".into(),
        "--kube-subnet-mgr".into(),
        format!("--kubeconfig-file={}", kubeconfig.display()),
        format!("--net-config-path={}", net_conf.display()),
        "--iface=eth0".into(),
    ]
}

/// Sets up the control run's network on every node of `cluster`: kube-flannel's RBAC, the reference
/// plugins and conflist, and one flanneld per node (logs and net-conf.json in `dir`). Drop the returned
/// processes before the cluster, so flanneld stops before its node goes.
pub fn start_network(
    cluster: &crate::kube::cluster::KubeCluster,
    dir: &Path,
) -> Vec<crate::cluster::DaemonProcess> {
    let cp = cluster.control_plane();
    cp.apply(&rbac_manifest());
    let token = cp.token(NAMESPACE, SERVICE_ACCOUNT);
    let kubeconfig = cp.kubeconfig(
        "flannel.kubeconfig",
        &crate::kube::Credentials::Token(token),
    );
    let net_conf = dir.join("net-conf.json");
    std::fs::write(&net_conf, crate::e2e::NET_CONFIG).expect("write net-conf.json");
    let mut flanneld = Vec::new();
    for node in cluster.nodes() {
        install(
            &node.host_path("/opt/cni/bin"),
            &node.host_path("/etc/cni/net.d"),
        );
        let mut cmd = node.command(flanneld_bin());
        cmd.args(flanneld_args(&kubeconfig, &net_conf))
            .env("NODE_NAME", node.name());
        flanneld.push(crate::cluster::DaemonProcess::spawn(
            cmd,
            dir.join(format!("flanneld-{}.log", node.name())),
        ));
    }
    flanneld
}
