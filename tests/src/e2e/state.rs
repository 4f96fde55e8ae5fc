//! The serialisable half of the cluster: [`ClusterState`] describes a running cluster (names, addresses,
//! directories) and carries every check (lease table, pod-to-pod matrix, host-port check, throughput,
//! leftovers per node), so a test's in-process cluster and `twill-cluster report` (another process) run the
//! same checks.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::netns::NETNS_RUN_DIR;

use super::{exec_in, ip_n, ping_from, wait_none_missing, POD_PORT, SUBNETS_PREFIX};

/// What the supervisor writes to `<state>/cluster.json` and `report` reads back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    pub prefix: String,
    pub switch_ns: String,
    /// etcd's endpoint inside the switch namespace.
    pub etcd_endpoint: String,
    pub supervisor_pid: Option<u32>,
    pub workdir: PathBuf,
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<PodInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub ns: String,
    pub underlay_ip: Ipv4Addr,
    pub subnet_file: PathBuf,
    pub twilld_log: PathBuf,
    pub cni_dir: PathBuf,
    pub net: String,
    pub twilld_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodInfo {
    pub name: String,
    pub node: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub host_port: Option<u16>,
}

/// One lease record from etcd (docs/architecture.md, flannel contracts, etcd layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Addr,
    pub len: u8,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: String,
    pub node_name: Option<String>,
}

/// A row of the lease table: what etcd says next to what the node's kernel has.
#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub lease: Lease,
    /// The node whose daemon holds the lease, if it is one of ours.
    pub node: Option<String>,
    /// MAC of that node's `flannel.1`.
    pub kernel_mac: Option<String>,
    /// The subnet in that node's subnet.env.
    pub subnet_env: Option<String>,
}

/// Pod-to-pod reachability: `cells[i][j]` = pod i pinged pod j (`None` on the diagonal).
#[derive(Debug, Clone)]
pub struct Matrix {
    pub pods: Vec<PodInfo>,
    pub cells: Vec<Vec<Option<bool>>>,
    pub elapsed: Duration,
}

impl Matrix {
    pub fn is_full(&self) -> bool {
        self.cells.iter().flatten().all(|c| *c != Some(false))
    }

    pub fn reachable(&self) -> (usize, usize) {
        let cells: Vec<bool> = self.cells.iter().flatten().filter_map(|c| *c).collect();
        (cells.iter().filter(|c| **c).count(), cells.len())
    }

    /// "node1-pod1 (10.244.3.2) -> node2-pod2 (10.244.7.3)" for every failed cell.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, row) in self.cells.iter().enumerate() {
            for (j, c) in row.iter().enumerate() {
                if *c == Some(false) {
                    let (a, b) = (&self.pods[i], &self.pods[j]);
                    out.push(format!("{} ({}) -> {} ({})", a.name, a.ip, b.name, b.ip));
                }
            }
        }
        out
    }

    pub fn render(&self) -> String {
        let label = |p: &PodInfo| p.name.replace("node", "n").replace("-pod", "p");
        let w = self
            .pods
            .iter()
            .map(|p| label(p).len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!("{:<w$} {:<15}", "from\\to", "");
        for p in &self.pods {
            out.push_str(&format!(" {:>w$}", label(p)));
        }
        out.push('\n');
        for (i, row) in self.cells.iter().enumerate() {
            let p = &self.pods[i];
            out.push_str(&format!("{:<w$} {:<15}", label(p), p.ip));
            for c in row {
                let s = match c {
                    None => "-",
                    Some(true) => "ok",
                    Some(false) => "FAIL",
                };
                out.push_str(&format!(" {s:>w$}"));
            }
            out.push('\n');
        }
        let (ok, all) = self.reachable();
        out.push_str(&format!(
            "{ok}/{all} pod pairs reachable (ICMP echo, checked in {:.1}s)\n",
            self.elapsed.as_secs_f64()
        ));
        out
    }
}

