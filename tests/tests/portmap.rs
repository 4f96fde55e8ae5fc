//! The `portmap` plugin on real namespaces (docs/cni-spec-notes.md §12 portmap). Each test builds a "node"
//! namespace whose pods are attached with a `bridge` + `portmap` conflist driven through the real libcni,
//! plus a "remote host" namespace on a veth. TCP and UDP servers run inside the pod (in-process threads
//! that `setns`'d into it), and clients connect through the host port from the remote host via the node
//! address, from the node itself via 127.0.0.1 and its own address, and from the pod itself (hairpin),
//! over IPv4 and IPv6. The same matrix is run against each reference build's portmap (Debian's 1.1.1 in
//! `/usr/lib/cni`, upstream v1.10.0) for a differential check.
//!
//! All traffic stays inside the test's namespaces; all netfilter state lives in the node namespace and
//! vanishes with it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use twill_tests::bins::{bin, require_root, Reference};
use twill_tests::exec::{Invocation, Outcome};
use twill_tests::libcni::{unique_name, LibCni};
use twill_tests::netns::Netns;

const HOST_PORT: u16 = 8080;
const CONTAINER_PORT: u16 = 80;
const NODE_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// The bridge's gateway addresses (host-local hands out .1 / ::1 to the gateway): what masqueraded
/// hairpin and localhost connections come from.
const BRIDGE_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const BRIDGE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Ours,
    Reference(Reference),
}

fn plugin_bin(which: Impl, name: &str) -> PathBuf {
    match which {
        Impl::Ours => bin(name),
        Impl::Reference(r) => r.bin(name),
    }
}

fn portmap_bin(which: Impl) -> PathBuf {
    plugin_bin(which, "portmap")
}

/// A simulated node: its namespace, a remote host namespace on a veth, a libcni driver running inside
/// the node with a private plugin directory (portmap under test + reference bridge and host-local).
struct Node {
    node: Netns,
    remote: Netns,
    lib: LibCni,
    net: String,
    _dir: tempfile::TempDir,
}

impl Node {
    /// `portmap` is the plugin object appended to the bridge in the conflist.
    /// Pods attached with our bridge and host-local.
    fn new(which: Impl, portmap: Value) -> Node {
        Node::with_bridge(which, Impl::Ours, portmap)
    }

