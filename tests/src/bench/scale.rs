//! Scenario `scale`: bridge + host-local ADD and DEL with 0, 200 and 1,000 pods already on the bridge, ours
//! next to the reference plugins and the kernel floor at the same number of ports, rounds interleaved.
//!
//! Every side has its own node namespace holding a bridge that it fills itself, untimed: the plugin sides
//! with real pods (one namespace each, ADDed by that side's own plugin, so the host-local store and the
//! bridge look as a node's would), the floor with bare veth pairs whose peers are up in pod namespaces.
//! At each size, every round ADDs then DELs one fresh pod per side (so the size stays put); the side going
//! first alternates. The floor's ADD is [`super::floor::pod_add_on_bridge`] (veth + master + up + address
//! + route, one synchronous netlink sequence in-process) and its DEL the host end's delete.
//!
//! The references are the harness's (`--reference DIR`, repeatable; by default upstream and Debian).
//! Sizes: `--pods 0,200,1000`; rounds per size: `--rounds` (default here 30) and `--warmup` (default 3).
//! Namespaces of measured rounds and fillers are removed only at the end: the kernel tears a namespace
//! down in a worker that takes the RTNL lock, which would otherwise land inside later samples.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{fmt, CniNode, Options, Report, Row, Stats};
use twill_kernel::{BridgeSpec, Handle, IpNet, NetNs, VethOptions, VethSpec};
use twill_tests::netns::Netns;

/// Pod counts measured when `--pods` is not given.
pub const DEFAULT_SIZES: [usize; 3] = [0, 200, 1_000];
/// Rounds per size when `--rounds` is not given (the whole default run stays within a few minutes).
pub const DEFAULT_ROUNDS: usize = 30;
/// Warm-up rounds per size when `--warmup` is not given.
pub const DEFAULT_WARMUP: usize = 3;

/// The floor's pod network: 10.96.0.0/16 behind the bridge's 10.96.0.1.
const FLOOR_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

enum Kind {
    Plugin {
        plugin: PathBuf,
        node: CniNode,
        ipam: tempfile::TempDir,
        pods: Vec<Netns>,
    },
    Floor {
        _node: NetNs,
        host: Handle,
        bridge: u32,
        pods: Vec<NetNs>,
        /// Whether the measured pod announces itself with a gratuitous ARP at link-up.
        arp_notify: bool,
    },
}

struct Side {
    label: String,
    kind: Kind,
    /// Pods on the bridge right now (fillers only; a measured pod is gone again after its round).
    filled: usize,
    counter: usize,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

impl Side {
    fn plugin(label: &str, dir: &Path, cni_path: String) -> Side {
        let plugin = dir.join("bridge");
        assert!(plugin.is_file(), "{} is missing", plugin.display());
        Side::new(
            label,
            Kind::Plugin {
                plugin,
                node: CniNode::new("scale", cni_path),
                ipam: tempfile::tempdir().expect("ipam dir"),
                pods: Vec::new(),
            },
        )
    }

    fn floor(arp_notify: bool) -> Side {
        let node = NetNs::create_unnamed().expect("floor node netns");
        let host = Handle::in_netns(&node).expect("netlink in floor node");
        let lo = host.link_by_name("lo").expect("lo");
        host.set_link_up(lo.index).expect("lo up");
        let br = host
            .create_bridge(&BridgeSpec {
                name: "cni0".into(),
                up: true,
                ..Default::default()
            })
            .expect("floor bridge");
        host.add_address(br.index, net(FLOOR_GATEWAY))
            .expect("floor bridge address");
        Side::new(
            if arp_notify {
                "floor + GARP"
            } else {
                "kernel floor"
            },
            Kind::Floor {
                _node: node,
                host,
                bridge: br.index,
                pods: Vec::new(),
                arp_notify,
            },
        )
    }

    fn new(label: &str, kind: Kind) -> Side {
        Side {
            label: label.to_string(),
            kind,
            filled: 0,
            counter: 0,
            add: Vec::new(),
            del: Vec::new(),
        }
    }

