//! The bridge plugin end to end: through the real libcni driver with host-local and loopback and
//! real pings, transactional ADD (every failure leaves no veth, lease or rule), DEL that succeeds and cleans
//! up when the netns is gone (no masquerade leak, both backends), 40 parallel ADDs and DELs on one bridge,
//! CHECK, STATUS and GC. Every test runs the plugin inside its own node namespace.

#[path = "bridge_support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use support::*;
use twill_tests::bins;
use twill_tests::libcni::LibCni;
use twill_tests::netns::Netns;

fn cni_path_dirs() -> Vec<PathBuf> {
    cni_path().split(':').map(PathBuf::from).collect()
}

/// No trace of an attachment: no veth in the node, no lease, nothing but `lo` in the pod, no masquerade rule
/// for `ips`.
fn assert_no_trace(node: &Node, network: &str, pod: Option<&Netns>, ips: &[String]) {
    let veths: Vec<String> = node
        .veths()
        .into_iter()
        .filter(|v| v.starts_with("veth"))
        .collect();
    assert!(veths.is_empty(), "veth left in the node: {veths:?}");
    assert!(
        node.leases(network).is_empty(),
        "lease left: {:?}",
        node.leases(network)
    );
    if let Some(pod) = pod {
        let names: Vec<String> = links(pod, &[])
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect();
        assert_eq!(names, vec!["lo".to_string()], "pod interfaces left");
    }
    let masq: Vec<String> = node
        .masquerade_lines()
        .into_iter()
        .filter(|l| ips.iter().any(|ip| l.contains(ip.as_str())))
        .collect();
    assert!(masq.is_empty(), "masquerade rules left: {masq:?}");
}

/// A pod `container_id` (its `eth0`) ADDed by our plugin on `node` with network `name`'s config (`extra`
/// merged in): the pod's namespace (removed on drop), the config and the ADD result.
fn pod_added(node: &Node, name: &str, extra: Value, container_id: &str) -> (Netns, Value, Value) {
    let pod = Netns::new("brp");
    let conf = node.conf(name, extra);
    let result = node
        .run(
            &ours(),
            "ADD",
            Some(pod.path()),
            container_id,
            "eth0",
            &conf,
        )
        .assert_success();
    (pod, conf, result)
}

#[test]
fn libcni_add_check_del_with_pings_between_host_and_pods() {
    let node = Node::new();
    let lib = LibCni::scratch(cni_path_dirs()).in_netns(node.ns.path());
    let net = lib.write_conflist(&json!({
        "cniVersion": "1.0.0",
        "name": "brlibcni",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isDefaultGateway": true,
                "ipam": node.ipam(json!([[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]])),
            },
            {"type": "loopback"}
        ]
    }));
    let pods = [Netns::new("brp"), Netns::new("brp")];
    let mut results = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let l = lib.with_container_id(&format!("libcni-pod-{i}"));
        let out = l.add(&net, pod.path());
        results.push(out.assert_success());
    }
    for (i, pod) in pods.iter().enumerate() {
        let l = lib.with_container_id(&format!("libcni-pod-{i}"));
        l.check(&net, pod.path()).assert_success();
        assert!(pod.link_is_up("lo"), "loopback plugin ran after bridge");
    }
    let a4 = result_ip(&results[0], false);
    let b4 = result_ip(&results[1], false);
    let b6 = result_ip(&results[1], true);
    assert_ne!(a4, b4);
    assert!(ping(&node.ns, &a4), "host cannot ping pod {a4}");
    assert!(ping(&node.ns, &b4), "host cannot ping pod {b4}");
    assert!(ping(&pods[0], &b4), "pod cannot ping pod {b4}");
    assert!(ping(&pods[0], &b6), "pod cannot ping pod {b6} over IPv6");
    assert!(ping(&pods[1], "10.88.0.1"), "pod cannot ping its gateway");
    for (i, pod) in pods.iter().enumerate() {
        let l = lib.with_container_id(&format!("libcni-pod-{i}"));
        l.del(&net, pod.path()).assert_success();
        // DEL is idempotent.
        l.del(&net, pod.path()).assert_success();
    }
    for pod in &pods {
        assert_no_trace(&node, "brlibcni", Some(pod), &[]);
    }
    // The bridge is never deleted.
    assert!(
        !links(&node.ns, &["dev", "cni0"]).is_empty(),
        "bridge was deleted"
    );
}

