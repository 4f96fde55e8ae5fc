//! What an overlay daemon asks of the kernel, in both families: a VXLAN device over an IPv6 underlay read
//! back as created, one-request link changes, IPv6 routes, neighbours and FDB entries, blackhole routes and
//! the kernel's own route choice.

mod common;

use std::net::IpAddr;

use common::TestNs;
use twill_kernel::{
    Family, IpNet, LinkChange, MacAddr, Route, RouteFilter, RouteType, VxlanSpec, TABLE_MAIN,
};

fn v6_vxlan(under: u32) -> VxlanSpec {
    VxlanSpec {
        name: "flannel-v6.1".into(),
        vni: 1,
        port: 8472,
        local: Some("fd00:50::2".parse().unwrap()),
        underlay: Some(under),
        learning: false,
        gbp: true,
        mtu: Some(1430),
        mac: Some("0a:00:00:00:06:01".parse().unwrap()),
        up: false,
    }
}

#[test]
fn vxlan_over_ipv6_is_read_back_as_created() {
    let t = TestNs::new();
    let under = t.underlay(&["fd00:50::2/64"]);
    let spec = v6_vxlan(under);
    t.handle.create_vxlan(&spec).unwrap();
    let link = t.handle.link_by_name("flannel-v6.1").unwrap();
    let info = link.vxlan.clone().expect("vxlan settings read back");
    assert_eq!(info.local, spec.local);
    assert_eq!(info.underlay, Some(under));
    assert_eq!(info.vni, Some(1));
    assert!(info.gbp);
    assert!(info.matches(&spec));
    let other_vni = VxlanSpec {
        vni: 2,
        ..spec.clone()
    };
    assert!(!info.matches(&other_vni));
    let j = t.ip_json(&["link", "show", "flannel-v6.1"]);
    assert_eq!(j[0]["linkinfo"]["info_data"]["local6"], "fd00:50::2");
    // A non-VXLAN device has no VXLAN settings.
    assert!(t.handle.link_by_name("under0").unwrap().vxlan.is_none());
}

#[test]
fn one_link_change_sets_mtu_mac_and_state() {
    let t = TestNs::new();
    let under = t.underlay(&["fd00:50::2/64"]);
    let link = t.handle.create_vxlan(&v6_vxlan(under)).unwrap();
    let mac: MacAddr = "0a:00:00:00:06:09".parse().unwrap();
    let change = LinkChange {
        mtu: Some(1400),
        mac: Some(mac),
        up: Some(true),
        ..Default::default()
    };
    t.handle.change_link(link.index, &change).unwrap();
    let now = t.handle.link_by_index(link.index).unwrap();
    assert_eq!((now.mtu, now.mac, now.up), (1400, Some(mac), true));
    t.handle
        .change_link(link.index, &LinkChange::default())
        .unwrap();
    let err = t
        .handle
        .change_link(
            9999,
            &LinkChange {
                up: Some(false),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("change link index 9999"), "{err}");
}

#[test]
fn ipv6_peer_entries_on_a_vxlan_device() {
    let t = TestNs::new();
    let under = t.underlay(&["fd00:50::2/64"]);
    let spec = VxlanSpec {
        up: true,
        ..v6_vxlan(under)
    };
    let dev = t.handle.create_vxlan(&spec).unwrap().index;
    let gw: IpAddr = "fd00:42:0:2::".parse().unwrap();
    let public: IpAddr = "fd00:50::3".parse().unwrap();
    let mac: MacAddr = "0a:00:00:00:06:02".parse().unwrap();
    t.handle.replace_neighbour(dev, gw, mac).unwrap();
    t.handle.replace_fdb(dev, mac, Some(public)).unwrap();
    let subnet: IpNet = "fd00:42:0:2::/64".parse().unwrap();
    let route = Route::new(subnet).via(gw).dev(dev).onlink();
    t.handle.replace_route(&route).unwrap();

    let n = t.handle.neighbours(Some(dev), Some(Family::V6)).unwrap();
    assert!(n.iter().any(|n| n.ip == gw && n.mac == Some(mac)), "{n:?}");
    let fdb = t.handle.fdb_entries(dev).unwrap();
    assert!(
        fdb.iter().any(|e| e.mac == mac && e.dst == Some(public)),
        "{fdb:?}"
    );
    let filter = RouteFilter {
        family: Some(Family::V6),
        table: Some(TABLE_MAIN),
        oif: Some(dev),
    };
    let routes = t.handle.routes(filter).unwrap();
    let r = routes.iter().find(|r| r.dst == subnet).expect("route");
    assert_eq!((r.gateway, r.onlink), (Some(gw), true));

    t.handle.delete_route(&Route::new(subnet).dev(dev)).unwrap();
    t.handle.delete_fdb(dev, mac, Some(public)).unwrap();
    t.handle.delete_neighbour(dev, gw).unwrap();
    assert!(t
        .handle
        .delete_neighbour(dev, gw)
        .unwrap_err()
        .is_not_found());
    assert!(!t
        .handle
        .routes(filter)
        .unwrap()
        .iter()
        .any(|r| r.dst == subnet));
}

#[test]
fn blackhole_route_is_added_listed_and_deleted() {
    let t = TestNs::new();
    for dst in ["10.244.1.0/24", "fd00:42:0:1::/64"] {
        let dst: IpNet = dst.parse().unwrap();
        let bh = Route::blackhole(dst);
        t.handle.add_route(&bh).unwrap();
        assert!(t.handle.add_route(&bh).unwrap_err().is_exists());
        let listed = t.handle.routes(RouteFilter::default()).unwrap();
        let r = listed.iter().find(|r| r.dst == dst).expect("listed");
        // (The kernel hangs an IPv6 blackhole route on `lo`.)
        assert_eq!(r.kind, RouteType::BlackHole);
        assert!(r.gateway.is_none());
        let shown = t.ip(&["route", "show", "table", "main", "type", "blackhole"]);
        let shown6 = t.ip(&["-6", "route", "show", "type", "blackhole"]);
        assert!(
            shown.contains(&dst.to_string()) || shown6.contains(&dst.to_string()),
            "{shown}{shown6}"
        );
        t.handle.delete_route(&bh).unwrap();
        assert!(t.handle.delete_route(&bh).unwrap_err().is_not_found());
    }
}

#[test]
fn route_get_says_which_device_and_source_reach_an_address() {
    let t = TestNs::new();
    let under = t.underlay(&["192.168.50.2/24", "fd00:50::2/64"]);
    t.ip(&["route", "add", "10.9.0.0/16", "via", "192.168.50.1"]);
    let r = t.handle.route_get("10.9.1.1".parse().unwrap()).unwrap();
    assert_eq!(r.oif, Some(under));
    assert_eq!(r.gateway, Some("192.168.50.1".parse().unwrap()));
    assert_eq!(r.src, Some("192.168.50.2".parse().unwrap()));
    let r6 = t.handle.route_get("fd00:50::9".parse().unwrap()).unwrap();
    assert_eq!(r6.oif, Some(under));
    let err = t
        .handle
        .route_get("172.31.0.1".parse().unwrap())
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
    assert!(err.to_string().contains("get route to 172.31.0.1"), "{err}");
}