    /// Adds pods (untimed) until `n` are on the bridge.
    fn fill_to(&mut self, n: usize) {
        while self.filled < n {
            let i = self.filled;
            if matches!(self.kind, Kind::Plugin { .. }) {
                let pod = Netns::new("scalefill");
                self.exec("ADD", pod.path(), &format!("fill-{i}"));
                if let Kind::Plugin { pods, .. } = &mut self.kind {
                    pods.push(pod);
                }
            }
            match &mut self.kind {
                Kind::Plugin { .. } => {}
                Kind::Floor {
                    host, bridge, pods, ..
                } => {
                    let pod = NetNs::create_unnamed().expect("floor pod netns");
                    let link = host
                        .create_veth_with(
                            &VethSpec {
                                name: format!("fill{i}"),
                                peer_name: "eth0".into(),
                                peer_netns: Some(&pod),
                                up: true,
                                ..Default::default()
                            },
                            &VethOptions {
                                master: Some(*bridge),
                                single_queue: true,
                            },
                        )
                        .expect("floor filler veth");
                    let pod_handle = Handle::in_netns(&pod).expect("netlink in floor pod");
                    let eth0 = match link.peer_index {
                        Some(idx) => idx,
                        None => pod_handle.link_by_name("eth0").expect("eth0").index,
                    };
                    pod_handle.set_link_up(eth0).expect("filler eth0 up");
                    pods.push(pod);
                }
            }
            self.filled += 1;
        }
    }

    fn exec(&self, command: &str, pod: &Path, id: &str) -> Duration {
        let Kind::Plugin {
            plugin, node, ipam, ..
        } = &self.kind
        else {
            unreachable!("exec on the floor side")
        };
        node.exec(plugin, command, pod, id, &conf(ipam.path()))
            .elapsed
    }

    /// One measured round: ADD then DEL of a fresh pod; returns (ADD, DEL).
    fn round(
        &mut self,
        done: &mut Vec<Netns>,
        done_floor: &mut Vec<NetNs>,
    ) -> (Duration, Duration) {
        self.counter += 1;
        let n = self.counter;
        match &self.kind {
            Kind::Plugin { .. } => {
                let pod = Netns::new("scalepod");
                let id = format!("bench-{n}");
                let add = self.exec("ADD", pod.path(), &id);
                let del = self.exec("DEL", pod.path(), &id);
                done.push(pod);
                (add, del)
            }
            Kind::Floor {
                host,
                bridge,
                arp_notify,
                ..
            } => {
                let pod = NetNs::create_unnamed().expect("floor pod netns");
                let address = net(Ipv4Addr::new(
                    10,
                    96,
                    200 + (n / 250 % 50) as u8,
                    (n % 250 + 2) as u8,
                ));
                let start = Instant::now();
                let index = super::floor::pod_add_on_bridge(
                    host,
                    &pod,
                    &format!("vscale{n}"),
                    *bridge,
                    address,
                    IpAddr::V4(FLOOR_GATEWAY),
                    *arp_notify,
                )
                .expect("floor ADD");
                let add = start.elapsed();
                let start = Instant::now();
                host.delete_link(index).expect("floor DEL");
                let del = start.elapsed();
                done_floor.push(pod);
                (add, del)
            }
        }
    }
}

fn conf(ipam: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "scale",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": "10.98.0.0/16"}]]},
    })
}

/// `ip`/16.
fn net(ip: Ipv4Addr) -> IpNet {
    format!("{ip}/16")
        .parse()
        .expect("an IPv4 address with a prefix")
}

fn row(label: String, samples: &[Duration]) -> Row {
    Row {
        label,
        stats: Stats::of(samples),
    }
}

fn median(samples: &[Duration]) -> f64 {
    Stats::of(samples).median.as_secs_f64()
}

