//! kind's default network on twill's binaries alone: kindnet's exact conflist (ptp + host-local + portmap,
//! `cniVersion` 0.3.1, `ipMasq: false`, host-local `dataDir: /run/cni-ipam-state`, one range per podCIDR,
//! the optional `mtu`) driven through the real libcni, with a plugin directory holding only our `ptp`,
//! `host-local` and `portmap`. A matrix of pods on one node reach each other and the node, a host port
//! mapped through portmap is reached from another namespace (the "remote host") over IPv4 and IPv6, and DEL
//! leaves no veth, lease or port-mapping rule. (There is no CHECK at 0.3.1: libcni refuses it.)
//!
//! All traffic stays inside the test's namespaces.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use twill_tests::bins::{bin, require_root};
use twill_tests::libcni::{unique_name, Driver, LibCni};
use twill_tests::netns::Netns;

const NODE_V4: &str = "192.168.78.1";
const REMOTE_V4: &str = "192.168.78.2";
const NODE_V6: &str = "fd78::1";
const REMOTE_V6: &str = "fd78::2";
const HOST_PORT: u16 = 8081;
const POD_PORT: u16 = 80;
const MTU: u64 = 1450;
/// kindnet's host-local state directory.
const IPAM_DIR: &str = "/run/cni-ipam-state";

/// kindnet's conflist, as its template renders it for a dual-stack node with an MTU.
fn kindnet_conflist(name: &str) -> Value {
    json!({
        "cniVersion": "0.3.1",
        "name": name,
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": IPAM_DIR,
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                    "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
                },
                "mtu": MTU
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

struct Node {
    node: Netns,
    remote: Netns,
    lib: LibCni,
    net: String,
    _bin: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        // The network's lease directory under kindnet's shared state dir is this test's.
        let _ = std::fs::remove_dir_all(PathBuf::from(IPAM_DIR).join(&self.net));
    }
}

impl Node {
    fn new(driver: Driver) -> Node {
        require_root();
        let node = Netns::new("kinode");
        let remote = Netns::new("kirem");
        let bin_dir = tempfile::Builder::new()
            .prefix("twill-kindnet-bin-")
            .tempdir()
            .expect("tempdir");
        for name in ["ptp", "host-local", "portmap"] {
            std::os::unix::fs::symlink(bin(name), bin_dir.path().join(name)).expect("symlink");
        }
        for ns in [&node, &remote] {
            ns.ip(&["link", "set", "lo", "up"]);
        }
        node.ip(&[
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            remote.name(),
        ]);
        node.ip(&["addr", "add", &format!("{NODE_V4}/24"), "dev", "up0"]);
        node.ip(&[
            "addr",
            "add",
            &format!("{NODE_V6}/64"),
            "dev",
            "up0",
            "nodad",
        ]);
        node.ip(&["link", "set", "up0", "up"]);
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
        let net = unique_name("kindnet");
        let lib = LibCni::scratch(vec![bin_dir.path().to_path_buf()])
            .with_driver(driver)
            .in_netns(node.path());
        lib.write_conflist(&kindnet_conflist(&net));
        Node {
            node,
            remote,
            lib,
            net,
            _bin: bin_dir,
        }
    }

    fn add(&self, id: &str, pod: &Netns, mappings: Value) -> Value {
        self.lib
            .with_container_id(id)
            .with_cap_args(json!({ "portMappings": mappings }))
            .add(&self.net, pod.path())
            .assert_success()
    }

    fn leases(&self) -> Vec<String> {
        twill_tests::leases::held(&PathBuf::from(IPAM_DIR).join(&self.net))
    }

    /// The node's veths other than its uplink: the pods' host ends.
    fn pod_veths(&self) -> Vec<String> {
        self.node
            .ip(&["-o", "link", "show", "type", "veth"])
            .lines()
            .filter(|l| !l.contains("up0@"))
            .map(str::to_string)
            .collect()
    }
}

fn ip_of(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str())
        .find(|a| a.contains(':') == v6)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address of the family in {result}"))
        .to_string()
}

