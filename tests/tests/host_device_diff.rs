//! Differential test of the host-device plugin against the reference builds (Debian's 1.1.1 and upstream
//! v1.10.0): for each config, ours and each reference run on fresh nodes (see host_device_support) and pods,
//! and must produce the same result JSON, the same kernel state in the pod (name, MAC, MTU, alias, flags,
//! addresses, routes) and on the node (every link's name, MAC, MTU, alias and flags), the same CHECK
//! outcome, and a DEL that returns the device to the node under its name and leaves nothing in the pod.
//! Error texts are compared with v1.10 for every way of naming the device. Ours-only behaviour is in
//! host_device.rs.
//!
//! Not testable here: DPDK-bound PCI devices and auxiliary-bus devices (no such hardware), and a successful
//! `pciBusID` move (the only PCI NIC is the machine's own uplink).

#[path = "diff_support/mod.rs"]
mod diff_support;
#[path = "host_device_support/mod.rs"]
mod support;

use diff_support::{add_check_del_seeing, Twin, Verbs};
use serde_json::{json, Value};
use std::path::Path;
use support::*;
use twill_tests::bins::{self, Reference};
use twill_tests::exec::Invocation;
use twill_tests::netns::Netns;

struct Side {
    verbs: Verbs,
    pod: Value,
    node: Value,
    pod_links_after: Vec<String>,
    node_after: Vec<Value>,
    leases_after: Vec<String>,
}

fn run_side(plugin: &Path, cni_path: &str, extra: &Value, setup: &dyn Fn(&Node)) -> Side {
    let twin = Twin::on(node(), "hdp");
    setup(&twin.node);
    let conf = conf(&twin.node, extra);
    let run = |verb: &str, c: &Value| twin.run(plugin, cni_path, verb, (CID, IFNAME), c);
    let (verbs, (pod, node)) = add_check_del_seeing(&conf, run, |added, _| {
        let pod = if added {
            pod_state(&twin.pod)
        } else {
            Value::Null
        };
        (pod, json!(link_state(&twin.node.ns)))
    });
    Side {
        verbs,
        pod,
        node,
        pod_links_after: twin.pod_links(),
        node_after: link_state(&twin.node.ns),
        leases_after: twin.node.leases(NET),
    }
}

fn compare(ours: &Side, theirs: &Side, r: Reference) {
    let (o, t) = (&ours.verbs, &theirs.verbs);
    o.assert_same_add(t, r);
    if !o.add_ok {
        if r == Reference::Current {
            o.assert_same_error(t, r, &["code", "msg"]);
        }
        assert_eq!(
            ours.node, theirs.node,
            "node state after a failed ADD differs"
        );
        return;
    }
    assert_eq!(ours.pod, theirs.pod, "pod kernel state differs from {r}");
    assert_eq!(ours.node, theirs.node, "node kernel state differs from {r}");
    // 1.1.1's CHECK wants a route's recorded gateway to be absent in the kernel too, and so fails every
    // IPAM route without `gw`; v1.10's looks for every route in the main table only, and so fails its
    // own result when `useInterfaceNetwork` copied a route of another table. Ours checks each route in
    // its table.
    let other_table = o.raw_result["routes"].as_array().is_some_and(|rs| {
        rs.iter()
            .any(|r| !r["table"].is_null() && r["table"] != 254)
    });
    if r == Reference::Current && !other_table {
        o.assert_same_check(t, r);
    } else {
        o.assert_check_passed();
    }
    for (who, s) in [("ours", ours), (&*r.to_string(), theirs)] {
        s.verbs.assert_deleted(who, &s.pod_links_after);
        assert!(s.leases_after.is_empty(), "{who}: lease left");
    }
    let mut their_after = theirs.node_after.clone();
    if r == Reference::Debian {
        // 1.1.1 leaves the alias on the returned device; v1.10 (and ours) clear it.
        for l in &mut their_after {
            l[3] = Value::Null;
        }
    }
    assert_eq!(
        ours.node_after, their_after,
        "node after DEL differs from {r}"
    );
}

fn differential_with(extra: Value, refs: &[Reference], setup: &dyn Fn(&Node)) -> Side {
    bins::require_root();
    let ours = run_side(&ours(), &cni_path(), &extra, setup);
    for &r in refs {
        let dir = r.dir().display().to_string();
        let theirs = run_side(&r.bin("host-device"), &dir, &extra, setup);
        compare(&ours, &theirs, r);
    }
    ours
}

fn differential(extra: Value) -> Side {
    differential_with(extra, &Reference::ALL, &|_| {})
}

/// The device as it is back on the node after DEL: its name, MAC and MTU, no alias, down.
fn assert_returned(s: &Side) {
    let hd0 = s
        .node_after
        .iter()
        .find(|l| l[0] == DEV)
        .unwrap_or_else(|| panic!("{DEV} not back on the node: {:?}", s.node_after));
    assert_eq!(hd0[1], DEV_MAC);
    assert_eq!(hd0[2], 1400);
    assert!(hd0[3].is_null(), "alias left: {hd0}");
}

