//! Scenario `loopback`: one ADD then one DEL of the loopback plugin on a fresh namespace, ours vs
//! each reference build's. All namespaces are created before and removed after the measurement:
//! the kernel tears a namespace down asynchronously, and that work would otherwise land in the
//! next timed round.
//! Floors: the same kernel work done in-process (open the namespace, a netlink socket in it, set lo
//! up; again for down), and the cost of two process executions of `/bin/true`, which bounds how fast
//! any exec'd plugin can answer ADD+DEL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use twill_kernel::{Handle, NetNs};

use super::{exec_floor, interleaved_each, Options, Report, Row, Stats};
use twill_tests::exec::Invocation;
use twill_tests::netns::Netns;

/// What one side of the interleaved rounds runs.
enum Work {
    Plugin(PathBuf),
    KernelFloor,
    ExecFloor,
}

/// A side and its pool of fresh namespaces (one per round).
struct Side {
    label: String,
    work: Work,
    pool: Vec<Netns>,
    next: usize,
}

impl Side {
    fn new(label: String, work: Work, rounds: usize) -> Side {
        let pool = match work {
            Work::ExecFloor => Vec::new(),
            _ => pool(rounds),
        };
        Side {
            label,
            work,
            pool,
            next: 0,
        }
    }

    fn round(&mut self) -> Duration {
        if let Work::ExecFloor = self.work {
            return exec_floor(2);
        }
        let ns = self
            .pool
            .get(self.next)
            .expect("namespace pool sized for warm-up + rounds");
        self.next += 1;
        match &self.work {
            Work::Plugin(plugin) => add_del(plugin, ns),
            _ => kernel_floor(ns),
        }
    }
}

pub fn run(options: &Options) -> Report {
    let per_side = options.warmup + options.rounds;
    let ours = options.ours.join("loopback");
    let mut sides = vec![Side::new(
        "twill ADD+DEL".into(),
        Work::Plugin(ours),
        per_side,
    )];
    for reference in &options.references {
        let plugin = reference.dir.join("loopback");
        sides.push(Side::new(
            format!("{} ADD+DEL", reference.label),
            Work::Plugin(plugin),
            per_side,
        ));
    }
    for side in &sides {
        if let Work::Plugin(p) = &side.work {
            assert!(p.is_file(), "{} is missing", p.display());
        }
    }
    sides.push(Side::new(
        KERNEL_FLOOR_LABEL.into(),
        Work::KernelFloor,
        per_side,
    ));
    sides.push(Side::new(
        "exec floor: 2 × /bin/true".into(),
        Work::ExecFloor,
        per_side,
    ));
    let all = interleaved_each(options, &mut sides, |_, side| side.round());
    let mut rows: Vec<Row> = sides
        .iter()
        .zip(&all)
        .map(|(side, t)| Row {
            label: side.label.clone(),
            stats: Stats::of(t),
        })
        .collect();
    let floors = rows.split_off(1 + options.references.len());
    let references = rows.split_off(1);
    Report {
        scenario: "loopback".into(),
        what: "ADD+DEL on a fresh namespace (cniVersion 1.0.0)".into(),
        ours: rows.remove(0),
        references,
        floors,
        notes: vec![],
    }
}

/// `n` fresh namespaces, used once each.
fn pool(n: usize) -> Vec<Netns> {
    (0..n).map(|_| Netns::new("bench")).collect()
}

/// ADD then DEL of `plugin` on a fresh namespace; returns the time spent in the two executions.
fn add_del(plugin: &Path, ns: &Netns) -> Duration {
    let config = json!({"cniVersion": "1.0.0", "name": "bench-lo", "type": "loopback"});
    let mut total = Duration::ZERO;
    for command in ["ADD", "DEL"] {
        let outcome = Invocation::new(plugin, command)
            .libcni_style()
            .container_id(Some("twill-bench"))
            .netns(Some(ns.path()))
            .stdin_json(&config)
            .run_lean();
        assert!(
            outcome.success(),
            "{} {command} failed: {}",
            plugin.display(),
            outcome.describe()
        );
        total += outcome.elapsed;
    }
    total
}

const KERNEL_FLOOR_LABEL: &str = "kernel floor: lo up+down via netlink";

/// The kernel work of loopback ADD+DEL done in-process with twill-kernel: per verb, open the
/// namespace and a netlink socket inside it, look lo up and flip it (what a plugin cannot avoid).
fn kernel_floor(ns: &Netns) -> Duration {
    super::timed(|| {
        for up in [true, false] {
            let result = NetNs::open(ns.path()).and_then(|netns| {
                let handle = Handle::in_netns(&netns)?;
                let lo = handle.link_by_name("lo")?;
                if up {
                    handle.set_link_up(lo.index)
                } else {
                    handle.set_link_down(lo.index)
                }
            });
            if let Err(e) = result {
                panic!(
                    "kernel floor: set lo {} in {}: {e}",
                    if up { "up" } else { "down" },
                    ns.name()
                );
            }
        }
    })
}
