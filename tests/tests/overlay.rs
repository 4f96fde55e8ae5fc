//! twilld on real namespaces (issue 5 "Done when"): nodes are network namespaces on an underlay switch, one
//! real etcd runs in the switch namespace, pods are namespaces behind `cni0`, and every check reads the kernel.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use twill_tests::cluster::{wait_until, Node, Switch, Twilld, TwilldArgs};
use twill_tests::etcd::Etcd;

const NET_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const CONFIG_KEY: &str = "/coreos.com/network/config";
const SUBNETS: &str = "/coreos.com/network/subnets/";
const READY: Duration = Duration::from_secs(20);
const HEALTH_PORT: u16 = 8471;

/// Fields drop in order: daemons, then nodes (namespaces), then etcd, then the switch.
struct Cluster {
    daemons: Vec<Twilld>,
    nodes: Vec<Node>,
    etcd: Etcd,
    switch: Switch,
    resync: f64,
}

impl Cluster {
    fn new(nodes: u8, resync: f64) -> Cluster {
        let switch = Switch::new();
        let etcd = switch.start_etcd();
        etcd.put(CONFIG_KEY, NET_CONFIG);
        let mut c = Cluster {
            daemons: Vec::new(),
            nodes: Vec::new(),
            etcd,
            switch,
            resync,
        };
        for _ in 0..nodes {
            c.join();
        }
        c
    }

    fn args(&self) -> TwilldArgs {
        TwilldArgs {
            etcd: self.etcd.underlay_endpoint(),
            resync_secs: self.resync,
            // Every node serves health on the same port: each node is its own namespace.
            extra: vec![format!("--healthz-port={HEALTH_PORT}")],
        }
    }

    /// Adds a node, starts its twilld and waits until it is ready. Returns its index in `nodes`.
    fn join(&mut self) -> usize {
        let node = self.switch.add_node(self.nodes.len() as u8 + 1);
        let d = node.start_twilld(&self.args());
        self.nodes.push(node);
        self.daemons.push(d);
        let i = self.nodes.len() - 1;
        self.wait_ready(i);
        i
    }

    fn wait_ready(&self, i: usize) -> (Ipv4Addr, u8) {
        let node = &self.nodes[i];
        if !wait_until(READY, || node.subnet().is_some()) {
            panic!(
                "{} not ready; log:\n{}",
                node.name(),
                self.daemons[i].log_text()
            );
        }
        node.subnet().unwrap_or_else(|| unreachable!())
    }

    fn mac(&self, i: usize) -> String {
        self.nodes[i]
            .link_mac("flannel.1")
            .unwrap_or_else(|| panic!("{} has no flannel.1", self.nodes[i].name()))
    }

    /// Whether node `i` has all entries for node `j`.
    fn knows(&self, i: usize, j: usize) -> bool {
        let Some((net, len)) = self.nodes[j].subnet() else {
            return false;
        };
        let Some(mac) = self.nodes[j].link_mac("flannel.1") else {
            return false;
        };
        self.nodes[i].has_peer(net, len, &mac, self.nodes[j].underlay_ip)
    }

    fn all_know_each_other(&self, among: &[usize]) -> bool {
        among
            .iter()
            .all(|&i| among.iter().filter(|&&j| j != i).all(|&j| self.knows(i, j)))
    }

    fn wait_mesh(&self, among: &[usize], timeout: Duration) {
        if !wait_until(timeout, || self.all_know_each_other(among)) {
            panic!(
                "nodes {among:?} did not learn each other within {timeout:?}\n{}",
                self.dump()
            );
        }
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            s.push_str(&format!(
                "--- {} subnet {:?}\nlinks:\n{}routes:\n{}neigh:\n{}fdb:\n{}log:\n{}\n",
                n.name(),
                n.subnet(),
                String::from_utf8_lossy(&n.ns.exec(&["ip", "-br", "addr"]).stdout),
                n.ns.exec(&["ip", "route"])
                    .stdout
                    .iter()
                    .map(|&b| b as char)
                    .collect::<String>(),
                n.ns.exec(&["ip", "neigh", "show", "dev", "flannel.1"])
                    .stdout
                    .iter()
                    .map(|&b| b as char)
                    .collect::<String>(),
                n.fdb("flannel.1"),
                self.daemons
                    .get(i)
                    .map(|d| d.log_text())
                    .unwrap_or_default()
            ));
        }
        s.push_str(&format!(
            "--- etcd subnets: {:?}\n",
            self.etcd.get_prefix(SUBNETS)
        ));
        s
    }
}

