//! Dual-stack and IPv6-only overlays: twilld nodes with an IPv4 and an IPv6 underlay, pods added through the
//! real libcni with the stock flannel conflist (each pod gets an address of every family the network runs),
//! and a pod matrix per family across nodes; host-gw dual stack; and a mixed cluster with the real flanneld,
//! whose dual-stack leases twilld programs and which programs twilld's.
//!
//! Build first: `cargo build --workspace --bins` (and `scripts/build-upstream.sh flannel` for the mixed test).

use std::time::Duration;

use serde_json::Value;
use twill_tests::cluster::wait_until;
use twill_tests::dual_stack::{env_value, underlay_ip6, Daemon, DualCluster};

const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:42::/56","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
const ONLY6: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:42::/56","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#;
const DUAL_HOST_GW: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:42::/56","EnableNFTables":true,"Backend":{"Type":"host-gw"}}"#;

fn cluster(prefix: &str, config: &str, kinds: &[Daemon], pods_per_node: usize) -> DualCluster {
    let mut c = DualCluster::new(prefix, config);
    for k in kinds {
        c.join(*k);
    }
    for i in 0..c.nodes.len() {
        for _ in 0..pods_per_node {
            c.add_pod(i);
        }
    }
    c
}

/// Every lease is a dual-stack key (`<v4>-<len>&<v6>-<len6>`) whose value carries the node's IPv6 underlay
/// address and the MAC of its `flannel-v6.1` in `BackendV6Data`, as flanneld writes it.
fn assert_dual_stack_leases(c: &DualCluster) {
    let leases = c.leases();
    assert_eq!(leases.len(), c.nodes.len(), "{leases:?}");
    for n in &c.nodes {
        let ip6 = underlay_ip6(n.node.index).to_string();
        let (key, value) = leases
            .iter()
            .find(|(_, v)| v.contains(&format!("\"PublicIPv6\":\"{ip6}\"")))
            .unwrap_or_else(|| panic!("no lease with PublicIPv6 {ip6}: {leases:?}"));
        let v: Value = serde_json::from_str(value).unwrap_or(Value::Null);
        let name = key.rsplit('/').next().unwrap_or_default();
        let (v4, v6) = name
            .split_once('&')
            .unwrap_or_else(|| panic!("{key} is not a dual-stack key"));
        let env = c.subnet_env(
            c.nodes
                .iter()
                .position(|x| x.node.index == n.node.index)
                .unwrap(),
        );
        let sub6 = env_value(&env, "FLANNEL_IPV6_SUBNET").unwrap_or_default();
        let sub4 = env_value(&env, "FLANNEL_SUBNET").unwrap_or_default();
        assert_eq!(
            v6.replace('-', "/").split('/').nth(1),
            sub6.split('/').nth(1),
            "{key} vs {env}"
        );
        assert!(
            sub6.starts_with(v6.split("::").next().unwrap_or("?")),
            "{key} vs subnet.env {env}"
        );
        assert!(
            sub4.starts_with(v4.rsplit_once('.').map(|x| x.0).unwrap_or("?")),
            "{key} vs subnet.env {env}"
        );
        assert_eq!(
            v["BackendV6Data"]["VtepMAC"].as_str(),
            n.node.link_mac("flannel-v6.1").as_deref(),
            "{}'s v6 VTEP MAC in {value}",
            n.node.name()
        );
        assert_eq!(v["BackendV6Data"]["VNI"], 1, "{value}");
        assert_eq!(
            v["BackendData"]["VtepMAC"].as_str(),
            n.node.link_mac("flannel.1").as_deref(),
            "{value}"
        );
    }
}

