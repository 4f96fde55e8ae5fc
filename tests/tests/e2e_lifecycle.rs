//! End-to-end cluster lifecycle: a node joins and one leaves, daemons restart, etcd restarts, a node
//! dies without cleanup — each followed by a full pod-to-pod matrix across the nodes that remain. Same library
//! as `twill-cluster` (`twill_tests::e2e`). Build first: `cargo build --workspace --bins`.

use std::time::Duration;

use twill_tests::cluster::wait_until;
use twill_tests::e2e::{Cluster, ClusterState, Options, SUBNETS_PREFIX};

fn assert_full_matrix(state: &ClusterState, cluster: &Cluster, pods: usize) {
    let matrix = state.wait_full_matrix(Duration::from_secs(15));
    assert!(
        matrix.is_full(),
        "unreachable: {:?}\n{}\n{}",
        matrix.failures(),
        matrix.render(),
        cluster.logs()
    );
    assert_eq!(
        matrix.reachable().1,
        pods * (pods - 1),
        "{}",
        matrix.render()
    );
}

#[test]
fn node_join_and_node_removal_are_each_followed_by_a_full_matrix() {
    let mut cluster = Cluster::up(Options {
        prefix: "e2ej".into(),
        nodes: 2,
        pods_per_node: 2,
        ..Options::default()
    });
    assert_full_matrix(&cluster.state(), &cluster, 4);

    // Join: a third node gets its own subnet, everyone learns it, its pods reach everybody.
    let joined = cluster.join_node();
    for _ in 0..2 {
        cluster
            .add_pod(joined, None)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let state = cluster.state();
    assert_eq!(state.leases().expect("leases").len(), 3);
    assert_full_matrix(&state, &cluster, 6);

    // Removal: node1's pods are deleted, its daemon stopped, its lease removed; the others drop its routes,
    // neighbours and FDB entries, and the remaining pods still form a full matrix.
    let leases = state.leases().expect("leases");
    let gone = state.nodes[0].clone();
    let lease = leases
        .iter()
        .find(|l| l.public_ip == gone.underlay_ip)
        .cloned()
        .unwrap_or_else(|| panic!("no lease for {}", gone.name));
    cluster.remove_node(0);
    let state = cluster.state();
    assert!(
        wait_until(Duration::from_secs(10), || state
            .nodes
            .iter()
            .all(|n| !ClusterState::node_has_trace_of(&n.ns, &lease))),
        "{} still programmed somewhere\n{}",
        gone.name,
        cluster.logs()
    );
    assert_eq!(state.leases().expect("leases").len(), 2);
    assert_full_matrix(&state, &cluster, 4);
}

#[test]
fn daemon_restart_on_every_node_keeps_subnets_and_macs_and_the_full_matrix() {
    let mut cluster = Cluster::up(Options {
        prefix: "e2er".into(),
        nodes: 3,
        pods_per_node: 2,
        ..Options::default()
    });
    let before = cluster.state().lease_table().expect("lease table");
    for i in 0..cluster.nodes.len() {
        cluster.restart_daemon(i);
    }
    let state = cluster.state();
    state
        .wait_mesh(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let after = state.lease_table().expect("lease table");
    let key = |rows: &[twill_tests::e2e::LeaseRow]| {
        let mut v: Vec<_> = rows
            .iter()
            .map(|r| (r.node.clone(), r.lease.subnet, r.lease.vtep_mac.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        key(&before),
        key(&after),
        "a restart changed a subnet or a VTEP MAC"
    );
    assert_full_matrix(&state, &cluster, 6);
}

#[test]
fn etcd_restart_is_followed_by_a_full_matrix_and_a_later_joiner_is_learned() {
    let mut cluster = Cluster::up(Options {
        prefix: "e2ee".into(),
        nodes: 2,
        pods_per_node: 2,
        resync_secs: 1.0,
        ..Options::default()
    });
    cluster.etcd.restart();
    assert_full_matrix(&cluster.state(), &cluster, 4);
    // The daemons' watches came back: a node joining after the restart is programmed everywhere.
    let joined = cluster.join_node();
    cluster
        .add_pod(joined, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_full_matrix(&cluster.state(), &cluster, 5);
}

#[test]
fn node_killed_without_cleanup_expires_and_the_others_drop_its_routes() {
    // Renewal happens at TTL/2 (the renew margin exceeds the TTL), leaving 4 s of slack on a loaded machine.
    const TTL: u64 = 8;
    let mut cluster = Cluster::up(Options {
        prefix: "e2ek".into(),
        nodes: 3,
        pods_per_node: 1,
        lease_ttl: Some(TTL),
        resync_secs: 1.0,
        ..Options::default()
    });
    let state = cluster.state();
    let dead = state.nodes[2].clone();
    let lease = state
        .leases()
        .expect("leases")
        .into_iter()
        .find(|l| l.public_ip == dead.underlay_ip)
        .unwrap_or_else(|| panic!("no lease for {}", dead.name));
    let key = format!("{SUBNETS_PREFIX}{}-{}", lease.subnet, lease.len);

    // twilld SIGKILLed: no cleanup, the lease stays until its TTL runs out (renewals stop).
    cluster.kill_daemon(2);
    assert!(
        cluster.etcd.get(&key).is_some(),
        "lease vanished at once, not by expiry"
    );
    assert!(
        wait_until(Duration::from_secs(TTL * 2 + 5), || cluster
            .etcd
            .get(&key)
            .is_none()),
        "lease {key} of the killed node did not expire"
    );
    let survivors = state.without_node(&dead.name);
    assert!(
        wait_until(Duration::from_secs(10), || survivors
            .nodes
            .iter()
            .all(|n| !ClusterState::node_has_trace_of(&n.ns, &lease))),
        "route/neighbour/FDB of the expired node left behind\n{}",
        cluster.logs()
    );
    // The live nodes kept renewing their short leases all along, and still reach each other.
    assert_eq!(
        survivors.leases().expect("leases").len(),
        2,
        "a live node's lease expired"
    );
    survivors
        .wait_mesh(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_full_matrix(&survivors, &cluster, 2);
}
