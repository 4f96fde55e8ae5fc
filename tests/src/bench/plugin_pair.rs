//! Shared shape of the single-plugin scenarios (`ptp`, `tuning`, `static`, `macvlan`, `host-device`,
//! `tap`): each side (ours, each reference build that has the plugin) has a persistent node namespace
//! and runs ADD then DEL of one attachment per round on a fresh pod (prepared outside the timing); ADD and DEL are timed separately, interleaved across sides.
//! The report's main rows are ADD, the DEL rows follow, and the notes give both ratios per reference.
//!
//! The chain variant ([`run_chain`], scenarios `kindnet` and `portmap`) runs two plugins the way libcni runs
//! a conflist and times the whole ADD+DEL, and the second plugin's part alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::{exec_floor, interleaved_each, ratio, row, series, CniNode, Options, Report, Stats};
use twill_tests::exec::Outcome;
use twill_tests::netns::Netns;

/// Measures a floor: the series of an in-process equivalent of part of the plugin's work.
pub type Floor = fn(&Options) -> Vec<Duration>;

/// What a scenario varies: the plugin, its config, and how a pod is prepared.
pub struct Spec {
    pub scenario: &'static str,
    pub what: &'static str,
    pub plugin: &'static str,
    /// The config of one side, given its private state directory.
    pub conf: fn(&Path) -> Value,
    /// Prepares a fresh pod (untimed), e.g. creates the interface a meta plugin tunes.
    pub prepare: fn(&Netns),
    /// Prepares each side's node once (untimed), e.g. the uplink a macvlan needs as its master.
    pub prepare_node: fn(&Netns),
    /// The target ratio of ADD and DEL medians, for the notes.
    pub target: f64,
    /// The kernel's share of DEL that no plugin can avoid, measured in-process, if there is one.
    pub del_floor: Option<(&'static str, Floor)>,
}

/// `(a - floor) / (b - floor)` of the medians: the ratio of the work above the floor; "under it" when `a`'s
/// median is below the floor (a static musl plugin starts faster than the dynamic `/bin/true`).
fn above(a: &[Duration], b: &[Duration], floor: &[Duration]) -> String {
    let m = |s: &[Duration]| Stats::of(s).median.as_secs_f64();
    if m(a) <= m(floor) {
        return "ours under it".into();
    }
    format!(
        "{:.2}",
        (m(a) - m(floor)) / (m(b) - m(floor)).max(f64::EPSILON)
    )
}

struct Side {
    plugin: PathBuf,
    node: CniNode,
    state: tempfile::TempDir,
    counter: usize,
    dels: Vec<Duration>,
    /// Pods of finished rounds, removed at the end (namespace teardown takes the rtnl lock in a kernel
    /// worker, which would otherwise land inside a later sample).
    done: Vec<Netns>,
}

impl Side {
    fn round(&mut self, spec: &Spec) -> Duration {
        self.counter += 1;
        let id = format!("bench{}-{}", spec.scenario, self.counter);
        let pod = Netns::new("benchpp");
        (spec.prepare)(&pod);
        let conf = (spec.conf)(self.state.path());
        let add = self.node.exec(&self.plugin, "ADD", pod.path(), &id, &conf);
        let mut del_conf = conf.clone();
        if let Some(result) = add.json.clone() {
            if spec.plugin != "tuning" {
                del_conf["prevResult"] = result;
            }
        }
        let del = self
            .node
            .exec(&self.plugin, "DEL", pod.path(), &id, &del_conf);
        self.dels.push(del.elapsed);
        self.done.push(pod);
        add.elapsed
    }
}

pub fn run(options: &Options, spec: &Spec) -> Report {
    let mut labels = vec!["twill".to_string()];
    let mut dirs = vec![options.ours.clone()];
    let mut notes = Vec::new();
    for reference in &options.references {
        // Older builds lack some plugins (Debian's 1.1.1 has no tap).
        if !reference.dir.join(spec.plugin).is_file() {
            notes.push(format!(
                "{} has no {}: not compared",
                reference.label, spec.plugin
            ));
            continue;
        }
        labels.push(reference.label.clone());
        dirs.push(reference.dir.clone());
    }
    let mut sides: Vec<Side> = dirs
        .iter()
        .map(|dir| {
            let plugin = dir.join(spec.plugin);
            assert!(plugin.is_file(), "{} is missing", plugin.display());
            // Each side's delegates (IPAM) from its own build; ours first for ours.
            let cni_path = if *dir == options.ours {
                format!(
                    "{}:{}",
                    options.ours.display(),
                    options.primary().dir.display()
                )
            } else {
                dir.display().to_string()
            };
            let node = CniNode::new("benchpp", cni_path);
            (spec.prepare_node)(&node.netns);
            Side {
                plugin,
                node,
                state: tempfile::tempdir().expect("state dir"),
                counter: 0,
                dels: Vec::new(),
                done: Vec::new(),
            }
        })
        .collect();
    let adds = interleaved_each(options, &mut sides, |_, side| side.round(spec));
    let dels: Vec<Vec<Duration>> = sides
        .iter()
        .map(|s| s.dels.iter().skip(options.warmup).copied().collect())
        .collect();
    let exec = series(options, || exec_floor(1));
    let del_floor = spec.del_floor.map(|(label, f)| (label, f(options)));
    for r in 1..sides.len() {
        notes.push(format!(
            "vs {}: ADD {:.2}, DEL {:.2} (target <= {:.2}); above the exec floor: ADD {}, DEL {}",
            labels[r],
            ratio(&adds[0], &adds[r]),
            ratio(&dels[0], &dels[r]),
            spec.target,
            above(&adds[0], &adds[r], &exec),
            above(&dels[0], &dels[r], &exec),
        ));
    }
    let mut floors: Vec<_> = labels
        .iter()
        .zip(&dels)
        .map(|(l, t)| row(&format!("{l} DEL"), t))
        .collect();
    floors.push(row("exec floor: /bin/true", &exec));
    if let Some((label, t)) = &del_floor {
        floors.push(row(&format!("kernel floor: {label}"), t));
        notes.push(format!(
            "our DEL / kernel floor ({label}): {:.2}",
            ratio(&dels[0], t)
        ));
    }
    Report {
        scenario: spec.scenario.into(),
        what: spec.what.into(),
        ours: row(&format!("{} ADD", labels[0]), &adds[0]),
        references: labels
            .iter()
            .zip(&adds)
            .skip(1)
            .map(|(l, t)| row(&format!("{l} ADD"), t))
            .collect(),
        floors,
        notes,
    }
}

/// A two-plugin chain as libcni runs a conflist: the first plugin's ADD (with host-local), the second's ADD
/// with the first's result as `prevResult`; then the second's DEL and the first's DEL with that `prevResult`.
pub struct Chain {
    /// Network name, and the prefix of the node, the pods and the container ids.
    pub name: &'static str,
    pub plugins: [&'static str; 2],
    /// The first plugin's config, given the side's IPAM state directory.
    pub first: fn(&Path) -> Value,
    /// The second plugin's config, given the first's result.
    pub second: fn(&Value) -> Value,
}

/// What [`run_chain`] measured, per side (ours first, then each reference build), warm-up rounds left out.
pub struct ChainTimes {
    /// `twill chain`, then `<reference> chain`.
    pub labels: Vec<String>,
    /// The chain's ADD+DEL.
    pub chain: Vec<Vec<Duration>>,
    /// The second plugin's ADD+DEL alone.
    pub second: Vec<Vec<Duration>>,
}

struct ChainSide {
    dir: PathBuf,
    node: CniNode,
    ipam: tempfile::TempDir,
    counter: usize,
    second: Vec<Duration>,
    /// Pods of finished rounds, removed at the end (see [`Side::done`]).
    done: Vec<Netns>,
}

impl ChainSide {
    fn exec(&self, plugin: &str, command: &str, pod: &Path, id: &str, conf: &Value) -> Outcome {
        self.node
            .exec(&self.dir.join(plugin), command, pod, id, conf)
    }

