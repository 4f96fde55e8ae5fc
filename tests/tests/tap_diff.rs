//! Differential test of the tap plugin against the reference v1.10.0 (Debian's 1.1.1 has no tap): for each
//! config, ours and the reference run on fresh nodes and pods with the same container id, ifname and IPAM
//! range, and must produce the same result JSON, the same kernel state in the pod (kind, tun type, flags
//! pi/vnet_hdr/multi_queue/persist, owner, group, MTU, MAC when set, master, addresses, routes), the same
//! CHECK outcome, and a DEL that leaves nothing. Random MACs are ignored unless set. Ours only: the
//! configured owner or group really attaches without privileges (`twill-tun-attach`), a taken name is never
//! taken over, rollback, DEL without the netns, parallel attachments.
//!
//! Where ours differs on purpose: with both `owner` and `group` the reference ignores `mtu` and `mac` (its
//! netlink path never applies them); ours applies them. `selinuxContext` cannot succeed here (no SELinux
//! on this kernel): both refuse it. macvtap is not what the reference's tap makes, so it is not tested.

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

const CID: &str = "tap-diff";
const IFNAME: &str = "tap0";
const NET: &str = "tapnet";

fn ours() -> std::path::PathBuf {
    bins::bin("tap")
}

fn conf(node: &Node, extra: &Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "tap",
        "ipam": node.ipam(json!([[{"subnet": "10.71.0.0/24", "gateway": "10.71.0.1"}]])),
    });
    c["ipam"]["routes"] = json!([{"dst": "10.81.0.0/16"}]);
    merge(&mut c, extra.clone());
    c
}

fn pod_state(pod: &Netns, mac_set: bool) -> Value {
    let l = links(pod, &["dev", IFNAME])
        .into_iter()
        .next()
        .unwrap_or(Value::Null);
    let mut info = l["linkinfo"].clone();
    // Queue counts of a multi-queue tap are the attached fds': none here.
    json!({
        "kind": info["info_kind"].take(),
        "data": info["info_data"].take(),
        "mtu": l["mtu"],
        "mac": if mac_set { l["address"].clone() } else { Value::Null },
        "flags": l["flags"],
        "master": l["master"],
        "addresses": addresses(pod, IFNAME),
        "routes": routes(pod),
        "arp_notify": sysctl(pod, &format!("net/ipv4/conf/{IFNAME}/arp_notify")),
    })
}

struct Side {
    verbs: Verbs,
    pod: Value,
    pod_links_after: Vec<String>,
    leases_after: Vec<String>,
}

fn run_side(plugin: &Path, cni_path: &str, extra: &Value, setup: &dyn Fn(&Netns)) -> Side {
    let twin = Twin::new("tpp");
    setup(&twin.pod);
    let conf = conf(&twin.node, extra);
    let mac_set = !conf["mac"].is_null();
    let run = |verb: &str, c: &Value| twin.run(plugin, cni_path, verb, (CID, IFNAME), c);
    let (verbs, pod) = add_check_del(&conf, run, |_| pod_state(&twin.pod, mac_set));
    Side {
        verbs,
        pod: pod.unwrap_or(Value::Null),
        pod_links_after: twin.pod_links(),
        leases_after: twin.node.leases(NET),
    }
}

fn compare(ours: &Side, theirs: &Side, ignore: &[&str]) {
    let r = Reference::Current;
    let (o, t) = (&ours.verbs, &theirs.verbs);
    o.assert_same_add(t, r);
    if !o.add_ok {
        o.assert_same_error(t, r, &["code"]);
        return;
    }
    assert_eq!(
        ours.pod["kind"], "tun",
        "snapshot missed the tap: {:#}",
        ours.pod
    );
    let (mut op, mut tp) = (ours.pod.clone(), theirs.pod.clone());
    for key in ignore {
        op[*key] = Value::Null;
        tp[*key] = Value::Null;
    }
    assert_eq!(op, tp, "pod kernel state differs");
    o.assert_same_check(t, r);
    for (who, s) in [("ours", ours), ("reference", theirs)] {
        s.verbs.assert_removed(who, &s.pod_links_after, IFNAME);
        assert!(s.leases_after.is_empty(), "{who}: lease left");
    }
}