/// GET `path` from twilld's health server inside the node (socket opened in the node's namespace); returns
/// (status code, body), or ("000", "") when nothing answers.
fn curl(node: &Node, port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let Ok(mut sock) = node
        .ns
        .run_in(|| std::net::TcpStream::connect(("127.0.0.1", port)))
    else {
        return ("000".into(), String::new());
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = sock.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes());
    let mut resp = String::new();
    let _ = sock.read_to_string(&mut resp);
    let code = resp.split_whitespace().nth(1).unwrap_or("000").to_string();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn three_nodes_get_distinct_subnets_and_pods_ping_across_nodes() {
    let c = Cluster::new(3, 2.0);
    let subnets: Vec<_> = (0..3)
        .map(|i| c.nodes[i].subnet().unwrap_or_else(|| unreachable!()))
        .collect();
    assert_ne!(subnets[0], subnets[1]);
    assert_ne!(subnets[1], subnets[2]);
    assert_ne!(subnets[0], subnets[2]);
    for (net, len) in &subnets {
        assert_eq!(*len, 24);
        assert_eq!(net.octets()[..2], [10, 244]);
    }
    c.wait_mesh(&[0, 1, 2], Duration::from_secs(10));

    // Leases in etcd in flannel's layout and JSON.
    let leases = c.etcd.get_prefix(SUBNETS);
    assert_eq!(leases.len(), 3, "{leases:?}");
    for (i, n) in c.nodes.iter().enumerate() {
        let (net, _) = subnets[i];
        let value = c
            .etcd
            .get(&format!("{SUBNETS}{net}-24"))
            .unwrap_or_else(|| panic!("no lease for {net}"));
        let v: serde_json::Value =
            serde_json::from_str(&value).unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(v["PublicIP"], n.underlay_ip.to_string());
        assert_eq!(v["BackendType"], "vxlan");
        assert_eq!(v["BackendData"]["VNI"], 1);
        assert_eq!(v["BackendData"]["VtepMAC"], c.mac(i));
        // The device: flannel.1, VXLAN port 8472, nolearning, local = public IP, MTU 1500 - 50, .0/32 address.
        let link = n.ip(&["-d", "link", "show", "flannel.1"]);
        assert!(link.contains("mtu 1450"), "{link}");
        assert!(link.contains("vxlan id 1 "), "{link}");
        assert!(
            link.contains(&format!("local {} dev eth0", n.underlay_ip)),
            "{link}"
        );
        assert!(
            link.contains("dstport 8472") && link.contains("nolearning"),
            "{link}"
        );
        let addr = n.ip(&["-4", "addr", "show", "flannel.1"]);
        assert!(addr.contains(&format!("inet {net}/32 ")), "{addr}");
        // subnet.env in flannel's format.
        let env = std::fs::read_to_string(n.subnet_file()).unwrap_or_default();
        let gw = Ipv4Addr::from(u32::from(net) + 1);
        assert_eq!(env, format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={gw}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"));
    }

    let pods: Vec<_> = c.nodes.iter().map(|n| n.add_pod(2)).collect();
    for a in &pods {
        for b in &pods {
            if a.ip != b.ip {
                assert!(
                    wait_until(Duration::from_secs(10), || a.can_reach(b.ip)),
                    "pod {} cannot ping pod {}\nlast ping: {}\n{}",
                    a.ip,
                    b.ip,
                    String::from_utf8_lossy(
                        &a.ns
                            .exec(&["ping", "-c", "1", "-W", "1", &b.ip.to_string()])
                            .stdout
                    ),
                    c.dump()
                );
            }
        }
    }
    // Full-size packets pass without fragmentation at the pod MTU (1450 - 28 bytes of IP + ICMP header).
    let out = pods[0].ns.exec(&[
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        "1422",
        &pods[1].ip.to_string(),
    ]);
    assert!(
        out.status.success(),
        "1450-byte DF ping failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn fourth_node_join_is_learned_and_leave_removes_its_entries_everywhere() {
    let mut c = Cluster::new(3, 2.0);
    c.wait_mesh(&[0, 1, 2], Duration::from_secs(10));
    let start = Instant::now();
    let d = c.join();
    c.wait_mesh(&[0, 1, 2, d], Duration::from_secs(5));
    eprintln!(
        "4th node learned everywhere {:?} after its start",
        start.elapsed()
    );

    // It leaves: daemon stopped, lease deleted.
    let (net, _) = c.nodes[d].subnet().unwrap_or_else(|| unreachable!());
    let mac = c.mac(d);
    c.daemons[d].terminate();
    c.etcd.del(&format!("{SUBNETS}{net}-24"));
    let others = [0, 1, 2];
    assert!(
        wait_until(Duration::from_secs(5), || others
            .iter()
            .all(|&i| !c.nodes[i].has_any_trace_of(net, &mac))),
        "entries of the departed node remain\n{}",
        c.dump()
    );
    assert!(c.all_know_each_other(&others));
}

#[test]
fn restart_keeps_subnet_and_vtep_mac_without_lost_pings() {
    let mut c = Cluster::new(3, 2.0);
    c.wait_mesh(&[0, 1, 2], Duration::from_secs(10));
    let pods: Vec<_> = c.nodes.iter().map(|n| n.add_pod(2)).collect();
    assert!(wait_until(Duration::from_secs(5), || pods[0]
        .can_reach(pods[1].ip)
        && pods[0].can_reach(pods[2].ip)));
    let subnet_before = c.nodes[1].subnet();
    let mac_before = c.mac(1);

    // Traffic between the other nodes, and to the restarting node itself, while node 2's daemon restarts.
    let across = pods[0].ping_in_background(pods[2].ip, 40, 0.1);
    let to_restarted = pods[0].ping_in_background(pods[1].ip, 40, 0.1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.daemons[1].terminate(),
        Some(0),
        "SIGTERM must exit cleanly"
    );
    // The kernel state stays after SIGTERM.
    assert!(
        c.knows(1, 0) && c.knows(1, 2),
        "SIGTERM removed kernel state\n{}",
        c.dump()
    );
    let args = c.args();
    c.daemons[1] = c.nodes[1].start_twilld(&args);
    let (sent, received) = across.finish();
    let (sent2, received2) = to_restarted.finish();
    assert_eq!(
        (sent, received),
        (40, 40),
        "pings between other nodes were lost\n{}",
        c.dump()
    );
    assert_eq!(
        (sent2, received2),
        (40, 40),
        "pings to the restarted node were lost\n{}",
        c.dump()
    );

    c.wait_ready(1);
    assert_eq!(
        c.nodes[1].subnet(),
        subnet_before,
        "subnet changed across restart"
    );
    assert_eq!(c.mac(1), mac_before, "VTEP MAC changed across restart");
    c.wait_mesh(&[0, 1, 2], Duration::from_secs(5));
    let log = c.daemons[1].log_text();
    assert!(
        !log.contains("created flannel.1 (index") || log.matches("created flannel.1").count() == 1,
        "{log}"
    );
}

#[test]
fn etcd_outage_of_30s_loses_no_route_and_a_later_joiner_is_learned() {
    let mut c = Cluster::new(3, 1.0);
    c.wait_mesh(&[0, 1, 2], Duration::from_secs(10));
    let pods: Vec<_> = c.nodes.iter().map(|n| n.add_pod(2)).collect();
    let ping = pods[0].ping_in_background(pods[2].ip, 150, 0.2);
    c.etcd.stop();
    let outage = Instant::now();
    // The node stays ready (its data plane works) but says etcd is unreachable.
    assert!(
        wait_until(Duration::from_secs(15), || curl(
            &c.nodes[0],
            HEALTH_PORT,
            "/readyz"
        )
        .1
        .contains("etcd unreachable")),
        "/readyz does not mention the outage: {:?}",
        curl(&c.nodes[0], HEALTH_PORT, "/readyz")
    );
    assert_eq!(curl(&c.nodes[0], HEALTH_PORT, "/readyz").0, "200");
    assert!(curl(&c.nodes[0], HEALTH_PORT, "/metrics")
        .1
        .contains("\ntwilld_etcd_up 0\n"));
    while outage.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            c.all_know_each_other(&[0, 1, 2]),
            "a route was lost during the etcd outage\n{}",
            c.dump()
        );
        for d in c.daemons.iter_mut() {
            assert!(
                d.is_running(),
                "twilld exited during the etcd outage:\n{}",
                d.log_text()
            );
        }
    }
    c.etcd.restart();
    let (sent, received) = ping.finish();
    assert_eq!(
        sent, received,
        "pod traffic was lost during the etcd outage"
    );
    assert!(
        c.daemons[0].log_text().contains("etcd"),
        "the outage is not logged"
    );

    let d = c.join();
    c.wait_mesh(&[0, 1, 2, d], Duration::from_secs(15));
}

#[test]
fn hand_deleted_device_and_bogus_route_or_fdb_are_repaired_within_one_resync() {
    let resync = 1.0;
    let c = Cluster::new(3, resync);
    c.wait_mesh(&[0, 1, 2], Duration::from_secs(10));
    let within = Duration::from_secs_f64(resync * 2.0 + 0.5);
    let n = &c.nodes[0];
    let mac = c.mac(0);

    n.ip(&["link", "del", "flannel.1"]);
    assert!(
        wait_until(within, || c.knows(0, 1) && c.knows(0, 2)),
        "flannel.1 and its peers not restored\n{}",
        c.dump()
    );
    assert_eq!(c.mac(0), mac, "recreated device has another MAC");
    let (net, _) = n.subnet().unwrap_or_else(|| unreachable!());
    assert!(n
        .ip(&["-4", "addr", "show", "flannel.1"])
        .contains(&format!("{net}/32")));
    assert!(c.knows(1, 0) && c.knows(2, 0));

    n.ip(&[
        "route",
        "add",
        "10.244.250.0/24",
        "via",
        "10.244.250.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    n.ip(&[
        "neigh",
        "add",
        "10.244.250.0",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    let fdb = std::process::Command::new("bridge")
        .args([
            "-n",
            n.ns.name(),
            "fdb",
            "append",
            "02:00:00:00:00:99",
            "dev",
            "flannel.1",
            "dst",
            "10.250.0.99",
        ])
        .status()
        .map(|s| s.success());
    assert_eq!(fdb.ok(), Some(true));
    assert!(
        wait_until(within, || !n.has_any_trace_of(
            Ipv4Addr::new(10, 244, 250, 0),
            "02:00:00:00:00:99"
        )),
        "bogus entries not removed\n{}",
        c.dump()
    );
    // A device changed by hand (MTU, down) is put back.
    n.ip(&["link", "set", "flannel.1", "mtu", "1300"]);
    n.ip(&["link", "set", "flannel.1", "down"]);
    assert!(
        wait_until(within, || {
            let link = n.ip(&["link", "show", "flannel.1"]);
            link.contains("mtu 1450") && link.contains(",UP")
        }),
        "flannel.1 settings not restored: {}",
        n.ip(&["link", "show", "flannel.1"])
    );
    assert!(
        wait_until(within, || c.knows(0, 1) && c.knows(0, 2)),
        "{}",
        c.dump()
    );
    // A peer's route deleted by hand comes back.
    let (p1, _) = c.nodes[1].subnet().unwrap_or_else(|| unreachable!());
    n.ip(&["route", "del", &format!("{p1}/24")]);
    assert!(
        wait_until(within, || c.knows(0, 1)),
        "deleted peer route not restored\n{}",
        c.dump()
    );
}

#[test]
fn lease_deleted_by_hand_is_reacquired_with_the_same_subnet() {
    let c = Cluster::new(2, 1.0);
    let (net, _) = c.nodes[0].subnet().unwrap_or_else(|| unreachable!());
    let key = format!("{SUBNETS}{net}-24");
    let before = c.etcd.get(&key);
    c.etcd.del(&key);
    assert!(
        wait_until(Duration::from_secs(5), || c.etcd.get(&key).is_some()),
        "lease not re-acquired\n{}",
        c.dump()
    );
    assert_eq!(c.etcd.get(&key), before);
    c.wait_mesh(&[0, 1], Duration::from_secs(5));
}

#[test]
fn reservation_without_lease_is_honoured() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0"}"#,
    );
    // 10.244.1.0/24 reserved for 10.250.0.2 (flannel's reservation: a key without TTL).
    let reserved = r#"{"PublicIP":"10.250.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:11:22:33:44:55"}}"#;
    etcd.put(&format!("{SUBNETS}10.244.1.0-24"), reserved);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: Vec::new(),
    };
    let n1 = switch.add_node(1);
    let mut d1 = n1.start_twilld(&args);
    assert!(
        wait_until(READY, || n1.subnet().is_some()),
        "{}",
        d1.log_text()
    );
    assert_eq!(
        n1.subnet(),
        Some((Ipv4Addr::new(10, 244, 2, 0), 24)),
        "the reserved subnet was taken"
    );
    let n2 = switch.add_node(2);
    let mut d2 = n2.start_twilld(&args);
    assert!(
        wait_until(READY, || n2.subnet().is_some()),
        "{}",
        d2.log_text()
    );
    assert_eq!(
        n2.subnet(),
        Some((Ipv4Addr::new(10, 244, 1, 0), 24)),
        "the owner did not get its reservation"
    );
    // The reservation stays a key without lease: `etcdctl get -w json` shows no lease field.
    let out = etcd.ctl(&["get", "-w", "json", &format!("{SUBNETS}10.244.1.0-24")]);
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        !json.contains("\"lease\""),
        "reservation got a lease: {json}"
    );
    d1.terminate();
    d2.terminate();
}

