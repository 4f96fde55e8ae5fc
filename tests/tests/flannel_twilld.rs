//! The flannel meta plugin with `subnet.env` written by twilld: two nodes on an underlay
//! switch with a real etcd, twilld running in each node, the stock flannel conflist driven through the real
//! libcni in each node, pods pinging across nodes; then twilld is stopped and its `subnet.env` removed, and DEL
//! still releases the address from the saved delegate config.
//!
//! Build first: `cargo build --workspace --bins`.

use std::os::unix::fs::symlink;
use std::time::Duration;

use serde_json::{json, Value};
use twill_tests::bins::{bin, workspace_dir};
use twill_tests::cluster::{wait_until, Node, Switch, Twilld, TwilldArgs};
use twill_tests::etcd::Etcd;
use twill_tests::libcni::LibCni;
use twill_tests::netns::Netns;

const NET_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const CONFIG_KEY: &str = "/coreos.com/network/config";
const READY: Duration = Duration::from_secs(20);

/// One node's CNI side: its conflist and libcni driver, saved configs and leases in a private directory.
struct CniSite {
    lib: LibCni,
    net: String,
    dir: tempfile::TempDir,
}

impl CniSite {
    fn new(node: &Node) -> CniSite {
        let dir = tempfile::Builder::new()
            .prefix("twill-flannel-twilld-")
            .tempdir()
            .expect("temp dir");
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        for name in ["flannel", "bridge", "host-local", "portmap"] {
            symlink(bin(name), bin_dir.join(name)).unwrap();
        }
        let stock: Value = serde_json::from_str(
            &std::fs::read_to_string(workspace_dir().join("conf/10-flannel.conflist")).unwrap(),
        )
        .unwrap();
        let mut list = stock;
        list["plugins"][0]["subnetFile"] = json!(node.subnet_file());
        list["plugins"][0]["dataDir"] = json!(dir.path().join("flannel"));
        list["plugins"][0]["ipam"] = json!({"dataDir": dir.path().join("networks")});
        let lib = LibCni::scratch(vec![bin_dir]).in_netns(node.ns.path());
        let net = lib.write_conflist(&list);
        CniSite { lib, net, dir }
    }

    fn leases(&self) -> Vec<String> {
        twill_tests::leases::held(&self.dir.path().join("networks").join(&self.net))
    }

    fn saved(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("flannel"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn pod_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {result}"))
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn pings(from: &Netns, to: &str) -> bool {
    from.exec(&["ping", "-n", "-q", "-c", "1", "-W", "1", to])
        .status
        .success()
}

#[test]
fn stock_conflist_with_subnet_env_from_twilld_pods_ping_across_nodes_and_del_survives_daemon_stop()
{
    // Drop order: pods, CNI sites, daemons, nodes, etcd, switch.
    let switch = Switch::new();
    let etcd: Etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 2.0,
        extra: Vec::new(),
    };
    let nodes: Vec<Node> = (1..=2).map(|i| switch.add_node(i)).collect();
    let mut daemons: Vec<Twilld> = nodes.iter().map(|n| n.start_twilld(&args)).collect();
    let subnets: Vec<_> = nodes.iter().map(|n| n.wait_ready(READY)).collect();
    assert_ne!(subnets[0], subnets[1]);
    let sites: Vec<CniSite> = nodes.iter().map(CniSite::new).collect();
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("flpod")).collect();

    let mut ips = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        let lib = site.lib.with_container_id(&format!("twpod{i}"));
        let result = lib.add(&site.net, pods[i].path()).assert_success();
        let ip = pod_ip(&result);
        let (net, _) = subnets[i];
        let gw = std::net::Ipv4Addr::from(u32::from(net) + 1);
        assert!(
            ip.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| u32::from(a) >> 8 == u32::from(net) >> 8),
            "pod {ip} outside node subnet {net}"
        );
        assert!(nodes[i]
            .ip(&["-4", "addr", "show", "dev", "cni0"])
            .contains(&format!("inet {gw}/24")));
        assert_eq!(site.leases(), vec![ip.clone()]);
        ips.push(ip);
    }
    assert!(
        wait_until(Duration::from_secs(15), || pings(&pods[0], &ips[1])),
        "pod on node 1 cannot reach pod on node 2 over the overlay\nnode1 routes:\n{}\nlog:\n{}",
        nodes[0].ip(&["route"]),
        daemons[0].log_text()
    );
    assert!(pings(&pods[1], &ips[0]));

    // The daemon on node 1 stops and its subnet.env disappears: DEL still releases from the saved config.
    daemons[0].terminate();
    let _ = std::fs::remove_file(nodes[0].subnet_file());
    let lib0 = sites[0].lib.with_container_id("twpod0");
    lib0.del(&sites[0].net, pods[0].path()).assert_success();
    assert!(sites[0].leases().is_empty(), "address released");
    assert!(sites[0].saved().is_empty(), "saved config removed");
    assert!(pods[0].link_flags("eth0").is_none());

    let lib1 = sites[1].lib.with_container_id("twpod1");
    lib1.del(&sites[1].net, pods[1].path()).assert_success();
    assert!(sites[1].leases().is_empty());
}
