//! twilld with the host-gw backend on real namespaces: per peer a plain route via the peer's underlay address, no
//! tunnel device; a peer on another L2 segment is reported and left unrouted.

mod overlay_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use overlay_support::*;
use twill_tests::cluster::{wait_until, Node, Switch, Twilld, TwilldArgs};
use twill_tests::etcd::Etcd;

const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// Fields drop in order: daemons, nodes, etcd, switch.
struct HostGw {
    daemons: Vec<Twilld>,
    nodes: Vec<Node>,
    etcd: Etcd,
    switch: Switch,
}

impl HostGw {
    fn new() -> HostGw {
        let switch = Switch::new();
        let etcd = switch.start_etcd();
        etcd.put(CONFIG_KEY, HOST_GW);
        HostGw {
            daemons: Vec::new(),
            nodes: Vec::new(),
            etcd,
            switch,
        }
    }

    fn args(&self) -> TwilldArgs {
        TwilldArgs {
            etcd: self.etcd.underlay_endpoint(),
            resync_secs: 1.0,
            extra: vec![format!("--healthz-port={HEALTH_PORT}")],
        }
    }

    /// Adds node `index`, optionally moved onto the second segment 10.251.0.0/24 (reached through the switch,
    /// which routes between the two), and starts its twilld.
    fn add(&mut self, index: u8, other_segment: bool) -> usize {
        let mut n = self.switch.add_node(index);
        if other_segment {
            let new = Ipv4Addr::new(10, 251, 0, index);
            n.ip(&[
                "addr",
                "del",
                &format!("{}/24", n.underlay_ip),
                "dev",
                "eth0",
            ]);
            n.ip(&["addr", "add", &format!("{new}/24"), "dev", "eth0"]);
            n.ip(&["route", "add", "10.250.0.0/24", "via", "10.251.0.254"]);
            n.underlay_ip = new;
        } else {
            n.ip(&["route", "add", "10.251.0.0/24", "via", "10.250.0.254"]);
        }
        self.daemons.push(n.start_twilld(&self.args()));
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn subnet(&self, i: usize) -> Ipv4Addr {
        let n = &self.nodes[i];
        let ok = wait_until(READY, || n.subnet().is_some());
        assert!(ok, "{} not ready\n{}", n.name(), self.dump());
        n.subnet().unwrap_or_else(|| unreachable!()).0
    }

    fn route_to(&self, j: usize) -> String {
        format!(
            "{}/24 via {} dev eth0",
            self.subnet(j),
            self.nodes[j].underlay_ip
        )
    }

    fn has_route(&self, i: usize, j: usize) -> bool {
        self.nodes[i]
            .ip(&["-4", "route"])
            .contains(&self.route_to(j))
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for (n, d) in self.nodes.iter().zip(&self.daemons) {
            s.push_str(&format!(
                "--- {} ({})\nroutes:\n{}log:\n{}\n",
                n.name(),
                n.underlay_ip,
                n.ip(&["-4", "route"]),
                d.log_text()
            ));
        }
        s + &format!("--- etcd: {:?}\n", self.etcd.get_prefix(SUBNETS))
    }
}

#[test]
fn host_gw_nodes_route_pods_via_each_others_underlay_address_and_repair_deleted_routes() {
    let mut c = HostGw::new();
    for i in 1..=3 {
        c.add(i, false);
    }
    let subnets: Vec<Ipv4Addr> = (0..3).map(|i| c.subnet(i)).collect();
    // Leases as flanneld writes them for host-gw: the type, no BackendData.
    for (i, s) in subnets.iter().enumerate() {
        let value = c
            .etcd
            .get(&format!("{SUBNETS}{s}-24"))
            .unwrap_or_else(|| panic!("no lease for {s}"));
        let v: serde_json::Value = serde_json::from_str(&value).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["BackendType"], "host-gw", "{value}");
        assert_eq!(v["PublicIP"], c.nodes[i].underlay_ip.to_string());
        assert!(v.get("BackendData").is_none(), "{value}");
    }
    let all = |c: &HostGw| (0..3).all(|i| (0..3).filter(|&j| j != i).all(|j| c.has_route(i, j)));
    assert!(
        wait_until(Duration::from_secs(10), || all(&c)),
        "routes via peers missing\n{}",
        c.dump()
    );
    for n in &c.nodes {
        // No tunnel: no device, and pods get the underlay's MTU.
        assert!(n.link_mac("flannel.1").is_none());
        assert_eq!(n.mtu(), Some(1500));
        assert_eq!(curl(n, HEALTH_PORT, "/readyz").0, "200");
    }
    let pods: Vec<_> = c.nodes.iter().map(|n| n.add_pod(5)).collect();
    for (i, p) in pods.iter().enumerate() {
        for (j, q) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(
                wait_until(Duration::from_secs(5), || p.can_reach(q.ip)),
                "pod on node {i} cannot reach pod on node {j}\n{}",
                c.dump()
            );
        }
    }
    // A route deleted by hand comes back with the next pass.
    let s2 = format!("{}/24", subnets[1]);
    c.nodes[0].ip(&["route", "del", &s2]);
    assert!(!c.has_route(0, 1));
    assert!(
        wait_until(Duration::from_secs(5), || c.has_route(0, 1)),
        "deleted route not repaired\n{}",
        c.dump()
    );
    assert!(pods[0].can_reach(pods[1].ip));
    // A route to a subnet nobody holds is stale and goes.
    let bogus = (1..=255u8)
        .map(|i| format!("10.244.{i}.0"))
        .find(|net| subnets.iter().all(|s| s.to_string() != *net))
        .unwrap_or_else(|| unreachable!());
    let bogus = format!("{bogus}/24");
    c.nodes[0].ip(&["route", "add", &bogus, "via", "10.250.0.77", "dev", "eth0"]);
    assert!(
        wait_until(Duration::from_secs(5), || !c.nodes[0]
            .ip(&["-4", "route"])
            .contains(&bogus)),
        "stale route kept\n{}",
        c.dump()
    );
    // A node that leaves takes its route with it.
    c.daemons[2].terminate();
    c.etcd.del(&format!("{SUBNETS}{}-24", subnets[2]));
    let s3 = format!("{}/24", subnets[2]);
    assert!(
        wait_until(Duration::from_secs(5), || !c.nodes[0]
            .ip(&["-4", "route"])
            .contains(&s3)),
        "route of a gone peer kept\n{}",
        c.dump()
    );
    assert!(c.has_route(0, 1));
}

