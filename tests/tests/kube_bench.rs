//! twilld against the real flanneld in Kubernetes mode, in one run on one control plane (ignored in normal runs:
//! `cargo test -p twill-tests --test kube_bench -- --ignored --nocapture`; release binaries make twilld's numbers
//! fair, `TWILL_BIN_DIR` points the harness at them). Two groups of node namespaces share the API server: twilld
//! nodes under flannel's default annotation prefix, flanneld nodes under another one, so neither group takes the
//! other's nodes for peers. Measured:
//!
//! * node added -> programmed: a Node object carrying a peer's annotations and podCIDR is created through one
//!   persistent API client (no kubectl start-up in the samples); from the API server's answer (the Node is stored,
//!   watchers are being told) -> its route (each daemon programs it last, after the neighbour and the FDB entry)
//!   present on every node of the group, seen through `ip monitor route`; then the Node is deleted -> route gone
//!   everywhere. p50/p99, samples alternating between the groups;
//! * API requests per minute per node at idle: the API server's `apiserver_request_total` for nodes, over
//!   `TWILL_BENCH_IDLE_SECS` (default 600: a watch is counted when it ends, and both daemons renew theirs every
//!   5 to 10 minutes), with one group running (minus the same window before any daemon ran); 0 skips it.
//!
//! Everything runs in namespaces the benchmark creates and removes.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use twill_tests::cluster::{wait_until, DaemonProcess, Node, Switch, TwilldArgs};
use twill_tests::flanneld;
use twill_tests::kube::api::NodeClient;
use twill_tests::kube::{ControlPlane, Credentials, Options};
use twill_tests::overlay_bench::{cpu_ticks, env_or, percentile, proc_field, RouteMonitors};

const FLANNELD_PREFIX: &str = "bench.flanneld.example";
const NET_CONF: &str =
    r#"{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(what: &str, v: &mut [Duration]) -> String {
    v.sort();
    format!(
        "{what}: p50 {:.1} ms p99 {:.1} ms max {:.1} ms (n={})",
        ms(percentile(v, 0.5)),
        ms(percentile(v, 0.99)),
        ms(v.last().copied().unwrap_or_default()),
        v.len()
    )
}

/// Requests the API server has answered about nodes so far (every verb, the status subresource included).
fn node_requests(cp: &ControlPlane) -> f64 {
    cp.kubectl_ok(&["get", "--raw", "/metrics"])
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains("resource=\"nodes\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Node requests per minute over `secs` of idling.
fn idle_rate(cp: &ControlPlane, secs: u64) -> f64 {
    let before = node_requests(cp);
    std::thread::sleep(Duration::from_secs(secs));
    // The metrics request itself is not about nodes.
    (node_requests(cp) - before) * 60.0 / secs as f64
}

/// A Node as a peer daemon of annotation prefix `prefix` would leave it: podCIDR `10.244.<third>.0/24`.
fn peer_node(name: &str, prefix: &str, third: u32, k: u32) -> String {
    let subnet = format!("10.244.{third}.0/24");
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": {
            format!("{prefix}/backend-data"):
                format!(r#"{{"VNI":1,"VtepMAC":"0a:bb:00:00:{:02x}:{:02x}"}}"#, third % 256, k % 256),
            format!("{prefix}/backend-type"): "vxlan",
            format!("{prefix}/kube-subnet-manager"): "true",
            format!("{prefix}/public-ip"): format!("10.250.1.{}", k % 250 + 1),
        }},
        "spec": {"podCIDR": subnet, "podCIDRs": [subnet]},
    })
    .to_string()
}

