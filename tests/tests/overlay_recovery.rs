//! twilld under faults of its surroundings: an etcd that lost its data or went back to an older snapshot,
//! a flood of idle connections on the health port with few file descriptors, and invalid leases in etcd.

mod overlay_support;

use std::time::Duration;

use overlay_support::*;
use twill_tests::cluster::wait_until;

fn metric(c: &Cluster, i: usize, name: &str) -> Option<f64> {
    let (_, body) = curl(&c.nodes[i], HEALTH_PORT, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

const VANISHING: &str = "10.244.250.0";
const VANISHING_MAC: &str = "02:00:00:00:02:50";

/// Both nodes re-registered with their old subnets, no trace of the vanished lease, ready, and a new node
/// joining afterwards is learned by both.
fn assert_recovered(c: &mut Cluster, subnets: &[(std::net::Ipv4Addr, u8)]) {
    for (i, (net, _)) in subnets.iter().enumerate() {
        let key = format!("{SUBNETS}{net}-24");
        assert!(
            wait_until(Duration::from_secs(20), || c.etcd.get(&key).is_some()),
            "node {} did not re-register {key}\n{}",
            i + 1,
            c.dump()
        );
        assert!(
            wait_until(Duration::from_secs(10), || curl(
                &c.nodes[i],
                HEALTH_PORT,
                "/readyz"
            )
            .0 == "200"),
            "node {} not ready after the recovery: {:?}",
            i + 1,
            curl(&c.nodes[i], HEALTH_PORT, "/readyz")
        );
        assert_eq!(metric(c, i, "twilld_etcd_store_recovering"), Some(0.0));
        assert!(metric(c, i, "twilld_etcd_store_resets_total").is_some_and(|v| v >= 1.0));
        assert!(
            c.daemons[i].log_text().contains("etcd store went back"),
            "{}",
            c.daemons[i].log_text()
        );
    }
    let gone: std::net::Ipv4Addr = VANISHING.parse().unwrap_or_else(|_| unreachable!());
    assert!(
        wait_until(Duration::from_secs(10), || (0..2)
            .all(|i| !c.nodes[i].has_any_trace_of(gone, VANISHING_MAC))),
        "entries of a lease the store no longer has remain\n{}",
        c.dump()
    );
    assert_eq!(c.etcd.get_prefix(SUBNETS).len(), 2, "{}", c.dump());
    let d = c.join();
    c.wait_mesh(&[0, 1, d], Duration::from_secs(15));
}

fn two_nodes_and_a_lease_that_will_vanish() -> (Cluster, Vec<(std::net::Ipv4Addr, u8)>) {
    let c = Cluster::new(2, 1.0);
    c.wait_mesh(&[0, 1], Duration::from_secs(10));
    let subnets = vec![c.wait_ready(0), c.wait_ready(1)];
    (c, subnets)
}

fn put_vanishing(c: &Cluster) {
    c.etcd.put(
        &format!("{SUBNETS}{VANISHING}-24"),
        &flannel_lease("10.250.0.99", VANISHING_MAC),
    );
    let gone: std::net::Ipv4Addr = VANISHING.parse().unwrap_or_else(|_| unreachable!());
    assert!(wait_until(Duration::from_secs(5), || (0..2).all(|i| c
        .nodes[i]
        .has_peer(
            gone,
            24,
            VANISHING_MAC,
            "10.250.0.99".parse().unwrap_or_else(|_| unreachable!())
        ))));
}

#[test]
fn etcd_wiped_and_restarted_is_detected_and_every_node_re_registers() {
    let (mut c, subnets) = two_nodes_and_a_lease_that_will_vanish();
    put_vanishing(&c);
    // Revisions move well past what the new store will have when the nodes reconnect.
    for n in 0..20 {
        c.etcd.put("/coreos.com/network/unrelated", &n.to_string());
    }
    c.etcd.wipe_and_restart();
    // The new store has no network config yet: the nodes see the reset and say so until it is back.
    let mut seen = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (code, body) = curl(&c.nodes[0], HEALTH_PORT, "/readyz");
            if code == "503" && body.contains("etcd store reset") && body.contains("network config") {
                seen = Some(body);
            }
            seen.is_some()
        }),
        "/readyz does not report the store reset: {:?}\n{}",
        curl(&c.nodes[0], HEALTH_PORT, "/readyz"),
        c.dump()
    );
    assert!(
        wait_until(Duration::from_secs(5), || metric(
            &c,
            1,
            "twilld_etcd_store_recovering"
        ) == Some(1.0)),
        "{}",
        c.dump()
    );
    assert!(c.daemons[0].log_text().contains("waiting for the network config"));
    c.etcd.put(CONFIG_KEY, NET_CONFIG);
    assert_recovered(&mut c, &subnets);
}

#[test]
fn etcd_restored_from_an_older_snapshot_is_detected_and_every_node_re_registers() {
    let (mut c, subnets) = two_nodes_and_a_lease_that_will_vanish();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let snap = dir.path().join("etcd.snapshot");
    c.etcd.snapshot_save(&snap);
    // Written after the backup: gone after the restore.
    put_vanishing(&c);
    for n in 0..20 {
        c.etcd.put("/coreos.com/network/unrelated", &n.to_string());
    }
    c.etcd.restore_snapshot(&snap);
    assert_recovered(&mut c, &subnets);
}
