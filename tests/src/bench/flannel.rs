//! Scenario `flannel`: the flannel meta plugin's ADD and DEL by direct exec on a node with a
//! `subnet.env`, delegating to bridge + host-local. Ours (twill's flannel, bridge, host-local) vs
//! flannel's own CNI plugin (built from `tests/upstream/flannel-cni`; no reference build ships one)
//! delegating to each reference build's bridge and host-local. Each side has its own node namespace and
//! directories that persist across rounds (the bridge exists after the first ADD); every round gets a
//! fresh pod namespace, removed only at the end (its teardown would land in a later round's timing).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::{interleaved_each, ratio, row, CniNode, Options, Report};
use twill_tests::bins::upstream_bin;
use twill_tests::netns::Netns;

/// What flanneld writes for a node of a /16 cluster network that leased 10.244.1.0/24 (it masquerades
/// itself, so the delegate does not).
const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
                          FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

struct Side {
    label: String,
    plugin: PathBuf,
    node: CniNode,
    dir: tempfile::TempDir,
    counter: usize,
    dels: Vec<Duration>,
    done: Vec<Netns>,
}

impl Side {
    fn new(label: String, plugin: PathBuf, cni_path: String) -> Side {
        let node = CniNode::new("benchfl", cni_path);
        let dir = tempfile::tempdir().expect("flannel bench dir");
        std::fs::write(dir.path().join("subnet.env"), SUBNET_ENV).expect("write subnet.env");
        Side {
            label,
            plugin,
            node,
            dir,
            counter: 0,
            dels: Vec::new(),
            done: Vec::new(),
        }
    }

    fn conf(&self) -> Value {
        let dir = self.dir.path();
        json!({
            "cniVersion": "0.4.0", "name": "benchfl", "type": "flannel",
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
            "subnetFile": dir.join("subnet.env"),
            "dataDir": dir.join("flannel"),
            "ipam": {"dataDir": dir.join("ipam")},
        })
    }

    fn exec(&self, command: &str, pod: &Path, id: &str, conf: &Value) -> Duration {
        self.node.exec(&self.plugin, command, pod, id, conf).elapsed
    }

    /// ADD then DEL on a fresh pod; returns the ADD and keeps the DEL.
    fn round(&mut self) -> Duration {
        self.counter += 1;
        let id = format!("benchfl-{}", self.counter);
        let pod = Netns::new("benchflpod");
        let conf = self.conf();
        let add = self.exec("ADD", pod.path(), &id, &conf);
        self.dels.push(self.exec("DEL", pod.path(), &id, &conf));
        self.done.push(pod);
        add
    }
}

pub fn run(options: &Options) -> Report {
    let ours = options.ours.join("flannel");
    for p in ["flannel", "bridge", "host-local"].map(|n| options.ours.join(n)) {
        assert!(p.is_file(), "{} is missing", p.display());
    }
    let upstream = upstream_bin("flannel-cni", "flannel");
    let upstream_dir = upstream.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut sides = vec![Side::new(
        "twill".into(),
        ours,
        options.ours.display().to_string(),
    )];
    for reference in &options.references {
        for p in ["bridge", "host-local"].map(|n| reference.dir.join(n)) {
            assert!(p.is_file(), "{} is missing", p.display());
        }
        sides.push(Side::new(
            format!("flannel v0.9.1 + {}", reference.label),
            upstream.clone(),
            format!("{}:{}", upstream_dir.display(), reference.dir.display()),
        ));
    }
    let adds = interleaved_each(options, &mut sides, |_, side| side.round());
    let dels: Vec<Vec<Duration>> = sides
        .iter()
        .map(|s| s.dels.iter().skip(options.warmup).copied().collect())
        .collect();
    let mut notes = Vec::new();
    for r in 1..sides.len() {
        notes.push(format!(
            "vs {}: ADD {:.2}, DEL {:.2}",
            sides[r].label,
            ratio(&adds[0], &adds[r]),
            ratio(&dels[0], &dels[r])
        ));
    }
    notes.push(
        "reference side: flannel's plugin as of its fork (reference plugins v0.9.1; \
         flannel-io/cni-plugin is not on the Go module proxy)"
            .into(),
    );
    Report {
        scenario: "flannel".into(),
        what: "flannel -> bridge + host-local ADD (subnet.env, fresh pod, existing bridge), direct exec"
            .into(),
        ours: row("twill ADD", &adds[0]),
        references: sides
            .iter()
            .zip(&adds)
            .skip(1)
            .map(|(s, t)| row(&format!("{} ADD", s.label), t))
            .collect(),
        floors: sides
            .iter()
            .zip(&dels)
            .map(|(s, t)| row(&format!("{} DEL", s.label), t))
            .collect(),
        notes,
    }
}