    /// `bridge` picks the bridge and host-local plugins (ours or the reference's).
    fn with_bridge(which: Impl, bridge: Impl, portmap: Value) -> Node {
        require_root();
        let node = Netns::new("pmnode");
        let remote = Netns::new("pmrem");
        let dir = tempfile::Builder::new()
            .prefix("twill-portmap-")
            .tempdir()
            .expect("tempdir");
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).expect("mkdir bin");
        for (name, target) in [
            ("portmap", portmap_bin(which)),
            ("bridge", plugin_bin(bridge, "bridge")),
            ("host-local", plugin_bin(bridge, "host-local")),
        ] {
            std::os::unix::fs::symlink(&target, bin_dir.join(name)).expect("symlink plugin");
        }
        for ns in [&node, &remote] {
            ns.ip(&["link", "set", "lo", "up"]);
        }
        let up = unique_name("up").replace('-', "");
        let up = &up[..up.len().min(15)];
        node.ip(&[
            "link",
            "add",
            up,
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            remote.name(),
        ]);
        node.ip(&["addr", "add", &format!("{NODE_V4}/24"), "dev", up]);
        node.ip(&["addr", "add", &format!("{NODE_V6}/64"), "dev", up, "nodad"]);
        node.ip(&["link", "set", up, "up"]);
        remote.ip(&["addr", "add", &format!("{REMOTE_V4}/24"), "dev", "uplink"]);
        remote.ip(&[
            "addr",
            "add",
            &format!("{REMOTE_V6}/64"),
            "dev",
            "uplink",
            "nodad",
        ]);
        remote.ip(&["link", "set", "uplink", "up"]);
        node.exec_ok(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        let net = unique_name("pm");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": net,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": dir.path().join("ipam").display().to_string(),
                        "ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd00:88::/64"}]],
                        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
                    }
                },
                portmap
            ]
        });
        let lib = LibCni::scratch(vec![bin_dir]).in_netns(node.path());
        lib.write_conflist(&conflist);
        Node {
            node,
            remote,
            lib,
            net,
            _dir: dir,
        }
    }

    fn bin_dir(&self) -> PathBuf {
        self._dir.path().join("bin")
    }

    /// Attaches a new pod with `mappings`; returns its namespace and the final result.
    fn add_pod(&self, id: &str, mappings: &Value) -> (Netns, Value) {
        let pod = Netns::new("pmpod");
        let result = self
            .lib
            .with_container_id(id)
            .with_cap_args(json!({ "portMappings": mappings }))
            .add(&self.net, pod.path())
            .assert_success();
        // The bridge's gateway address (node side) and the pod's address go through DAD: until both are
        // usable the pod cannot route IPv6 replies.
        wait_for_v6(&pod);
        wait_for_v6(&self.node);
        (pod, result)
    }

    fn try_add_pod(&self, id: &str, mappings: &Value) -> (Netns, Outcome) {
        let pod = Netns::new("pmpod");
        let outcome = self
            .lib
            .with_container_id(id)
            .with_cap_args(json!({ "portMappings": mappings }))
            .add(&self.net, pod.path());
        (pod, outcome)
    }

    /// Runs the portmap under test directly (as a runtime would for one plugin of the list) in the node.
    fn portmap(&self, command: &str, id: &str, netns: &str, config: &Value) -> Outcome {
        Invocation::new(self.bin_dir().join("portmap"), command)
            .libcni_style()
            .container_id(Some(id))
            .netns_str(Some(netns))
            .stdin_json(config)
            .in_netns(self.node.path())
            .run()
    }

    fn nft_ruleset(&self) -> String {
        self.node.exec_ok(&["nft", "list", "ruleset"])
    }

    /// Every portmap rule (ours in either backend, or the reference's chains) in the node: every line
    /// of our nftables tables, and iptables/nft lines naming our or the reference's chains.
    fn portmap_rules(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_ours = false;
        for line in self.nft_ruleset().lines() {
            if line.starts_with("table ") {
                in_ours = line.contains("twill_portmap");
            }
            if in_ours || line.contains("CNI-") {
                out.push(line.to_string());
            }
        }
        for tool in ["iptables-save", "ip6tables-save"] {
            out.extend(
                self.node
                    .exec_ok(&[tool, "-t", "nat"])
                    .lines()
                    .filter(|l| l.contains("TWILL-HOSTPORTS") || l.contains("CNI-"))
                    .map(str::to_string),
            );
        }
        out
    }

    fn assert_no_portmap_rules(&self) {
        let left = self.portmap_rules();
        assert!(
            left.is_empty(),
            "portmap rules left in the node:\n  {}\nruleset:\n{}",
            left.join("\n  "),
            self.nft_ruleset()
        );
    }
}

