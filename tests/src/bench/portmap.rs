//! Scenario `portmap`: ADD+DEL of a `bridge` + `portmap` chain with two port mappings, by
//! direct exec the way libcni runs a conflist (bridge ADD, portmap ADD with the bridge's result as
//! `prevResult`; then portmap DEL, bridge DEL, both with the cached `runtimeConfig` as libcni replays
//! it). Ours (bridge + host-local + portmap from the twill build) vs each reference build's three plugins.
//! Each side has a persistent node namespace (the bridge and the reference's shared chains exist after
//! the first round, as on a real node); every round gets a fresh pod namespace, outside the timing.
//!
//! Extra rows: the portmap part alone (its ADD+DEL), and the floor of exec'ing four processes.

use std::path::Path;

use serde_json::{json, Value};

use super::plugin_pair::{run_chain, Chain};
use super::{exec_floor, ratio, row, series, Options, Report};

fn mappings() -> Value {
    json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8443, "containerPort": 443, "protocol": "tcp"}
    ])
}

fn bridge_conf(ipam: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchpm",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "hairpinMode": true,
        "ipam": {"type": "host-local", "dataDir": ipam,
                 "ranges": [[{"subnet": "10.96.0.0/16"}]]},
    })
}

fn portmap_conf(prev: &Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchpm",
        "type": "portmap",
        "runtimeConfig": {"portMappings": mappings()},
        "prevResult": prev,
    })
}

pub fn run(options: &Options) -> Report {
    let times = run_chain(
        options,
        &Chain {
            name: "benchpm",
            plugins: ["bridge", "portmap"],
            first: bridge_conf,
            second: portmap_conf,
        },
    );
    let (labels, t, pm) = (&times.labels, &times.chain, &times.second);
    let exec = series(options, || exec_floor(4));
    let mut notes = Vec::new();
    for r in 1..t.len() {
        notes.push(format!(
            "vs {}: chain ratio {:.2} (target <= 0.30), portmap-only ratio {:.2}",
            options.references[r - 1].label,
            ratio(&t[0], &t[r]),
            ratio(&pm[0], &pm[r])
        ));
    }
    notes.push("portmap: ours nftables over netlink, reference iptables (exec)".to_string());
    let mut floors: Vec<_> = std::iter::once("twill".to_string())
        .chain(options.references.iter().map(|r| r.label.clone()))
        .zip(pm)
        .map(|(label, t)| row(&format!("{label} portmap ADD+DEL only"), t))
        .collect();
    floors.push(row("exec floor: 4 × /bin/true", &exec));
    Report {
        scenario: "portmap".into(),
        what: "bridge + portmap (2 mappings) ADD+DEL, direct exec, fresh pod, existing bridge"
            .into(),
        ours: row(&labels[0], &t[0]),
        references: labels
            .iter()
            .zip(t)
            .skip(1)
            .map(|(label, t)| row(label, t))
            .collect(),
        floors,
        notes,
    }
}
