//! What the differential tests of the plugins that attach a pod share (bridge, ptp, macvlan): twin namespaces
//! per side (the node the plugin runs in, the pod it attaches), a runtime's ADD, CHECK and DEL of one attachment
//! ([`add_check_del`]), and the comparisons of those verbs with a reference's. Include it next to
//! `bridge_support`, named `support`:
//!
//! ```ignore
//! #[path = "bridge_support/mod.rs"]
//! mod support;
//! #[path = "diff_support/mod.rs"]
//! mod diff_support;
//! ```

#![allow(dead_code)] // each test file uses part of it

use serde_json::Value;
use std::path::Path;
use twill_tests::bins::Reference;
use twill_tests::exec::Outcome;
use twill_tests::netns::Netns;

use crate::support::{links, normalize_result, Node};

/// One side's namespaces: a fresh node and a pod, both removed on drop.
pub struct Twin {
    pub node: Node,
    pub pod: Netns,
}

impl Twin {
    /// A fresh node (lo down, host-local state of its own) and a pod named after `pod_prefix`.
    pub fn new(pod_prefix: &str) -> Twin {
        Twin::on(Node::new(), pod_prefix)
    }

    /// A pod on `node`, a node the caller has set up (uplinks, routes).
    pub fn on(node: Node, pod_prefix: &str) -> Twin {
        Twin {
            node,
            pod: Netns::new(pod_prefix),
        }
    }

    /// Runs `plugin` for `verb` inside the node on this pod's `ifname`, runtime-style, with `cni_path` for its
    /// delegates (each side uses its own IPAM); a panic fails the test.
    pub fn run(
        &self,
        plugin: &Path,
        cni_path: &str,
        verb: &str,
        (container_id, ifname): (&str, &str),
        conf: &Value,
    ) -> Outcome {
        let out = self.node.run_with_path(
            plugin,
            verb,
            Some(self.pod.path()),
            container_id,
            ifname,
            conf,
            cni_path,
        );
        out.assert_no_panic();
        out
    }

    /// Names of the pod's links (after DEL, only `lo` is left).
    pub fn pod_links(&self) -> Vec<String> {
        link_names(&self.pod)
    }
}

/// Names of the links in `ns`.
pub fn link_names(ns: &Netns) -> Vec<String> {
    links(ns, &[])
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// What a runtime saw of one plugin's ADD, CHECK and DEL of one attachment.
#[derive(Debug)]
pub struct Verbs {
    pub add_ok: bool,
    pub add_out: String,
    /// ADD's result as printed (null when ADD failed).
    pub raw_result: Value,
    /// The result with what differs by chance (MACs, sandbox paths) normalised away.
    pub result: Value,
    /// `None` when CHECK was not run: ADD failed, or the config's version has no CHECK (before 0.4.0).
    pub check_ok: Option<bool>,
    pub check_out: String,
    pub del_ok: bool,
    pub del_out: String,
}

/// Whether a config of this `cniVersion` may be CHECKed (0.4.0 and later).
pub fn has_check(conf: &Value) -> bool {
    let version = conf["cniVersion"].as_str().unwrap_or("1.0.0");
    !matches!(version, "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1")
}

/// The runtime's sequence: ADD with `conf`; when it succeeded, `attached(result)` (snapshots taken while the
/// attachment exists) and CHECK with the result as `prevResult` if the version has CHECK; then DEL (with
/// `prevResult` when there is one). `run(verb, conf)` drives the plugin.
pub fn add_check_del<T>(
    conf: &Value,
    run: impl Fn(&str, &Value) -> Outcome,
    attached: impl FnOnce(&Value) -> T,
) -> (Verbs, Option<T>) {
    let add = run("ADD", conf);
    let result = add.json.clone().unwrap_or(Value::Null);
    let snapshot = add.success().then(|| attached(&result));
    let with_prev = || {
        let mut c = conf.clone();
        c["prevResult"] = result.clone();
        c
    };
    let (check_ok, check_out) = if add.success() && has_check(conf) {
        let check = run("CHECK", &with_prev());
        (Some(check.success()), check.describe())
    } else {
        (None, String::new())
    };
    let del = run(
        "DEL",
        &if add.success() {
            with_prev()
        } else {
            conf.clone()
        },
    );
    let verbs = Verbs {
        add_ok: add.success(),
        add_out: add.describe(),
        result: normalize_result(&result),
        raw_result: result,
        check_ok,
        check_out,
        del_ok: del.success(),
        del_out: del.describe(),
    };
    (verbs, snapshot)
}

impl Verbs {
    /// ADD turned out as the reference's: both failed, or both succeeded with the same (normalised) result.
    pub fn assert_same_add(&self, theirs: &Verbs, r: Reference) {
        assert_eq!(
            self.add_ok, theirs.add_ok,
            "ADD outcome differs\n=== ours ===\n{}\n=== {r} ===\n{}",
            self.add_out, theirs.add_out
        );
        if self.add_ok {
            assert_eq!(self.result, theirs.result, "result JSON differs from {r}");
        }
    }

    /// CHECK right after ADD turned out as the reference's, and ours passed it.
    pub fn assert_same_check(&self, theirs: &Verbs, r: Reference) {
        assert_eq!(
            self.check_ok, theirs.check_ok,
            "CHECK outcome differs\n=== ours ===\n{}\n=== {r} ===\n{}",
            self.check_out, theirs.check_out
        );
        if let Some(ok) = self.check_ok {
            assert!(ok, "CHECK right after ADD failed: {}", self.check_out);
        }
    }

    /// DEL succeeded and left only `lo` in the pod (`pod_links_after`); `who` names the side.
    pub fn assert_deleted(&self, who: &str, pod_links_after: &[String]) {
        assert!(self.del_ok, "{who}: DEL failed: {}", self.del_out);
        assert_eq!(
            pod_links_after,
            ["lo".to_string()],
            "{who}: pod link left after DEL"
        );
    }
}