/// One host-port probe: a client (a node, or a pod on it) connects to `<node IP>:<hostPort>` of another node.
#[derive(Debug, Clone)]
pub struct PortCheck {
    pub from: String,
    pub target: String,
    pub answer: Result<String, String>,
    pub expected: String,
}

impl PortCheck {
    pub fn ok(&self) -> bool {
        self.answer
            .as_deref()
            .is_ok_and(|a| a.trim() == self.expected)
    }
}

/// iperf3 runs per path in [`ClusterState::throughput`] (alternating overlay and underlay).
pub const THROUGHPUT_ROUNDS: usize = 2;

/// iperf3 results, bits per second.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub overlay_bps: f64,
    pub underlay_bps: f64,
    pub overlay_path: String,
    pub underlay_path: String,
    pub seconds: u32,
}

impl Throughput {
    pub fn render(&self) -> String {
        format!(
            "pod -> pod across nodes (VXLAN) {:>8.2} Gbit/s   {}\n\
             node -> node (raw underlay)    {:>8.2} Gbit/s   {}\n\
             overlay / underlay             {:>8.0} %        (iperf3, one TCP stream, {} s, best of {THROUGHPUT_ROUNDS} alternating runs)\n",
            self.overlay_bps / 1e9,
            self.overlay_path,
            self.underlay_bps / 1e9,
            self.underlay_path,
            100.0 * self.overlay_bps / self.underlay_bps.max(1.0),
            self.seconds
        )
    }
}

/// What a node holds for pods, to compare before and after: host-side veths, host-local leases, flannel's
/// saved delegate configs, libcni's cached results, and policy rules + nftables + iptables rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub node: String,
    pub veths: BTreeSet<String>,
    pub leases: BTreeSet<String>,
    pub saved: BTreeSet<String>,
    pub cached: BTreeSet<String>,
    pub rules: BTreeSet<String>,
}

impl NodeSnapshot {
    /// Everything present now and not in `before`, as "node1: veth vethab12cd".
    pub fn leaked_since(&self, before: &NodeSnapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (what, now, then) in [
            ("veth", &self.veths, &before.veths),
            ("host-local lease", &self.leases, &before.leases),
            ("saved delegate config", &self.saved, &before.saved),
            ("cached result", &self.cached, &before.cached),
            ("rule", &self.rules, &before.rules),
        ] {
            out.extend(
                now.difference(then)
                    .map(|l| format!("{}: {what} {l}", self.node)),
            );
        }
        out
    }
}

fn dir_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// nft/iptables lines without their counters (which move with traffic).
fn strip_counters(line: &str) -> String {
    let mut out = Vec::new();
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if (w == "packets" || w == "bytes")
            && words.peek().is_some_and(|n| n.parse::<u64>().is_ok())
        {
            words.next();
            continue;
        }
        out.push(w);
    }
    out.join(" ")
}

/// Runs `f` on a fresh thread that has entered the network namespace `/run/netns/<ns>`; the caller's thread
/// never changes namespace.
fn spawn_in_netns<F, R>(ns: &str, f: F) -> std::thread::JoinHandle<Result<R, String>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let path = Path::new(NETNS_RUN_DIR).join(ns);
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        // SAFETY: setns on this (new, short-lived) thread with a valid namespace fd.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "setns into {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
}

