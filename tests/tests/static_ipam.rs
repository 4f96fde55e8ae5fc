//! Differential test of the static IPAM plugin against the reference builds (Debian's 1.1.1 and upstream
//! v1.10.0): the same request must give the same result JSON in every result version, or an error on both
//! sides; CHECK judges `prevResult` the same way; DEL, STATUS and GC succeed with nothing to do.

use serde_json::{json, Value};
use std::path::Path;
use twill_tests::bins::{self, Reference};
use twill_tests::exec::{Invocation, Outcome};

fn ours() -> std::path::PathBuf {
    bins::bin("static")
}

fn conf(version: &str, ipam: Value, top: Value) -> Value {
    let mut c = json!({"cniVersion": version, "name": "staticnet", "type": "ptp", "ipam": ipam});
    if let (Some(c), Some(top)) = (c.as_object_mut(), top.as_object()) {
        for (k, v) in top {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn run(plugin: &Path, cmd: &str, conf: &Value, cni_args: Option<&str>) -> Outcome {
    let out = Invocation::new(plugin, cmd)
        .libcni_style()
        .container_id(Some("static-diff"))
        .netns_str(Some("/run/netns/static-not-opened"))
        .cni_args(cni_args)
        .stdin_json(conf)
        .run();
    out.assert_no_panic();
    out
}

/// An empty `dns` object: 1.1.1 and ours print it, v1.10 leaves it out; both mean "no DNS settings".
fn normalize(v: Option<Value>) -> Value {
    let mut v = v.unwrap_or(Value::Null);
    if v.get("dns")
        .is_some_and(|d| d.as_object().is_some_and(|o| o.is_empty()))
    {
        v.as_object_mut().map(|o| o.remove("dns"));
    }
    v
}

fn same(cmd: &str, conf: &Value, cni_args: Option<&str>) {
    same_as(&Reference::ALL, cmd, conf, cni_args)
}

/// `same` against `refs` only (1.1.0 configs: the reference 1.1.1 predates that version).
fn same_as(refs: &[Reference], cmd: &str, conf: &Value, cni_args: Option<&str>) {
    let o = run(&ours(), cmd, conf, cni_args);
    for &r in refs {
        let t = run(&r.bin("static"), cmd, conf, cni_args);
        assert_eq!(
            o.success(),
            t.success(),
            "{cmd} outcome differs from {r} for {conf}\n=== ours ===\n{}\n=== {r} ===\n{}",
            o.describe(),
            t.describe()
        );
        if o.success() {
            assert_eq!(
                normalize(o.json.clone()),
                normalize(t.json.clone()),
                "{cmd} result differs from {r} for {conf}"
            );
        } else {
            o.assert_any_error();
        }
    }
}

fn full_ipam() -> Value {
    json!({"type": "static",
        "addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"},
                      {"address": "3ffe:ffff:0:01ff::1/64", "gateway": "3ffe:ffff:0::1"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.0.253"},
                   {"dst": "3ffe:ffff:0:01ff::1/64"}],
        "dns": {"nameservers": ["8.8.8.8"], "domain": "example.com", "search": ["example.com"],
                "options": ["ndots:2"]}})
}

#[test]
fn add_results_match_the_reference_in_every_version() {
    bins::require_root();
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        same("ADD", &conf(v, full_ipam(), json!({})), None);
    }
    same_as(
        &[Reference::Current],
        "ADD",
        &conf("1.1.0", full_ipam(), json!({})),
        None,
    );
    // One address per family fits 0.2.0 too.
    let one = json!({"type": "static", "addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}]});
    for v in ["0.1.0", "0.2.0"] {
        same("ADD", &conf(v, one.clone(), json!({})), None);
    }
}

#[test]
fn overrides_match_the_reference() {
    bins::require_root();
    let base = conf("1.0.0", full_ipam(), json!({}));
    same(
        "ADD",
        &base,
        Some("IP=10.20.0.5/24,10.30.0.5/24;GATEWAY=10.20.0.1,10.30.0.1"),
    );
    same(
        "ADD",
        &base,
        Some("IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.20.0.5/24"),
    );
    same(
        "ADD",
        &conf(
            "1.0.0",
            full_ipam(),
            json!({"args": {"cni": {"ips": ["10.40.0.1/16"]}}}),
        ),
        None,
    );
    same(
        "ADD",
        &conf(
            "1.0.0",
            full_ipam(),
            json!({"runtimeConfig": {"ips": ["10.50.0.1/16", "fd50::1/64"]},
                   "args": {"cni": {"ips": ["10.40.0.1/16"]}}}),
        ),
        None,
    );
    same(
        "ADD",
        &conf(
            "1.0.0",
            json!({"type": "static"}),
            json!({"runtimeConfig": {"ips": ["10.60.0.1/24"]}}),
        ),
        None,
    );
}

#[test]
fn bad_input_is_refused_like_the_reference() {
    bins::require_root();
    let base = conf("1.0.0", full_ipam(), json!({}));
    same("ADD", &base, Some("IP=10.20.0.5"));
    same("ADD", &base, Some("IP=10.20.0.5/24;GATEWAY=nope"));
    same("ADD", &base, Some("K8S_POD_NAME=p"));
    same(
        "ADD",
        &conf(
            "1.0.0",
            json!({"type": "static", "addresses": [{"address": "10.0.0.1"}]}),
            json!({}),
        ),
        None,
    );
    same(
        "ADD",
        &conf(
            "1.0.0",
            json!({"type": "static", "addresses": [{"address": "10.0.0.1/24", "gateway": "x"}]}),
            json!({}),
        ),
        None,
    );
    same(
        "ADD",
        &conf(
            "1.0.0",
            json!({"type": "static"}),
            json!({"args": {"cni": {"ips": ["10.0.0.1"]}}}),
        ),
        None,
    );
    same(
        "ADD",
        &conf(
            "0.2.0",
            full_ipam()
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert(
                        "addresses".into(),
                        json!([{"address": "10.0.0.1/24"}, {"address": "10.0.1.1/24"}]),
                    );
                    Value::Object(o)
                })
                .unwrap_or_default(),
            json!({}),
        ),
        None,
    );
    let mut no_ipam = base.clone();
    no_ipam.as_object_mut().map(|o| o.remove("ipam"));
    let o = run(&ours(), "ADD", &no_ipam, None);
    o.assert_error(7);
}

#[test]
fn check_del_status_and_gc() {
    bins::require_root();
    let mut c = conf("1.0.0", full_ipam(), json!({}));
    c["prevResult"] = json!({"cniVersion": "1.0.0",
        "ips": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}]});
    same("CHECK", &c, None);
    c["prevResult"]["ips"][0]["gateway"] = json!("10.10.0.1");
    same("CHECK", &c, None);
    same("DEL", &conf("1.0.0", full_ipam(), json!({})), None);
    let v11 = conf("1.1.0", full_ipam(), json!({}));
    run(&ours(), "STATUS", &v11, None).assert_success();
    run(&ours(), "GC", &v11, None).assert_success();
}
