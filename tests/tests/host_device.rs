//! The host-device plugin's own guarantees beyond the reference's: DEL is idempotent and succeeds without
//! the netns (giving a device the kernel returned its name back), a failed ADD returns the device as it
//! was, either implementation returns what the other moved, parallel attachments, CHECK's errors, GC and
//! STATUS.

#[path = "host_device_support/mod.rs"]
mod support;

use serde_json::{json, Value};
use support::*;
use twill_tests::bins::{self, Reference};
use twill_tests::netns::Netns;

#[test]
fn del_is_idempotent_and_succeeds_without_the_netns() {
    bins::require_root();
    let node = node();
    let pod = Netns::new("hdp");
    let c = conf(&node, &json!({}));
    node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_success();
    for _ in 0..2 {
        node.run(&ours(), "DEL", Some(pod.path()), CID, IFNAME, &c)
            .assert_success();
    }
    node.run(&ours(), "DEL", None, CID, IFNAME, &c)
        .assert_success();
    assert!(node.ns.link_flags(DEV).is_some(), "{DEV} not back");
    // A virtual device is destroyed with its pod's namespace: DEL then has nothing to return.
    node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_success();
    let path = pod.path().to_path_buf();
    drop(pod);
    node.run(&ours(), "DEL", Some(&path), CID, IFNAME, &c)
        .assert_success();
    assert!(node.leases(NET).is_empty());
}

#[test]
fn del_without_the_netns_gives_a_device_the_kernel_returned_its_name_back() {
    bins::require_root();
    let node = node();
    let pod = Netns::new("hdp");
    let c = conf(&node, &json!({"ipam": null}));
    let result = node
        .run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_success();
    // What the kernel does with a physical device when its pod's namespace is destroyed (a veth would be
    // destroyed instead): back to the initial namespace, down, under its pod-side name, alias kept. The
    // test node stands for the initial namespace.
    pod.ip(&["link", "set", IFNAME, "down"]);
    pod.ip(&["link", "set", IFNAME, "netns", &node.ns.path_str()]);
    let path = pod.path().to_path_buf();
    drop(pod);
    let mut d = c.clone();
    d["prevResult"] = result;
    node.run(&ours(), "DEL", Some(&path), CID, IFNAME, &d)
        .assert_success();
    let hd0 = links(&node.ns, &["dev", DEV]);
    assert_eq!(
        hd0.len(),
        1,
        "{DEV} not renamed back: {:?}",
        link_state(&node.ns)
    );
    assert!(hd0[0]["ifalias"].is_null(), "alias left: {}", hd0[0]);
    assert_eq!(hd0[0]["address"], DEV_MAC);
}

#[test]
fn failed_add_returns_the_device_to_the_node_as_it_was() {
    bins::require_root();
    let node = node();
    // The range's only address is taken by a first pod, so IPAM fails after the move.
    let one = json!({"ipam": {"ranges": [[{"subnet": "10.70.0.0/24", "rangeStart": "10.70.0.9",
        "rangeEnd": "10.70.0.9"}]]}});
    let c = conf(&node, &one);
    add_device(&node.ns, "hd1", "02:4d:00:00:00:02");
    let first = Netns::new("hdp");
    let mut c1 = c.clone();
    c1["device"] = json!("hd1");
    node.run(&ours(), "ADD", Some(first.path()), "first", IFNAME, &c1)
        .assert_success();
    let before = link_state(&node.ns);
    let pod = Netns::new("hdp");
    node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_any_error();
    assert_eq!(link_state(&node.ns), before, "node changed");
    assert_eq!(link_state(&pod).len(), 1, "pod keeps a link");
    // A taken interface name in the pod fails before anything moves.
    let other = Netns::new("hdp");
    other.ip(&["link", "add", IFNAME, "type", "veth", "peer", "name", "x0"]);
    node.run(
        &ours(),
        "ADD",
        Some(other.path()),
        CID,
        IFNAME,
        &conf(&node, &json!({"ipam": null})),
    )
    .assert_any_error();
    assert_eq!(link_state(&node.ns), before, "node changed");
    node.run(&ours(), "DEL", Some(first.path()), "first", IFNAME, &c1)
        .assert_success();
}

#[test]
fn either_implementation_returns_what_the_other_moved() {
    bins::require_root();
    let theirs = Reference::Current.bin("host-device");
    for (adder, deleter) in [(ours(), theirs.clone()), (theirs, ours())] {
        let node = node();
        let pod = Netns::new("hdp");
        let c = conf(&node, &json!({"ipam": null}));
        let before = link_state(&node.ns);
        node.run(&adder, "ADD", Some(pod.path()), CID, IFNAME, &c)
            .assert_success();
        node.run(&deleter, "DEL", Some(pod.path()), CID, IFNAME, &c)
            .assert_success();
        let mut after = link_state(&node.ns);
        // Both leave the returned device down.
        for l in &mut after {
            l[4] = Value::Null;
        }
        let mut before = before.clone();
        for l in &mut before {
            l[4] = Value::Null;
        }
        assert_eq!(after, before);
    }
}