#[test]
fn dual_stack_cluster_of_three_nodes_reaches_every_pod_over_both_families() {
    let c = cluster("ds", DUAL, &[Daemon::Twilld; 3], 2);
    for i in 0..3 {
        let env = c.subnet_env(i);
        assert_eq!(
            env_value(&env, "FLANNEL_IPV6_NETWORK").as_deref(),
            Some("fd00:42::/56"),
            "{env}"
        );
        assert!(env_value(&env, "FLANNEL_IPV6_SUBNET").is_some_and(|s| s.ends_with("::1/64")));
        assert_eq!(
            env_value(&env, "FLANNEL_NETWORK").as_deref(),
            Some("10.244.0.0/16")
        );
        // The IPv6 device's VXLAN costs 70 bytes of the 1500 underlay: pods get the smaller MTU of the two.
        assert_eq!(
            env_value(&env, "FLANNEL_MTU").as_deref(),
            Some("1430"),
            "{env}"
        );
        let dev = c.nodes[i].node.ip(&["-d", "link", "show", "flannel-v6.1"]);
        assert!(
            dev.contains("vxlan id 1") && dev.contains("mtu 1430"),
            "{dev}"
        );
        assert!(
            dev.contains(&format!("local {}", underlay_ip6(c.nodes[i].node.index))),
            "{dev}"
        );
    }
    for p in &c.pods {
        assert!(
            p.v4.is_some() && p.v6.is_some(),
            "{} has not both families",
            p.name
        );
    }
    assert_dual_stack_leases(&c);
    c.assert_matrix(false);
    c.assert_matrix(true);
}

#[test]
fn a_deleted_v6_route_and_device_are_repaired_by_the_reconciler() {
    let c = cluster("dsr", DUAL, &[Daemon::Twilld; 2], 1);
    c.assert_matrix(true);
    let n = &c.nodes[0].node;
    let routes = n.ip(&["-6", "route", "show", "dev", "flannel-v6.1"]);
    let line = routes
        .lines()
        .find(|l| l.contains(" via "))
        .unwrap_or_else(|| panic!("no v6 peer route: {routes}"));
    let dst = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    n.ip(&["-6", "route", "del", &dst, "dev", "flannel-v6.1"]);
    assert!(
        wait_until(Duration::from_secs(15), || n
            .ip(&["-6", "route", "show", "dev", "flannel-v6.1"])
            .contains(&dst)),
        "v6 route {dst} not repaired\n{}",
        c.dump()
    );
    n.ip(&["link", "del", "flannel-v6.1"]);
    assert!(
        wait_until(Duration::from_secs(15), || n
            .ip(&["-6", "route", "show", "dev", "flannel-v6.1"])
            .contains(&dst)),
        "flannel-v6.1 and its routes not recreated\n{}",
        c.dump()
    );
    c.assert_matrix(true);
    c.assert_matrix(false);
}