/// Waits (bounded; a timeout is not a failure by itself, the probes will tell) until no global IPv6
/// address in `ns` is tentative: duplicate address detection takes about a second after an address
/// is added, and a tentative gateway address answers no neighbour solicitation.
fn wait_for_v6(ns: &Netns) {
    for _ in 0..250 {
        let out = ns.ip(&["-6", "addr", "show", "scope", "global", "tentative"]);
        if out.trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mappings() -> Value {
    json!([
        {"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp"},
        {"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "udp"}
    ])
}

/// Moves the calling thread into `ns` (threads spawned for servers only).
fn enter(ns: &std::fs::File) {
    // SAFETY: setns on this thread with a valid namespace fd; the thread does nothing else afterwards.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// TCP and UDP servers on `[::]:port` inside a pod, answering every connection or datagram with
/// "<name> <peer address>": the peer address shows whether the host masqueraded.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Netns, port: u16, name: &str) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut threads = Vec::new();
        {
            let (file, stop, ready, name) =
                (ns.open(), stop.clone(), ready_tx.clone(), name.to_string());
            threads.push(std::thread::spawn(move || {
                enter(&file);
                let listener = match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready.send(Err(format!("tcp bind: {e}")));
                        return;
                    }
                };
                listener.set_nonblocking(true).expect("nonblocking");
                let _ = ready.send(Ok(()));
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, peer)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = write!(s, "{name} {}", canonical(peer.ip()));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        {
            let (file, stop, ready, name) = (ns.open(), stop.clone(), ready_tx, name.to_string());
            threads.push(std::thread::spawn(move || {
                enter(&file);
                let sock = match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready.send(Err(format!("udp bind: {e}")));
                        return;
                    }
                };
                sock.set_read_timeout(Some(Duration::from_millis(20)))
                    .expect("timeout");
                let _ = ready.send(Ok(()));
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                        let reply = format!("{name} {}", canonical(peer.ip()));
                        let _ = sock.send_to(reply.as_bytes(), peer);
                    }
                }
            }));
        }
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("server thread did not start")
                .unwrap_or_else(|e| panic!("pod server: {e}"));
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// One connection (TCP) or request/answer (UDP) from inside `ns`; the server's answer or why not.
fn probe(
    ns: &Netns,
    proto: Proto,
    to: SocketAddr,
    from_port: Option<u16>,
) -> Result<String, String> {
    ns.run_in(move || match proto {
        Proto::Tcp => {
            // A refused connection is an answer; a timeout under load gets one more try.
            let mut last = String::new();
            for _ in 0..2 {
                let mut s = match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                    Ok(s) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        last = format!("connect: {e}");
                        continue;
                    }
                    Err(e) => return Err(format!("connect: {e}")),
                };
                s.set_read_timeout(Some(Duration::from_secs(3)))
                    .map_err(|e| e.to_string())?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)
                    .map_err(|e| format!("read: {e}"))?;
                return Ok(answer);
            }
            Err(last)
        }
        Proto::Udp => {
            let local: SocketAddr = match to {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, from_port.unwrap_or(0)).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, from_port.unwrap_or(0)).into(),
            };
            let sock = UdpSocket::bind(local).map_err(|e| format!("bind: {e}"))?;
            sock.set_read_timeout(Some(Duration::from_millis(700)))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 512];
            let mut last = String::new();
            for _ in 0..5 {
                sock.send_to(b"ping", to)
                    .map_err(|e| format!("send: {e}"))?;
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(e) => last = format!("recv: {e}"),
                }
            }
            Err(last)
        }
    })
}

/// The reachability matrix: (what, answer or error) for every source × protocol × family.
fn matrix(n: &Node, pod: &Netns, with_v6: bool) -> Vec<(String, Result<String, String>)> {
    let v4 = |ip: Ipv4Addr| SocketAddr::from((ip, HOST_PORT));
    let v6 = |ip: Ipv6Addr| SocketAddr::from((ip, HOST_PORT));
    let mut cases: Vec<(&str, &Netns, SocketAddr)> = vec![
        ("remote host -> node IPv4 address", &n.remote, v4(NODE_V4)),
        ("node -> 127.0.0.1", &n.node, v4(Ipv4Addr::LOCALHOST)),
        ("node -> its own IPv4 address", &n.node, v4(NODE_V4)),
        ("pod -> node IPv4 address (hairpin)", pod, v4(NODE_V4)),
    ];
    if with_v6 {
        cases.extend([
            ("remote host -> node IPv6 address", &n.remote, v6(NODE_V6)),
            ("node -> its own IPv6 address", &n.node, v6(NODE_V6)),
            ("pod -> node IPv6 address (hairpin)", pod, v6(NODE_V6)),
        ]);
    }
    let mut out = Vec::new();
    for (what, ns, to) in cases {
        for proto in [Proto::Tcp, Proto::Udp] {
            out.push((format!("{proto:?} {what}"), probe(ns, proto, to, None)));
        }
    }
    out
}