#[test]
fn host_gw_peer_on_another_segment_is_reported_and_not_routed() {
    let mut c = HostGw::new();
    c.switch
        .ns
        .ip(&["addr", "add", "10.251.0.254/24", "dev", "br0"]);
    c.switch
        .ns
        .exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    c.add(1, false);
    c.add(2, false);
    let far = c.add(3, true);
    let s3 = c.subnet(far);
    let (code, body) = loop_readyz(&c.nodes[0], "not on the L2 segment");
    assert_eq!(code, "503", "{body}\n{}", c.dump());
    assert!(body.contains(&format!("{s3}/24 at 10.251.0.3")), "{body}");
    // The same-segment peer is routed, the far one is not, and the log says why.
    assert!(
        wait_until(Duration::from_secs(5), || c.has_route(0, 1)),
        "{}",
        c.dump()
    );
    assert!(!c.nodes[0]
        .ip(&["-4", "route"])
        .contains(&format!("{s3}/24")));
    let log = c.daemons[0].log_text();
    assert!(
        log.contains(&format!("cannot reach peer {s3}/24 at 10.251.0.3"))
            && log.contains("not routed"),
        "{log}"
    );
    // The far node sees both others as off its segment.
    let (code, body) = loop_readyz(&c.nodes[far], "not on the L2 segment");
    assert_eq!(code, "503", "{body}");
    assert!(
        body.contains("10.250.0.1") && body.contains("10.250.0.2"),
        "{body}"
    );
    // Once the far node leaves, the near ones are ready again.
    c.daemons[far].terminate();
    c.etcd.del(&format!("{SUBNETS}{s3}-24"));
    assert!(
        wait_until(Duration::from_secs(5), || curl(
            &c.nodes[0],
            HEALTH_PORT,
            "/readyz"
        )
        .0 == "200"),
        "{:?}\n{}",
        curl(&c.nodes[0], HEALTH_PORT, "/readyz"),
        c.dump()
    );
}

/// `/readyz` once it mentions `needle` (or the last answer after a while).
fn loop_readyz(n: &Node, needle: &str) -> (String, String) {
    let mut last = (String::new(), String::new());
    wait_until(READY, || {
        last = curl(n, HEALTH_PORT, "/readyz");
        last.1.contains(needle)
    });
    last
}
