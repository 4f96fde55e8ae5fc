//! Differential test of the sbr plugin against the reference builds (Debian's 1.1.1 and upstream v1.10.0):
//! twin pods with the same interface, addresses and routes (what a main plugin leaves), the same ADD, and
//! the same result JSON, policy rules and routing tables (every table, link-local routes included) after
//! it, and the same rules after DEL. Keys only v1.10.0 knows (`gateways`, `addSourceHints`) are compared
//! with it alone.
//!
//! Intended differences: DEL also empties the tables it made (the reference leaves their routes until the
//! interface goes), CHECK verifies the rules (the reference's CHECK does nothing), a failed ADD leaves the
//! pod as it was, and DEL succeeds without the netns.
//!
//! Ours only: rollback, DEL without the netns or the interface, parallel ADDs in one pod.

#[path = "bridge_support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::merge;
use twill_tests::bins::{self, Reference};
use twill_tests::exec::{Invocation, Outcome};
use twill_tests::netns::Netns;

const CID: &str = "sbr-diff";
const IFNAME: &str = "eth0";
const NET: &str = "sbrnet";

fn ours() -> PathBuf {
    bins::bin("sbr")
}

/// A pod whose `eth0` (a veth, its peer in the pod too) has `addrs` and a default route per family via
/// the `.1` / `::1` of the first address's subnet, as ptp or bridge leave it.
fn new_pod(addrs: &[&str]) -> Netns {
    let pod = Netns::new("sbrp");
    pod.exec_ok(&[
        "ip", "link", "add", IFNAME, "type", "veth", "peer", "name", "peer0",
    ]);
    for a in addrs {
        let mut cmd = vec!["ip", "addr", "add", a, "dev", IFNAME];
        if a.contains(':') {
            cmd.push("nodad");
        }
        pod.exec_ok(&cmd);
    }
    pod.exec_ok(&["ip", "link", "set", "peer0", "up"]);
    pod.exec_ok(&["ip", "link", "set", IFNAME, "up"]);
    if addrs.iter().any(|a| !a.contains(':')) {
        pod.exec_ok(&[
            "ip", "route", "add", "default", "via", "10.1.2.1", "dev", IFNAME,
        ]);
    }
    if addrs.iter().any(|a| a.contains(':')) {
        pod.exec_ok(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8::1",
            "dev",
            IFNAME,
        ]);
        // The link-local prefix route comes with carrier: wait for it, so both twins start equal.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pod
            .exec_ok(&["ip", "-6", "route", "show", "dev", IFNAME])
            .contains("fe80::/64")
        {
            assert!(Instant::now() < deadline, "no fe80::/64 route on {IFNAME}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pod
}

/// A prevResult giving `eth0` the addresses (gateways `.1` / `::1`).
fn conf(addrs: &[&str], extra: &Value) -> Value {
    let ips: Vec<Value> = addrs
        .iter()
        .map(|a| {
            let gw = if a.contains(':') {
                "2001:db8::1"
            } else {
                "10.1.2.1"
            };
            json!({"address": a, "gateway": gw, "interface": 1})
        })
        .collect();
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "sbr",
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "veth0000", "mac": "aa:aa:aa:aa:aa:aa"},
                           {"name": IFNAME, "mac": "aa:aa:aa:aa:aa:ab", "sandbox": "/run/netns/pod"}],
            "ips": ips,
        }
    });
    merge(&mut c, extra.clone());
    c
}

fn run(plugin: &Path, cmd: &str, pod: Option<&Path>, conf: &Value) -> Outcome {
    let out = Invocation::new(plugin, cmd)
        .libcni_style()
        .container_id(Some(CID))
        .ifname(Some(IFNAME))
        .netns(pod)
        .stdin_json(conf)
        .run();
    out.assert_no_panic();
    out
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(|l| l.trim().to_string()).collect()
}

/// The policy rules of both families, as `ip rule` prints them.
fn rules(pod: &Netns) -> Vec<String> {
    let mut out = lines(&pod.exec_ok(&["ip", "-4", "rule"]));
    out.extend(lines(&pod.exec_ok(&["ip", "-6", "rule"])));
    out
}

/// Every route of every table but `local` (and IPv6 multicast), sorted, as `ip route` prints them.
fn tables(pod: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        out.extend(
            lines(&pod.exec_ok(&["ip", fam, "route", "show", "table", "all"]))
                .into_iter()
                .filter(|l| !l.contains("table local") && !l.starts_with("multicast")),
        );
    }
    out.sort();
    out
}

/// The routes of `table` only.
fn table(pod: &Netns, table: &str) -> Vec<String> {
    tables(pod)
        .into_iter()
        .filter(|l| l.contains(&format!("table {table}")))
        .collect()
}

