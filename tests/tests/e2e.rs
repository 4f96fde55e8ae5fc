//! End-to-end: a whole cluster on one machine (issue 8) — etcd on an underlay switch, three nodes each running
//! twilld, pods added through the real libcni with the stock flannel + portmap conflist — checked the way an
//! operator would: lease table, pod-to-pod matrix across all nodes, host ports reachable from other nodes.
//!
//! Build first: `cargo build --workspace --bins`. The cluster library is `twill_tests::e2e`.

use std::time::Duration;

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
    // and subnet.env names the same subnet (gateway .1, flannel.md §8).
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
}
