//! Scenario `tuning`: tuning ADD and DEL on a pod's veth `eth0` (a sysctl, MTU, MAC and promisc, so the
//! original attributes are saved and restored), ours vs each reference build's.

use serde_json::{json, Value};
use std::path::Path;

use super::plugin_pair::{self, Spec};
use super::{Options, Report};
use twill_tests::netns::Netns;

fn conf(state: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchtuning",
        "type": "tuning",
        "dataDir": state,
        "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"},
        "mtu": 1400,
        "promisc": true,
        "mac": "c2:11:22:33:44:55",
        "prevResult": {"cniVersion": "1.0.0",
                       "interfaces": [{"name": "eth0", "sandbox": "/run/netns/bench"}],
                       "ips": [{"address": "10.94.0.2/24", "interface": 0}]},
    })
}

fn prepare(pod: &Netns) {
    pod.exec_ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
}

pub fn run(options: &Options) -> Report {
    plugin_pair::run(
        options,
        &Spec {
            scenario: "tuning",
            what: "tuning ADD (sysctl, mtu, mac, promisc on a veth), then DEL; direct exec",
            plugin: "tuning",
            conf,
            prepare,
            prepare_node: |_| {},
            target: 0.5,
            del_floor: None,
        },
    )
}
