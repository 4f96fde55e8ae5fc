//! Scenario `host-local` (issue 3): ADD and DEL latency of host-local on a /16 that already holds 0, 1,000
//! and 10,000 leases, ours vs `/usr/lib/cni/host-local`, rounds interleaved (the side going first alternates).
//! Each side has its own dataDir (prefilled identically, cursor after the prefill) so neither disturbs the
//! other's state; each round is an ADD of a new attachment then its DEL, so the lease count stays at N.
//!
//! Our first operation after the prefill rebuilds the attachment index (the prefill is a "foreign" change,
//! like leases written by the reference); it is run untimed before the rounds and reported in a note. A
//! further row per level measures our ADD right after the reference wrote into our directory (mixed writers
//! during a rolling upgrade), where our index must first catch up with a scan.

use super::{timed, Options, Report, Row, Stats};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use twill_tests::exec::{Invocation, Outcome};

const LEVELS: [usize; 3] = [0, 1_000, 10_000];
const NETWORK: &str = "bench-hl";
/// Rounds of the mixed-writer measurement per level (each costs a reference ADD, slow at 10,000 leases).
const MIXED_ROUNDS: usize = 10;

fn conf(data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": NETWORK, "type": "host-local",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.100.0.0/16"}]], "dataDir": data_dir},
    })
}

/// `n` leases as the reference writes them, at 10.100.0.2 onwards, with the cursor after the last one.
fn prefill(data_dir: &Path, n: usize) {
    let dir = data_dir.join(NETWORK);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let ip = |i: usize| {
        let k = i + 2;
        format!("10.100.{}.{}", k / 256, k % 256)
    };
    for i in 0..n {
        std::fs::write(dir.join(ip(i)), format!("fill-{i}\r\neth0"))
            .unwrap_or_else(|e| panic!("prefill lease {i}: {e}"));
    }
    if n > 0 {
        std::fs::write(dir.join("last_reserved_ip.0"), ip(n - 1))
            .unwrap_or_else(|e| panic!("prefill cursor: {e}"));
    }
}

fn exec(plugin: &Path, command: &str, id: &str, conf: &Value) -> Outcome {
    let outcome = Invocation::new(plugin, command)
        .libcni_style()
        .container_id(Some(id))
        .netns_str(Some("/proc/self/ns/net"))
        .stdin_json(conf)
        .run();
    assert!(
        outcome.success(),
        "{} {command} {id} failed: {}",
        plugin.display(),
        outcome.describe()
    );
    outcome
}

/// One round for one side: ADD of a fresh attachment, then its DEL; returns both durations.
fn add_del(plugin: &Path, conf: &Value, id: &str) -> (Duration, Duration) {
    let add = exec(plugin, "ADD", id, conf).elapsed;
    let del = exec(plugin, "DEL", id, conf).elapsed;
    (add, del)
}

pub fn run(options: &Options) -> Report {
    let ours = options.ours.join("host-local");
    let reference = options.reference.join("host-local");
    for p in [&ours, &reference] {
        assert!(p.is_file(), "{} is missing", p.display());
    }
    let mut rows: Vec<(String, Stats)> = Vec::new();
    let mut notes = Vec::new();
    let mut headline: Option<(Stats, Stats)> = None;
    for n in LEVELS {
        let tmp = tempfile::Builder::new()
            .prefix("twill-bench-hl-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create bench dataDir: {e}"));
        let (ours_dir, ref_dir) = (tmp.path().join("ours"), tmp.path().join("ref"));
        prefill(&ours_dir, n);
        prefill(&ref_dir, n);
        let (ours_conf, ref_conf) = (conf(&ours_dir), conf(&ref_dir));
        let rebuild = timed(|| {
            add_del(&ours, &ours_conf, "bench-index-build");
        });
        let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for round in 0..options.warmup + options.rounds {
            let id = format!("bench-{round}");
            let (o, r) = if round % 2 == 0 {
                let o = add_del(&ours, &ours_conf, &id);
                (o, add_del(&reference, &ref_conf, &id))
            } else {
                let r = add_del(&reference, &ref_conf, &id);
                (add_del(&ours, &ours_conf, &id), r)
            };
            if round >= options.warmup {
                t[0].push(o.0);
                t[1].push(r.0);
                t[2].push(o.1);
                t[3].push(r.1);
            }
        }
        // Mixed operation (rolling upgrade): the reference writes into our directory before each of our ADDs,
        // so every one of them pays the scan that brings the index up to date.
        let mut mixed = Vec::new();
        for round in 0..options.rounds.min(MIXED_ROUNDS) {
            let (foreign, id) = (format!("ref-{round}"), format!("mixed-{round}"));
            exec(&reference, "ADD", &foreign, &ours_conf);
            mixed.push(exec(&ours, "ADD", &id, &ours_conf).elapsed);
            exec(&ours, "DEL", &id, &ours_conf);
            exec(&ours, "DEL", &foreign, &ours_conf);
        }
        let s: Vec<Stats> = t.iter().map(|v| Stats::of(v)).collect();
        for (i, label) in ["twill ADD", "reference ADD", "twill DEL", "reference DEL"]
            .iter()
            .enumerate()
        {
            rows.push((format!("{label} @{n} leases"), s[i]));
        }
        rows.push((
            format!("twill ADD after a ref write @{n}"),
            Stats::of(&mixed),
        ));
        let ratio = |a: Stats, b: Stats| a.median.as_secs_f64() / b.median.as_secs_f64();
        notes.push(format!(
            "@{n} leases: ADD ours/ref {:.3}, DEL ours/ref {:.3}; first twill op after the prefill (index \
             rebuild, untimed above): {}",
            ratio(s[0], s[1]),
            ratio(s[2], s[3]),
            super::fmt(rebuild)
        ));
        if n == 10_000 {
            headline = Some((s[0], s[1]));
        }
    }
    let (ours_add, ref_add) = headline.unwrap_or_else(|| (rows[0].1, rows[1].1));
    Report {
        scenario: "host-local".into(),
        what: "ADD then DEL of a new attachment on a /16 holding N leases (cniVersion 1.0.0); headline rows: ADD @10000"
            .into(),
        ours: Row {
            label: "twill ADD @10000 leases".into(),
            stats: ours_add,
        },
        reference: Row {
            label: "reference ADD @10000 leases".into(),
            stats: ref_add,
        },
        // Every other level and verb, the headline pair excluded.
        floors: rows
            .into_iter()
            .filter(|(label, _)| !label.ends_with("ADD @10000 leases"))
            .map(|(label, stats)| Row { label, stats })
            .collect(),
        notes,
    }
}