#[test]
fn health_readiness_and_metrics_are_served() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let mut args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: vec!["--healthz-port=8471".into()],
    };
    let n1 = switch.add_node(1);
    let d1 = n1.start_twilld(&args);
    args.extra.clear();
    let n2 = switch.add_node(2);
    let _d2 = n2.start_twilld(&args);
    assert!(
        wait_until(READY, || n1.subnet().is_some() && n2.subnet().is_some()),
        "{}",
        d1.log_text()
    );
    assert_eq!(curl(&n1, 8471, "/healthz").0, "200");
    assert!(wait_until(Duration::from_secs(5), || curl(
        &n1, 8471, "/readyz"
    )
    .0 == "200"));
    assert!(wait_until(Duration::from_secs(5), || curl(
        &n1, 8471, "/metrics"
    )
    .1
    .contains("\ntwilld_peers 1\n")));
    let (_, metrics) = curl(&n1, 8471, "/metrics");
    for m in [
        "twilld_lease_expiry_timestamp_seconds",
        "twilld_reconcile_runs_total",
        "twilld_reconcile_repairs_total",
        "twilld_etcd_errors_total",
        "twilld_event_to_programmed_seconds_bucket{le=\"0.1\"}",
    ] {
        assert!(metrics.contains(m), "{m} missing:\n{metrics}");
    }
    assert_eq!(curl(&n1, 8471, "/nope").0, "404");
}

