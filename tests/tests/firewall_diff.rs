//! The firewall plugin against the reference v1.10 (built from `tests/upstream/plugins`): the same
//! ADD in twin node namespaces must give the same result and the same iptables `filter` tables (both
//! families), CHECK of each plugin passes on the other's rules, and DEL leaves the chains without
//! container rules. Then the nftables backend, firewalld without a daemon, DEL without prevResult,
//! and GC and STATUS through upstream libcni.
//!
//! Intended differences, asserted as such: our per-address rules carry an owner comment
//! (`twill-firewall <tag>`), removed by the normalisation; our DEL without prevResult still removes
//! them (the reference cannot: it knows no addresses); unknown `backend`/`ingressPolicy` values are
//! code 7 before anything is changed.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use twill_tests::bins::{bin, link_plugin_dir, require_root, Reference};
use twill_tests::exec::{Invocation, Outcome};
use twill_tests::libcni::{unique_name, Driver, LibCni};
use twill_tests::netns::Netns;

const CID: &str = "fw-container";

fn ours() -> PathBuf {
    bin("firewall")
}

fn theirs() -> PathBuf {
    Reference::Current.bin("firewall")
}

fn prev_result(version: &str, ips: &[&str]) -> Value {
    json!({
        "cniVersion": version,
        "interfaces": [{"name": "cni0"}, {"name": "veth1234"}, {"name": "eth0", "sandbox": "/run/netns/pod"}],
        "ips": ips.iter().map(|a| json!({"address": a, "interface": 2})).collect::<Vec<_>>(),
    })
}

fn conf(extra: Value, ips: &[&str]) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "fwnet", "type": "firewall"});
    for (k, v) in extra.as_object().expect("object") {
        c[k] = v.clone();
    }
    let version = c["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
    c["prevResult"] = prev_result(&version, ips);
    c
}

fn run(node: &Netns, plugin: &Path, verb: &str, cid: &str, conf: &Value) -> Outcome {
    let out = Invocation::new(plugin, verb)
        .libcni_style()
        .container_id(Some(cid))
        .ifname(Some("eth0"))
        .netns_str(Some("/run/netns/pod"))
        .stdin_json(conf)
        .in_netns(node.path())
        .run();
    out.assert_no_panic();
    out
}

/// The node's iptables and ip6tables filter tables, with our owner comments taken out.
fn filter_tables(node: &Netns) -> Vec<String> {
    let mut lines = Vec::new();
    for tool in ["iptables", "ip6tables"] {
        for l in node.exec_ok(&[tool, "-t", "filter", "-S"]).lines() {
            let l = match l.find(" -m comment --comment \"twill-firewall ") {
                Some(i) => {
                    let rest = &l[i + 1..];
                    let end = rest[30..].find('"').map(|e| e + 31).unwrap_or(rest.len());
                    format!("{}{}", &l[..i], &rest[end..])
                }
                None => l.to_string(),
            };
            lines.push(format!("{tool} {l}"));
        }
    }
    lines
}

fn normalize(mut v: Value) -> Value {
    if v.get("dns")
        .is_some_and(|d| d.as_object().is_some_and(|d| d.is_empty()))
    {
        v.as_object_mut().map(|o| o.remove("dns"));
    }
    v
}

fn differential(extra: Value, ips: &[&str]) {
    require_root();
    let c = conf(extra, ips);
    let (a, b) = (Netns::node("fwa"), Netns::node("fwb"));
    let ra = run(&a, &ours(), "ADD", CID, &c).assert_success();
    let rb = run(&b, &theirs(), "ADD", CID, &c).assert_success();
    assert_eq!(normalize(ra), normalize(rb), "result differs");
    let (ta, tb) = (filter_tables(&a), filter_tables(&b));
    assert_eq!(ta, tb, "filter tables differ");
    if c["cniVersion"] != "0.3.1" {
        for (node, plugin) in [(&a, ours()), (&b, ours()), (&b, theirs())] {
            let check = run(node, &plugin, "CHECK", CID, &c);
            assert!(
                check.success(),
                "CHECK by {}: {}",
                plugin.display(),
                check.describe()
            );
        }
        // The reference looks for its exact rule text, which our owner comment changes.
        assert!(!run(&a, &theirs(), "CHECK", CID, &c).success());
    }
    run(&a, &ours(), "DEL", CID, &c).assert_success_empty();
    run(&b, &theirs(), "DEL", CID, &c).assert_success_empty();
    let (ta, tb) = (filter_tables(&a), filter_tables(&b));
    assert_eq!(ta, tb, "filter tables differ after DEL");
    for ip in ips {
        let host = ip.split('/').next().unwrap_or_default();
        assert!(
            !ta.iter().any(|l| l.contains(&format!("{host}/"))),
            "rules for {ip} left after DEL: {ta:#?}"
        );
    }
}

