//! Dual-stack clusters in Kubernetes mode: the nodes' IPv4 and IPv6 podCIDRs, each node with an IPv6 underlay
//! address next to its IPv4 one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{json, Value};
use twill_tests::dual_stack::underlay_ip6;

use super::*;

/// A pod with an address of each family, added through libcni with the manifest's conflist.
struct DualPod {
    ns: Netns,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

impl CniSite {
    fn add_dual_pod(&self, id: &str) -> DualPod {
        let ns = Netns::new("kpod");
        let result = self
            .lib
            .with_container_id(id)
            .add(&self.net, ns.path())
            .assert_success();
        let (mut v4, mut v6) = (None, None);
        for ip in result["ips"].as_array().into_iter().flatten() {
            match ip["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse::<IpAddr>().ok())
            {
                Some(IpAddr::V4(a)) => v4 = Some(a),
                Some(IpAddr::V6(a)) => v6 = Some(a),
                None => {}
            }
        }
        match (v4, v6) {
            (Some(v4), Some(v6)) => DualPod { ns, v4, v6 },
            _ => panic!("not an address of each family in {result}"),
        }
    }
}

/// Every pod reaches every other pod over both families (each pair retried for a few seconds).
fn assert_all_reach_dual(pods: &[DualPod], logs: impl Fn() -> String) {
    for a in pods {
        for b in pods {
            for to in [IpAddr::V4(b.v4), IpAddr::V6(b.v6)] {
                if a.v4 == b.v4 {
                    continue;
                }
                let ok = wait_until(Duration::from_secs(15), || {
                    a.ns.exec(&["ping", "-c", "1", "-W", "1", &to.to_string()])
                        .status
                        .success()
                });
                assert!(ok, "pod {} cannot reach pod {to}\n{}", a.v4, logs());
            }
        }
    }
}

/// Nodes with an IPv6 underlay address (`underlay_ip6`) on `eth0` next to the IPv4 one, forwarding IPv6.
fn dual_stack_nodes(switch: &Switch, count: u8) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=count).map(|i| switch.add_node(i)).collect();
    for n in &nodes {
        n.ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", underlay_ip6(n.index)),
            "dev",
            "eth0",
            "nodad",
        ]);
        n.ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    }
    nodes
}

#[test]
fn dual_stack_podcidrs_give_dual_stack_pods_with_flanneld_v6_annotations() {
    // The manifest's net-conf with IPv6 on, as a dual-stack cluster's operator sets it.
    let switch = Switch::new();
    let c = Cluster::start(&switch, Options::dual_stack());
    let nodes = dual_stack_nodes(&switch, 2);
    let cidrs: Vec<Vec<String>> = nodes.iter().map(|n| c.cp.join(n)).collect();
    assert!(cidrs.iter().all(|c| c.len() == 2), "{cidrs:?}");
    let conf = c.net_conf_file("net-conf-dual.json", |v| {
        v["EnableIPv6"] = json!(true);
        v["IPv6Network"] = json!("fd00:10:244::/56");
    });
    let _daemons: Vec<Twilld> = nodes
        .iter()
        .map(|n| c.start_twilld_with(n, &[format!("--net-config-path={}", conf.display())]))
        .collect();
    let all: Vec<&Node> = nodes.iter().collect();
    for (n, cidr) in nodes.iter().zip(&cidrs) {
        assert_eq!(n.wait_ready(READY), pod_cidr(cidr), "{}", logs(&c, &all));
        let env = std::fs::read_to_string(n.subnet_file()).unwrap_or_default();
        let v6 = cidr
            .iter()
            .find(|c| c.contains(':'))
            .expect("an IPv6 podCIDR");
        let prefix = v6.split("::").next().unwrap_or("?");
        assert!(
            env.lines()
                .any(|l| l.starts_with(&format!("FLANNEL_IPV6_SUBNET={prefix}::1/"))),
            "{} serves {v6}: {env}",
            n.name()
        );
        // flanneld's IPv6 annotations: the v6 device's VTEP and the node's IPv6 underlay address.
        let a = c.annotations(&n.name());
        let mac = n.link_mac("flannel-v6.1").expect("flannel-v6.1");
        assert_eq!(
            a.get(&format!("{PREFIX}backend-v6-data")),
            Some(&format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)),
            "{a:?}"
        );
        assert_eq!(
            a.get(&format!("{PREFIX}public-ipv6")),
            Some(&underlay_ip6(n.index).to_string()),
            "{a:?}"
        );
    }
    let sites: Vec<CniSite> = nodes.iter().map(|n| CniSite::new(n, &c.conflist)).collect();
    let pods: Vec<DualPod> = sites
        .iter()
        .enumerate()
        .map(|(i, s)| s.add_dual_pod(&format!("dpod{i}")))
        .collect();
    assert_all_reach_dual(&pods, || logs(&c, &all));
}

