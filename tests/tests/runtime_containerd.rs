//! containerd's CRI plugin drives twill's plugins: RunPodSandbox gets an address from our IPAM,
//! the sandbox is reachable from its node and from another sandbox, a host port reaches it, and
//! StopPodSandbox + RemovePodSandbox (two DELs, the second with an empty netns and no prevResult) both
//! succeed and release everything.

use std::path::Path;
use twill_tests::bins::bin_dir;
use twill_tests::leases::held;
use twill_tests::netns::Netns;
use twill_tests::runtimes::containerd::Containerd;
use twill_tests::runtimes::cri::HostPort;
use twill_tests::runtimes::{bridge_portmap_conflist, http_get_cmd};

fn conflist(name: &str, subnet: &str, data_dir: &Path) -> serde_json::Value {
    bridge_portmap_conflist(name, "twctd0", subnet, data_dir)
}

#[test]
fn cri_sandboxes_get_twill_networking_and_both_dels_release_everything() {
    let node = Netns::new("ctn");
    node.exec_ok(&["ip", "link", "set", "lo", "up"]);
    let state = tempfile::tempdir().expect("ipam dir");
    let net = format!("twctd{}", std::process::id());
    let ctd = Containerd::start(
        &bin_dir(),
        &conflist(&net, "10.94.0.0/24", state.path()),
        Some(node.name()),
    );
    let ipam_dir = state.path().join(&net);
    let mut cri = ctd.cri();

    let a = cri
        .run_pod_sandbox(
            "twa",
            "uid-a",
            &[HostPort {
                host_port: 18081,
                container_port: 80,
                udp: false,
            }],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.log()));
    let b = cri
        .run_pod_sandbox("twb", "uid-b", &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.log()));
    let ip_a = cri.pod_ip(&a).expect("sandbox a has an IP");
    let ip_b = cri.pod_ip(&b).expect("sandbox b has an IP");
    assert!(
        ip_a.starts_with("10.94.0.") && ip_b.starts_with("10.94.0."),
        "{ip_a} {ip_b}"
    );
    assert_ne!(ip_a, ip_b);
    let leased = held(&ipam_dir);
    let mut want = vec![ip_a.clone(), ip_b.clone()];
    want.sort();
    assert_eq!(leased, want);

    // Serve HTTP inside sandbox a's namespace.
    let ns_a = ctd.sandbox_netns(&a);
    let ns_b = ctd.sandbox_netns(&b);
    let www = tempfile::tempdir().expect("www");
    std::fs::write(www.path().join("index.html"), "twill\n").expect("index");
    let www_dir = www.path().display().to_string();
    let (ok, _, err) = ctd.host(&[
        "nsenter",
        &format!("--net={ns_a}"),
        "busybox",
        "httpd",
        "-p",
        "80",
        "-h",
        &www_dir,
    ]);
    assert!(ok, "start httpd in sandbox a: {err}");

    let get_a = http_get_cmd(&ip_a, 80);
    let (ok, out, err) = ctd.host(&["busybox", "sh", "-c", &get_a]);
    assert!(
        ok && out.contains("twill"),
        "node reaches sandbox a: {out} {err}"
    );
    let (ok, out, err) = ctd.host(&[
        "nsenter",
        &format!("--net={ns_b}"),
        "busybox",
        "sh",
        "-c",
        &get_a,
    ]);
    assert!(
        ok && out.contains("twill"),
        "sandbox b reaches sandbox a: {out} {err}"
    );
    let (ok, out, err) = ctd.host(&["busybox", "sh", "-c", &http_get_cmd("127.0.0.1", 18081)]);
    assert!(
        ok && out.contains("twill"),
        "host port reaches sandbox a: {out} {err}"
    );
    // Stop the server before the sandbox goes (it lives in the sandbox netns, not in a container).
    let _ = ctd.host(&["pkill", "-f", &format!("httpd -p 80 -h {www_dir}")]);

    for id in [&a, &b] {
        cri.stop_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("{e}\n{}", ctd.log()));
        cri.remove_pod_sandbox(id)
            .unwrap_or_else(|e| panic!("{e}\n{}", ctd.log()));
    }
    assert!(
        held(&ipam_dir).is_empty(),
        "leases released: {:?}",
        held(&ipam_dir)
    );
    let (_, links, _) = ctd.host(&["ip", "-o", "link", "show", "type", "veth"]);
    assert!(links.trim().is_empty(), "no veth left on the node: {links}");
    let (_, nft, _) = ctd.host(&["nft", "list", "ruleset"]);
    let (_, ipt, _) = ctd.host(&["iptables-save"]);
    for ip in [&ip_a, &ip_b] {
        assert!(
            !nft.contains(ip.as_str()) && !ipt.contains(ip.as_str()),
            "no rule for {ip} left:\n{nft}\n{ipt}"
        );
    }
}

/// Kubernetes' pod bandwidth annotations through containerd's CRI: the runtime turns
/// `kubernetes.io/ingress-bandwidth` / `egress-bandwidth` into the `bandwidth` capability (Go field
/// names, bursts of 2^32-1 bits), and our bandwidth plugin, chained after bridge, shapes the sandbox's
/// host veth and an ifb accordingly; removing the sandbox removes the ifb.
#[test]
fn cri_bandwidth_annotations_shape_the_sandbox() {
    let node = Netns::new("ctb");
    node.exec_ok(&["ip", "link", "set", "lo", "up"]);
    let state = tempfile::tempdir().expect("ipam dir");
    let net = format!("twctb{}", std::process::id());
    let mut list = conflist(&net, "10.95.0.0/24", state.path());
    list["plugins"]
        .as_array_mut()
        .expect("plugins")
        .push(serde_json::json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    let ctd = Containerd::start(&bin_dir(), &list, Some(node.name()));
    let mut cri = ctd.cri();
    let id = cri
        .run_pod_sandbox_annotated(
            "twbw",
            "uid-bw",
            &[],
            &[
                ("kubernetes.io/ingress-bandwidth", "10M"),
                ("kubernetes.io/egress-bandwidth", "20M"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.log()));
    let (_, qdiscs, _) = ctd.host(&["tc", "qdisc", "show"]);
    let tbf: Vec<&str> = qdiscs.lines().filter(|l| l.contains("tbf")).collect();
    assert!(
        tbf.iter()
            .any(|l| l.contains("dev veth") && l.contains("rate 10Mbit")),
        "ingress tbf on the sandbox's host veth: {qdiscs}"
    );
    assert!(
        tbf.iter()
            .any(|l| l.contains("dev bwp") && l.contains("rate 20Mbit")),
        "egress tbf on the ifb: {qdiscs}"
    );
    cri.stop_pod_sandbox(&id)
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.log()));
    cri.remove_pod_sandbox(&id)
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.log()));
    let (_, ifbs, _) = ctd.host(&["ip", "-o", "link", "show", "type", "ifb"]);
    assert!(
        ifbs.trim().is_empty(),
        "ifb left after RemovePodSandbox: {ifbs}"
    );
}
