//! The test control plane (`twill_tests::kube`) is a real one: the pinned kube-apiserver and
//! kube-controller-manager on etcd, reachable from node namespaces, allocating podCIDRs to registered
//! nodes (single and dual stack), with RBAC enforced on ServiceAccount tokens.
//!
//! Build first: `cargo build --workspace --bins` and `scripts/build-upstream.sh kubernetes`.

use std::net::IpAddr;
use std::time::Duration;

use twill_tests::cluster::Switch;
use twill_tests::kube::{ControlPlane, Credentials, NodeSpec, Options};

/// `a.b.c.d/len` parsed.
fn cidr(text: &str) -> (IpAddr, u8) {
    let (ip, len) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("not a CIDR: {text}"));
    (
        ip.parse().unwrap_or_else(|e| panic!("{text}: {e}")),
        len.parse().unwrap_or_else(|e| panic!("{text}: {e}")),
    )
}

fn within(inner: &str, outer: &str) -> bool {
    let ((a, alen), (b, blen)) = (cidr(inner), cidr(outer));
    if alen < blen {
        return false;
    }
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(blen)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(blen)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

#[test]
fn control_plane_serves_the_pinned_release_and_allocates_node_pod_cidrs() {
    let switch = Switch::new();
    let mut cp = ControlPlane::start(&switch, Options::ipv4());
    eprintln!(
        "kube-apiserver ready {:.2}s after its start",
        cp.apiserver_startup().as_secs_f64()
    );
    let version = cp.kubectl_ok(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&version).expect("version JSON");
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.37.2", "{version}");

    let nodes: Vec<_> = (1..=3).map(|i| switch.add_node(i)).collect();
    let mut cidrs = Vec::new();
    for node in &nodes {
        let got = cp.join(node);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(within(&got[0], "10.244.0.0/16"), "{got:?}");
        assert_eq!(cidr(&got[0]).1, 24, "{got:?}");
        cidrs.push(got[0].clone());
    }
    let mut distinct = cidrs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), cidrs.len(), "podCIDRs overlap: {cidrs:?}");

    // The node object carries what a kubelet would register: its address and labels.
    let spec = NodeSpec {
        name: "labelled".into(),
        internal_ips: vec!["10.250.0.77".parse().expect("ip")],
        labels: Vec::new(),
    }
    .label("twill.test/role", "worker");
    cp.register_node(&spec);
    let node = cp.node("labelled").expect("registered node");
    assert_eq!(node["metadata"]["labels"]["twill.test/role"], "worker");
    assert_eq!(node["status"]["addresses"][0]["address"], "10.250.0.77");
    cp.wait_pod_cidrs("labelled", Duration::from_secs(30));

    cp.delete_node("labelled");
    assert!(cp.node("labelled").is_none(), "node still there");

    // An API server restart keeps the cluster's state (it lives in etcd).
    cp.stop_apiserver();
    assert!(!cp.kubectl(&["get", "nodes"]).status.success());
    cp.start_apiserver();
    eprintln!(
        "kube-apiserver ready {:.2}s after its restart",
        cp.apiserver_startup().as_secs_f64()
    );
    assert_eq!(cp.pod_cidrs("node1"), cidrs[..1]);
}

#[test]
fn dual_stack_nodes_get_a_pod_cidr_of_each_family() {
    let switch = Switch::new();
    let cp = ControlPlane::start(&switch, Options::dual_stack());
    for i in 1..=2 {
        let node = switch.add_node(i);
        let got = cp.join(&node);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(within(&got[0], "10.244.0.0/16"), "{got:?}");
        assert_eq!(cidr(&got[0]).1, 24, "{got:?}");
        assert!(within(&got[1], "fd00:10:244::/56"), "{got:?}");
        assert_eq!(cidr(&got[1]).1, 64, "{got:?}");
    }
}

/// A ServiceAccount token works from inside a node namespace, and only for what its ClusterRole grants.
#[test]
fn service_account_tokens_from_node_namespaces_get_only_their_role() {
    let switch = Switch::new();
    let cp = ControlPlane::start(&switch, Options::ipv4());
    let node = switch.add_node(1);
    cp.join(&node);
    cp.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: node-reader
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list]
"#,
    );
    let token = cp.token_with_cluster_role("readers", "reader", "node-reader");
    let kubeconfig = cp.kubeconfig("reader.kubeconfig", &Credentials::Token(token));

    let out = cp.kubectl_as(
        &kubeconfig,
        Some(&node.ns),
        &["get", "node", "node1", "-o", "name"],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim() == "node/node1",
        "reading nodes from the node namespace: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for denied in [
        &["get", "secrets", "-A"][..],
        &["label", "node", "node1", "x=y"][..],
    ] {
        let out = cp.kubectl_as(&kubeconfig, Some(&node.ns), denied, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("forbidden"),
            "kubectl {denied:?} must be forbidden: {err}"
        );
    }
}
