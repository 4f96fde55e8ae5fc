//! Pod start-up on a real Kubernetes cluster, twill against the reference plugins + flanneld, in one run
//! (ignored in normal runs: `cargo test -p twill-tests --test kube_pod_bench -- --ignored --nocapture`).
//!
//! Each setup gets a cluster of its own (twill_tests::kube::cluster, 3 nodes: node1 the tainted
//! control-plane node, 2 workers), one after the other so they never share the CPU. On each, 30 Pods
//! (`TWILL_BENCH_PODS`) of a locally built busybox image, without a readiness probe, are created by one
//! `kubectl create` of a List. Measured per pod:
//!
//! * created -> Ready: from just before `kubectl create` to the moment a `kubectl get --watch` started
//!   beforehand prints the pod Ready (millisecond resolution; the API's creationTimestamp and the Ready
//!   condition's lastTransitionTime only have seconds);
//! * RunPodSandbox: the CRI call that creates the pod's sandbox (its network included), from the first
//!   line containerd logs for it to its `returns sandbox id` line;
//! * CNI ADD: containerd (at log level debug) logs `begin cni setup` and `cni result` with the sandbox's
//!   id around its libcni call (every plugin of the conflist, and the loopback); the time between the two.
//!
//! `TWILL_BENCH_ROUNDS` rounds (default 2), each on fresh clusters, the order alternating. Prints p50/p99
//! per setup and the ratios twill / reference; `TWILL_BENCH_OUT` also writes the table to a file. Run
//! with `TWILL_BIN_DIR=target/release` (after `cargo build --release --workspace --bins`) for an image of
//! release binaries, as the reference's are.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;
use twill_tests::kube::cluster::{ClusterOptions, KubeCluster};
use twill_tests::kube::conformance::control;
use twill_tests::kube::kube_bin;
use twill_tests::overlay_bench::{env_or, percentile};
use twill_tests::runtimes::image::image_tar;

const IMAGE: &str = "twill.test/podbench:1";
const LABEL: &str = "podbench";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50 and p99 of `v` (sorted here), in ms.
fn p50_p99(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    (ms(percentile(v, 0.5)), ms(percentile(v, 0.99)))
}

fn pods_manifest(count: usize) -> String {
    let items: Vec<_> = (0..count)
        .map(|i| {
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": format!("{LABEL}-{i}"), "namespace": "default",
                             "labels": {"app": LABEL}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "sleep",
                        "image": IMAGE,
                        "imagePullPolicy": "Never",
                    }],
                },
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// Seconds since the Unix epoch of a containerd (logrus) timestamp `2026-12-06T10:45:01.123456789Z`.
fn log_time(line: &str) -> Option<f64> {
    let t = line.split("time=\"").nth(1)?.split('"').next()?;
    let (date, clock) = t.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut c = clock.split(':');
    let (h, mi, s) = (
        c.next()?.parse::<f64>().ok()?,
        c.next()?.parse::<f64>().ok()?,
        c.next()?.parse::<f64>().ok()?,
    );
    Some(days as f64 * 86_400.0 + h * 3600.0 + mi * 60.0 + s)
}

fn sandbox_id(line: &str) -> Option<&str> {
    line.split("podsandboxid=")
        .nth(1)?
        .split_whitespace()
        .next()
}

/// Time of each CNI ADD in a containerd debug log: `begin cni setup` -> `cni result` of the same sandbox.
fn cni_add_times(log: &str) -> Vec<Duration> {
    let mut begun = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in log.lines() {
        let (Some(t), Some(id)) = (log_time(line), sandbox_id(line)) else {
            continue;
        };
        if line.contains("msg=\"begin cni setup\"") {
            begun.insert(id.to_string(), t);
        } else if line.contains("msg=\"cni result") {
            if let Some(b) = begun.remove(id) {
                out.push(Duration::from_secs_f64((t - b).max(0.0)));
            }
        }
    }
    out
}

/// Time of each RunPodSandbox of a bench pod in a containerd log: the CRI call's first line
/// (`RunPodSandbox for &PodSandboxMetadata{Name:podbench-3,...}`) -> its `... returns sandbox id`.
fn run_sandbox_times(log: &str) -> Vec<Duration> {
    let mut begun: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in log.lines() {
        let Some(rest) = line.split("msg=\"RunPodSandbox for ").nth(1) else {
            continue;
        };
        if !rest.starts_with(&format!("&PodSandboxMetadata{{Name:{LABEL}-")) {
            continue;
        }
        let Some(t) = log_time(line) else { continue };
        match rest.split_once(" returns sandbox id") {
            Some((meta, _)) => {
                if let Some(b) = begun.remove(meta) {
                    out.push(Duration::from_secs_f64((t - b).max(0.0)));
                }
            }
            None => {
                let meta = rest.split('"').next().unwrap_or(rest);
                begun.insert(meta.to_string(), t);
            }
        }
    }
    out
}