#[test]
fn dual_stack_podcidrs_on_an_ipv4_network_give_the_overlay_its_ipv4_half() {
    // The manifest's net-conf enables IPv4 only: in a dual-stack cluster each node takes the IPv4 entry of its
    // podCIDRs, as flanneld does.
    let switch = Switch::new();
    let c = Cluster::start(&switch, Options::dual_stack());
    let nodes: Vec<Node> = (1..=2).map(|i| switch.add_node(i)).collect();
    let cidrs: Vec<Vec<String>> = nodes.iter().map(|n| c.cp.join(n)).collect();
    assert!(cidrs.iter().all(|c| c.len() == 2), "{cidrs:?}");
    let _daemons: Vec<Twilld> = nodes.iter().map(|n| c.start_twilld(n)).collect();
    let all: Vec<&Node> = nodes.iter().collect();
    for (n, cidr) in nodes.iter().zip(&cidrs) {
        assert_eq!(n.wait_ready(READY), pod_cidr(cidr), "{}", logs(&c, &all));
    }
    let sites: Vec<CniSite> = nodes.iter().map(|n| CniSite::new(n, &c.conflist)).collect();
    let pods: Vec<Pod> = sites
        .iter()
        .enumerate()
        .map(|(i, s)| s.add_pod(&format!("dpod{i}")))
        .collect();
    assert_all_reach(&[&pods[0], &pods[1]], || logs(&c, &all));
}

#[test]
fn dual_stack_flanneld_and_twilld_nodes_are_peers_over_both_families_with_flanneld_bytes() {
    let switch = Switch::new();
    let c = Cluster::start(&switch, Options::dual_stack());
    let dual = |v: &mut Value| {
        v["EnableIPv6"] = json!(true);
        v["IPv6Network"] = json!("fd00:10:244::/56");
        v["EnableNFTables"] = json!(true);
    };
    let conf = c.net_conf_file("net-conf-dual-mixed.json", dual);
    let nodes = dual_stack_nodes(&switch, 2);
    join_as_kubelet(&c, &nodes);
    let all: Vec<&Node> = nodes.iter().collect();
    let mut fl = flanneld::start_kube(&nodes[0], &c.kubeconfig(&nodes[0]), &conf);
    let twilld_args = [format!("--net-config-path={}", conf.display())];
    let _t2 = c.start_twilld_with(&nodes[1], &twilld_args);
    let flanneld_log = || logs_with_flanneld(&c, &all, &nodes[0]);
    assert_subnets_written(&nodes, flanneld_log);
    let flanneld_annotations = flanneld_annotations_matched_by_twilld(&c);
    assert!(
        flanneld_annotations.contains_key(&format!("{PREFIX}backend-v6-data")),
        "{flanneld_annotations:?}"
    );
    let sites: Vec<CniSite> = nodes.iter().map(|n| CniSite::new(n, &c.conflist)).collect();
    let pods: Vec<DualPod> = sites
        .iter()
        .enumerate()
        .map(|(i, s)| s.add_dual_pod(&format!("mdpod{i}")))
        .collect();
    assert_all_reach_dual(&pods, flanneld_log);

    // twilld takes over node1: it keeps both devices' MACs, so it publishes flanneld's bytes exactly.
    let _t1 = twilld_takes_over(&c, &mut fl, &nodes[0], &twilld_args, &all);
    assert_eq!(c.annotations("node1"), flanneld_annotations);
    assert_all_reach_dual(&pods, || logs(&c, &all));
}
