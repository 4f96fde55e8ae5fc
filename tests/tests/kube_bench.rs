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
//!   everywhere. p50/p99, one group at a time (the other's daemons not running: each daemon sees every Node
//!   event, so running both would make each group's samples pay the other's CPU); and the CPU each daemon
//!   spent per Node event;
//! * API requests per minute per node at idle: the API server's `apiserver_request_total` for nodes, over
//!   `TWILL_BENCH_IDLE_SECS` (default 600: a watch is counted when it ends, and both daemons renew theirs every
//!   5 to 10 minutes), with one group running (minus the same window before any daemon ran); 0 skips it.
//!
//! Everything runs in namespaces the benchmark creates and removes.

use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
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
    let dst: IpNet = format!("10.244.{third}.0/24")
        .parse()
        .unwrap_or_else(|e| panic!("peer subnet: {e}"));
    let added = mon
        .wait_all(dst, false, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{name} not programmed on every node within 20 s"));
    let t1 = api.delete_node(&name);
    let gone = mon
        .wait_all(dst, true, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{name} not removed from every node within 20 s"));
    (
        added.saturating_duration_since(t0),
        gone.saturating_duration_since(t1),
    )
}

/// One kind of daemon's samples: created and deleted Nodes, and the CPU its daemons spent per event.
struct Phase {
    add: Vec<Duration>,
    del: Vec<Duration>,
    cpu_per_event_ms: f64,
}

/// `samples` Nodes created and deleted (each with `prefix`'s annotations, its subnet in `10.244.<base+k>.0`),
/// timed until `nodes` all have (then lack) the route.
fn samples_of(
    api: &NodeClient,
    nodes: &[Node],
    daemons: &[DaemonProcess],
    prefix: &str,
    base: u32,
    samples: u32,
) -> Phase {
    let mon = RouteMonitors::start(nodes.iter().map(|n| &n.ns));
    let ticks = || -> u64 { daemons.iter().filter_map(|d| d.pid()).map(cpu_ticks).sum() };
    let t0 = ticks();
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for k in 0..samples {
        let (a, d) = add_and_delete(api, &mon, prefix, base + k % 25, k);
        add.push(a);
        del.push(d);
    }
    // Two events (created, deleted) per sample, seen by every daemon; a tick is 10 ms.
    let events = f64::from(samples) * 2.0 * daemons.len().max(1) as f64;
    Phase {
        add,
        del,
        cpu_per_event_ms: (ticks() - t0) as f64 * 10.0 / events,
    }
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
    // The benchmark's own client: cluster-admin, so it may create and delete Nodes.
    let admin = cp.kubeconfig_at(
        &dir.path().join("bench.kubeconfig"),
        &Credentials::Token(cp.token_with_cluster_role("twill-bench", "bench", "cluster-admin")),
    );
    let api = NodeClient::start(&switch.ns, &admin);
    // One kind of daemon at a time, as in a real cluster where each machine runs one: every daemon watches every
    // Node, so with both kinds running each sample would also pay the other kind's CPU (on 2 cores that is most
    // of the tail). twilld's phase runs before any flanneld starts; its daemons are gone before flanneld's starts.
    let rss_secs: u64 = env_or("TWILL_BENCH_RSS_SECS", "30").parse().unwrap_or(30);
    let idle_of = |daemons: &[DaemonProcess]| {
        daemons
            .first()
            .and_then(|d| d.pid())
            .filter(|_| rss_secs > 0)
            .map(|pid| idle_cost(pid, rss_secs))
    };
    let twilld_phase = samples_of(
        &api,
        &twilld_nodes,
        &twillds,
        "flannel.alpha.coreos.com",
        200,
        samples,
    );
    let twilld_idle = idle_of(&twillds);
    drop(twillds);
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
        // The twillds are gone: they make no requests now.
        let flanneld_rate = idle_rate(&cp, idle_secs) - baseline;
        say(format!(
            "API requests about nodes at idle, per node ({idle_secs} s): twilld {:.2}/min, flanneld {:.2}/min",
            twilld_rate / f64::from(size),
            flanneld_rate / f64::from(size)
        ));
    }
    let flanneld_phase = samples_of(
        &api,
        &flanneld_nodes,
        &flannelds,
        FLANNELD_PREFIX,
        225,
        samples,
    );
    let flanneld_idle = idle_of(&flannelds);
    for (kind, mut phase) in [("twilld  ", twilld_phase), ("flanneld", flanneld_phase)] {
        say(summary(
            &format!("{size} nodes, Node created -> route on every node, {kind}"),
            &mut phase.add,
        ));
        say(summary(
            &format!("{size} nodes, Node deleted -> route gone everywhere, {kind}"),
            &mut phase.del,
        ));
        say(format!(
            "{size} nodes, {kind} CPU per Node event, each daemon: {:.2} ms",
            phase.cpu_per_event_ms
        ));
    }
    if let (Some(t), Some(f)) = (twilld_idle, flanneld_idle) {
        say(format!(
            "{size} nodes, one daemon idle {rss_secs} s after its samples: twilld {t} | flanneld {f}"
        ));
    }
    let text = report.join("\n") + "\n";
    println!("\n{text}");
    if let Ok(path) = std::env::var("TWILL_BENCH_OUT") {
        let _ = std::fs::write(Path::new(&path), &text);
    }
}
