//! Differential test of the tuning plugin against the reference builds (Debian's 1.1.1 and upstream
//! v1.10.0): the same ADD on twin pods (a veth `eth0` each) must give the same result JSON, the same link
//! attributes and sysctls in the pod, the same saved copy of the original attributes on disk (the
//! reference's format; ours adds only the `network` key), the same CHECK outcome, and a DEL that puts the
//! link back as it was and removes the saved copy. Each side's saved copy is restored by the other side's
//! DEL, so an upgrade or downgrade between the two in the middle of a pod's life works.
//!
//! Ours only: rollback of a failed ADD, DEL without the netns, GC of stale saved copies.

#[path = "bridge_support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use support::{links, merge, sysctl};
use twill_tests::bins::{self, Reference};
use twill_tests::exec::{Invocation, Outcome};
use twill_tests::netns::Netns;

const CID: &str = "tuning-diff";
const IFNAME: &str = "eth0";
const NET: &str = "tunenet";

fn ours() -> PathBuf {
    bins::bin("tuning")
}

/// A pod with a veth `eth0` (its peer in the pod too: tuning only looks at `eth0`).
fn new_pod() -> Netns {
    let pod = Netns::new("tunp");
    pod.exec_ok(&[
        "ip", "link", "add", IFNAME, "type", "veth", "peer", "name", "peer0",
    ]);
    pod
}

fn conf(data_dir: &Path, extra: &Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "tuning",
        "dataDir": data_dir,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "veth0000", "mac": "aa:aa:aa:aa:aa:aa"},
                           {"name": IFNAME, "mac": "aa:aa:aa:aa:aa:ab", "sandbox": "/run/netns/pod"}],
            "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 1}]
        }
    });
    merge(&mut c, extra.clone());
    c
}

fn run(
    plugin: &Path,
    cmd: &str,
    pod: Option<&Path>,
    conf: &Value,
    cni_args: Option<&str>,
) -> Outcome {
    let out = Invocation::new(plugin, cmd)
        .libcni_style()
        .container_id(Some(CID))
        .ifname(Some(IFNAME))
        .netns(pod)
        .cni_args(cni_args)
        .stdin_json(conf)
        .run();
    out.assert_no_panic();
    out
}

/// The link attributes tuning changes, and the sysctls of the config.
fn link_state(pod: &Netns, sysctls: &[&str]) -> Value {
    let l = links(pod, &["dev", IFNAME])
        .into_iter()
        .next()
        .unwrap_or(Value::Null);
    let values: Vec<String> = sysctls
        .iter()
        .map(|k| sysctl(pod, &k.replace('.', "/").replace("IFNAME", IFNAME)))
        .collect();
    json!({
        "mtu": l["mtu"],
        "mac": l["address"],
        "flags": l["flags"],
        "promiscuity": l["promiscuity"],
        "allmulti": l["allmulti"],
        "txqlen": l["txqlen"],
        "sysctls": values,
    })
}

fn saved(dir: &Path) -> Value {
    let path = dir.join(format!("{CID}_{IFNAME}.json"));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut v: Value = serde_json::from_str(&text).expect("saved copy is JSON");
            v.as_object_mut().map(|o| o.remove("network"));
            // The original MAC is random per pod: only whether it was saved matters.
            if v.get("mac").is_some() {
                v["mac"] = json!("<mac>");
            }
            v
        }
        Err(_) => Value::Null,
    }
}

#[derive(Debug)]
struct Side {
    add: Outcome,
    result: Value,
    during: Value,
    saved: Value,
    check_ok: Option<bool>,
    check_out: String,
    del: Outcome,
    restored: bool,
    saved_after: Value,
}

