mod common;

use common::TestNs;
use twill_kernel::sysctl;

#[test]
fn sysctl_in_a_namespace_does_not_affect_the_caller() {
    let t = TestNs::new();
    let key = "net/ipv4/ip_forward";
    let host_before = sysctl::read(key).unwrap();
    // A new namespace inherits IPv4 settings from the initial one, so flip whatever the host has.
    let other = if host_before == "1" { "0" } else { "1" };
    let ns_before = sysctl::read_in(&t.ns, key).unwrap();
    assert_eq!(
        sysctl::write_in(&t.ns, key, other).unwrap(),
        ns_before != other
    );
    assert!(
        !sysctl::write_in(&t.ns, key, other).unwrap(),
        "same value: no write"
    );
    assert_eq!(sysctl::read_in(&t.ns, key).unwrap(), other);
    assert_eq!(sysctl::read(key).unwrap(), host_before);
    let out = common::run(
        "ip",
        &[
            "netns",
            "exec",
            &t.name,
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        ],
    );
    assert_eq!(out.trim(), other);
}

#[test]
fn sysctl_set_writes_without_reading_and_rejects_escapes() {
    let t = TestNs::new();
    let key = "net/ipv4/conf/lo/arp_notify";
    t.ns.run(|| {
        sysctl::set(key, "1").unwrap();
        assert_eq!(sysctl::read(key).unwrap(), "1");
        sysctl::set(key, "1").unwrap();
        sysctl::set(key, "0").unwrap();
        assert_eq!(sysctl::read(key).unwrap(), "0");
        assert!(sysctl::set("net/../../etc/passwd", "x").is_err());
    })
    .unwrap();
}

#[test]
fn sysctl_per_interface_key_with_dots_in_name() {
    let t = TestNs::new();
    t.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
    ]);
    let key = "net/ipv4/conf/flannel.1/forwarding";
    sysctl::write_in(&t.ns, key, "1").unwrap();
    assert_eq!(sysctl::read_in(&t.ns, key).unwrap(), "1");
    // The device does not exist in the caller's namespace.
    let err = sysctl::read(key).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string()
            .contains("read sysctl net/ipv4/conf/flannel.1/forwarding in current netns"),
        "{err}"
    );
}

#[test]
fn sysctl_rejects_keys_that_escape_proc_sys() {
    let t = TestNs::new();
    for key in [
        "../../etc/passwd",
        "/proc/sys/net/ipv4/ip_forward",
        "net/ipv4/conf/../../../x",
        "",
    ] {
        let err = sysctl::write_in(&t.ns, key, "1").unwrap_err();
        assert_eq!(err.io().kind(), std::io::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("invalid sysctl key"), "{err}");
    }
}

#[test]
fn arp_notify_over_netlink_and_accept_ra_from_the_link_message_match_proc_sys() {
    let t = TestNs::new();
    let h = twill_kernel::Handle::in_netns(&t.ns).unwrap();
    let lo = h.link_by_name("lo").unwrap();
    assert_eq!(
        sysctl::read_in(&t.ns, "net/ipv4/conf/lo/arp_notify").unwrap(),
        "0"
    );
    h.enable_arp_notify(lo.index).unwrap();
    assert_eq!(
        sysctl::read_in(&t.ns, "net/ipv4/conf/lo/arp_notify").unwrap(),
        "1"
    );
    // The link message reports what /proc/sys says, before and after a change.
    for value in ["0", "2"] {
        sysctl::write_in(&t.ns, "net/ipv6/conf/lo/accept_ra", value).unwrap();
        let reported = h.link_by_name("lo").unwrap().ipv6_accept_ra;
        assert_eq!(reported.map(|v| v.to_string()).as_deref(), Some(value));
    }
}