#[test]
fn ipv6_only_cluster_reaches_every_pod_and_writes_no_ipv4() {
    let c = cluster("d6", ONLY6, &[Daemon::Twilld; 3], 1);
    for i in 0..3 {
        let env = c.subnet_env(i);
        assert_eq!(env_value(&env, "FLANNEL_NETWORK"), None, "{env}");
        assert_eq!(env_value(&env, "FLANNEL_SUBNET"), None, "{env}");
        assert!(env_value(&env, "FLANNEL_IPV6_SUBNET").is_some(), "{env}");
        assert!(
            c.nodes[i].node.link_mac("flannel.1").is_none(),
            "an IPv4 device on an IPv6-only node"
        );
    }
    for (key, value) in c.leases() {
        assert!(key.contains("/subnets/0.0.0.0-0&fd00:42:"), "{key}");
        assert!(value.contains(r#""PublicIP":"0.0.0.0""#), "{value}");
        assert!(!value.contains("\"BackendData\""), "{value}");
    }
    for p in &c.pods {
        assert!(
            p.v4.is_none() && p.v6.is_some(),
            "{}: {:?} {:?}",
            p.name,
            p.v4,
            p.v6
        );
    }
    c.assert_matrix(true);
}

#[test]
fn host_gw_dual_stack_routes_both_families_via_the_peers_underlay_addresses() {
    let c = cluster("dh", DUAL_HOST_GW, &[Daemon::Twilld; 3], 1);
    for (i, n) in c.nodes.iter().enumerate() {
        let routes = n.node.ip(&["-6", "route", "show", "dev", "eth0"]);
        for (j, m) in c.nodes.iter().enumerate() {
            if i != j {
                let via = format!("via {}", underlay_ip6(m.node.index));
                assert!(
                    routes.contains(&via),
                    "{}: no route {via}:\n{routes}",
                    n.node.name()
                );
            }
        }
        assert_eq!(
            env_value(&c.subnet_env(i), "FLANNEL_MTU").as_deref(),
            Some("1500")
        );
    }
    c.assert_matrix(false);
    c.assert_matrix(true);
}

/// flanneld with `EnableIPv6` beside two twilld nodes on one etcd: every daemon programs the others' dual-stack
/// leases, and pods reach each other over both families across the two daemons.
#[test]
fn mixed_dual_stack_cluster_with_flanneld_reaches_every_pod_over_both_families() {
    let c = cluster(
        "dsm",
        DUAL,
        &[Daemon::Twilld, Daemon::Flanneld, Daemon::Twilld],
        1,
    );
    assert_dual_stack_leases(&c);
    c.assert_matrix(true);
    c.assert_matrix(false);
}

/// Eight nodes start at once on a dual-stack network with room for twelve: random picks collide often, and a
/// dual-stack key is unique only as a pair, so two nodes could end up with one IPv4 (or IPv6) subnet under two
/// keys. They never do: every node gets its own subnet in each family, and each subnet.env matches a lease.
#[test]
fn simultaneous_dual_stack_joins_never_share_a_subnet_of_either_family() {
    use std::collections::BTreeSet;
    use twill_tests::cluster::{Node, Switch, Twilld, TwilldArgs};
    const NARROW: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.12.0","EnableIPv6":true,"IPv6Network":"fd00:42::/56","IPv6SubnetMin":"fd00:42:0:1::","IPv6SubnetMax":"fd00:42:0:c::"}"#;
    let switch = Switch::with_prefix("dsj");
    let etcd = switch.start_etcd();
    etcd.put(twill_tests::dual_stack::CONFIG_KEY, NARROW);
    let nodes: Vec<Node> = (1..=8)
        .map(|i| {
            let n = switch.add_node(i);
            let a = format!("{}/64", underlay_ip6(i));
            n.ip(&["addr", "add", &a, "dev", "eth0", "nodad"]);
            n
        })
        .collect();
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: Vec::new(),
    };
    let daemons: Vec<Twilld> = nodes.iter().map(|n| n.start_twilld(&args)).collect();
    let env = |n: &Node| std::fs::read_to_string(n.subnet_file()).unwrap_or_default();
    let logs = || {
        daemons
            .iter()
            .map(|d| d.log_text())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert!(
        wait_until(Duration::from_secs(60), || nodes.iter().all(|n| env_value(
            &env(n),
            "FLANNEL_IPV6_SUBNET"
        )
        .is_some())),
        "not every node got a subnet\n{}",
        logs()
    );
    let leases = etcd.get_prefix(twill_tests::dual_stack::SUBNETS);
    assert_eq!(leases.len(), nodes.len(), "{leases:?}\n{}", logs());
    let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
    for (key, _) in &leases {
        let name = key.rsplit('/').next().unwrap_or_default();
        let (a, b) = name.split_once('&').unwrap_or((name, ""));
        assert!(
            v4.insert(a.to_string()),
            "IPv4 subnet {a} held twice: {leases:?}"
        );
        assert!(
            v6.insert(b.to_string()),
            "IPv6 subnet {b} held twice: {leases:?}"
        );
    }
    for n in &nodes {
        let e = env(n);
        let sub6 = env_value(&e, "FLANNEL_IPV6_SUBNET").unwrap_or_default();
        let net6 = sub6.replace("::1/", "::-");
        assert!(
            v6.contains(&net6),
            "{}: {sub6} is no lease's: {leases:?}",
            n.name()
        );
    }
}
