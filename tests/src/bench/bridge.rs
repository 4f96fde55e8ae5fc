//! Scenario `bridge` (issue 4): bridge + host-local ADD and DEL by direct exec, ours vs
//! `/usr/lib/cni/bridge` (each side with its own host-local: ours first in `CNI_PATH` for ours, the
//! reference's for the reference), with masquerade off and on, and 40 ADDs in parallel on one bridge.
//! Each side has its own node namespace that persists across rounds (like a real node: the bridge exists
//! after the first ADD); every round gets a fresh pod namespace, created and removed outside the timing.
//!
//! The main row pair is ADD without masquerade; the other comparisons are extra rows (labelled) with their
//! ratios in the notes. Floors: the kernel work of an ADD done in-process (`twill_kernel::measure_kernel_floor`)
//! and the kernel's veth delete (the bulk of any DEL: it waits for an RCU grace period).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{interleaved, series, Options, Report, Row, Stats};
use twill_kernel::{Handle, NetNs, VethSpec};
use twill_tests::exec::Invocation;
use twill_tests::netns::Netns;

/// One side: a plugin, its CNI_PATH, its node and IPAM directory.
struct Side {
    plugin: PathBuf,
    cni_path: String,
    node: Netns,
    ipam: tempfile::TempDir,
    counter: usize,
    /// Pods of finished rounds. Removed only at the end: the kernel tears a namespace down in a worker that
    /// takes the rtnl lock, which would otherwise land inside a later round's timing (of either side).
    done: Vec<Netns>,
}

impl Side {
    fn new(plugin: PathBuf, cni_path: String) -> Side {
        let node = Netns::new("bench");
        node.exec_ok(&["ip", "link", "set", "lo", "up"]);
        let ipam = tempfile::tempdir().expect("ipam dir");
        Side {
            plugin,
            cni_path,
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
        let out = Invocation::new(&self.plugin, command)
            .libcni_style()
            .container_id(Some(id))
            .netns(Some(pod))
            .cni_path(Some(&self.cni_path))
            .stdin_json(conf)
            .in_netns(self.node.path())
            .run();
        assert!(
            out.success(),
            "{} {command} failed: {}",
            self.plugin.display(),
            out.describe()
        );
        out.elapsed
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

fn row(label: &str, samples: &[Duration]) -> Row {
    Row {
        label: label.to_string(),
        stats: Stats::of(samples),
    }
}

fn ratio(a: &[Duration], b: &[Duration]) -> f64 {
    Stats::of(a).median.as_secs_f64() / Stats::of(b).median.as_secs_f64()
}

/// The kernel's part of a DEL: deleting a veth pair whose peer is in a pod namespace, in-process.
fn veth_delete_floor(options: &Options) -> Vec<Duration> {
    let node = NetNs::create_unnamed().expect("node netns");
    let host = Handle::in_netns(&node).expect("netlink in node");
    let mut n = 0u32;
    // Kept until the end, as the sides' pods: namespace teardown must not land inside a later sample.
    let mut pods = Vec::new();
    let samples = series(options, || {
        n += 1;
        let pod = NetNs::create_unnamed().expect("pod netns");
        let link = host
            .create_veth(&VethSpec {
                name: format!("vfloor{n}"),
                peer_name: "eth0".into(),
                peer_netns: Some(&pod),
                up: true,
                ..Default::default()
            })
            .expect("create veth");
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
    let ref_bin = options.reference.join("bridge");
    for p in [&ours_bin, &ref_bin, &options.ours.join("host-local")] {
        assert!(p.is_file(), "{} is missing", p.display());
    }
    let reference_dir = options.reference.display().to_string();
    let mut ours = Side::new(
        ours_bin.clone(),
        format!("{}:{reference_dir}", options.ours.display()),
    );
    let mut theirs = Side::new(ref_bin.clone(), reference_dir);

    let mut results = Vec::new();
    for masq in [false, true] {
        let mut ours_del = Vec::new();
        let mut ref_del = Vec::new();
        let (ours_add, ref_add) = interleaved(
            options,
            || {
                let (a, d) = ours.add_del(masq);
                ours_del.push(d);
                a
            },
            || {
                let (a, d) = theirs.add_del(masq);
                ref_del.push(d);
                a
            },
        );
        // `interleaved` discards warm-up rounds of the returned series; do the same for DEL.
        let skip = options.warmup;
        let ours_del: Vec<Duration> = ours_del.into_iter().skip(skip).collect();
        let ref_del: Vec<Duration> = ref_del.into_iter().skip(skip).collect();
        results.push((masq, ours_add, ref_add, ours_del, ref_del));
    }
    let par_rounds = Options {
        rounds: options.rounds.clamp(1, 5),
        warmup: 1,
        ..options.clone()
    };
    let (ours_par, ref_par) = interleaved(
        &par_rounds,
        || ours.parallel_adds(40),
        || theirs.parallel_adds(40),
    );
    let kernel_add = twill_kernel::measure_kernel_floor(options.rounds.max(1))
        .expect("kernel floor")
        .samples;
    let kernel_del = veth_delete_floor(options);

    let (_, ours_add, ref_add, ours_del, ref_del) = &results[0];
    let (_, ours_add_m, ref_add_m, ours_del_m, ref_del_m) = &results[1];
    let notes = vec![
        format!(
            "ADD ratio without masquerade: {:.2} (target <= 0.35)",
            ratio(ours_add, ref_add)
        ),
        format!(
            "ADD ratio with masquerade: {:.2} (target <= 0.20)",
            ratio(ours_add_m, ref_add_m)
        ),
        format!(
            "DEL ratio without masquerade: {:.2}; with: {:.2}",
            ratio(ours_del, ref_del),
            ratio(ours_del_m, ref_del_m)
        ),
        format!(
            "DEL / kernel veth delete: {:.2} without masquerade, {:.2} with (target <= 1.3)",
            ratio(ours_del, &kernel_del),
            ratio(ours_del_m, &kernel_del)
        ),
        format!(
            "40 parallel ADDs ratio: {:.2} (target <= 0.4)",
            ratio(&ours_par, &ref_par)
        ),
        "masquerade: ours nftables (native netlink), reference iptables (exec)".to_string(),
    ];
    Report {
        scenario: "bridge".into(),
        what: "bridge + host-local ADD (isGateway, fresh pod, existing bridge), direct exec".into(),
        ours: row("twill ADD", ours_add),
        reference: row("reference ADD", ref_add),
        floors: vec![
            row("twill DEL", ours_del),
            row("reference DEL", ref_del),
            row("twill ADD  (ipMasq)", ours_add_m),
            row("reference ADD  (ipMasq)", ref_add_m),
            row("twill DEL  (ipMasq)", ours_del_m),
            row("reference DEL  (ipMasq)", ref_del_m),
            row("twill 40 parallel ADDs (wall)", &ours_par),
            row("reference 40 parallel ADDs (wall)", &ref_par),
            row("kernel floor: ADD netlink work", &kernel_add),
            row("kernel floor: veth delete", &kernel_del),
        ],
        notes,
    }
}