trait SuccessEmpty {
    fn assert_success_empty(&self);
}

impl SuccessEmpty for Outcome {
    fn assert_success_empty(&self) {
        assert!(self.success(), "{}", self.describe());
    }
}

#[test]
fn same_as_reference_default_backend_is_iptables_without_firewalld() {
    differential(json!({}), &["10.88.0.2/24"]);
}

#[test]
fn same_as_reference_iptables_dual_stack() {
    differential(
        json!({"backend": "iptables"}),
        &["10.88.0.2/24", "fd88::2/64"],
    );
}

#[test]
fn same_as_reference_admin_chain_name() {
    differential(
        json!({"backend": "iptables", "iptablesAdminChainName": "MY-ADMIN"}),
        &["10.88.0.7/24"],
    );
}

#[test]
fn same_as_reference_ingress_policy_same_bridge() {
    differential(
        json!({"ingressPolicy": "same-bridge"}),
        &["10.88.0.2/24", "fd88::2/64"],
    );
}

#[test]
fn same_as_reference_ingress_policy_isolated() {
    differential(json!({"ingressPolicy": "isolated"}), &["10.88.0.2/24"]);
}

#[test]
fn same_as_reference_version_0_4_0() {
    differential(json!({"cniVersion": "0.4.0"}), &["10.88.0.2/24"]);
}

#[test]
fn two_containers_keep_each_others_rules() {
    require_root();
    let node = Netns::node("fw2");
    let c1 = conf(json!({}), &["10.88.0.2/24"]);
    let c2 = conf(json!({}), &["10.88.0.3/24"]);
    run(&node, &ours(), "ADD", "one", &c1).assert_success();
    run(&node, &ours(), "ADD", "two", &c2).assert_success();
    // A repeated ADD adds nothing.
    run(&node, &ours(), "ADD", "two", &c2).assert_success();
    let count = |ip: &str| {
        filter_tables(&node)
            .iter()
            .filter(|l| l.contains(ip))
            .count()
    };
    assert_eq!((count("10.88.0.2/32"), count("10.88.0.3/32")), (2, 2));
    run(&node, &ours(), "DEL", "one", &c1).assert_success_empty();
    assert_eq!((count("10.88.0.2/32"), count("10.88.0.3/32")), (0, 2));
    run(&node, &ours(), "CHECK", "two", &c2).assert_success_empty();
}

#[test]
fn del_without_prev_result_removes_our_rules() {
    require_root();
    let node = Netns::node("fwd");
    let c = conf(json!({}), &["10.88.0.9/24", "fd88::9/64"]);
    run(&node, &ours(), "ADD", CID, &c).assert_success();
    let mut bare = c.clone();
    bare.as_object_mut().map(|o| o.remove("prevResult"));
    for _ in 0..2 {
        run(&node, &ours(), "DEL", CID, &bare).assert_success_empty();
    }
    let left: Vec<String> = filter_tables(&node)
        .into_iter()
        .filter(|l| l.contains("10.88.0.9") || l.contains("fd88::9"))
        .collect();
    assert!(left.is_empty(), "{left:#?}");
}

#[test]
fn our_del_removes_the_references_rules() {
    require_root();
    let node = Netns::node("fwm");
    let c = conf(json!({}), &["10.88.0.4/24"]);
    run(&node, &theirs(), "ADD", CID, &c).assert_success();
    run(&node, &ours(), "DEL", CID, &c).assert_success_empty();
    assert!(!filter_tables(&node).iter().any(|l| l.contains("10.88.0.4")));
}