fn run_side(plugin: &Path, extra: &Value, cni_args: Option<&str>, sysctls: &[&str]) -> Side {
    let pod = new_pod();
    let dir = tempfile::tempdir().expect("data dir");
    let c = conf(dir.path(), extra);
    let before = link_state(&pod, &[]);
    let add = run(plugin, "ADD", Some(pod.path()), &c, cni_args);
    let mut during = link_state(&pod, sysctls);
    // A configured MAC is the same on both sides; an untouched one is random.
    if extra.get("mac").is_none()
        && extra.pointer("/runtimeConfig/mac").is_none()
        && extra.pointer("/args/cni/mac").is_none()
        && cni_args.is_none()
    {
        during["mac"] = json!("<mac>");
    }
    let saved_v = saved(dir.path());
    let version = c["cniVersion"].as_str().unwrap_or("1.0.0");
    let (check_ok, check_out) = if add.success() && !version.starts_with("0.3") {
        let check = run(plugin, "CHECK", Some(pod.path()), &c, cni_args);
        (Some(check.success()), check.describe())
    } else {
        (None, String::new())
    };
    let del = run(plugin, "DEL", Some(pod.path()), &c, cni_args);
    let restored = link_state(&pod, &[]) == before;
    Side {
        result: support::normalize_result(&add.json.clone().unwrap_or(Value::Null)),
        add,
        during,
        saved: saved_v,
        check_ok,
        check_out,
        del,
        restored,
        saved_after: saved(dir.path()),
    }
}

/// Compare with `refs`: keys the reference 1.1.1 does not know yet (`txQLen`, `IFNAME` in sysctl keys)
/// are compared with v1.10.0 only.
fn differential_with(refs: &[Reference], extra: Value, cni_args: Option<&str>, sysctls: &[&str]) {
    bins::require_root();
    let ours = run_side(&ours(), &extra, cni_args, sysctls);
    for &r in refs {
        let theirs = run_side(&r.bin("tuning"), &extra, cni_args, sysctls);
        assert_eq!(
            ours.add.success(),
            theirs.add.success(),
            "ADD outcome differs from {r}\n=== ours ===\n{}\n=== {r} ===\n{}",
            ours.add.describe(),
            theirs.add.describe()
        );
        assert!(
            ours.add.success(),
            "ADD failed on both sides: {}",
            ours.add.describe()
        );
        assert_eq!(ours.result, theirs.result, "result differs from {r}");
        assert_eq!(
            ours.during, theirs.during,
            "pod state after ADD differs from {r}"
        );
        assert_eq!(ours.saved, theirs.saved, "saved copy differs from {r}");
        assert_eq!(
            ours.check_ok, theirs.check_ok,
            "CHECK differs from {r}\n=== ours ===\n{}\n=== {r} ===\n{}",
            ours.check_out, theirs.check_out
        );
        for (who, s) in [("ours", &ours), ("reference", &theirs)] {
            assert!(s.del.success(), "{who}: DEL failed: {}", s.del.describe());
            assert!(s.restored, "{who}: DEL did not restore the link: {s:?}");
            assert_eq!(
                s.saved_after,
                Value::Null,
                "{who}: saved copy left after DEL"
            );
        }
        if let Some(ok) = ours.check_ok {
            assert!(ok, "CHECK after ADD failed: {}", ours.check_out);
        }
    }
}

fn differential(extra: Value) {
    differential_with(&Reference::ALL, extra, None, &[])
}

/// For keys only v1.10.0 knows.
fn differential_current(extra: Value, sysctls: &[&str]) {
    differential_with(&[Reference::Current], extra, None, sysctls)
}

#[test]
fn same_as_reference_sysctls() {
    differential_with(
        &Reference::ALL,
        json!({"sysctl": {"net.core.somaxconn": "500", "net.ipv4.conf.all.arp_ignore": "2"}}),
        None,
        &["net.core.somaxconn", "net.ipv4.conf.all.arp_ignore"],
    );
}

#[test]
fn same_as_reference_sysctls_with_ifname() {
    differential_current(
        json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1", "net.core.somaxconn": "500",
                          "net/ipv4/conf/IFNAME/arp_ignore": "2"}}),
        &[
            "net.ipv4.conf.IFNAME.arp_notify",
            "net.core.somaxconn",
            "net.ipv4.conf.IFNAME.arp_ignore",
        ],
    );
}

#[test]
fn same_as_reference_mtu_and_txqlen() {
    differential(json!({"mtu": 1300}));
    differential_current(json!({"mtu": 1300, "txQLen": 42}), &[]);
}

#[test]
fn same_as_reference_mac() {
    differential(json!({"mac": "c2:11:22:33:44:55"}));
}

#[test]
fn same_as_reference_runtime_config_mac() {
    differential(
        json!({"mac": "c2:11:22:33:44:55", "runtimeConfig": {"mac": "c2:11:22:33:44:66"}}),
    );
}