/// A TCP server inside a pod answering every connection with one line; stopped on drop.
struct Greeter {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Greeter {
    fn start(ns: &str, port: u16, greeting: String) -> Result<Greeter, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let flag = stop.clone();
        let handle = spawn_in_netns(ns, move || {
            let listener = match TcpListener::bind(("0.0.0.0", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(format!("bind 0.0.0.0:{port}: {e}")));
                    return;
                }
            };
            let _ = listener.set_nonblocking(true);
            let _ = tx.send(Ok(()));
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(format!("{greeting}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| Err(format!("greeting server in {ns} did not start")));
        let g = Greeter {
            stop,
            handle: Some(handle),
        };
        ready.map_err(|e| format!("greeting server in {ns}: {e}"))?;
        Ok(g)
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects from namespace `ns` to `addr` and reads the greeting line.
fn fetch_from(ns: &str, addr: SocketAddr) -> Result<String, String> {
    spawn_in_netns(ns, move || -> Result<String, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut text = String::new();
                    s.read_to_string(&mut text)
                        .map_err(|e| format!("read from {addr}: {e}"))?;
                    return Ok(text);
                }
                Err(e) => last = format!("connect {addr}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(last)
    })
    .join()
    .map_err(|_| "client thread panicked".to_string())??
}

/// A background process inside a namespace, killed on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// iperf3 from `client_ns` to a server started in `server_ns` at `ip`; bits per second received.
pub fn iperf(server_ns: &str, client_ns: &str, ip: Ipv4Addr, secs: u32) -> Result<f64, String> {
    let port = "5201";
    let _server = Background(
        Command::new("ip")
            .args(["netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start iperf3 server (install iperf3): {e}"))?,
    );
    let mut last = String::new();
    // Bounded everywhere: the cluster (namespaces, daemons) can go away under a report run by another
    // process, and an iperf3 client waiting on a vanished peer would otherwise wait for minutes.
    let deadline = Instant::now() + IPERF_RETRY_WINDOW;
    while Instant::now() < deadline {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", client_ns, "iperf3", "-J", "-c"])
            .arg(ip.to_string())
            .args(["-p", port, "-t", &secs.to_string()])
            .args([
                "--connect-timeout",
                &IPERF_CONNECT_TIMEOUT.as_millis().to_string(),
            ]);
        let out = crate::exec::run_command(cmd, None, &[], iperf_timeout(secs))
            .map_err(|e| format!("run iperf3 client: {e}"))?;
        if out.timed_out {
            return Err(format!(
                "iperf3 {client_ns} -> {ip}: no result within {:?} (killed)",
                iperf_timeout(secs)
            ));
        }
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps);
        }
        last = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| out.stderr.clone());
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("iperf3 {client_ns} -> {ip}: {last}"))
}

/// How long the iperf3 client waits for the control connection (the server may still be starting).
const IPERF_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack for a running test that stalls: the client only sends, so iperf3's own `--rcv-timeout` (valid only
/// in receiving mode) cannot bound it; the kill in [`iperf_timeout`] does.
const IPERF_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`iperf`] keeps retrying a client that could not connect (server not listening yet).
const IPERF_RETRY_WINDOW: Duration = Duration::from_secs(10);

/// The most one iperf3 client run of `secs` seconds may take before it is killed.
fn iperf_timeout(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs))
        + IPERF_CONNECT_TIMEOUT
        + IPERF_IDLE_TIMEOUT
        + Duration::from_secs(5)
}

impl ClusterState {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The same cluster without node `name` and its pods (checks among the survivors of a node loss).
    pub fn without_node(&self, name: &str) -> ClusterState {
        let mut s = self.clone();
        s.nodes.retain(|n| n.name != name);
        s.pods.retain(|p| p.node != name);
        s
    }