#[test]
fn nftables_backend_adds_checks_and_deletes_by_owner() {
    require_root();
    let node = Netns::node("fwn");
    let c = conf(
        json!({"backend": "nftables"}),
        &["10.88.0.5/24", "fd88::5/64"],
    );
    run(&node, &ours(), "ADD", CID, &c).assert_success();
    let table = node.exec_ok(&["nft", "list", "table", "inet", "twill_firewall"]);
    for want in [
        "hook forward priority filter",
        "jump CNI-FORWARD",
        "jump CNI-ADMIN",
        "ip daddr 10.88.0.5 ct state established,related accept",
        "ip saddr 10.88.0.5 accept",
        "ip6 daddr fd88::5 ct state established,related accept",
        "ip6 saddr fd88::5 accept",
    ] {
        assert!(table.contains(want), "missing {want:?} in\n{table}");
    }
    run(&node, &ours(), "CHECK", CID, &c).assert_success_empty();
    let mut bare = c.clone();
    bare.as_object_mut().map(|o| o.remove("prevResult"));
    run(&node, &ours(), "DEL", CID, &bare).assert_success_empty();
    let table = node.exec_ok(&["nft", "list", "table", "inet", "twill_firewall"]);
    assert!(
        !table.contains("10.88.0.5") && !table.contains("fd88::5"),
        "{table}"
    );
    assert!(!run(&node, &ours(), "CHECK", CID, &c).success());
    // Nothing in iptables.
    assert!(!filter_tables(&node)
        .iter()
        .any(|l| l.contains("CNI-FORWARD")));
}

#[test]
fn firewalld_backend_without_a_daemon_is_a_clear_error() {
    require_root();
    let node = Netns::node("fwf");
    let c = conf(json!({"backend": "firewalld"}), &["10.88.0.6/24"]);
    let out = run(&node, &ours(), "ADD", CID, &c);
    let err = out.assert_any_error();
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("firewalld is not running"),
        "{err}"
    );
    assert!(
        !run(&node, &theirs(), "ADD", CID, &c).success(),
        "the reference fails too"
    );
    assert!(run(&node, &ours(), "DEL", CID, &c).success());
}

#[test]
fn bad_values_are_refused_before_any_change() {
    require_root();
    let node = Netns::node("fwb");
    let before = filter_tables(&node);
    for extra in [
        json!({"backend": "pf"}),
        json!({"ingressPolicy": "closed"}),
        json!({"iptablesAdminChainName": "-j DROP"}),
    ] {
        run(&node, &ours(), "ADD", CID, &conf(extra, &["10.88.0.2/24"])).assert_error(7);
    }
    let mut missing = conf(json!({}), &["10.88.0.2/24"]);
    missing.as_object_mut().map(|o| o.remove("prevResult"));
    run(&node, &ours(), "ADD", CID, &missing).assert_error(7);
    assert_eq!(filter_tables(&node), before);
}

/// bridge (ours, L2 with host-local) + firewall through upstream libcni: GC keeps the valid
/// attachment's rules and removes a lost one's; STATUS passes for iptables and says firewalld is not
/// available.
#[test]
fn gc_and_status_through_upstream_libcni() {
    require_root();
    let node = Netns::node("fwl");
    let dir = tempfile::tempdir().expect("temp dir");
    let bin_dir = dir.path().join("bin");
    link_plugin_dir(
        &bin_dir,
        ["bridge", "host-local", "firewall"].map(|n| (n, bin(n))),
    );
    let lib = LibCni::scratch(vec![bin_dir.clone()])
        .in_netns(node.path())
        .with_driver(Driver::Upstream);
    let name = unique_name("fwgc");
    let list = json!({
        "cniVersion": "1.1.0", "name": name,
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": true,
             "ipam": {"type": "host-local", "dataDir": dir.path().join("ipam"),
                      "ranges": [[{"subnet": "10.89.0.0/24"}]]}},
            {"type": "firewall", "backend": "iptables"}
        ]
    });
    let net = lib.write_conflist(&list);
    lib.status(&net).assert_success();
    let (a, b) = (Netns::new("fwpod"), Netns::new("fwpod"));
    let ip_of = |r: &Value| {
        r["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .unwrap_or_default()
            .to_string()
    };
    let ip_a = ip_of(
        &lib.with_container_id("pod-a")
            .add(&net, a.path())
            .assert_success(),
    );
    let ip_b = ip_of(
        &lib.with_container_id("pod-b")
            .add(&net, b.path())
            .assert_success(),
    );
    let rules = |ip: &str| {
        filter_tables(&node)
            .into_iter()
            .filter(|l| l.contains(&format!("{ip}/32")))
            .count()
    };
    assert_eq!((rules(&ip_a), rules(&ip_b)), (2, 2));
    // The runtime lost pod-b: only the plugin's own GC can find its rules.
    std::fs::remove_file(lib.cached_result_path(&net, "pod-b", "eth0")).expect("remove cache");
    lib.with_valid_attachments(&[("pod-a", "eth0")])
        .gc(&net)
        .assert_success();
    assert_eq!((rules(&ip_a), rules(&ip_b)), (2, 0));
    lib.with_container_id("pod-a")
        .check(&net, a.path())
        .assert_success();
    lib.with_container_id("pod-a")
        .del(&net, a.path())
        .assert_success();
    assert_eq!(rules(&ip_a), 0);

    // STATUS with a firewalld backend and no firewalld: "plugin not available".
    let mut fwd = list.clone();
    fwd["name"] = json!(unique_name("fwst"));
    fwd["plugins"][1]["backend"] = json!("firewalld");
    let net = lib.write_conflist(&fwd);
    let out = lib.status(&net);
    assert!(!out.success(), "{}", out.describe());
    assert!(out.describe().contains("firewalld"), "{}", out.describe());
}