#[test]
fn same_as_reference_cni_args_mac() {
    differential_with(
        &Reference::ALL,
        json!({}),
        Some("IgnoreUnknown=1;MAC=c2:11:22:33:44:77"),
        &[],
    );
}

#[test]
fn same_as_reference_promisc_and_allmulti() {
    differential(json!({"promisc": true, "allmulti": true}));
}

#[test]
fn same_as_reference_allmulti_off() {
    differential(json!({"allmulti": false}));
}

#[test]
fn same_as_reference_args_override_config() {
    // A `sysctl` object in the config too: without one, the reference panics merging args.cni.sysctl
    // (a nil map; ours merges into an empty list, see args_sysctl_without_config_sysctl).
    differential_current(
        json!({"mtu": 1400, "sysctl": {"net.core.somaxconn": "400"},
               "args": {"cni": {"mtu": 1280, "promisc": true, "mac": "c2:11:22:33:44:88",
               "sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1", "net.core.somaxconn": "450"}}}}),
        &["net.ipv4.conf.IFNAME.arp_notify", "net.core.somaxconn"],
    );
}

#[test]
fn args_sysctl_without_config_sysctl() {
    bins::require_root();
    let pod = new_pod();
    let dir = tempfile::tempdir().unwrap();
    let c = conf(
        dir.path(),
        &json!({"args": {"cni": {"sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1"}}}}),
    );
    run(&ours(), "ADD", Some(pod.path()), &c, None).assert_success();
    assert_eq!(sysctl(&pod, "net/ipv4/conf/eth0/arp_notify"), "1");
}

#[test]
fn same_as_reference_everything_0_3_1() {
    differential_current(
        json!({"cniVersion": "0.3.1", "prevResult": {"cniVersion": "0.3.1"}, "mtu": 1350, "promisc": true, "allmulti": true, "txQLen": 9,
               "mac": "c2:11:22:33:44:99", "sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1"}}),
        &["net.ipv4.conf.IFNAME.arp_notify"],
    );
}

/// Bad configs both sides refuse; ours leaves the pod and the data dir untouched.
#[test]
fn bad_configs_are_refused_like_the_reference() {
    bins::require_root();
    for (extra, what) in [
        (
            json!({"sysctl": {"kernel.hostname": "x"}}),
            "a sysctl outside net",
        ),
        (json!({"sysctl": {"net": "1"}}), "the net directory itself"),
        (json!({"mtu": "big"}), "a non-numeric mtu"),
        (json!({"mac": "not-a-mac"}), "a bad MAC"),
        (json!({"prevResult": null}), "no prevResult"),
    ] {
        for plugin in std::iter::once(ours()).chain(Reference::ALL.iter().map(|r| r.bin("tuning")))
        {
            let pod = new_pod();
            let dir = tempfile::tempdir().unwrap();
            let before = link_state(&pod, &[]);
            let out = run(
                &plugin,
                "ADD",
                Some(pod.path()),
                &conf(dir.path(), &extra),
                None,
            );
            assert!(!out.success(), "{}: {what} accepted", plugin.display());
            if plugin == ours() {
                out.assert_any_error();
                assert_eq!(link_state(&pod, &[]), before, "{what}: pod changed");
                assert_eq!(saved(dir.path()), Value::Null, "{what}: saved copy left");
            }
        }
    }
    // A duplicated key is refused too (raw text: JSON objects cannot hold it).
    let pod = new_pod();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{{"cniVersion":"1.0.0","name":"{NET}","type":"tuning","dataDir":{:?},
            "sysctl":{{"net.core.somaxconn":"500","net.core.somaxconn":"600"}},
            "prevResult":{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0"}}]}}}}"#,
        dir.path()
    );
    let before = sysctl(&pod, "net/core/somaxconn");
    let out = Invocation::new(ours(), "ADD")
        .libcni_style()
        .container_id(Some(CID))
        .ifname(Some(IFNAME))
        .netns(Some(pod.path()))
        .stdin_bytes(text)
        .run();
    let err = out.assert_any_error();
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("duplicated"),
        "{err}"
    );
    assert_eq!(sysctl(&pod, "net/core/somaxconn"), before);
}

#[test]
fn each_side_restores_the_others_saved_copy() {
    bins::require_root();
    for r in Reference::ALL {
        // The reference 1.1.1 does not know txQLen.
        let extra = match r {
            Reference::Debian => json!({"mtu": 1300, "promisc": true, "mac": "c2:11:22:33:44:55"}),
            Reference::Current => {
                json!({"mtu": 1300, "promisc": true, "txQLen": 7, "mac": "c2:11:22:33:44:55"})
            }
        };
        for (adder, deleter) in [(ours(), r.bin("tuning")), (r.bin("tuning"), ours())] {
            let pod = new_pod();
            let dir = tempfile::tempdir().unwrap();
            let c = conf(dir.path(), &extra);
            let before = link_state(&pod, &[]);
            run(&adder, "ADD", Some(pod.path()), &c, None).assert_success();
            run(&deleter, "DEL", Some(pod.path()), &c, None);
            assert_eq!(
                link_state(&pod, &[]),
                before,
                "ADD by {} then DEL by {} did not restore",
                adder.display(),
                deleter.display()
            );
            assert_eq!(saved(dir.path()), Value::Null, "saved copy left");
        }
    }
}

#[test]
fn failed_add_rolls_back_sysctls_and_link() {
    bins::require_root();
    let pod = new_pod();
    let dir = tempfile::tempdir().unwrap();
    let sysctls = ["net.ipv4.conf.IFNAME.arp_notify"];
    let before = link_state(&pod, &sysctls);
    // An MTU above the veth's maximum fails after the sysctl and the MAC are set.
    let c = conf(
        dir.path(),
        &json!({"sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1"}, "mac": "c2:11:22:33:44:55",
                "mtu": 70000}),
    );
    run(&ours(), "ADD", Some(pod.path()), &c, None).assert_any_error();
    assert_eq!(
        link_state(&pod, &sysctls),
        before,
        "ADD left changes behind"
    );
    assert_eq!(saved(dir.path()), Value::Null, "saved copy left");
}

