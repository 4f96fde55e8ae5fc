//! Scenario `kindnet`: kind's default chain, ptp (+ host-local) then portmap with one host port, ADD+DEL by
//! direct exec the way libcni runs the conflist (portmap with ptp's result as `prevResult`; DEL in reverse
//! order with the cached `runtimeConfig`), at kindnet's `cniVersion` 0.3.1. Ours vs each reference build's
//! three plugins. Each side has a persistent node namespace; every round a fresh pod, outside the timing.

use std::path::Path;

use serde_json::{json, Value};

use super::plugin_pair::{run_chain, Chain};
use super::{ratio, row, Options, Report};

fn ptp_conf(ipam: &Path) -> Value {
    json!({
        "cniVersion": "0.3.1",
        "name": "benchkind",
        "type": "ptp",
        "ipMasq": false,
        "mtu": 1500,
        "ipam": {"type": "host-local", "dataDir": ipam,
                 "routes": [{"dst": "0.0.0.0/0"}], "ranges": [[{"subnet": "10.92.0.0/16"}]]},
    })
}

fn portmap_conf(prev: &Value) -> Value {
    json!({
        "cniVersion": "0.3.1",
        "name": "benchkind",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": prev,
    })
}

pub fn run(options: &Options) -> Report {
    let times = run_chain(
        options,
        &Chain {
            name: "benchkind",
            plugins: ["ptp", "portmap"],
            first: ptp_conf,
            second: portmap_conf,
        },
    );
    let (labels, t) = (&times.labels, &times.chain);
    let notes = (1..t.len())
        .map(|r| {
            format!(
                "vs {}: chain ADD+DEL ratio {:.2} (target <= 0.35)",
                options.references[r - 1].label,
                ratio(&t[0], &t[r])
            )
        })
        .collect();
    Report {
        scenario: "kindnet".into(),
        what: "ptp + host-local + portmap (1 host port) ADD+DEL at 0.3.1, direct exec, fresh pod"
            .into(),
        ours: row(&labels[0], &t[0]),
        references: labels
            .iter()
            .zip(t)
            .skip(1)
            .map(|(l, t)| row(l, t))
            .collect(),
        floors: Vec::new(),
        notes,
    }
}