#[derive(Debug)]
struct Side {
    add: Outcome,
    rules: Vec<String>,
    tables: Vec<String>,
    check_ok: Option<bool>,
    del: Outcome,
    rules_after: Vec<String>,
    rules_before: Vec<String>,
    tables_after: Vec<String>,
}

fn run_side(plugin: &Path, addrs: &[&str], extra: &Value) -> Side {
    let pod = new_pod(addrs);
    let c = conf(addrs, extra);
    let rules_before = rules(&pod);
    let add = run(plugin, "ADD", Some(pod.path()), &c);
    let (rules_v, tables_v) = (rules(&pod), tables(&pod));
    let check_ok = add
        .success()
        .then(|| run(plugin, "CHECK", Some(pod.path()), &c).success());
    let del = run(plugin, "DEL", Some(pod.path()), &c);
    Side {
        add,
        rules: rules_v,
        tables: tables_v,
        check_ok,
        del,
        rules_after: rules(&pod),
        rules_before,
        tables_after: tables(&pod),
    }
}

fn differential_with(refs: &[Reference], addrs: &[&str], extra: Value) {
    bins::require_root();
    let ours_side = run_side(&ours(), addrs, &extra);
    assert!(
        ours_side.add.success(),
        "ADD failed: {}",
        ours_side.add.describe()
    );
    for &r in refs {
        let theirs = run_side(&r.bin("sbr"), addrs, &extra);
        assert!(
            theirs.add.success(),
            "{r}: ADD failed: {}",
            theirs.add.describe()
        );
        let norm = |o: &Outcome| support::normalize_result(o.json.as_ref().unwrap_or(&Value::Null));
        assert_eq!(
            norm(&ours_side.add),
            norm(&theirs.add),
            "result differs from {r}"
        );
        assert_eq!(ours_side.rules, theirs.rules, "rules differ from {r}");
        assert_eq!(ours_side.tables, theirs.tables, "tables differ from {r}");
        assert_eq!(
            ours_side.check_ok, theirs.check_ok,
            "CHECK differs from {r}"
        );
        for (who, s) in [("ours", &ours_side), ("reference", &theirs)] {
            assert!(s.del.success(), "{who}: DEL failed: {}", s.del.describe());
            assert_eq!(s.rules_after, s.rules_before, "{who}: DEL left rules");
        }
    }
    // Ours also empties the tables it made (the reference leaves them to the interface's removal).
    let extra_tables: Vec<&String> = ours_side
        .tables_after
        .iter()
        .filter(|l| l.contains(" table ") && !l.contains("table main"))
        .collect();
    assert!(
        extra_tables.is_empty(),
        "DEL left routes in sbr's tables: {extra_tables:?}"
    );
}

fn differential(addrs: &[&str], extra: Value) {
    differential_with(&Reference::ALL, addrs, extra)
}

#[test]
fn same_as_reference_one_address() {
    differential(&["10.1.2.3/24"], json!({}));
}

#[test]
fn same_as_reference_dual_stack() {
    differential(&["10.1.2.3/24", "2001:db8::3/64"], json!({}));
}

#[test]
fn same_as_reference_two_addresses_of_one_subnet() {
    differential(&["10.1.2.3/24", "10.1.2.4/24"], json!({}));
}

#[test]
fn same_as_reference_fixed_table() {
    // The reference 1.1.1 does not know `table`.
    differential_with(
        &[Reference::Current],
        &["10.1.2.3/24", "2001:db8::3/64"],
        json!({"table": 5000}),
    );
}

#[test]
fn same_as_reference_static_gateways() {
    differential_with(
        &[Reference::Current],
        &["10.1.2.3/24", "2001:db8::3/64"],
        json!({"gateways": ["10.1.2.254", "2001:db8::fe"]}),
    );
}

#[test]
fn same_as_reference_source_hints() {
    differential_with(
        &[Reference::Current],
        &["10.1.2.3/24", "2001:db8::3/64"],
        json!({"addSourceHints": true}),
    );
}

#[test]
fn same_as_reference_in_every_version() {
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.1.0"] {
        let mut extra = json!({"cniVersion": v});
        extra["prevResult"] = json!({"cniVersion": v});
        // The reference 1.1.1 predates CNI 1.1.0.
        let refs: &[Reference] = if v == "1.1.0" {
            &[Reference::Current]
        } else {
            &Reference::ALL
        };
        differential_with(refs, &["10.1.2.3/24", "2001:db8::3/64"], extra);
    }
}

#[test]
fn the_first_table_skips_tables_in_use() {
    bins::require_root();
    for plugin in [ours(), Reference::Current.bin("sbr")] {
        let pod = new_pod(&["10.1.2.3/24"]);
        pod.exec_ok(&["ip", "rule", "add", "from", "192.0.2.9", "lookup", "100"]);
        run(
            &plugin,
            "ADD",
            Some(pod.path()),
            &conf(&["10.1.2.3/24"], &json!({})),
        )
        .assert_success();
        assert!(
            rules(&pod)
                .iter()
                .any(|r| r.ends_with("from 10.1.2.3 lookup 101")),
            "{}: {:?}",
            plugin.display(),
            rules(&pod)
        );
    }
}