/// One setup's samples, over every round.
#[derive(Default)]
struct Sample {
    ready: Vec<Duration>,
    sandbox: Vec<Duration>,
    cni: Vec<Duration>,
    spread: Vec<String>,
}

/// Creates `count` pods at once on `cluster` and adds their numbers to `sample` (see the module comment).
fn measure(cluster: &mut KubeCluster, dir: &Path, count: usize, sample: &mut Sample) {
    cluster.import_image(&image_tar(
        dir,
        "podbench",
        IMAGE,
        &["/bin/sleep", "infinity"],
    ));
    // Only this run's CNI ADDs: the logs are read from here on.
    let offsets: Vec<usize> = cluster
        .nodes()
        .iter()
        .map(|n| containerd_log(n.containerd().dir()).len())
        .collect();
    let mut watch = Command::new("ip")
        .args(["netns", "exec", cluster.switch().ns.name()])
        .arg(kube_bin("kubectl"))
        .arg(format!("--kubeconfig={}", cluster.kubeconfig().display()))
        .args([
            "get",
            "pods",
            "-l",
            &format!("app={LABEL}"),
            "--watch",
            "-o",
        ])
        .arg(r#"jsonpath={.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}"#)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get --watch");
    let stdout = watch.stdout.take().expect("watch stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    // The watch is established once it has listed the (empty) set; give it a moment.
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let out = cluster
        .control_plane()
        .apply_with(&pods_manifest(count), &[]);
    assert!(out.status.success(), "creating the pods: {out:?}");
    let mut ready = std::collections::HashMap::new();
    let deadline = t0 + Duration::from_secs(300);
    while ready.len() < count && Instant::now() < deadline {
        let Ok((at, line)) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some((name, "True")) = line.trim().split_once(' ') {
            ready
                .entry(name.to_string())
                .or_insert_with(|| at.duration_since(t0));
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        ready.len(),
        count,
        "pods not Ready within 300 s\n{}\n{}",
        cluster.kubectl_text(&["get", "pods", "-o", "wide"]),
        cluster.logs()
    );
    let spread = cluster.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={LABEL}"),
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
    ]);
    let mut per_node = std::collections::BTreeMap::new();
    for n in spread.lines() {
        *per_node.entry(n.to_string()).or_insert(0) += 1;
    }
    for (n, offset) in cluster.nodes().iter().zip(offsets) {
        let log = containerd_log(n.containerd().dir());
        let log = log.get(offset..).unwrap_or_default();
        sample.cni.extend(cni_add_times(log));
        sample.sandbox.extend(run_sandbox_times(log));
    }
    sample.ready.extend(ready.into_values());
    sample.spread.push(format!("{per_node:?}"));
}

fn containerd_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
}

fn options(prefix: &str) -> ClusterOptions {
    let mut opts = ClusterOptions::default();
    opts.node.containerd_log_level = Some("debug".into());
    opts.prefix = prefix.into();
    opts
}

fn twill_run(count: usize, sample: &mut Sample) {
    let start = Instant::now();
    let mut cluster = KubeCluster::start_with_twill(options("pbt"));
    eprintln!("twill cluster Ready in {:?}", start.elapsed());
    let dir = tempfile::tempdir().expect("temp dir");
    measure(&mut cluster, dir.path(), count, sample);
}

/// The reference plugins and flanneld on every node, as the conformance control run sets them up.
fn reference_run(count: usize, sample: &mut Sample) {
    let start = Instant::now();
    let mut cluster = KubeCluster::start(options("pbr"));
    let dir = tempfile::tempdir().expect("temp dir");
    let flanneld = control::start_network(&cluster, dir.path());
    cluster.wait_nodes_ready(Duration::from_secs(120));
    eprintln!("reference cluster Ready in {:?}", start.elapsed());
    measure(&mut cluster, dir.path(), count, sample);
    // flanneld stops before the nodes go.
    drop(flanneld);
}

