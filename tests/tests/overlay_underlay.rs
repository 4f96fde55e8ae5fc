//! twilld's choice of underlay among several interfaces (`--iface-regex`, `--iface-can-reach`, as flanneld) and
//! `--ip-blackhole-route`: each checked on what peers see (the lease's PublicIP) and what the kernel has (the
//! VXLAN device's local address, the blackhole route), plus bad choices stopping the daemon before it writes
//! anything.

mod overlay_support;

use std::process::Command;
use std::time::Duration;

use overlay_support::{flannel_lease, CONFIG_KEY, NET_CONFIG, READY, SUBNETS};
use twill_tests::cluster::{wait_until, DaemonProcess, Node, Switch, Twilld};
use twill_tests::etcd::Etcd;

/// A node with three interfaces besides `lo`: `eth0` (10.250.0.1/24, on the switch, where etcd is), `decoy0`
/// (192.168.77.1/24 and 192.168.77.2/24) and `data0` (172.30.5.1/24), a route to 172.31.0.0/16 out of `decoy0`
/// with source 192.168.77.2, and no default route.
fn multi_homed() -> (Switch, Etcd, Node) {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let node = switch.add_node(1);
    for (dev, peer, addrs) in [
        (
            "decoy0",
            "decoy1",
            &["192.168.77.1/24", "192.168.77.2/24"][..],
        ),
        ("data0", "data1", &["172.30.5.1/24"][..]),
    ] {
        node.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer]);
        for a in addrs {
            node.ip(&["addr", "add", a, "dev", dev]);
        }
        node.ip(&["link", "set", dev, "up"]);
        node.ip(&["link", "set", peer, "up"]);
    }
    node.ip(&[
        "route",
        "add",
        "172.31.0.0/16",
        "via",
        "192.168.77.254",
        "dev",
        "decoy0",
        "src",
        "192.168.77.2",
    ]);
    (switch, etcd, node)
}

/// Starts twilld in `node` with only `extra` choosing the underlay (no `--iface`).
fn start(node: &Node, etcd: &Etcd, extra: &[&str]) -> Twilld {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node.ns.name()])
        .arg(twill_tests::bins::bin("twilld"))
        .arg(format!("--etcd-endpoints={}", etcd.underlay_endpoint()))
        .arg(format!("--node-name={}", node.name()))
        .arg(format!("--subnet-file={}", node.subnet_file().display()))
        .arg("--resync=0.5")
        .args(extra);
    DaemonProcess::spawn(cmd, node.log_file())
}

