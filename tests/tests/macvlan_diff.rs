//! Differential test of the macvlan plugin against the reference builds (Debian's 1.1.1 and upstream
//! v1.10.0): for each config, ours and each reference run on fresh nodes (a namespace with its own uplink
//! and default route, so the real host's devices are never used as a master) and pods with the same
//! container id, ifname and IPAM range, and must produce the same result JSON, the same kernel state in
//! the pod (kind, macvlan mode, MTU, flags, addresses, routes, notify sysctls) and on the node (its links
//! and routes), the same CHECK outcome, and a DEL that leaves nothing. Random MACs are ignored unless set.
//!
//! Ours only: DEL without the netns, rollback of a failed ADD, `linkInContainer` (against v1.10 only:
//! 1.1.1 does not have it).

#[path = "diff_support/mod.rs"]
mod diff_support;
#[path = "bridge_support/mod.rs"]
mod support;

use diff_support::{add_check_del, Twin, Verbs};
use serde_json::{json, Value};
use std::path::Path;
use support::*;
use twill_tests::bins::{self, Reference};
use twill_tests::netns::Netns;

const CID: &str = "macvlan-diff";
const IFNAME: &str = "eth0";
const NET: &str = "macvlannet";

fn ours() -> std::path::PathBuf {
    bins::bin("macvlan")
}

/// A veth `name` (its peer `<name>p`) up in `ns`, with `addr` on it.
fn uplink(ns: &Netns, name: &str, addr: &str) {
    let peer = format!("{name}p");
    ns.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    ns.ip(&["link", "set", &peer, "up"]);
    ns.ip(&["link", "set", name, "up"]);
    ns.ip(&["addr", "add", addr, "dev", name]);
}

/// A node whose default route goes out of `up0` (10.60.0.2/24); `up1` is a second candidate master.
fn node() -> Node {
    let node = Node::new();
    node.ns.ip(&["link", "set", "lo", "up"]);
    uplink(&node.ns, "up0", "10.60.0.2/24");
    uplink(&node.ns, "up1", "10.61.0.2/24");
    node.ns
        .ip(&["route", "add", "default", "via", "10.60.0.1", "dev", "up0"]);
    node
}

/// A macvlan config over host-local `10.60.0.0/24` (the uplink's subnet) with a default route,
/// `extra` merged on top (null removes a key).
fn conf(node: &Node, extra: &Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "macvlan",
        "ipam": node.ipam(json!([[{"subnet": "10.60.0.0/24", "rangeStart": "10.60.0.100",
            "gateway": "10.60.0.1"}]])),
    });
    c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    merge(&mut c, extra.clone());
    c
}

fn pod_state(pod: &Netns) -> Value {
    let l = links(pod, &["dev", IFNAME])
        .into_iter()
        .next()
        .unwrap_or(Value::Null);
    json!({
        "kind": l["linkinfo"]["info_kind"],
        "mode": l["linkinfo"]["info_data"]["mode"],
        "mtu": l["mtu"],
        "flags": l["flags"],
        "addresses": addresses(pod, IFNAME),
        "routes": routes(pod),
        "arp_notify": sysctl(pod, &format!("net/ipv4/conf/{IFNAME}/arp_notify")),
        "ndisc_notify": sysctl(pod, &format!("net/ipv6/conf/{IFNAME}/ndisc_notify")),
    })
}

/// The node's links (name, kind, flags, MTU) and routes: a macvlan in the pod changes neither, except
/// the master's flags in passthru mode.
fn node_state(node: &Netns) -> Value {
    let links: Vec<Value> = links(node, &[])
        .iter()
        .map(|l| {
            json!([
                l["ifname"],
                l["linkinfo"]["info_kind"],
                l["flags"],
                l["mtu"]
            ])
        })
        .collect();
    json!({"links": links, "routes": routes(node)})
}

struct Side {
    verbs: Verbs,
    pod: Value,
    node: Value,
    pod_links_after: Vec<String>,
    node_before: Value,
    node_after: Value,
    leases_after: Vec<String>,
}

/// Runs ADD, CHECK and DEL; `linkInContainer` moves `up1` into the pod first.
fn run_side(plugin: &Path, cni_path: &str, extra: &Value, cni_args: Option<&str>) -> Side {
    let twin = Twin::on(node(), "mvp");
    let conf = conf(&twin.node, extra);
    if conf["linkInContainer"] == json!(true) {
        twin.node
            .ns
            .ip(&["link", "set", "up1", "netns", &twin.pod.path_str()]);
        twin.pod.ip(&["link", "set", "up1", "up"]);
    }
    let node_before = node_state(&twin.node.ns);
    let run = |verb: &str, c: &Value| {
        twin.run_with_args(plugin, cni_path, verb, (CID, IFNAME), cni_args, c)
    };
    let (verbs, attached) = add_check_del(&conf, run, |_| {
        (pod_state(&twin.pod), node_state(&twin.node.ns))
    });
    let (pod, node) = attached.unwrap_or((Value::Null, Value::Null));
    Side {
        verbs,
        pod,
        node,
        pod_links_after: twin
            .pod_links()
            .into_iter()
            .filter(|n| n != "up1")
            .collect(),
        node_before,
        node_after: node_state(&twin.node.ns),
        leases_after: twin.node.leases(NET),
    }
}