/// A gateway outside the interface's subnets fails after the rule was added: ours removes it again.
#[test]
fn failed_add_rolls_back() {
    bins::require_root();
    let pod = new_pod(&["10.1.2.3/24", "2001:db8::3/64"]);
    let (rules_before, tables_before) = (rules(&pod), tables(&pod));
    let c = conf(
        &["10.1.2.3/24", "2001:db8::3/64"],
        &json!({"gateways": ["2001:db8::fe", "192.0.2.1"]}),
    );
    run(&ours(), "ADD", Some(pod.path()), &c).assert_any_error();
    assert_eq!(rules(&pod), rules_before, "rules left by a failed ADD");
    assert_eq!(
        tables(&pod),
        tables_before,
        "routes changed by a failed ADD"
    );
}

#[test]
fn del_succeeds_when_netns_or_interface_is_gone() {
    bins::require_root();
    let c = conf(&["10.1.2.3/24"], &json!({}));
    run(&ours(), "DEL", Some(Path::new("/run/netns/sbr-gone")), &c).assert_success();
    run(&ours(), "DEL", None, &c).assert_success();
    let not_a_netns = tempfile::NamedTempFile::new().unwrap();
    run(&ours(), "DEL", Some(not_a_netns.path()), &c).assert_success();
    let pod = new_pod(&["10.1.2.3/24"]);
    run(&ours(), "ADD", Some(pod.path()), &c).assert_success();
    pod.exec_ok(&["ip", "link", "del", IFNAME]);
    run(&ours(), "DEL", Some(pod.path()), &c).assert_success();
    // DEL twice is fine too.
    run(&ours(), "DEL", Some(pod.path()), &c).assert_success();
}

#[test]
fn check_fails_when_a_rule_is_gone() {
    bins::require_root();
    let pod = new_pod(&["10.1.2.3/24"]);
    let c = conf(&["10.1.2.3/24"], &json!({}));
    run(&ours(), "ADD", Some(pod.path()), &c).assert_success();
    run(&ours(), "CHECK", Some(pod.path()), &c).assert_success();
    pod.exec_ok(&["ip", "rule", "del", "from", "10.1.2.3", "lookup", "100"]);
    run(&ours(), "CHECK", Some(pod.path()), &c).assert_any_error();
}

/// Two interfaces of one pod added at once each get their own table (the namespace lock).
#[test]
fn parallel_adds_in_one_pod_get_distinct_tables() {
    bins::require_root();
    let pod = new_pod(&["10.1.2.3/24"]);
    pod.exec_ok(&[
        "ip", "link", "add", "net1", "type", "veth", "peer", "name", "peer1",
    ]);
    pod.exec_ok(&["ip", "addr", "add", "10.9.0.3/24", "dev", "net1"]);
    pod.exec_ok(&["ip", "link", "set", "peer1", "up"]);
    pod.exec_ok(&["ip", "link", "set", "net1", "up"]);
    let c0 = conf(&["10.1.2.3/24"], &json!({}));
    let mut c1 = c0.clone();
    c1["prevResult"]["interfaces"][1]["name"] = json!("net1");
    c1["prevResult"]["ips"] = json!([{"address": "10.9.0.3/24", "interface": 1}]);
    std::thread::scope(|s| {
        for (ifname, c) in [(IFNAME, &c0), ("net1", &c1)] {
            let path = pod.path().to_path_buf();
            s.spawn(move || {
                Invocation::new(ours(), "ADD")
                    .libcni_style()
                    .container_id(Some(CID))
                    .ifname(Some(ifname))
                    .netns(Some(&path))
                    .stdin_json(c)
                    .run()
                    .assert_success();
            });
        }
    });
    let r = rules(&pod);
    let t100 = r.iter().filter(|l| l.ends_with("lookup 100")).count();
    let t101 = r.iter().filter(|l| l.ends_with("lookup 101")).count();
    assert_eq!((t100, t101), (1, 1), "{r:?}");
    // Each table holds the routes of one interface only.
    for t in ["100", "101"] {
        let routes = table(&pod, t);
        let on_eth0 = routes.iter().filter(|l| l.contains("dev eth0")).count();
        let on_net1 = routes.iter().filter(|l| l.contains("dev net1")).count();
        assert!(
            (on_eth0 == 0) != (on_net1 == 0),
            "table {t} mixes interfaces: {routes:?}"
        );
    }
}

