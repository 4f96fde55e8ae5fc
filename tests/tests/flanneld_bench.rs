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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use twill_tests::mixed::{Daemon, Kind, MixedCluster};
use twill_tests::netns::Netns;

const SUBNETS: &str = "/coreos.com/network/subnets/";
// Nodes allocate from 10.244.1-100; benchmark leases use 10.244.200+ (inside Network, never allocated).
const CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.100.0","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
const KINDS: [Kind; 2] = [Kind::Twilld, Kind::Flanneld];

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request to etcd's JSON gateway from inside the switch namespace (no etcdctl start-up in the timing).
fn etcd_http(switch: &Netns, path: &str, body: &str) {
    let mut sock = switch
        .run_in(|| TcpStream::connect("127.0.0.1:2379"))
        .unwrap_or_else(|e| panic!("connect etcd: {e}"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("etcd request: {e}"));
    let mut resp = String::new();
    let _ = sock.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "etcd {path}: {resp}");
}

/// `ip monitor route` in every node of a cluster; lines tagged with the node and when they were read.
struct RouteMonitors {
    children: Vec<Child>,
    rx: mpsc::Receiver<(usize, Instant, String)>,
    nodes: usize,
}

impl RouteMonitors {
    fn start(c: &MixedCluster) -> RouteMonitors {
        let (tx, rx) = mpsc::channel();
        let mut children = Vec::new();
        for (i, n) in c.nodes.iter().enumerate() {
            let mut child = Command::new("ip")
                .args(["-n", n.node.ns.name(), "monitor", "route"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("ip monitor: {e}"));
            let out = child.stdout.take().unwrap_or_else(|| unreachable!());
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send((i, Instant::now(), line)).is_err() {
                        return;
                    }
                }
            });
            children.push(child);
        }
        std::thread::sleep(Duration::from_millis(300));
        RouteMonitors {
            children,
            rx,
            nodes: c.nodes.len(),
        }
    }

    fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Waits until every node printed a line starting with `prefix`; returns the latest arrival.
    fn wait_all(&self, prefix: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut seen = vec![None; self.nodes];
        while seen.iter().any(Option::is_none) {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (i, at, line) = self.rx.recv_timeout(left).ok()?;
            if line.starts_with(prefix) && seen[i].is_none() {
                seen[i] = Some(at);
            }
        }
        seen.into_iter().flatten().max()
    }
}

impl Drop for RouteMonitors {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A lease written into cluster `c`: the time until its route is on every node, then the same for its removal.
fn one_lease(c: &MixedCluster, mon: &RouteMonitors, k: u32) -> (Duration, Duration) {
    let subnet = format!("10.244.{}.0", 200 + k % 50);
    let key = base64(format!("{SUBNETS}{subnet}-24").as_bytes());
    let value = format!(
        r#"{{"PublicIP":"10.250.1.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:bb:00:00:00:{:02x}"}}}}"#,
        k % 250 + 1,
        k % 250
    );
    mon.drain();
    let t0 = Instant::now();
    etcd_http(
        &c.switch.ns,
        "/v3/kv/put",
        &format!(
            r#"{{"key":"{key}","value":"{}"}}"#,
            base64(value.as_bytes())
        ),
    );
    let done = mon
        .wait_all(&format!("{subnet}/24 via"), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("lease {subnet} not programmed everywhere within 10 s"));
    let t1 = Instant::now();
    etcd_http(
        &c.switch.ns,
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{key}"}}"#),
    );
    let gone = mon
        .wait_all(&format!("Deleted {subnet}/24"), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("lease {subnet} not removed everywhere within 10 s"));
    std::thread::sleep(Duration::from_millis(20));
    (
        done.saturating_duration_since(t0),
        gone.saturating_duration_since(t1),
    )
}

fn proc_kb(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime (fields 14 and 15) are at 11 and 12 after the ")".
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
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
    let samples: u32 = env_or("TWILL_BENCH_SAMPLES", "40").parse().unwrap_or(40);
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
            let mons: Vec<RouteMonitors> = clusters.iter().map(RouteMonitors::start).collect();
            for k in 0..samples {
                // ABBA: neither daemon always goes first.
                let order = if k % 2 == 0 { [0, 1] } else { [1, 0] };
                for j in order {
                    let (a, d) = one_lease(&clusters[j], &mons[j], k);
                    add[j].push(a);
                    del[j].push(d);
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
                    proc_kb(pids[j], "VmRSS:") as f64 / 1024.0,
                    proc_kb(pids[j], "VmHWM:") as f64 / 1024.0,
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