#[test]
fn parallel_adds_and_dels_move_each_device_once() {
    bins::require_root();
    let node = node();
    let n = 6;
    for i in 1..n {
        add_device(
            &node.ns,
            &format!("hd{i}"),
            &format!("02:4d:00:00:01:{i:02x}"),
        );
    }
    let before = link_state(&node.ns);
    let pods: Vec<Netns> = (0..n).map(|_| Netns::new("hdp")).collect();
    let confs: Vec<Value> = (0..n)
        .map(|i| conf(&node, &json!({"device": format!("hd{i}")})))
        .collect();
    for cmd in ["ADD", "DEL"] {
        std::thread::scope(|s| {
            for (i, pod) in pods.iter().enumerate() {
                let (node, c) = (&node, &confs[i]);
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
        if cmd == "ADD" {
            for (i, pod) in pods.iter().enumerate() {
                let l = links(pod, &["dev", IFNAME]);
                assert_eq!(l[0]["ifalias"], format!("hd{i}"), "pod {i}");
            }
        }
    }
    let strip = |v: Vec<Value>| -> Vec<Value> {
        v.into_iter()
            .map(|mut l| {
                l[4] = Value::Null;
                l
            })
            .collect()
    };
    assert_eq!(strip(link_state(&node.ns)), strip(before));
    assert!(node.leases(NET).is_empty());
}

#[test]
fn check_fails_like_the_reference_when_the_device_changed() {
    bins::require_root();
    let theirs = Reference::Current.bin("host-device");
    let node = node();
    let pod = Netns::new("hdp");
    let c = conf(&node, &json!({}));
    let result = node
        .run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_success();
    let mut check = c.clone();
    check["prevResult"] = result;
    pod.ip(&["link", "set", IFNAME, "address", "02:4d:00:00:00:77"]);
    let mut msgs = Vec::new();
    for plugin in [ours(), theirs.clone()] {
        let out = node.run(&plugin, "CHECK", Some(pod.path()), CID, IFNAME, &check);
        msgs.push(out.assert_error(999)["msg"].clone());
    }
    assert_eq!(msgs[0], msgs[1]);
    pod.ip(&["link", "set", IFNAME, "address", DEV_MAC]);
    pod.ip(&["addr", "flush", "dev", IFNAME]);
    let mut msgs = Vec::new();
    for plugin in [ours(), theirs] {
        let out = node.run(&plugin, "CHECK", Some(pod.path()), CID, IFNAME, &check);
        msgs.push(out.assert_error(999)["msg"].clone());
    }
    assert_eq!(msgs[0], msgs[1]);
    node.run(&ours(), "DEL", Some(pod.path()), CID, IFNAME, &c)
        .assert_success();
}

#[test]
fn gc_and_status_go_to_ipam() {
    bins::require_root();
    let node = node();
    add_device(&node.ns, "hd1", "02:4d:00:00:00:02");
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("hdp")).collect();
    let mut ips = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let c = conf(
            &node,
            &json!({"cniVersion": "1.1.0", "device": format!("hd{i}")}),
        );
        let r = node
            .run(
                &ours(),
                "ADD",
                Some(pod.path()),
                &format!("gc{i}"),
                IFNAME,
                &c,
            )
            .assert_success();
        ips.push(result_ip(&r, false));
    }
    let mut c = conf(&node, &json!({"cniVersion": "1.1.0"}));
    c["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": IFNAME}]);
    node.run(&ours(), "GC", None, "", IFNAME, &c)
        .assert_success();
    assert_eq!(node.leases(NET), vec![ips[0].clone()]);
    node.run(&ours(), "STATUS", None, "", IFNAME, &c)
        .assert_success();
}

#[test]
fn del_fails_and_keeps_the_device_in_the_pod_when_its_node_name_is_taken() {
    bins::require_root();
    let node = node();
    let pod = Netns::new("hdp");
    let c = conf(&node, &json!({"ipam": null}));
    node.run(&ours(), "ADD", Some(pod.path()), CID, IFNAME, &c)
        .assert_success();
    let in_pod = link_state(&pod);
    node.ns
        .ip(&["link", "add", DEV, "type", "veth", "peer", "name", "blk0"]);
    node.run(&ours(), "DEL", Some(pod.path()), CID, IFNAME, &c)
        .assert_error(999);
    assert_eq!(link_state(&pod), in_pod, "the pod's device changed");
    node.ns.ip(&["link", "del", DEV]);
    node.run(&ours(), "DEL", Some(pod.path()), CID, IFNAME, &c)
        .assert_success();
    assert_eq!(links(&node.ns, &["dev", DEV])[0]["address"], DEV_MAC);
}
