//! Scenario `kindnet`: kind's default chain, ptp (+ host-local) then portmap with one host port, ADD+DEL by
//! direct exec the way libcni runs the conflist (portmap with ptp's result as `prevResult`; DEL in reverse
//! order with the cached `runtimeConfig`), at kindnet's `cniVersion` 0.3.1. Ours vs each reference build's
//! three plugins. Each side has a persistent node namespace; every round a fresh pod, outside the timing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::{interleaved_each, ratio, row, CniNode, Options, Report};
use twill_tests::netns::Netns;

struct Side {
    dir: PathBuf,
    node: CniNode,
    ipam: tempfile::TempDir,
    counter: usize,
    done: Vec<Netns>,
}

impl Side {
    fn ptp_conf(&self) -> Value {
        json!({
            "cniVersion": "0.3.1",
            "name": "benchkind",
            "type": "ptp",
            "ipMasq": false,
            "mtu": 1500,
            "ipam": {"type": "host-local", "dataDir": self.ipam.path(),
                     "routes": [{"dst": "0.0.0.0/0"}], "ranges": [[{"subnet": "10.92.0.0/16"}]]},
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
        let out = self
            .node
            .exec(&self.dir.join(plugin), command, pod, id, conf);
        (out.elapsed, out.json.unwrap_or(Value::Null))
    }

    fn round(&mut self) -> Duration {
        self.counter += 1;
        let id = format!("benchkind-{}", self.counter);
        let pod = Netns::new("benchkpod");
        let ptp = self.ptp_conf();
        let (t1, prev) = self.exec("ptp", "ADD", pod.path(), &id, &ptp);
        let pm = json!({
            "cniVersion": "0.3.1",
            "name": "benchkind",
            "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": prev,
        });
        let (t2, _) = self.exec("portmap", "ADD", pod.path(), &id, &pm);
        let (t3, _) = self.exec("portmap", "DEL", pod.path(), &id, &pm);
        let mut ptp_del = ptp.clone();
        ptp_del["prevResult"] = pm["prevResult"].clone();
        let (t4, _) = self.exec("ptp", "DEL", pod.path(), &id, &ptp_del);
        self.done.push(pod);
        t1 + t2 + t3 + t4
    }
}

pub fn run(options: &Options) -> Report {
    let mut labels = vec!["twill chain".to_string()];
    let mut dirs = vec![options.ours.clone()];
    for reference in &options.references {
        labels.push(format!("{} chain", reference.label));
        dirs.push(reference.dir.clone());
    }
    for dir in &dirs {
        for plugin in ["ptp", "host-local", "portmap"] {
            let p = dir.join(plugin);
            assert!(p.is_file(), "{} is missing", p.display());
        }
    }
    let mut sides: Vec<Side> = dirs
        .iter()
        .map(|d| Side {
            dir: d.clone(),
            // Each side with only its own build's plugins.
            node: CniNode::new("benchkind", d.display().to_string()),
            ipam: tempfile::tempdir().expect("ipam dir"),
            counter: 0,
            done: Vec::new(),
        })
        .collect();
    let t = interleaved_each(options, &mut sides, |_, side| side.round());
    let notes = (1..sides.len())
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
            .zip(&t)
            .skip(1)
            .map(|(l, t)| row(l, t))
            .collect(),
        floors: Vec::new(),
        notes,
    }
}