fn compare(ours: &Side, theirs: &Side, r: Reference) {
    ours.verbs.assert_same_add(&theirs.verbs, r);
    if !ours.verbs.add_ok {
        return;
    }
    assert_eq!(
        ours.pod["kind"], "macvlan",
        "snapshot missed the attachment: {:#}",
        ours.pod
    );
    let mut our_pod = ours.pod.clone();
    let mut their_pod = theirs.pod.clone();
    if r == Reference::Debian {
        // 1.1.1 predates the unsolicited neighbour advertisement on link up that v1.10 (and ours) turn on.
        our_pod["ndisc_notify"] = Value::Null;
        their_pod["ndisc_notify"] = Value::Null;
    }
    assert_eq!(our_pod, their_pod, "pod kernel state differs from {r}");
    assert_eq!(ours.node, theirs.node, "node kernel state differs from {r}");
    ours.verbs.assert_same_check(&theirs.verbs, r);
    for (who, s) in [("ours", ours), ("reference", theirs)] {
        s.verbs.assert_deleted(who, &s.pod_links_after);
        assert_eq!(s.node_after, s.node_before, "{who}: node changed");
        assert!(
            s.leases_after.is_empty(),
            "{who}: lease left: {:?}",
            s.leases_after
        );
    }
}

fn differential_with(extra: Value, cni_args: Option<&str>, refs: &[Reference]) -> Side {
    bins::require_root();
    let ours = run_side(&ours(), &cni_path(), &extra, cni_args);
    for &r in refs {
        let theirs = run_side(
            &r.bin("macvlan"),
            &r.dir().display().to_string(),
            &extra,
            cni_args,
        );
        compare(&ours, &theirs, r);
    }
    ours
}

fn differential(extra: Value) -> Side {
    differential_with(extra, None, &Reference::ALL)
}

#[test]
fn same_as_reference_default_master_and_mode() {
    let s = differential(json!({}));
    assert_eq!(s.pod["mode"], "bridge");
}

#[test]
fn same_as_reference_explicit_master() {
    differential(json!({"master": "up1"}));
}

#[test]
fn same_as_reference_modes() {
    for mode in ["bridge", "private", "vepa", "passthru"] {
        let s = differential(json!({"mode": mode}));
        assert_eq!(s.pod["mode"], mode);
    }
}

#[test]
fn same_as_reference_mtu() {
    let s = differential(json!({"mtu": 1400}));
    assert_eq!(s.pod["mtu"], 1400);
}

#[test]
fn same_as_reference_mtu_above_the_masters_fails() {
    let s = differential(json!({"mtu": 9000}));
    assert!(!s.verbs.add_ok);
}

#[test]
fn same_as_reference_unknown_mode_fails() {
    let s = differential(json!({"mode": "source-ish"}));
    assert!(!s.verbs.add_ok);
}

#[test]
fn same_as_reference_missing_master_fails() {
    let s = differential(json!({"master": "nope0"}));
    assert!(!s.verbs.add_ok);
}

#[test]
fn same_as_reference_mac_from_config_runtime_config_and_args() {
    let s = differential(json!({"mac": "02:11:22:33:44:55"}));
    assert_eq!(
        s.verbs.raw_result["interfaces"][0]["mac"],
        "02:11:22:33:44:55"
    );
    let s = differential(json!({"mac": "02:11:22:33:44:55",
        "runtimeConfig": {"mac": "02:11:22:33:44:66"}}));
    assert_eq!(
        s.verbs.raw_result["interfaces"][0]["mac"],
        "02:11:22:33:44:66"
    );
    let s = differential_with(
        json!({"mac": "02:11:22:33:44:55"}),
        Some("IgnoreUnknown=1;MAC=02:11:22:33:44:77"),
        &Reference::ALL,
    );
    assert_eq!(
        s.verbs.raw_result["interfaces"][0]["mac"],
        "02:11:22:33:44:77"
    );
}

#[test]
fn same_as_reference_without_ipam() {
    let s = differential(json!({"ipam": null}));
    assert!(
        s.verbs.raw_result.get("ips").is_none(),
        "{:#}",
        s.verbs.raw_result
    );
}

