//! End-to-end: a whole cluster on one machine — etcd on an underlay switch, three nodes each running
//! twilld, pods added through the real libcni with the stock flannel + portmap conflist — checked the way an
//! operator would: lease table, pod-to-pod matrix across all nodes, host ports reachable from other nodes.
//!
//! Build first: `cargo build --workspace --bins`. The cluster library is `twill_tests::e2e`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use twill_tests::e2e::{Cluster, Options};

#[test]
fn full_matrix_on_three_nodes_with_two_pods_each() {
    let cluster = Cluster::up(Options {
        prefix: "e2em".into(),
        nodes: 3,
        pods_per_node: 2,
        host_port: Some(30080),
        ..Options::default()
    });
    let state = cluster.state();

    // Lease table: one lease per node, distinct subnets, the VTEP MAC in etcd is the node's flannel.1 MAC,
    // and subnet.env names the same subnet (gateway .1, docs/architecture.md, flannel contracts, subnet.env).
    let rows = state.lease_table().expect("lease table");
    assert_eq!(rows.len(), 3, "{}", state.render_lease_table(&rows));
    let mut subnets: Vec<_> = rows.iter().map(|r| r.lease.subnet).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3, "{}", state.render_lease_table(&rows));
    for r in &rows {
        assert!(r.node.is_some(), "lease of an unknown node: {r:?}");
        assert_eq!(
            r.kernel_mac.as_deref(),
            Some(r.lease.vtep_mac.as_str()),
            "{r:?}"
        );
        let gw = std::net::Ipv4Addr::from(u32::from(r.lease.subnet) + 1);
        assert_eq!(
            r.subnet_env.as_deref(),
            Some(format!("{gw}/24").as_str()),
            "{r:?}"
        );
        // Every pod of the node got its address from the node's subnet.
        let node = r.node.clone().unwrap_or_default();
        for p in state.pods.iter().filter(|p| p.node == node) {
            assert_eq!(
                u32::from(p.ip) >> 8,
                u32::from(r.lease.subnet) >> 8,
                "{p:?} outside {r:?}"
            );
        }
    }

    let matrix = state.wait_full_matrix(Duration::from_secs(10));
    assert!(
        matrix.is_full(),
        "unreachable: {:?}\n{}\n{}",
        matrix.failures(),
        matrix.render(),
        cluster.logs()
    );
    assert_eq!(matrix.reachable(), (30, 30));

    // Host ports (portmap, chained after flannel in the stock conflist): every node's first pod is reachable at
    // <node IP>:30080 from the other nodes and from pods on them.
    let checks = state.host_port_check().expect("host-port check");
    assert_eq!(checks.len(), 3 * 2 * 2);
    let bad: Vec<_> = checks.iter().filter(|c| !c.ok()).collect();
    assert!(bad.is_empty(), "{bad:#?}");

    // Throughput runs (one second each way): the overlay carries real TCP traffic between pods on two nodes.
    let t = state.throughput(1).expect("iperf3");
    assert!(
        t.overlay_bps > 1e7 && t.underlay_bps > 1e7,
        "{}",
        t.render()
    );
}