fn render(m: &[(String, Result<String, String>)]) -> String {
    m.iter()
        .map(|(what, r)| format!("  {what}: {r:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What each matrix entry must answer: who the pod saw (source preserved from other hosts and for the
/// node's own address, masqueraded to the bridge address for hairpin and 127.0.0.1).
fn expected(name: &str, with_v6: bool) -> Vec<(String, Result<String, String>)> {
    let mut rows = vec![
        ("remote host -> node IPv4 address", IpAddr::from(REMOTE_V4)),
        ("node -> 127.0.0.1", IpAddr::from(BRIDGE_V4)),
        ("node -> its own IPv4 address", IpAddr::from(NODE_V4)),
        (
            "pod -> node IPv4 address (hairpin)",
            IpAddr::from(BRIDGE_V4),
        ),
    ];
    if with_v6 {
        rows.extend([
            ("remote host -> node IPv6 address", IpAddr::from(REMOTE_V6)),
            ("node -> its own IPv6 address", IpAddr::from(NODE_V6)),
            (
                "pod -> node IPv6 address (hairpin)",
                IpAddr::from(BRIDGE_V6),
            ),
        ]);
    }
    let mut out = Vec::new();
    for (what, seen) in rows {
        for proto in [Proto::Tcp, Proto::Udp] {
            out.push((format!("{proto:?} {what}"), Ok(format!("{name} {seen}"))));
        }
    }
    out
}

fn portmap_conf(extra: Value) -> Value {
    let mut conf = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    conf
}

/// The request config the runtime would give portmap on DEL/GC: the plugin object with the list's
/// name and version, and no runtimeConfig.
fn bare_request(n: &Node, version: &str, extra: Value) -> Value {
    let mut conf = portmap_conf(extra);
    conf["name"] = json!(n.net);
    conf["cniVersion"] = json!(version);
    if let Some(c) = conf.as_object_mut() {
        c.remove("capabilities");
    }
    conf
}

fn reachability(which: Impl, bridge: Impl, extra: Value) -> Vec<(String, Result<String, String>)> {
    let n = Node::with_bridge(which, bridge, portmap_conf(extra));
    let (pod, _) = n.add_pod("pod-a", &mappings());
    let _servers = Servers::start(&pod, CONTAINER_PORT, "pod-a");
    let got = matrix(&n, &pod, true);
    n.lib
        .with_container_id("pod-a")
        .with_cap_args(json!({ "portMappings": mappings() }))
        .del(&n.net, pod.path())
        .assert_success();
    match which {
        Impl::Ours => n.assert_no_portmap_rules(),
        // The reference keeps its shared chains forever; only the per-container chain must go.
        Impl::Reference(_) => {
            let left: Vec<String> = n
                .portmap_rules()
                .into_iter()
                .filter(|l| l.contains("CNI-DN-"))
                .collect();
            assert!(left.is_empty(), "reference left {left:#?}");
        }
    }
    got
}

#[test]
fn tcp_and_udp_host_ports_reach_the_pod_from_another_host_the_node_and_the_pod_itself() {
    let got = reachability(Impl::Ours, Impl::Ours, json!({}));
    assert_eq!(
        got,
        expected("pod-a", true),
        "reachability (nftables backend):\n{}",
        render(&got)
    );
}

#[test]
fn iptables_backend_reaches_the_pod_the_same_way() {
    let got = reachability(Impl::Ours, Impl::Ours, json!({"backend": "iptables"}));
    assert_eq!(
        got,
        expected("pod-a", true),
        "reachability (iptables backend):\n{}",
        render(&got)
    );
}

#[test]
fn reachability_matches_the_reference_portmap() {
    for r in Reference::ALL {
        // Both on the reference bridge, so only portmap differs.
        let theirs = reachability(Impl::Reference(r), Impl::Reference(r), json!({}));
        let ours = reachability(Impl::Ours, Impl::Reference(r), json!({}));
        assert_eq!(
            ours,
            theirs,
            "ours:\n{}\n{r}:\n{}",
            render(&ours),
            render(&theirs)
        );
    }
}

#[test]
fn host_ip_limits_the_mapping_to_that_address() {
    let n = Node::new(Impl::Ours, portmap_conf(json!({})));
    let m = json!([{"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT, "protocol": "tcp",
                    "hostIP": NODE_V4.to_string()}]);
    let (pod, _) = n.add_pod("pod-hostip", &m);
    let _servers = Servers::start(&pod, CONTAINER_PORT, "pod-hostip");
    let to_node = probe(&n.remote, Proto::Tcp, (NODE_V4, HOST_PORT).into(), None);
    assert_eq!(to_node, Ok(format!("pod-hostip {REMOTE_V4}")));
    // 127.0.0.1 is another host address: not mapped, so nothing listens there.
    let to_lo = probe(
        &n.node,
        Proto::Tcp,
        (Ipv4Addr::LOCALHOST, HOST_PORT).into(),
        None,
    );
    assert!(
        to_lo.is_err(),
        "hostIP mapping answered on 127.0.0.1: {to_lo:?}"
    );
    // An IPv4 hostIP does not map anything for IPv6.
    let to_v6 = probe(&n.remote, Proto::Tcp, (NODE_V6, HOST_PORT).into(), None);
    assert!(
        to_v6.is_err(),
        "IPv4 hostIP mapping answered on IPv6: {to_v6:?}"
    );
}

#[test]
fn second_attachment_for_the_same_host_port_fails_naming_the_owner_and_the_first_keeps_working() {
    let n = Node::new(Impl::Ours, portmap_conf(json!({})));
    let (pod_a, _) = n.add_pod("owner-pod", &mappings());
    let _servers = Servers::start(&pod_a, CONTAINER_PORT, "owner-pod");
    let tcp_only = json!([{"hostPort": HOST_PORT, "containerPort": 9999, "protocol": "tcp"}]);
    let (_pod_b, outcome) = n.try_add_pod("intruder-pod", &tcp_only);
    let err = outcome.assert_any_error();
    let msg = err["msg"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("owner-pod") && msg.contains("8080") && msg.contains("already mapped"),
        "error must name the owner and the port: {err}"
    );
    // Different protocol or port on the same node is fine.
    let other = json!([{"hostPort": HOST_PORT + 1, "containerPort": 80, "protocol": "tcp"}]);
    n.add_pod("neighbour-pod", &other);
    assert_eq!(
        probe(&n.remote, Proto::Tcp, (NODE_V4, HOST_PORT).into(), None),
        Ok(format!("owner-pod {REMOTE_V4}")),
        "the first mapping must keep working"
    );
    assert_eq!(
        probe(&n.remote, Proto::Udp, (NODE_V4, HOST_PORT).into(), None),
        Ok(format!("owner-pod {REMOTE_V4}"))
    );
}

/// A prevResult like the bridge's for a pod at `ip`.
fn prev_result(ip: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0"}, {"name": "veth0"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": format!("{ip}/24"), "gateway": "10.99.0.1", "interface": 2}]
    })
}