#[test]
fn add_fails_when_ifname_exists_in_the_pod_and_leaves_nothing() {
    let node = Node::new();
    let pod = Netns::new("brp");
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    let conf = node.conf("brtaken", json!({"isGateway": true}));
    let out = node.run(&ours(), "ADD", Some(pod.path()), "taken", "eth0", &conf);
    let err = out.assert_any_error();
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("already exists"),
        "{err}"
    );
    assert!(node.veths().is_empty(), "veth left: {:?}", node.veths());
    assert!(
        node.leases("brtaken").is_empty(),
        "lease left: {:?}",
        node.leases("brtaken")
    );
    let kinds: Vec<Value> = links(&pod, &["dev", "eth0"])
        .iter()
        .map(|l| l["link"].clone())
        .collect();
    assert_eq!(
        kinds,
        vec![json!("eth0peer")],
        "the pod's own eth0 was touched"
    );
}

#[test]
fn add_rolls_back_veth_when_ipam_fails() {
    let node = Node::new();
    let pod = Netns::new("brp");
    // host bits set in the subnet: host-local refuses it after the veth already exists.
    let conf = node.conf(
        "bripamfail",
        json!({"ipam": {"ranges": [[{"subnet": "10.89.0.1/24"}]]}}),
    );
    let out = node.run(&ours(), "ADD", Some(pod.path()), "ipamfail", "eth0", &conf);
    out.assert_any_error();
    assert_no_trace(&node, "bripamfail", Some(&pod), &[]);
}

#[test]
fn add_rolls_back_veth_lease_and_rules_when_gateway_address_collides() {
    let node = Node::new();
    let pod = Netns::new("brp");
    node.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    node.ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "cni0"]);
    let conf = node.conf("brcollide", json!({"isGateway": true, "ipMasq": true}));
    let out = node.run(&ours(), "ADD", Some(pod.path()), "collide", "eth0", &conf);
    let err = out.assert_any_error();
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("already has an IP address"),
        "{err}"
    );
    assert_no_trace(&node, "brcollide", Some(&pod), &["10.88.0.2".to_string()]);
    // forceAddress replaces the foreign address instead.
    let conf = node.conf(
        "brcollide",
        json!({"isGateway": true, "forceAddress": true}),
    );
    let out = node.run(&ours(), "ADD", Some(pod.path()), "collide", "eth0", &conf);
    out.assert_success();
    assert_eq!(
        addresses(&node.ns, "cni0"),
        vec!["10.88.0.1/24".to_string()]
    );
}

#[test]
fn add_releases_ipam_when_bridge_name_is_taken_by_another_device() {
    let node = Node::new();
    let pod = Netns::new("brp");
    node.ns.ip(&[
        "link", "add", "cni0", "type", "veth", "peer", "name", "cni0peer",
    ]);
    let conf = node.conf("brnotbridge", json!({}));
    let out = node.run(&ours(), "ADD", Some(pod.path()), "notbridge", "eth0", &conf);
    out.assert_any_error();
    assert_no_trace(&node, "brnotbridge", Some(&pod), &[]);
}

fn del_after_netns_is_gone(backend: &str) {
    let node = Node::new();
    let network = format!("brleak{backend}");
    let conf = node.conf(
        &network,
        json!({"isGateway": true, "ipMasq": true, "ipMasqBackend": backend}),
    );
    let pod = Netns::new("brp");
    let pod_path = pod.path().to_path_buf();
    let add = node.run(&ours(), "ADD", Some(&pod_path), "leak", "eth0", &conf);
    let result = add.assert_success();
    let ips = result_addrs(&result);
    let rules: Vec<String> = node
        .masquerade_lines()
        .into_iter()
        .filter(|l| ips.iter().any(|ip| l.contains(ip.as_str())))
        .collect();
    assert!(!rules.is_empty(), "no masquerade rule installed");
    drop(pod);
    // The kernel destroys a deleted namespace (and the veth with it) asynchronously.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !node.veths().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut del_conf = conf.clone();
    del_conf["prevResult"] = result;
    node.run(&ours(), "DEL", Some(&pod_path), "leak", "eth0", &del_conf)
        .assert_success();
    assert_no_trace(&node, &network, None, &ips);
    // Again, and with no netns at all: still success.
    node.run(&ours(), "DEL", Some(&pod_path), "leak", "eth0", &conf)
        .assert_success();
    node.run(&ours(), "DEL", None, "leak", "eth0", &conf)
        .assert_success();
}

#[test]
fn del_succeeds_when_netns_is_gone_and_leaves_no_nftables_masquerade() {
    del_after_netns_is_gone("nftables");
}

#[test]
fn del_succeeds_when_netns_is_gone_and_leaves_no_iptables_masquerade() {
    del_after_netns_is_gone("iptables");
}

