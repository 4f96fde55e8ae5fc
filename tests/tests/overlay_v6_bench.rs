//! IPv6 VXLAN throughput benchmark; ignored in normal runs, driven by `scripts/bench/overlay.sh` against release
//! binaries (`TWILL_BIN_DIR=target/release`). Pod-to-pod iperf3 over IPv6 between two twilld nodes (dual-stack
//! network, `flannel-v6.1` over the nodes' IPv6 underlay) against a hand-built IPv6 VXLAN path between two other
//! nodes of the same switch: `ip link add ... type vxlan` with IPv6 local and remote, flannel's scheme (the
//! subnet's network address on the device, a permanent neighbour, an FDB entry, an onlink route), the same device
//! and pod MTUs. Runs ABBA; reports medians and the ratio. Everything runs in namespaces it creates and removes.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use ipnet::Ipv6Net;
use twill_tests::cluster::{wait_until, Node, Switch, Twilld, TwilldArgs};
use twill_tests::dual_stack::{env_value, underlay_ip6};
use twill_tests::hand_wired::HandVxlan;
use twill_tests::netns::Netns;
use twill_tests::overlay_bench::{
    abba_medians, append_bench_out, env_or, iperf_gbps, iperf_pinning, ABBA_ROUNDS,
};

const DUAL: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.100.0","EnableIPv6":true,"IPv6Network":"fd00:42::/56","IPv6SubnetMin":"fd00:42:0:1::","IPv6SubnetMax":"fd00:42:0:64::"}"#;

/// A node of the switch with its IPv6 underlay address and IPv6 forwarding.
fn v6_node(switch: &Switch, index: u8) -> Node {
    let n = switch.add_node(index);
    let a = format!("{}/64", underlay_ip6(index));
    n.ip(&["addr", "add", &a, "dev", "eth0", "nodad"]);
    n.ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    n
}

/// A pod of `subnet` behind bridge `cni0` (gateway `::1`), wired as the bridge plugin does; returns its
/// namespace and address (`::<host>`).
fn add_pod6(node: &Node, subnet: Ipv6Net, mtu: u32, host: u16) -> (Netns, Ipv6Addr) {
    match node.add_bridged_pod(subnet.into(), mtu, host) {
        (ns, IpAddr::V6(ip)) => (ns, ip),
        (_, ip) => unreachable!("an IPv6 subnet gave {ip}"),
    }
}

/// Nodes 101 and 102 wired by hand like flannel's IPv6 VXLAN: device `vx6` over the IPv6 underlay with MTU
/// `dev_mtu`, subnets `fd99:0:0:<1|2>::/64`; one pod on each with MTU `pod_mtu`.
fn hand_built_pair(
    switch: &Switch,
    dev_mtu: u32,
    pod_mtu: u32,
) -> (Vec<Node>, Vec<(Netns, Ipv6Addr)>) {
    let nodes = [v6_node(switch, 101), v6_node(switch, 102)];
    let macs = ["0a:cd:00:00:00:01", "0a:cd:00:00:00:02"];
    let subnet = |i: usize| -> Ipv6Net {
        format!("fd99:0:0:{}::/64", i + 1)
            .parse()
            .unwrap_or_else(|_| unreachable!())
    };
    for (i, n) in nodes.iter().enumerate() {
        let o = 1 - i;
        n.wire_vxlan_by_hand(&HandVxlan {
            dev: "vx6",
            mac: macs[i],
            mtu: dev_mtu,
            local: underlay_ip6(101 + i as u8).into(),
            subnet: subnet(i).into(),
            peer_subnet: subnet(o).into(),
            peer_mac: macs[o],
            peer_underlay: underlay_ip6(101 + o as u8).into(),
        });
    }
    let pods = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| add_pod6(n, subnet(i), pod_mtu, 2))
        .collect();
    (nodes.into(), pods)
}

fn link_mtu(node: &Node, link: &str) -> u32 {
    let out = node.ip(&["-o", "link", "show", link]);
    out.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no MTU for {link} in {out}"))
}

fn ping6_ok(from: &Netns, to: Ipv6Addr) -> bool {
    wait_until(Duration::from_secs(10), || {
        from.exec(&["ping", "-6", "-c", "1", "-W", "1", &to.to_string()])
            .status
            .success()
    })
}

#[test]
#[ignore = "benchmark: run scripts/bench/overlay.sh"]
fn ipv6_vxlan_throughput_against_a_hand_built_ipv6_vxlan_path() {
    let secs: u32 = env_or("TWILL_BENCH_IPERF_SECS", "5").parse().unwrap_or(5);
    let switch = Switch::new();
    switch
        .ns
        .ip(&["addr", "add", "fd00:250::fe/64", "dev", "br0", "nodad"]);
    let etcd = switch.start_etcd();
    etcd.put("/coreos.com/network/config", DUAL);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 10.0,
        extra: Vec::new(),
    };
    let nodes = [v6_node(&switch, 1), v6_node(&switch, 2)];
    let _daemons: Vec<Twilld> = nodes.iter().map(|n| n.start_twilld(&args)).collect();
    let env = |n: &Node| std::fs::read_to_string(n.subnet_file()).unwrap_or_default();
    for n in &nodes {
        assert!(
            wait_until(Duration::from_secs(30), || env_value(
                &env(n),
                "FLANNEL_IPV6_SUBNET"
            )
            .is_some()),
            "{} wrote no IPv6 subnet",
            n.name()
        );
    }
    let pod_mtu: u32 = env_value(&env(&nodes[0]), "FLANNEL_MTU")
        .and_then(|m| m.parse().ok())
        .expect("FLANNEL_MTU");
    let dev_mtu = link_mtu(&nodes[0], "flannel-v6.1");
    let twill_pods: Vec<(Netns, Ipv6Addr)> = nodes
        .iter()
        .map(|n| {
            let gw: Ipv6Net = env_value(&env(n), "FLANNEL_IPV6_SUBNET")
                .and_then(|s| s.parse().ok())
                .expect("FLANNEL_IPV6_SUBNET");
            let subnet = Ipv6Net::new(gw.network(), gw.prefix_len()).expect("prefix");
            add_pod6(n, subnet, pod_mtu, 2)
        })
        .collect();
    assert!(
        ping6_ok(&twill_pods[0].0, twill_pods[1].1),
        "twilld's IPv6 path does not carry pings"
    );
    let (_hand_nodes, hand_pods) = hand_built_pair(&switch, dev_mtu, pod_mtu);
    assert!(
        ping6_ok(&hand_pods[0].0, hand_pods[1].1),
        "the hand-built IPv6 path does not carry pings"
    );

    let run = |p: &[(Netns, Ipv6Addr)]| iperf_gbps(&p[1].0, &p[0].0, IpAddr::V6(p[1].1), secs);
    let (twill, hand) = abba_medians(|| run(&twill_pods), || run(&hand_pods));
    let line = format!(
        "IPv6 VXLAN iperf3 {secs} s x{ABBA_ROUNDS} ABBA (medians, {}), device MTU {dev_mtu}, pod MTU {pod_mtu}: twilld overlay \
         {twill:.2} Gbit/s, hand-built IPv6 VXLAN {hand:.2} Gbit/s (ratio {:.3})",
        iperf_pinning(),
        twill / hand
    );
    eprintln!("{line}");
    append_bench_out(&format!("{line}\n"));
}
