//! Fixtures of the host-device tests (host_device_diff.rs, host_device.rs): a node namespace whose "host
//! device" is a veth end `hd0` with a fixed MAC and MTU (the real host's devices are never moved), the
//! plugin's config, and snapshots of links that compare across runs.
#![allow(dead_code)]

#[path = "../bridge_support/mod.rs"]
mod bridge_support;

pub use bridge_support::*;
use serde_json::{json, Value};
use twill_tests::bins;
use twill_tests::netns::Netns;

pub const CID: &str = "hostdev-diff";
pub const IFNAME: &str = "net1";
pub const NET: &str = "hostdevnet";
pub const DEV: &str = "hd0";
pub const DEV_MAC: &str = "02:4d:00:00:00:01";

pub fn ours() -> std::path::PathBuf {
    bins::bin("host-device")
}

/// A node whose device `hd0` (a veth end, peer `hd0p`) is up with MTU 1400 and MAC [`DEV_MAC`].
pub fn node() -> Node {
    let node = Node::new();
    node.ns.ip(&["link", "set", "lo", "up"]);
    add_device(&node.ns, DEV, DEV_MAC);
    node
}

pub fn add_device(ns: &Netns, name: &str, mac: &str) {
    let peer = format!("{name}p");
    ns.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    ns.ip(&["link", "set", name, "address", mac, "mtu", "1400", "up"]);
    // The peer's MAC is fixed too: node snapshots of two runs must compare equal.
    let peer_mac = format!("06{}", &mac[2..]);
    ns.ip(&["link", "set", &peer, "address", &peer_mac, "up"]);
    // Snapshots compare flags: wait for the carrier so NO-CARRIER never shows in one run only.
    for _ in 0..200 {
        if ns
            .link_flags(name)
            .is_some_and(|f| f.iter().any(|f| f == "LOWER_UP"))
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{name} has no carrier");
}

/// A host-device config for `hd0` with host-local `10.70.0.0/24` IPAM, `extra` merged on top (null
/// removes a key).
pub fn conf(node: &Node, extra: &Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "host-device",
        "device": DEV,
        "ipam": node.ipam(json!([[{"subnet": "10.70.0.0/24", "gateway": "10.70.0.1"}]])),
    });
    c["ipam"]["routes"] = json!([{"dst": "10.80.0.0/16"}]);
    merge(&mut c, extra.clone());
    c
}

/// Every link of `ns`: name, MAC, MTU, alias and flags; without the carrier flags, which the kernel
/// updates asynchronously (linkwatch) after a peer goes down or moves.
pub fn link_state(ns: &Netns) -> Vec<Value> {
    links(ns, &[])
        .iter()
        .map(|l| {
            let flags: Vec<Value> = l["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| !matches!(f.as_str(), Some("NO-CARRIER" | "LOWER_UP" | "M-DOWN")))
                .cloned()
                .collect();
            json!([l["ifname"], l["address"], l["mtu"], l["ifalias"], flags])
        })
        .collect()
}

pub fn pod_state(pod: &Netns) -> Value {
    json!({"links": link_state(pod), "addresses": addresses(pod, IFNAME), "routes": routes(pod)})
}