#[test]
#[ignore = "benchmark: cargo test -p twill-tests --test kube_pod_bench -- --ignored --nocapture"]
fn pod_startup_twill_against_reference_plugins_benchmark() {
    twill_tests::bins::require_root();
    let count: usize = env_or("TWILL_BENCH_PODS", "30").parse().unwrap_or(30);
    let rounds: usize = env_or("TWILL_BENCH_ROUNDS", "2").parse().unwrap_or(2);
    let (mut twill, mut reference) = (Sample::default(), Sample::default());
    for k in 0..rounds {
        // ABBA: neither setup always goes first.
        if k % 2 == 0 {
            twill_run(count, &mut twill);
            reference_run(count, &mut reference);
        } else {
            reference_run(count, &mut reference);
            twill_run(count, &mut twill);
        }
    }
    let (tr50, tr99) = p50_p99(&mut twill.ready);
    let (rr50, rr99) = p50_p99(&mut reference.ready);
    let (ts50, ts99) = p50_p99(&mut twill.sandbox);
    let (rs50, rs99) = p50_p99(&mut reference.sandbox);
    let (tc50, tc99) = p50_p99(&mut twill.cni);
    let (rc50, rc99) = p50_p99(&mut reference.cni);
    let mut text = format!(
        "{count} pods created at once, 2 workers, {rounds} rounds (pods per node: twill {}, reference {})\n\
         {:<28} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}\n",
        twill.spread.join(" "),
        reference.spread.join(" "),
        "",
        "twill p50",
        "twill p99",
        "ref p50",
        "ref p99",
        "p50 x",
        "p99 x"
    );
    let rows = [
        ("created -> Ready (ms)", tr50, tr99, rr50, rr99),
        ("RunPodSandbox (ms)", ts50, ts99, rs50, rs99),
        ("CNI ADD (ms)", tc50, tc99, rc50, rc99),
    ];
    for (what, a50, a99, b50, b99) in rows {
        text.push_str(&format!(
            "{what:<28} {a50:>10.0} {a99:>10.0} {b50:>10.0} {b99:>10.0} {:>8.2} {:>8.2}\n",
            a50 / b50,
            a99 / b99
        ));
    }
    text.push_str(&format!(
        "CNI ADD share of created -> Ready at p50: twill {:.1}%, reference {:.1}% \
         (CNI samples: twill {}, reference {})\n",
        100.0 * tc50 / tr50,
        100.0 * rc50 / rr50,
        twill.cni.len(),
        reference.cni.len()
    ));
    println!("\n{text}");
    if let Ok(path) = std::env::var("TWILL_BENCH_OUT") {
        let _ = std::fs::write(Path::new(&path), &text);
    }
    for (what, s) in [("twill", &twill), ("reference", &reference)] {
        assert_eq!(s.cni.len(), count * rounds, "a CNI ADD per {what} pod");
        assert_eq!(s.sandbox.len(), count * rounds, "a sandbox per {what} pod");
    }
}

#[test]
fn cni_add_time_is_read_from_containerd_debug_lines() {
    let log = "\
time=\"2026-12-06T23:59:59.750000000Z\" level=debug msg=\"begin cni setup\" podsandboxid=abc\n\
time=\"2026-12-06T23:59:59.800000000Z\" level=debug msg=\"begin cni setup\" podsandboxid=def\n\
time=\"2026-12-07T00:00:00.000000000Z\" level=debug msg=\"cni result: {}\" podsandboxid=abc\n\
time=\"2026-12-07T00:00:00.100000000Z\" level=info msg=\"RunPodSandbox returns\" podsandboxid=def\n";
    let got = cni_add_times(log);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!((ms(got[0]) - 250.0).abs() < 0.01, "{got:?}");
}

#[test]
fn run_pod_sandbox_time_is_read_from_containerd_cri_lines() {
    let log = r#"time="2026-12-06T10:00:01.000000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:podbench-1,Uid:u1,Namespace:default,Attempt:0,}"
time="2026-12-06T10:00:01.100000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:kube-twill-ds-x,Uid:u2,Namespace:kube-twill,Attempt:0,}"
time="2026-12-06T10:00:01.400000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:podbench-1,Uid:u1,Namespace:default,Attempt:0,} returns sandbox id "abc""
time="2026-12-06T10:00:01.500000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:kube-twill-ds-x,Uid:u2,Namespace:kube-twill,Attempt:0,} returns sandbox id "def""
"#;
    let got = run_sandbox_times(log);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!((ms(got[0]) - 400.0).abs() < 0.01, "{got:?}");
}