#[test]
fn ip_masq_rules_are_installed_and_repaired_with_nftables_and_iptables() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    for (i, backend) in [(1u8, "nftables"), (2, "iptables")] {
        let args = TwilldArgs {
            etcd: etcd.underlay_endpoint(),
            resync_secs: 1.0,
            extra: vec!["--ip-masq".into(), format!("--ip-masq-backend={backend}")],
        };
        let n = switch.add_node(i);
        let d = n.start_twilld(&args);
        assert!(
            wait_until(READY, || n.subnet().is_some()),
            "{}",
            d.log_text()
        );
        let (net, _) = n.subnet().unwrap_or_else(|| unreachable!());
        let env = std::fs::read_to_string(n.subnet_file()).unwrap_or_default();
        assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
        let list = || -> String {
            let out = if backend == "nftables" {
                n.exec(&["nft", "list", "table", "ip", "flannel-ipv4"])
            } else {
                n.exec(&["iptables-save"])
            };
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let rules = list();
        assert!(
            rules.contains(&format!("{net}/24")) && rules.contains("10.244.0.0/16"),
            "{rules}"
        );
        assert!(rules.to_lowercase().contains("masquerade"), "{rules}");
        // Damage: the whole nft table or one iptables rule goes; the next resync restores them.
        if backend == "nftables" {
            n.exec(&["nft", "delete", "table", "ip", "flannel-ipv4"]);
        } else {
            n.exec(&["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
        }
        assert!(
            wait_until(Duration::from_secs(4), || list()
                .matches("flanneld masq")
                .count()
                >= 6),
            "{backend} rules not repaired:\n{}\n{}",
            list(),
            d.log_text()
        );
    }
}

#[test]
fn invalid_network_configs_fail_at_start_and_touch_neither_etcd_nor_the_kernel() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    let node = switch.add_node(1);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: Vec::new(),
    };
    let before = node.ip(&["-d", "link", "show"]);
    for (config, message) in [
        (r#"{"Network":"10.244.0.0/33"}"#, "is not an IPv4 CIDR"),
        (r#"{"Network":"not-a-cidr"}"#, "is not an IPv4 CIDR"),
        (r#"{"Backend":{"Type":"vxlan"}}"#, "Network is missing"),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#,
            "SubnetLen 31 is out of range",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":12}"#,
            "SubnetLen 12 is out of range",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.9.0.0"}"#,
            "outside Network",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.7.128"}"#,
            "not aligned",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
            "unsupported backend type",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            "Backend.VNI",
        ),
        (r#"{"Network": 10}"#, "Network must be a string"),
        ("{not json", "not valid JSON"),
    ] {
        etcd.put(CONFIG_KEY, config);
        let mut d = node.start_twilld(&args);
        let code = d.wait_exit(Duration::from_secs(10));
        let log = d.log_text();
        assert!(
            code.is_some_and(|c| c != 0),
            "{config}: twilld did not fail (exit {code:?}):\n{log}"
        );
        assert!(
            log.contains(message),
            "{config}: expected {message:?} in:\n{log}"
        );
        assert!(
            etcd.get_prefix(SUBNETS).is_empty(),
            "{config}: a lease was written"
        );
        assert!(node.subnet().is_none(), "{config}: subnet.env was written");
        assert_eq!(
            node.ip(&["-d", "link", "show"]),
            before,
            "{config}: links changed"
        );
    }
}

#[test]
fn etcd_fixture_serves_host_loopback_and_survives_restart() {
    let mut etcd = Etcd::start();
    etcd.put("/twill/test", "v1");
    etcd.put_with_ttl("/twill/ttl", "v2", 60);
    etcd.restart();
    assert_eq!(etcd.get("/twill/test").as_deref(), Some("v1"));
    assert_eq!(etcd.get_prefix("/twill/").len(), 2);
    etcd.del("/twill/test");
    assert_eq!(etcd.get("/twill/test"), None);
}

/// A lease exactly as flanneld writes it (no NodeName), for a node that exists only in etcd.
fn flannel_lease(public_ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

#[test]
fn flanneld_lease_is_programmed_and_a_changed_vtep_mac_drops_the_old_fdb_entry() {
    let c = Cluster::new(1, 1.0);
    let n = &c.nodes[0];
    let key = format!("{SUBNETS}10.244.200.0-24");
    let peer = Ipv4Addr::new(10, 250, 0, 200);
    c.etcd.put_with_ttl(
        &key,
        &flannel_lease("10.250.0.200", "0a:00:00:00:00:01"),
        600,
    );
    assert!(
        wait_until(Duration::from_secs(5), || n.has_peer(
            Ipv4Addr::new(10, 244, 200, 0),
            24,
            "0a:00:00:00:00:01",
            peer
        )),
        "flanneld-style lease not programmed\n{}",
        c.dump()
    );
    c.etcd.put_with_ttl(
        &key,
        &flannel_lease("10.250.0.200", "0a:00:00:00:00:02"),
        600,
    );
    assert!(
        wait_until(Duration::from_secs(5), || n.has_peer(
            Ipv4Addr::new(10, 244, 200, 0),
            24,
            "0a:00:00:00:00:02",
            peer
        ) && !n
            .fdb("flannel.1")
            .contains("0a:00:00:00:00:01")),
        "old FDB entry left after a MAC change\n{}",
        c.dump()
    );
    // A lease of another backend type is not programmed (flannel.md §6.2), and replaces the vxlan one.
    c.etcd.put(
        &key,
        r#"{"PublicIP":"10.250.0.200","BackendType":"host-gw"}"#,
    );
    assert!(
        wait_until(Duration::from_secs(5), || !n.has_any_trace_of(
            Ipv4Addr::new(10, 244, 200, 0),
            "0a:00:00:00:00:02"
        )),
        "non-vxlan lease still programmed\n{}",
        c.dump()
    );
}

#[test]
fn compacted_watch_revision_triggers_a_full_relist() {
    let mut c = Cluster::new(2, 30.0);
    c.wait_mesh(&[0, 1], Duration::from_secs(10));
    let n = &c.nodes[0];
    // Cut node 1 off etcd (reset on send, drop on receive) so its watch breaks and falls behind.
    for cmd in [
        "add table inet twtest",
        "add chain inet twtest out { type filter hook output priority 0; }",
        "add rule inet twtest out tcp dport 2379 reject with tcp reset",
        "add chain inet twtest in { type filter hook input priority 0; }",
        "add rule inet twtest in tcp sport 2379 drop",
    ] {
        let out = n.exec(&["sh", "-c", &format!("nft '{cmd}'")]);
        assert!(
            out.status.success(),
            "nft {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        wait_until(Duration::from_secs(15), || std::fs::read_to_string(
            n.log_file()
        )
        .unwrap_or_default()
        .contains("lease watch broken")),
        "watch did not notice the cut\n{}",
        c.dump()
    );
    // Meanwhile: a node joins, node 2's lease goes, and history is compacted.
    c.etcd.put_with_ttl(
        &format!("{SUBNETS}10.244.201.0-24"),
        &flannel_lease("10.250.0.201", "0a:00:00:00:02:01"),
        600,
    );
    let (gone, _) = c.nodes[1].subnet().unwrap_or_else(|| unreachable!());
    let gone_mac = c.mac(1);
    c.daemons[1].terminate(); // else it would take its subnet back at once
    c.etcd.del(&format!("{SUBNETS}{gone}-24"));
    let status = c.etcd.ctl(&["endpoint", "status", "-w", "json"]);
    let json = String::from_utf8_lossy(&status.stdout);
    let rev: u64 = json
        .split("\"revision\":")
        .nth(1)
        .and_then(|s| s.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {json}"));
    assert!(c.etcd.ctl(&["compact", &rev.to_string()]).status.success());
    n.exec(&["nft", "delete", "table", "inet", "twtest"]);

    let fresh = Ipv4Addr::new(10, 244, 201, 0);
    assert!(
        wait_until(Duration::from_secs(15), || n.has_peer(
            fresh,
            24,
            "0a:00:00:00:02:01",
            Ipv4Addr::new(10, 250, 0, 201)
        ) && !n
            .has_any_trace_of(gone, &gone_mac)),
        "node 1 did not catch up after the compaction\n{}",
        c.dump()
    );
    assert!(
        std::fs::read_to_string(n.log_file())
            .unwrap_or_default()
            .contains("re-listing"),
        "{}",
        c.dump()
    );
}

#[test]
fn direct_routing_uses_plain_routes_between_nodes_on_one_segment() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    );
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: Vec::new(),
    };
    let nodes: Vec<Node> = (1..=2).map(|i| switch.add_node(i)).collect();
    let _daemons: Vec<Twilld> = nodes.iter().map(|n| n.start_twilld(&args)).collect();
    assert!(wait_until(READY, || nodes
        .iter()
        .all(|n| n.subnet().is_some())));
    let (s1, _) = nodes[0].subnet().unwrap_or_else(|| unreachable!());
    let (s2, _) = nodes[1].subnet().unwrap_or_else(|| unreachable!());
    let want = format!("{s2}/24 via 10.250.0.2 dev eth0");
    assert!(
        wait_until(Duration::from_secs(5), || nodes[0]
            .ip(&["route"])
            .contains(&want)),
        "no direct route: {}",
        nodes[0].ip(&["route"])
    );
    assert!(nodes[0]
        .ip(&["neigh", "show", "dev", "flannel.1"])
        .trim()
        .is_empty());
    let pods: Vec<_> = nodes.iter().map(|n| n.add_pod(5)).collect();
    assert!(
        wait_until(Duration::from_secs(5), || pods[0].can_reach(pods[1].ip)),
        "pods cannot talk over direct routes"
    );
    // A bogus direct route for a gone peer is purged by the resync.
    nodes[0].ip(&["route", "add", "10.244.77.0/24", "via", "10.250.0.77"]);
    assert!(wait_until(Duration::from_secs(3), || !nodes[0]
        .ip(&["route"])
        .contains("10.244.77.0/24")));
    assert!(nodes[1]
        .ip(&["route"])
        .contains(&format!("{s1}/24 via 10.250.0.1 dev eth0")));
}

#[test]
fn backend_vni_and_port_shape_the_device() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(
        CONFIG_KEY,
        r#"{"network":"10.244.0.0/16","backend":{"type":"VXLAN","vni":7,"port":4789,"MTU":1400}}"#,
    );
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: Vec::new(),
    };
    let n = switch.add_node(1);
    let d = n.start_twilld(&args);
    assert!(
        wait_until(READY, || n.subnet().is_some()),
        "{}",
        d.log_text()
    );
    let link = n.ip(&["-d", "link", "show", "flannel.7"]);
    assert!(
        link.contains("vxlan id 7 ") && link.contains("dstport 4789") && link.contains("mtu 1350"),
        "{link}"
    );
    assert_eq!(n.mtu(), Some(1350));
}

