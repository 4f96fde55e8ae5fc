//! twilld learning its node's name as flanneld does in a pod without NODE_NAME: from env POD_NAME and
//! POD_NAMESPACE, through the Pod's `spec.nodeName` on the API server (RBAC `pods: get`). The Pods are created
//! directly (no kubelet runs them): bound with `spec.nodeName`, or left unscheduled and bound later.

use super::*;

/// A ClusterRole with what the node name from the pod needs on top of the manifest's role (kube-flannel's
/// role has this rule; the manifest passes NODE_NAME instead and does without).
const POD_READER: &str = "twill-pod-reader";

impl Cluster {
    /// Lets the manifest's ServiceAccount read pods.
    fn grant_pods_get(&self) {
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": POD_READER},
                 "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": POD_READER},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": POD_READER},
                 "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT,
                               "namespace": NAMESPACE}]},
            ],
        });
        self.cp.apply(&manifest.to_string());
    }

    /// Creates Pod `NAMESPACE/name`, bound to `node` or (`None`) left for a scheduler that does not exist.
    fn create_pod(&self, name: &str, node: Option<&str>) {
        let mut spec = json!({
            "serviceAccountName": SERVICE_ACCOUNT,
            "automountServiceAccountToken": false,
            "containers": [{"name": "twilld", "image": "twill:test"}],
        });
        match node {
            Some(n) => spec["nodeName"] = json!(n),
            None => spec["schedulerName"] = json!("no-such-scheduler"),
        }
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec,
        });
        self.cp.apply(&pod.to_string());
    }

    /// Binds an unscheduled Pod to `node`, as a scheduler does (the pods/binding subresource).
    fn bind_pod(&self, name: &str, node: &str) {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let file = self.dir.path().join(format!("binding-{name}.json"));
        std::fs::write(&file, binding.to_string()).unwrap();
        self.cp.kubectl_ok(&[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}/binding"),
            "-f",
            &file.display().to_string(),
        ]);
    }

    /// twilld on `node` with only POD_NAME/POD_NAMESPACE to learn its name from.
    fn start_twilld_as_pod(&self, node: &Node, pod: &str) -> Twilld {
        node.start_twilld_env(
            &self.twilld_args(node, &[]),
            &[("POD_NAME", pod), ("POD_NAMESPACE", NAMESPACE)],
        )
    }
}

fn log_of(node: &Node) -> String {
    std::fs::read_to_string(node.log_file()).unwrap_or_default()
}

#[test]
fn node_name_from_the_pod_spec_after_waiting_for_a_missing_or_unscheduled_pod() {
    let switch = Switch::new();
    let c = Cluster::start(&switch, Options::ipv4());
    c.grant_pods_get();
    let (n1, n2) = (switch.add_node(1), switch.add_node(2));
    for n in [&n1, &n2] {
        c.cp.register_node(&NodeSpec::of(n));
        c.cp.wait_pod_cidrs(&n.name(), READY);
    }
    // node1's Pod does not exist yet (a 404), node2's is not scheduled: both wait, neither exits.
    c.create_pod("twill-b", None);
    let mut d1 = c.start_twilld_as_pod(&n1, "twill-a");
    let mut d2 = c.start_twilld_as_pod(&n2, "twill-b");
    for (n, why) in [(&n1, "does not exist"), (&n2, "not scheduled")] {
        assert!(
            wait_until(Duration::from_secs(30), || {
                let (code, body) = curl(n, "/readyz");
                code == "503" && body.contains(why)
            }),
            "/readyz of {} does not say the pod {why}: {:?}\n{}",
            n.name(),
            curl(n, "/readyz"),
            logs(&c, &[n])
        );
        assert!(log_of(n).contains(why), "{}", log_of(n));
        assert!(
            n.subnet().is_none(),
            "subnet.env written without a node name"
        );
    }
    assert!(
        d1.is_running() && d2.is_running(),
        "{}",
        logs(&c, &[&n1, &n2])
    );

    c.create_pod("twill-a", Some("node1"));
    c.bind_pod("twill-b", "node2");
    for (n, pod) in [(&n1, "twill-a"), (&n2, "twill-b")] {
        let subnet = n.wait_ready(READY);
        assert_eq!(
            subnet,
            pod_cidr(&c.cp.pod_cidrs(&n.name())),
            "{}",
            log_of(n)
        );
        let said = format!(
            "node name {} (spec.nodeName of pod {NAMESPACE}/{pod})",
            n.name()
        );
        assert!(log_of(n).contains(&said), "{}", log_of(n));
        assert!(wait_until(READY, || curl(n, "/readyz").0 == "200"));
        assert!(
            c.annotations(&n.name())
                .contains_key(&format!("{PREFIX}backend-data")),
            "{} published no VTEP",
            n.name()
        );
    }
    assert!(
        wait_until(READY, || has_peer(&c, &n1, &n2) && has_peer(&c, &n2, &n1)),
        "the nodes did not become peers\n{}",
        logs(&c, &[&n1, &n2])
    );
}

#[test]
fn without_rbac_to_get_pods_the_node_name_from_the_pod_is_a_clear_error() {
    let switch = Switch::new();
    let mut opts = Options::ipv4();
    opts.allocate_node_cidrs = false;
    let c = Cluster::start(&switch, opts);
    let n = switch.add_node(1);
    c.cp.register_node(&NodeSpec::of(&n));
    c.create_pod("twill-a", Some("node1"));
    // The manifest's least-privilege role: nodes only.
    let mut d = c.start_twilld_as_pod(&n, "twill-a");
    let code = d.wait_exit(Duration::from_secs(30));
    let log = log_of(&n);
    assert!(
        matches!(code, Some(c) if c != 0),
        "twilld did not fail ({code:?}): {log}"
    );
    assert!(
        log.contains(r#"resources: ["pods"], verbs: ["get"]"#)
            && log.contains(&format!("{NAMESPACE}/twill-a"))
            && log.contains("NODE_NAME"),
        "the error does not name the missing rule: {log}"
    );
    assert!(n.subnet().is_none());
}
