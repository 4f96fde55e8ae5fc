//! twilld's footprint on the node and its identity among nodes: it leaves directories it did not create as
//! they are, and nodes that share a name (cloned machines, namespaces of one host) still get distinct VTEP
//! MACs, with a duplicate MAC detected, reported and resolved by itself; a VXLAN device found at start-up (left
//! by flanneld or an earlier run) keeps its MAC unless another node's lease carries it.

mod overlay_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use overlay_support::*;
use twill_tests::cluster::wait_until;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn subnet_file_in_an_existing_sticky_world_writable_dir_leaves_its_mode_alone() {
    let mut c = Cluster::new(0, 1.0);
    let shared = tempfile::Builder::new()
        .prefix("twilld-1777-")
        .tempdir()
        .unwrap_or_else(|e| panic!("temp dir: {e}"));
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777))
        .unwrap_or_else(|e| panic!("chmod: {e}"));
    let file = shared.path().join("subnet.env");
    let node = c.switch.add_node(1);
    let mut args = c.args();
    args.extra.push(format!("--subnet-file={}", file.display()));
    c.nodes.push(node);
    c.daemons.push(c.nodes[0].start_twilld(&args));
    let read_subnet = || {
        std::fs::read_to_string(&file).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("FLANNEL_SUBNET=").map(str::to_string))
        })
    };
    assert!(
        wait_until(READY, || read_subnet().is_some()),
        "{} not written\n{}",
        file.display(),
        c.daemons[0].log_text()
    );
    assert_eq!(
        mode(shared.path()),
        0o1777,
        "twilld changed the mode of a directory it did not create"
    );
    let first = read_subnet().unwrap_or_default();

    // A lease change rewrites the file: the old subnet is now reserved for another node, so the restart
    // takes another one.
    assert_eq!(c.daemons[0].terminate(), Some(0));
    let (key, _) = c
        .etcd
        .get_prefix(SUBNETS)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no lease in etcd"));
    c.etcd.del(&key);
    c.etcd
        .put(&key, &flannel_lease("10.250.0.99", "02:00:00:00:00:99"));
    c.daemons[0] = c.nodes[0].start_twilld(&args);
    assert!(
        wait_until(READY, || read_subnet().is_some_and(|s| s != first)),
        "subnet.env not rewritten with a new subnet\n{}",
        c.daemons[0].log_text()
    );
    assert_eq!(
        mode(shared.path()),
        0o1777,
        "the rewrite changed the directory's mode"
    );
    assert_eq!(mode(&file), 0o644);
    drop(c);
    assert_eq!(mode(shared.path()), 0o1777);
}

/// Nodes 1–3 share one `--node-name`, node 4 has none (the hostname, shared with the host, is used).
fn cluster_of_namesakes() -> Cluster {
    let mut c = Cluster::new(0, 1.0);
    for i in 1..=4u8 {
        let node = c.switch.add_node(i);
        let mut args = c.args();
        // The last --node-name wins; an empty one means "not given".
        args.extra.push(
            if i < 4 {
                "--node-name=clone"
            } else {
                "--node-name="
            }
            .to_string(),
        );
        c.daemons.push(node.start_twilld(&args));
        c.nodes.push(node);
        c.wait_ready(usize::from(i) - 1);
    }
    c
}

#[test]
fn nodes_sharing_a_node_name_get_distinct_subnets_and_vtep_macs_and_a_full_pod_matrix() {
    let c = cluster_of_namesakes();
    let all = [0, 1, 2, 3];
    let subnets: Vec<_> = all.iter().map(|&i| c.nodes[i].subnet()).collect();
    let macs: Vec<_> = all.iter().map(|&i| c.mac(i)).collect();
    for i in 0..4 {
        for j in i + 1..4 {
            assert_ne!(
                subnets[i],
                subnets[j],
                "two namesakes share a subnet\n{}",
                c.dump()
            );
            assert_ne!(
                macs[i],
                macs[j],
                "two namesakes share a VTEP MAC\n{}",
                c.dump()
            );
        }
    }
    assert_eq!(c.etcd.get_prefix(SUBNETS).len(), 4, "{}", c.dump());
    c.wait_mesh(&all, Duration::from_secs(15));
    let pods: Vec<_> = c.nodes.iter().map(|n| n.add_pod(2)).collect();
    c.assert_pods_reach_each_other(&pods);
    for d in &c.daemons {
        assert!(
            !d.log_text().contains("VTEP MAC collision"),
            "{}",
            d.log_text()
        );
    }
}