#[test]
fn etcd_down_at_start_is_waited_for_and_readyz_says_why() {
    let switch = Switch::new();
    let mut etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    etcd.stop();
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: vec!["--healthz-port=8471".into()],
    };
    let n = switch.add_node(1);
    let mut d = n.start_twilld(&args);
    assert!(wait_until(Duration::from_secs(5), || curl(
        &n, 8471, "/readyz"
    )
    .0 == "503"));
    let (_, why) = curl(&n, 8471, "/readyz");
    assert!(
        why.contains("etcd unreachable") && why.contains("no subnet lease"),
        "{why}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        d.is_running(),
        "twilld gave up while etcd was down:\n{}",
        d.log_text()
    );
    etcd.restart();
    assert!(
        wait_until(READY, || n.subnet().is_some()),
        "{}",
        d.log_text()
    );
    assert!(wait_until(Duration::from_secs(5), || curl(
        &n, 8471, "/readyz"
    )
    .0 == "200"));
}

#[test]
fn short_lease_is_renewed_before_it_expires() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: vec!["--subnet-lease-ttl=6".into()],
    };
    let n = switch.add_node(1);
    let d = n.start_twilld(&args);
    assert!(
        wait_until(READY, || n.subnet().is_some()),
        "{}",
        d.log_text()
    );
    let (net, _) = n.subnet().unwrap_or_else(|| unreachable!());
    let key = format!("{SUBNETS}{net}-24");
    // Three TTLs later the key is still there: it was renewed in time, every time.
    let until = Instant::now() + Duration::from_secs(18);
    while Instant::now() < until {
        assert!(etcd.get(&key).is_some(), "lease expired:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn subnet_taken_by_another_node_is_reported_and_taken_back_once_free() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: vec!["--healthz-port=8471".into()],
    };
    let n = switch.add_node(1);
    let d = n.start_twilld(&args);
    assert!(
        wait_until(READY, || n.subnet().is_some()),
        "{}",
        d.log_text()
    );
    assert!(wait_until(Duration::from_secs(5), || curl(
        &n, 8471, "/readyz"
    )
    .0 == "200"));
    let (net, _) = n.subnet().unwrap_or_else(|| unreachable!());
    let key = format!("{SUBNETS}{net}-24");
    let ours = etcd.get(&key).unwrap_or_default();

    etcd.put(&key, &flannel_lease("10.250.0.9", "0a:00:00:00:09:09"));
    assert!(
        wait_until(Duration::from_secs(5), || curl(&n, 8471, "/readyz").0
            == "503"),
        "{}",
        d.log_text()
    );
    let (_, why) = curl(&n, 8471, "/readyz");
    assert!(why.contains("subnet lease lost"), "{why}");
    assert!(curl(&n, 8471, "/metrics")
        .1
        .contains("\ntwilld_lease_lost 1\n"));
    assert!(d.log_text().contains("no longer ours"), "{}", d.log_text());

    etcd.del(&key);
    assert!(
        wait_until(Duration::from_secs(5), || etcd.get(&key).as_deref()
            == Some(ours.as_str())),
        "subnet not taken back:\n{}",
        d.log_text()
    );
    assert!(wait_until(Duration::from_secs(5), || curl(
        &n, 8471, "/readyz"
    )
    .0 == "200"));
}

