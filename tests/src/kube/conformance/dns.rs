//! Cluster DNS for the conformance cluster: CoreDNS (`tests/upstream/coredns`, the version kubeadm of the
//! pinned release deploys) as kubeadm deploys it: a Deployment in kube-system behind the `kube-dns`
//! Service, with kubeadm's RBAC. The e2e Service specs dial Services by name (`nc endpoint-test2 80`
//! from a pod), so a cluster without DNS fails them however good its network is. Kubelets must name
//! the Service's address as `clusterDNS` and [`CLUSTER_DOMAIN`] as `clusterDomain`.
//!
//! The Corefile has no `forward`: names outside the cluster domain get no answer instead of going to
//! the machine's resolvers (tests send no traffic off the machine).

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::runtimes::image::{self, ImageConfig};

/// The image kubeadm of the pinned release names (`CoreDNSImageName`, `CoreDNSVersion`).
pub const COREDNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.14.6";
/// The cluster domain kubelets and the e2e framework default to.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The CoreDNS binary built from the pinned module.
pub fn coredns_bin() -> PathBuf {
    crate::bins::upstream_bin("coredns", "coredns")
}

/// The `kube-dns` Service address kubeadm picks: the tenth address of the Service range
/// (`10.96.0.0/16` gives `10.96.0.10`).
pub fn cluster_dns_ip(service_cidr: &str) -> String {
    let base = service_cidr.split('/').next().unwrap_or(service_cidr);
    let ip: std::net::Ipv4Addr = base
        .parse()
        .unwrap_or_else(|e| panic!("service range {service_cidr}: {e}"));
    std::net::Ipv4Addr::from(u32::from(ip) + 10).to_string()
}

/// kubeadm's Corefile without `forward`, `loop` and `reload`; `kubernetes_extra` goes inside the
/// kubernetes block (e.g. `kubeconfig <path> <context>` for a CoreDNS outside the cluster).
pub fn corefile(port: u16, kubernetes_extra: &str) -> String {
    format!(
        ".:{port} {{\n    errors\n    health {{\n        lameduck 5s\n    }}\n    ready\n    \
         kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n        pods insecure\n        \
         fallthrough in-addr.arpa ip6.arpa\n        ttl 30\n        {kubernetes_extra}\n    }}\n    \
         cache 30\n    loadbalance\n}}\n"
    )
}

/// An OCI archive of [`COREDNS_IMAGE`]: the binary on the busybox rootfs, run as kubeadm's Deployment
/// runs it (`-conf /etc/coredns/Corefile`).
pub fn image_archive(dir: &Path) -> PathBuf {
    let root = image::busybox_rootfs(&dir.join("coredns"));
    let bin = coredns_bin();
    std::fs::copy(&bin, root.join("coredns"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
    image::oci_archive(
        &root,
        dir,
        "coredns",
        &[ImageConfig {
            name: COREDNS_IMAGE,
            entrypoint: &["/coredns"],
            cmd: &[],
        }],
    )
}

/// The objects kubeadm creates for CoreDNS (ServiceAccount, ClusterRole `system:coredns` and its
/// binding, the Corefile ConfigMap, the Deployment and the `kube-dns` Service at `dns_ip`), as a List.
pub fn manifest(dns_ip: &str, replicas: u32) -> String {
    let labels = json!({"k8s-app": "kube-dns"});
    let port = |name: &str, port: u16, protocol: &str| json!({"name": name, "port": port, "targetPort": port, "protocol": protocol});
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "coredns", "namespace": "kube-system"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "system:coredns"},
             "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                 "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                 "verbs": ["list", "watch"]},
             ]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "system:coredns"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "system:coredns"},
             "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "coredns", "namespace": "kube-system"},
             "data": {"Corefile": corefile(53, "")}},
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
             "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        // Resolving through itself would loop: CoreDNS uses the node's resolver.
                        "dnsPolicy": "Default",
                        "tolerations": [
                            {"key": "CriticalAddonsOnly", "operator": "Exists"},
                            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                        ],
                        "containers": [{
                            "name": "coredns",
                            "image": COREDNS_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns",
                                              "readOnly": true}],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            ],
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                              "initialDelaySeconds": 10, "periodSeconds": 10},
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181},
                                               "periodSeconds": 2},
                        }],
                        "volumes": [{"name": "config-volume",
                                     "configMap": {"name": "coredns",
                                                   "items": [{"key": "Corefile", "path": "Corefile"}]}}],
                    },
                },
             }},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "kube-dns", "namespace": "kube-system",
                          "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
             "spec": {
                "selector": labels,
                "clusterIP": dns_ip,
                "ports": [port("dns", 53, "UDP"), port("dns-tcp", 53, "TCP")],
             }},
        ],
    })
    .to_string()
}
