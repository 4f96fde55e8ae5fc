//! Differential test of the ptp plugin against the reference builds (Debian's 1.1.1 and upstream v1.10.0):
//! for each config, ours and each reference run on fresh nodes and pods with the same container id, ifname
//! and IPAM ranges (each with its own IPAM: ours first in CNI_PATH for ours), and must produce the same
//! result JSON and the same kernel state in the pod (addresses, routes, link flags, MTU, IPv6 sysctls) and
//! on the node (the host veth's MTU, flags and addresses, routes, forwarding), the same CHECK outcome, and
//! a DEL that leaves nothing. Random veth names and MACs are ignored.
//!
//! Intended differences (docs/compatibility.md): masquerade goes to nftables unless
//! `ipMasqBackend: "iptables"` (the reference 1.1.1 always uses iptables), and the pod's IPv6 addresses
//! skip duplicate address detection (a flag the comparison does not look at).
//!
//! Ours only: DEL without the netns, rollback of a failed ADD, GC of masquerade rules, parallel ADDs,
//! and traffic pod to node and pod to pod.

#[path = "diff_support/mod.rs"]
mod diff_support;
#[path = "bridge_support/mod.rs"]
mod support;

use diff_support::{add_check_del, Leftovers, Twin, Verbs};
use serde_json::{json, Value};
use std::path::Path;
use support::*;
use twill_tests::bins::{self, Reference};
use twill_tests::netns::Netns;

const CID: &str = "ptp-diff";
const IFNAME: &str = "eth0";
const NET: &str = "ptpnet";

fn ours() -> std::path::PathBuf {
    bins::bin("ptp")
}

/// A ptp config over host-local `10.77.0.0/24` with a default route, `extra` merged on top.
fn conf(node: &Node, extra: &Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "ptp",
        "ipam": node.ipam(json!([[{"subnet": "10.77.0.0/24"}]])),
    });
    c["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    merge(&mut c, extra.clone());
    c
}