#[test]
fn etcd_username_and_password_are_used() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    let admin = |args: &[&str]| {
        let mut all = vec!["--user", "root:s3cret"];
        all.extend_from_slice(args);
        let out = etcd.ctl(&all);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let out = etcd.ctl(&[
        "user",
        "add",
        "root",
        "--new-user-password=s3cret",
        "--interactive=false",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(etcd.ctl(&["auth", "enable"]).status.success());
    admin(&["put", CONFIG_KEY, NET_CONFIG]);
    let n = switch.add_node(1);
    let mut args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: Vec::new(),
    };
    // Without credentials nothing can be read: the daemon waits, writes nothing.
    let mut anonymous = n.start_twilld(&args);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        n.subnet().is_none() && anonymous.is_running(),
        "{}",
        anonymous.log_text()
    );
    anonymous.terminate();
    args.extra = vec![
        "--etcd-username=root".into(),
        "--etcd-password=s3cret".into(),
    ];
    let d = n.start_twilld(&args);
    assert!(
        wait_until(READY, || n.subnet().is_some()),
        "{}",
        d.log_text()
    );
}

#[test]
fn etcd_over_tls_with_client_certificates() {
    use twill_tests::cluster::SWITCH_IP;
    use twill_tests::etcd::EtcdTls;
    let certs = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let tls = EtcdTls::generate(certs.path(), &[SWITCH_IP]);
    let switch = Switch::new();
    let etcd = Etcd::start_in_tls(&switch.ns, SWITCH_IP, tls.clone());
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let n = switch.add_node(1);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: vec![
            format!("--etcd-cafile={}", tls.ca.display()),
            format!("--etcd-certfile={}", tls.client_cert.display()),
            format!("--etcd-keyfile={}", tls.client_key.display()),
        ],
    };
    assert!(args.etcd.starts_with("https://"));
    let d = n.start_twilld(&args);
    assert!(
        wait_until(READY, || n.subnet().is_some()),
        "{}",
        d.log_text()
    );
    assert_eq!(etcd.get_prefix(SUBNETS).len(), 1);
}