#[test]
fn del_without_netns_releases_ipam() {
    let node = Node::new();
    let (_pod, conf, _) = pod_added(&node, "brnons", json!({}), "nons");
    assert_eq!(node.leases("brnons").len(), 1);
    node.run(&ours(), "DEL", None, "nons", "eth0", &conf)
        .assert_success();
    assert!(node.leases("brnons").is_empty());
}

#[test]
fn forty_parallel_adds_then_forty_parallel_dels_on_one_bridge() {
    const N: usize = 40;
    let node = Node::new();
    let conf = node.conf("brpar", json!({"isGateway": true, "ipMasq": true}));
    let pods: Vec<Netns> = (0..N).map(|_| Netns::new("brp")).collect();
    let results = node.run_parallel(&ours(), "ADD", &pods, "par-", "eth0", &conf);
    let ips: Vec<String> = results.iter().flat_map(result_addrs).collect();
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), N, "addresses not distinct: {ips:?}");
    assert_eq!(node.veths().len(), N);
    assert_eq!(node.leases("brpar").len(), N);
    node.run_parallel(&ours(), "DEL", &pods, "par-", "eth0", &conf);
    for pod in &pods {
        assert_no_trace(&node, "brpar", Some(pod), &ips);
    }
}

#[test]
fn check_fails_when_an_address_is_removed() {
    let node = Node::new();
    let (pod, conf, result) =
        pod_added(&node, "brcheck", json!({"isDefaultGateway": true}), "check");
    let mut c = conf.clone();
    c["prevResult"] = result.clone();
    node.run(&ours(), "CHECK", Some(pod.path()), "check", "eth0", &c)
        .assert_success();
    // Without prevResult CHECK refuses.
    node.run(&ours(), "CHECK", Some(pod.path()), "check", "eth0", &conf)
        .assert_any_error();
    let addr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    pod.ip(&["addr", "del", &addr, "dev", "eth0"]);
    node.run(&ours(), "CHECK", Some(pod.path()), "check", "eth0", &c)
        .assert_any_error();
}

#[test]
fn status_forwards_to_ipam() {
    let node = Node::new();
    let mut conf = node.conf("brstatus", json!({"cniVersion": "1.1.0"}));
    node.run(&ours(), "STATUS", None, "s", "eth0", &conf)
        .assert_success();
    conf["ipam"]["type"] = json!("no-such-ipam");
    node.run(&ours(), "STATUS", None, "s", "eth0", &conf)
        .assert_any_error();
    conf["ipam"] = json!({});
    node.run(&ours(), "STATUS", None, "s", "eth0", &conf)
        .assert_success();
}

#[test]
fn gc_removes_masquerade_and_leases_of_attachments_not_valid() {
    let node = Node::new();
    let conf = node.conf(
        "brgc",
        json!({"cniVersion": "1.1.0", "isGateway": true, "ipMasq": true}),
    );
    let pods = [Netns::new("brp"), Netns::new("brp")];
    let results = node.run_each(&ours(), "ADD", &pods, "gc-", "eth0", &conf);
    let keep_ips = result_addrs(&results[0]);
    let gone_ips = result_addrs(&results[1]);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc-0", "ifname": "eth0"}]);
    node.run(&ours(), "GC", None, "", "", &gc).assert_success();
    let masq = node.masquerade_lines();
    assert!(
        masq.iter()
            .any(|l| keep_ips.iter().any(|ip| l.contains(ip.as_str()))),
        "GC removed a valid attachment's rule: {masq:?}"
    );
    assert!(
        !masq
            .iter()
            .any(|l| gone_ips.iter().any(|ip| l.contains(ip.as_str()))),
        "GC kept an invalid attachment's rule: {masq:?}"
    );
    assert_eq!(
        node.leases("brgc"),
        keep_ips,
        "GC was not forwarded to IPAM"
    );
}