/// Pod churn: 100 ADD/DEL cycles spread over three nodes, three at a time, every fifth with a host
/// port; afterwards every node holds exactly what it held before — no host-local lease, host veth, policy /
/// nftables / iptables rule, saved flannel delegate config or libcni cached result is left, none is lost —
/// and the standing pods still reach each other.
#[test]
fn pod_churn_of_100_add_del_cycles_over_the_nodes_leaves_no_lease_veth_rule_or_saved_file() {
    let cluster = Cluster::up(Options {
        prefix: "e2ec".into(),
        nodes: 3,
        pods_per_node: 1,
        host_port: Some(30080),
        ..Options::default()
    });
    let state = cluster.state();
    // Warm-up: whatever the first pod with a host port creates once per node (bridge, chains) is not a leak.
    for i in 0..cluster.nodes.len() {
        cluster
            .pod_cycle(i, Some(31999))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let before = state.snapshots();

    const CYCLES: usize = 100;
    let next = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= CYCLES {
                    break;
                }
                let host_port = k.is_multiple_of(5).then(|| 31000 + k as u16);
                if let Err(e) = cluster.pod_cycle(k % cluster.nodes.len(), host_port) {
                    errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                }
            });
        }
    });
    let elapsed = start.elapsed();
    let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(
        errors.is_empty(),
        "{} of {CYCLES} cycles failed:\n{}",
        errors.len(),
        errors.join("\n")
    );

    let after = state.snapshots();
    let leaked: Vec<String> = after
        .iter()
        .zip(&before)
        .flat_map(|(a, b)| a.leaked_since(b))
        .collect();
    let lost: Vec<String> = before
        .iter()
        .zip(&after)
        .flat_map(|(b, a)| b.leaked_since(a))
        .collect();
    assert!(
        leaked.is_empty(),
        "left behind after {CYCLES} cycles:\n{}",
        leaked.join("\n")
    );
    assert!(
        lost.is_empty(),
        "standing pods lost state:\n{}",
        lost.join("\n")
    );
    for snap in &after {
        assert_eq!(snap.leases.len(), 1, "{snap:?}");
        assert_eq!(snap.saved.len(), 1, "{snap:?}");
    }
    let matrix = state.wait_full_matrix(Duration::from_secs(5));
    assert!(matrix.is_full(), "{}", matrix.render());
    eprintln!("{CYCLES} pod ADD/DEL cycles on 3 nodes, 3 in parallel: {elapsed:?}");
}

/// The leak check itself: a pod that is never deleted shows up as a veth, a host-local lease, a saved
/// delegate config, a cached result and (with a host port) portmap rules; after its DEL none of those remain.
#[test]
fn leak_check_reports_a_pod_that_was_never_deleted() {
    let mut cluster = Cluster::up(Options {
        prefix: "e2el".into(),
        nodes: 1,
        pods_per_node: 0,
        ..Options::default()
    });
    // Warm-up cycle so the bridge and portmap's base chains exist before the baseline.
    cluster
        .pod_cycle(0, Some(31999))
        .unwrap_or_else(|e| panic!("{e}"));
    let before = cluster.state().snapshot("node1");
    let pod = cluster
        .add_pod(0, Some(30080))
        .unwrap_or_else(|e| panic!("{e}"));
    let state = cluster.state();
    let leaked = state.snapshot("node1").leaked_since(&before);
    for what in [
        "veth",
        "host-local lease",
        "saved delegate config",
        "cached result",
        "rule",
    ] {
        assert!(
            leaked
                .iter()
                .any(|l| l.starts_with(&format!("node1: {what} "))),
            "{what} not reported: {leaked:#?}"
        );
    }
    cluster.pods[pod].del().unwrap_or_else(|e| panic!("{e}"));
    let leaked = cluster.state().snapshot("node1").leaked_since(&before);
    assert!(leaked.is_empty(), "{leaked:#?}");
}

/// The throughput check gives up on a peer that went silent (a report run while the cluster goes away)
/// instead of waiting on TCP's retries: its iperf3 client is bounded by a connect timeout and a deadline.
#[test]
fn throughput_to_a_silent_peer_fails_within_its_deadline() {
    let ns = twill_tests::netns::Netns::new("e2eiperf");
    // Frames to the peer's (made-up, permanent) MAC are dropped by the other end of the veth: no answer, no
    // reset, no neighbour failure, like a peer whose namespace was deleted.
    ns.exec_ok(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    ns.exec_ok(&["ip", "addr", "add", "10.250.0.1/24", "dev", "v0"]);
    ns.exec_ok(&["ip", "link", "set", "v0", "up"]);
    ns.exec_ok(&["ip", "link", "set", "v1", "up"]);
    ns.exec_ok(&[
        "ip",
        "neigh",
        "add",
        "10.250.0.2",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
    let start = Instant::now();
    let result = twill_tests::e2e::iperf(
        ns.name(),
        ns.name(),
        std::net::Ipv4Addr::new(10, 250, 0, 2),
        1,
    );
    let took = start.elapsed();
    assert!(result.is_err(), "{result:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}: {result:?}");
}
