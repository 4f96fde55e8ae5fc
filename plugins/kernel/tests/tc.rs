mod common;

use common::TestNs;
use twill_kernel::tc::{Tbf, TcHandle};

const ROOT: TcHandle = TcHandle { major: 1, minor: 0 };
const INGRESS: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

#[test]
fn ifb_tbf_and_redirect_are_what_tc_shows_and_what_we_list() {
    let t = TestNs::new();
    t.ip(&[
        "link", "add", "vtc0", "type", "veth", "peer", "name", "vtc1",
    ]);
    let veth = t.handle.link_by_name("vtc0").unwrap();
    let ifb = t.handle.create_ifb("ifbtc0", 1400).unwrap();
    assert_eq!(ifb.kind.as_deref(), Some("ifb"));
    assert_eq!((ifb.mtu, ifb.up), (1400, true));
    t.handle.set_link_alias(ifb.index, "owner x").unwrap();
    let listed = t.handle.ifbs().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].alias.as_deref(), Some("owner x"));

    let tbf = Tbf {
        rate: 125_000,
        limit: 15_625,
        buffer: 1_562_500,
    };
    t.handle.add_tbf_root(veth.index, ROOT, &tbf).unwrap();
    let big = Tbf {
        rate: 10_000_000_000,
        limit: 1_000_000,
        buffer: 1_000,
    };
    t.handle.add_tbf_root(ifb.index, ROOT, &big).unwrap();
    t.handle.add_ingress_qdisc(veth.index).unwrap();
    t.handle
        .add_redirect_filter(
            veth.index,
            INGRESS,
            1,
            TcHandle { major: 1, minor: 1 },
            ifb.index,
        )
        .unwrap();

    let on_veth = t.handle.qdiscs(veth.index).unwrap();
    let root = on_veth
        .iter()
        .find(|q| q.kind == "tbf")
        .expect("tbf listed");
    assert_eq!((root.handle, root.tbf), (ROOT, Some(tbf)));
    assert!(on_veth.iter().any(|q| q.kind == "ingress"));
    let on_ifb = t.handle.qdiscs(ifb.index).unwrap();
    assert_eq!(
        on_ifb.iter().find_map(|q| q.tbf),
        Some(big),
        "64-bit rate read back"
    );
    assert_eq!(
        t.handle.redirect_targets(veth.index, INGRESS).unwrap(),
        vec![ifb.index]
    );

    let shown = t.ip(&["-d", "link", "show", "ifbtc0"]);
    assert!(shown.contains("alias owner x"), "{shown}");
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &t.name, "tc", "qdisc", "show", "dev", "vtc0",
        ])
        .output()
        .unwrap();
    let qdiscs = String::from_utf8_lossy(&out.stdout);
    assert!(
        qdiscs.contains("tbf 1: root") && qdiscs.contains("rate 1Mbit"),
        "{qdiscs}"
    );

    t.handle
        .delete_qdisc(veth.index, TcHandle::INGRESS)
        .unwrap();
    t.handle.delete_qdisc(veth.index, TcHandle::ROOT).unwrap();
    assert!(t
        .handle
        .qdiscs(veth.index)
        .unwrap()
        .iter()
        .all(|q| q.kind != "tbf" && q.kind != "ingress"));
    assert!(t.handle.delete_qdisc(veth.index, TcHandle::ROOT).is_err());
}