#[test]
fn same_as_reference_dns_and_old_versions() {
    differential(json!({"dns": {"nameservers": ["10.96.0.10"]}}));
    differential(json!({"cniVersion": "0.3.1"}));
    differential(json!({"cniVersion": "0.4.0"}));
}

#[test]
fn same_as_reference_link_in_container() {
    let s = differential_with(
        json!({"master": "up1", "linkInContainer": true}),
        None,
        &[Reference::Current],
    );
    assert!(s.verbs.add_ok, "{}", s.verbs.add_out);
}

#[test]
fn del_succeeds_when_netns_is_gone() {
    bins::require_root();
    let node = node();
    let pod = Netns::new("mvp");
    let c = conf(&node, &json!({}));
    let add = node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c);
    add.assert_success();
    let path = pod.path().to_path_buf();
    drop(pod);
    let del = node.run(&ours(), "DEL", Some(&path), CID, IFNAME, &c);
    del.assert_success();
    let del = node.run(&ours(), "DEL", None, CID, IFNAME, &c);
    del.assert_success();
    assert!(node.leases(NET).is_empty());
}

#[test]
fn failed_add_rolls_back_everything() {
    bins::require_root();
    let node = node();
    let pod = Netns::new("mvp");
    // The range's only address is taken by a first pod, so IPAM fails after the device was created.
    let c = conf(
        &node,
        &json!({"ipam": {"ranges": [[{"subnet": "10.60.0.0/24", "rangeStart": "10.60.0.100",
            "rangeEnd": "10.60.0.100", "gateway": "10.60.0.1"}]]}}),
    );
    let first = Netns::new("mvp");
    node.run(&ours(), "ADD", Some(first.path()), "first", IFNAME, &c)
        .assert_success();
    let before = node_state(&node.ns);
    let add = node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c);
    add.assert_any_error();
    let left: Vec<String> = links(&pod, &[])
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    assert_eq!(left, vec!["lo".to_string()]);
    assert_eq!(node_state(&node.ns), before);
    assert_eq!(node.leases(NET).len(), 1);
    node.run(&ours(), "DEL", Some(first.path()), "first", IFNAME, &c)
        .assert_success();
}

#[test]
fn add_twice_fails_and_keeps_the_first() {
    bins::require_root();
    let node = node();
    let pod = Netns::new("mvp");
    let c = conf(&node, &json!({}));
    node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_success();
    let before = pod_state(&pod);
    node.run(&ours(), "ADD", Some(pod.path()), "other", IFNAME, &c)
        .assert_any_error();
    assert_eq!(pod_state(&pod), before);
    node.run(&ours(), "DEL", Some(pod.path()), CID, IFNAME, &c)
        .assert_success();
}

fn first_ip(r: &Value) -> String {
    r["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn pods_on_one_master_reach_each_other_in_bridge_mode() {
    bins::require_root();
    let node = node();
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("mvp")).collect();
    let c = conf(&node, &json!({}));
    let results = node.run_each(&ours(), "ADD", &pods, "ping", IFNAME, &c);
    let ips: Vec<String> = results.iter().map(first_ip).collect();
    assert!(ping(&pods[0], &ips[1]), "pod 0 cannot reach pod 1");
    node.run_each(&ours(), "DEL", &pods, "ping", IFNAME, &c);
}

#[test]
fn gc_and_status_go_to_ipam() {
    bins::require_root();
    let node = node();
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("mvp")).collect();
    let mut c = conf(&node, &json!({"cniVersion": "1.1.0"}));
    let results = node.run_each(&ours(), "ADD", &pods, "gc", IFNAME, &c);
    let ips: Vec<String> = results.iter().map(first_ip).collect();
    c["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": IFNAME}]);
    node.run(&ours(), "GC", None, "", IFNAME, &c)
        .assert_success();
    assert_eq!(node.leases(NET), vec![ips[0].clone()]);
    node.run(&ours(), "STATUS", None, "", IFNAME, &c)
        .assert_success();
}

#[test]
fn parallel_adds_and_dels_on_one_master() {
    bins::require_root();
    let node = node();
    let c = conf(&node, &json!({}));
    let pods: Vec<Netns> = (0..8).map(|_| Netns::new("mvp")).collect();
    let results = node.run_parallel(&ours(), "ADD", &pods, "par", IFNAME, &c);
    let ips: Vec<String> = results.iter().map(first_ip).collect();
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), pods.len(), "addresses {ips:?}");
    for pod in &pods {
        assert_eq!(pod_state(pod)["kind"], "macvlan");
    }
    node.run_parallel(&ours(), "DEL", &pods, "par", IFNAME, &c);
    assert!(node.leases(NET).is_empty(), "{:?}", node.leases(NET));
    for pod in &pods {
        assert!(pod_state(pod)["kind"].is_null());
    }
}
