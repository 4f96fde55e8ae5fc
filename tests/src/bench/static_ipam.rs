//! Scenario `static`: static IPAM ADD and DEL (two addresses, routes, DNS), ours vs each reference build's.

use serde_json::{json, Value};
use std::path::Path;

use super::plugin_pair::{self, Spec};
use super::{Options, Report};

fn conf(_: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchstatic",
        "type": "ptp",
        "ipam": {"type": "static",
                 "addresses": [{"address": "10.93.0.5/24", "gateway": "10.93.0.1"},
                               {"address": "fd93::5/64", "gateway": "fd93::1"}],
                 "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                 "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}},
    })
}

pub fn run(options: &Options) -> Report {
    plugin_pair::run(
        options,
        &Spec {
            scenario: "static",
            what: "static IPAM ADD then DEL; direct exec",
            plugin: "static",
            conf,
            prepare: |_| {},
            prepare_node: |_| {},
            target: 0.5,
            del_floor: None,
        },
    )
}
