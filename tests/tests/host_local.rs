//! host-local IPAM (docs/cni-spec-notes.md §11), driven like a runtime: our `host-local` binary exec'd with
//! `CNI_*` variables and the config on stdin, each test on its own temporary dataDir. Covers the verbs, the
//! config keys and validation, requested addresses, idempotent ADD, round-robin, GC and STATUS by direct exec,
//! and ADD/CHECK/DEL through the real libcni. Concurrency, crash and interop tests live in
//! `host_local_stress.rs` and `host_local_interop.rs`.

mod host_local_common;

use host_local_common::*;
use serde_json::{json, Value};
use std::fs;
use twill_tests::bins::{bin_dir, require_root};
use twill_tests::libcni::LibCni;
use twill_tests::netns::Netns;

#[test]
fn add_returns_one_address_per_range_set_with_gateway_routes_and_dns() {
    let net = TestNet::new(json!({
        "ranges": [[{"subnet": "10.20.0.0/24"}], [{"subnet": "fd20::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.20.0.1"}],
    }));
    let resolv = net.dir.path().join("resolv.conf");
    fs::write(
        &resolv,
        "nameserver 10.20.0.53\nsearch a.example b.example\noptions ndots:2\n",
    )
    .unwrap();
    let mut conf = net.conf.clone();
    conf["ipam"]["resolvConf"] = json!(resolv.display().to_string());
    let r = run_ours("ADD", "c1", "eth0", &conf).assert_success();
    assert_eq!(addresses(&r), ["10.20.0.2/24", "fd20::2/64"], "{r}");
    assert_eq!(r["ips"][0]["gateway"], "10.20.0.1", "{r}");
    assert_eq!(r["ips"][1]["gateway"], "fd20::1", "{r}");
    assert_eq!(r["routes"], conf["ipam"]["routes"], "{r}");
    assert_eq!(r["dns"]["nameservers"], json!(["10.20.0.53"]), "{r}");
    assert_eq!(r["dns"]["search"], json!(["a.example", "b.example"]), "{r}");
    assert_eq!(r["dns"]["options"], json!(["ndots:2"]), "{r}");
    // On disk exactly as the reference writes it.
    let leases = net.leases();
    assert_eq!(
        leases.get("10.20.0.2").map(String::as_str),
        Some("c1\r\neth0")
    );
    assert_eq!(
        leases.get("fd20::2").map(String::as_str),
        Some("c1\r\neth0")
    );
    assert_eq!(
        fs::read_to_string(net.net_dir().join("last_reserved_ip.0")).unwrap(),
        "10.20.0.2"
    );
    assert_eq!(
        fs::read_to_string(net.net_dir().join("last_reserved_ip.1")).unwrap(),
        "fd20::2"
    );
    assert!(net.net_dir().join("lock").is_file());
}

#[test]
fn legacy_single_range_keys_are_prepended_to_ranges() {
    let net = TestNet::new(json!({
        "subnet": "10.21.0.0/24", "rangeStart": "10.21.0.100", "rangeEnd": "10.21.0.101", "gateway": "10.21.0.254",
        "ranges": [[{"subnet": "10.22.0.0/24"}]],
    }));
    let r = run_ours("ADD", "c1", "eth0", &net.conf).assert_success();
    assert_eq!(addresses(&r), ["10.21.0.100/24", "10.22.0.2/24"], "{r}");
    assert_eq!(r["ips"][0]["gateway"], "10.21.0.254", "{r}");
}

#[test]
fn runtime_config_ip_ranges_are_prepended() {
    let net = TestNet::new(json!({"ranges": [[{"subnet": "10.23.0.0/24"}]]}));
    let mut conf = net.conf.clone();
    conf["runtimeConfig"] =
        json!({"ipRanges": [[{"subnet": "10.24.0.0/24", "rangeStart": "10.24.0.50"}]]});
    let r = run_ours("ADD", "c1", "eth0", &conf).assert_success();
    assert_eq!(addresses(&r), ["10.24.0.50/24", "10.23.0.2/24"], "{r}");
}

#[test]
fn results_are_printed_in_the_request_version() {
    for (version, check) in [
        ("0.2.0", "ip4"),
        ("0.3.1", "ips"),
        ("0.4.0", "ips"),
        ("1.0.0", "ips"),
        ("1.1.0", "ips"),
    ] {
        let mut net = TestNet::new(json!({"subnet": "10.25.0.0/24"}));
        net.conf["cniVersion"] = json!(version);
        let r = run_ours("ADD", "c1", "eth0", &net.conf).assert_success();
        assert_eq!(r["cniVersion"], version, "{r}");
        assert!(r.get(check).is_some(), "{version}: {r}");
        if version == "0.2.0" {
            assert_eq!(r["ip4"]["ip"], "10.25.0.2/24", "{r}");
        }
    }
}

#[test]
fn add_is_idempotent_for_an_attachment_that_already_holds_addresses() {
    let net =
        TestNet::new(json!({"ranges": [[{"subnet": "10.26.0.0/24"}], [{"subnet": "fd26::/120"}]]}));
    let first = run_ours("ADD", "c1", "eth0", &net.conf).assert_success();
    let again = run_ours("ADD", "c1", "eth0", &net.conf).assert_success();
    assert_eq!(first, again);
    assert_eq!(net.leases().len(), 2, "no second lease: {:?}", net.leases());
    // Another ifname of the same container is another attachment.
    let eth1 = run_ours("ADD", "c1", "eth1", &net.conf).assert_success();
    assert_ne!(addresses(&eth1), addresses(&first));
}

#[test]
fn allocation_is_round_robin_and_skips_the_gateway() {
    let net = TestNet::new(json!({"subnet": "10.27.0.0/29", "gateway": "10.27.0.3"}));
    let got: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|id| addresses(&run_ours("ADD", id, "eth0", &net.conf).assert_success())[0].clone())
        .collect();
    assert_eq!(got, ["10.27.0.1/29", "10.27.0.2/29", "10.27.0.4/29"]);
    run_ours("DEL", "a", "eth0", &net.conf).assert_success();
    // A restarted pod does not get its old address back at once: the cursor moves on.
    let again = run_ours("ADD", "a", "eth0", &net.conf).assert_success();
    assert_eq!(addresses(&again), ["10.27.0.5/29"]);
    let d = run_ours("ADD", "d", "eth0", &net.conf).assert_success();
    assert_eq!(addresses(&d), ["10.27.0.6/29"]);
    // Wraps around to the address freed by DEL.
    let wrapped = run_ours("ADD", "f", "eth0", &net.conf).assert_success();
    assert_eq!(addresses(&wrapped), ["10.27.0.1/29"]);
    let full = run_ours("ADD", "g", "eth0", &net.conf).assert_any_error();
    assert!(
        full["msg"]
            .as_str()
            .unwrap()
            .contains("no IP addresses available"),
        "{full}"
    );
}