pub fn run(options: &Options) -> Report {
    let sizes = options
        .pods
        .clone()
        .unwrap_or_else(|| DEFAULT_SIZES.to_vec());
    let rounds = if options.rounds_given {
        options.rounds
    } else {
        DEFAULT_ROUNDS
    };
    let warmup = if options.warmup_given {
        options.warmup
    } else {
        DEFAULT_WARMUP
    };
    // Ours finds host-local in its own directory; the reference directories follow for anything else.
    let mut cni_path = options.ours.display().to_string();
    for r in &options.references {
        cni_path.push(':');
        cni_path.push_str(&r.dir.display().to_string());
    }
    let mut sides = vec![Side::plugin("twill", &options.ours, cni_path)];
    for r in &options.references {
        sides.push(Side::plugin(&r.label, &r.dir, r.dir.display().to_string()));
    }
    let references = 1..sides.len();
    sides.push(Side::floor(false));
    let floor = sides.len() - 1;
    sides.push(Side::floor(true));
    let floor_garp = sides.len() - 1;

    let mut done = Vec::new();
    let mut done_floor = Vec::new();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut summary = Vec::new();
    let mut last: Vec<(Vec<Duration>, Vec<Duration>)> = Vec::new();
    for &size in &sizes {
        let start = Instant::now();
        for side in &mut sides {
            side.fill_to(size);
            side.add.clear();
            side.del.clear();
        }
        eprintln!(
            "scale: {size} pods on each bridge (filled in {:.1?})",
            start.elapsed()
        );
        let n = sides.len();
        for round in 0..warmup + rounds {
            for k in 0..n {
                let s = (round + k) % n;
                let (add, del) = sides[s].round(&mut done, &mut done_floor);
                if round >= warmup {
                    sides[s].add.push(add);
                    sides[s].del.push(del);
                }
            }
        }
        for side in &sides {
            rows.push(row(format!("{} ADD @{size}", side.label), &side.add));
        }
        for side in &sides {
            rows.push(row(format!("{} DEL @{size}", side.label), &side.del));
        }
        let f = &sides[floor];
        let mut line = format!("{size:>5} pods: ADD median");
        for side in &sides {
            line.push_str(&format!(
                " {} {}",
                side.label,
                fmt(Stats::of(&side.add).median)
            ));
        }
        let ours = &sides[0];
        line.push_str(&format!(
            "; twill/floor {:.2}, twill/(floor + GARP) {:.2}",
            median(&ours.add) / median(&f.add),
            median(&ours.add) / median(&sides[floor_garp].add),
        ));
        for r in references.clone() {
            line.push_str(&format!(
                ", twill/{} {:.2}",
                sides[r].label,
                median(&ours.add) / median(&sides[r].add)
            ));
        }
        line.push_str(&format!(
            "; DEL twill/floor {:.2}",
            median(&ours.del) / median(&f.del)
        ));
        for r in references.clone() {
            line.push_str(&format!(
                ", twill/{} {:.2}",
                sides[r].label,
                median(&ours.del) / median(&sides[r].del)
            ));
        }
        summary.push(line);
        last = sides
            .iter()
            .map(|s| (s.add.clone(), s.del.clone()))
            .collect();
    }
    notes.extend(summary);
    notes.push(format!(
        "{rounds} rounds (+{warmup} warm-up) per size; the floor is veth + master + up + address + route in-process"
    ));
    let labels: Vec<String> = sides.iter().map(|s| s.label.clone()).collect();
    drop(sides);
    drop(done);
    drop(done_floor);
    let largest = sizes.last().copied().unwrap_or(0);
    Report {
        scenario: "scale".into(),
        what: format!(
            "bridge + host-local ADD/DEL with {sizes:?} pods already on the bridge (main rows: {largest} pods)"
        ),
        ours: row(format!("twill ADD @{largest}"), &last[0].0),
        references: labels
            .iter()
            .zip(&last)
            .skip(1)
            .take(options.references.len())
            .map(|(label, (add, _))| row(format!("{label} ADD @{largest}"), add))
            .collect(),
        floors: rows,
        notes,
    }
}
