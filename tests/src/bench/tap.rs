//! Scenario `tap`: tap + host-local ADD and DEL by direct exec (a multi-queue tap owned by uid and gid
//! 1000, a KubeVirt-like setting), ours vs each reference build's that has a tap plugin.

use serde_json::{json, Value};
use std::path::Path;

use super::plugin_pair::{self, Spec};
use super::{Options, Report};

fn conf(state: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchtap",
        "type": "tap",
        "multiQueue": true,
        "owner": 1000,
        "group": 1000,
        "ipam": {"type": "host-local", "dataDir": state,
                 "ranges": [[{"subnet": "10.98.0.0/16", "gateway": "10.98.0.1"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    })
}

pub fn run(options: &Options) -> Report {
    plugin_pair::run(
        options,
        &Spec {
            scenario: "tap",
            what: "tap + host-local ADD (fresh pod), then DEL; direct exec",
            plugin: "tap",
            conf,
            prepare: |_| {},
            prepare_node: |_| {},
            target: 0.5,
            del_floor: None,
        },
    )
}