#[test]
fn allocation_skips_a_dense_block_when_the_cursor_is_lost() {
    let net = TestNet::new(json!({"subnet": "10.34.0.0/16"}));
    run_ours("ADD", "first", "eth0", &net.conf).assert_success();
    for i in 3..3000u32 {
        let ip = format!("10.34.{}.{}", i / 256, i % 256);
        fs::write(net.net_dir().join(ip), format!("fill{i}\r\neth0")).unwrap();
    }
    fs::remove_file(net.net_dir().join("last_reserved_ip.0")).unwrap();
    let r = run_ours("ADD", "next", "eth0", &net.conf).assert_success();
    assert_eq!(
        addresses(&r),
        ["10.34.11.184/16"],
        "first free address after the block"
    );
    run_ours("DEL", "fill100", "eth0", &net.conf).assert_success();
    assert!(!net.net_dir().join("10.34.0.100").exists());
}

#[test]
fn requested_ips_from_every_source_are_honoured() {
    let net = TestNet::new(
        json!({"ranges": [[{"subnet": "10.28.0.0/24"}], [{"subnet": "fd28::/64"}], [{"subnet": "10.29.0.0/24"}]]}),
    );
    let mut conf = net.conf.clone();
    conf["runtimeConfig"] = json!({"ips": ["10.28.0.77/24"]});
    conf["args"] = json!({"cni": {"ips": ["fd28::77"]}});
    let r = run_ours_with_args(
        "ADD",
        "c1",
        "eth0",
        &conf,
        "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.29.0.77",
    )
    .assert_success();
    assert_eq!(
        addresses(&r),
        ["10.28.0.77/24", "fd28::77/64", "10.29.0.77/24"],
        "{r}"
    );
    assert_eq!(
        fs::read_to_string(net.net_dir().join("last_reserved_ip.0")).unwrap(),
        "10.28.0.77"
    );
}

