//! Scenario `macvlan`: macvlan (bridge mode) + host-local ADD and DEL by direct exec, the master given by
//! the node's default route (its own uplink veth), ours vs each reference build's (each side with its own
//! host-local).

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

use super::plugin_pair::{self, Spec};
use super::{series, Options, Report};
use twill_kernel::{Handle, MacvlanMode, MacvlanSpec, NetNs, VethSpec};
use twill_tests::netns::Netns;

fn conf(state: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchmacvlan",
        "type": "macvlan",
        "ipam": {"type": "host-local", "dataDir": state,
                 "ranges": [[{"subnet": "10.96.0.0/16", "gateway": "10.96.0.1"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    })
}

/// An uplink veth with the node's default route, so the master is never a device of the real host.
fn uplink(node: &Netns) {
    for cmd in [
        "link add up0 type veth peer name up0p",
        "link set up0p up",
        "link set up0 up",
        "addr add 10.96.0.2/16 dev up0",
        "route add default via 10.96.0.1 dev up0",
    ] {
        let mut args = vec!["ip"];
        args.extend(cmd.split(' '));
        node.exec_ok(&args);
    }
}

/// The kernel's part of a DEL: deleting a bridge-mode macvlan in a pod namespace (its master a veth of the
/// node), in-process on a socket already open in the pod.
fn macvlan_delete_floor(options: &Options) -> Vec<Duration> {
    let node = NetNs::create_unnamed().expect("node netns");
    let host = Handle::in_netns(&node).expect("netlink in node");
    let master = host
        .create_veth(&VethSpec {
            name: "up0".into(),
            peer_name: "up0p".into(),
            up: true,
            ..Default::default()
        })
        .expect("create uplink");
    // Kept until the end, as the sides' pods: namespace teardown must not land inside a later sample.
    let mut pods = Vec::new();
    let samples = series(options, || {
        let pod = NetNs::create_unnamed().expect("pod netns");
        let in_pod = Handle::in_netns(&pod).expect("netlink in pod");
        host.create_macvlan(&MacvlanSpec {
            name: "eth0".into(),
            parent: master.index,
            mode: MacvlanMode::Bridge,
            mtu: None,
            mac: None,
            netns: Some(&pod),
            bc_queue_len: None,
        })
        .expect("create macvlan");
        let start = Instant::now();
        in_pod.delete_link_by_name("eth0").expect("delete macvlan");
        let d = start.elapsed();
        pods.push(pod);
        d
    });
    drop(pods);
    samples
}

pub fn run(options: &Options) -> Report {
    plugin_pair::run(
        options,
        &Spec {
            scenario: "macvlan",
            what: "macvlan + host-local ADD (fresh pod), then DEL; direct exec",
            plugin: "macvlan",
            conf,
            prepare: |_| {},
            prepare_node: uplink,
            target: 0.5,
            del_floor: Some(("macvlan delete", macvlan_delete_floor)),
        },
    )
}
