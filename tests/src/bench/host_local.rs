//! Scenario `host-local`: ADD and DEL latency of host-local on a /16 that already holds 0, 1,000 and
//! 10,000 leases, ours vs each reference build's, rounds interleaved (the side going first rotates).
//! Each side has its own dataDir (prefilled identically, cursor after the prefill) so neither disturbs the
//! other's state; each round is an ADD of a new attachment then its DEL, so the lease count stays at N.
//!
//! Our first operation after the prefill rebuilds the attachment index (the prefill is a "foreign" change,
//! like leases written by the reference); it is run untimed before the rounds and reported in a note. A
//! further row per level measures our ADD right after the first reference wrote into our directory (mixed writers
//! during a rolling upgrade), where our index must first catch up with a scan.

use super::{interleaved_each, timed, Options, Report, Row, Stats};
use serde_json::{json, Value};
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use twill_tests::exec::{Invocation, Outcome};
use twill_tests::netns::Netns;

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

/// Runs host-local. `pod` is the `CNI_NETNS` every side is given: a namespace that nothing enters
/// (host-local never does), not the caller's own, which upstream's skel (libcni >= 1.2) refuses.
fn exec(plugin: &Path, command: &str, id: &str, conf: &Value, pod: &Path) -> Outcome {
    let outcome = Invocation::new(plugin, command)
        .libcni_style()
        .container_id(Some(id))
        .netns(Some(pod))
        .stdin_json(conf)
        .run_lean();
    assert!(
        outcome.success(),
        "{} {command} {id} failed: {}",
        plugin.display(),
        outcome.describe()
    );
    outcome
}

/// One round for one side: ADD of a fresh attachment, then its DEL; returns both durations.
fn add_del(plugin: &Path, conf: &Value, id: &str, pod: &Path) -> (Duration, Duration) {
    let add = exec(plugin, "ADD", id, conf, pod).elapsed;
    let del = exec(plugin, "DEL", id, conf, pod).elapsed;
    (add, del)
}

/// One side at one level: a plugin with its own prefilled dataDir.
struct Side {
    label: String,
    plugin: PathBuf,
    conf: Value,
    dels: Vec<Duration>,
}

pub fn run(options: &Options) -> Report {
    let ours = options.ours.join("host-local");
    let mut plugins = vec![("twill".to_string(), ours.clone())];
    for reference in &options.references {
        plugins.push((reference.label.clone(), reference.dir.join("host-local")));
    }
    for (_, p) in &plugins {
        assert!(p.is_file(), "{} is missing", p.display());
    }
    let primary = plugins[1].1.clone();
    let pod = Netns::new("benchhl");
    let pod = pod.path();
    let mut rows: Vec<(String, Stats)> = Vec::new();
    let mut notes = Vec::new();
    let mut headline: Vec<Stats> = Vec::new();
    for n in LEVELS {
        let tmp = tempfile::Builder::new()
            .prefix("twill-bench-hl-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create bench dataDir: {e}"));
        let mut sides: Vec<Side> = plugins
            .iter()
            .enumerate()
            .map(|(i, (label, plugin))| {
                let dir = tmp.path().join(format!("side{i}"));
                prefill(&dir, n);
                Side {
                    label: label.clone(),
                    plugin: plugin.clone(),
                    conf: conf(&dir),
                    dels: Vec::new(),
                }
            })
            .collect();
        let ours_conf = sides[0].conf.clone();
        let rebuild = timed(|| {
            add_del(&ours, &ours_conf, "bench-index-build", pod);
        });
        let mut round = 0usize;
        let adds = interleaved_each(options, &mut sides, |i, side| {
            if i == 0 {
                round += 1;
            }
            let (add, del) = add_del(&side.plugin, &side.conf, &format!("bench-{round}"), pod);
            side.dels.push(del);
            add
        });
        // Mixed operation (rolling upgrade): the reference writes into our directory before each of our ADDs,
        // so every one of them pays the scan that brings the index up to date.
        let mut mixed = Vec::new();
        for round in 0..options.rounds.min(MIXED_ROUNDS) {
            let (foreign, id) = (format!("ref-{round}"), format!("mixed-{round}"));
            exec(&primary, "ADD", &foreign, &ours_conf, pod);
            mixed.push(exec(&ours, "ADD", &id, &ours_conf, pod).elapsed);
            exec(&ours, "DEL", &id, &ours_conf, pod);
            exec(&ours, "DEL", &foreign, &ours_conf, pod);
        }
        let add_stats: Vec<Stats> = adds.iter().map(|t| Stats::of(t)).collect();
        let del_stats: Vec<Stats> = sides
            .iter()
            .map(|s| Stats::of(&s.dels[options.warmup..]))
            .collect();
        for (side, s) in sides.iter().zip(&add_stats) {
            rows.push((format!("{} ADD @{n} leases", side.label), *s));
        }
        for (side, s) in sides.iter().zip(&del_stats) {
            rows.push((format!("{} DEL @{n} leases", side.label), *s));
        }
        rows.push((
            format!("twill ADD after a ref write @{n}"),
            Stats::of(&mixed),
        ));
        let ratio = |a: Stats, b: Stats| a.median.as_secs_f64() / b.median.as_secs_f64();
        for (r, side) in sides.iter().enumerate().skip(1) {
            notes.push(format!(
                "@{n} leases vs {}: ADD {:.3}, DEL {:.3}",
                side.label,
                ratio(add_stats[0], add_stats[r]),
                ratio(del_stats[0], del_stats[r]),
            ));
        }
        notes.push(format!(
            "@{n} leases: first twill op after the prefill (index rebuild, untimed above): {}",
            super::fmt(rebuild)
        ));
        if n == 10_000 {
            headline = add_stats;
        }
    }
    let headline_row = |i: usize| Row {
        label: format!("{} ADD @10000 leases", plugins[i].0),
        stats: headline[i],
    };
    Report {
        scenario: "host-local".into(),
        what: "ADD then DEL of a new attachment on a /16 holding N leases (cniVersion 1.0.0); headline rows: ADD @10000"
            .into(),
        ours: headline_row(0),
        references: (1..plugins.len()).map(headline_row).collect(),
        // Every other level and verb, the headline rows excluded.
        floors: rows
            .into_iter()
            .filter(|(label, _)| !label.ends_with("ADD @10000 leases"))
            .map(|(label, stats)| Row { label, stats })
            .collect(),
        notes,
    }
}
