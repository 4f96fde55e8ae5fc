//! Scenario `macvlan`: macvlan (bridge mode) + host-local ADD and DEL by direct exec, the master given by
//! the node's default route (its own uplink veth), ours vs each reference build's (each side with its own
//! host-local).

use serde_json::{json, Value};
use std::path::Path;

use super::plugin_pair::{self, Spec};
use super::{Options, Report};
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
            del_floor: None,
        },
    )
}