/// Runs twilld with `extra`, waits until it is ready and checks that it chose `dev` with `public_ip`: in its
/// lease and as the VXLAN device's local address and underlay.
fn assert_underlay(node: &Node, etcd: &Etcd, extra: &[&str], dev: &str, public_ip: &str) {
    let mut d = start(node, etcd, extra);
    assert!(
        wait_until(READY, || node.subnet().is_some()),
        "{extra:?}: not ready\n{}",
        d.log_text()
    );
    let leases = etcd.get_prefix(SUBNETS);
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert!(
        leases[0]
            .1
            .contains(&format!("\"PublicIP\":\"{public_ip}\"")),
        "{extra:?}: lease {}\n{}",
        leases[0].1,
        d.log_text()
    );
    let link = node.ip(&["-d", "link", "show", "flannel.1"]);
    assert!(
        link.contains(&format!("local {public_ip} dev {dev} ")),
        "{extra:?}: {link}"
    );
    // The next case starts from scratch: no lease, no subnet.env (they would carry the subnet over).
    d.terminate();
    for (key, _) in leases {
        etcd.del(&key);
    }
    std::fs::remove_file(node.subnet_file()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn iface_regex_picks_the_underlay_by_address_then_by_name() {
    let (_switch, etcd, node) = multi_homed();
    // An address pattern: the interface holding the first matching address, and that address.
    assert_underlay(
        &node,
        &etcd,
        &["--iface-regex=^172\\.30\\."],
        "data0",
        "172.30.5.1",
    );
    assert_underlay(
        &node,
        &etcd,
        &["--iface-regex=^192\\.168\\.77\\.2$"],
        "decoy0",
        "192.168.77.2",
    );
    // Patterns are tried in order; one that matches no address matches names (in index order: `decoy1`, the
    // veth peer without addresses, comes before `decoy0`), and the interface's first address is used.
    assert_underlay(
        &node,
        &etcd,
        &["--iface-regex=^nothing$", "--iface-regex=coy0$"],
        "decoy0",
        "192.168.77.1",
    );
    // `--iface` comes first when it matches; when it does not, the patterns are tried.
    assert_underlay(
        &node,
        &etcd,
        &["--iface=eth0", "--iface-regex=^data0"],
        "eth0",
        "10.250.0.1",
    );
    assert_underlay(
        &node,
        &etcd,
        &["--iface=nosuch0", "--iface-regex=^data0"],
        "data0",
        "172.30.5.1",
    );
}

#[test]
fn iface_can_reach_picks_the_interface_and_source_of_the_route() {
    let (_switch, etcd, node) = multi_homed();
    // The kernel's route to 172.31.9.9 leaves through decoy0 with source 192.168.77.2 (not decoy0's first
    // address).
    assert_underlay(
        &node,
        &etcd,
        &["--iface-can-reach=172.31.9.9"],
        "decoy0",
        "192.168.77.2",
    );
    // A connected destination: the interface of its network.
    assert_underlay(
        &node,
        &etcd,
        &["--iface-can-reach=172.30.5.77"],
        "data0",
        "172.30.5.1",
    );
    // Tried after the patterns, as flanneld.
    assert_underlay(
        &node,
        &etcd,
        &["--iface-regex=^nothing$", "--iface-can-reach=10.250.0.77"],
        "eth0",
        "10.250.0.1",
    );
}

#[test]
fn bad_underlay_choice_stops_twilld_before_it_writes_anything() {
    let (_switch, etcd, node) = multi_homed();
    let before = node.ip(&["-d", "link", "show"]);
    for (extra, reason, code) in [
        (
            &["--iface-regex=eth(0"][..],
            "not a valid regular expression",
            Some(2),
        ),
        (
            &["--iface-can-reach=300.1.1.1"][..],
            "not an IP address",
            Some(2),
        ),
        (
            &["--iface-can-reach=203.0.113.9"][..],
            "--iface-can-reach=203.0.113.9",
            None,
        ),
        (
            &["--iface=nosuch0", "--iface-regex=^nothing$"][..],
            "no interface matches --iface=nosuch0, --iface-regex=^nothing$",
            None,
        ),
    ] {
        let mut d = start(&node, &etcd, extra);
        let exit = d.wait_exit(Duration::from_secs(10));
        let log = d.log_text();
        match code {
            Some(c) => assert_eq!(exit, Some(c), "{extra:?}:\n{log}"),
            None => assert!(
                exit.is_some_and(|c| c != 0),
                "{extra:?}: exit {exit:?}\n{log}"
            ),
        }
        assert!(
            log.contains(reason),
            "{extra:?}: expected {reason:?} in:\n{log}"
        );
        assert!(
            etcd.get_prefix(SUBNETS).is_empty(),
            "{extra:?}: a lease was written"
        );
        assert!(node.subnet().is_none(), "{extra:?}: subnet.env was written");
        assert_eq!(
            node.ip(&["-d", "link", "show"]),
            before,
            "{extra:?}: links changed"
        );
    }
}

fn blackholes(node: &Node) -> String {
    node.ip(&["route", "show", "table", "main", "type", "blackhole"])
}

/// Starts twilld with `--ip-blackhole-route` on `eth0` and waits for its subnet.
fn start_with_blackhole(node: &Node, etcd: &Etcd) -> (Twilld, std::net::Ipv4Addr, u8) {
    let d = start(node, etcd, &["--iface=eth0", "--ip-blackhole-route"]);
    assert!(
        wait_until(READY, || node.subnet().is_some()),
        "{}",
        d.log_text()
    );
    let (net, len) = node.subnet().unwrap_or_else(|| unreachable!());
    (d, net, len)
}

#[test]
fn blackhole_route_is_kept_while_the_lease_is_ours_and_goes_with_it() {
    let (_switch, etcd, node) = multi_homed();
    // Left by an earlier run that held another subnet: not ours any more.
    node.ip(&["route", "add", "blackhole", "10.244.200.0/24"]);
    let (d, net, len) = start_with_blackhole(&node, &etcd);
    let own = format!("blackhole {net}/{len} ");
    assert!(
        wait_until(Duration::from_secs(5), || blackholes(&node).contains(&own)),
        "{}\n{}",
        blackholes(&node),
        d.log_text()
    );
    assert!(
        !blackholes(&node).contains("10.244.200.0/24"),
        "the stale blackhole route stayed: {}",
        blackholes(&node)
    );
    // Pod addresses nobody has are dropped here, not sent on (the network address itself is flannel.1's).
    let pod = std::net::Ipv4Addr::from(u32::from(net) + 7);
    let got = node.exec(&["ip", "route", "get", &pod.to_string()]);
    assert!(
        !got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stdout)
    );

    // Removed by hand: back within a resync.
    node.ip(&["route", "del", "blackhole", &format!("{net}/{len}")]);
    assert!(wait_until(Duration::from_secs(5), || blackholes(&node).contains(&own)));

    // Another node now holds the subnet: its pods are there, so the route goes.
    let key = format!("{SUBNETS}{net}-{len}");
    let ours = etcd.get(&key).unwrap_or_default();
    etcd.put(&key, &flannel_lease("10.250.0.9", "0a:00:00:00:09:09"));
    assert!(
        wait_until(Duration::from_secs(5), || !blackholes(&node).contains(&own)),
        "{}\n{}",
        blackholes(&node),
        d.log_text()
    );
    // Free again: twilld takes it back, and the route with it.
    etcd.del(&key);
    assert!(wait_until(Duration::from_secs(5), || etcd
        .get(&key)
        .as_deref()
        == Some(ours.as_str())));
    assert!(wait_until(Duration::from_secs(5), || blackholes(&node).contains(&own)));
}

#[test]
fn blackhole_route_coexists_with_the_bridge_route_which_wins_while_it_exists() {
    let (_switch, etcd, node) = multi_homed();
    let (d, net, len) = start_with_blackhole(&node, &etcd);
    let gw = std::net::Ipv4Addr::from(u32::from(net) + 1);
    let pod = std::net::Ipv4Addr::from(u32::from(net) + 7);
    node.ip(&["link", "add", "cni0", "type", "bridge"]);
    node.ip(&["addr", "add", &format!("{gw}/{len}"), "dev", "cni0"]);
    node.ip(&["link", "set", "cni0", "up"]);
    let own = format!("blackhole {net}/{len} ");
    assert!(wait_until(Duration::from_secs(5), || blackholes(&node).contains(&own)));
    let via = node.ip(&["route", "get", &pod.to_string()]);
    assert!(via.contains("dev cni0"), "{via}");
    node.ip(&["link", "set", "cni0", "down"]);
    let got = node.exec(&["ip", "route", "get", &pod.to_string()]);
    assert!(
        !got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stdout)
    );
    assert!(
        !d.log_text().contains("blackhole route for"),
        "{}",
        d.log_text()
    );
}
