//! podman (CNI backend) drives twill's plugins: a container gets an address from our IPAM,
//! reaches another container and its host, a published port reaches it through our portmap, and
//! `podman rm` releases everything. podman runs inside a fresh "node" namespace, so the bridge and firewall
//! state the plugins create is the node's, and the node's kernel state can be checked for leftovers.

use std::path::Path;
use twill_tests::bins::bin_dir;
use twill_tests::leases::held;
use twill_tests::netns::Netns;
use twill_tests::runtimes::podman::Podman;
use twill_tests::runtimes::{bridge_portmap_conflist, http_get_cmd};

fn conflist(name: &str, subnet: &str, data_dir: &Path) -> serde_json::Value {
    bridge_portmap_conflist(name, "twpod0", subnet, data_dir)
}

/// A one-shot container on `pm`'s network fetches the web container's page with `get_web` (the web server may
/// take a moment to listen).
fn assert_a_container_reaches(pm: &Podman, get_web: &str) {
    let mut fetched = (false, String::new());
    for _ in 0..20 {
        fetched = pm.oneshot(&[], &["/bin/sh", "-c", get_web]);
        if fetched.1.contains("twill") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("container reaches container: {fetched:?}");
}

#[test]
fn podman_containers_get_twill_networking_and_rm_releases_everything() {
    let node = Netns::new("pmn");
    node.exec_ok(&["ip", "link", "set", "lo", "up"]);
    let state = tempfile::tempdir().expect("ipam dir");
    let net = format!("twpm{}", std::process::id());
    let mut pm = Podman::new(
        &[&bin_dir()],
        &conflist(&net, "10.93.0.0/24", state.path()),
        Some(node.name()),
    );
    let ipam_dir = state.path().join(&net);

    pm.start(
        "web",
        &["-p", "18080:80"],
        &["/bin/httpd", "-f", "-p", "80", "-h", "/www"],
    );
    let web_ip = pm.ip("web");
    assert!(
        web_ip.starts_with("10.93.0."),
        "address from our IPAM range, got {web_ip:?}"
    );
    assert_eq!(
        held(&ipam_dir),
        vec![web_ip.clone()],
        "one lease, named by the address"
    );

    // Container to container, by address.
    let get_web = http_get_cmd(&web_ip, 80);
    assert_a_container_reaches(&pm, &get_web);
    // Container to its host (the bridge gateway).
    let (ok, out) = pm.oneshot(
        &["--cap-add", "NET_RAW"],
        &["/bin/ping", "-c", "1", "-W", "2", "10.93.0.1"],
    );
    assert!(ok, "container pings its host: {out}");
    // Host to container, and the published port from the host itself (portmap, 127.0.0.1 via route_localnet).
    let (ok, out, err) = pm.host(&["busybox", "sh", "-c", &get_web]);
    assert!(
        ok && out.contains("twill"),
        "host reaches container: {out} {err}"
    );
    let (ok, out, err) = pm.host(&["busybox", "sh", "-c", &http_get_cmd("127.0.0.1", 18080)]);
    assert!(
        ok && out.contains("twill"),
        "published port reaches container: {out} {err}"
    );

    pm.remove("web");
    assert!(
        held(&ipam_dir).is_empty(),
        "podman rm released the lease: {:?}",
        held(&ipam_dir)
    );
    let (_, links, _) = pm.host(&["ip", "-o", "link", "show", "type", "veth"]);
    assert!(links.trim().is_empty(), "no veth left on the node: {links}");
    let (_, nft, _) = pm.host(&["nft", "list", "ruleset"]);
    let (_, ipt, _) = pm.host(&["iptables-save"]);
    assert!(
        !nft.contains(&web_ip) && !ipt.contains(&web_ip),
        "no rule for {web_ip} left:\n{nft}\n{ipt}"
    );
    drop(pm);
}

/// `podman network create` and `network inspect` with twill's directory first in `cni_plugin_dirs` and the
/// reference's second (a host that keeps the reference plugins installed beside ours); podman finds ours
/// first for every plugin of the conflist it writes.
#[test]
fn podman_network_create_and_inspect_work_with_twill_bridge_and_portmap() {
    let node = Netns::new("pmc");
    node.exec_ok(&["ip", "link", "set", "lo", "up"]);
    let state = tempfile::tempdir().expect("ipam dir");
    let base = format!("twpb{}", std::process::id());
    let reference = twill_tests::bins::ref_dir();
    let mut pm = Podman::new(
        &[&bin_dir(), &reference],
        &conflist(&base, "10.93.1.0/24", state.path()),
        Some(node.name()),
    );
    let net = format!("twpc{}", std::process::id());
    pm.run_ok(&["network", "create", "--subnet", "10.97.0.0/24", &net]);
    let inspect: serde_json::Value =
        serde_json::from_str(&pm.run_ok(&["network", "inspect", &net]))
            .expect("inspect prints JSON");
    assert_eq!(inspect[0]["name"], net.as_str());
    assert_eq!(inspect[0]["subnets"][0]["subnet"], "10.97.0.0/24");

    let rootfs = pm.rootfs.display().to_string();
    pm.run_ok(&[
        "run",
        "-d",
        "--name",
        "onnet",
        "--network",
        &net,
        "--rootfs",
        &rootfs,
        "/bin/sleep",
        "600",
    ]);
    let fmt = format!("{{{{.NetworkSettings.Networks.{net}.IPAddress}}}}");
    let ip = pm.run_ok(&["inspect", "onnet", "--format", &fmt]);
    assert!(
        ip.starts_with("10.97.0."),
        "address on the created network, got {ip:?}"
    );
    let (ok, _, err) = pm.host(&["ping", "-n", "-c", "1", "-W", "2", &ip]);
    assert!(ok, "node reaches the container: {err}");
    pm.remove("onnet");
    pm.run_ok(&["network", "rm", &net]);
}

/// podman's default conflist, as `podman network create` writes it (`bridge` + `portmap` + `firewall` +
/// `tuning`), run wholly on twill's binaries (our plugin directory is the only one podman searches): a
/// container with a published port, reached from another container and through the port; `podman rm`
/// leaves no lease, veth or rule naming its address.
#[test]
fn podman_default_conflist_runs_wholly_on_twill_binaries() {
    for plugin in ["bridge", "host-local", "portmap", "firewall", "tuning"] {
        assert!(
            bin_dir().join(plugin).is_file(),
            "twill's {plugin} is not built in {}",
            bin_dir().display()
        );
    }
    let node = Netns::new("pmd");
    node.exec_ok(&["ip", "link", "set", "lo", "up"]);
    let state = tempfile::tempdir().expect("ipam dir");
    let base = format!("twpd{}", std::process::id());
    let mut pm = Podman::new(
        &[&bin_dir()],
        &conflist(&base, "10.93.2.0/24", state.path()),
        Some(node.name()),
    );
    let net = format!("twpe{}", std::process::id());
    pm.run_ok(&["network", "create", "--subnet", "10.98.0.0/24", &net]);
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(pm.network_config_dir().join(format!("{net}.conflist")))
            .expect("podman wrote the conflist"),
    )
    .expect("conflist is JSON");
    let types: Vec<&str> = written["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(
        types,
        ["bridge", "portmap", "firewall", "tuning"],
        "{written}"
    );
    pm.network = net.clone();

    pm.start(
        "web",
        &["-p", "18091:80"],
        &["/bin/httpd", "-f", "-p", "80", "-h", "/www"],
    );
    let web_ip = pm.ip("web");
    assert!(web_ip.starts_with("10.98.0."), "got {web_ip:?}");
    let get_web = http_get_cmd(&web_ip, 80);
    assert_a_container_reaches(&pm, &get_web);
    let (ok, out, err) = pm.host(&["busybox", "sh", "-c", &http_get_cmd("127.0.0.1", 18091)]);
    assert!(
        ok && out.contains("twill"),
        "published port reaches container: {out} {err}"
    );
    let (_, ipt, _) = pm.host(&["iptables-save", "-t", "filter"]);
    assert!(
        ipt.contains(&format!("-A CNI-FORWARD -s {web_ip}/32")),
        "our firewall let the container through:\n{ipt}"
    );

    pm.remove("web");
    let (_, links, _) = pm.host(&["ip", "-o", "link", "show", "type", "veth"]);
    assert!(links.trim().is_empty(), "no veth left on the node: {links}");
    let (_, nft, _) = pm.host(&["nft", "list", "ruleset"]);
    let (_, ipt, _) = pm.host(&["iptables-save"]);
    assert!(
        !nft.contains(&format!("{web_ip} ")) && !ipt.contains(&format!("{web_ip}/")),
        "no rule for {web_ip} left:\n{nft}\n{ipt}"
    );
    pm.run_ok(&["network", "rm", &net]);
}
