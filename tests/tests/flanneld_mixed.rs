//! twilld next to the real flanneld (built from its upstream Go module) on one etcd: a mixed cluster, a node
//! switching daemons mid-life, twill's flannel plugin on a `subnet.env` written by flanneld, and DirectRouting
//! between the two daemons. Pods are added through the real libcni with twill's stock conflist.
//!
//! Build first: `cargo build --workspace --bins` and `scripts/build-upstream.sh flannel flannel-cni`.
//!
//! The network config enables nftables so flanneld does not need br_netfilter loaded on the host (in
//! iptables mode it exits when `/proc/sys/net/bridge/bridge-nf-call-iptables` is missing); twilld uses
//! nftables by default, with the same table (`flannel-ipv4`) as flanneld.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use twill_tests::cluster::wait_until;
use twill_tests::e2e::{ClusterPod, ClusterState};
use twill_tests::mixed::{Kind, MixedCluster, MixedNode};
use twill_tests::pinger::{PingReport, Pinger};

const NET_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableNFTables":true,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;
const NET_CONFIG_HOST_GW: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableNFTables":true,"Backend":{"Type":"host-gw"}}"#;
const NET_CONFIG_DIRECT: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableNFTables":true,"Backend":{"Type":"vxlan","VNI":1,"Port":8472,"DirectRouting":true}}"#;

/// Every pod reaches every other pod (retried briefly); panics with the matrix and the logs.
fn assert_full_matrix(c: &MixedCluster, when: &str) {
    let m = c.state().wait_full_matrix(Duration::from_secs(10));
    assert!(
        m.is_full(),
        "{when}: pods unreachable: {:?}\n{}\n{}",
        m.failures(),
        m.render(),
        c.logs()
    );
}

/// One lease per node, each with the node's public IP, its subnet.env subnet and its `flannel.1` MAC.
fn assert_one_lease_per_node(c: &MixedCluster, when: &str) {
    let state = c.state();
    let rows = state
        .lease_table()
        .unwrap_or_else(|e| panic!("{when}: {e}"));
    let table = state.render_lease_table(&rows);
    assert_eq!(rows.len(), c.nodes.len(), "{when}: lease count\n{table}");
    let ips: BTreeSet<_> = rows.iter().map(|r| r.lease.public_ip).collect();
    assert_eq!(
        ips.len(),
        rows.len(),
        "{when}: a public IP holds two leases\n{table}"
    );
    for r in &rows {
        let node = r.node.as_deref().unwrap_or("?");
        assert!(r.node.is_some(), "{when}: lease of no node\n{table}");
        assert_eq!(
            r.kernel_mac.as_deref(),
            Some(r.lease.vtep_mac.as_str()),
            "{when}: {node}'s VTEP MAC in etcd is not its flannel.1 MAC\n{table}"
        );
        let gw = Ipv4Addr::from(u32::from(r.lease.subnet) + 1);
        assert_eq!(
            r.subnet_env.as_deref(),
            Some(format!("{gw}/{}", r.lease.len).as_str()),
            "{when}: {node}'s subnet.env does not match its lease\n{table}"
        );
    }
}

#[test]
fn mixed_cluster_of_two_twilld_and_two_flanneld_nodes_reaches_every_pod_both_ways() {
    let kinds = [Kind::Twilld, Kind::Flanneld, Kind::Twilld, Kind::Flanneld];
    let c = MixedCluster::up("mx", &kinds, NET_CONFIG, 1);
    assert_one_lease_per_node(&c, "after start");
    // Each daemon's kernel state lists every other node as a peer (route + neighbour + FDB on flannel.1),
    // and nothing else: exactly one route per peer on the device.
    let state = c.state();
    let leases = state.leases().unwrap_or_else(|e| panic!("{e}"));
    for n in &c.nodes {
        for l in leases.iter().filter(|l| l.public_ip != n.node.underlay_ip) {
            assert!(
                ClusterState::node_knows(n.node.ns.name(), l),
                "{} ({:?}) does not list {}/{} as a peer\n{}",
                n.name(),
                n.kind(),
                l.subnet,
                l.len,
                c.logs()
            );
        }
        let routes = n.node.ip(&["-4", "route", "show", "dev", "flannel.1"]);
        assert_eq!(
            routes.lines().filter(|l| l.contains(" via ")).count(),
            kinds.len() - 1,
            "{}: routes on flannel.1:\n{routes}",
            n.name()
        );
    }
    assert_full_matrix(&c, "mixed cluster");
}

