mod common;

use common::TestNs;
use twill_kernel::{AddressOptions, Family, IpNet, VethSpec};

fn veth(t: &TestNs) -> u32 {
    let v = t
        .handle
        .create_veth(&VethSpec {
            name: "a0".into(),
            peer_name: "a0p".into(),
            up: true,
            ..Default::default()
        })
        .unwrap();
    v.index
}

#[test]
fn add_address_twice_is_exists() {
    let t = TestNs::new();
    let idx = veth(&t);
    let net: IpNet = "10.1.0.2/24".parse().unwrap();
    t.handle.add_address(idx, net).unwrap();
    let err = t.handle.add_address(idx, net).unwrap_err();
    assert!(err.is_exists(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "add address 10.1.0.2/24 to index {idx} in {}: File exists",
            t.path()
        )),
        "{msg}"
    );

    let listed = t.handle.addresses(Some(idx), Some(Family::V4)).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].net, net);
    let j = t.ip_json(&["addr", "show", "dev", "a0"]);
    let info = &j[0]["addr_info"];
    let v4: Vec<_> = info
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .collect();
    assert_eq!(v4.len(), 1);
    assert_eq!(v4[0]["local"], "10.1.0.2");
    assert_eq!(v4[0]["prefixlen"], 24);
    assert_eq!(v4[0]["broadcast"], "10.1.0.255");
}

#[test]
fn delete_address_and_not_found() {
    let t = TestNs::new();
    let idx = veth(&t);
    let net: IpNet = "10.1.0.2/24".parse().unwrap();
    t.handle.add_address(idx, net).unwrap();
    t.handle.delete_address(idx, net).unwrap();
    assert!(t
        .handle
        .addresses(Some(idx), Some(Family::V4))
        .unwrap()
        .is_empty());
    let err = t.handle.delete_address(idx, net).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let v6: IpNet = "fd00::2/64".parse().unwrap();
    let err = t.handle.delete_address(idx, v6).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn ipv6_address_with_nodad_is_not_tentative() {
    let t = TestNs::new();
    let idx = veth(&t);
    let dad: IpNet = "fd00::2/64".parse().unwrap();
    let nodad: IpNet = "fd00:1::2/64".parse().unwrap();
    t.handle.add_address(idx, dad).unwrap();
    t.handle
        .add_address_with(
            idx,
            nodad,
            AddressOptions {
                nodad: true,
                ..Default::default()
            },
        )
        .unwrap();
    let listed = t.handle.addresses(Some(idx), Some(Family::V6)).unwrap();
    let find = |n: IpNet| listed.iter().find(|a| a.net == n).unwrap().clone();
    assert!(!find(nodad).tentative);
    assert!(!find(nodad).dadfailed);
    // The peer is down, so DAD on `dad` cannot finish: it stays tentative.
    assert!(find(dad).tentative, "{listed:?}");
    assert_eq!(find(nodad).scope, twill_kernel::address::Scope::Universe);
    // Per-family filter.
    assert!(t
        .handle
        .addresses(Some(idx), Some(Family::V4))
        .unwrap()
        .is_empty());
    // lo is down in a fresh namespace, so only our two addresses exist.
    assert_eq!(t.handle.addresses(None, None).unwrap().len(), 2);
}

#[test]
fn settle_addresses_waits_for_dad() {
    let t = TestNs::new();
    let v = t
        .handle
        .create_veth(&VethSpec {
            name: "s0".into(),
            peer_name: "s0p".into(),
            up: true,
            ..Default::default()
        })
        .unwrap();
    let peer = t.handle.link_by_name("s0p").unwrap();
    t.handle.set_link_up(peer.index).unwrap();
    let net: IpNet = "fd00:5::2/64".parse().unwrap();
    t.handle.add_address(v.index, net).unwrap();
    let started = std::time::Instant::now();
    t.handle
        .settle_addresses(v.index, std::time::Duration::from_secs(10))
        .unwrap();
    let listed = t.handle.addresses(Some(v.index), Some(Family::V6)).unwrap();
    assert!(
        listed.iter().any(|a| a.net == net && !a.tentative),
        "{listed:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // A link with nothing tentative (lo, down, no addresses) settles at once.
    t.handle
        .settle_addresses(1, std::time::Duration::ZERO)
        .unwrap();
}