fn differential_with(extra: Value, ignore: &[&str], setup: &dyn Fn(&Netns)) -> Side {
    bins::require_root();
    let r = Reference::Current;
    let ours = run_side(&ours(), &cni_path(), &extra, setup);
    let theirs = run_side(&r.bin("tap"), &r.dir().display().to_string(), &extra, setup);
    compare(&ours, &theirs, ignore);
    ours
}

fn differential(extra: Value) -> Side {
    differential_with(extra, &[], &|_| {})
}

#[test]
fn same_as_reference_defaults() {
    let s = differential(json!({}));
    assert_eq!(s.pod["data"]["type"], "tap");
    assert_eq!(s.pod["data"]["persist"], true);
}

#[test]
fn same_as_reference_mtu_mac_multi_queue_and_one_owner() {
    let s = differential(json!({"mtu": 1400, "mac": "02:11:22:33:44:55"}));
    assert_eq!(s.pod["mtu"], 1400);
    assert_eq!(
        s.verbs.raw_result["interfaces"][0]["mac"],
        "02:11:22:33:44:55"
    );
    let s = differential(json!({"multiQueue": true, "owner": 1000}));
    assert_eq!(s.pod["data"]["multi_queue"], true);
    differential(json!({"group": 1000}));
}

#[test]
fn same_as_reference_owner_and_group_except_mtu_and_mac_which_ours_applies() {
    let s = differential(json!({"owner": 1000, "group": 1000}));
    assert_eq!(s.pod["data"]["vnet_hdr"], true);
    let s = differential(json!({"owner": 1000, "group": 1000, "multiQueue": true}));
    assert_eq!(s.pod["data"]["pi"], false);
    let s = differential_with(
        json!({"owner": 0, "group": 0, "mtu": 1400, "mac": "02:11:22:33:44:66"}),
        &["mtu", "mac"],
        &|_| {},
    );
    assert_eq!(s.pod["mtu"], 1400);
    assert_eq!(s.pod["mac"], "02:11:22:33:44:66");
}

#[test]
fn same_as_reference_mac_from_runtime_config_and_args() {
    let s = differential(json!({"mac": "02:11:22:33:44:55",
        "runtimeConfig": {"mac": "02:11:22:33:44:66"}}));
    assert_eq!(
        s.verbs.raw_result["interfaces"][0]["mac"],
        "02:11:22:33:44:66"
    );
}

#[test]
fn same_as_reference_bridge_in_the_pod() {
    let setup = |pod: &Netns| {
        pod.ip(&["link", "add", "br0", "type", "bridge"]);
    };
    let s = differential_with(json!({"bridge": "br0"}), &[], &setup);
    assert_eq!(s.pod["master"], "br0");
    let s = differential_with(json!({"bridge": "nobr0"}), &[], &|_| {});
    assert!(!s.verbs.add_ok);
}

#[test]
fn same_as_reference_without_ipam_dns_and_old_versions() {
    let s = differential(json!({"ipam": null}));
    assert!(
        s.verbs.raw_result.get("ips").is_none(),
        "{:#}",
        s.verbs.raw_result
    );
    differential(json!({"dns": {"nameservers": ["10.96.0.10"]}}));
    differential(json!({"cniVersion": "0.3.1"}));
    differential(json!({"cniVersion": "0.4.0"}));
}

#[test]
fn selinux_context_is_refused_without_selinux_like_the_reference() {
    let s = differential(json!({"selinuxContext": "system_u:system_r:container_t:s0"}));
    // On an SELinux host both create the tap under the label (not this machine's case).
    if !Path::new("/sys/fs/selinux/enforce").exists() {
        assert!(!s.verbs.add_ok);
    }
}

