//! Scenario `ptp`: ptp + host-local ADD and DEL by direct exec, kindnet's settings (`ipMasq: false`, a
//! default route), ours vs each reference build's (each side with its own host-local).

use serde_json::{json, Value};
use std::path::Path;

use super::plugin_pair::{self, Spec};
use super::{Options, Report};

fn conf(state: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchptp",
        "type": "ptp",
        "ipMasq": false,
        "ipam": {"type": "host-local", "dataDir": state,
                 "ranges": [[{"subnet": "10.95.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]},
    })
}

pub fn run(options: &Options) -> Report {
    plugin_pair::run(
        options,
        &Spec {
            scenario: "ptp",
            what: "ptp + host-local ADD (fresh pod), then DEL; direct exec",
            plugin: "ptp",
            conf,
            prepare: |_| {},
            prepare_node: |_| {},
            target: 0.5,
            del_floor: Some(("veth delete", super::bridge::veth_delete_floor)),
        },
    )
}
