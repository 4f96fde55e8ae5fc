//! Scenario `bridge`: bridge + host-local ADD and DEL by direct exec, ours vs each reference build's
//! `bridge` (each side with its own host-local: ours first in `CNI_PATH` for ours, the reference's for
//! the reference), with masquerade off and on, and 40 ADDs in parallel on one bridge.
//! Each side has its own node namespace that persists across rounds (like a real node: the bridge exists
//! after the first ADD); every round gets a fresh pod namespace, created and removed outside the timing.
//!
//! The main row pair is ADD without masquerade; the other comparisons are extra rows (labelled) with their
//! ratios in the notes. Floors: the kernel work of an ADD done in-process ([`super::floor::measure_kernel_floor`])
//! and the kernel's veth delete (the bulk of any DEL: it waits for an RCU grace period).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::floor::pod_with_veth;
use super::{interleaved_each, ratio, row, series, CniNode, Options, Report};
use twill_kernel::{Handle, NetNs};
use twill_tests::netns::Netns;

/// One side: a plugin, its CNI_PATH, its node and IPAM directory.
struct Side {
    label: String,
    plugin: PathBuf,
    node: CniNode,
    ipam: tempfile::TempDir,
    counter: usize,
    /// Pods of finished rounds. Removed only at the end: the kernel tears a namespace down in a worker that
    /// takes the rtnl lock, which would otherwise land inside a later round's timing (of either side).
    done: Vec<Netns>,
}

impl Side {
    fn new(label: String, plugin: PathBuf, cni_path: String) -> Side {
        let node = CniNode::new("bench", cni_path);
        let ipam = tempfile::tempdir().expect("ipam dir");
        Side {
            label,
            plugin,
            node,
            ipam,
            counter: 0,
            done: Vec::new(),
        }
    }

    fn conf(&self, masq: bool) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": if masq { "benchmasq" } else { "bench" },
            "type": "bridge",
            "bridge": if masq { "cni1" } else { "cni0" },
            "isGateway": true,
            "ipMasq": masq,
            "ipam": {"type": "host-local", "dataDir": self.ipam.path(),
                     "ranges": [[{"subnet": if masq { "10.97.0.0/16" } else { "10.98.0.0/16" }}]]},
        })
    }

    fn exec(&self, command: &str, pod: &Path, id: &str, conf: &Value) -> Duration {
        self.node.exec(&self.plugin, command, pod, id, conf).elapsed
    }

    /// ADD then DEL on a fresh pod; returns (ADD, DEL) durations.
    fn add_del(&mut self, masq: bool) -> (Duration, Duration) {
        self.counter += 1;
        let id = format!("bench-{}", self.counter);
        let pod = Netns::new("benchpod");
        let conf = self.conf(masq);
        let add = self.exec("ADD", pod.path(), &id, &conf);
        let del = self.exec("DEL", pod.path(), &id, &conf);
        self.done.push(pod);
        (add, del)
    }

    /// 40 ADDs in parallel (wall clock), then 40 DELs (untimed).
    fn parallel_adds(&mut self, n: usize) -> Duration {
        let pods: Vec<Netns> = (0..n).map(|_| Netns::new("benchpod")).collect();
        self.counter += 1;
        let round = self.counter;
        let conf = self.conf(false);
        let this = &*self;
        let start = Instant::now();
        std::thread::scope(|s| {
            for (i, pod) in pods.iter().enumerate() {
                let conf = &conf;
                s.spawn(move || this.exec("ADD", pod.path(), &format!("par-{round}-{i}"), conf));
            }
        });
        let elapsed = start.elapsed();
        std::thread::scope(|s| {
            for (i, pod) in pods.iter().enumerate() {
                let conf = &conf;
                s.spawn(move || this.exec("DEL", pod.path(), &format!("par-{round}-{i}"), conf));
            }
        });
        self.done.extend(pods);
        elapsed
    }
}