#[test]
fn host_veth_name_is_stable_per_attachment() {
    let node = Node::new();
    let conf = node.conf("brname", json!({}));
    let mut names = Vec::new();
    for _ in 0..2 {
        let pod = Netns::new("brp");
        let r = node
            .run(&ours(), "ADD", Some(pod.path()), "stable", "eth0", &conf)
            .assert_success();
        names.push(
            r["interfaces"][1]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        node.run(&ours(), "DEL", Some(pod.path()), "stable", "eth0", &conf)
            .assert_success();
    }
    assert_eq!(names[0], names[1]);
    assert!(
        names[0].starts_with("veth") && names[0].len() == 12,
        "{}",
        names[0]
    );
    let _ = bins::bin_dir();
}

#[test]
fn check_tolerates_routes_added_by_later_plugins() {
    let node = Node::new();
    let (pod, conf, result) = pod_added(&node, "brchain", json!({"isGateway": true}), "chain");
    pod.ip(&[
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        "10.88.0.1",
        "dev",
        "eth0",
    ]);
    pod.ip(&["addr", "add", "10.88.0.200/32", "dev", "eth0"]);
    let mut c = conf.clone();
    c["prevResult"] = result;
    node.run(&ours(), "CHECK", Some(pod.path()), "chain", "eth0", &c)
        .assert_success();
}

/// `nft list table bridge nat` with the attachment-specific parts (chain ids, comment ids, the host veth's name
/// and the pod's MAC) replaced by placeholders.
fn spoofchk_layout(node: &Node) -> String {
    let text = node.ns.exec_ok(&["nft", "list", "table", "bridge", "nat"]);
    text.split_inclusive(|c: char| c.is_whitespace())
        .map(|tok| {
            let (word, ws) = tok.split_at(tok.trim_end().len());
            let quoted = word.trim_matches('"');
            let q = |s: &str| {
                if word.starts_with('"') {
                    format!("\"{s}\"")
                } else {
                    s.to_string()
                }
            };
            let w = if let Some(rest) = quoted.strip_prefix("cni-br-iface-") {
                q(if rest.ends_with("-mac") {
                    "cni-br-iface-ID-mac"
                } else {
                    "cni-br-iface-ID"
                })
            } else if quoted.starts_with("macspoofchk-") {
                q("macspoofchk-ID")
            } else if quoted.starts_with("veth") {
                q("VETH")
            } else if quoted.len() == 17 && quoted.matches(':').count() == 5 {
                "MAC".to_string()
            } else {
                word.to_string()
            };
            format!("{w}{ws}")
        })
        .collect()
}

#[test]
fn macspoofchk_rules_have_the_layout_of_the_reference() {
    let layout = |plugin: PathBuf| -> String {
        let node = Node::new();
        let pod = Netns::new("brp");
        let conf = node.conf("brspoof", json!({"macspoofchk": true}));
        node.run(&plugin, "ADD", Some(pod.path()), "spoofref", "eth0", &conf)
            .assert_success();
        let text = spoofchk_layout(&node);
        node.run(&plugin, "DEL", Some(pod.path()), "spoofref", "eth0", &conf)
            .assert_success();
        assert!(!node.nft().contains("cni-br-iface-"), "{}", node.nft());
        text
    };
    let ours = layout(ours());
    let theirs = layout(bins::Reference::Current.bin("bridge"));
    assert!(ours.contains("ether saddr MAC return"), "{ours}");
    assert_eq!(ours, theirs, "ours:\n{ours}\nreference:\n{theirs}");
}

#[test]
fn macspoofchk_drops_frames_with_another_source_mac_and_del_removes_its_rules() {
    let node = Node::new();
    let (pod, conf, _) = pod_added(
        &node,
        "brspoof",
        json!({"isGateway": true, "macspoofchk": true}),
        "spoof",
    );
    let ruleset = node.nft();
    assert!(
        ruleset.contains("table bridge nat") && ruleset.contains("cni-br-iface-"),
        "no spoof-check rules: {ruleset}"
    );
    assert!(
        ping(&pod, "10.88.0.1"),
        "pod with its own MAC cannot reach the gateway"
    );
    pod.ip(&["link", "set", "eth0", "address", "02:00:00:00:be:ef"]);
    pod.ip(&["neigh", "flush", "dev", "eth0"]);
    node.ns.ip(&["neigh", "flush", "dev", "cni0"]);
    assert!(
        !ping(&pod, "10.88.0.1"),
        "frames with a spoofed MAC got through"
    );
    node.run(&ours(), "DEL", Some(pod.path()), "spoof", "eth0", &conf)
        .assert_success();
    let ruleset = node.nft();
    assert!(
        !ruleset.contains("cni-br-iface-"),
        "spoof-check rules left: {ruleset}"
    );
}

#[test]
fn port_isolation_and_hairpin_flags_are_set_on_the_host_port() {
    let node = Node::new();
    let (_pod, _, _) = pod_added(
        &node,
        "briso",
        json!({"portIsolation": true, "hairpinMode": true}),
        "iso",
    );
    let ports = links(&node.ns, &["master", "cni0"]);
    assert_eq!(ports.len(), 1);
    let slave = &ports[0]["linkinfo"]["info_slave_data"];
    assert_eq!(slave["isolated"], json!(true), "{slave}");
    assert_eq!(slave["hairpin"], json!(true), "{slave}");
}

#[test]
fn disable_container_interface_leaves_it_down_in_l2_mode() {
    let node = Node::new();
    let (pod, _, r) = pod_added(
        &node,
        "brdown",
        json!({"ipam": null, "disableContainerInterface": true}),
        "down",
    );
    assert!(r.get("ips").is_none(), "L2 mode has no IPs: {r}");
    assert!(
        !pod.link_is_up("eth0"),
        "container interface must stay down"
    );
    // With IPAM it is a config error.
    let conf = node.conf("brdown", json!({"disableContainerInterface": true}));
    let pod2 = Netns::new("brp");
    node.run(&ours(), "ADD", Some(pod2.path()), "down2", "eth0", &conf)
        .assert_error(7);
}

#[test]
fn enabledad_turns_dad_on_and_waits_for_it() {
    let node = Node::new();
    let (pod, _, r) = pod_added(
        &node,
        "brdad",
        json!({"isGateway": true, "enabledad": true, "ipam": {"ranges": [[{"subnet": "fd89::/64"}]]}}),
        "dad",
    );
    assert_eq!(sysctl(&pod, "net/ipv6/conf/eth0/accept_dad"), "1");
    let addr = result_ip(&r, true);
    let shown = pod.ip(&["-6", "addr", "show", "dev", "eth0"]);
    let line = shown
        .lines()
        .find(|l| l.contains(&addr))
        .unwrap_or_else(|| panic!("{addr} missing: {shown}"));
    assert!(
        !line.contains("tentative"),
        "ADD returned before DAD finished: {line}"
    );
}

#[test]
fn a_foreign_host_local_first_in_cni_path_is_exec_d() {
    // The reference host-local first in CNI_PATH: ours must delegate to it (exec), not run its own.
    let node = Node::new();
    let pod = Netns::new("brp");
    let conf = node.conf("brforeign", json!({"isGateway": true}));
    let path = format!("{}:{}", bins::REFERENCE_DIR, bins::bin_dir().display());
    node.run_with_path(
        &ours(),
        "ADD",
        Some(pod.path()),
        "foreign",
        "eth0",
        &conf,
        &path,
    )
    .assert_success();
    assert_eq!(node.leases("brforeign"), vec!["10.88.0.2".to_string()]);
    // The reference's lease file holds "<id>\r\n<ifname>".
    let content = std::fs::read_to_string(node.ipam_dir.path().join("brforeign/10.88.0.2"))
        .expect("lease file");
    assert_eq!(content, "foreign\r\neth0");
    node.run_with_path(
        &ours(),
        "DEL",
        Some(pod.path()),
        "foreign",
        "eth0",
        &conf,
        &path,
    )
    .assert_success();
    assert_no_trace(&node, "brforeign", Some(&pod), &[]);
}

#[test]
fn an_ipam_type_missing_from_cni_path_fails_add_cleanly() {
    let node = Node::new();
    let pod = Netns::new("brp");
    let mut conf = node.conf("brnoipam", json!({}));
    conf["ipam"]["type"] = json!("no-such-ipam");
    let err = node
        .run(&ours(), "ADD", Some(pod.path()), "noipam", "eth0", &conf)
        .assert_any_error();
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("no-such-ipam"),
        "{err}"
    );
    assert_no_trace(&node, "brnoipam", Some(&pod), &[]);
}

#[test]
fn repeated_add_of_a_live_attachment_fails_and_keeps_its_lease() {
    let node = Node::new();
    let (pod, conf, first) = pod_added(&node, "brtwice", json!({"isGateway": true}), "twice");
    node.run(&ours(), "ADD", Some(pod.path()), "twice", "eth0", &conf)
        .assert_any_error();
    assert_eq!(
        node.leases("brtwice"),
        result_addrs(&first),
        "the live lease was released"
    );
    assert!(ping(&pod, "10.88.0.1"), "the live attachment was damaged");
}

#[test]
fn status_reports_ipam_pool_exhaustion_with_code_50() {
    let node = Node::new();
    let pod = Netns::new("brp");
    // A /30: .1 is the gateway, .2 the only address to hand out.
    let conf = node.conf(
        "brfull",
        json!({"cniVersion": "1.1.0", "isGateway": true, "ipam": {"ranges": [[{"subnet": "10.90.0.0/30"}]]}}),
    );
    node.run(&ours(), "STATUS", None, "", "", &conf)
        .assert_success();
    node.run(&ours(), "ADD", Some(pod.path()), "full", "eth0", &conf)
        .assert_success();
    node.run(&ours(), "STATUS", None, "", "", &conf)
        .assert_error(50);
}
