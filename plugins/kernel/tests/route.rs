mod common;

use common::TestNs;
use twill_kernel::{Family, IpNet, Route, RouteFilter, RouteScope, VethSpec};

fn setup(t: &TestNs) -> u32 {
    let v = t
        .handle
        .create_veth(&VethSpec {
            name: "r0".into(),
            peer_name: "r0p".into(),
            up: true,
            ..Default::default()
        })
        .unwrap();
    let peer = t.handle.link_by_name("r0p").unwrap();
    t.handle.set_link_up(peer.index).unwrap();
    t.handle
        .add_address(v.index, "10.2.0.2/24".parse().unwrap())
        .unwrap();
    v.index
}

#[test]
fn default_route_via_gateway_and_exists() {
    let t = TestNs::new();
    let idx = setup(&t);
    let r = Route::default_via("10.2.0.1".parse().unwrap()).dev(idx);
    t.handle.add_route(&r).unwrap();
    let err = t.handle.add_route(&r).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(
        err.to_string().contains("add route 0.0.0.0/0 via 10.2.0.1"),
        "{err}"
    );
    let routes = t
        .handle
        .routes(RouteFilter {
            family: Some(Family::V4),
            ..Default::default()
        })
        .unwrap();
    let d = routes
        .iter()
        .find(|r| r.dst.prefix_len() == 0)
        .expect("default route listed");
    assert_eq!(d.gateway, Some("10.2.0.1".parse().unwrap()));
    assert_eq!(d.oif, Some(idx));
    assert_eq!(d.scope, Some(RouteScope::Universe));
    let j = t.ip_json(&["route", "show", "default"]);
    assert_eq!(j[0]["gateway"], "10.2.0.1");
    assert_eq!(j[0]["dev"], "r0");
    t.handle.delete_route(&r).unwrap();
    let err = t.handle.delete_route(&r).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn onlink_route_with_metric_in_table() {
    let t = TestNs::new();
    let idx = setup(&t);
    // flannel's scheme: a gateway no address covers, reachable only because it is "onlink".
    let dst: IpNet = "10.244.3.0/24".parse().unwrap();
    let r = Route::new(dst)
        .via("10.244.3.0".parse().unwrap())
        .dev(idx)
        .onlink()
        .metric(50)
        .table(100);
    let err = t
        .handle
        .add_route(&Route::new(dst).via("10.244.3.0".parse().unwrap()).dev(idx))
        .unwrap_err();
    assert!(!err.is_exists(), "without onlink the kernel refuses: {err}");
    t.handle.add_route(&r).unwrap();
    let listed = t
        .handle
        .routes(RouteFilter {
            table: Some(100),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let got = &listed[0];
    assert_eq!(got.dst, dst);
    assert!(got.onlink);
    assert_eq!(got.priority, Some(50));
    assert_eq!(got.table, 100);
    let j = t.ip_json(&["route", "show", "table", "100"]);
    assert_eq!(j[0]["dst"], "10.244.3.0/24");
    assert_eq!(j[0]["metric"], 50);
    assert!(j[0]["flags"].to_string().contains("onlink"), "{j}");
    // Not in main.
    assert!(!t
        .handle
        .routes(RouteFilter {
            table: Some(twill_kernel::TABLE_MAIN),
            ..Default::default()
        })
        .unwrap()
        .iter()
        .any(|r| r.dst == dst));
    // Tables above 255 go in RTA_TABLE.
    let big = Route::new("10.9.0.0/16".parse().unwrap())
        .dev(idx)
        .table(1000);
    t.handle.add_route(&big).unwrap();
    assert_eq!(
        t.ip_json(&["route", "show", "table", "1000"])[0]["dst"],
        "10.9.0.0/16"
    );
    t.handle.delete_route(&big).unwrap();
    t.handle.delete_route(&r).unwrap();
}

#[test]
fn replace_route_and_metrics() {
    let t = TestNs::new();
    let idx = setup(&t);
    let dst: IpNet = "10.5.0.0/16".parse().unwrap();
    t.handle
        .add_route(&Route::new(dst).via("10.2.0.1".parse().unwrap()))
        .unwrap();
    t.handle
        .replace_route(
            &Route::new(dst)
                .via("10.2.0.3".parse().unwrap())
                .dev(idx)
                .mtu(1400)
                .advmss(1360),
        )
        .unwrap();
    let routes = t.handle.routes(RouteFilter::default()).unwrap();
    let got: Vec<_> = routes.iter().filter(|r| r.dst == dst).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].gateway, Some("10.2.0.3".parse().unwrap()));
    assert_eq!(got[0].mtu, Some(1400));
    assert_eq!(got[0].advmss, Some(1360));
    let j = t.ip_json(&["route", "show", "10.5.0.0/16"]);
    assert_eq!(j[0]["gateway"], "10.2.0.3");
    assert_eq!(j[0]["metrics"][0]["mtu"], 1400);
    // Link-scope route without gateway.
    let on_link = Route::new("10.6.0.0/16".parse().unwrap()).dev(idx);
    t.handle.add_route(&on_link).unwrap();
    let j = t.ip_json(&["route", "show", "10.6.0.0/16"]);
    assert_eq!(j[0]["scope"], "link");
}

#[test]
fn ipv6_default_route() {
    let t = TestNs::new();
    let idx = setup(&t);
    t.handle
        .add_address_with(
            idx,
            "fd00:2::2/64".parse().unwrap(),
            twill_kernel::AddressOptions {
                nodad: true,
                ..Default::default()
            },
        )
        .unwrap();
    let r = Route::default_via("fd00:2::1".parse().unwrap()).dev(idx);
    t.handle.add_route(&r).unwrap();
    let routes = t
        .handle
        .routes(RouteFilter {
            family: Some(Family::V6),
            oif: Some(idx),
            ..Default::default()
        })
        .unwrap();
    assert!(routes
        .iter()
        .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some("fd00:2::1".parse().unwrap())));
    assert_eq!(
        t.ip_json(&["-6", "route", "show", "default"])[0]["gateway"],
        "fd00:2::1"
    );
    t.handle.delete_route(&r).unwrap();
}
