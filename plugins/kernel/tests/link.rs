mod common;

use std::sync::{Arc, Barrier};

use common::TestNs;
use twill_kernel::{
    BridgePortFlags, BridgeSpec, BridgeVlan, LinkChange, MacAddr, VethOptions, VethSpec, VlanOn,
    VxlanSpec,
};

fn ip_link(t: &TestNs, name: &str) -> serde_json::Value {
    t.ip_json(&["link", "show", "dev", name])[0].clone()
}

#[test]
fn veth_peer_is_created_directly_in_the_other_netns() {
    let node = TestNs::new();
    let pod = TestNs::new();
    let mac: MacAddr = "0a:58:0a:f4:01:02".parse().unwrap();
    let veth = node
        .handle
        .create_veth(&VethSpec {
            name: "vethtest0".into(),
            peer_name: "eth0".into(),
            peer_netns: Some(&pod.ns),
            mtu: Some(1450),
            peer_mac: Some(mac),
            up: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(veth.name, "vethtest0");
    assert_eq!(veth.kind.as_deref(), Some("veth"));
    assert_eq!(veth.mtu, 1450);
    assert!(veth.up);
    assert!(
        veth.link_netnsid.is_some(),
        "peer lives in another namespace"
    );

    let eth0 = pod.handle.link_by_name("eth0").unwrap();
    assert_eq!(Some(eth0.index), veth.peer_index);
    assert_eq!(eth0.mac, Some(mac));
    assert_eq!(eth0.mtu, 1450);
    assert!(!eth0.up);
    pod.handle.set_link_up(eth0.index).unwrap();
    assert!(pod.handle.link_by_index(eth0.index).unwrap().up);
    assert!(node.handle.link_by_name("eth0").unwrap_err().is_not_found());

    let j = ip_link(&pod, "eth0");
    assert_eq!(j["address"], "0a:58:0a:f4:01:02");
    assert_eq!(j["mtu"], 1450);
    assert_eq!(j["linkinfo"]["info_kind"], "veth");
    let j = ip_link(&node, "vethtest0");
    assert_eq!(j["ifindex"], veth.index);

    // Deleting one end removes both.
    node.handle.delete_link(veth.index).unwrap();
    assert!(pod.handle.link_by_name("eth0").unwrap_err().is_not_found());
}

#[test]
fn veth_created_enslaved_with_one_queue_per_end() {
    let node = TestNs::new();
    let pod = TestNs::new();
    let br = node
        .handle
        .create_bridge(&BridgeSpec {
            name: "brq0".into(),
            up: true,
            ..Default::default()
        })
        .unwrap();
    let opts = VethOptions {
        master: Some(br.index),
        single_queue: true,
    };
    let spec = VethSpec {
        name: "vethq0".into(),
        peer_name: "eth0".into(),
        peer_netns: Some(&pod.ns),
        up: true,
        ..Default::default()
    };
    let veth = node.handle.create_veth_with(&spec, &opts).unwrap();
    assert_eq!(
        node.handle.link_by_index(veth.index).unwrap().master,
        Some(br.index)
    );
    let host = ip_link(&node, "vethq0");
    assert_eq!(host["master"], "brq0");
    assert_eq!(host["num_tx_queues"], 1);
    assert_eq!(host["num_rx_queues"], 1);
    let peer = ip_link(&pod, "eth0");
    assert_eq!(peer["num_tx_queues"], 1);
    assert_eq!(peer["num_rx_queues"], 1);

    // A master that does not exist fails the whole request: no half-made pair is left behind.
    let spec = VethSpec {
        name: "vethq1".into(),
        peer_name: "eth1".into(),
        peer_netns: Some(&pod.ns),
        up: true,
        ..Default::default()
    };
    let bad = VethOptions {
        master: Some(999_999),
        single_queue: true,
    };
    assert!(node.handle.create_veth_with(&spec, &bad).is_err());
    assert!(node
        .handle
        .link_by_name("vethq1")
        .unwrap_err()
        .is_not_found());
    assert!(pod.handle.link_by_name("eth1").unwrap_err().is_not_found());
}

#[test]
fn veth_in_same_namespace_and_name_clash_is_exists() {
    let t = TestNs::new();
    let spec = VethSpec {
        name: "va".into(),
        peer_name: "vb".into(),
        ..Default::default()
    };
    let a = t.handle.create_veth(&spec).unwrap();
    let b = t.handle.link_by_name("vb").unwrap();
    assert_eq!(a.peer_index, Some(b.index));
    assert_eq!(b.peer_index, Some(a.index));
    assert!(!a.up);
    let err = t.handle.create_veth(&spec).unwrap_err();
    assert!(err.is_exists(), "{err}");
}

#[test]
fn bridge_create_race_all_succeed() {
    let t = Arc::new(TestNs::new());
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let t = t.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Each thread has its own socket, like separate plugin processes.
                let h = twill_kernel::Handle::in_netns(&t.ns).unwrap();
                barrier.wait();
                h.create_bridge(&BridgeSpec {
                    name: "cni0".into(),
                    mtu: Some(1400),
                    up: true,
                    ..Default::default()
                })
                .unwrap()
            })
        })
        .collect();
    let links: Vec<_> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    let index = links[0].index;
    assert!(links
        .iter()
        .all(|l| l.index == index && l.kind.as_deref() == Some("bridge")));
    let bridges = t
        .handle
        .links()
        .unwrap()
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .count();
    assert_eq!(bridges, 1);
    assert_eq!(ip_link(&t, "cni0")["mtu"], 1400);
}