#[test]
fn requested_ip_held_by_another_attachment_is_an_error_naming_it() {
    let net = TestNet::new(json!({"subnet": "10.30.0.0/24"}));
    run_ours_with_args("ADD", "c1", "eth0", &net.conf, "IP=10.30.0.9").assert_success();
    let e = run_ours_with_args("ADD", "c2", "eth0", &net.conf, "IP=10.30.0.9").assert_any_error();
    let msg = e["msg"].as_str().unwrap();
    assert!(msg.contains("10.30.0.9") && msg.contains("c1/eth0"), "{e}");
    assert_eq!(net.leases().len(), 1, "{:?}", net.leases());
    // The holder asking again gets it (idempotent).
    run_ours_with_args("ADD", "c1", "eth0", &net.conf, "IP=10.30.0.9").assert_success();
}

#[test]
fn requested_ip_outside_every_range_or_on_the_gateway_is_an_error_naming_it() {
    let net =
        TestNet::new(json!({"ranges": [[{"subnet": "10.31.0.0/24"}], [{"subnet": "fd31::/64"}]]}));
    for (ip, what) in [("10.99.0.1", "not in any range"), ("10.31.0.1", "gateway")] {
        let e =
            run_ours_with_args("ADD", "c1", "eth0", &net.conf, &format!("IP={ip}")).assert_error(7);
        let msg = e["msg"].as_str().unwrap();
        assert!(msg.contains(ip) && msg.contains(what), "{e}");
    }
    assert!(
        net.leases().is_empty(),
        "a failed ADD leaves nothing: {:?}",
        net.leases()
    );
}

#[test]
fn failed_add_releases_what_it_reserved() {
    // The second set is full; the first set's fresh lease must be rolled back.
    let net = TestNet::new(
        json!({"ranges": [[{"subnet": "10.32.0.0/24"}], [{"subnet": "10.33.0.0/30"}]]}),
    );
    run_ours("ADD", "c1", "eth0", &net.conf).assert_success();
    let before = net.leases();
    let e = run_ours("ADD", "c2", "eth0", &net.conf).assert_any_error();
    assert!(e["msg"].as_str().unwrap().contains("range set 1"), "{e}");
    assert_eq!(net.leases(), before);
}

#[test]
fn invalid_configs_fail_with_code_7_naming_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"subnet": "10.40.0.1/24"}), "ipam.subnet"),
        (json!({"subnet": "10.40.0.0/32"}), "too small"),
        (
            json!({"ranges": [[{"subnet": "10.40.0.0/24", "rangeStart": "10.41.0.1"}]]}),
            "ipam.ranges[0][0].rangeStart",
        ),
        (
            json!({"ranges": [[{"subnet": "10.40.0.0/24", "rangeStart": "10.40.0.9", "rangeEnd": "10.40.0.3"}]]}),
            "after",
        ),
        (
            json!({"ranges": [[{"subnet": "10.40.0.0/24"}, {"subnet": "10.40.0.128/25"}]]}),
            "overlaps",
        ),
        (
            json!({"ranges": [[{"subnet": "10.40.0.0/24"}], [{"subnet": "10.40.0.0/16"}]]}),
            "ipam.ranges[1]",
        ),
        (
            json!({"ranges": [[{"subnet": "10.40.0.0/24"}, {"subnet": "fd40::/64"}]]}),
            "mixed",
        ),
        (
            json!({"ranges": [[{"subnet": "banana"}]]}),
            "ipam.ranges[0][0].subnet",
        ),
        (
            json!({"ranges": [[{"subnet": "10.40.0.0/24", "gateway": "10.40.0"}]]}),
            "gateway",
        ),
        (json!({}), "no IP ranges"),
    ];
    for (ipam, field) in cases {
        let net = TestNet::new(ipam.clone());
        let e = run_ours("ADD", "c1", "eth0", &net.conf).assert_error(7);
        assert!(
            e["msg"].as_str().unwrap().contains(field),
            "{ipam}: {e} should name {field}"
        );
        assert!(
            !net.net_dir().exists(),
            "{ipam}: nothing created on bad config"
        );
    }
}

