//! Scenario `portmap`: ADD+DEL of a `bridge` + `portmap` chain with two port mappings, by
//! direct exec the way libcni runs a conflist (bridge ADD, portmap ADD with the bridge's result as
//! `prevResult`; then portmap DEL, bridge DEL, both with the cached `runtimeConfig` as libcni replays
//! it). Ours (bridge + host-local + portmap from the twill build) vs each reference build's three plugins.
//! Each side has a persistent node namespace (the bridge and the reference's shared chains exist after
//! the first round, as on a real node); every round gets a fresh pod namespace, outside the timing.
//!
//! Extra rows: the portmap part alone (its ADD+DEL), and the floor of exec'ing four processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::{interleaved_each, ratio, row, series, CniNode, Options, Report};
use twill_tests::exec::Invocation;
use twill_tests::netns::Netns;

struct Side {
    dir: PathBuf,
    node: CniNode,
    ipam: tempfile::TempDir,
    counter: usize,
    portmap_only: Vec<Duration>,
}

fn mappings() -> Value {
    json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8443, "containerPort": 443, "protocol": "tcp"}
    ])
}

impl Side {
    fn new(dir: &Path) -> Side {
        Side {
            dir: dir.to_path_buf(),
            node: CniNode::new("benchpm", dir.display().to_string()),
            ipam: tempfile::tempdir().expect("ipam dir"),
            counter: 0,
            portmap_only: Vec::new(),
        }
    }

    fn bridge_conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "benchpm",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "hairpinMode": true,
            "ipam": {"type": "host-local", "dataDir": self.ipam.path(),
                     "ranges": [[{"subnet": "10.96.0.0/16"}]]},
        })
    }

    fn portmap_conf(&self, prev: &Value) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "benchpm",
            "type": "portmap",
            "runtimeConfig": {"portMappings": mappings()},
            "prevResult": prev,
        })
    }

    fn exec(
        &self,
        plugin: &str,
        command: &str,
        pod: &Path,
        id: &str,
        conf: &Value,
    ) -> (Duration, Value) {
        let path = self.dir.join(plugin);
        let out = self.node.exec(&path, command, pod, id, conf);
        (out.elapsed, out.json.unwrap_or(Value::Null))
    }

    /// One round: the chain's ADD then DEL on a fresh pod; returns the total of the four executions.
    fn round(&mut self) -> Duration {
        self.counter += 1;
        let id = format!("benchpm-{}", self.counter);
        let pod = Netns::new("benchpmpod");
        let bridge = self.bridge_conf();
        let (t1, prev) = self.exec("bridge", "ADD", pod.path(), &id, &bridge);
        let pm = self.portmap_conf(&prev);
        let (t2, _) = self.exec("portmap", "ADD", pod.path(), &id, &pm);
        let (t3, _) = self.exec("portmap", "DEL", pod.path(), &id, &pm);
        let mut bridge_del = bridge.clone();
        bridge_del["prevResult"] = prev;
        let (t4, _) = self.exec("bridge", "DEL", pod.path(), &id, &bridge_del);
        self.portmap_only.push(t2 + t3);
        t1 + t2 + t3 + t4
    }
}

fn exec_floor() -> Duration {
    (0..4)
        .map(|_| {
            let outcome = Invocation::bare("/bin/true").run();
            assert!(
                outcome.success(),
                "/bin/true failed: {}",
                outcome.describe()
            );
            outcome.elapsed
        })
        .sum()
}

pub fn run(options: &Options) -> Report {
    let mut labels = vec!["twill chain".to_string()];
    let mut dirs = vec![options.ours.clone()];
    for reference in &options.references {
        labels.push(format!("{} chain", reference.label));
        dirs.push(reference.dir.clone());
    }
    for dir in &dirs {
        for plugin in ["bridge", "host-local", "portmap"] {
            let p = dir.join(plugin);
            assert!(p.is_file(), "{} is missing", p.display());
        }
    }
    let mut sides: Vec<Side> = dirs.iter().map(|d| Side::new(d)).collect();
    let t = interleaved_each(options, &mut sides, |_, side| side.round());
    let skip = options.warmup;
    let pm: Vec<Vec<Duration>> = sides
        .iter()
        .map(|s| s.portmap_only.iter().skip(skip).copied().collect())
        .collect();
    let exec = series(options, exec_floor);
    let mut notes = Vec::new();
    for r in 1..sides.len() {
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
        .zip(&pm)
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
            .zip(&t)
            .skip(1)
            .map(|(label, t)| row(label, t))
            .collect(),
        floors,
        notes,
    }
}
