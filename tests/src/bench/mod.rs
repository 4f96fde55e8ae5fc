//! Benchmark scenarios: our binaries against the reference plugin builds (by default the current
//! upstream release and Debian's 1.1.1), measured in one run with interleaved rounds (ours, each
//! reference, ours, ...) so machine noise hits every side alike; warm-up rounds are discarded. Each scenario is one file here, registered in [`scenarios`].
//! Shell-only scenarios live in `scripts/bench/<name>.sh` and are dispatched by `scripts/bench.sh`.

pub mod bridge;
pub mod flannel;
pub mod floor;
pub mod host_device;
pub mod host_local;
pub mod kindnet;
pub mod loopback;
pub mod macvlan;
pub mod meta;
pub mod plugin_pair;
pub mod portmap;
pub mod ptp;
pub mod runtimes;
pub mod sbr;
pub mod scale;
pub mod static_ipam;
pub mod tap;
pub mod tuning;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_tests::exec::{Invocation, Outcome};
use twill_tests::netns::Netns;

/// Settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Measured rounds per side.
    pub rounds: usize,
    /// Rounds per side run first and discarded (page cache, dynamic loader, kernel caches).
    pub warmup: usize,
    /// Directory of our binaries.
    pub ours: PathBuf,
    /// The reference plugin builds, each compared with ours in the same interleaved rounds; the
    /// first one is the headline.
    pub references: Vec<RefBuild>,
    /// Whether `--rounds` / `--warmup` were given (scenarios with costly rounds pick their own defaults).
    pub rounds_given: bool,
    pub warmup_given: bool,
    /// Pod counts of scenarios that measure at several sizes (`--pods 0,200,1000`).
    pub pods: Option<Vec<usize>>,
}

/// One reference plugin build: a label for the tables and its directory.
#[derive(Debug, Clone)]
pub struct RefBuild {
    pub label: String,
    pub dir: PathBuf,
}

impl Options {
    /// The first reference build (what the single-reference runtime scenarios use).
    pub fn primary(&self) -> &RefBuild {
        &self.references[0]
    }
}

/// A named scenario.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Options) -> Report,
}

/// Every Rust scenario, in the order `--list` prints them. Add new ones here.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "loopback",
            about:
                "loopback ADD+DEL on a fresh namespace; floor: lo up+down in-process via netlink",
            run: loopback::run,
        },
        Scenario {
            name: "host-local",
            about: "host-local ADD and DEL on a /16 holding 0, 1,000 and 10,000 leases",
            run: host_local::run,
        },
        Scenario {
            name: "runtimes-podman",
            about: "podman run --rm with our plugins vs the reference vs podman's netavark backend",
            run: runtimes::run_podman,
        },
        Scenario {
            name: "runtimes-containerd",
            about: "containerd CRI sandbox run+stop+remove with our plugins vs the reference",
            run: runtimes::run_containerd,
        },
        Scenario { name: "bridge", about: "bridge+host-local ADD/DEL ours vs reference, ipMasq off/on, 40 parallel ADDs; floors: kernel ADD work, veth delete", run: bridge::run },
        Scenario {
            name: "flannel",
            about: "flannel -> bridge+host-local ADD/DEL ours vs flannel's plugin (v0.9.1) on each reference",
            run: flannel::run,
        },
        Scenario {
            name: "scale",
            about: "bridge+host-local ADD/DEL with 0/200/1,000 pods on the bridge, ours vs the references vs the kernel floor",
            run: scale::run,
        },
        Scenario {
            name: "portmap",
            about: "bridge+portmap (2 mappings) ADD+DEL ours vs reference; rows: portmap alone, exec floor",
            run: portmap::run,
        },
        Scenario {
            name: "bandwidth",
            about: "bandwidth ADD and DEL (ingress+egress) on a fresh veth, ours vs reference",
            run: meta::run_bandwidth,
        },
        Scenario {
            name: "firewall",
            about: "firewall ADD and DEL (iptables, dual stack), ours vs reference",
            run: meta::run_firewall,
        },
        Scenario {
            name: "ptp",
            about: "ptp + host-local ADD and DEL (kindnet's settings) ours vs reference",
            run: ptp::run,
        },
        Scenario {
            name: "tuning",
            about: "tuning ADD and DEL (sysctl, mtu, mac, promisc) ours vs reference",
            run: tuning::run,
        },
        Scenario {
            name: "static",
            about: "static IPAM ADD and DEL ours vs reference",
            run: static_ipam::run,
        },
        Scenario {
            name: "sbr",
            about: "sbr ADD and DEL (one address, rule and table) ours vs reference",
            run: sbr::run,
        },
        Scenario {
            name: "macvlan",
            about: "macvlan + host-local ADD and DEL (master from the node's default route) ours vs reference",
            run: macvlan::run,
        },
        Scenario {
            name: "host-device",
            about: "host-device + host-local ADD and DEL (a node device into the pod and back) ours vs reference",
            run: host_device::run,
        },
        Scenario {
            name: "tap",
            about: "tap + host-local ADD and DEL (multi-queue, owner and group) ours vs reference",
            run: tap::run,
        },
        Scenario {
            name: "kindnet",
            about: "kindnet chain ptp + host-local + portmap ADD+DEL ours vs reference",
            run: kindnet::run,
        },
    ]
}

/// Summary statistics of one series of timings.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub min: Duration,
    pub median: Duration,
    pub p90: Duration,
    pub mean: Duration,
}

impl Stats {
    /// Statistics of `samples`; panics on an empty series (a scenario that measured nothing is a bug).
    pub fn of(samples: &[Duration]) -> Stats {
        assert!(!samples.is_empty(), "no samples");
        let mut sorted = samples.to_vec();
        sorted.sort();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        Stats {
            n: sorted.len(),
            min: sorted[0],
            median: at(0.5),
            p90: at(0.9),
            mean: sorted.iter().sum::<Duration>() / sorted.len() as u32,
        }
    }
}