#[test]
fn network_name_cannot_escape_the_data_dir() {
    let mut net = TestNet::new(json!({"subnet": "10.41.0.0/24"}));
    for name in ["../escape", "a/b", ".twill", ".."] {
        net.conf["name"] = json!(name);
        run_ours("ADD", "c1", "eth0", &net.conf).assert_error(7);
    }
    assert!(!net.dir.path().parent().unwrap().join("escape").exists());
}

#[test]
fn del_releases_everything_and_is_idempotent() {
    let net =
        TestNet::new(json!({"ranges": [[{"subnet": "10.42.0.0/24"}], [{"subnet": "fd42::/64"}]]}));
    // DEL before anything exists: success, and no directory is created.
    run_ours("DEL", "c1", "eth0", &net.conf).assert_success();
    assert!(!net.net_dir().exists());
    run_ours("ADD", "c1", "eth0", &net.conf).assert_success();
    run_ours("ADD", "c2", "eth0", &net.conf).assert_success();
    run_ours("DEL", "c1", "eth0", &net.conf).assert_success();
    run_ours("DEL", "c1", "eth0", &net.conf).assert_success();
    let owners: Vec<String> = net.leases().into_values().collect();
    assert_eq!(owners, ["c2\r\neth0", "c2\r\neth0"]);
}

#[test]
fn del_succeeds_when_netns_is_gone() {
    let net = TestNet::new(json!({"subnet": "10.43.0.0/24"}));
    run_ours("ADD", "c1", "eth0", &net.conf).assert_success();
    twill_tests::exec::Invocation::new(ours(), "DEL")
        .container_id(Some("c1"))
        .netns_str(None)
        .stdin_json(&net.conf)
        .run()
        .assert_success();
    assert!(net.leases().is_empty());
}

#[test]
fn legacy_id_only_leases_are_found_and_released() {
    let net = TestNet::new(json!({"subnet": "10.44.0.0/24"}));
    run_ours("ADD", "other", "eth0", &net.conf).assert_success();
    fs::write(net.net_dir().join("10.44.0.99"), "old-container").unwrap();
    // CHECK without prevResult sees it, ADD does not hand the address out, DEL releases it.
    let mut check = net.conf.clone();
    check["cniVersion"] = json!("1.0.0");
    run_ours("CHECK", "old-container", "eth0", &check).assert_success();
    run_ours("DEL", "old-container", "eth0", &net.conf).assert_success();
    assert!(!net.net_dir().join("10.44.0.99").exists());
    assert_eq!(net.leases().len(), 1);
}

#[test]
fn check_fails_clearly_when_the_attachment_holds_none_of_prev_result() {
    let net = TestNet::new(json!({"subnet": "10.45.0.0/24"}));
    let r = run_ours("ADD", "c1", "eth0", &net.conf).assert_success();
    let mut check = net.conf.clone();
    check["prevResult"] = r.clone();
    run_ours("CHECK", "c1", "eth0", &check).assert_success();
    let e = run_ours("CHECK", "c2", "eth0", &check).assert_any_error();
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("holds none of the addresses in prevResult"),
        "{e}"
    );
    fs::remove_file(net.net_dir().join("10.45.0.2")).unwrap();
    let e = run_ours("CHECK", "c1", "eth0", &check).assert_any_error();
    assert!(e["msg"].as_str().unwrap().contains("10.45.0.2"), "{e}");
}

#[test]
fn gc_releases_leases_of_attachments_not_in_the_valid_list() {
    let net =
        TestNet::new(json!({"ranges": [[{"subnet": "10.46.0.0/24"}], [{"subnet": "fd46::/64"}]]}));
    for (id, ifname) in [("a", "eth0"), ("a", "eth1"), ("b", "eth0"), ("c", "eth0")] {
        run_ours("ADD", id, ifname, &net.conf).assert_success();
    }
    gc(
        &net,
        Some(
            json!([{"containerID": "a", "ifname": "eth1"}, {"containerID": "c", "ifname": "eth0"}]),
        ),
    )
    .assert_success();
    let mut owners: Vec<String> = net.leases().into_values().collect();
    owners.sort();
    assert_eq!(owners, ["a\r\neth1", "a\r\neth1", "c\r\neth0", "c\r\neth0"]);
    // The index follows: DEL of a kept attachment still releases, a new ADD still works.
    run_ours("DEL", "c", "eth0", &net.conf).assert_success();
    run_ours("ADD", "d", "eth0", &net.conf).assert_success();
    assert_eq!(net.leases().len(), 4);
}

