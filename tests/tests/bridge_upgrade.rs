//! A node upgraded from the reference plugins: pods the reference bridge attached (its iptables masquerade:
//! a `CNI-…` chain and a `POSTROUTING` jump per pod) are deleted and garbage-collected by ours, which must
//! leave none of the reference's rules behind.

mod bridge_support;

use bridge_support::*;
use serde_json::{json, Value};
use std::path::Path;
use twill_tests::bins::{require_root, REFERENCE_DIR};
use twill_tests::netns::Netns;

/// The node's nat-table lines (both families) that belong to the reference's masquerade of `id`: rules with
/// its comment, jumps into or declarations of its chain.
fn reference_rules(node: &Node, id: &str) -> Vec<String> {
    let comment = format!("id: \\\"{id}\\\"");
    node.iptables_nat()
        .lines()
        .filter(|l| l.contains(&comment))
        .map(str::to_string)
        .collect()
}

/// Every `CNI-` chain declared in the node's nat tables.
fn cni_chains(node: &Node) -> Vec<String> {
    node.iptables_nat()
        .lines()
        .filter(|l| l.starts_with(":CNI-"))
        .map(str::to_string)
        .collect()
}

fn reference_add(node: &Node, pod: &Netns, id: &str, conf: &Value) {
    node.run_with_path(
        &reference(),
        "ADD",
        Some(pod.path()),
        id,
        "eth0",
        conf,
        REFERENCE_DIR,
    )
    .assert_success();
    let rules = reference_rules(node, id);
    assert_eq!(
        rules.len(),
        3,
        "the reference installs a jump, an ACCEPT and a MASQUERADE for {id}: {rules:#?}"
    );
}

fn upgrade_conf(node: &Node, net: &str) -> Value {
    // The reference (1.1.x) speaks up to 1.0.0; GC needs 1.1.0, which only ours is given.
    node.conf(net, json!({"isGateway": true, "ipMasq": true}))
}

/// A node on which the reference bridge attached pod `id` to network `net`: the node, the network's config
/// and the pod's namespace.
fn node_with_a_reference_pod(net: &str, id: &str) -> (Node, Value, Netns) {
    require_root();
    let node = Node::new();
    let conf = upgrade_conf(&node, net);
    let pod = Netns::new("brup");
    reference_add(&node, &pod, id, &conf);
    (node, conf, pod)
}

/// Our DEL of `id` (in `netns`, when it still exists) succeeds and leaves no reference rule and no `CNI-` chain.
fn our_del_leaves_no_reference_rule(node: &Node, netns: Option<&Path>, id: &str, conf: &Value) {
    node.run(&ours(), "DEL", netns, id, "eth0", conf)
        .assert_success();
    assert_eq!(reference_rules(node, id), Vec::<String>::new());
    assert_eq!(cni_chains(node), Vec::<String>::new());
}

#[test]
fn del_of_a_pod_the_reference_attached_removes_the_reference_masquerade() {
    let (node, conf, pod) = node_with_a_reference_pod("brupgrade", "refpod");
    our_del_leaves_no_reference_rule(&node, Some(pod.path()), "refpod", &conf);
    assert!(node.leases("brupgrade").is_empty());
    // Idempotent, and without the netns as well.
    node.run(&ours(), "DEL", None, "refpod", "eth0", &conf)
        .assert_success();
}

#[test]
fn del_without_netns_removes_the_reference_masquerade() {
    let (node, conf, pod) = node_with_a_reference_pod("brupgone", "gonepod");
    drop(pod);
    our_del_leaves_no_reference_rule(&node, None, "gonepod", &conf);
}

#[test]
fn gc_removes_the_reference_masquerade_of_attachments_no_longer_valid_only() {
    require_root();
    let node = Node::new();
    let conf = upgrade_conf(&node, "brupgc");
    let (gone, kept) = (Netns::new("brup"), Netns::new("brup"));
    reference_add(&node, &gone, "gonepod", &conf);
    reference_add(&node, &kept, "keptpod", &conf);
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keptpod", "ifname": "eth0"}]);
    twill_tests::exec::Invocation::new(ours(), "GC")
        .libcni_style()
        .cni_path(Some(&cni_path()))
        .stdin_json(&gc)
        .in_netns(node.ns.path())
        .run()
        .assert_success();
    assert_eq!(reference_rules(&node, "gonepod"), Vec::<String>::new());
    assert_eq!(reference_rules(&node, "keptpod").len(), 3);
    assert_eq!(cni_chains(&node).len(), 1, "{:#?}", cni_chains(&node));
    node.run(&ours(), "DEL", Some(kept.path()), "keptpod", "eth0", &conf)
        .assert_success();
    assert_eq!(reference_rules(&node, "keptpod"), Vec::<String>::new());
    assert_eq!(cni_chains(&node), Vec::<String>::new());
}
