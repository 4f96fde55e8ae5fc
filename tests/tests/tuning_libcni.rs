//! tuning through upstream libcni (spec 1.1): bridge + tuning as a runtime runs them; GC with the
//! valid attachments removes the saved originals of a lost attachment and keeps the others', STATUS
//! passes, and a kept pod still passes CHECK and DEL. (firewall's GC and STATUS through libcni are in
//! firewall_diff.rs.)

use serde_json::{json, Value};
use twill_tests::bins::{bin, link_plugin_dir, require_root};
use twill_tests::libcni::{unique_name, Driver, LibCni};
use twill_tests::netns::Netns;

fn saved(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn tuning_gc_and_status_through_upstream_libcni() {
    require_root();
    let node = Netns::node("tul");
    let dir = tempfile::tempdir().expect("temp dir");
    let bin_dir = dir.path().join("bin");
    link_plugin_dir(
        &bin_dir,
        ["bridge", "host-local", "tuning"].map(|n| (n, bin(n))),
    );
    let tuning_dir = dir.path().join("tuning");
    let lib = LibCni::scratch(vec![bin_dir.clone()])
        .in_netns(node.path())
        .with_driver(Driver::Upstream);
    let list = json!({
        "cniVersion": "1.1.0", "name": unique_name("tugc"),
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true,
             "ipam": {"type": "host-local", "dataDir": dir.path().join("ipam"),
                      "ranges": [[{"subnet": "10.90.0.0/24"}]]}},
            {"type": "tuning", "mtu": 1300, "dataDir": tuning_dir,
             "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}}
        ]
    });
    let net = lib.write_conflist(&list);
    lib.status(&net).assert_success();
    let (a, b) = (Netns::new("tupod"), Netns::new("tupod"));
    let result: Value = lib
        .with_container_id("pod-a")
        .add(&net, a.path())
        .assert_success();
    assert!(result["ips"][0]["address"].is_string(), "{result}");
    lib.with_container_id("pod-b")
        .add(&net, b.path())
        .assert_success();
    let mtu = |ns: &Netns| {
        ns.exec_ok(&["cat", "/sys/class/net/eth0/mtu"])
            .trim()
            .to_string()
    };
    assert_eq!((mtu(&a), mtu(&b)), ("1300".to_string(), "1300".to_string()));
    assert_eq!(saved(&tuning_dir).len(), 2, "{:?}", saved(&tuning_dir));
    // The runtime lost pod-b: libcni cannot DEL it, only tuning's GC finds its saved originals.
    std::fs::remove_file(lib.cached_result_path(&net, "pod-b", "eth0")).expect("remove cache");
    lib.with_valid_attachments(&[("pod-a", "eth0")])
        .gc(&net)
        .assert_success();
    let left = saved(&tuning_dir);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("pod-a"), "{left:?}");
    lib.with_container_id("pod-a")
        .check(&net, a.path())
        .assert_success();
    lib.with_container_id("pod-a")
        .del(&net, a.path())
        .assert_success();
    assert!(saved(&tuning_dir).is_empty(), "{:?}", saved(&tuning_dir));
    lib.status(&net).assert_success();
}