fn direct_request(n: &Node, ip: &str, mappings: &Value, extra: Value) -> Value {
    let mut conf = bare_request(n, "1.0.0", extra);
    conf["runtimeConfig"] = json!({ "portMappings": mappings });
    conf["prevResult"] = prev_result(ip);
    conf
}

#[test]
fn concurrent_adds_for_one_host_port_admit_exactly_one() {
    for backend in ["nftables", "iptables"] {
        let n = Node::new(Impl::Ours, portmap_conf(json!({})));
        let netns = n.node.path_str();
        let m = json!([{"hostPort": 9000, "containerPort": 80, "protocol": "tcp"}]);
        let outcomes: Vec<(String, Outcome)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (n, m, netns) = (&n, &m, &netns);
                    s.spawn(move || {
                        let id = format!("racer-{i}");
                        let conf = direct_request(
                            n,
                            &format!("10.99.0.{}", 10 + i),
                            m,
                            json!({"backend": backend}),
                        );
                        let out = n.portmap("ADD", &id, netns, &conf);
                        (id, out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("racer"))
                .collect()
        });
        let winners: Vec<&String> = outcomes
            .iter()
            .filter(|(_, o)| o.success())
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "{backend}: exactly one ADD may win: {outcomes:#?}"
        );
        for (_, o) in outcomes.iter().filter(|(_, o)| !o.success()) {
            let err = o.assert_any_error();
            assert!(
                err["msg"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(winners[0].as_str()),
                "{backend}: losers must name the winner {}: {err}",
                winners[0]
            );
        }
        let dnat_rules = n
            .portmap_rules()
            .iter()
            .filter(|l| l.contains("dnat to") || l.contains("DNAT"))
            .count();
        assert_eq!(dnat_rules, 1, "{backend}: {:?}", n.portmap_rules());
    }
}