#[test]
fn create_bridge_over_a_non_bridge_fails_clearly() {
    let t = TestNs::new();
    t.ip(&[
        "link", "add", "cni0", "type", "veth", "peer", "name", "cni0p",
    ]);
    let err = t
        .handle
        .create_bridge(&BridgeSpec {
            name: "cni0".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.is_exists());
    let msg = err.to_string();
    assert!(msg.contains("create bridge cni0"), "{msg}");
    assert!(msg.contains("is a veth, not a bridge"), "{msg}");
    assert!(msg.contains(&t.path()), "{msg}");
}

#[test]
fn link_attributes_can_be_set() {
    let t = TestNs::new();
    let br = t
        .handle
        .create_bridge(&BridgeSpec {
            name: "br0".into(),
            ..Default::default()
        })
        .unwrap();
    assert!(!br.up);
    assert_eq!(br.vlan_filtering, Some(false));
    let v = t
        .handle
        .create_veth(&VethSpec {
            name: "v0".into(),
            peer_name: "v0p".into(),
            ..Default::default()
        })
        .unwrap();
    let h = &t.handle;
    h.set_link_up(br.index).unwrap();
    h.set_link_up(v.index).unwrap();
    h.set_link_mtu(v.index, 1300).unwrap();
    let mac: MacAddr = "02:00:00:00:00:42".parse().unwrap();
    h.set_link_mac(v.index, mac).unwrap();
    h.set_link_promisc(br.index, true).unwrap();
    h.set_link_master(v.index, Some(br.index)).unwrap();

    let got = h.link_by_index(v.index).unwrap();
    assert!(got.up);
    assert_eq!(got.mtu, 1300);
    assert_eq!(got.mac, Some(mac));
    assert_eq!(got.master, Some(br.index));
    assert_eq!(got.bridge_port, Some(Default::default()));
    assert!(h.link_by_index(br.index).unwrap().promisc);
    let j = ip_link(&t, "v0");
    assert_eq!(j["master"], "br0");
    assert_eq!(j["mtu"], 1300);
    assert!(j["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert!(ip_link(&t, "br0")["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "PROMISC"));

    h.set_link_promisc(br.index, false).unwrap();
    h.set_link_master(v.index, None).unwrap();
    h.set_link_down(v.index).unwrap();
    let got = h.link_by_index(v.index).unwrap();
    assert_eq!(got.master, None);
    assert!(!got.up);
    assert!(!h.link_by_index(br.index).unwrap().promisc);
}

#[test]
fn several_attributes_change_in_one_request_and_are_reported() {
    let t = TestNs::new();
    let v = t
        .handle
        .create_veth(&VethSpec {
            name: "v0".into(),
            peer_name: "v0p".into(),
            ..Default::default()
        })
        .unwrap();
    let h = &t.handle;
    let before = h.link_by_index(v.index).unwrap();
    assert!(!before.promisc && !before.allmulti);
    let mac: MacAddr = "02:00:00:00:00:43".parse().unwrap();
    let all = LinkChange {
        up: None,
        mac: Some(mac),
        mtu: Some(1280),
        promisc: Some(true),
        allmulti: Some(true),
        txqlen: Some(42),
    };
    h.change_link(v.index, &all).unwrap();
    let got = h.link_by_index(v.index).unwrap();
    assert_eq!(
        (got.mac, got.mtu, got.promisc, got.allmulti, got.txqlen),
        (Some(mac), 1280, true, true, 42)
    );
    let j = ip_link(&t, "v0");
    assert_eq!(j["txqlen"], 42);
    assert!(j["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "ALLMULTI"));
    // Only what is named changes; the flags can go off again.
    h.change_link(
        v.index,
        &LinkChange {
            promisc: Some(false),
            allmulti: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    let got = h.link_by_index(v.index).unwrap();
    assert_eq!(
        (got.mac, got.mtu, got.promisc, got.allmulti, got.txqlen),
        (Some(mac), 1280, false, false, 42)
    );
    h.set_link_allmulti(v.index, true).unwrap();
    h.set_link_txqlen(v.index, 7).unwrap();
    let got = h.link_by_index(v.index).unwrap();
    assert!(got.allmulti && got.txqlen == 7);
    // A refused value fails the request.
    let too_big = LinkChange {
        mtu: Some(1 << 20),
        ..Default::default()
    };
    assert!(h.change_link(v.index, &too_big).is_err());
    assert!(h.change_link(v.index, &LinkChange::default()).is_ok());
}

#[test]
fn delete_missing_link_is_not_found() {
    let t = TestNs::new();
    let err = t.handle.delete_link_by_name("nope0").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("delete link nope0"), "{err}");
    let err = t.handle.delete_link(4242).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(t.handle.link_by_index(4242).unwrap_err().is_not_found());
    t.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d0p"]);
    t.handle.delete_link_by_name("d0").unwrap();
    assert!(t.handle.link_by_name("d0").unwrap_err().is_not_found());
}

#[test]
fn bridge_port_flags_hairpin_and_isolated() {
    let t = TestNs::new();
    let h = &t.handle;
    let br = h
        .create_bridge(&BridgeSpec {
            name: "br0".into(),
            up: true,
            ..Default::default()
        })
        .unwrap();
    let v = h
        .create_veth(&VethSpec {
            name: "p0".into(),
            peer_name: "p0p".into(),
            ..Default::default()
        })
        .unwrap();
    h.set_link_master(v.index, Some(br.index)).unwrap();
    h.set_bridge_port_flags(
        v.index,
        BridgePortFlags {
            hairpin: Some(true),
            isolated: Some(true),
        },
    )
    .unwrap();
    let port = h.link_by_index(v.index).unwrap().bridge_port.unwrap();
    assert!(port.hairpin && port.isolated);
    let j = ip_link(&t, "p0");
    assert_eq!(j["linkinfo"]["info_slave_data"]["hairpin"], true);
    assert_eq!(j["linkinfo"]["info_slave_data"]["isolated"], true);
    h.set_bridge_port_flags(
        v.index,
        BridgePortFlags {
            hairpin: Some(false),
            isolated: None,
        },
    )
    .unwrap();
    let port = h.link_by_index(v.index).unwrap().bridge_port.unwrap();
    assert!(!port.hairpin && port.isolated);
}

/// This machine's kernel may be built without CONFIG_BRIDGE_VLAN_FILTERING; iproute2 is the judge.
fn kernel_has_bridge_vlan_filtering(t: &TestNs) -> bool {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &t.name,
            "link",
            "add",
            "twkprobe",
            "type",
            "bridge",
            "vlan_filtering",
            "1",
        ])
        .output()
        .unwrap();
    let _ = std::process::Command::new("ip")
        .args(["-n", &t.name, "link", "del", "twkprobe"])
        .output();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Operation not supported"),
            "unexpected: {stderr}"
        );
    }
    out.status.success()
}