fn report(name: &str, r: &PingReport) -> String {
    format!(
        "{name}: {}/{} answered, longest outage {:?} ({} consecutive losses at {:?})",
        r.received,
        r.sent,
        r.longest_outage(),
        r.longest_loss,
        r.interval
    )
}

/// node2 starts with `first`, switches to the other daemon and back, under four 0.1 s pingers between its pod
/// and the pods of its peers, a twilld (node1) and a flanneld (node3). Every pinger's longest outage is at
/// most 1 s; node2 keeps its subnet; etcd sees only re-puts of the three leases. Returns the cluster.
fn switch_and_back(prefix: &str, first: Kind) -> MixedCluster {
    let other = match first {
        Kind::Twilld => Kind::Flanneld,
        Kind::Flanneld => Kind::Twilld,
    };
    let kinds = [Kind::Twilld, first, Kind::Flanneld];
    let mut c = MixedCluster::up(prefix, &kinds, NET_CONFIG, 1);
    assert_full_matrix(&c, "before the switch");
    let subnet = c.nodes[1].node.subnet();
    let interval = Duration::from_millis(100);
    let (p1, p2, p3) = (&c.pods[0], &c.pods[1], &c.pods[2]);
    let state = c.state();
    println!(
        "before:\n{}",
        state.render_lease_table(&state.lease_table().unwrap_or_default())
    );
    let pingers = vec![
        (
            "node1 pod -> node2 pod",
            Pinger::start(&p1.ns, p2.ip, interval),
        ),
        (
            "node2 pod -> node1 pod",
            Pinger::start(&p2.ns, p1.ip, interval),
        ),
        (
            "node3 pod -> node2 pod",
            Pinger::start(&p3.ns, p2.ip, interval),
        ),
        (
            "node2 pod -> node3 pod",
            Pinger::start(&p2.ns, p3.ip, interval),
        ),
    ];
    std::thread::sleep(Duration::from_secs(1));

    let keys_before: BTreeSet<String> = c
        .etcd
        .get_prefix(twill_tests::e2e::SUBNETS_PREFIX)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let watch = c.watch_leases();
    let mut took = Vec::new();
    let mut mac_before = c.nodes[1].node.link_mac("flannel.1");
    for kind in [other, first] {
        took.push((kind, c.switch_daemon(1, kind)));
        c.wait_mesh();
        // Let the new daemon's first resync and the peers' updates settle before judging the leases.
        std::thread::sleep(Duration::from_secs(3));
        let when = format!("after node2 switched to {kind}");
        assert_eq!(
            c.nodes[1].node.subnet(),
            subnet,
            "{when}: node2's subnet changed"
        );
        assert_one_lease_per_node(&c, &when);
        let mac = c.nodes[1].node.link_mac("flannel.1");
        if kind == Kind::Flanneld {
            // flanneld adopts the device (and MAC) twilld left behind.
            assert_eq!(mac, mac_before, "{when}: flanneld changed node2's VTEP MAC");
        }
        mac_before = mac;
        let state = c.state();
        println!(
            "{when}:\n{}",
            state.render_lease_table(&state.lease_table().unwrap_or_default())
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    // Through both switches, etcd saw only re-puts of the existing leases: none deleted, none added.
    let events = watch.finish();
    assert!(
        events.iter().any(|(op, _)| op == "PUT"),
        "the watch saw no lease re-put: {events:?}"
    );
    let odd: Vec<_> = events
        .iter()
        .filter(|(op, key)| op != "PUT" || !keys_before.contains(key))
        .collect();
    assert!(
        odd.is_empty(),
        "lease changes beyond re-puts: {odd:?} (leases: {keys_before:?})"
    );
    let reports: Vec<(String, PingReport)> = pingers
        .into_iter()
        .map(|(name, p)| (name.to_string(), p.finish()))
        .collect();
    let text: Vec<String> = reports.iter().map(|(n, r)| report(n, r)).collect();
    println!(
        "daemon switches on node2 (SIGTERM to subnet.env rewritten): {took:?}\n{}",
        text.join("\n")
    );
    for (name, r) in &reports {
        assert!(r.sent > 20, "{name}: ping sent only {} requests", r.sent);
        assert!(
            r.longest_outage() <= Duration::from_secs(1),
            "{}\n{}",
            report(name, r),
            c.logs()
        );
    }
    assert_full_matrix(&c, "after switching back");
    c
}

#[test]
fn node_switched_from_flanneld_to_twilld_and_back_keeps_its_lease_and_pods_connected() {
    switch_and_back("sw", Kind::Flanneld);
}

#[test]
fn node_switched_from_twilld_to_flanneld_and_back_keeps_its_lease_vtep_mac_and_pods_connected() {
    let c = switch_and_back("sv", Kind::Twilld);
    // twilld's own MAC survives both switches (flanneld adopts the device, twilld derives the same MAC
    // again), so no peer is left with an entry for a MAC nobody uses.
    let stale = c.stale_fdb_entries().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        stale.is_empty(),
        "stale FDB entries: {stale:?}\n{}",
        c.logs()
    );
}

#[test]
fn twilld_taking_over_from_flanneld_keeps_the_vtep_mac_and_leaves_no_stale_fdb_entry_on_peers() {
    let kinds = [Kind::Twilld, Kind::Flanneld, Kind::Flanneld];
    let mut c = MixedCluster::up("tk", &kinds, NET_CONFIG, 0);
    let published = c.nodes[1].node.link_mac("flannel.1");
    c.switch_daemon(1, Kind::Twilld);
    c.wait_mesh();
    std::thread::sleep(Duration::from_secs(3));
    let stale = c.stale_fdb_entries().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        stale.is_empty(),
        "stale FDB entries: {stale:?}\n{}",
        c.logs()
    );
    assert_eq!(
        c.nodes[1].node.link_mac("flannel.1"),
        published,
        "twilld changed the VTEP MAC flanneld published for node2"
    );
}