    fn round(&mut self, chain: &Chain) -> Duration {
        self.counter += 1;
        let id = format!("{}-{}", chain.name, self.counter);
        let pod = Netns::new(&format!("{}pod", chain.name));
        let [first, second] = chain.plugins;
        let conf = (chain.first)(self.ipam.path());
        let add1 = self.exec(first, "ADD", pod.path(), &id, &conf);
        let prev = add1.json.unwrap_or(Value::Null);
        let conf2 = (chain.second)(&prev);
        let add2 = self.exec(second, "ADD", pod.path(), &id, &conf2);
        let del2 = self.exec(second, "DEL", pod.path(), &id, &conf2);
        let mut del_conf = conf;
        del_conf["prevResult"] = prev;
        let del1 = self.exec(first, "DEL", pod.path(), &id, &del_conf);
        self.second.push(add2.elapsed + del2.elapsed);
        self.done.push(pod);
        add1.elapsed + add2.elapsed + del2.elapsed + del1.elapsed
    }
}

/// Runs `chain` on ours and each reference build (each side with only its own build's plugins), interleaved.
pub fn run_chain(options: &Options, chain: &Chain) -> ChainTimes {
    let mut labels = vec!["twill chain".to_string()];
    let mut dirs = vec![options.ours.clone()];
    for reference in &options.references {
        labels.push(format!("{} chain", reference.label));
        dirs.push(reference.dir.clone());
    }
    for dir in &dirs {
        for plugin in [chain.plugins[0], "host-local", chain.plugins[1]] {
            let p = dir.join(plugin);
            assert!(p.is_file(), "{} is missing", p.display());
        }
    }
    let mut sides: Vec<ChainSide> = dirs
        .iter()
        .map(|d| ChainSide {
            dir: d.clone(),
            node: CniNode::new(chain.name, d.display().to_string()),
            ipam: tempfile::tempdir().expect("ipam dir"),
            counter: 0,
            second: Vec::new(),
            done: Vec::new(),
        })
        .collect();
    let totals = interleaved_each(options, &mut sides, |_, side| side.round(chain));
    let second = sides
        .iter()
        .map(|s| s.second.iter().skip(options.warmup).copied().collect())
        .collect();
    ChainTimes {
        labels,
        chain: totals,
        second,
    }
}