/// The kernel's part of a DEL: deleting a veth pair whose peer is in a pod namespace, in-process.
pub(crate) fn veth_delete_floor(options: &Options) -> Vec<Duration> {
    let node = NetNs::create_unnamed().expect("node netns");
    let host = Handle::in_netns(&node).expect("netlink in node");
    let mut n = 0u32;
    // Kept until the end, as the sides' pods: namespace teardown must not land inside a later sample.
    let mut pods = Vec::new();
    let samples = series(options, || {
        n += 1;
        let (pod, link) = pod_with_veth(&host, format!("vfloor{n}"));
        let start = Instant::now();
        host.delete_link(link.index).expect("delete veth");
        let d = start.elapsed();
        pods.push(pod);
        d
    });
    drop(pods);
    samples
}

pub fn run(options: &Options) -> Report {
    let ours_bin = options.ours.join("bridge");
    assert!(ours_bin.is_file(), "{} is missing", ours_bin.display());
    let host_local = options.ours.join("host-local");
    assert!(host_local.is_file(), "{} is missing", host_local.display());
    let primary = options.primary().dir.display().to_string();
    let mut sides = vec![Side::new(
        "twill".into(),
        ours_bin,
        format!("{}:{primary}", options.ours.display()),
    )];
    for reference in &options.references {
        let plugin = reference.dir.join("bridge");
        assert!(plugin.is_file(), "{} is missing", plugin.display());
        sides.push(Side::new(
            reference.label.clone(),
            plugin,
            reference.dir.display().to_string(),
        ));
    }
    let n = sides.len();

    // Per masquerade setting: (ADD series, DEL series) of every side.
    let mut results = Vec::new();
    for masq in [false, true] {
        let mut dels = vec![Vec::new(); n];
        let adds = interleaved_each(options, &mut sides, |i, side| {
            let (a, d) = side.add_del(masq);
            dels[i].push(d);
            a
        });
        // `interleaved_each` discards warm-up rounds of the returned series; do the same for DEL.
        let dels: Vec<Vec<Duration>> = dels
            .into_iter()
            .map(|d| d.into_iter().skip(options.warmup).collect())
            .collect();
        results.push((adds, dels));
    }
    let par_rounds = Options {
        rounds: options.rounds.clamp(1, 5),
        warmup: 1,
        ..options.clone()
    };
    let par = interleaved_each(&par_rounds, &mut sides, |_, side| side.parallel_adds(40));
    let kernel_add =
        super::floor::measure_kernel_floor(options.rounds.max(1)).expect("kernel floor");
    let kernel_del = veth_delete_floor(options);

    let (adds, dels) = &results[0];
    let (adds_m, dels_m) = &results[1];
    let mut notes = Vec::new();
    for (r, side) in sides.iter().enumerate().skip(1) {
        notes.push(format!(
            "vs {}: ADD {:.2} (target <= 0.35), ADD ipMasq {:.2} (target <= 0.20), DEL {:.2}, DEL \
             ipMasq {:.2}, 40 parallel ADDs {:.2} (target <= 0.4)",
            side.label,
            ratio(&adds[0], &adds[r]),
            ratio(&adds_m[0], &adds_m[r]),
            ratio(&dels[0], &dels[r]),
            ratio(&dels_m[0], &dels_m[r]),
            ratio(&par[0], &par[r]),
        ));
    }
    notes.push(format!(
        "DEL / kernel veth delete: {:.2} without masquerade, {:.2} with (target <= 1.3)",
        ratio(&dels[0], &kernel_del),
        ratio(&dels_m[0], &kernel_del)
    ));
    notes.push("masquerade: ours nftables (native netlink), reference iptables (exec)".to_string());
    let mut floors = Vec::new();
    for (what, series) in [
        ("DEL", dels),
        ("ADD  (ipMasq)", adds_m),
        ("DEL  (ipMasq)", dels_m),
        ("40 parallel ADDs (wall)", &par),
    ] {
        for (side, t) in sides.iter().zip(series) {
            floors.push(row(&format!("{} {what}", side.label), t));
        }
    }
    floors.push(row("kernel floor: ADD netlink work", &kernel_add));
    floors.push(row("kernel floor: veth delete", &kernel_del));
    Report {
        scenario: "bridge".into(),
        what: "bridge + host-local ADD (isGateway, fresh pod, existing bridge), direct exec".into(),
        ours: row("twill ADD", &adds[0]),
        references: sides
            .iter()
            .zip(adds)
            .skip(1)
            .map(|(side, t)| row(&format!("{} ADD", side.label), t))
            .collect(),
        floors,
        notes,
    }
}
