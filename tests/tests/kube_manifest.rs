//! `conf/kubernetes/kube-twill.yml` against the real API server of the test control plane: it passes
//! server-side validation (`--dry-run=server`) and applies; its objects are what a node needs; and its
//! ServiceAccount gets exactly the least privilege its ClusterRole states (RBAC enforced by the server).
//!
//! Build first: `cargo build --workspace --bins` and `scripts/build-upstream.sh kubernetes`.

use serde_json::Value;
use twill_tests::bins::workspace_dir;
use twill_tests::cluster::Switch;
use twill_tests::kube::{ControlPlane, Credentials, Options};

fn manifest() -> String {
    let path = workspace_dir().join("conf/kubernetes/kube-twill.yml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn workspace_version() -> String {
    let cargo = std::fs::read_to_string(workspace_dir().join("Cargo.toml")).expect("Cargo.toml");
    let section = cargo
        .split("[workspace.package]")
        .nth(1)
        .expect("[workspace.package]");
    section
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("workspace version")
}

#[test]
fn manifest_passes_server_side_dry_run_then_applies() {
    let switch = Switch::new();
    let cp = ControlPlane::start(&switch, Options::ipv4());
    let text = manifest();

    // A server-side dry run validates namespaced objects only in an existing namespace, so the
    // manifest's own Namespace object goes first, as `kubectl apply` would create it.
    let namespace = text
        .split("\n---\n")
        .find(|doc| doc.lines().any(|l| l == "kind: Namespace"))
        .expect("the manifest has a Namespace");
    cp.apply(namespace);
    let out = cp.apply_with(&text, &["--dry-run=server"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dry run: {said}");
    assert!(
        said.contains("daemonset.apps/kube-twill-ds created (server dry run)"),
        "{said}"
    );
    assert!(
        !said.to_lowercase().contains("warning"),
        "the server warns about the manifest: {said}"
    );
    // A dry run creates nothing.
    assert!(!cp
        .kubectl(&["get", "ds", "kube-twill-ds", "-n", "kube-twill"])
        .status
        .success());

    let applied = cp.apply(&text);
    assert!(
        applied.contains("namespace/kube-twill unchanged"),
        "{applied}"
    );
    for object in [
        "clusterrole.rbac.authorization.k8s.io/twill",
        "clusterrolebinding.rbac.authorization.k8s.io/twill",
        "serviceaccount/twill",
        "configmap/kube-twill-cfg",
        "daemonset.apps/kube-twill-ds",
    ] {
        assert!(
            applied.contains(&format!("{object} created")),
            "{object}: {applied}"
        );
    }
    // Applying again changes nothing.
    let again = cp.apply(&text);
    assert!(!again.contains("configured"), "{again}");

    // The configuration the init container installs is the flannel conflist, and net-conf.json is
    // flannel's format.
    let cm = json(&cp.kubectl_ok(&[
        "get",
        "cm",
        "kube-twill-cfg",
        "-n",
        "kube-twill",
        "-o",
        "json",
    ]));
    let conflist = json(cm["data"]["cni-conf.json"].as_str().expect("cni-conf.json"));
    let types: Vec<&str> = conflist["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(types, ["flannel", "portmap"]);
    assert_eq!(conflist["plugins"][1]["capabilities"]["portMappings"], true);
    let netconf = json(cm["data"]["net-conf.json"].as_str().expect("net-conf.json"));
    assert_eq!(netconf["Network"], "10.244.0.0/16");
    assert_eq!(netconf["Backend"]["Type"], "vxlan");

    // The DaemonSet as the server stored it.
    let ds = json(&cp.kubectl_ok(&[
        "get",
        "ds",
        "kube-twill-ds",
        "-n",
        "kube-twill",
        "-o",
        "json",
    ]));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["serviceAccountName"], "twill");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");
    let image = format!("localhost/twill:{}", workspace_version());
    let inits = pod["initContainers"].as_array().expect("init containers");
    assert_eq!(inits.len(), 2);
    for c in inits
        .iter()
        .chain(pod["containers"].as_array().expect("containers"))
    {
        assert_eq!(c["image"], image.as_str(), "{c}");
    }
    assert_eq!(inits[0]["command"][0], "/opt/bin/twill-install");
    let installed: Vec<&str> = inits[0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    for plugin in ["flannel", "bridge", "host-local", "portmap", "loopback"] {
        assert!(
            installed.contains(&format!("/opt/twill/cni/{plugin}").as_str()),
            "{plugin} is not installed: {installed:?}"
        );
    }
    assert_eq!(installed.last(), Some(&"/host/opt/cni/bin/"));
    assert_eq!(
        inits[0]["volumeMounts"][0]["mountPath"],
        "/host/opt/cni/bin"
    );
    assert_eq!(inits[1]["args"][1], "/etc/cni/net.d/10-flannel.conflist");

    let twilld = &pod["containers"][0];
    let args: Vec<&str> = twilld["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.contains(&"--kube-subnet-mgr") && args.contains(&"--ip-masq"),
        "{args:?}"
    );
    assert!(args.contains(&"--healthz-port=8081"), "{args:?}");
    assert_eq!(twilld["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(twilld["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(twilld["livenessProbe"]["httpGet"]["port"], "healthz");
    assert_eq!(twilld["ports"][0]["containerPort"], 8081);
    let env = twilld["env"].as_array().expect("env");
    let field = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(field("NODE_NAME"), "spec.nodeName");
    assert_eq!(field("POD_NAME"), "metadata.name");
    assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");
}

/// The manifest's ServiceAccount may read nodes and patch a node and its status (the annotations and
/// the NetworkUnavailable condition), and nothing else: the API server's RBAC says no to the rest.
#[test]
fn manifest_service_account_can_patch_nodes_and_nothing_more() {
    let switch = Switch::new();
    let cp = ControlPlane::start(&switch, Options::ipv4());
    let node = switch.add_node(1);
    cp.join(&node);
    cp.apply(&manifest());
    let token = cp.token("kube-twill", "twill");
    let kubeconfig = cp.kubeconfig("twill.kubeconfig", &Credentials::Token(token));
    // From the node namespace, as twilld on that node.
    let kubectl = |args: &[&str]| cp.kubectl_as(&kubeconfig, Some(&node.ns), args, None);
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    let allowed: [&[&str]; 5] = [
        &["get", "node", "node1", "-o", "name"],
        &["get", "nodes", "-o", "name"],
        &["auth", "can-i", "watch", "nodes"],
        // kubectl reads a subresource before patching it, which the role does not grant (twilld, as
        // flanneld, patches without reading): the server's authorizer is asked instead.
        &["auth", "can-i", "patch", "nodes", "--subresource=status"],
        &[
            "patch",
            "node",
            "node1",
            "--type=merge",
            "-p",
            r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/kube-subnet-manager":"true"}}}"#,
        ],
    ];
    for args in allowed {
        let out = kubectl(args);
        let said = text(&out);
        assert!(
            out.status.success() && !said.contains("forbidden"),
            "kubectl {args:?} must be allowed: {said}"
        );
    }
    let annotations = &cp.node("node1").expect("node1")["metadata"]["annotations"];
    assert_eq!(
        annotations["flannel.alpha.coreos.com/kube-subnet-manager"],
        "true"
    );

    let out = kubectl(&["auth", "can-i", "update", "nodes", "--subresource=status"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no",
        "only patching the status is granted"
    );
    let denied: [&[&str]; 6] = [
        &["get", "secrets", "-A"],
        &["get", "pods", "-A"],
        &["get", "configmaps", "-n", "kube-twill"],
        &["delete", "node", "node1"],
        &["create", "namespace", "intruder"],
        &[
            "patch",
            "ds",
            "kube-twill-ds",
            "-n",
            "kube-twill",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"x":"y"}}}"#,
        ],
    ];
    for args in denied {
        let out = kubectl(args);
        let said = text(&out);
        assert!(
            !out.status.success() && said.contains("forbidden"),
            "kubectl {args:?} must be forbidden: {said}"
        );
    }
    assert!(cp.node("node1").is_some(), "node1 was deleted");
}