/// `pod` got an address of node `n`'s subnet, and the node's `cni0` holds the gateway `gw`; returns cni0's
/// addresses for further checks.
fn assert_pod_in_subnet_behind_cni0(
    n: &MixedNode,
    pod: &ClusterPod,
    (net, len): (Ipv4Addr, u8),
    gw: Ipv4Addr,
) -> String {
    assert_eq!(
        u32::from(pod.ip) >> 8,
        u32::from(net) >> 8,
        "{} outside {net}",
        pod.ip
    );
    let cni0 = n.node.ip(&["-4", "addr", "show", "dev", "cni0"]);
    assert!(cni0.contains(&format!("inet {gw}/{len}")), "{cni0}");
    cni0
}

/// `KEY=value` lines of a subnet.env.
fn env_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn twill_flannel_plugin_wires_pods_from_a_subnet_env_written_by_flanneld() {
    let mut c = MixedCluster::up("fe", &[Kind::Flanneld, Kind::Flanneld], NET_CONFIG, 1);
    for (i, n) in c.nodes.iter().enumerate() {
        let text = std::fs::read_to_string(n.node.subnet_file()).unwrap_or_default();
        let env = env_lines(&text);
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let (net, len) = n
            .node
            .subnet()
            .unwrap_or_else(|| panic!("no subnet in {text}"));
        let gw = Ipv4Addr::from(u32::from(net) + 1);
        assert_eq!(get("FLANNEL_NETWORK"), Some("10.244.0.0/16"), "{text}");
        assert_eq!(
            get("FLANNEL_SUBNET"),
            Some(format!("{gw}/{len}").as_str()),
            "{text}"
        );
        assert_eq!(get("FLANNEL_MTU"), Some("1450"), "{text}");
        assert_eq!(get("FLANNEL_IPMASQ"), Some("true"), "{text}");
        // The pod got an address of the node's subnet behind cni0 = gateway, with flanneld's MTU.
        let pod = &c.pods[i];
        let cni0 = assert_pod_in_subnet_behind_cni0(n, pod, (net, len), gw);
        assert!(cni0.contains("mtu 1450"), "{cni0}");
        let eth0 = pod.ns.ip(&["link", "show", "dev", "eth0"]);
        assert!(eth0.contains("mtu 1450"), "{eth0}");
        // flanneld masquerades (FLANNEL_IPMASQ=true), so the delegate bridge must not.
        let saved = std::fs::read_dir(n.cni.dir.join("flannel"))
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .next()
            .unwrap_or_else(|| panic!("no saved delegate config"));
        let delegate: Value =
            serde_json::from_str(&std::fs::read_to_string(saved.path()).unwrap_or_default())
                .unwrap_or(Value::Null);
        assert_eq!(delegate["ipMasq"], Value::Bool(false), "{delegate}");
        assert_eq!(delegate["mtu"], Value::from(1450), "{delegate}");
        assert_eq!(
            delegate["ipam"]["ranges"][0][0]["subnet"],
            Value::from(format!("{net}/{len}")),
            "{delegate}"
        );
    }
    assert_full_matrix(&c, "two flanneld nodes, twill's plugins");

    // flanneld stops (it leaves subnet.env in place); DEL still releases the address from the saved config.
    if let Some(mut d) = c.nodes[0].daemon.take() {
        d.terminate();
    }
    let dir = c.nodes[0].cni.dir.clone();
    let net = c.nodes[0].cni.net.clone();
    c.pods[0].del().unwrap_or_else(|e| panic!("{e}"));
    assert!(twill_tests::leases::held(&dir.join("networks").join(&net)).is_empty());
    assert!(wait_until(Duration::from_secs(1), || std::fs::read_dir(
        dir.join("flannel")
    )
    .map(|d| d.count() == 0)
    .unwrap_or(true)));
}

