//! Scenario `sbr`: sbr ADD and DEL on a pod's veth `eth0` with an address and a default route (one rule,
//! one table with the interface's routes), ours vs each reference build's.

use serde_json::{json, Value};
use std::path::Path;

use super::plugin_pair::{self, Spec};
use super::{Options, Report};
use twill_tests::netns::Netns;

fn conf(_state: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchsbr",
        "type": "sbr",
        "prevResult": {"cniVersion": "1.0.0",
                       "interfaces": [{"name": "eth0", "sandbox": "/run/netns/bench"}],
                       "ips": [{"address": "10.95.0.2/24", "gateway": "10.95.0.1", "interface": 0}]},
    })
}

fn prepare(pod: &Netns) {
    pod.exec_ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    pod.exec_ok(&["ip", "addr", "add", "10.95.0.2/24", "dev", "eth0"]);
    pod.exec_ok(&["ip", "link", "set", "peer0", "up"]);
    pod.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    pod.exec_ok(&["ip", "route", "add", "default", "via", "10.95.0.1"]);
}

pub fn run(options: &Options) -> Report {
    plugin_pair::run(
        options,
        &Spec {
            scenario: "sbr",
            what: "sbr ADD (rule + table of a veth with a default route), then DEL; direct exec",
            plugin: "sbr",
            conf,
            prepare,
            prepare_node: |_| {},
            target: 0.5,
            del_floor: None,
        },
    )
}
