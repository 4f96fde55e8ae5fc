//! Scenarios `bandwidth` and `firewall`: one chained plugin's ADD and DEL, by direct exec with a
//! `prevResult` as libcni passes it, ours against each reference build, interleaved. Each side has a
//! persistent node namespace (the firewall's shared chains exist after the first round, as on a real
//! node); every round gets a fresh pod namespace and veth pair, made outside the timing. The headline
//! rows are ADD; DEL has its own rows.
//!
//! bandwidth: ingress and egress limits (tbf on the host veth, ifb with its tbf, redirect filter).
//! firewall: iptables backend, one IPv4 and one IPv6 address.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::floor::pod_with_veth;
use super::{interleaved_each, ratio, row, series, CniNode, Options, Report};
use std::time::Instant;
use twill_kernel::tc::{Tbf, TcHandle};
use twill_kernel::{Handle, NetNs};
use twill_tests::netns::Netns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bandwidth,
    Firewall,
}

impl Kind {
    fn plugin(self) -> &'static str {
        match self {
            Kind::Bandwidth => "bandwidth",
            Kind::Firewall => "firewall",
        }
    }
}

struct Side {
    plugin: PathBuf,
    node: CniNode,
    counter: usize,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

impl Side {
    fn new(kind: Kind, dir: &Path) -> Side {
        Side {
            plugin: dir.join(kind.plugin()),
            node: CniNode::new("benchmeta", dir.display().to_string()),
            counter: 0,
            add: Vec::new(),
            del: Vec::new(),
        }
    }

    fn conf(&self, kind: Kind, pod: &Netns, host_veth: &str) -> Value {
        let n = self.counter;
        let v4 = format!("10.97.{}.{}/16", (n / 250) % 250, n % 250 + 2);
        let v6 = format!("fd97::{:x}/64", n + 2);
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": host_veth}, {"name": "eth0", "sandbox": pod.path_str()}],
            "ips": [{"address": v4, "interface": 1}, {"address": v6, "interface": 1}],
        });
        let mut c = json!({"cniVersion": "1.0.0", "name": "benchmeta", "type": kind.plugin(),
            "prevResult": prev});
        match kind {
            Kind::Bandwidth => {
                c["ingressRate"] = json!(10_000_000);
                c["ingressBurst"] = json!(100_000);
                c["egressRate"] = json!(20_000_000);
                c["egressBurst"] = json!(200_000);
            }
            Kind::Firewall => c["backend"] = json!("iptables"),
        }
        c
    }

    /// One round: ADD then DEL on a fresh pod; returns ADD + DEL.
    fn round(&mut self, kind: Kind) -> Duration {
        self.counter += 1;
        let id = format!("benchmeta-{}", self.counter);
        let pod = Netns::new("benchmetapod");
        let host_veth = format!("vbm{}", self.counter);
        self.node.netns.exec_ok(&[
            "ip",
            "link",
            "add",
            &host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ]);
        self.node
            .netns
            .exec_ok(&["ip", "link", "set", &host_veth, "up"]);
        let conf = self.conf(kind, &pod, &host_veth);
        let add = self.node.exec(&self.plugin, "ADD", pod.path(), &id, &conf);
        let del = self.node.exec(&self.plugin, "DEL", pod.path(), &id, &conf);
        self.node.netns.exec_ok(&["ip", "link", "del", &host_veth]);
        self.add.push(add.elapsed);
        self.del.push(del.elapsed);
        add.elapsed + del.elapsed
    }
}

/// The kernel's part of bandwidth's ADD and DEL, done in-process one request after another on a fresh
/// veth: ifb, ingress qdisc, redirect filter, two token buckets; then the ifb's deletion.
fn bandwidth_kernel_floor(options: &Options) -> (Vec<Duration>, Vec<Duration>) {
    let node = NetNs::create_unnamed().expect("node netns");
    let host = Handle::in_netns(&node).expect("netlink in node");
    let tbf = Tbf {
        rate: 1_250_000,
        limit: 43_750,
        buffer: 1_562_500,
    };
    let root = TcHandle { major: 1, minor: 0 };
    let mut n = 0u32;
    let mut pods = Vec::new();
    let mut dels = Vec::new();
    let adds = series(options, || {
        n += 1;
        let (pod, veth) = pod_with_veth(&host, format!("vbf{n}"));
        let start = Instant::now();
        let ifb = host.create_ifb(&format!("bwf{n}"), 1500).expect("ifb");
        host.add_ingress_qdisc(veth.index).expect("ingress");
        host.add_redirect_filter(
            veth.index,
            TcHandle {
                major: 0xffff,
                minor: 0,
            },
            1,
            TcHandle { major: 1, minor: 1 },
            ifb.index,
        )
        .expect("filter");
        host.add_tbf_root(veth.index, root, &tbf).expect("tbf veth");
        host.add_tbf_root(ifb.index, root, &tbf).expect("tbf ifb");
        let add = start.elapsed();
        let start = Instant::now();
        host.delete_link(ifb.index).expect("delete ifb");
        dels.push(start.elapsed());
        host.delete_link(veth.index).expect("delete veth");
        pods.push(pod);
        add
    });
    drop(pods);
    (adds, dels.split_off(options.warmup.min(dels.len())))
}

fn run(kind: Kind, options: &Options) -> Report {
    let name = kind.plugin();
    let mut labels = vec!["twill".to_string()];
    let mut dirs = vec![options.ours.clone()];
    for reference in &options.references {
        labels.push(reference.label.clone());
        dirs.push(reference.dir.clone());
    }
    for dir in &dirs {
        let p = dir.join(name);
        assert!(p.is_file(), "{} is missing", p.display());
    }
    let mut sides: Vec<Side> = dirs.iter().map(|d| Side::new(kind, d)).collect();
    interleaved_each(options, &mut sides, |_, side| side.round(kind));
    let skip = options.warmup;
    let add: Vec<Vec<Duration>> = sides.iter().map(|s| s.add[skip..].to_vec()).collect();
    let del: Vec<Vec<Duration>> = sides.iter().map(|s| s.del[skip..].to_vec()).collect();
    let floor = (kind == Kind::Bandwidth).then(|| bandwidth_kernel_floor(options));
    let notes = (1..sides.len())
        .map(|r| {
            format!(
                "vs {}: ADD ratio {:.2}, DEL ratio {:.2} (target <= 0.50)",
                labels[r],
                ratio(&add[0], &add[r]),
                ratio(&del[0], &del[r])
            )
        })
        .collect();
    Report {
        scenario: name.into(),
        what: match kind {
            Kind::Bandwidth => {
                "bandwidth ADD (ingress+egress: tbf, ifb, redirect) on a fresh veth, direct exec"
            }
            Kind::Firewall => {
                "firewall ADD (iptables, IPv4+IPv6 address), direct exec, existing chains"
            }
        }
        .into(),
        ours: row(&format!("{} ADD", labels[0]), &add[0]),
        references: labels
            .iter()
            .zip(&add)
            .skip(1)
            .map(|(l, t)| row(&format!("{l} ADD"), t))
            .collect(),
        floors: labels
            .iter()
            .zip(&del)
            .map(|(l, t)| row(&format!("{l} DEL"), t))
            .chain(floor.iter().flat_map(|(a, d)| {
                [
                    row("kernel floor: ADD netlink work", a),
                    row("kernel floor: ifb delete", d),
                ]
            }))
            .collect(),
        notes,
    }
}

pub fn run_bandwidth(options: &Options) -> Report {
    run(Kind::Bandwidth, options)
}

pub fn run_firewall(options: &Options) -> Report {
    run(Kind::Firewall, options)
}
