//! A real Kubernetes cluster on one machine runs on twill, deployed as users deploy it: kube-scheduler,
//! and per node a kubelet, containerd and kube-proxy (twill_tests::kube::cluster); the twill image
//! imported into each node's containerd and `conf/kubernetes/kube-twill.yml` applied with kubectl. Three
//! nodes: node1 is the control-plane node (tainted NoSchedule, as kubeadm and kind make it), node2 and
//! node3 are workers.
//!
//! Build first: `cargo build --workspace --bins` and `scripts/build-upstream.sh kubernetes`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use twill_tests::cluster::wait_until;
use twill_tests::kube::cluster::{ClusterOptions, KubeCluster};
use twill_tests::runtimes::image::image_tar;

/// A busybox image built here (no registry), serving its pod's name over HTTP on 8080.
const WEB_IMAGE: &str = "twill.test/busybox:1";
const WEB_PORT: u16 = 8080;

fn import_web_image(cluster: &KubeCluster, dir: &std::path::Path) {
    let tar = image_tar(dir, "web", WEB_IMAGE, &["/bin/sleep", "infinity"]);
    cluster.import_image(&tar);
}

/// A Deployment of `replicas` web pods spread evenly over the schedulable nodes.
fn web_deployment(replicas: u32) -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "nodeTaintsPolicy": "Honor",
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "web"}},
                    }],
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "web",
                        "image": WEB_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c",
                            format!("hostname > /www/index.html; exec httpd -f -p {WEB_PORT} -h /www")],
                        "ports": [{"containerPort": WEB_PORT}],
                        "readinessProbe": {"tcpSocket": {"port": WEB_PORT}, "periodSeconds": 1},
                    }],
                },
            },
        },
    })
    .to_string()
}

/// A web pod: name, pod IP, node.
#[derive(Debug, Clone)]
struct WebPod {
    name: String,
    ip: String,
    node: String,
}

/// Waits for `replicas` Ready web pods; returns them.
fn ready_web_pods(cluster: &KubeCluster, replicas: usize) -> Vec<WebPod> {
    let mut pods = Vec::new();
    let ok = wait_until(Duration::from_secs(120), || {
        let out = cluster.kubectl(&["get", "pods", "-l", "app=web", "-o", "json"]);
        let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) else {
            return false;
        };
        pods = list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .map(|p| WebPod {
                name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
                ip: p["status"]["podIP"].as_str().unwrap_or_default().into(),
                node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
            })
            .collect();
        pods.len() == replicas
    });
    assert!(
        ok,
        "{replicas} web pods not Ready: {pods:?}\n{}\n{}",
        cluster.kubectl_text(&["get", "pods", "-A", "-o", "wide"]),
        cluster.logs()
    );
    pods
}

/// An HTTP GET of `ip:port` from inside pod `from` (kubectl exec, through the kubelet and containerd).
fn get_from_pod(cluster: &KubeCluster, from: &str, ip: &str, port: u16) -> String {
    let cmd = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}");
    cluster.kubectl_text(&["exec", from, "--", "sh", "-c", &cmd])
}

#[test]
fn pods_of_a_deployment_reach_each_other_across_nodes_through_a_service_and_a_node_port() {
    let mut cluster = KubeCluster::start(ClusterOptions::default());
    cluster.deploy_twill();
    let dir = tempfile::tempdir().expect("temp dir");
    import_web_image(&cluster, dir.path());

    // twill's DaemonSet runs on every node, the control-plane node included.
    let twill = cluster.kubectl_ok(&[
        "-n",
        "kube-twill",
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
    ]);
    let twill_nodes: BTreeSet<&str> = twill.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        twill_nodes,
        cluster.node_names().iter().map(String::as_str).collect(),
        "{twill}"
    );

    let workers = cluster.worker_names();
    assert_eq!(workers.len(), 2, "two workers: {workers:?}");
    cluster.apply(&web_deployment(4));
    let pods = ready_web_pods(&cluster, 4);
    let nodes: BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(
        nodes,
        workers.iter().map(String::as_str).collect(),
        "the Deployment spreads over both workers: {pods:?}"
    );

    // Every pod reaches every pod on the other node by pod IP.
    for a in &pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            let got = get_from_pod(&cluster, &a.name, &b.ip, WEB_PORT);
            assert!(
                got.contains(&b.name),
                "{} ({}) cannot reach {} ({}, {}): {got}\n{}",
                a.name,
                a.node,
                b.name,
                b.ip,
                b.node,
                cluster.logs()
            );
        }
    }

    // A ClusterIP Service reaches pods on both workers (kube-proxy of the client's node balances).
    cluster.kubectl_ok(&[
        "expose",
        "deployment",
        "web",
        "--name=web",
        "--port=80",
        &format!("--target-port={WEB_PORT}"),
        "--type=NodePort",
    ]);
    let cluster_ip = cluster.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let node_port = cluster.kubectl_ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let client = &pods[0];
    let mut served_by = BTreeSet::new();
    let ok = wait_until(Duration::from_secs(60), || {
        let got = get_from_pod(&cluster, &client.name, &cluster_ip, 80);
        if let Some(p) = pods.iter().find(|p| got.contains(&p.name)) {
            served_by.insert(p.node.clone());
        }
        served_by.len() == 2
    });
    assert!(
        ok,
        "Service {cluster_ip}:80 from {} served only by {served_by:?}\n{}",
        client.name,
        cluster.logs()
    );

    // A NodePort of a worker answers a request from the control-plane node, which runs no web pod.
    let worker = cluster.node(&workers[0]);
    let from = cluster.node("node1");
    let cmd = format!(
        "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} {node_port}",
        worker.ip()
    );
    let mut got = String::new();
    let ok = wait_until(Duration::from_secs(30), || {
        let out = from.exec(&["sh", "-c", &cmd]);
        got = String::from_utf8_lossy(&out.stdout).into_owned();
        pods.iter().any(|p| got.contains(&p.name))
    });
    assert!(ok, "NodePort {}:{node_port} from node1: {got}", worker.ip());
}