/// On a kernel with VLAN filtering: the whole VLAN API against the kernel. Without it: every VLAN
/// operation fails cleanly with EOPNOTSUPP and a message naming the operation.
#[test]
fn bridge_vlans_on_port_and_bridge() {
    const EOPNOTSUPP: i32 = 95;
    let t = TestNs::new();
    let supported = kernel_has_bridge_vlan_filtering(&t);
    let h = &t.handle;
    let br = h
        .create_bridge(&BridgeSpec {
            name: "br0".into(),
            ..Default::default()
        })
        .unwrap();
    let v = h
        .create_veth(&VethSpec {
            name: "p0".into(),
            peer_name: "p0p".into(),
            ..Default::default()
        })
        .unwrap();
    h.set_link_master(v.index, Some(br.index)).unwrap();
    let filtering = h.set_bridge_vlan_filtering(br.index, true);
    let vlan = BridgeVlan {
        vid: 100,
        pvid: true,
        untagged: true,
    };
    if !supported {
        let err = filtering.unwrap_err();
        assert_eq!(err.errno(), Some(EOPNOTSUPP), "{err}");
        assert!(
            err.to_string()
                .starts_with("set vlan_filtering of bridge index"),
            "{err}"
        );
        let err = h
            .create_bridge(&BridgeSpec {
                name: "brv".into(),
                vlan_filtering: true,
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("create bridge brv"), "{err}");
        let err = h.add_bridge_vlan(v.index, vlan, VlanOn::Port).unwrap_err();
        assert!(err.to_string().contains("add bridge vlan 100"), "{err}");
        return;
    }
    filtering.unwrap();
    assert_eq!(
        h.link_by_index(br.index).unwrap().vlan_filtering,
        Some(true)
    );
    h.add_bridge_vlan(v.index, vlan, VlanOn::Port).unwrap();
    h.add_bridge_vlan(
        br.index,
        BridgeVlan {
            vid: 100,
            pvid: false,
            untagged: false,
        },
        VlanOn::BridgeItself,
    )
    .unwrap();
    let vlans = h.bridge_vlans(v.index).unwrap();
    assert!(vlans.contains(&vlan), "{vlans:?}");
    assert!(h
        .bridge_vlans(br.index)
        .unwrap()
        .iter()
        .any(|v| v.vid == 100));
    let text = t.bridge_json(&["vlan", "show", "dev", "p0"]).to_string();
    assert!(text.contains("\"vlan\":100"), "{text}");
    assert!(text.contains("PVID"), "{text}");

    h.delete_bridge_vlan(v.index, 100, VlanOn::Port).unwrap();
    assert!(!h
        .bridge_vlans(v.index)
        .unwrap()
        .iter()
        .any(|v| v.vid == 100));
    h.delete_bridge_vlan(br.index, 100, VlanOn::BridgeItself)
        .unwrap();

    let brv = h
        .create_bridge(&BridgeSpec {
            name: "brv".into(),
            vlan_filtering: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(brv.vlan_filtering, Some(true));
    assert_eq!(
        ip_link(&t, "brv")["linkinfo"]["info_data"]["vlan_filtering"],
        1
    );
}

#[test]
fn vxlan_is_created_with_vni_port_local_and_underlay() {
    let t = TestNs::new();
    t.ip(&[
        "link", "add", "under0", "type", "veth", "peer", "name", "under0p",
    ]);
    t.ip(&["addr", "add", "192.168.77.2/24", "dev", "under0"]);
    let under = t.handle.link_by_name("under0").unwrap();
    let mac: MacAddr = "02:11:22:33:44:55".parse().unwrap();
    let vx = t
        .handle
        .create_vxlan(&VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            port: 8472,
            local: Some("192.168.77.2".parse().unwrap()),
            underlay: Some(under.index),
            learning: false,
            gbp: false,
            mtu: Some(1450),
            mac: Some(mac),
            up: true,
        })
        .unwrap();
    assert_eq!(vx.kind.as_deref(), Some("vxlan"));
    assert_eq!(vx.mac, Some(mac));
    assert_eq!(vx.mtu, 1450);
    let j = ip_link(&t, "flannel.1");
    let d = &j["linkinfo"]["info_data"];
    assert_eq!(d["id"], 1);
    assert_eq!(d["port"], 8472);
    assert_eq!(d["local"], "192.168.77.2");
    assert_eq!(d["link"], "under0");
    assert_eq!(d["learning"], false);
}
