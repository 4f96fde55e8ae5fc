mod common;

use common::TestNs;
use twill_kernel::{Handle, NetNs, Route, VethSpec};

#[test]
fn error_messages_name_operation_object_and_netns() {
    let t = TestNs::new();
    let err = t.handle.link_by_name("missing0").unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.op(), "get link");
    assert_eq!(err.object(), "missing0");
    assert_eq!(err.netns(), t.path());
    assert_eq!(
        err.to_string(),
        format!(
            "get link missing0 in {}: No such device (os error 19)",
            t.path()
        )
    );

    let err = t
        .handle
        .add_route(&Route::default_via("10.0.0.1".parse().unwrap()).dev(1))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("add route 0.0.0.0/0 via 10.0.0.1 dev index 1 in /run/netns/"),
        "{msg}"
    );
    // The kernel's extended ack, when it sends one, is kept.
    if let Some(detail) = err.detail() {
        assert!(msg.ends_with(&format!("({detail})")), "{msg}");
    }

    let host = Handle::current().unwrap();
    let err = host.link_by_name("twk-missing-dev").unwrap_err();
    assert!(err.to_string().contains("in current netns"), "{err}");
}

#[test]
fn veth_peer_can_go_into_a_netns_whose_path_is_gone() {
    let node = TestNs::new();
    let pod = TestNs::new();
    let pod_path = pod.path();
    let pod_ns = NetNs::open(&pod_path).unwrap();
    drop(pod);
    // The bind mount is gone but our fd keeps the namespace alive: creation still works.
    node.handle
        .create_veth(&VethSpec {
            name: "v0".into(),
            peer_name: "eth0".into(),
            peer_netns: Some(&pod_ns),
            ..Default::default()
        })
        .unwrap();
    // And opening it by path now is "not found", as DEL needs.
    let err = NetNs::open(&pod_path).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let eth0 = Handle::in_netns(&pod_ns)
        .unwrap()
        .link_by_name("eth0")
        .unwrap();
    assert_eq!(eth0.name, "eth0");
}

#[test]
fn del_succeeds_when_netns_is_gone() {
    // The shape of a plugin's DEL: a missing namespace is not an error.
    let t = TestNs::new();
    let path = t.path();
    drop(t);
    match NetNs::open(&path) {
        Err(e) if e.is_not_found() => {}
        other => panic!("expected not found, got {other:?}"),
    }
}

#[test]
fn kernel_extended_ack_reason_is_kept() {
    let t = TestNs::new();
    let v = t
        .handle
        .create_veth(&VethSpec {
            name: "e0".into(),
            peer_name: "e0p".into(),
            up: true,
            ..Default::default()
        })
        .unwrap();
    // A gateway that no address or onlink flag makes reachable.
    let err = t
        .handle
        .add_route(
            &Route::new("10.7.0.0/16".parse().unwrap())
                .via("10.8.0.1".parse().unwrap())
                .dev(v.index),
        )
        .unwrap_err();
    let detail = err
        .detail()
        .unwrap_or_else(|| panic!("no extended ack in {err}"));
    assert!(detail.to_lowercase().contains("gateway"), "{err}");
    assert!(err.to_string().ends_with(&format!("({detail})")), "{err}");
    eprintln!("{err}");
}