#[test]
fn add_with_a_taken_name_fails_and_keeps_the_existing_device() {
    bins::require_root();
    let node = Node::new();
    let pod = Netns::new("tpp");
    pod.ip(&["link", "add", IFNAME, "type", "bridge"]);
    let before = links(&pod, &[]);
    let c = conf(&node, &json!({}));
    node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_any_error();
    assert_eq!(links(&pod, &[]), before);
    assert!(node.leases(NET).is_empty());
    // An existing tap is not attached to either.
    let pod = Netns::new("tpp");
    pod.ip(&["tuntap", "add", "mode", "tap", "name", IFNAME]);
    node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_any_error();
    assert_eq!(links(&pod, &["dev", IFNAME]).len(), 1);
}

#[test]
fn failed_add_rolls_back_and_del_succeeds_without_the_netns() {
    bins::require_root();
    let node = Node::new();
    let one = json!({"ipam": {"ranges": [[{"subnet": "10.71.0.0/24", "rangeStart": "10.71.0.9",
        "rangeEnd": "10.71.0.9"}]]}});
    let c = conf(&node, &one);
    let first = Netns::new("tpp");
    node.run(&ours(), "ADD", Some(first.path()), "first", IFNAME, &c)
        .assert_success();
    let pod = Netns::new("tpp");
    node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_any_error();
    assert!(links(&pod, &["dev", IFNAME]).is_empty(), "tap left");
    let path = first.path().to_path_buf();
    drop(first);
    node.run(&ours(), "DEL", Some(&path), "first", IFNAME, &c)
        .assert_success();
    node.run(&ours(), "DEL", None, "first", IFNAME, &c)
        .assert_success();
    assert!(node.leases(NET).is_empty());
}

#[test]
fn parallel_adds_and_dels() {
    bins::require_root();
    let node = Node::new();
    let c = conf(&node, &json!({"multiQueue": true}));
    let pods: Vec<Netns> = (0..8).map(|_| Netns::new("tpp")).collect();
    for cmd in ["ADD", "DEL"] {
        node.run_parallel(&ours(), cmd, &pods, "par", IFNAME, &c);
        for pod in &pods {
            let present = !links(pod, &["dev", IFNAME]).is_empty();
            assert_eq!(present, cmd == "ADD");
        }
    }
    assert!(node.leases(NET).is_empty());
}

/// Runs the attach helper inside `pod` as `uid`/`gid` without any capability, as an unprivileged VM
/// monitor would.
fn attach_as(pod: &Netns, uid: u32, gid: u32, multi_queue: bool) -> std::process::Output {
    let helper = bins::bin("twill-tun-attach").display().to_string();
    let (uid, gid) = (uid.to_string(), gid.to_string());
    let mut cmd = vec![helper.as_str(), IFNAME, uid.as_str(), gid.as_str()];
    if multi_queue {
        cmd.push("multi_queue");
    }
    pod.exec(&cmd)
}

#[test]
fn the_owner_and_group_attach_without_privileges_and_others_do_not() {
    bins::require_root();
    let node = Node::new();
    for (extra, multi_queue) in [
        (json!({"owner": 1000, "ipam": null}), false),
        (
            json!({"group": 1000, "multiQueue": true, "ipam": null}),
            true,
        ),
        (json!({"owner": 1000, "group": 1000, "ipam": null}), false),
    ] {
        let pod = Netns::new("tpp");
        let c = conf(&node, &extra);
        node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
            .assert_success();
        let allowed = attach_as(&pod, 1000, 1000, multi_queue);
        assert!(
            allowed.status.success(),
            "{extra}: uid/gid 1000 cannot attach: {}",
            String::from_utf8_lossy(&allowed.stderr)
        );
        let denied = attach_as(&pod, 1001, 1001, multi_queue);
        assert!(!denied.status.success(), "{extra}: uid/gid 1001 attached");
        node.run(&ours(), "DEL", Some(pod.path()), CID, IFNAME, &c)
            .assert_success();
    }
}
