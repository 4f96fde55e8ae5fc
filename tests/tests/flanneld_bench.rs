//! twilld against the real flanneld in one run (ignored in normal runs; driven by `scripts/bench/overlay.sh`
//! with release binaries). Two clusters of the same size run side by side, one per daemon, each on its own
//! switch and etcd, and every measurement alternates between them so a busy machine slows both alike:
//!
//! * convergence: a lease written into etcd -> its route (each daemon programs it last, after the neighbour
//!   and the FDB entry) present on every node, seen through `ip monitor route`; p50/p99 per cluster size in
//!   `TWILL_BENCH_SIZES` (default "10,30");
//! * idle cost of one daemon of each over the same `TWILL_BENCH_IDLE_SECS` (default 60): RSS, CPU time;
//! * start to `subnet.env`: a fresh node joins (new namespace, no device, no lease) and its daemon starts;
//! * restart to ready: a node's daemon gets SIGTERM, starts again, and rewrites `subnet.env`.
//!
//! Everything runs in namespaces the benchmark creates and removes.

use std::time::{Duration, Instant, SystemTime};

use twill_tests::mixed::{Daemon, Kind, MixedCluster};
use twill_tests::overlay_bench::{
    add_and_delete_lease, bench_samples, cpu_ticks, env_or, percentile, proc_field, RouteMonitors,
};

// Nodes allocate from 10.244.1-100; benchmark leases use 10.244.200+ (inside Network, never allocated).
const CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.100.0","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
const KINDS: [Kind; 2] = [Kind::Twilld, Kind::Flanneld];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `ip monitor route` in every node of cluster `c`.
fn route_monitors(c: &MixedCluster) -> RouteMonitors {
    RouteMonitors::start(c.nodes.iter().map(|n| &n.node.ns))
}

/// Polls `f` every 2 ms (the cluster helpers poll every 50 ms, too coarse for start-up times of this size).
fn wait_fine(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

fn mtime(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// A fresh node joins `c` with `kind`: time from the daemon's start to its subnet.env; the node leaves again.
fn start_to_subnet_env(c: &mut MixedCluster, kind: Kind) -> Duration {
    let i = c.add_node();
    let file = c.nodes[i].node.subnet_file();
    let t0 = Instant::now();
    c.start_daemon(i, kind);
    assert!(
        wait_fine(Duration::from_secs(30), || c.nodes[i]
            .node
            .subnet()
            .is_some()),
        "{kind} on a fresh node did not write {}\n{}",
        file.display(),
        c.logs()
    );
    let took = t0.elapsed();
    c.remove_node(i);
    took
}

/// Node 0's daemon restarts: time from the new start to subnet.env rewritten.
fn restart_to_ready(c: &mut MixedCluster, kind: Kind) -> Duration {
    let file = c.nodes[0].node.subnet_file();
    let before = mtime(&file);
    std::thread::sleep(Duration::from_millis(20));
    if let Some(mut d) = c.nodes[0].daemon.take() {
        d.terminate();
    }
    let t0 = Instant::now();
    c.start_daemon(0, kind);
    assert!(
        wait_fine(Duration::from_secs(30), || mtime(&file) != before
            && c.nodes[0].node.subnet().is_some()),
        "{kind} did not rewrite {} after a restart\n{}",
        file.display(),
        c.logs()
    );
    t0.elapsed()
}

fn summary(what: &str, kind: Kind, v: &mut [Duration]) -> String {
    v.sort();
    format!(
        "{what} {kind:<8}: p50 {:.1} ms p99 {:.1} ms max {:.1} ms (n={})",
        ms(percentile(v, 0.5)),
        ms(percentile(v, 0.99)),
        ms(v.last().copied().unwrap_or_default()),
        v.len()
    )
}

fn pid(c: &MixedCluster) -> u32 {
    c.nodes[0]
        .daemon
        .as_ref()
        .and_then(Daemon::pid)
        .unwrap_or_else(|| panic!("node1 runs no daemon"))
}

#[test]
#[ignore = "benchmark: run scripts/bench/overlay.sh"]
fn twilld_against_flanneld_benchmark() {
    let sizes: Vec<usize> = env_or("TWILL_BENCH_SIZES", "10,30")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let samples = bench_samples();
    let idle_secs: u64 = env_or("TWILL_BENCH_IDLE_SECS", "60").parse().unwrap_or(60);
    let starts: u32 = env_or("TWILL_BENCH_STARTS", "5").parse().unwrap_or(5);
    let mut report = Vec::new();
    let mut say = |line: String| {
        eprintln!("{line}");
        report.push(line);
    };

    for (si, &size) in sizes.iter().enumerate() {
        let mut clusters: Vec<MixedCluster> = KINDS
            .iter()
            .map(|k| {
                let prefix = format!("b{}", &k.to_string()[..1]);
                MixedCluster::up_with_resync(&prefix, &vec![*k; size], CONFIG, 0, 10.0)
            })
            .collect();
        let mut add = [Vec::new(), Vec::new()];
        let mut del = [Vec::new(), Vec::new()];
        {
            let mons: Vec<RouteMonitors> = clusters.iter().map(route_monitors).collect();
            for k in 0..samples {
                // ABBA: neither daemon always goes first.
                let order = if k % 2 == 0 { [0, 1] } else { [1, 0] };
                for j in order {
                    let t = add_and_delete_lease(&clusters[j].switch.ns, &mons[j], k);
                    add[j].push(t.add);
                    del[j].push(t.delete);
                }
            }
        }
        for (j, kind) in KINDS.iter().enumerate() {
            say(summary(
                &format!("convergence {size} nodes, lease add   "),
                *kind,
                &mut add[j],
            ));
            say(summary(
                &format!("convergence {size} nodes, lease delete"),
                *kind,
                &mut del[j],
            ));
        }
        if si != 0 {
            continue;
        }
        if idle_secs > 0 {
            let pids: Vec<u32> = clusters.iter().map(pid).collect();
            let c0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
            std::thread::sleep(Duration::from_secs(idle_secs));
            for (j, kind) in KINDS.iter().enumerate() {
                say(format!(
                    "idle {idle_secs} s ({size}-node cluster) {kind:<8}: RSS {:.1} MB (peak {:.1} MB), CPU {:.2} s",
                    proc_field(pids[j], "status", "VmRSS:") as f64 / 1024.0,
                    proc_field(pids[j], "status", "VmHWM:") as f64 / 1024.0,
                    (cpu_ticks(pids[j]) - c0[j]) as f64 / 100.0
                ));
            }
        }
        let mut start = [Vec::new(), Vec::new()];
        let mut restart = [Vec::new(), Vec::new()];
        for k in 0..starts {
            let order = if k % 2 == 0 { [0, 1] } else { [1, 0] };
            for j in order {
                start[j].push(start_to_subnet_env(&mut clusters[j], KINDS[j]));
                restart[j].push(restart_to_ready(&mut clusters[j], KINDS[j]));
            }
        }
        for (j, kind) in KINDS.iter().enumerate() {
            say(summary(
                &format!("start to subnet.env ({size}-node cluster)"),
                *kind,
                &mut start[j],
            ));
            say(summary(
                &format!("restart to ready    ({size}-node cluster)"),
                *kind,
                &mut restart[j],
            ));
        }
    }
    let text = report.join("\n") + "\n";
    println!("\n{text}");
    if let Ok(path) = std::env::var("TWILL_BENCH_OUT") {
        let _ = std::fs::write(path, &text);
    }
}