/// One line of a report.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub stats: Stats,
}

/// A scenario's result: ours, each reference build's matching row, and optional floors (the least
/// the kernel or the process model needs for the same work).
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: String,
    pub what: String,
    pub ours: Row,
    pub references: Vec<Row>,
    pub floors: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    /// The table printed by `twill-bench`.
    pub fn render(&self) -> String {
        let mut out = format!("scenario {}: {}\n", self.scenario, self.what);
        out.push_str(&format!(
            "  {:<42} {:>6} {:>10} {:>10} {:>10} {:>10}\n",
            "", "n", "median", "p90", "min", "mean"
        ));
        for row in std::iter::once(&self.ours)
            .chain(self.references.iter())
            .chain(self.floors.iter())
        {
            let s = row.stats;
            out.push_str(&format!(
                "  {:<42} {:>6} {:>10} {:>10} {:>10} {:>10}\n",
                row.label,
                s.n,
                fmt(s.median),
                fmt(s.p90),
                fmt(s.min),
                fmt(s.mean)
            ));
        }
        for reference in &self.references {
            out.push_str(&format!(
                "  ratio ours / {} (median): {:.2}  (p90: {:.2})\n",
                reference.label,
                self.ours.stats.median.as_secs_f64() / reference.stats.median.as_secs_f64(),
                self.ours.stats.p90.as_secs_f64() / reference.stats.p90.as_secs_f64()
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
        out
    }
}

/// Formats a duration in the unit that keeps 3 significant digits readable.
pub fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Runs `warmup` + `rounds` rounds of A then B (alternating which goes first every round, so
/// neither side always runs right after the other's cleanup) and returns the measured timings of each.
/// Each closure performs one operation and returns its duration (so set-up can stay untimed).
pub fn interleaved(
    options: &Options,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut all = interleaved_all(options, &mut [&mut a, &mut b]);
    let tb = all.pop().unwrap_or_default();
    let ta = all.pop().unwrap_or_default();
    (ta, tb)
}

/// Like [`interleaved`] for any number of sides: every round runs each side once, starting with a
/// different side each round (A B C, B C A, C A B, ...). Returns one series per side.
pub fn interleaved_all(
    options: &Options,
    sides: &mut [&mut dyn FnMut() -> Duration],
) -> Vec<Vec<Duration>> {
    interleaved_each(options, sides, |_, side| side())
}

/// Like [`interleaved_all`] over a slice of sides of one kind: every round calls `f` once per side
/// (with its index), starting with a different side each round. Returns one series per side.
pub fn interleaved_each<T>(
    options: &Options,
    sides: &mut [T],
    mut f: impl FnMut(usize, &mut T) -> Duration,
) -> Vec<Vec<Duration>> {
    let n = sides.len();
    let mut out = vec![Vec::with_capacity(options.rounds); n];
    for round in 0..options.warmup + options.rounds {
        for k in 0..n {
            let side = (round + k) % n;
            let d = f(side, &mut sides[side]);
            if round >= options.warmup {
                out[side].push(d);
            }
        }
    }
    out
}

/// Median of `a` divided by median of `b`.
pub fn ratio(a: &[Duration], b: &[Duration]) -> f64 {
    Stats::of(a).median.as_secs_f64() / Stats::of(b).median.as_secs_f64()
}

/// A row from a series.
pub fn row(label: &str, samples: &[Duration]) -> Row {
    Row {
        label: label.to_string(),
        stats: Stats::of(samples),
    }
}

/// `n` executions of `/bin/true` through the plugins' runner, summed: the exec floor of a scenario that execs
/// `n` plugins. What a dynamically linked glibc program costs at least; a static musl one starts faster (no
/// loader, none of glibc's start-up CPUID queries).
pub fn exec_floor(n: usize) -> Duration {
    (0..n)
        .map(|_| {
            let outcome = Invocation::bare("/bin/true").run_lean();
            assert!(
                outcome.success(),
                "/bin/true failed: {}",
                outcome.describe()
            );
            outcome.elapsed
        })
        .sum()
}

/// Runs `f` `warmup` + `rounds` times and returns the measured timings.
pub fn series(options: &Options, mut f: impl FnMut() -> Duration) -> Vec<Duration> {
    (0..options.warmup + options.rounds)
        .map(|_| f())
        .skip(options.warmup)
        .collect()
}

/// Times `f`.
pub fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// A side's node: a namespace (loopback up) kept across rounds like a real node's, so the bridge and
/// chains an ADD creates exist in later rounds, and the `CNI_PATH` its plugins run with.
pub struct CniNode {
    pub netns: Netns,
    pub cni_path: String,
}

impl CniNode {
    pub fn new(prefix: &str, cni_path: String) -> CniNode {
        let netns = Netns::new(prefix);
        netns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        CniNode { netns, cni_path }
    }

    /// Execs `plugin` as libcni does, from inside the node for the pod namespace `pod`, and panics with
    /// the plugin's output if it failed: a failed round must not be measured as if it were a result.
    pub fn exec(
        &self,
        plugin: &Path,
        command: &str,
        pod: &Path,
        id: &str,
        conf: &Value,
    ) -> Outcome {
        let out = Invocation::new(plugin, command)
            .libcni_style()
            .container_id(Some(id))
            .netns(Some(pod))
            .cni_path(Some(&self.cni_path))
            .stdin_json(conf)
            .in_netns(self.netns.path())
            .run_lean();
        assert!(
            out.success(),
            "{} {command} {id} failed: {}",
            plugin.display(),
            out.describe()
        );
        out
    }
}