#[test]
fn node_name_keeps_the_subnet_when_the_underlay_address_changes() {
    let mut c = Cluster::new(2, 1.0);
    c.wait_mesh(&[0, 1], Duration::from_secs(10));
    let before = c.nodes[0].subnet();
    c.daemons[0].terminate();
    // Node 1 moves from 10.250.0.1 to 10.250.0.11.
    c.nodes[0].ip(&["addr", "flush", "dev", "eth0"]);
    c.nodes[0].ip(&["addr", "add", "10.250.0.11/24", "dev", "eth0"]);
    c.nodes[0].underlay_ip = Ipv4Addr::new(10, 250, 0, 11);
    let args = c.args();
    c.daemons[0] = c.nodes[0].start_twilld(&args);
    assert!(wait_until(READY, || {
        c.etcd
            .get_prefix(SUBNETS)
            .iter()
            .any(|(_, v)| v.contains("10.250.0.11"))
    }));
    assert_eq!(
        c.nodes[0].subnet(),
        before,
        "the subnet changed with the address"
    );
    assert_eq!(
        c.etcd.get_prefix(SUBNETS).len(),
        2,
        "a second lease was taken"
    );
    // The device is recreated with the new local address (the lease is written before that).
    let moved = wait_until(Duration::from_secs(5), || {
        let out = c.nodes[0].exec(&["ip", "-d", "link", "show", "flannel.1"]);
        String::from_utf8_lossy(&out.stdout).contains("local 10.250.0.11 ")
    });
    assert!(
        moved,
        "flannel.1 not recreated on the new address\n{}",
        c.dump()
    );
    // The peer follows: its FDB entry points at the new address, the old one is gone.
    c.wait_mesh(&[0, 1], Duration::from_secs(5));
    assert!(
        !c.nodes[1].fdb("flannel.1").contains("dst 10.250.0.1 "),
        "{}",
        c.dump()
    );
}

