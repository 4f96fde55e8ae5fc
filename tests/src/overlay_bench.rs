//! Pieces shared by the overlay benchmarks (`overlay_bench`, `overlay_v6_bench`, `flanneld_bench`): leases
//! written straight into etcd's JSON gateway, every node's route notifications to see when they land, /proc
//! readings of a daemon, and pod-to-pod iperf3 runs compared ABBA.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use twill_kernel::notify::{self, Notification, Socket};

use crate::netns::Netns;

const SUBNETS: &str = "/coreos.com/network/subnets/";

/// The benchmark knob `name`, or `default` when it is unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Leases written per cluster size: `TWILL_BENCH_SAMPLES`, default 200. A p99 needs enough samples to be one:
/// of 40 it is the single slowest sample, so one scheduling hiccup on a 2-core machine decides it.
pub fn bench_samples() -> u32 {
    env_or("TWILL_BENCH_SAMPLES", "200").parse().unwrap_or(200)
}

/// Standard base64 with padding, as etcd's JSON gateway wants keys and values.
pub fn base64(data: &[u8]) -> String {
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

/// One request to etcd's JSON gateway over a socket opened inside the switch namespace (no etcdctl start-up
/// in the timing; the test process itself stays in the host namespace, and the socket works from any thread).
pub fn etcd_http(switch: &Netns, path: &str, body: &str) {
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

/// Route notifications of every node, read straight from netlink by one thread of the benchmark: each event
/// arrives tagged with the node and the moment it was read. The instrument should not compete with what it
/// measures: one `ip monitor route` per node cost the 2-core machine about as much CPU per lease as the 30
/// daemons under test (two more processes woken per node, and a line printed and parsed).
pub struct RouteMonitors {
    rx: mpsc::Receiver<(usize, Instant, IpNet, bool)>,
    nodes: usize,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl RouteMonitors {
    /// Subscribes to the IPv4 and IPv6 route notifications of each namespace in `node_namespaces`.
    pub fn start<'a>(node_namespaces: impl IntoIterator<Item = &'a Netns>) -> RouteMonitors {
        let sockets: Vec<Socket> = node_namespaces
            .into_iter()
            .map(|ns| {
                ns.run_in(|| {
                    notify::subscribe(notify::RTMGRP_IPV4_ROUTE | notify::RTMGRP_IPV6_ROUTE)
                })
                .unwrap_or_else(|e| panic!("route notifications in {}: {e}", ns.name()))
            })
            .collect();
        let nodes = sockets.len();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut fds: Vec<libc::pollfd> = sockets
                .iter()
                .map(|s| libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
            while !stopped.load(Relaxed) {
                // SAFETY: `fds` is a live array of `fds.len()` pollfds, only read and written by poll.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
                if n <= 0 {
                    continue;
                }
                for (i, fd) in fds.iter_mut().enumerate() {
                    if fd.revents == 0 {
                        continue;
                    }
                    fd.revents = 0;
                    loop {
                        buf.clear();
                        // Non-blocking: WouldBlock ends the burst; ENOBUFS (lost notifications) makes the
                        // sample time out, which reports it.
                        if sockets[i].recv(&mut buf, 0).is_err() {
                            break;
                        }
                        let at = Instant::now();
                        for note in notify::notifications(&buf) {
                            if let Notification::Route {
                                dst: Some(dst),
                                removed,
                                ..
                            } = note
                            {
                                if tx.send((i, at, dst, removed)).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        });
        RouteMonitors {
            rx,
            nodes,
            stop,
            reader: Some(reader),
        }
    }

    /// Forgets every notification read so far.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Waits until every node announced a route to `dst` (`removed`: its removal); returns the latest arrival.
    pub fn wait_all(&self, dst: IpNet, removed: bool, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut seen = vec![None; self.nodes];
        while seen.iter().any(Option::is_none) {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (i, at, d, r) = self.rx.recv_timeout(left).ok()?;
            if d == dst && r == removed && seen[i].is_none() {
                seen[i] = Some(at);
            }
        }
        seen.into_iter().flatten().max()
    }
}

impl Drop for RouteMonitors {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// How long one benchmark lease took: etcd acknowledging the put, its route on every node, its removal from
/// every node after the delete.
pub struct LeaseTimes {
    pub put_ack: Duration,
    pub add: Duration,
    pub delete: Duration,
}

/// Lease number `k` (10.244.200+, inside the benchmarks' Network but never allocated to a node) written into
/// the etcd of `switch` and deleted again, timed through `mon`.
pub fn add_and_delete_lease(switch: &Netns, mon: &RouteMonitors, k: u32) -> LeaseTimes {
    add_and_delete_lease_value(switch, mon, k, &vxlan_lease(k))
}

/// The vxlan lease value of the k-th benchmark lease (a made-up peer and VTEP MAC).
pub fn vxlan_lease(k: u32) -> String {
    format!(
        r#"{{"PublicIP":"10.250.1.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:bb:00:00:00:{:02x}"}}}}"#,
        k % 250 + 1,
        k % 250
    )
}

/// [`add_and_delete_lease`] with the lease value given (another backend's lease format).
pub fn add_and_delete_lease_value(
    switch: &Netns,
    mon: &RouteMonitors,
    k: u32,
    value: &str,
) -> LeaseTimes {
    let subnet = format!("10.244.{}.0", 200 + k % 50);
    add_and_delete_keyed(
        switch,
        mon,
        &format!("{subnet}-24"),
        value,
        &format!("{subnet}/24"),
    )
}

/// The dual-stack lease number `k`: key `10.244.<200+>.0-24&fd00:42:0:<c8+>::-64` and a value with both
/// families' underlay addresses and VTEP MACs; returns (key name, value, the IPv6 route's prefix).
pub fn dual_stack_lease(k: u32) -> (String, String, String) {
    let (v4, v6) = (200 + k % 50, 0xc8 + k % 50);
    let value = format!(
        r#"{{"PublicIP":"10.250.1.{h}","PublicIPv6":"fd00:250::1:{h:x}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:bb:00:00:00:{m:02x}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"0a:cc:00:00:00:{m:02x}"}}}}"#,
        h = k % 250 + 1,
        m = k % 250
    );
    (
        format!("10.244.{v4}.0-24&fd00:42:0:{v6:x}::-64"),
        value,
        format!("fd00:42:0:{v6:x}::/64"),
    )
}

/// Writes the lease `<prefix>/subnets/<key_name>` = `value`, waits until every node has a route to
/// `route_prefix`, deletes it and waits until every node removed the route.
pub fn add_and_delete_keyed(
    switch: &Netns,
    mon: &RouteMonitors,
    key_name: &str,
    value: &str,
    route_prefix: &str,
) -> LeaseTimes {
    let key = base64(format!("{SUBNETS}{key_name}").as_bytes());
    mon.drain();
    let t0 = Instant::now();
    etcd_http(
        switch,
        "/v3/kv/put",
        &format!(
            r#"{{"key":"{key}","value":"{}"}}"#,
            base64(value.as_bytes())
        ),
    );
    let put_ack = t0.elapsed();
    let dst: IpNet = route_prefix
        .parse()
        .unwrap_or_else(|e| panic!("route prefix {route_prefix}: {e}"));
    let done = mon
        .wait_all(dst, false, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("lease {key_name} not programmed everywhere within 10 s"));
    let t1 = Instant::now();
    etcd_http(
        switch,
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{key}"}}"#),
    );
    let gone = mon
        .wait_all(dst, true, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("lease {key_name} not removed everywhere within 10 s"));
    std::thread::sleep(Duration::from_millis(20));
    LeaseTimes {
        put_ack,
        add: done.saturating_duration_since(t0),
        delete: gone.saturating_duration_since(t1),
    }
}

/// The `p` quantile (0.0 to 1.0) of `sorted`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The number after `key` in /proc/<pid>/<file> (kB for memory lines), 0 when absent.
pub fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the ")".
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The CPUs iperf3's client and server are pinned to (`-A client,server`): the last two. Left to the scheduler,
/// the two processes share a CPU in some runs and not in others, and whichever path is measured then pays
/// for it: on the 2-core development machine that alone moved host-gw's pod-to-pod ratio between 0.86 and
/// 1.0. The sender carries the whole forwarding path in its softirq work, so it gets the CPU that takes
/// fewer device interrupts (CPU 0 takes most of them by default). None with a single CPU.
fn iperf_affinity() -> Option<String> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (cpus >= 2).then(|| format!("{},{}", cpus - 1, cpus - 2))
}

/// How the reports name the iperf3 runs' pinning.
pub fn iperf_pinning() -> String {
    iperf_affinity().map_or_else(|| "unpinned".to_string(), |a| format!("-A {a}"))
}

/// iperf3 from `client_ns` to a one-shot server bound to `server_ip` in `server_ns`, for `secs` seconds, the
/// two pinned to CPUs of their own ([`iperf_affinity`]): Gbit/s received.
pub fn iperf_gbps(server_ns: &Netns, client_ns: &Netns, server_ip: IpAddr, secs: u32) -> f64 {
    let ip = server_ip.to_string();
    let _server = Killed(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                server_ns.name(),
                "iperf3",
                "-s",
                "-1",
                "-B",
                &ip,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("iperf3 -s: {e}")),
    );
    std::thread::sleep(Duration::from_millis(500));
    let secs = secs.to_string();
    let mut args = vec!["iperf3", "-c", &ip, "-t", &secs, "-J"];
    let affinity = iperf_affinity();
    if let Some(a) = &affinity {
        args.extend(["-A", a]);
    }
    let out = client_ns.exec(&args);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

/// The median of `v` (the mean of the middle two when their number is even).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
}

/// Rounds of each side in [`abba_medians`]. With 4 the median of one run still moved by ±3 % between runs of
/// the same two paths on the 2-core machine; 8 narrow it (by about a factor 1.4 if rounds are independent)
/// at 40 s more per comparison.
pub const ABBA_ROUNDS: usize = 8;

/// `a` and `b` measured alternately, [`ABBA_ROUNDS`] rounds each in ABBA order so that neither always runs
/// first: on a shared machine a single back-to-back pair mostly measures whoever else was busy. Their medians.
pub fn abba_medians(mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> (f64, f64) {
    let (mut va, mut vb) = (Vec::new(), Vec::new());
    for round in 0..ABBA_ROUNDS {
        if round % 2 == 0 {
            va.push(a());
            vb.push(b());
        } else {
            vb.push(b());
            va.push(a());
        }
    }
    (median(&mut va), median(&mut vb))
}

/// Appends `text` to the file `TWILL_BENCH_OUT` names, if it is set (the script empties it first: several
/// benchmarks write).
pub fn append_bench_out(text: &str) {
    if let Ok(path) = std::env::var("TWILL_BENCH_OUT") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(text.as_bytes());
        }
    }
}
