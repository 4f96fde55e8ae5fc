//! twilld on real namespaces: nodes are network namespaces on an underlay switch, one
//! real etcd runs in the switch namespace, pods are namespaces behind `cni0`, and every check reads the kernel.
//! This file: the data plane, node lifecycle, repairs, config and flags; `overlay_etcd.rs`: leases and etcd.

mod overlay_support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use overlay_support::*;
use twill_tests::cluster::{wait_until, Node, Switch, Twilld, TwilldArgs};

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
    c.assert_pods_reach_each_other(&pods);
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
    n.fdb_append("02:00:00:00:00:99", "flannel.1", "10.250.0.99", &[]);
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
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#,
            "unsupported backend type",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            "Backend.VNI",
        ),
        (r#"{"Network": 10}"#, "Network must be a string"),
        ("{not json", "not valid JSON"),
        // Dual stack and IPv6-only: every key they add.
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":"yes"}"#,
            "EnableIPv6 must be true or false",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv4":"no"}"#,
            "EnableIPv4 must be true or false",
        ),
        (r#"{"EnableIPv4":false,"EnableIPv6":false}"#, "both false"),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#,
            "IPv6Network is missing",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"10.244.0.0/16"}"#,
            "is not an IPv6 CIDR",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125"}"#,
            "IPv6Network fd00::/125 is too small",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":127}"#,
            "IPv6SubnetLen 127 is out of range",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":50}"#,
            "IPv6SubnetLen 50 is out of range",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd01::"}"#,
            "outside IPv6Network",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMax":"fd00:0:0:7::1"}"#,
            "IPv6SubnetMax fd00:0:0:7::1 is not aligned",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:3::"}"#,
            "above IPv6SubnetMax",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"not-an-ip"}"#,
            "is not an IPv6 address",
        ),
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
        assert!(
            !node.subnet_file().exists(),
            "{config}: subnet.env was written"
        );
        assert_eq!(
            node.ip(&["-d", "link", "show"]),
            before,
            "{config}: links changed"
        );
    }
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
    // A lease of another backend type is not programmed (docs/architecture.md, flannel contracts, VXLAN programming),
    // and replaces the vxlan one.
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
    // A bogus direct route for a gone peer is purged by the resync. Leases are random, so the bogus
    // subnet is one that neither node holds.
    let bogus = (1..=255u8)
        .map(|i| format!("10.244.{i}.0"))
        .find(|net| *net != s1.to_string() && *net != s2.to_string())
        .unwrap_or_else(|| unreachable!());
    let bogus = format!("{bogus}/24");
    nodes[0].ip(&["route", "add", &bogus, "via", "10.250.0.77"]);
    assert!(wait_until(Duration::from_secs(3), || !nodes[0]
        .ip(&["route"])
        .contains(&bogus)));
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
        .env("FLANNELD_IFACE", "10.250.0.1") // by address, not name
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

#[test]
fn ip_masq_masquerades_pods_to_outside_but_not_pod_to_pod() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: vec!["--ip-masq".into()],
    };
    let nodes: Vec<Node> = (1..=2).map(|i| switch.add_node(i)).collect();
    let _daemons: Vec<Twilld> = nodes.iter().map(|n| n.start_twilld(&args)).collect();
    assert!(wait_until(READY, || nodes
        .iter()
        .all(|n| n.subnet().is_some())));
    let pa = nodes[0].add_pod(2);
    let pb = nodes[1].add_pod(2);
    assert!(
        wait_until(Duration::from_secs(10), || pa.can_reach(pb.ip)),
        "pods cannot talk"
    );
    // The switch's address plays "outside the cluster".
    assert!(
        pa.can_reach(twill_tests::cluster::SWITCH_IP),
        "pod cannot reach outside"
    );
    let conntrack =
        String::from_utf8_lossy(&nodes[0].exec(&["conntrack", "-L", "-p", "icmp"]).stdout)
            .into_owned();
    let flow = |dst: Ipv4Addr| -> String {
        conntrack
            .lines()
            .find(|l| l.contains(&format!("src={} dst={dst} ", pa.ip)))
            .unwrap_or_else(|| panic!("no conntrack entry {} -> {dst}:\n{conntrack}", pa.ip))
            .to_string()
    };
    // Replies to the outside come back to the node's address (masqueraded)...
    let out = flow(twill_tests::cluster::SWITCH_IP);
    assert!(
        out.contains(&format!("dst={} ", nodes[0].underlay_ip)),
        "not masqueraded: {out}"
    );
    // ...pod-to-pod keeps the pod's address.
    let inside = flow(pb.ip);
    assert!(
        inside.contains(&format!("src={} dst={} ", pb.ip, pa.ip)),
        "pod-to-pod was NATed: {inside}"
    );
}

#[test]
fn entries_of_a_peer_gone_while_the_daemon_was_down_are_purged_at_start_up() {
    let mut c = Cluster::new(3, 30.0);
    c.wait_mesh(&[0, 1, 2], Duration::from_secs(10));
    let (gone, _) = c.nodes[2].subnet().unwrap_or_else(|| unreachable!());
    let gone_mac = c.mac(2);
    c.daemons[0].terminate();
    c.daemons[2].terminate();
    c.etcd.del(&format!("{SUBNETS}{gone}-24"));
    assert!(
        c.nodes[0].has_any_trace_of(gone, &gone_mac),
        "kernel state went with the daemon"
    );
    // flanneld would keep these forever (docs/architecture.md, flannel contracts, VXLAN programming); the start-up
    // reconcile removes them (the resync period is 30 s here, so it is not the periodic pass doing it).
    let args = c.args();
    c.daemons[0] = c.nodes[0].start_twilld(&args);
    assert!(
        wait_until(Duration::from_secs(10), || !c.nodes[0]
            .has_any_trace_of(gone, &gone_mac)),
        "stale peer not purged at start-up\n{}",
        c.dump()
    );
    assert!(c.knows(0, 1), "the live peer was disturbed\n{}", c.dump());
}

#[test]
fn default_route_interface_is_the_underlay_when_no_iface_is_given() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let node = switch.add_node(1);
    // A second interface that must not be picked, and the default route via eth0.
    node.ip(&[
        "link", "add", "decoy0", "type", "veth", "peer", "name", "decoy1",
    ]);
    node.ip(&["addr", "add", "192.168.77.1/24", "dev", "decoy0"]);
    node.ip(&["link", "set", "decoy0", "up"]);
    node.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.250.0.254",
        "dev",
        "eth0",
    ]);
    let log = node.log_file();
    let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", node.ns.name()])
        .arg(twill_tests::bins::bin("twilld"))
        .arg(format!("--etcd-endpoints={}", etcd.underlay_endpoint()))
        .arg("--node-name=defaultroute")
        .arg(format!("--subnet-file={}", node.subnet_file().display()))
        .stdout(out.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("running twilld: {e}"));
    let ready = wait_until(READY, || node.subnet().is_some());
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready, "{text}");
    assert!(text.contains("underlay eth0"), "{text}");
    let link = node.ip(&["-d", "link", "show", "flannel.1"]);
    assert!(link.contains("local 10.250.0.1 dev eth0"), "{link}");
}