#[test]
fn del_succeeds_when_netns_is_gone_and_gc_removes_stale_copies() {
    bins::require_root();
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), &json!({"cniVersion": "1.1.0", "mtu": 1300}));
    let pod = new_pod();
    run(&ours(), "ADD", Some(pod.path()), &c, None).assert_success();
    drop(pod);
    run(
        &ours(),
        "DEL",
        Some(Path::new("/run/netns/tuning-gone")),
        &c,
        None,
    )
    .assert_success();
    assert_eq!(saved(dir.path()), Value::Null, "saved copy left by DEL");
    run(&ours(), "DEL", None, &c, None).assert_success();

    // GC: the copies of attachments the runtime no longer lists go, those it lists stay.
    let pods: Vec<Netns> = (0..2).map(|_| new_pod()).collect();
    for (i, p) in pods.iter().enumerate() {
        let out = Invocation::new(ours(), "ADD")
            .libcni_style()
            .container_id(Some(&format!("gc{i}")))
            .ifname(Some(IFNAME))
            .netns(Some(p.path()))
            .stdin_json(&c)
            .run();
        out.assert_success();
    }
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": IFNAME}]);
    Invocation::new(ours(), "GC")
        .libcni_style()
        .stdin_json(&gc)
        .run()
        .assert_success();
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec![format!("gc0_{IFNAME}.json")]);
    Invocation::new(ours(), "STATUS")
        .libcni_style()
        .stdin_json(&gc)
        .run()
        .assert_success();
}

#[test]
fn check_fails_like_the_reference_when_the_link_drifted() {
    bins::require_root();
    let extra = json!({"mtu": 1300, "promisc": true});
    for plugin in std::iter::once(ours()).chain(Reference::ALL.iter().map(|r| r.bin("tuning"))) {
        for drift in [
            ["ip", "link", "set", IFNAME, "mtu", "1500"],
            ["ip", "link", "set", IFNAME, "promisc", "off"],
        ] {
            let pod = new_pod();
            let dir = tempfile::tempdir().unwrap();
            let c = conf(dir.path(), &extra);
            run(&plugin, "ADD", Some(pod.path()), &c, None).assert_success();
            pod.exec_ok(&drift);
            let check = run(&plugin, "CHECK", Some(pod.path()), &c, None);
            assert!(
                !check.success(),
                "{} passed CHECK after {drift:?}",
                plugin.display()
            );
            run(&plugin, "DEL", Some(pod.path()), &c, None);
        }
    }
}
