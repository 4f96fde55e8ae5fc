//! A runtime's ADD, CHECK and DEL of one attachment ([`add_check_del`]) as a differential test sees them, and
//! the comparisons of those verbs with a reference's. It needs a module `support` beside it with
//! `normalize_result(&Value) -> Value`: what of a result differs by chance and is left out of comparisons.

#![allow(dead_code)] // each test file uses part of it

use serde_json::Value;
use twill_tests::bins::Reference;
use twill_tests::exec::Outcome;

use crate::support::normalize_result;

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
    add_check_del_seeing(conf, run, |added, result| added.then(|| attached(result)))
}

/// [`add_check_del`] with `after_add(added, result)` called whether ADD succeeded or not (a snapshot of
/// what a failed ADD left too); `result` is what ADD printed, its error when it failed.
pub fn add_check_del_seeing<T>(
    conf: &Value,
    run: impl Fn(&str, &Value) -> Outcome,
    after_add: impl FnOnce(bool, &Value) -> T,
) -> (Verbs, T) {
    let add = run("ADD", conf);
    let result = add.json.clone().unwrap_or(Value::Null);
    let snapshot = after_add(add.success(), &result);
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

    /// A failed ADD printed the same error as the reference's, compared by the error's `keys` (`code`,
    /// `msg`).
    pub fn assert_same_error(&self, theirs: &Verbs, r: Reference, keys: &[&str]) {
        let pick =
            |v: &Verbs| -> Vec<Value> { keys.iter().map(|k| v.raw_result[*k].clone()).collect() };
        assert_eq!(
            pick(self),
            pick(theirs),
            "error differs\n=== ours ===\n{}\n=== {r} ===\n{}",
            self.add_out,
            theirs.add_out
        );
    }

    /// CHECK right after ADD turned out as the reference's, and ours passed it.
    pub fn assert_same_check(&self, theirs: &Verbs, r: Reference) {
        assert_eq!(
            self.check_ok, theirs.check_ok,
            "CHECK outcome differs\n=== ours ===\n{}\n=== {r} ===\n{}",
            self.check_out, theirs.check_out
        );
        self.assert_check_passed();
    }

    /// CHECK right after ADD, when it ran, passed.
    pub fn assert_check_passed(&self) {
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

    /// DEL succeeded and `ifname` is gone from the pod (`pod_links_after`), which may keep links of its own.
    pub fn assert_removed(&self, who: &str, pod_links_after: &[String], ifname: &str) {
        assert!(self.del_ok, "{who}: DEL failed: {}", self.del_out);
        assert!(
            pod_links_after.iter().all(|n| n != ifname),
            "{who}: {ifname} left after DEL: {pod_links_after:?}"
        );
    }
}
