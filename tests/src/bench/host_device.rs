//! Scenario `host-device`: host-device + host-local ADD and DEL by direct exec, ours vs each reference
//! build's: each round moves the node's device `hd0` (a veth end of the node namespace, never a device of
//! the real host) into a fresh pod and DEL returns it.

use serde_json::{json, Value};
use std::path::Path;

use super::plugin_pair::{self, Spec};
use super::{Options, Report};
use twill_tests::netns::Netns;

fn conf(state: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchhostdevice",
        "type": "host-device",
        "device": "hd0",
        "ipam": {"type": "host-local", "dataDir": state,
                 "ranges": [[{"subnet": "10.97.0.0/16", "gateway": "10.97.0.1"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    })
}

/// The device to move, up as a node's NIC would be.
fn device(node: &Netns) {
    for cmd in [
        "link add hd0 type veth peer name hd0p",
        "link set hd0p up",
        "link set hd0 up",
    ] {
        let mut args = vec!["ip"];
        args.extend(cmd.split(' '));
        node.exec_ok(&args);
    }
}

pub fn run(options: &Options) -> Report {
    plugin_pair::run(
        options,
        &Spec {
            scenario: "host-device",
            what: "host-device + host-local ADD (device into a fresh pod), then DEL (device back); direct exec",
            plugin: "host-device",
            conf,
            prepare: |_| {},
            prepare_node: device,
            target: 0.5,
            del_floor: None,
        },
    )
}