#[test]
fn concurrent_adds_and_dels_of_different_ports_all_succeed_and_leave_nothing() {
    let n = Node::new(Impl::Ours, portmap_conf(json!({})));
    let netns = n.node.path_str();
    // Kubernetes-style 64-character ids exercise the hashed owner form end to end.
    let id = |i: usize| format!("{i:02}{}", "ab".repeat(31));
    let run_all = |command: &'static str| -> Vec<Outcome> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (n, netns, id) = (&n, &netns, id(i));
                    s.spawn(move || {
                        let m =
                            json!([{"hostPort": 9200 + i, "containerPort": 80, "protocol": "udp"}]);
                        let conf = direct_request(n, &format!("10.99.0.{}", 10 + i), &m, json!({}));
                        n.portmap(command, &id, netns, &conf)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("worker"))
                .collect()
        })
    };
    for o in run_all("ADD") {
        o.assert_success();
    }
    let dnat = n
        .portmap_rules()
        .iter()
        .filter(|l| l.contains("dnat to"))
        .count();
    assert_eq!(dnat, 8, "{:#?}", n.portmap_rules());
    let check = direct_request(
        &n,
        "10.99.0.13",
        &json!([{"hostPort": 9203, "containerPort": 80, "protocol": "udp"}]),
        json!({}),
    );
    n.portmap("CHECK", &id(3), &netns, &check).assert_success();
    for o in run_all("DEL") {
        o.assert_success();
    }
    n.assert_no_portmap_rules();
}

#[test]
fn del_without_runtime_config_leaves_no_rule() {
    for backend in ["nftables", "iptables"] {
        let n = Node::new(Impl::Ours, portmap_conf(json!({"backend": backend})));
        let before = n.node.state();
        let (pod, _) = n.add_pod("pod-del", &mappings());
        assert!(
            !n.portmap_rules().is_empty(),
            "{backend}: ADD installed nothing"
        );
        let conf = bare_request(&n, "1.0.0", json!({"backend": backend}));
        n.portmap("DEL", "pod-del", &pod.path_str(), &conf)
            .assert_success();
        n.assert_no_portmap_rules();
        let after = n.node.state();
        let nft_added: Vec<String> = after
            .nft
            .iter()
            .filter(|l| !before.nft.contains(l))
            .filter(|l| !l.trim().is_empty())
            .cloned()
            .collect();
        if backend == "nftables" {
            assert!(nft_added.is_empty(), "nft leftovers: {nft_added:#?}");
        }
        // DEL is idempotent, and tolerates replayed mappings that ADD would refuse.
        n.portmap("DEL", "pod-del", &pod.path_str(), &conf)
            .assert_success();
        let mut bad = conf.clone();
        bad["runtimeConfig"] = json!({"portMappings": [{"hostPort": 0, "containerPort": -1}]});
        n.portmap("DEL", "pod-del", &pod.path_str(), &bad)
            .assert_success();
    }
}

