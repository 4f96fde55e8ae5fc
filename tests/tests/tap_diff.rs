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

#[path = "bridge_support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::path::Path;
use support::*;
use twill_tests::bins::{self, Reference};
use twill_tests::exec::{Invocation, Outcome};
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
    add: Outcome,
    result: Value,
    raw_result: Value,
    pod: Value,
    check: Option<Outcome>,
    del: Outcome,
    pod_after: Vec<String>,
    leases_after: Vec<String>,
}

fn run_side(plugin: &Path, cni_path: &str, extra: &Value, setup: &dyn Fn(&Netns)) -> Side {
    let node = Node::new();
    let pod = Netns::new("tpp");
    setup(&pod);
    let conf = conf(&node, extra);
    let run = |cmd: &str, c: &Value| {
        let out = Invocation::new(plugin, cmd)
            .libcni_style()
            .container_id(Some(CID))
            .ifname(Some(IFNAME))
            .netns(Some(pod.path()))
            .cni_path(Some(cni_path))
            .stdin_json(c)
            .in_netns(node.ns.path())
            .run();
        out.assert_no_panic();
        out
    };
    let add = run("ADD", &conf);
    let result = add.json.clone().unwrap_or(Value::Null);
    let pod_v = if add.success() {
        pod_state(&pod, !conf["mac"].is_null())
    } else {
        Value::Null
    };
    let version = conf["cniVersion"].as_str().unwrap_or("1.0.0");
    let check = (add.success() && !matches!(version, "0.3.0" | "0.3.1")).then(|| {
        let mut c = conf.clone();
        c["prevResult"] = result.clone();
        run("CHECK", &c)
    });
    let mut del_conf = conf.clone();
    if add.success() {
        del_conf["prevResult"] = result.clone();
    }
    let del = run("DEL", &del_conf);
    Side {
        result: normalize_result(&result),
        raw_result: result,
        pod: pod_v,
        check,
        pod_after: links(&pod, &[])
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect(),
        leases_after: node.leases(NET),
        add,
        del,
    }
}

fn compare(ours: &Side, theirs: &Side, ignore: &[&str]) {
    assert_eq!(
        ours.add.success(),
        theirs.add.success(),
        "ADD outcome differs\n=== ours ===\n{}\n=== reference ===\n{}",
        ours.add.describe(),
        theirs.add.describe()
    );
    if !ours.add.success() {
        let (o, t) = (
            ours.add.json.clone().unwrap_or_default(),
            theirs.add.json.clone().unwrap_or_default(),
        );
        assert_eq!(o["code"], t["code"], "error code differs: {o} vs {t}");
        return;
    }
    assert_eq!(
        ours.pod["kind"], "tun",
        "snapshot missed the tap: {:#}",
        ours.pod
    );
    assert_eq!(ours.result, theirs.result, "result JSON differs");
    let (mut o, mut t) = (ours.pod.clone(), theirs.pod.clone());
    for key in ignore {
        o[*key] = Value::Null;
        t[*key] = Value::Null;
    }
    assert_eq!(o, t, "pod kernel state differs");
    let ok = |c: &Option<Outcome>| c.as_ref().map(|c| c.success());
    assert_eq!(ok(&ours.check), ok(&theirs.check), "CHECK outcome differs");
    if let Some(c) = &ours.check {
        assert!(
            c.success(),
            "CHECK right after ADD failed: {}",
            c.describe()
        );
    }
    for (who, s) in [("ours", ours), ("reference", theirs)] {
        assert!(s.del.success(), "{who}: DEL failed: {}", s.del.describe());
        assert!(
            s.pod_after.iter().all(|n| n != IFNAME),
            "{who}: tap left: {:?}",
            s.pod_after
        );
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
    assert_eq!(s.raw_result["interfaces"][0]["mac"], "02:11:22:33:44:55");
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
    assert_eq!(s.raw_result["interfaces"][0]["mac"], "02:11:22:33:44:66");
}

#[test]
fn same_as_reference_bridge_in_the_pod() {
    let setup = |pod: &Netns| {
        pod.ip(&["link", "add", "br0", "type", "bridge"]);
    };
    let s = differential_with(json!({"bridge": "br0"}), &[], &setup);
    assert_eq!(s.pod["master"], "br0");
    let s = differential_with(json!({"bridge": "nobr0"}), &[], &|_| {});
    assert!(!s.add.success());
}

#[test]
fn same_as_reference_without_ipam_dns_and_old_versions() {
    let s = differential(json!({"ipam": null}));
    assert!(s.raw_result.get("ips").is_none(), "{:#}", s.raw_result);
    differential(json!({"dns": {"nameservers": ["10.96.0.10"]}}));
    differential(json!({"cniVersion": "0.3.1"}));
    differential(json!({"cniVersion": "0.4.0"}));
}

#[test]
fn selinux_context_is_refused_without_selinux_like_the_reference() {
    let s = differential(json!({"selinuxContext": "system_u:system_r:container_t:s0"}));
    // On an SELinux host both create the tap under the label (not this machine's case).
    if !Path::new("/sys/fs/selinux/enforce").exists() {
        assert!(!s.add.success());
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
        std::thread::scope(|s| {
            for (i, pod) in pods.iter().enumerate() {
                let (node, c) = (&node, &c);
                s.spawn(move || {
                    node.run(
                        &ours(),
                        cmd,
                        Some(pod.path()),
                        &format!("par{i}"),
                        IFNAME,
                        c,
                    )
                    .assert_success();
                });
            }
        });
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
