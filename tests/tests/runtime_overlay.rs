//! Real runtimes on the twill overlay: two nodes on an underlay switch with a real etcd and twilld,
//! each running podman (and then containerd) with the stock flannel conflist; a container on node 1 reaches
//! one on node 2 over VXLAN, and removal releases everything on both nodes.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use twill_tests::bins::{bin_dir, workspace_dir};
use twill_tests::cluster::{wait_until, Node, Switch, Twilld, TwilldArgs};
use twill_tests::runtimes::containerd::Containerd;
use twill_tests::runtimes::cri::CriClient;
use twill_tests::runtimes::http_get_cmd;
use twill_tests::runtimes::podman::Podman;

const NET_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const CONFIG_KEY: &str = "/coreos.com/network/config";

struct Cluster {
    // Field order is drop order: daemons before nodes before the switch that holds etcd.
    daemons: Vec<Twilld>,
    nodes: Vec<Node>,
    _etcd: twill_tests::etcd::Etcd,
    _switch: Switch,
}

fn cluster() -> Cluster {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 2.0,
        extra: Vec::new(),
    };
    let nodes: Vec<Node> = (1..=2).map(|i| switch.add_node(i)).collect();
    let daemons: Vec<Twilld> = nodes.iter().map(|n| n.start_twilld(&args)).collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(20));
    }
    Cluster {
        daemons,
        nodes,
        _etcd: etcd,
        _switch: switch,
    }
}

/// The stock flannel + portmap conflist (conf/10-flannel.conflist), with this node's subnet file and private
/// state directories.
fn stock_conflist(node: &Node, state: &Path) -> Value {
    let mut list: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_dir().join("conf/10-flannel.conflist"))
            .expect("stock conflist"),
    )
    .expect("stock conflist is JSON");
    list["plugins"][0]["subnetFile"] = json!(node.subnet_file());
    list["plugins"][0]["dataDir"] = json!(state.join("flannel"));
    list["plugins"][0]["ipam"] = json!({"dataDir": state.join("networks")});
    list
}

fn leases(state: &Path, net: &str) -> Vec<String> {
    twill_tests::leases::held(&state.join("networks").join(net))
}

fn node_ns(node: &Node) -> String {
    node.ns.name().to_string()
}

#[test]
fn podman_containers_on_two_nodes_reach_each_other_over_the_overlay() {
    let c = cluster();
    let states: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("state"))
        .collect();
    let mut pms: Vec<Podman> = c
        .nodes
        .iter()
        .zip(&states)
        .map(|(n, s)| {
            Podman::new(
                &[&bin_dir()],
                &stock_conflist(n, s.path()),
                Some(&node_ns(n)),
            )
        })
        .collect();
    pms[0].start("web1", &[], &["/bin/httpd", "-f", "-p", "80", "-h", "/www"]);
    let ip1 = pms[0].ip("web1");
    let subnet1 = c.nodes[0].subnet().expect("node 1 subnet").0;
    assert_eq!(
        ip1.parse::<std::net::Ipv4Addr>()
            .map(|a| u32::from(a) >> 8)
            .ok(),
        Some(u32::from(subnet1) >> 8),
        "container address {ip1} from node 1's subnet {subnet1}"
    );
    let get = http_get_cmd(&ip1, 80);
    let mut last = String::new();
    let reached = wait_until(Duration::from_secs(15), || {
        let (_, out) = pms[1].oneshot(&[], &["/bin/sh", "-c", &get]);
        last = out;
        last.contains("twill")
    });
    assert!(
        reached,
        "a container on node 2 reaches one on node 1: {last}\n{}",
        c.daemons[1].log_text()
    );
    pms[0].remove("web1");
    for (s, pm) in states.iter().zip(&pms) {
        assert!(
            leases(s.path(), &pm.network).is_empty(),
            "leases released on every node"
        );
    }
}

#[test]
fn cri_sandboxes_on_two_nodes_reach_each_other_over_the_overlay() {
    let c = cluster();
    let states: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("state"))
        .collect();
    let ctds: Vec<Containerd> = c
        .nodes
        .iter()
        .zip(&states)
        .map(|(n, s)| {
            Containerd::start(&bin_dir(), &stock_conflist(n, s.path()), Some(&node_ns(n)))
        })
        .collect();
    let mut cris: Vec<CriClient> = ctds.iter().map(Containerd::cri).collect();
    let ids: Vec<String> = cris
        .iter_mut()
        .enumerate()
        .map(|(i, cri)| {
            cri.run_pod_sandbox(&format!("ov{i}"), &format!("uid-ov{i}"), &[])
                .unwrap_or_else(|e| panic!("{e}\n{}", ctds[i].log()))
        })
        .collect();
    let ips: Vec<String> = cris
        .iter_mut()
        .zip(&ids)
        .map(|(c, id)| c.pod_ip(id).expect("sandbox IP"))
        .collect();
    let netns: Vec<PathBuf> = ctds
        .iter()
        .zip(&ids)
        .map(|(c, id)| PathBuf::from(c.sandbox_netns(id)))
        .collect();
    let ping = |from: &Path, to: &str| {
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", from.display()))
            .args(["ping", "-n", "-q", "-c", "1", "-W", "1", to])
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        wait_until(Duration::from_secs(15), || ping(&netns[0], &ips[1])),
        "sandbox on node 1 reaches sandbox {} on node 2",
        ips[1]
    );
    assert!(ping(&netns[1], &ips[0]), "and back");
    for (i, (cri, id)) in cris.iter_mut().zip(&ids).enumerate() {
        cri.stop_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("{e}\n{}", ctds[i].log()));
        cri.remove_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("{e}\n{}", ctds[i].log()));
    }
    for s in &states {
        assert!(
            leases(s.path(), "cbr0").is_empty(),
            "leases released on every node"
        );
    }
}