/// Creates a peer Node and deletes it again: (created -> programmed everywhere, deleted -> gone everywhere), each
/// from the API server's answer.
fn add_and_delete(
    api: &NodeClient,
    mon: &RouteMonitors,
    prefix: &str,
    third: u32,
    k: u32,
) -> (Duration, Duration) {
    let name = format!("peer-{third}-{k}");
    mon.drain();
    let t0 = api.create_node(&peer_node(&name, prefix, third, k));
    let added = mon
        .wait_all(&format!("10.244.{third}.0/24 via"), Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{name} not programmed on every node within 20 s"));
    let t1 = api.delete_node(&name);
    let gone = mon
        .wait_all(
            &format!("Deleted 10.244.{third}.0/24"),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("{name} not removed from every node within 20 s"));
    (
        added.saturating_duration_since(t0),
        gone.saturating_duration_since(t1),
    )
}

/// Context switches of every thread of `pid` (flanneld's Go runtime wakes its own threads, not the main one).
fn context_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_else(|_| Vec::new());
    tasks
        .iter()
        .map(|t| {
            let file = format!("task/{t}/status");
            proc_field(pid, &file, "voluntary_ctxt_switches:")
                + proc_field(pid, &file, "nonvoluntary_ctxt_switches:")
        })
        .sum()
}

/// RSS, CPU time and wake-ups per second (all threads) of process `pid` over `secs` (the daemon runs under
/// `ip netns exec`, which execs it: the pid is the daemon's).
fn idle_cost(pid: u32, secs: u64) -> String {
    let switches = || context_switches(pid);
    let (c0, w0) = (cpu_ticks(pid), switches());
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, w1) = (cpu_ticks(pid), switches());
    format!(
        "RSS {:.1} MB, CPU {:.2} s, {:.2} wake-ups/s",
        proc_field(pid, "status", "VmRSS:") as f64 / 1024.0,
        (c1 - c0) as f64 / 100.0,
        (w1 - w0) as f64 / secs as f64
    )
}

fn join_all(cp: &ControlPlane, nodes: &[Node]) {
    for n in nodes {
        cp.join(n);
        // A kubelet's annotation (flanneld panics on a Node without any).
        cp.kubectl_ok(&[
            "annotate",
            "node",
            &n.name(),
            "volumes.kubernetes.io/controller-managed-attach-detach=true",
        ]);
    }
}

fn wait_ready(nodes: &[Node], what: &str) {
    for n in nodes {
        assert!(
            wait_until(Duration::from_secs(120), || n.subnet().is_some()),
            "{what} on {} wrote no subnet.env",
            n.name()
        );
    }
}

