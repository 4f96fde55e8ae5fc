mod common;

use std::net::IpAddr;

use common::TestNs;
use twill_kernel::{Family, MacAddr, VxlanSpec};

/// A node-like namespace with an underlay veth and `flannel.1`, as twilld builds it.
fn vxlan_node(t: &TestNs) -> u32 {
    let under = t.underlay(&["192.168.50.2/24"]);
    let vx = t
        .handle
        .create_vxlan(&VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            port: 8472,
            local: Some("192.168.50.2".parse().unwrap()),
            underlay: Some(under),
            learning: false,
            mtu: Some(1450),
            up: true,
            ..Default::default()
        })
        .unwrap();
    vx.index
}

#[test]
fn permanent_neighbour_on_vxlan_add_replace_delete() {
    let t = TestNs::new();
    let vx = vxlan_node(&t);
    let ip: IpAddr = "10.244.3.0".parse().unwrap();
    let mac: MacAddr = "0a:00:00:00:03:01".parse().unwrap();
    let mac2: MacAddr = "0a:00:00:00:03:02".parse().unwrap();
    t.handle.add_neighbour(vx, ip, mac).unwrap();
    let err = t.handle.add_neighbour(vx, ip, mac).unwrap_err();
    assert!(err.is_exists(), "{err}");
    t.handle.replace_neighbour(vx, ip, mac2).unwrap();
    let n = t.handle.neighbours(Some(vx), Some(Family::V4)).unwrap();
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].ip, ip);
    assert_eq!(n[0].mac, Some(mac2));
    assert!(n[0].permanent);
    let j = t.ip_json(&["neigh", "show", "dev", "flannel.1"]);
    assert_eq!(j[0]["dst"], "10.244.3.0");
    assert_eq!(j[0]["lladdr"], "0a:00:00:00:03:02");
    assert!(j[0]["state"].to_string().contains("PERMANENT"), "{j}");
    t.handle.delete_neighbour(vx, ip).unwrap();
    let err = t.handle.delete_neighbour(vx, ip).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    // (IPv6 multicast entries may appear on their own once the device is up: look only for ours.)
    assert!(!t
        .handle
        .neighbours(Some(vx), None)
        .unwrap()
        .iter()
        .any(|n| n.ip == ip));
}

#[test]
fn fdb_entries_on_vxlan_add_replace_delete() {
    let t = TestNs::new();
    let vx = vxlan_node(&t);
    let mac: MacAddr = "0a:00:00:00:03:01".parse().unwrap();
    let dst: IpAddr = "192.168.50.3".parse().unwrap();
    let dst2: IpAddr = "192.168.50.4".parse().unwrap();
    t.handle.add_fdb(vx, mac, Some(dst)).unwrap();
    let err = t.handle.add_fdb(vx, mac, Some(dst)).unwrap_err();
    assert!(err.is_exists(), "{err}");
    let entries = t.handle.fdb_entries(vx).unwrap();
    let e: Vec<_> = entries.iter().filter(|e| e.mac == mac).collect();
    assert_eq!(e.len(), 1, "{entries:?}");
    assert_eq!(e[0].dst, Some(dst));
    assert!(e[0].permanent && e[0].on_self);
    let text = t
        .bridge_json(&["fdb", "show", "dev", "flannel.1"])
        .to_string();
    assert!(
        text.contains("0a:00:00:00:03:01") && text.contains("192.168.50.3"),
        "{text}"
    );

    // Replace moves the MAC to another VTEP.
    t.handle.replace_fdb(vx, mac, Some(dst2)).unwrap();
    let e: Vec<_> = t
        .handle
        .fdb_entries(vx)
        .unwrap()
        .into_iter()
        .filter(|e| e.mac == mac)
        .collect();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].dst, Some(dst2));

    t.handle.delete_fdb(vx, mac, Some(dst2)).unwrap();
    let err = t.handle.delete_fdb(vx, mac, Some(dst2)).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(!t
        .handle
        .fdb_entries(vx)
        .unwrap()
        .iter()
        .any(|e| e.mac == mac));
}
