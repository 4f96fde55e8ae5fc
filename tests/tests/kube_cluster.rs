//! A real Kubernetes cluster on one machine runs on twill, deployed as users deploy it: kube-scheduler,
//! and per node a kubelet, containerd and kube-proxy (twill_tests::kube::cluster); the twill image
//! imported into each node's containerd and `conf/kubernetes/kube-twill.yml` applied with kubectl. Three
//! nodes: node1 is the control-plane node (tainted NoSchedule, as kubeadm and kind make it), node2 and
//! node3 are workers.
//!
//! Build first: `cargo build --workspace --bins` and `scripts/build-upstream.sh kubernetes`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use twill_tests::cluster::wait_until;
use twill_tests::kube::cluster::{ClusterOptions, KubeCluster};
use twill_tests::kube::node::{task_ids, NODE_PATHS};
use twill_tests::kube::workload::{
    get_from_pod, import_web_image, ready_web_pods, web_deployment, WebPod, WEB_PORT,
};
use twill_tests::pinger::Pinger;

#[test]
fn pods_of_a_deployment_reach_each_other_across_nodes_through_a_service_and_a_node_port() {
    let mut cluster = KubeCluster::start(ClusterOptions::default());
    cluster.deploy_twill();
    let dir = tempfile::tempdir().expect("temp dir");
    import_web_image(&mut cluster, dir.path());

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

/// A continuous ping from web pod `from` to web pod `to` (by pod IP), every 100 ms.
fn pinger(cluster: &KubeCluster, from: &WebPod, to: &WebPod) -> Pinger {
    let enter = cluster.node(&from.node).pod_command("default", &from.name);
    let ip = to.ip.parse().expect("pod IP");
    Pinger::start_in(enter, ip, Duration::from_millis(100))
}

#[test]
fn node_leaving_and_joining_and_a_rolling_restart_of_twill_cost_pods_under_a_second() {
    let mut cluster = KubeCluster::start_with_twill(ClusterOptions::default());
    let dir = tempfile::tempdir().expect("temp dir");
    import_web_image(&mut cluster, dir.path());
    cluster.apply(&web_deployment(2));
    let pods = ready_web_pods(&cluster, 2);
    let (a, b) = (&pods[0], &pods[1]);
    assert_ne!(a.node, b.node, "{pods:?}");

    // A fourth node joins, leaves (drained and deleted) and joins again with the same address and a new
    // VXLAN device: pods on the other nodes keep talking, and reach a pod on the new node.
    let ping = pinger(&cluster, a, b);
    cluster.add_node(4);
    cluster.wait_twill_ready(Duration::from_secs(120));
    cluster.wait_nodes_ready(Duration::from_secs(120));
    cluster.remove_node("node4");
    cluster.wait_twill_ready(Duration::from_secs(120));
    cluster.add_node(4);
    cluster.wait_twill_ready(Duration::from_secs(120));
    cluster.wait_nodes_ready(Duration::from_secs(120));
    cluster.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"]);
    let pods = ready_web_pods(&cluster, 3);
    let c = pods
        .iter()
        .find(|p| p.node == "node4")
        .unwrap_or_else(|| panic!("no web pod on the new node4: {pods:?}"));
    let got = get_from_pod(&cluster, &a.name, &c.ip, WEB_PORT);
    assert!(
        got.contains(&c.name),
        "{} cannot reach {c:?} on the re-added node: {got}",
        a.name
    );
    let churn = ping.finish();
    eprintln!(
        "node join/leave/join: {churn:?}, longest outage {:?}",
        churn.longest_outage()
    );
    assert!(churn.received > 0, "{churn:?}");
    assert!(
        churn.longest_outage() < Duration::from_secs(1),
        "pods lost connectivity for {:?} while a node left and joined: {churn:?}",
        churn.longest_outage()
    );

    // A rolling restart of the twill DaemonSet (new pods, init containers reinstalling the plugins).
    let ping = pinger(&cluster, a, b);
    cluster.kubectl_ok(&[
        "-n",
        "kube-twill",
        "rollout",
        "restart",
        "daemonset/kube-twill-ds",
    ]);
    let status = cluster.kubectl(&[
        "-n",
        "kube-twill",
        "rollout",
        "status",
        "daemonset/kube-twill-ds",
        "--timeout=180s",
    ]);
    assert!(
        status.status.success(),
        "rollout: {}\n{}",
        String::from_utf8_lossy(&status.stderr),
        cluster.logs()
    );
    cluster.wait_twill_ready(Duration::from_secs(60));
    // A little traffic after the last new pod is up.
    std::thread::sleep(Duration::from_secs(2));
    let restart = ping.finish();
    eprintln!(
        "rolling restart of twill: {restart:?}, longest outage {:?}",
        restart.longest_outage()
    );
    assert!(restart.received > 0, "{restart:?}");
    assert!(
        restart.longest_outage() < Duration::from_secs(1),
        "pods lost connectivity for {:?} during the rolling restart: {restart:?}",
        restart.longest_outage()
    );
    let got = get_from_pod(&cluster, &a.name, &c.ip, WEB_PORT);
    assert!(got.contains(&c.name), "after the restart: {got}");
}

#[test]
fn dropping_the_cluster_leaves_no_process_mount_cgroup_or_namespace() {
    let opts = ClusterOptions {
        nodes: 2,
        schedulable_control_plane: true,
        ..ClusterOptions::default()
    };
    // What the nodes keep to themselves and the machine does not have is never made on the machine.
    let absent: Vec<&str> = NODE_PATHS
        .iter()
        .copied()
        .filter(|p| !Path::new(p).exists())
        .collect();
    let mut cluster = KubeCluster::start_with_twill(opts);
    let dir = tempfile::tempdir().expect("temp dir");
    import_web_image(&mut cluster, dir.path());
    cluster.apply(&web_deployment(2));
    ready_web_pods(&cluster, 2);
    for p in &absent {
        assert!(!Path::new(p).exists(), "{p} was made on the machine");
    }
    let mut namespaces = vec![cluster.switch().ns.name().to_string()];
    let mut dirs = vec![cluster.control_plane().dir().to_path_buf()];
    let mut cgroups = Vec::new();
    for n in cluster.nodes() {
        namespaces.push(n.netns().to_string());
        dirs.push(n.dir().to_path_buf());
        dirs.push(n.containerd().dir().to_path_buf());
        cgroups.push(format!("twill-{}", n.netns()));
        let tasks = task_ids(n.containerd().dir());
        assert!(tasks.len() >= 4, "pods and twill's containers: {tasks:?}");
        cgroups.extend(tasks.iter().map(|id| format!("k8s.io/{id}")));
    }
    drop(cluster);

    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .expect("/run/netns")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for ns in &namespaces {
        assert!(!netns.contains(ns), "namespace {ns} is left");
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    for d in &dirs {
        let d = d.display().to_string();
        assert!(!Path::new(&d).exists(), "{d} is left");
        assert!(!mounts.contains(&d), "a mount under {d} is left:\n{mounts}");
        for p in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(!cmdline.contains(&d), "process {cmdline} is left");
        }
    }
    for p in &absent {
        assert!(!Path::new(p).exists(), "{p} is left on the machine");
    }
    for c in std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroups")
        .flatten()
    {
        for g in &cgroups {
            let path = c.path().join(g);
            assert!(!path.exists(), "cgroup {} is left", path.display());
        }
    }
}