#[test]
fn del_succeeds_when_netns_is_gone() {
    let n = Node::new(Impl::Ours, portmap_conf(json!({})));
    let (pod, _) = n.add_pod("pod-gone", &mappings());
    let path = pod.path_str();
    drop(pod);
    assert!(!Path::new(&path).exists());
    let conf = bare_request(&n, "1.0.0", json!({}));
    n.portmap("DEL", "pod-gone", &path, &conf).assert_success();
    n.assert_no_portmap_rules();
    // And with CNI_NETNS empty, as runtimes send once the sandbox is gone.
    n.portmap("DEL", "pod-gone", "", &conf).assert_success();
}

#[test]
fn gc_with_an_empty_valid_list_leaves_no_rule_and_keeps_valid_attachments() {
    for backend in ["nftables", "iptables"] {
        let n = Node::new(Impl::Ours, portmap_conf(json!({"backend": backend})));
        let (pod_a, _) = n.add_pod("gc-keep", &mappings());
        let other = json!([{"hostPort": 9100, "containerPort": 80, "protocol": "tcp"}]);
        let (_pod_b, _) = n.add_pod("gc-stale", &other);
        let _servers = Servers::start(&pod_a, CONTAINER_PORT, "gc-keep");
        let gc = |valid: Value| {
            let mut conf = bare_request(&n, "1.1.0", json!({"backend": backend}));
            conf["cni.dev/valid-attachments"] = valid;
            Invocation::new(n.bin_dir().join("portmap"), "GC")
                .libcni_style()
                .container_id(None)
                .ifname(None)
                .stdin_json(&conf)
                .in_netns(n.node.path())
                .run()
                .assert_success();
        };
        gc(json!([{"containerID": "gc-keep", "ifname": "eth0"}]));
        let rules = n.portmap_rules();
        assert!(
            rules.iter().all(|l| !l.contains("gc-stale"))
                && rules.iter().any(|l| l.contains("gc-keep")),
            "{backend}: GC must remove only the stale attachment: {rules:#?}"
        );
        assert_eq!(
            probe(&n.remote, Proto::Tcp, (NODE_V4, HOST_PORT).into(), None),
            Ok(format!("gc-keep {REMOTE_V4}")),
            "{backend}"
        );
        gc(json!([]));
        n.assert_no_portmap_rules();
    }
}

#[test]
fn check_verifies_the_rules_exist() {
    let n = Node::new(Impl::Ours, portmap_conf(json!({})));
    let (pod, _) = n.add_pod("pod-check", &mappings());
    n.lib
        .with_container_id("pod-check")
        .with_cap_args(json!({ "portMappings": mappings() }))
        .check(&n.net, pod.path())
        .assert_success();
    n.node
        .exec_ok(&["nft", "delete", "table", "ip", "twill_portmap"]);
    let out = n
        .lib
        .with_container_id("pod-check")
        .with_cap_args(json!({ "portMappings": mappings() }))
        .check(&n.net, pod.path());
    let err = out.assert_any_error();
    assert!(
        err["msg"].as_str().unwrap_or_default().contains("missing"),
        "CHECK must say what is missing: {err}"
    );
}

#[test]
fn add_without_prev_result_fails_clearly_and_no_mappings_pass_it_through() {
    let n = Node::new(Impl::Ours, portmap_conf(json!({})));
    let netns = n.node.path_str();
    let mut conf = bare_request(&n, "1.0.0", json!({}));
    conf["runtimeConfig"] = json!({ "portMappings": mappings() });
    let err = n.portmap("ADD", "no-prev", &netns, &conf).assert_error(7);
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("prevResult"),
        "{err}"
    );
    n.assert_no_portmap_rules();

    let mut conf = bare_request(&n, "1.0.0", json!({}));
    conf["prevResult"] = prev_result("10.99.0.7");
    let out = n
        .portmap("ADD", "no-mappings", &netns, &conf)
        .assert_success();
    let mut want = prev_result("10.99.0.7");
    want["dns"] = json!({});
    assert_eq!(out, want, "prevResult must pass through unchanged");
    n.assert_no_portmap_rules();
}

