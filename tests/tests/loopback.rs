//! Conformance of our `loopback` plugin (docs/cni-spec-notes.md §12): driven through the real libcni like a
//! runtime, and compared byte-for-byte (as JSON) with each reference build's loopback (Debian's 1.1.1
//! and upstream v1.10.0).

use std::path::PathBuf;

use serde_json::{json, Value};
use twill_tests::bins::{bin, bin_dir, require_root, Reference};
use twill_tests::exec::{Invocation, Outcome, ALL_VERSIONS};
use twill_tests::libcni::{unique_name, LibCni};
use twill_tests::netns::Netns;

/// Versions at which our results must equal a reference build's (Debian's 1.1.1 stops at 1.0.0).
fn compared_versions(r: Reference) -> &'static [&'static str] {
    match r {
        Reference::Debian => &["0.3.1", "0.4.0", "1.0.0"],
        Reference::Current => &["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }
}

fn ours() -> PathBuf {
    bin("loopback")
}

fn reference(r: Reference) -> PathBuf {
    r.bin("loopback")
}

fn conf(version: &str, name: &str) -> Value {
    json!({"cniVersion": version, "name": name, "type": "loopback"})
}

fn conflist(version: &str, name: &str) -> Value {
    json!({"cniVersion": version, "name": name, "plugins": [{"type": "loopback"}]})
}

/// Runs `command` of `plugin` on `ns` with `config` on stdin, like a runtime (libcni's env style).
fn run(plugin: &PathBuf, command: &str, ns: &Netns, config: &Value) -> Outcome {
    Invocation::new(plugin, command)
        .libcni_style()
        .netns(Some(ns.path()))
        .stdin_json(config)
        .run()
}

/// Debian's reference loopback (plugins 1.1.1) prints its 1.0.0-shaped result under whatever
/// `cniVersion` was requested: at 0.3.x/0.4.0 its `ips` lack the `version` field those versions
/// require (docs/cni-spec-notes.md §5.2), and libcni reads them back as `"version": ""`. We emit the field as
/// the spec says, so results below 1.0.0 are compared without it, and ours is checked on its own.
fn without_ip_versions(result: &Value) -> Value {
    let mut result = result.clone();
    if let Some(ips) = result.get_mut("ips").and_then(Value::as_array_mut) {
        for ip in ips {
            ip.as_object_mut().map(|o| o.remove("version"));
        }
    }
    result
}

/// Asserts the result carries `ips[].version` matching each address family when `version` < 1.0.0,
/// and none at 1.0.0 and later.
fn assert_ip_versions_follow_spec(result: &Value, version: &str) {
    let ips = result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result without ips: {result}"));
    for ip in ips {
        let address = ip["address"].as_str().unwrap_or_default();
        let want = match (version.starts_with("0."), address.contains(':')) {
            (false, _) => Value::Null,
            (true, false) => json!("4"),
            (true, true) => json!("6"),
        };
        assert_eq!(
            ip["version"], want,
            "ips[].version of {address} at cniVersion {version}: {result}"
        );
    }
}

/// Compares our result with the reference's: exactly at 1.0.0, modulo `ips[].version` below it.
fn assert_same_result(got: &Value, want: &Value, version: &str, what: &str) {
    assert_ip_versions_follow_spec(got, version);
    if version.starts_with("0.") {
        assert_eq!(
            without_ip_versions(got),
            without_ip_versions(want),
            "{what} at cniVersion {version} differs from the reference loopback (ignoring ips[].version)"
        );
    } else {
        assert_eq!(
            got, want,
            "{what} at cniVersion {version} differs from the reference loopback"
        );
    }
}

/// A result with the netns path replaced, so results from two namespaces compare equal, and an empty
/// `dns` object left out: 1.1.1 and ours print `"dns": {}`, libcni >= 1.2 results (v1.10) omit it,
/// and both mean "no DNS settings".
fn normalised(result: &Value, ns: &Netns) -> Value {
    let text = result.to_string().replace(&ns.path_str(), "NETNS");
    let mut v: Value = serde_json::from_str(&text).expect("re-parse normalised result");
    if v.get("dns")
        .is_some_and(|d| d.as_object().is_some_and(|o| o.is_empty()))
    {
        v.as_object_mut().map(|o| o.remove("dns"));
    }
    v
}

#[test]
fn libcni_add_check_del_with_loopback_conflist() {
    require_root();
    let lib = LibCni::scratch(vec![bin_dir()]);
    let net = lib.write_conflist(&conflist("1.0.0", &unique_name("lo")));
    let ns = Netns::new("lo");
    assert!(
        !ns.link_is_up("lo"),
        "a fresh namespace starts with lo down"
    );

    let result = lib.add(&net, ns.path()).assert_success();
    assert_eq!(
        result["cniVersion"], "1.0.0",
        "result in the list's version: {result}"
    );
    assert_eq!(result["interfaces"][0]["name"], "lo", "{result}");
    assert_eq!(
        result["interfaces"][0]["sandbox"],
        ns.path_str(),
        "{result}"
    );
    assert!(ns.link_is_up("lo"), "lo must be up after ADD");

    lib.check(&net, ns.path()).assert_success();

    lib.del(&net, ns.path()).assert_success();
    assert!(!ns.link_is_up("lo"), "lo must be down after DEL");
    let cache = std::fs::read_dir(lib.cache_dir.join("results"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        cache, 0,
        "libcni removes its cached result after a successful DEL"
    );
}

#[test]
fn libcni_version_lists_every_spec_version() {
    require_root();
    let lib = LibCni::scratch(vec![bin_dir()]);
    let net = lib.write_conflist(&conflist("1.0.0", &unique_name("lo")));
    let answer = lib.version(&net).assert_success();
    assert_eq!(
        answer,
        json!([{"type": "loopback", "supportedVersions": ALL_VERSIONS}]),
        "libcni's view of our loopback's VERSION"
    );
    let validated = lib.validate(&net).assert_success();
    assert_eq!(validated, json!({"capabilities": []}));
}

#[test]
fn add_result_equals_reference_at_every_version_both_speak() {
    require_root();
    for r in Reference::ALL {
        add_result_equals(r);
    }
}

fn add_result_equals(r: Reference) {
    for &version in compared_versions(r) {
        let name = unique_name("lo");
        let (ns_ours, ns_ref) = (Netns::new("lo"), Netns::new("lo"));
        let got = run(&ours(), "ADD", &ns_ours, &conf(version, &name)).assert_success();
        let want = run(&reference(r), "ADD", &ns_ref, &conf(version, &name)).assert_success();
        assert_same_result(
            &normalised(&got, &ns_ours),
            &normalised(&want, &ns_ref),
            version,
            &format!("ADD result ({r})"),
        );
        assert_eq!(
            ns_ours.state(),
            ns_ref.state(),
            "kernel state after ADD at {version} ({r})"
        );

        run(&ours(), "DEL", &ns_ours, &conf(version, &name)).assert_success();
        run(&reference(r), "DEL", &ns_ref, &conf(version, &name)).assert_success();
        assert_eq!(
            ns_ours.state(),
            ns_ref.state(),
            "kernel state after DEL at {version} ({r})"
        );
    }
}

#[test]
fn libcni_add_result_equals_reference_at_every_version_both_speak() {
    require_root();
    for r in Reference::ALL {
        libcni_add_result_equals(r);
    }
}

fn libcni_add_result_equals(r: Reference) {
    // Debian's libcni 1.1.2 speaks up to 1.0.0.
    for &version in compared_versions(r).iter().filter(|v| **v != "1.1.0") {
        let results: Vec<Value> = [bin_dir(), r.dir()]
            .into_iter()
            .map(|dir| {
                let lib = LibCni::scratch(vec![dir]);
                let net = lib.write_conflist(&conflist(version, "lo-compare"));
                let ns = Netns::new("lo");
                let result = lib.add(&net, ns.path()).assert_success();
                if version != "0.3.1" {
                    lib.check(&net, ns.path()).assert_success();
                }
                lib.del(&net, ns.path()).assert_success();
                normalised(&result, &ns)
            })
            .collect();
        assert_same_result(
            &results[0],
            &results[1],
            version,
            &format!("ADD result through libcni ({r})"),
        );
    }
}

#[test]
fn del_succeeds_when_netns_is_gone() {
    require_root();
    let name = unique_name("lo");
    let gone = format!("/run/netns/tw-gone-{}", std::process::id());
    Invocation::new(ours(), "DEL")
        .libcni_style()
        .netns_str(Some(&gone))
        .stdin_json(&conf("1.0.0", &name))
        .run()
        .assert_success();
    // containerd's second DEL (RemovePodSandbox) has an empty CNI_NETNS and no prevResult.
    Invocation::new(ours(), "DEL")
        .libcni_style()
        .stdin_json(&conf("1.0.0", &name))
        .run()
        .assert_success();
    // Through libcni, after the namespace was removed behind its back.
    let lib = LibCni::scratch(vec![bin_dir()]);
    let net = lib.write_conflist(&conflist("1.0.0", &name));
    let ns = Netns::new("lo");
    let path = ns.path().to_path_buf();
    lib.add(&net, &path).assert_success();
    drop(ns);
    lib.del(&net, &path).assert_success();
}

#[test]
fn del_is_idempotent() {
    require_root();
    let ns = Netns::new("lo");
    let config = conf("1.0.0", &unique_name("lo"));
    run(&ours(), "ADD", &ns, &config).assert_success();
    run(&ours(), "DEL", &ns, &config).assert_success();
    run(&ours(), "DEL", &ns, &config).assert_success();
    assert!(!ns.link_is_up("lo"));
}

#[test]
fn status_and_gc_succeed_by_direct_exec() {
    require_root();
    let name = unique_name("lo");
    // libcni 1.1.2 cannot send these verbs (spec 1.1.0), so exec them like a 1.1 runtime would:
    // all six variables present, the attachment ones empty (docs/cni-spec-notes.md §2).
    let status = Invocation::new(ours(), "STATUS")
        .libcni_style()
        .container_id(None)
        .ifname(None)
        .stdin_json(&conf("1.1.0", &name))
        .run();
    status.assert_success();
    assert!(
        status.stdout.trim().is_empty(),
        "STATUS prints nothing on success: {}",
        status.describe()
    );

    let mut gc_conf = conf("1.1.0", &name);
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    gc_conf["cni.dev/attachments"] = gc_conf["cni.dev/valid-attachments"].clone();
    let gc = Invocation::new(ours(), "GC")
        .libcni_style()
        .container_id(None)
        .ifname(None)
        .stdin_json(&gc_conf)
        .run();
    gc.assert_success();
    assert!(
        gc.stdout.trim().is_empty(),
        "GC prints nothing on success: {}",
        gc.describe()
    );
}

#[test]
fn add_passes_prev_result_through() {
    require_root();
    let prev_1_0 = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:00:02", "sandbox": "/run/netns/other"}],
        "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
        "dns": {"nameservers": ["10.96.0.10"]}
    });
    let mut prev_0_4 = prev_1_0.clone();
    prev_0_4["cniVersion"] = json!("0.4.0");
    prev_0_4["ips"][0]["version"] = json!("4");
    for (r, (version, prev)) in Reference::ALL.into_iter().flat_map(|r| {
        [
            (r, ("1.0.0", prev_1_0.clone())),
            (r, ("0.4.0", prev_0_4.clone())),
        ]
    }) {
        let name = unique_name("lo");
        let mut config = conf(version, &name);
        config["prevResult"] = prev.clone();
        let (ns_ours, ns_ref) = (Netns::new("lo"), Netns::new("lo"));
        let got = run(&ours(), "ADD", &ns_ours, &config).assert_success();
        let want = run(&reference(r), "ADD", &ns_ref, &config).assert_success();
        assert_eq!(
            got, want,
            "prevResult pass-through at {version}: ours vs {r}"
        );
        assert_eq!(
            got["ips"], prev["ips"],
            "prevResult ips passed through unchanged at {version}"
        );
        assert_eq!(
            got["interfaces"], prev["interfaces"],
            "interfaces passed through at {version}"
        );
        assert!(
            ns_ours.link_is_up("lo"),
            "lo is brought up even when chained"
        );
    }
}

#[test]
fn check_fails_when_lo_is_down() {
    require_root();
    let ns = Netns::new("lo");
    let name = unique_name("lo");
    let added = run(&ours(), "ADD", &ns, &conf("1.0.0", &name)).assert_success();
    let mut config = conf("1.0.0", &name);
    config["prevResult"] = added;
    run(&ours(), "CHECK", &ns, &config).assert_success();
    ns.ip(&["link", "set", "lo", "down"]);
    run(&ours(), "CHECK", &ns, &config).assert_any_error();
}

#[test]
fn plugin_runs_inside_a_node_namespace() {
    require_root();
    // The harness can run a plugin with a test-created namespace as its host namespace; the pod
    // namespace path still resolves because /run/netns is shared by the mount namespace.
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let config = conf("1.0.0", &unique_name("lo"));
    Invocation::new(ours(), "ADD")
        .libcni_style()
        .netns(Some(pod.path()))
        .in_netns(node.path())
        .stdin_json(&config)
        .run()
        .assert_success();
    assert!(pod.link_is_up("lo"));
    assert!(!node.link_is_up("lo"), "the node's own lo is untouched");
}

#[test]
fn libcni_chain_of_two_loopbacks_passes_the_first_result_through() {
    require_root();
    for r in Reference::ALL {
        chain_of_two_loopbacks_like(r);
    }
}

fn chain_of_two_loopbacks_like(r: Reference) {
    // The second plugin gets the first one's result as prevResult and must return it unchanged.
    let results: Vec<Value> = [bin_dir(), r.dir()]
        .into_iter()
        .map(|dir| {
            let lib = LibCni::scratch(vec![dir]);
            let list = json!({
                "cniVersion": "1.0.0",
                "name": "lo-chain",
                "plugins": [{"type": "loopback"}, {"type": "loopback"}]
            });
            let net = lib.write_conflist(&list);
            let ns = Netns::new("lo");
            let result = lib.add(&net, ns.path()).assert_success();
            lib.check(&net, ns.path()).assert_success();
            lib.del(&net, ns.path()).assert_success();
            assert!(!ns.link_is_up("lo"));
            normalised(&result, &ns)
        })
        .collect();
    assert_eq!(results[0], results[1], "chained result: ours vs {r}");
}

#[test]
fn libcni_driver_names_attachments_like_cnitool() {
    require_root();
    use sha2::{Digest, Sha512};
    // cnitool's container id: "cnitool-" + hex of the first 10 bytes of sha512(netns path); the
    // result cache file is <cache>/results/<net>-<id>-<ifname> (docs/cni-spec-notes.md §9).
    let lib = LibCni::scratch(vec![bin_dir()]);
    let net = lib.write_conflist(&conflist("1.0.0", &unique_name("lo")));
    let ns = Netns::new("lo");
    let digest = Sha512::digest(ns.path_str().as_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    let id = format!("cnitool-{hex}");
    lib.add(&net, ns.path()).assert_success();
    assert!(
        lib.cached_result_path(&net, &id, "eth0").is_file(),
        "expected libcni's cache file for container id {id}"
    );
    lib.del(&net, ns.path()).assert_success();

    let named = lib.with_container_id("explicit-id").with_ifname("lo0");
    named.add(&net, ns.path()).assert_success();
    assert!(named
        .cached_result_path(&net, "explicit-id", "lo0")
        .is_file());
    named.del(&net, ns.path()).assert_success();
    assert!(!named
        .cached_result_path(&net, "explicit-id", "lo0")
        .exists());
}