/// Replace every word naming a host veth (`veth…`) by `<veth>`.
fn unname(s: &str) -> String {
    s.split(' ')
        .map(|w| if w.starts_with("veth") { "<veth>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

fn pod_state(pod: &Netns) -> Value {
    let l = links(pod, &["dev", IFNAME])
        .into_iter()
        .next()
        .unwrap_or(Value::Null);
    json!({
        "kind": l["linkinfo"]["info_kind"],
        "mtu": l["mtu"],
        "flags": l["flags"],
        "addresses": addresses(pod, IFNAME),
        "routes": routes(pod),
        "disable_ipv6": sysctl(pod, &format!("net/ipv6/conf/{IFNAME}/disable_ipv6")),
        "lo_disable_ipv6": sysctl(pod, "net/ipv6/conf/lo/disable_ipv6"),
    })
}

fn node_state(node: &Netns) -> Value {
    let veths: Vec<Value> = links(node, &["type", "veth"])
        .iter()
        .map(|l| {
            let name = l["ifname"].as_str().unwrap_or("-");
            json!({
                "mtu": l["mtu"],
                "flags": l["flags"],
                "addresses": addresses(node, name),
                "accept_ra": sysctl(node, &format!("net/ipv6/conf/{name}/accept_ra")),
            })
        })
        .collect();
    json!({
        "veths": veths,
        "routes": routes(node).iter().map(|r| unname(r)).collect::<Vec<_>>(),
        "ip_forward": sysctl(node, "net/ipv4/ip_forward"),
        "ipv6_forwarding": sysctl(node, "net/ipv6/conf/all/forwarding"),
    })
}

struct Side {
    verbs: Verbs,
    pod: Value,
    node: Value,
    masq_during: Vec<String>,
    after: Leftovers,
    node_routes_after: Vec<String>,
}

fn run_side(plugin: &Path, cni_path: &str, extra: &Value) -> Side {
    let twin = Twin::new("ptpp");
    let conf = conf(&twin.node, extra);
    let (verbs, attached) = add_check_del(
        &conf,
        |verb, c| twin.run(plugin, cni_path, verb, (CID, IFNAME), c),
        |result| {
            (
                twin.node.masquerade_of(result),
                pod_state(&twin.pod),
                node_state(&twin.node.ns),
            )
        },
    );
    let (masq_during, pod, node) = attached.unwrap_or((vec![], Value::Null, Value::Null));
    Side {
        masq_during,
        pod,
        node,
        after: twin.leftovers(NET, &verbs.raw_result),
        node_routes_after: routes(&twin.node.ns),
        verbs,
    }
}

fn compare(ours: &Side, theirs: &Side, r: Reference, masq: bool) {
    ours.verbs.assert_same_add(&theirs.verbs, r);
    assert!(
        ours.verbs.add_ok,
        "ADD failed on both sides: {}",
        ours.verbs.add_out
    );
    // The snapshots saw the attachment (an empty snapshot on both sides would compare equal).
    assert!(
        !ours.pod["addresses"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            && ours.node["veths"].as_array().is_some_and(|v| v.len() == 1)
            && !ours.node["routes"].as_array().is_some_and(|r| r.is_empty()),
        "snapshot missed the attachment: {:#}\n{:#}",
        ours.pod,
        ours.node
    );
    assert_eq!(ours.pod, theirs.pod, "pod kernel state differs from {r}");
    assert_eq!(ours.node, theirs.node, "node kernel state differs from {r}");
    ours.verbs.assert_same_check(&theirs.verbs, r);
    for (who, s) in [("ours", ours), ("reference", theirs)] {
        assert_eq!(
            !s.masq_during.is_empty(),
            masq,
            "{who}: masquerade rules {:?}",
            s.masq_during
        );
        s.after.assert_clean_after(&s.verbs, who);
        assert!(
            s.node_routes_after.is_empty(),
            "{who}: node routes left: {:?}",
            s.node_routes_after
        );
    }
    assert!(
        ours.after.masq.is_empty(),
        "our masquerade left: {:?}",
        ours.after.masq
    );
}

fn differential(extra: Value, masq: bool) {
    bins::require_root();
    let ours = run_side(&ours(), &cni_path(), &extra);
    for r in Reference::ALL {
        let theirs = run_side(&r.bin("ptp"), &r.dir().display().to_string(), &extra);
        compare(&ours, &theirs, r, masq);
    }
}

fn ranges(r: Value) -> Value {
    json!({"ipam": {"ranges": r}})
}

#[test]
fn same_as_reference_ipv4() {
    differential(json!({}), false);
}

#[test]
fn same_as_reference_masquerade_nftables() {
    differential(json!({"ipMasq": true}), true);
}

#[test]
fn same_as_reference_masquerade_iptables() {
    differential(json!({"ipMasq": true, "ipMasqBackend": "iptables"}), true);
}

#[test]
fn same_as_reference_mtu() {
    differential(json!({"mtu": 1400}), false);
}

#[test]
fn same_as_reference_dual_stack() {
    let mut extra = ranges(json!([[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]]));
    merge(
        &mut extra,
        json!({"ipam": {"routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}),
    );
    differential(extra, false);
}

#[test]
fn same_as_reference_ipv6_only() {
    let mut extra = ranges(json!([[{"subnet": "fd77::/64"}]]));
    merge(&mut extra, json!({"ipam": {"routes": [{"dst": "::/0"}]}}));
    differential(extra, false);
}

#[test]
fn same_as_reference_dns_override() {
    differential(
        json!({"dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}}),
        false,
    );
}

#[test]
fn same_as_reference_kindnet_style_0_3_1() {
    differential(
        json!({"cniVersion": "0.3.1", "ipMasq": false, "mtu": 1500}),
        false,
    );
}

#[test]
fn same_as_reference_result_0_4_0() {
    differential(json!({"cniVersion": "0.4.0"}), false);
}

#[test]
fn same_as_reference_result_0_2_0() {
    differential(json!({"cniVersion": "0.2.0"}), false);
}

#[test]
fn same_as_reference_static_ipam() {
    differential(
        json!({"ipam": {"type": "static", "ranges": null, "dataDir": null,
            "addresses": [{"address": "10.66.0.5/24", "gateway": "10.66.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}]}}),
        false,
    );
}

/// One ADD on a fresh node and pod; the node, the pod and the result.
fn added(extra: Value) -> (Node, Netns, Value, Value) {
    bins::require_root();
    let node = Node::new();
    let pod = Netns::new("ptpp");
    let c = conf(&node, &extra);
    let r = node
        .run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_success();
    (node, pod, c, r)
}

#[test]
fn del_succeeds_when_netns_is_gone() {
    let (node, pod, c, r) = added(json!({"ipMasq": true}));
    let ip = result_addrs(&r)[0].clone();
    drop(pod);
    let gone = Path::new("/run/netns/ptp-diff-gone");
    node.run(&ours(), "DEL", Some(gone), CID, IFNAME, &c)
        .assert_success();
    node.run(&ours(), "DEL", None, CID, IFNAME, &c)
        .assert_success();
    assert!(node.leases(NET).is_empty(), "lease left");
    assert!(
        !node.masquerade_lines().iter().any(|l| l.contains(&ip)),
        "masquerade left: {:?}",
        node.masquerade_lines()
    );
    // The host end goes with the pod's namespace, which the kernel tears down after the last reference
    // is dropped, asynchronously: give it time rather than racing it.
    assert!(
        twill_tests::cluster::wait_until(std::time::Duration::from_secs(10), || node
            .veths()
            .is_empty()),
        "veth left: {:?}",
        node.veths()
    );
}

#[test]
fn failed_add_rolls_back_everything() {
    bins::require_root();
    let node = Node::new();
    let pod = Netns::new("ptpp");
    // static IPAM without a gateway: the pair exists by the time the answer is known.
    let c = conf(
        &node,
        &json!({"ipMasq": true, "ipam": {"type": "static", "ranges": null, "dataDir": null,
            "addresses": [{"address": "10.66.0.5/24"}]}}),
    );
    let out = node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c);
    out.assert_any_error();
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
    assert_eq!(
        links(&pod, &[]).len(),
        1,
        "pod interface left: {:?}",
        links(&pod, &[])
    );
    assert!(routes(&node.ns).is_empty(), "node routes left");
    assert!(!node
        .masquerade_lines()
        .iter()
        .any(|l| l.contains("10.66.0.5")));

    // ifname already taken in the pod: refused before IPAM, no lease taken.
    let c = conf(&node, &json!({}));
    pod.exec_ok(&[
        "ip", "link", "add", IFNAME, "type", "veth", "peer", "name", "p0",
    ]);
    node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_any_error();
    assert!(
        node.leases(NET).is_empty(),
        "lease left: {:?}",
        node.leases(NET)
    );
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
}

#[test]
fn gc_removes_masquerade_and_leases_of_stale_attachments() {
    bins::require_root();
    let node = Node::new();
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("ptpp")).collect();
    let mut c = conf(&node, &json!({"cniVersion": "1.1.0", "ipMasq": true}));
    let results = node.run_each(&ours(), "ADD", &pods, "gc", IFNAME, &c);
    let ips: Vec<String> = results.iter().map(|r| result_addrs(r)[0].clone()).collect();
    c["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": IFNAME}]);
    node.run(&ours(), "GC", None, "", IFNAME, &c)
        .assert_success();
    let masq = node.masquerade_lines();
    assert!(
        masq.iter().any(|l| l.contains(&ips[0])),
        "kept rule gone: {masq:?}"
    );
    assert!(
        !masq.iter().any(|l| l.contains(&ips[1])),
        "stale rule left: {masq:?}"
    );
    assert_eq!(node.leases(NET), vec![ips[0].clone()]);
    node.run(&ours(), "STATUS", None, "", IFNAME, &c)
        .assert_success();
}

#[test]
fn pods_reach_the_node_and_each_other_through_the_host() {
    bins::require_root();
    let node = Node::new();
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("ptpp")).collect();
    let c = conf(&node, &json!({}));
    let results = node.run_each(&ours(), "ADD", &pods, "ping", IFNAME, &c);
    let ips: Vec<String> = results.iter().map(|r| result_addrs(r)[0].clone()).collect();
    assert!(ping(&node.ns, &ips[0]), "node cannot reach pod 0");
    assert!(ping(&pods[0], &ips[1]), "pod 0 cannot reach pod 1");
    node.run_each(&ours(), "DEL", &pods, "ping", IFNAME, &c);
    assert!(node.veths().is_empty());
}

#[test]
fn parallel_adds_and_dels_on_one_node() {
    bins::require_root();
    let node = Node::new();
    let pods: Vec<Netns> = (0..8).map(|_| Netns::new("ptpp")).collect();
    let c = conf(&node, &json!({"ipMasq": true}));
    let results = node.run_parallel(&ours(), "ADD", &pods, "par", IFNAME, &c);
    let mut ips: Vec<String> = results.iter().flat_map(result_addrs).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), pods.len(), "addresses not distinct: {ips:?}");
    assert_eq!(node.veths().len(), pods.len());
    node.run_parallel(&ours(), "DEL", &pods, "par", IFNAME, &c);
    assert!(node.veths().is_empty(), "veths left: {:?}", node.veths());
    assert!(node.leases(NET).is_empty());
    assert!(!node
        .masquerade_lines()
        .iter()
        .any(|l| ips.iter().any(|ip| l.contains(ip.as_str()))));
}

/// A change made to the pod and node after ADD.
type Drift = fn(&Netns, &Netns);

/// CHECK after ADD with `drift` applied (pod, node) on each side: whether it passed, and its output.
fn check_after(plugin: &Path, cni_path: &str, drift: impl Fn(&Netns, &Netns)) -> (bool, String) {
    let node = Node::new();
    let pod = Netns::new("ptpp");
    let mut c = conf(&node, &json!({}));
    let r = node
        .run_with_path(plugin, "ADD", Some(pod.path()), CID, IFNAME, &c, cni_path)
        .assert_success();
    drift(&pod, &node.ns);
    c["prevResult"] = r;
    let check = node.run_with_path(plugin, "CHECK", Some(pod.path()), CID, IFNAME, &c, cni_path);
    check.assert_no_panic();
    node.run_with_path(plugin, "DEL", Some(pod.path()), CID, IFNAME, &c, cni_path)
        .assert_success();
    (check.success(), check.describe())
}

#[test]
fn check_fails_like_the_reference_when_the_pod_lost_its_route_or_address() {
    bins::require_root();
    let drifts: [(&str, Drift); 2] = [
        ("default route deleted", |pod, _| {
            pod.exec_ok(&["ip", "route", "del", "default"]);
        }),
        ("address deleted", |pod, _| {
            pod.exec_ok(&["ip", "addr", "flush", "dev", IFNAME, "scope", "global"]);
        }),
    ];
    for (what, drift) in drifts {
        let (ok, out) = check_after(&ours(), &cni_path(), drift);
        assert!(!ok, "ours passed CHECK with {what}: {out}");
        assert!(
            out.contains("\"code\""),
            "ours failed CHECK without a CNI error: {out}"
        );
        for r in Reference::ALL {
            let (ok, out) = check_after(&r.bin("ptp"), &r.dir().display().to_string(), drift);
            assert!(!ok, "{r} passed CHECK with {what}: {out}");
        }
    }
}

#[test]
fn check_fails_when_the_host_route_to_the_pod_is_gone() {
    // Beyond the reference, which does not look at the host end.
    let (ok, out) = check_after(&ours(), &cni_path(), |_, node| {
        let routes = node.exec_ok(&["ip", "route", "show", "scope", "host"]);
        let line = routes.lines().next().expect("a host route to the pod");
        let mut args = vec!["ip", "route", "del"];
        args.extend(line.split_whitespace());
        node.exec_ok(&args);
    });
    assert!(!ok, "CHECK passed without the host route: {out}");
}