#[test]
fn gc_with_an_empty_list_releases_everything_but_lock_and_cursors() {
    let net = TestNet::new(json!({"subnet": "10.47.0.0/24"}));
    for id in ["a", "b"] {
        run_ours("ADD", id, "eth0", &net.conf).assert_success();
    }
    fs::write(net.net_dir().join("not-a-lease"), "a\r\neth0").unwrap();
    gc(&net, Some(json!([]))).assert_success();
    assert!(net.leases().is_empty());
    assert_eq!(net.names(), ["last_reserved_ip.0", "lock", "not-a-lease"]);
}

#[test]
fn gc_without_an_attachment_list_releases_nothing() {
    let net = TestNet::new(json!({"subnet": "10.48.0.0/24"}));
    run_ours("ADD", "a", "eth0", &net.conf).assert_success();
    gc(&net, None).assert_success();
    assert_eq!(net.leases().len(), 1);
}

#[test]
fn gc_reads_the_older_attachments_key_and_legacy_leases() {
    let net = TestNet::new(json!({"subnet": "10.49.0.0/24"}));
    run_ours("ADD", "a", "eth0", &net.conf).assert_success();
    run_ours("ADD", "b", "eth0", &net.conf).assert_success();
    fs::write(net.net_dir().join("10.49.0.100"), "a").unwrap();
    fs::write(net.net_dir().join("10.49.0.101"), "gone").unwrap();
    let mut conf = net.conf.clone();
    conf["cni.dev/attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    run_plain("GC", &conf).assert_success();
    let mut names: Vec<String> = net.leases().into_keys().collect();
    names.sort();
    assert_eq!(names, ["10.49.0.100", "10.49.0.2"]);
}

#[test]
fn gc_reclaims_empty_and_unreadable_lease_files() {
    let net = TestNet::new(json!({"subnet": "10.50.0.0/24"}));
    run_ours("ADD", "a", "eth0", &net.conf).assert_success();
    fs::write(net.net_dir().join("10.50.0.200"), "").unwrap();
    fs::write(net.net_dir().join("10.50.0.201"), b"\xff\xfe\r\n").unwrap();
    fs::write(net.net_dir().join("10.50.0.202"), "a b c").unwrap();
    gc(&net, Some(json!([{"containerID": "a", "ifname": "eth0"}]))).assert_success();
    let names: Vec<String> = net.leases().into_keys().collect();
    assert_eq!(names, ["10.50.0.2"]);
    assert_eq!(
        fs::read_to_string(net.net_dir().join("last_reserved_ip.0")).unwrap(),
        "10.50.0.2"
    );
}

#[test]
fn gc_of_a_network_never_used_creates_nothing() {
    let net = TestNet::new(json!({"subnet": "10.51.0.0/24"}));
    gc(&net, Some(json!([]))).assert_success();
    assert!(!net.net_dir().exists());
}

#[test]
fn status_succeeds_while_addresses_are_free_and_reports_50_when_a_set_is_exhausted() {
    let net = TestNet::new(
        json!({"ranges": [[{"subnet": "10.52.0.0/24"}], [{"subnet": "10.53.0.0/30"}]]}),
    );
    run_plain("STATUS", &net.conf).assert_success();
    run_ours("ADD", "a", "eth0", &net.conf).assert_success();
    let e = run_plain("STATUS", &net.conf).assert_error(50);
    assert!(e["msg"].as_str().unwrap().contains("range set 1"), "{e}");
    run_ours("DEL", "a", "eth0", &net.conf).assert_success();
    run_plain("STATUS", &net.conf).assert_success();
}

#[test]
fn status_reports_50_when_the_data_dir_is_not_writable() {
    let mut net = TestNet::new(json!({"subnet": "10.54.0.0/24"}));
    let file = net.dir.path().join("a-file");
    fs::write(&file, "").unwrap();
    net.conf["ipam"]["dataDir"] = json!(file.join("below").display().to_string());
    let e = run_plain("STATUS", &net.conf).assert_error(50);
    assert!(e["msg"].as_str().unwrap().contains("not writable"), "{e}");
}

#[test]
fn status_and_gc_need_spec_1_1() {
    let mut net = TestNet::new(json!({"subnet": "10.55.0.0/24"}));
    net.conf["cniVersion"] = json!("1.0.0");
    run_plain("STATUS", &net.conf).assert_error(1);
    run_plain("GC", &net.conf).assert_error(1);
}

#[test]
fn libcni_add_check_del_through_a_conflist() {
    require_root();
    let net =
        TestNet::new(json!({"ranges": [[{"subnet": "10.56.0.0/24"}], [{"subnet": "fd56::/64"}]]}));
    let lib = LibCni::scratch(vec![bin_dir()]).with_container_id("libcni-c1");
    let name = net.conf["name"].as_str().unwrap().to_string();
    lib.write_conflist(&json!({
        "cniVersion": "1.0.0", "name": name,
        "plugins": [{"type": "host-local", "ipam": net.conf["ipam"].clone()}],
    }));
    let ns = Netns::new("hl");
    let r = lib.add(&name, ns.path()).assert_success();
    assert_eq!(addresses(&r), ["10.56.0.2/24", "fd56::2/64"], "{r}");
    assert_eq!(
        net.leases().get("10.56.0.2").map(String::as_str),
        Some("libcni-c1\r\neth0")
    );
    lib.check(&name, ns.path()).assert_success();
    // CHECK with libcni's cached prevResult fails clearly once the leases are gone.
    fs::remove_file(net.net_dir().join("10.56.0.2")).unwrap();
    fs::remove_file(net.net_dir().join("fd56::2")).unwrap();
    let e = lib.check(&name, ns.path());
    assert!(!e.success(), "{}", e.describe());
    assert!(
        e.stdout.contains("holds none of the addresses")
            || e.stderr.contains("holds none of the addresses"),
        "{}",
        e.describe()
    );
    run_ours("ADD", "libcni-c1", "eth0", &net.conf).assert_success();
    lib.del(&name, ns.path()).assert_success();
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    lib.del(&name, ns.path()).assert_success();
}

/// A tmpfs mounted for the test and lazily unmounted on drop, even when the test fails.
struct TmpfsMount(std::path::PathBuf);

impl TmpfsMount {
    fn new(at: &std::path::Path, options: &str) -> TmpfsMount {
        require_root();
        fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                options,
                "twill-test",
                &at.display().to_string(),
            ])
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs at {}: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        TmpfsMount(at.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn network_directory_on_its_own_mount_still_gets_atomic_leases() {
    // The temporary lease file normally lives in <dataDir>/.twill; link(2) cannot cross mounts (EXDEV), so
    // the plugin must fall back to a temporary file beside the leases.
    let net = TestNet::new(json!({"subnet": "10.57.0.0/24"}));
    let _mount = TmpfsMount::new(&net.net_dir(), "mode=0755");
    let r = run_ours("ADD", "c1", "eth0", &net.conf).assert_success();
    assert_eq!(addresses(&r), ["10.57.0.2/24"]);
    run_ref("ADD", "r1", "eth0", &net.conf).assert_success();
    let r2 = run_ours("ADD", "c2", "eth0", &net.conf).assert_success();
    assert_eq!(addresses(&r2), ["10.57.0.4/24"]);
    assert_eq!(
        net.leases().get("10.57.0.2").map(String::as_str),
        Some("c1\r\neth0")
    );
    assert_eq!(
        net.names(),
        [
            "10.57.0.2",
            "10.57.0.3",
            "10.57.0.4",
            "last_reserved_ip.0",
            "lock"
        ]
    );
    for id in ["c1", "c2", "r1"] {
        run_ours("DEL", id, "eth0", &net.conf).assert_success();
    }
    assert_eq!(net.names(), ["last_reserved_ip.0", "lock"]);
}

#[test]
fn status_reports_50_on_a_read_only_data_dir() {
    let net = TestNet::new(json!({"subnet": "10.58.0.0/24"}));
    let data = net.dir.path().join("data");
    let _mount = TmpfsMount::new(&data, "ro");
    let e = run_plain("STATUS", &net.conf).assert_error(50);
    assert!(e["msg"].as_str().unwrap().contains("not writable"), "{e}");
}
