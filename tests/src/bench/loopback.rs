//! Scenario `loopback`: one ADD then one DEL of the loopback plugin on a fresh namespace (the
//! namespace is created and removed outside the timed region), ours vs `/usr/lib/cni/loopback`.
//! Floors: the same kernel work done in-process (open the namespace, a netlink socket in it, set lo
//! up; again for down), and the cost of two process executions of `/bin/true`, which bounds how fast
//! any exec'd plugin can answer ADD+DEL.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use twill_kernel::{Handle, NetNs};

use super::{interleaved, series, Options, Report, Row, Stats};
use twill_tests::exec::Invocation;
use twill_tests::netns::Netns;

pub fn run(options: &Options) -> Report {
    let ours = options.ours.join("loopback");
    let reference = options.reference.join("loopback");
    for p in [&ours, &reference] {
        assert!(p.is_file(), "{} is missing", p.display());
    }
    let (t_ours, t_ref) = interleaved(options, || add_del(&ours), || add_del(&reference));
    let kernel = series(options, kernel_floor);
    let exec = series(options, exec_floor);
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

/// ADD then DEL of `plugin` on a fresh namespace; returns the time spent in the two executions.
fn add_del(plugin: &Path) -> Duration {
    let ns = Netns::new("bench");
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
fn kernel_floor() -> Duration {
    let ns = Netns::new("bench");
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