#[test]
fn direct_routing_flanneld_and_twilld_nodes_route_to_each_other_without_encapsulation() {
    let c = MixedCluster::up("dr", &[Kind::Twilld, Kind::Flanneld], NET_CONFIG_DIRECT, 1);
    // `up` waited for `<peer subnet> via <peer underlay IP> dev eth0` on both nodes.
    for (i, n) in c.nodes.iter().enumerate() {
        let peer = &c.pods[1 - i];
        let route = n.node.ip(&["-4", "route", "get", &peer.ip.to_string()]);
        assert!(
            route.contains(" dev eth0 ") && !route.contains("flannel.1"),
            "{} ({:?}) routes {} through the tunnel: {route}\n{}",
            n.name(),
            n.kind(),
            peer.ip,
            c.logs()
        );
    }
    assert_full_matrix(&c, "DirectRouting");
}

#[test]
fn host_gw_twilld_and_flanneld_nodes_route_to_each_other_via_their_underlay_addresses() {
    let kinds = [Kind::Twilld, Kind::Flanneld, Kind::Twilld];
    let c = MixedCluster::up("hg", &kinds, NET_CONFIG_HOST_GW, 1);
    // `up` waited for `<peer subnet> via <peer underlay IP> dev eth0` on every node, from both daemons'
    // leases; both write the same lease shape.
    for (_, v) in c.etcd.get_prefix(twill_tests::e2e::SUBNETS_PREFIX) {
        let v: Value = serde_json::from_str(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(v["BackendType"], "host-gw", "{v}");
        assert!(v.get("BackendData").is_none(), "{v}");
    }
    for n in &c.nodes {
        let links = n.node.ip(&["-br", "link"]);
        assert!(!links.contains("flannel"), "{}: {links}", n.name());
        // No encapsulation: the pods' MTU is the underlay's, as flanneld writes it.
        assert_eq!(n.node.mtu(), Some(1500), "{}", n.name());
    }
    assert_full_matrix(&c, "host-gw");
}

/// flannel's CNI plugin: `github.com/flannel-io/cni-plugin` is not served by the Go module proxy, so the
/// pinned module builds the code it was forked from (the reference plugins' v0.9.1 `flannel` meta plugin,
/// which reads the same `subnet.env` and saves the same delegate config).
#[test]
fn flannel_cni_plugin_binary_delegates_to_twill_bridge_and_host_local() {
    let upstream = twill_tests::bins::upstream_bin("flannel-cni", "flannel");
    let mut c = MixedCluster::up("fc", &[Kind::Flanneld, Kind::Twilld], NET_CONFIG, 0);
    for n in &c.nodes {
        let dst = n.cni.dir.join("bin").join("flannel");
        let _ = std::fs::remove_file(&dst);
        std::fs::copy(&upstream, &dst).unwrap_or_else(|e| panic!("copy flannel CNI: {e}"));
    }
    for i in 0..c.nodes.len() {
        c.add_pod(i).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    for (i, n) in c.nodes.iter().enumerate() {
        let (net, len) = n.node.subnet().unwrap_or_else(|| panic!("no subnet"));
        let gw = Ipv4Addr::from(u32::from(net) + 1);
        let pod = &c.pods[i];
        assert_pod_in_subnet_behind_cni0(n, pod, (net, len), gw);
        let routes = pod.ns.ip(&["-4", "route"]);
        assert!(routes.contains("10.244.0.0/16 via"), "{routes}");
        assert!(routes.contains(&format!("default via {gw}")), "{routes}");
    }
    assert_full_matrix(
        &c,
        "flannel's CNI plugin over twill's bridge and host-local",
    );
    // node1 switches to twill's flannel plugin before its pod goes: DEL honours the file upstream saved.
    let dst = c.nodes[0].cni.dir.join("bin").join("flannel");
    let _ = std::fs::remove_file(&dst);
    std::fs::copy(twill_tests::bins::bin("flannel"), &dst)
        .unwrap_or_else(|e| panic!("copy twill's flannel plugin: {e}"));
    for i in 0..c.pods.len() {
        c.pods[i].del().unwrap_or_else(|e| panic!("{e}"));
        let n = c.nodes.iter().find(|n| n.name() == c.pods[i].node);
        let n = n.unwrap_or_else(|| unreachable!("pod of a known node"));
        let held = twill_tests::leases::held(&n.cni.dir.join("networks").join(&n.cni.net));
        assert!(
            held.is_empty(),
            "{}: addresses still held: {held:?}",
            n.name()
        );
    }
}

#[test]
fn direct_routing_falls_back_to_vxlan_for_peers_behind_a_router_with_both_daemons() {
    // Segment A (10.250.0.0/24): node1 twilld, node2 flanneld. Segment B (10.251.0.0/24): node3 twilld,
    // node4 flanneld. The switch routes between the two, so a peer on the other segment is reached through a
    // gateway: DirectRouting must use the tunnel for it, and plain routes only within a segment.
    let mut c = MixedCluster::up("dx", &[], NET_CONFIG_DIRECT, 0);
    c.switch
        .ns
        .ip(&["addr", "add", "10.251.0.254/24", "dev", "br0"]);
    c.switch
        .ns
        .exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    let kinds = [Kind::Twilld, Kind::Flanneld, Kind::Twilld, Kind::Flanneld];
    for (k, kind) in kinds.iter().enumerate() {
        let i = c.add_node();
        let n = &mut c.nodes[i].node;
        if k >= 2 {
            let old = n.underlay_ip;
            let new = std::net::Ipv4Addr::new(10, 251, 0, n.index);
            n.ip(&["addr", "del", &format!("{old}/24"), "dev", "eth0"]);
            n.ip(&["addr", "add", &format!("{new}/24"), "dev", "eth0"]);
            n.ip(&["route", "add", "10.250.0.0/24", "via", "10.251.0.254"]);
            n.underlay_ip = new;
        } else {
            n.ip(&["route", "add", "10.251.0.0/24", "via", "10.250.0.254"]);
        }
        c.start_daemon(i, *kind);
    }
    for i in 0..c.nodes.len() {
        c.wait_ready(i, None);
    }
    c.wait_mesh();
    for i in 0..c.nodes.len() {
        c.add_pod(i).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    for (i, n) in c.nodes.iter().enumerate() {
        for (j, p) in c.pods.iter().enumerate().filter(|(j, _)| *j != i) {
            let route = n.node.ip(&["-4", "route", "get", &p.ip.to_string()]);
            let want = if (i < 2) == (j < 2) {
                " dev eth0 "
            } else {
                " dev flannel.1 "
            };
            assert!(
                route.contains(want),
                "{} ({:?}) to {} on {}: {route} (want{want})\n{}",
                n.name(),
                n.kind(),
                p.ip,
                p.node,
                c.logs()
            );
        }
    }
    assert_full_matrix(&c, "DirectRouting across two segments");
}

#[test]
fn a_subnet_reserved_for_a_twilld_node_is_programmed_by_a_flanneld_peer_that_starts_later() {
    // A reservation is a lease key without an etcd lease; twilld keeps it as a reservation, and flanneld's
    // start-up listing (which looks up each key's etcd lease) must still take it as a peer.
    let mut c = MixedCluster::up("rv", &[], NET_CONFIG, 0);
    for _ in 0..2 {
        c.add_node();
    }
    let key = format!("{}10.244.77.0-24", twill_tests::e2e::SUBNETS_PREFIX);
    c.etcd.put(
        &key,
        r#"{"PublicIP":"10.250.0.1","PublicIPv6":null,"BackendType":"vxlan"}"#,
    );
    c.start_daemon(0, Kind::Twilld);
    let reserved = c.wait_ready(0, None);
    assert_eq!(
        reserved,
        ("10.244.77.0".parse().unwrap_or_else(|_| unreachable!()), 24)
    );
    let lease_id = c.etcd.ctl(&["get", &key, "-w", "json"]);
    let json: Value = serde_json::from_slice(&lease_id.stdout).unwrap_or(Value::Null);
    assert_eq!(
        json["kvs"][0]["lease"].as_i64().unwrap_or(0),
        0,
        "twilld turned the reservation into a lease: {json}"
    );
    c.start_daemon(1, Kind::Flanneld);
    c.wait_ready(1, None);
    c.wait_mesh();
    for i in 0..2 {
        c.add_pod(i).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    assert_full_matrix(&c, "reserved subnet on the twilld node");
}
