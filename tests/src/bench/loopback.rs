//! Scenario `loopback`: one ADD then one DEL of the loopback plugin on a fresh namespace, ours vs
//! `/usr/lib/cni/loopback`. All namespaces are created before and removed after the measurement:
//! the kernel tears a namespace down asynchronously, and that work would otherwise land in the
//! next timed round.
//! Floors: the same kernel work done in-process (open the namespace, a netlink socket in it, set lo
//! up; again for down), and the cost of two process executions of `/bin/true`, which bounds how fast
//! any exec'd plugin can answer ADD+DEL.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use twill_kernel::{Handle, NetNs};

use super::{interleaved_all, Options, Report, Row, Stats};
use twill_tests::exec::Invocation;
use twill_tests::netns::Netns;

pub fn run(options: &Options) -> Report {
    let ours = options.ours.join("loopback");
    let reference = options.reference.join("loopback");
    for p in [&ours, &reference] {
        assert!(p.is_file(), "{} is missing", p.display());
    }
    let per_side = options.warmup + options.rounds;
    let (pool_ours, pool_ref, pool_floor) = (pool(per_side), pool(per_side), pool(per_side));
    let (mut next_ours, mut next_ref, mut next_floor) =
        (pool_ours.iter(), pool_ref.iter(), pool_floor.iter());
    let mut all = interleaved_all(
        options,
        &mut [
            &mut || add_del(&ours, take(&mut next_ours)),
            &mut || add_del(&reference, take(&mut next_ref)),
            &mut || kernel_floor(take(&mut next_floor)),
            &mut exec_floor,
        ],
    );
    let exec = all.pop().unwrap_or_default();
    let kernel = all.pop().unwrap_or_default();
    let t_ref = all.pop().unwrap_or_default();
    let t_ours = all.pop().unwrap_or_default();
    Report {
        scenario: "loopback".into(),
        what: "ADD+DEL on a fresh namespace (cniVersion 1.0.0)".into(),
        ours: Row {
            label: format!("twill {}", ours.display()),
            stats: Stats::of(&t_ours),
        },
        reference: Row {
            label: format!("reference {}", reference.display()),
            stats: Stats::of(&t_ref),
        },
        floors: vec![
            Row {
                label: KERNEL_FLOOR_LABEL.into(),
                stats: Stats::of(&kernel),
            },
            Row {
                label: "exec floor: 2 × /bin/true".into(),
                stats: Stats::of(&exec),
            },
        ],
        notes: vec![],
    }
}

/// `n` fresh namespaces, used once each.
fn pool(n: usize) -> Vec<Netns> {
    (0..n).map(|_| Netns::new("bench")).collect()
}

/// The next unused namespace of a pool; used ones stay alive until the pool drops.
fn take<'a>(next: &mut std::slice::Iter<'a, Netns>) -> &'a Netns {
    next.next()
        .expect("namespace pool sized for warm-up + rounds")
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
            .run();
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

fn exec_floor() -> Duration {
    (0..2)
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