fn metric(c: &Cluster, i: usize, name: &str) -> Option<f64> {
    let (_, body) = curl(&c.nodes[i], HEALTH_PORT, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_peer_lease_with_our_vtep_mac_is_detected_reported_and_resolved() {
    let c = Cluster::new(2, 1.0);
    c.wait_mesh(&[0, 1], Duration::from_secs(10));
    let ours = c.mac(0);
    // A flanneld-style lease (it never changes its MAC) on a higher address carrying node 1's MAC: node 1
    // waits for the other side to step away, reports, then steps away itself.
    let fake = format!("{SUBNETS}10.244.250.0-24");
    c.etcd.put(&fake, &flannel_lease("10.250.0.99", &ours));
    let mut seen_unready = None;
    let detected = wait_until(Duration::from_secs(10), || {
        let (code, body) = curl(&c.nodes[0], HEALTH_PORT, "/readyz");
        if code == "503" && body.contains("VTEP MAC collision") {
            seen_unready = Some(body);
        }
        seen_unready.is_some() && metric(&c, 0, "twilld_vtep_mac_collision") == Some(1.0)
    });
    assert!(
        detected,
        "collision not in /readyz and /metrics: {seen_unready:?}\n{}",
        c.dump()
    );
    let body = seen_unready.unwrap_or_default();
    assert!(
        body.contains(&ours) && body.contains("10.250.0.99"),
        "{body}"
    );
    assert!(
        c.daemons[0].log_text().contains(&format!(
            "our MAC {ours} is also in the lease of 10.244.250.0/24"
        )),
        "{}",
        c.daemons[0].log_text()
    );

    // Recovery without anyone's help: a new MAC on the device and in the lease, the peer follows.
    assert!(
        wait_until(Duration::from_secs(15), || c.nodes[0]
            .link_mac("flannel.1")
            .is_some_and(|m| m != ours)
            && curl(&c.nodes[0], HEALTH_PORT, "/readyz").0 == "200"),
        "collision not resolved\n{}",
        c.dump()
    );
    let new = c.mac(0);
    let (net, _) = c.nodes[0].subnet().unwrap_or_else(|| unreachable!());
    assert!(
        wait_until(Duration::from_secs(5), || c
            .etcd
            .get(&format!("{SUBNETS}{net}-24"))
            .is_some_and(|v| v.contains(&new))),
        "lease not re-published with {new}\n{}",
        c.dump()
    );
    c.wait_mesh(&[0, 1], Duration::from_secs(10));
    assert_eq!(metric(&c, 0, "twilld_vtep_mac_collision"), Some(0.0));
    assert_eq!(metric(&c, 0, "twilld_vtep_mac_changes_total"), Some(1.0));
    assert!(c.daemons[0].log_text().contains("collision resolved"));
    let pods = [c.nodes[0].add_pod(2), c.nodes[1].add_pod(2)];
    assert!(wait_until(Duration::from_secs(10), || pods[0]
        .can_reach(pods[1].ip)
        && pods[1].can_reach(pods[0].ip)));

    // Two other leases sharing one MAC: a warning (our own traffic is fine), visible until it is gone.
    let fake2 = format!("{SUBNETS}10.244.251.0-24");
    c.etcd.put(&fake2, &flannel_lease("10.250.0.98", &ours));
    assert!(
        wait_until(Duration::from_secs(5), || {
            let (code, body) = curl(&c.nodes[0], HEALTH_PORT, "/readyz");
            code == "200" && body.contains("peers share a VTEP MAC")
        }),
        "{:?}",
        curl(&c.nodes[0], HEALTH_PORT, "/readyz")
    );
    assert_eq!(metric(&c, 0, "twilld_peer_vtep_mac_duplicates"), Some(2.0));
    assert_eq!(
        c.mac(0),
        new,
        "a clash between others must not change our MAC"
    );
    c.etcd.del(&fake2);
    assert!(wait_until(Duration::from_secs(5), || !curl(
        &c.nodes[0],
        HEALTH_PORT,
        "/readyz"
    )
    .1
    .contains("peers share")));
}

#[test]
fn a_restart_next_to_a_lease_carrying_our_first_mac_keeps_the_mac_it_stepped_to() {
    let mut c = Cluster::new(2, 1.0);
    let first = c.mac(0);
    c.etcd.put(
        &format!("{SUBNETS}10.244.250.0-24"),
        &flannel_lease("10.250.0.99", &first),
    );
    assert!(wait_until(Duration::from_secs(15), || c.nodes[0]
        .link_mac("flannel.1")
        .is_some_and(|m| m != first)));
    let stepped = c.mac(0);
    assert_eq!(c.daemons[0].terminate(), Some(0));
    let args = c.args();
    c.daemons[0] = c.nodes[0].start_twilld(&args);
    c.wait_ready(0);
    c.wait_mesh(&[0, 1], Duration::from_secs(10));
    assert_eq!(
        c.mac(0),
        stepped,
        "the MAC flip-flopped across a restart\n{}",
        c.dump()
    );
    assert_eq!(metric(&c, 0, "twilld_vtep_mac_changes_total"), Some(0.0));
}

/// Creates, in node `n`, the `flannel.1` flanneld would have left there for the default config.
fn leftover_device(n: &twill_tests::cluster::Node, mac: &str) {
    let local = n.underlay_ip.to_string();
    n.ip(&[
        "link",
        "add",
        "flannel.1",
        "address",
        mac,
        "type",
        "vxlan",
        "id",
        "1",
        "dev",
        "eth0",
        "local",
        &local,
        "dstport",
        "8472",
        "nolearning",
    ]);
}

#[test]
fn a_device_found_at_start_keeps_its_mac_unless_another_node_leases_it() {
    let mut c = Cluster::new(1, 1.0);
    let kept = "0a:58:0a:00:00:02";
    let taken = "0a:58:0a:00:00:03";
    c.etcd.put(
        &format!("{SUBNETS}10.244.250.0-24"),
        &flannel_lease("10.250.0.99", taken),
    );
    for (index, mac) in [(2u8, kept), (3, taken)] {
        let node = c.switch.add_node(index);
        leftover_device(&node, mac);
        c.daemons.push(node.start_twilld(&c.args()));
        c.nodes.push(node);
        c.wait_ready(c.nodes.len() - 1);
    }
    let lease_mac = |i: usize| {
        let (net, len) = c.nodes[i].subnet().unwrap_or_else(|| unreachable!());
        c.etcd
            .get(&format!("{SUBNETS}{net}-{len}"))
            .unwrap_or_default()
    };
    assert_eq!(c.mac(1), kept, "{}", c.dump());
    assert!(lease_mac(1).contains(kept), "{}", c.dump());
    assert!(
        c.daemons[1]
            .log_text()
            .contains(&format!("keeping the VTEP MAC {kept}")),
        "{}",
        c.daemons[1].log_text()
    );
    // Another node's lease carries the leftover MAC: a derived one, on the device and in the lease.
    let derived = c.mac(2);
    assert_ne!(derived, taken, "{}", c.dump());
    assert!(lease_mac(2).contains(&derived), "{}", c.dump());
    assert!(
        c.daemons[2]
            .log_text()
            .contains(&format!("the VTEP MAC {taken} of the existing flannel.1")),
        "{}",
        c.daemons[2].log_text()
    );
    for d in &c.daemons[1..] {
        assert!(
            !d.log_text().contains("recreating it"),
            "the leftover device was not taken over\n{}",
            d.log_text()
        );
    }
    c.wait_mesh(&[0, 1, 2], Duration::from_secs(10));
    for d in &c.daemons {
        assert!(
            !d.log_text().contains("VTEP MAC collision"),
            "{}",
            d.log_text()
        );
    }
}