    /// `etcdctl` inside the switch namespace.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = vec![
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            "--endpoints",
            &self.etcd_endpoint,
            "--dial-timeout",
            "2s",
            "--command-timeout",
            "5s",
        ];
        cmd.extend_from_slice(args);
        exec_in(&self.switch_ns, &cmd)
    }

    /// Every lease in etcd, parsed (docs/architecture.md, flannel contracts, etcd layout); keys of other shapes are
    /// skipped.
    pub fn leases(&self) -> Result<Vec<Lease>, String> {
        let out = self.etcdctl(&["get", "--prefix", SUBNETS_PREFIX])?;
        let lines: Vec<&str> = out.lines().collect();
        let mut leases = Vec::new();
        for kv in lines.chunks(2) {
            let [key, value] = kv else { continue };
            let Some((net, len)) = key
                .strip_prefix(SUBNETS_PREFIX)
                .and_then(|k| k.split_once('-'))
            else {
                continue;
            };
            let (Ok(subnet), Ok(len)) = (net.parse(), len.parse()) else {
                continue;
            };
            let v: Value = serde_json::from_str(value).unwrap_or(Value::Null);
            leases.push(Lease {
                subnet,
                len,
                public_ip: v["PublicIP"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
                vtep_mac: v["BackendData"]["VtepMAC"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                node_name: v["NodeName"].as_str().map(str::to_string),
            });
        }
        Ok(leases)
    }

    /// The lease table: one row per lease, joined with the node it belongs to (by public IP).
    pub fn lease_table(&self) -> Result<Vec<LeaseRow>, String> {
        let mut leases = self.leases()?;
        leases.sort_by_key(|l| (l.public_ip, l.subnet));
        Ok(leases
            .into_iter()
            .map(|lease| {
                let node = self.nodes.iter().find(|n| n.underlay_ip == lease.public_ip);
                LeaseRow {
                    node: node.map(|n| n.name.clone()),
                    kernel_mac: node.and_then(|n| link_mac(&n.ns, "flannel.1")),
                    subnet_env: node.and_then(|n| {
                        std::fs::read_to_string(&n.subnet_file).ok().and_then(|t| {
                            t.lines()
                                .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
                                .map(str::to_string)
                        })
                    }),
                    lease,
                }
            })
            .collect())
    }

    pub fn render_lease_table(&self, rows: &[LeaseRow]) -> String {
        let mut out = format!(
            "{:<8} {:<16} {:<12} {:<19} {:<14} {:>4}\n",
            "node", "subnet", "public IP", "VTEP MAC (etcd)", "flannel.1 MAC", "pods"
        );
        for r in rows {
            let node = r.node.clone().unwrap_or_else(|| "?".into());
            let mac_ok = match &r.kernel_mac {
                Some(m) if *m == r.lease.vtep_mac => "same".to_string(),
                Some(m) => format!("DIFFERS {m}"),
                None => "none".to_string(),
            };
            let pods = self.pods.iter().filter(|p| p.node == node).count();
            out.push_str(&format!(
                "{:<8} {:<16} {:<12} {:<19} {:<14} {:>4}\n",
                node,
                format!("{}/{}", r.lease.subnet, r.lease.len),
                r.lease.public_ip,
                r.lease.vtep_mac,
                mac_ok,
                pods
            ));
        }
        out
    }

    /// Whether the node in namespace `ns` has the route, permanent neighbour and FDB entry for `lease`
    /// (docs/architecture.md, flannel contracts, VXLAN programming).
    pub fn node_knows(ns: &str, lease: &Lease) -> bool {
        let routes = ip_n(ns, &["route", "show", "dev", "flannel.1"]);
        let neigh = ip_n(ns, &["neigh", "show", "dev", "flannel.1"]);
        let fdb = bridge_fdb(ns);
        routes.contains(&format!(
            "{}/{} via {} ",
            lease.subnet, lease.len, lease.subnet
        )) && neigh.contains(&format!(
            "{} lladdr {} PERMANENT",
            lease.subnet, lease.vtep_mac
        )) && fdb.contains(&format!("{} dst {} ", lease.vtep_mac, lease.public_ip))
    }

    /// Whether the node in namespace `ns` still has any route, neighbour or FDB entry for `lease`.
    pub fn node_has_trace_of(ns: &str, lease: &Lease) -> bool {
        ip_n(ns, &["route", "show", "dev", "flannel.1"]).contains(&format!("{}/", lease.subnet))
            || ip_n(ns, &["neigh", "show", "dev", "flannel.1"])
                .contains(&format!("{} ", lease.subnet))
            || (!lease.vtep_mac.is_empty() && bridge_fdb(ns).contains(&lease.vtep_mac))
    }

    /// Every node has programmed every other node's lease; Err describes what is missing.
    pub fn mesh_missing(&self) -> Result<Vec<String>, String> {
        let leases = self.leases()?;
        let mut missing = Vec::new();
        for n in &self.nodes {
            for l in leases.iter().filter(|l| l.public_ip != n.underlay_ip) {
                if !Self::node_knows(&n.ns, l) {
                    missing.push(format!(
                        "{} lacks {}/{} ({})",
                        n.name, l.subnet, l.len, l.public_ip
                    ));
                }
            }
        }
        if leases.len() < self.nodes.len() {
            missing.push(format!(
                "{} leases in etcd for {} nodes",
                leases.len(),
                self.nodes.len()
            ));
        }
        Ok(missing)
    }

    pub fn wait_mesh(&self, timeout: Duration) -> Result<(), String> {
        wait_none_missing("mesh", timeout, || self.mesh_missing())
    }

    /// Every pod pings every other pod (in parallel, 3 tries each).
    pub fn matrix(&self) -> Matrix {
        let n = self.pods.len();
        let start = Instant::now();
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .collect();
        let results: Vec<AtomicU32> = pairs.iter().map(|_| AtomicU32::new(0)).collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..pairs.len().min(16) {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(i, j)) = pairs.get(k) else { break };
                    let ok = ping_from(&self.pods[i].ns, &self.pods[j].ip.to_string());
                    results[k].store(if ok { 1 } else { 2 }, Ordering::SeqCst);
                });
            }
        });
        let mut cells = vec![vec![None; n]; n];
        for (k, &(i, j)) in pairs.iter().enumerate() {
            cells[i][j] = Some(results[k].load(Ordering::SeqCst) == 1);
        }
        Matrix {
            pods: self.pods.clone(),
            cells,
            elapsed: start.elapsed(),
        }
    }

    /// The matrix, retried until full or `timeout` (routes to a node that just joined may take a moment).
    pub fn wait_full_matrix(&self, timeout: Duration) -> Matrix {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.matrix();
            if m.is_full() || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// For every pod with a host port: a greeting server in the pod on [`POD_PORT`], then from every other
    /// node, and from a pod on it, a connection to `<node underlay IP>:<hostPort>` must get the greeting.
    pub fn host_port_check(&self) -> Result<Vec<PortCheck>, String> {
        let mut greeters = Vec::new();
        for p in self.pods.iter().filter(|p| p.host_port.is_some()) {
            greeters.push(Greeter::start(
                &p.ns,
                POD_PORT,
                format!("hello from {}", p.name),
            )?);
        }
        let mut checks = Vec::new();
        for target in self.pods.iter().filter(|p| p.host_port.is_some()) {
            let Some(node) = self.node(&target.node) else {
                continue;
            };
            let hp = target.host_port.unwrap_or(0);
            let addr = SocketAddr::from((node.underlay_ip, hp));
            for other in self.nodes.iter().filter(|n| n.name != node.name) {
                let mut clients = vec![(other.name.clone(), other.ns.clone())];
                if let Some(p) = self.pods.iter().find(|p| p.node == other.name) {
                    clients.push((p.name.clone(), p.ns.clone()));
                }
                for (from, ns) in clients {
                    checks.push(PortCheck {
                        from,
                        target: format!(
                            "{}:{hp} ({} -> {}:{POD_PORT})",
                            node.underlay_ip, node.name, target.name
                        ),
                        answer: fetch_from(&ns, addr),
                        expected: format!("hello from {}", target.name),
                    });
                }
            }
        }
        drop(greeters);
        Ok(checks)
    }

    /// iperf3 between the first pods of the first two nodes, next to the same between the nodes themselves.
    pub fn throughput(&self, secs: u32) -> Result<Throughput, String> {
        let [a, b, ..] = self.nodes.as_slice() else {
            return Err("throughput needs two nodes".into());
        };
        let pa = self.pods.iter().find(|p| p.node == a.name);
        let pb = self.pods.iter().find(|p| p.node == b.name);
        let (Some(pa), Some(pb)) = (pa, pb) else {
            return Err("throughput needs a pod on each of the first two nodes".into());
        };
        // Alternating runs, best of each: on a shared machine one run of either can be slowed by other work.
        let (mut overlay_bps, mut underlay_bps) = (0f64, 0f64);
        for _ in 0..THROUGHPUT_ROUNDS {
            overlay_bps = overlay_bps.max(iperf(&pa.ns, &pb.ns, pa.ip, secs)?);
            underlay_bps = underlay_bps.max(iperf(&a.ns, &b.ns, a.underlay_ip, secs)?);
        }
        Ok(Throughput {
            overlay_bps,
            underlay_bps,
            overlay_path: format!("{} ({}) -> {} ({})", pb.name, pb.ip, pa.name, pa.ip),
            underlay_path: format!(
                "{} ({}) -> {} ({})",
                b.name, b.underlay_ip, a.name, a.underlay_ip
            ),
            seconds: secs,
        })
    }

    /// What node `name` holds for pods right now.
    pub fn snapshot(&self, name: &str) -> NodeSnapshot {
        let Some(n) = self.node(name) else {
            return NodeSnapshot::default();
        };
        let veths = ip_n(&n.ns, &["-o", "link", "show", "type", "veth"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|s| s.split('@').next().unwrap_or(s).to_string())
            .filter(|s| s != "eth0")
            .collect();
        let leases = dir_names(&n.cni_dir.join("networks").join(&n.net))
            .into_iter()
            .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
            .collect();
        let mut rules: BTreeSet<String> = ip_n(&n.ns, &["rule", "show"])
            .lines()
            .map(|l| format!("ip rule: {l}"))
            .collect();
        if let Ok(nft) = exec_in(&n.ns, &["nft", "list", "ruleset"]) {
            rules.extend(
                nft.lines()
                    .map(strip_counters)
                    .filter(|l| !l.is_empty() && l != "}")
                    .map(|l| format!("nft: {l}")),
            );
        }
        for tool in ["iptables-save", "ip6tables-save"] {
            if let Ok(out) = exec_in(&n.ns, &[tool]) {
                rules.extend(
                    out.lines()
                        .filter(|l| l.starts_with("-A"))
                        .map(|l| format!("{tool}: {l}")),
                );
            }
        }
        NodeSnapshot {
            node: n.name.clone(),
            veths,
            leases,
            saved: dir_names(&n.cni_dir.join("flannel")),
            cached: dir_names(&n.cni_dir.join("cache").join("results")),
            rules,
        }
    }

    pub fn snapshots(&self) -> Vec<NodeSnapshot> {
        self.nodes.iter().map(|n| self.snapshot(&n.name)).collect()
    }

    /// Commands to look around the running cluster.
    pub fn explore_hints(&self) -> String {
        let mut out = String::new();
        if let (Some(a), Some(b)) = (self.pods.first(), self.pods.last()) {
            out.push_str(&format!(
                "  ip netns exec {} ping -c 3 {}          # {} -> {}\n",
                a.ns, b.ip, a.name, b.name
            ));
        }
        if let Some(n) = self.nodes.first() {
            out.push_str(&format!(
                "  ip -n {} route; bridge -n {} fdb show dev flannel.1   # {}'s overlay routes and FDB\n",
                n.ns, n.ns, n.name
            ));
            out.push_str(&format!(
                "  cat {}     # written by {}'s twilld\n",
                n.subnet_file.display(),
                n.name
            ));
            out.push_str(&format!("  tail -f {}\n", n.twilld_log.display()));
            out.push_str(&format!(
                "  ls {}/{{net.d,bin,flannel,networks/{}}}   # {}'s CNI dirs\n",
                n.cni_dir.display(),
                n.net,
                n.name
            ));
        }
        out.push_str(&format!(
            "  ip netns exec {} env ETCDCTL_API=3 etcdctl --endpoints {} get --prefix /coreos.com/network\n",
            self.switch_ns, self.etcd_endpoint
        ));
        out.push_str(&format!("  ip netns list | grep tw-{}\n", self.prefix));
        out
    }
}

fn bridge_fdb(ns: &str) -> String {
    Command::new("bridge")
        .args(["-n", ns, "fdb", "show", "dev", "flannel.1"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn link_mac(ns: &str, dev: &str) -> Option<String> {
    let text = ip_n(ns, &["-o", "link", "show", "dev", dev]);
    let pos = text.find("link/ether ")?;
    Some(text[pos + 11..].split_whitespace().next()?.to_string())
}