/// Bad configs both sides refuse (the reference v1.10.0 some only after adding a rule); ours refuses
/// them before touching the pod.
#[test]
fn bad_configs_are_refused_like_the_reference() {
    bins::require_root();
    for (extra, what) in [
        (json!({"prevResult": null}), "no prevResult"),
        (json!({"table": "x"}), "a non-numeric table"),
        (
            json!({"gateways": ["10.1.2.1", "10.1.2.2"]}),
            "two IPv4 gateways",
        ),
        (
            json!({"gateways": ["10.1.2.1", "2001:db8::1", "10.1.2.2"]}),
            "three gateways",
        ),
        (json!({"gateways": ["not-an-ip"]}), "a bad gateway"),
        (json!({"prevResult": {"ips": []}}), "no addresses"),
    ] {
        for plugin in [ours(), Reference::Current.bin("sbr")] {
            let pod = new_pod(&["10.1.2.3/24"]);
            let (rules_before, tables_before) = (rules(&pod), tables(&pod));
            let out = run(
                &plugin,
                "ADD",
                Some(pod.path()),
                &conf(&["10.1.2.3/24"], &extra),
            );
            assert!(!out.success(), "{}: {what} accepted", plugin.display());
            if plugin == ours() {
                out.assert_any_error();
                assert_eq!(rules(&pod), rules_before, "{what}: rules changed");
                assert_eq!(tables(&pod), tables_before, "{what}: routes changed");
            }
        }
    }
    // Ours also refuses a table outside the kernel's range, before the pod is touched.
    for table in [json!(-1), json!(0), json!(4_294_967_296_i64)] {
        let pod = new_pod(&["10.1.2.3/24"]);
        let rules_before = rules(&pod);
        let c = conf(&["10.1.2.3/24"], &json!({ "table": table }));
        run(&ours(), "ADD", Some(pod.path()), &c).assert_error(7);
        assert_eq!(rules(&pod), rules_before, "table {table}: rules changed");
    }
}

/// No state outside the pod: one side's DEL removes the other side's rules.
#[test]
fn each_side_deletes_the_others_rules() {
    bins::require_root();
    let addrs = ["10.1.2.3/24", "2001:db8::3/64"];
    let c = conf(&addrs, &json!({}));
    for (adder, deleter) in [
        (ours(), Reference::Current.bin("sbr")),
        (Reference::Current.bin("sbr"), ours()),
    ] {
        let pod = new_pod(&addrs);
        let before = rules(&pod);
        run(&adder, "ADD", Some(pod.path()), &c).assert_success();
        run(&deleter, "DEL", Some(pod.path()), &c).assert_success();
        assert_eq!(
            rules(&pod),
            before,
            "ADD by {} then DEL by {}",
            adder.display(),
            deleter.display()
        );
    }
}

/// sbr after a real ptp ADD (dual stack over host-local): ptp + sbr of ours and of the reference v1.10.0
/// leave the same rules and tables in the pod, and DEL of the chain (sbr first, as runtimes do) leaves the
/// pod's rules as they were.
#[test]
fn same_as_reference_after_ptp() {
    bins::require_root();
    let side = |dir: PathBuf| -> (Value, Vec<String>, Vec<String>, Vec<String>) {
        let node = support::Node::new();
        let pod = Netns::new("sbrp");
        let ptp = json!({
            "cniVersion": "1.0.0", "name": NET, "type": "ptp",
            "ipam": node.ipam(json!([[{"subnet": "10.66.0.0/24"}], [{"subnet": "fd66::/64"}]])),
        });
        let mut ptp = ptp;
        ptp["ipam"]["routes"] = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
        let cni_path = dir.display().to_string();
        let run = |plugin: &str, cmd: &str, c: &Value| {
            let out = node.run_with_path(
                &dir.join(plugin),
                cmd,
                Some(pod.path()),
                CID,
                IFNAME,
                c,
                &cni_path,
            );
            out.assert_no_panic();
            out
        };
        let before = rules(&pod);
        let prev = run("ptp", "ADD", &ptp).assert_success();
        let sbr = json!({"cniVersion": "1.0.0", "name": NET, "type": "sbr", "prevResult": prev});
        let result = run("sbr", "ADD", &sbr).assert_success();
        let (during_rules, during_tables) = (rules(&pod), tables(&pod));
        run("sbr", "DEL", &sbr).assert_success();
        run("ptp", "DEL", &ptp).assert_success();
        assert_eq!(
            rules(&pod),
            before,
            "{}: chain DEL left rules",
            dir.display()
        );
        (
            support::normalize_result(&result),
            during_rules,
            during_tables,
            before,
        )
    };
    let ours_side = side(bins::bin_dir());
    let theirs = side(Reference::Current.dir());
    assert_eq!(ours_side.0, theirs.0, "result differs");
    assert_eq!(ours_side.1, theirs.1, "rules differ");
    assert_eq!(ours_side.2, theirs.2, "tables differ");
}