/// Parallel ADDs and DELs of many containers in one node share the chains: every container gets its two
/// rules per address exactly once, the jumps exist once, and the DELs leave no container rule.
#[test]
fn parallel_adds_and_dels_keep_the_shared_chains_whole() {
    require_root();
    let node = Netns::node("fwp");
    let n = 16;
    let confs: Vec<Value> = (0..n)
        .map(|i| {
            let v4 = format!("10.88.1.{}/24", i + 2);
            let v6 = format!("fd88::1:{:x}/64", i + 2);
            conf(json!({}), &[v4.as_str(), v6.as_str()])
        })
        .collect();
    let run_all = |verb: &'static str| {
        std::thread::scope(|s| {
            let handles: Vec<_> = confs
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let node = &node;
                    s.spawn(move || run(node, &ours(), verb, &format!("par{i}"), c))
                })
                .collect();
            for h in handles {
                let out = h.join().expect("thread");
                assert!(out.success(), "parallel {verb}: {}", out.describe());
            }
        })
    };
    run_all("ADD");
    let tables = filter_tables(&node);
    for i in 0..n {
        for ip in [
            format!("10.88.1.{}/32", i + 2),
            format!("fd88::1:{:x}/128", i + 2),
        ] {
            let count = tables
                .iter()
                .filter(|l| l.contains(&format!(" {ip} ")))
                .count();
            assert_eq!(count, 2, "rules for {ip}: {tables:#?}");
        }
    }
    for tool in ["iptables", "ip6tables"] {
        for jump in ["-j CNI-FORWARD", "-j CNI-ADMIN"] {
            let count = tables
                .iter()
                .filter(|l| l.starts_with(tool) && l.contains(" -A ") && l.ends_with(jump))
                .count();
            assert_eq!(count, 1, "{tool} {jump}: {tables:#?}");
        }
    }
    run_all("DEL");
    let left: Vec<String> = filter_tables(&node)
        .into_iter()
        .filter(|l| l.contains("10.88.1.") || l.contains("fd88::1:"))
        .collect();
    assert!(left.is_empty(), "{left:#?}");
}

#[test]
fn nftables_gc_removes_rules_of_attachments_not_in_the_valid_list() {
    require_root();
    let node = Netns::node("fwg");
    let mut c1 = conf(
        json!({"cniVersion": "1.1.0", "backend": "nftables"}),
        &["10.88.2.2/24"],
    );
    let mut c2 = conf(
        json!({"cniVersion": "1.1.0", "backend": "nftables"}),
        &["10.88.2.3/24"],
    );
    for c in [&mut c1, &mut c2] {
        c["prevResult"]["cniVersion"] = json!("1.1.0");
    }
    run(&node, &ours(), "ADD", "keep", &c1).assert_success();
    run(&node, &ours(), "ADD", "lost", &c2).assert_success();
    let gc = json!({"cniVersion": "1.1.0", "name": "fwnet", "type": "firewall", "backend": "nftables",
        "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]});
    run(&node, &ours(), "GC", "", &gc).assert_success_empty();
    let table = node.exec_ok(&["nft", "list", "table", "inet", "twill_firewall"]);
    assert!(
        table.contains("10.88.2.2") && !table.contains("10.88.2.3"),
        "{table}"
    );
    run(&node, &ours(), "STATUS", "", &gc).assert_success_empty();
    run(&node, &ours(), "CHECK", "keep", &c1).assert_success_empty();
}