#[test]
fn stale_udp_conntrack_entries_are_flushed_on_add() {
    let n = Node::new(Impl::Ours, portmap_conf(json!({})));
    // Connection tracking only runs in a namespace once some rule needs it; a real node always has
    // such rules, so give this one a host firewall that tracks connections.
    n.node.exec_ok(&[
        "nft",
        "add table inet pmhostfw; add chain inet pmhostfw input { type filter hook input priority 0; }; \
         add rule inet pmhostfw input ct state new counter",
    ]);
    let client_port = 40404;
    // Before the pod exists, a client talks to the host port: conntrack records an un-NATed flow.
    let before = probe(
        &n.remote,
        Proto::Udp,
        (NODE_V4, HOST_PORT).into(),
        Some(client_port),
    );
    assert!(before.is_err(), "nothing should answer yet: {before:?}");
    let listed = n.node.exec_ok(&[
        "conntrack",
        "-L",
        "-p",
        "udp",
        "--dport",
        &HOST_PORT.to_string(),
    ]);
    assert!(
        listed.contains(&format!("dport={HOST_PORT}")),
        "no stale entry to flush: {listed}"
    );
    let (pod, _) = n.add_pod("pod-udp", &mappings());
    let _servers = Servers::start(&pod, CONTAINER_PORT, "pod-udp");
    // The same 5-tuple must now reach the pod: only possible if ADD flushed the stale entry.
    assert_eq!(
        probe(
            &n.remote,
            Proto::Udp,
            (NODE_V4, HOST_PORT).into(),
            Some(client_port)
        ),
        Ok(format!("pod-udp {REMOTE_V4}"))
    );
}

#[test]
fn snat_false_keeps_sources_and_masq_all_masquerades_everything() {
    let n = Node::new(
        Impl::Ours,
        portmap_conf(json!({"masqAll": true, "markMasqBit": 14})),
    );
    let (pod, _) = n.add_pod("pod-masq", &mappings());
    let _servers = Servers::start(&pod, CONTAINER_PORT, "pod-masq");
    assert_eq!(
        probe(&n.remote, Proto::Tcp, (NODE_V4, HOST_PORT).into(), None),
        Ok(format!("pod-masq {BRIDGE_V4}")),
        "masqAll masquerades traffic from other hosts too"
    );
    let rules = n.nft_ruleset();
    assert!(
        rules.contains("0x00004000") && !rules.contains("0x00002000"),
        "markMasqBit 14 must be the bit used: {rules}"
    );
    drop(_servers);

    let n = Node::new(Impl::Ours, portmap_conf(json!({"snat": false})));
    let (pod, _) = n.add_pod("pod-nosnat", &mappings());
    let _servers = Servers::start(&pod, CONTAINER_PORT, "pod-nosnat");
    assert_eq!(
        probe(&n.remote, Proto::Tcp, (NODE_V4, HOST_PORT).into(), None),
        Ok(format!("pod-nosnat {REMOTE_V4}"))
    );
    let rules = n.nft_ruleset();
    assert!(
        !rules.contains("masquerade"),
        "snat=false adds no masquerading: {rules}"
    );
}

#[test]
fn older_spec_versions_pass_prev_result_through_in_their_own_format() {
    let n = Node::new(Impl::Ours, portmap_conf(json!({})));
    let netns = n.node.path_str();
    for version in ["0.3.0", "0.3.1", "0.4.0"] {
        let prev = json!({
            "cniVersion": version,
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                           {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"version": "4", "address": "10.99.0.9/24", "gateway": "10.99.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let mut conf = bare_request(&n, version, json!({}));
        conf["runtimeConfig"] =
            json!({"portMappings": [{"hostPort": 9300, "containerPort": 80, "protocol": "tcp"}]});
        conf["prevResult"] = prev.clone();
        let id = format!("old-{}", version.replace('.', ""));
        let out = n.portmap("ADD", &id, &netns, &conf).assert_success();
        assert_eq!(out, prev, "{version}: prevResult must come back unchanged");
        if version == "0.4.0" {
            n.portmap("CHECK", &id, &netns, &conf).assert_success();
        }
        n.portmap("DEL", &id, &netns, &conf).assert_success();
    }
    n.assert_no_portmap_rules();
}