#[test]
#[ignore = "benchmark: cargo test -p twill-tests --test kube_bench -- --ignored --nocapture"]
fn kube_mode_twilld_against_flanneld_benchmark() {
    let size: u8 = env_or("TWILL_BENCH_KUBE_NODES", "10").parse().unwrap_or(10);
    let samples: u32 = env_or("TWILL_BENCH_SAMPLES", "20").parse().unwrap_or(20);
    let idle_secs: u64 = env_or("TWILL_BENCH_IDLE_SECS", "600")
        .parse()
        .unwrap_or(600);
    let mut report = Vec::new();
    let mut say = |line: String| {
        eprintln!("{line}");
        report.push(line);
    };

    let switch = Switch::with_prefix("kb");
    let cp = ControlPlane::start(&switch, Options::ipv4());
    cp.apply(
        &std::fs::read_to_string(
            twill_tests::bins::workspace_dir().join("conf/kubernetes/kube-twill.yml"),
        )
        .expect("conf/kubernetes/kube-twill.yml"),
    );
    let token = cp.token("kube-twill", "twill");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = cp.kubeconfig_at(
        &dir.path().join("twill.kubeconfig"),
        &Credentials::Token(token),
    );
    let net_conf = dir.path().join("net-conf.json");
    std::fs::write(&net_conf, NET_CONF).unwrap();

    let twilld_nodes: Vec<Node> = (1..=size).map(|i| switch.add_node(i)).collect();
    let flanneld_nodes: Vec<Node> = (1..=size).map(|i| switch.add_node(100 + i)).collect();
    join_all(&cp, &twilld_nodes);
    join_all(&cp, &flanneld_nodes);

    let measure_idle = idle_secs > 0;
    let baseline = if measure_idle {
        idle_rate(&cp, idle_secs)
    } else {
        0.0
    };
    if measure_idle {
        say(format!(
            "API requests about nodes at idle, no daemon: {baseline:.1}/min"
        ));
    }
    let twillds: Vec<DaemonProcess> = twilld_nodes
        .iter()
        .map(|n| {
            n.start_twilld(&TwilldArgs {
                etcd: "http://127.0.0.1:1".into(),
                resync_secs: 10.0,
                extra: vec![
                    "--kube-subnet-mgr".into(),
                    format!("--kubeconfig-file={}", kubeconfig.display()),
                    format!("--net-config-path={}", net_conf.display()),
                    "--ip-masq".into(),
                ],
            })
        })
        .collect();
    wait_ready(&twilld_nodes, "twilld");
    // Past start-up (the first listing, the annotations, NetworkUnavailable).
    std::thread::sleep(Duration::from_secs(5));
    let twilld_rate = if measure_idle {
        idle_rate(&cp, idle_secs) - baseline
    } else {
        0.0
    };
    let flannelds: Vec<DaemonProcess> = flanneld_nodes
        .iter()
        .map(|n| {
            flanneld::start_kube_with(
                n,
                &kubeconfig,
                &net_conf,
                &[format!("--kube-annotation-prefix={FLANNELD_PREFIX}")],
            )
        })
        .collect();
    wait_ready(&flanneld_nodes, "flanneld");
    std::thread::sleep(Duration::from_secs(5));
    if measure_idle {
        let flanneld_rate = idle_rate(&cp, idle_secs) - baseline - twilld_rate;
        say(format!(
            "API requests about nodes at idle, per node ({idle_secs} s): twilld {:.2}/min, flanneld {:.2}/min",
            twilld_rate / f64::from(size),
            flanneld_rate / f64::from(size)
        ));
    }

    let groups: [(&str, &[Node], &str, u32); 2] = [
        ("twilld  ", &twilld_nodes, "flannel.alpha.coreos.com", 200),
        ("flanneld", &flanneld_nodes, FLANNELD_PREFIX, 225),
    ];
    let mons: Vec<RouteMonitors> = groups
        .iter()
        .map(|(_, nodes, _, _)| RouteMonitors::start(nodes.iter().map(|n| &n.ns)))
        .collect();
    // The benchmark's own client: cluster-admin, so it may create and delete Nodes.
    let admin = cp.kubeconfig_at(
        &dir.path().join("bench.kubeconfig"),
        &Credentials::Token(cp.token_with_cluster_role("twill-bench", "bench", "cluster-admin")),
    );
    let api = NodeClient::start(&switch.ns, &admin);
    let mut add = [Vec::new(), Vec::new()];
    let mut del = [Vec::new(), Vec::new()];
    for k in 0..samples {
        // ABBA: neither daemon always goes first.
        let order = if k % 2 == 0 { [0, 1] } else { [1, 0] };
        for j in order {
            let (_, _, prefix, base) = groups[j];
            let (a, d) = add_and_delete(&api, &mons[j], prefix, base + k % 25, k);
            add[j].push(a);
            del[j].push(d);
        }
    }
    for (j, (kind, ..)) in groups.iter().enumerate() {
        say(summary(
            &format!("{size} nodes, Node created -> route on every node, {kind}"),
            &mut add[j],
        ));
        say(summary(
            &format!("{size} nodes, Node deleted -> route gone everywhere, {kind}"),
            &mut del[j],
        ));
    }
    // One daemon of each group after the samples, both idle at once (the thread counts differ: wake-ups are
    // per process, all its threads).
    let rss_secs: u64 = env_or("TWILL_BENCH_RSS_SECS", "30").parse().unwrap_or(30);
    if rss_secs > 0 {
        let pids = (twillds[0].pid(), flannelds[0].pid());
        if let (Some(t), Some(f)) = pids {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(idle_cost(f, rss_secs));
            });
            let twilld_cost = idle_cost(t, rss_secs);
            let flanneld_cost = rx.recv().unwrap_or_default();
            say(format!(
                "{size} nodes, one daemon idle {rss_secs} s: twilld {twilld_cost} | flanneld {flanneld_cost}"
            ));
        }
    }
    let text = report.join("\n") + "\n";
    println!("\n{text}");
    if let Ok(path) = std::env::var("TWILL_BENCH_OUT") {
        let _ = std::fs::write(Path::new(&path), &text);
    }
}