#[test]
fn simultaneous_joins_never_share_a_subnet_and_the_range_can_run_out() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    // Exactly 6 subnets: 10.244.1.0 .. 10.244.6.0.
    etcd.put(
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.6.0"}"#,
    );
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 2.0,
        extra: Vec::new(),
    };
    let nodes: Vec<Node> = (1..=7).map(|i| switch.add_node(i)).collect();
    // All seven race for six subnets at the same moment.
    let daemons: Vec<Twilld> = nodes.iter().map(|n| n.start_twilld(&args)).collect();
    assert!(
        wait_until(READY, || nodes
            .iter()
            .filter(|n| n.subnet().is_some())
            .count()
            == 6),
        "six nodes did not get subnets"
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut subnets: Vec<_> = nodes.iter().filter_map(|n| n.subnet()).collect();
    assert_eq!(
        subnets.len(),
        6,
        "a seventh node got a subnet out of a range of six"
    );
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 6, "two nodes share a subnet");
    assert_eq!(etcd.get_prefix(SUBNETS).len(), 6);
    let loser = nodes
        .iter()
        .position(|n| n.subnet().is_none())
        .unwrap_or_else(|| unreachable!());
    let log = daemons[loser].log_text();
    assert!(log.contains("out of subnets"), "{log}");
}

#[test]
fn bad_flags_exit_2_with_a_reason_and_env_vars_set_flags() {
    let bin = twill_tests::bins::bin("twilld");
    for (args, reason) in [
        (vec!["--bogus"], "unknown flag --bogus"),
        (vec!["--ip-masq=maybe"], "not a boolean"),
        (vec!["--subnet-lease-renew-margin=0"], "between 1 and 1439"),
        (vec!["--public-ip=300.1.1.1"], "not an IPv4 address"),
        (
            vec!["--ip-masq-backend=pf"],
            "neither nftables nor iptables",
        ),
    ] {
        let out = std::process::Command::new(&bin)
            .args(&args)
            .arg("--node-name=x")
            .output()
            .unwrap_or_else(|e| panic!("running twilld: {e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(reason), "{args:?}: {err}");
    }
    // FLANNELD_<FLAG> environment variables work like flags.
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put("/custom/net/config", NET_CONFIG);
    let node = switch.add_node(1);
    let env_file = node.subnet_file();
    let log = node.log_file();
    let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", node.ns.name()])
        .arg(&bin)
        .env("FLANNELD_ETCD_ENDPOINTS", etcd.underlay_endpoint())
        .env("FLANNELD_ETCD_PREFIX", "/custom/net")
        .env("FLANNELD_IFACE", "eth0")
        .env("FLANNELD_NODE_NAME", "envnode")
        .env("FLANNELD_SUBNET_FILE", &env_file)
        .env("FLANNELD_IP_MASQ", "true")
        .stdout(out.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("running twilld: {e}"));
    let ready = wait_until(READY, || node.subnet().is_some());
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ready,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let leases = etcd.get_prefix("/custom/net/subnets/");
    assert_eq!(leases.len(), 1);
    assert!(
        leases[0].1.contains("\"NodeName\":\"envnode\""),
        "{leases:?}"
    );
    let env = std::fs::read_to_string(&env_file).unwrap_or_default();
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
}