fn ping(from: &Netns, to: &str) -> bool {
    let fam = if to.contains(':') { "-6" } else { "-4" };
    (0..5).any(|_| {
        from.exec(&["ping", fam, "-c", "1", "-W", "1", to])
            .status
            .success()
    })
}

/// Waits (bounded) until no global IPv6 address in `ns` is tentative: the host ends' gateway addresses go
/// through duplicate address detection, and a tentative gateway answers no neighbour solicitation.
fn wait_for_v6(ns: &Netns) {
    for _ in 0..250 {
        if ns
            .ip(&["-6", "addr", "show", "scope", "global", "tentative"])
            .trim()
            .is_empty()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP server on `[::]:port` inside `ns` answering every connection with `name`.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns, port: u16, name: &str) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (file, stop2, name) = (ns.open(), stop.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on this thread with a valid namespace fd; the thread only serves afterwards.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            tx.send(()).expect("ready");
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(name.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server ready");
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connect from inside `ns` to `addr` and read the answer.
fn fetch(ns: &Netns, addr: SocketAddr) -> Result<String, String> {
    let file = ns.open();
    std::thread::spawn(move || {
        // SAFETY: as in Server::start.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let mut last = String::new();
        for _ in 0..20 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(mut s) => {
                    let mut out = String::new();
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                    return s
                        .read_to_string(&mut out)
                        .map(|_| out)
                        .map_err(|e| e.to_string());
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    })
    .join()
    .expect("client thread")
}

fn matrix(driver: Driver) {
    let n = Node::new(driver);
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("kipod")).collect();
    let mut results = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let mappings = if i == 0 {
            json!([{"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"}])
        } else {
            json!([])
        };
        let r = n.add(&format!("kind-pod-{i}"), pod, mappings);
        assert_eq!(
            r["cniVersion"], "0.3.1",
            "result in the list's version: {r}"
        );
        results.push(r);
    }
    let v4: Vec<String> = results.iter().map(|r| ip_of(r, false)).collect();
    let v6: Vec<String> = results.iter().map(|r| ip_of(r, true)).collect();
    for pod in &pods {
        let link = pod.ip(&["-o", "link", "show", "dev", "eth0"]);
        assert!(link.contains(&format!("mtu {MTU}")), "pod MTU: {link}");
    }
    wait_for_v6(&n.node);
    for pod in &pods {
        wait_for_v6(pod);
    }
    // Every pod reaches every other pod, both families; the node reaches every pod.
    for (i, from) in pods.iter().enumerate() {
        for j in 0..pods.len() {
            if i != j {
                assert!(
                    ping(from, &v4[j]),
                    "pod {i} cannot reach pod {j} at {}",
                    v4[j]
                );
                assert!(
                    ping(from, &v6[j]),
                    "pod {i} cannot reach pod {j} at {}",
                    v6[j]
                );
            }
        }
        assert!(ping(&n.node, &v4[i]), "node cannot reach pod {i}");
    }
    // The host port, from the remote host, over both families.
    let _server = Server::start(&pods[0], POD_PORT, "pod-0");
    for node_addr in [NODE_V4, NODE_V6] {
        let addr = SocketAddr::new(node_addr.parse().expect("ip"), HOST_PORT);
        assert_eq!(
            fetch(&n.remote, addr).as_deref(),
            Ok("pod-0"),
            "hostPort via {addr}"
        );
    }
    for (i, pod) in pods.iter().enumerate() {
        n.lib
            .with_container_id(&format!("kind-pod-{i}"))
            .del(&n.net, pod.path())
            .assert_success();
    }
    assert!(n.pod_veths().is_empty(), "veths left: {:?}", n.pod_veths());
    assert!(n.leases().is_empty(), "leases left: {:?}", n.leases());
    let rules = n.node.exec_ok(&["nft", "list", "ruleset"]);
    assert!(
        !rules.contains(&HOST_PORT.to_string()),
        "port mapping left:\n{rules}"
    );
}

#[test]
fn kindnet_conflist_runs_on_twill_alone_through_debian_libcni() {
    matrix(Driver::Debian);
}

#[test]
fn kindnet_conflist_runs_on_twill_alone_through_upstream_libcni() {
    matrix(Driver::Upstream);
}