#[test]
fn same_as_reference_by_device_name() {
    let s = differential(json!({}));
    assert_eq!(s.verbs.raw_result["interfaces"][0]["mac"], DEV_MAC);
    let net1 = s.pod["links"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l[0] == IFNAME))
        .cloned();
    assert_eq!(
        net1.map(|l| l[3].clone()),
        Some(json!(DEV)),
        "alias in the pod"
    );
    assert_returned(&s);
}

#[test]
fn same_as_reference_by_hwaddr() {
    let s = differential(json!({"device": null, "hwaddr": DEV_MAC}));
    assert!(s.verbs.add_ok, "{}", s.verbs.add_out);
    let s = differential(json!({"device": null, "hwaddr": "02-4D-00-00-00-01"}));
    assert!(s.verbs.add_ok, "{}", s.verbs.add_out);
}

#[test]
fn same_as_reference_without_ipam_with_dns_and_old_versions() {
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
fn same_as_reference_use_interface_network() {
    let setup = |node: &Node| {
        let ns = &node.ns;
        ns.ip(&["addr", "add", "10.90.0.5/24", "dev", DEV]);
        ns.ip(&["addr", "add", "fd00:90::5/64", "dev", DEV, "nodad"]);
        ns.ip(&[
            "route",
            "add",
            "10.91.0.0/16",
            "via",
            "10.90.0.1",
            "metric",
            "50",
        ]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "10.90.0.1",
            "table",
            "100",
        ]);
        ns.ip(&["rule", "add", "from", "10.90.0.5", "table", "100"]);
        ns.ip(&["route", "add", "fd00:91::/64", "via", "fd00:90::1"]);
    };
    let s = differential_with(
        json!({"ipam": null, "useInterfaceNetwork": true}),
        &[Reference::Current],
        &setup,
    );
    assert_eq!(
        s.verbs.raw_result["ips"].as_array().map(Vec::len),
        Some(2),
        "{:#}",
        s.verbs.raw_result
    );
    differential_with(
        json!({"useInterfaceNetwork": true}),
        &[Reference::Current],
        &setup,
    );
}

#[test]
fn same_errors_as_reference_for_every_way_of_naming_the_device() {
    let mut rows = vec![
        json!({"device": "nope0"}),
        json!({"device": null, "hwaddr": "zz"}),
        json!({"device": null, "hwaddr": "02:4d:00:00:00:99"}),
        json!({"device": null, "kernelpath": "/sys/devices/virtual/net/hd0"}),
        json!({"device": null, "kernelpath": "/etc"}),
        json!({"device": null, "pciBusID": "0000:99:00.0"}),
        json!({"device": null, "runtimeConfig": {"deviceID": "nope"}}),
        json!({"device": null}),
    ];
    // PCI devices as this machine has them: one without a driver or a netdev, and a virtio NIC (whose
    // netdev is not in the test node, so nothing is moved).
    for dev in std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = dev.file_name().to_string_lossy().into_owned();
        rows.push(json!({"device": null, "pciBusID": name.clone()}));
        rows.push(json!({"device": null, "runtimeConfig": {"deviceID": name}}));
    }
    for extra in rows {
        let s = differential_with(extra.clone(), &[Reference::Current], &|_| {});
        assert!(!s.verbs.add_ok, "{extra}: {}", s.verbs.add_out);
    }
}

#[test]
fn same_as_reference_by_kernelpath_with_the_nodes_sysfs() {
    bins::require_root();
    // `ip netns exec` mounts the node's own sysfs, where /sys/devices/virtual/net lists its devices in
    // name order: `hd0` first.
    let run = |plugin: &Path, cni_path: &str| {
        let node = node();
        let pod = Netns::new("hdp");
        let c = conf(
            &node,
            &json!({"device": null, "kernelpath": "/sys/devices/virtual"}),
        );
        let exec = |cmd: &str, c: &Value| {
            let plugin = plugin.display().to_string();
            Invocation::new("ip", cmd)
                .argv(&["netns", "exec", node.ns.name(), &plugin])
                .libcni_style()
                .container_id(Some(CID))
                .ifname(Some(IFNAME))
                .netns(Some(pod.path()))
                .cni_path(Some(cni_path))
                .stdin_json(c)
                .run()
        };
        let add = exec("ADD", &c);
        let state = pod_state(&pod);
        let del = exec("DEL", &c);
        del.assert_success();
        (
            normalize_result(&add.assert_success()),
            state,
            link_state(&node.ns),
        )
    };
    let r = Reference::Current;
    let ours = run(&ours(), &cni_path());
    let theirs = run(&r.bin("host-device"), &r.dir().display().to_string());
    assert_eq!(ours, theirs);
    assert!(ours.1["links"].to_string().contains(IFNAME), "{:#}", ours.1);
}
