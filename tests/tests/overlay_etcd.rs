//! twilld against a real etcd: outages, broken and compacted watches, lease renewal, loss and reservations,
//! races for subnets, TLS and authentication. The data plane side is in `overlay.rs`.

mod overlay_support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use overlay_support::*;
use twill_tests::cluster::{wait_until, Node, Switch, Twilld, TwilldArgs};
use twill_tests::etcd::Etcd;

/// A switch running etcd with the stock network config, and node 1 whose twilld (resync 1 s, `extra` flags)
/// holds its lease; the daemon's arguments come along for a restart. Keep every part bound: each is removed
/// when dropped (in reverse order of the tuple).
fn one_leased_node(extra: Vec<String>) -> (Switch, Etcd, TwilldArgs, Node, Twilld) {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra,
    };
    let n = switch.add_node(1);
    let d = n.start_twilld(&args);
    assert!(
        wait_until(READY, || n.subnet().is_some()),
        "{}",
        d.log_text()
    );
    (switch, etcd, args, n, d)
}

#[test]
fn etcd_outage_of_30s_loses_no_route_and_a_later_joiner_is_learned() {
    let mut c = Cluster::new(3, 1.0);
    c.wait_mesh(&[0, 1, 2], Duration::from_secs(10));
    let pods: Vec<_> = c.nodes.iter().map(|n| n.add_pod(2)).collect();
    let ping = pods[0].ping_in_background(pods[2].ip, 150, 0.2);
    c.etcd.stop();
    let outage = Instant::now();
    // The node stays ready (its data plane works) but says etcd is unreachable.
    assert!(
        wait_until(Duration::from_secs(15), || curl(
            &c.nodes[0],
            HEALTH_PORT,
            "/readyz"
        )
        .1
        .contains("etcd unreachable")),
        "/readyz does not mention the outage: {:?}",
        curl(&c.nodes[0], HEALTH_PORT, "/readyz")
    );
    assert_eq!(curl(&c.nodes[0], HEALTH_PORT, "/readyz").0, "200");
    assert!(curl(&c.nodes[0], HEALTH_PORT, "/metrics")
        .1
        .contains("\ntwilld_etcd_up 0\n"));
    while outage.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            c.all_know_each_other(&[0, 1, 2]),
            "a route was lost during the etcd outage\n{}",
            c.dump()
        );
        for d in c.daemons.iter_mut() {
            assert!(
                d.is_running(),
                "twilld exited during the etcd outage:\n{}",
                d.log_text()
            );
        }
    }
    c.etcd.restart();
    let (sent, received) = ping.finish();
    assert_eq!(
        sent, received,
        "pod traffic was lost during the etcd outage"
    );
    assert!(
        c.daemons[0].log_text().contains("etcd"),
        "the outage is not logged"
    );

    let d = c.join();
    c.wait_mesh(&[0, 1, 2, d], Duration::from_secs(15));
}

#[test]
fn lease_deleted_by_hand_is_reacquired_with_the_same_subnet() {
    let c = Cluster::new(2, 1.0);
    let (net, _) = c.nodes[0].subnet().unwrap_or_else(|| unreachable!());
    let key = format!("{SUBNETS}{net}-24");
    let before = c.etcd.get(&key);
    c.etcd.del(&key);
    assert!(
        wait_until(Duration::from_secs(5), || c.etcd.get(&key).is_some()),
        "lease not re-acquired\n{}",
        c.dump()
    );
    assert_eq!(c.etcd.get(&key), before);
    c.wait_mesh(&[0, 1], Duration::from_secs(5));
}

#[test]
fn reservation_without_lease_is_honoured() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0"}"#,
    );
    // 10.244.1.0/24 reserved for 10.250.0.2 (flannel's reservation: a key without TTL).
    let reserved = r#"{"PublicIP":"10.250.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:11:22:33:44:55"}}"#;
    etcd.put(&format!("{SUBNETS}10.244.1.0-24"), reserved);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: Vec::new(),
    };
    let n1 = switch.add_node(1);
    let mut d1 = n1.start_twilld(&args);
    assert!(
        wait_until(READY, || n1.subnet().is_some()),
        "{}",
        d1.log_text()
    );
    assert_eq!(
        n1.subnet(),
        Some((Ipv4Addr::new(10, 244, 2, 0), 24)),
        "the reserved subnet was taken"
    );
    let n2 = switch.add_node(2);
    let mut d2 = n2.start_twilld(&args);
    assert!(
        wait_until(READY, || n2.subnet().is_some()),
        "{}",
        d2.log_text()
    );
    assert_eq!(
        n2.subnet(),
        Some((Ipv4Addr::new(10, 244, 1, 0), 24)),
        "the owner did not get its reservation"
    );
    // The reservation stays a key without lease: `etcdctl get -w json` shows no lease field.
    let out = etcd.ctl(&["get", "-w", "json", &format!("{SUBNETS}10.244.1.0-24")]);
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        !json.contains("\"lease\""),
        "reservation got a lease: {json}"
    );
    d1.terminate();
    d2.terminate();
}

#[test]
fn etcd_fixture_serves_host_loopback_and_survives_restart() {
    let mut etcd = Etcd::start();
    etcd.put("/twill/test", "v1");
    etcd.put_with_ttl("/twill/ttl", "v2", 60);
    etcd.restart();
    assert_eq!(etcd.get("/twill/test").as_deref(), Some("v1"));
    assert_eq!(etcd.get_prefix("/twill/").len(), 2);
    etcd.del("/twill/test");
    assert_eq!(etcd.get("/twill/test"), None);
}

#[test]
fn compacted_watch_revision_triggers_a_full_relist() {
    let mut c = Cluster::new(2, 30.0);
    c.wait_mesh(&[0, 1], Duration::from_secs(10));
    let n = &c.nodes[0];
    // Cut node 1 off etcd (reset on send, drop on receive) so its watch breaks and falls behind.
    for cmd in [
        "add table inet twtest",
        "add chain inet twtest out { type filter hook output priority 0; }",
        "add rule inet twtest out tcp dport 2379 reject with tcp reset",
        "add chain inet twtest in { type filter hook input priority 0; }",
        "add rule inet twtest in tcp sport 2379 drop",
    ] {
        let out = n.exec(&["sh", "-c", &format!("nft '{cmd}'")]);
        assert!(
            out.status.success(),
            "nft {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        wait_until(Duration::from_secs(15), || std::fs::read_to_string(
            n.log_file()
        )
        .unwrap_or_default()
        .contains("lease watch broken")),
        "watch did not notice the cut\n{}",
        c.dump()
    );
    // Meanwhile: a node joins, node 2's lease goes, and history is compacted.
    c.etcd.put_with_ttl(
        &format!("{SUBNETS}10.244.201.0-24"),
        &flannel_lease("10.250.0.201", "0a:00:00:00:02:01"),
        600,
    );
    let (gone, _) = c.nodes[1].subnet().unwrap_or_else(|| unreachable!());
    let gone_mac = c.mac(1);
    c.daemons[1].terminate(); // else it would take its subnet back at once
    c.etcd.del(&format!("{SUBNETS}{gone}-24"));
    let status = c.etcd.ctl(&["endpoint", "status", "-w", "json"]);
    let json = String::from_utf8_lossy(&status.stdout);
    let rev: u64 = json
        .split("\"revision\":")
        .nth(1)
        .and_then(|s| s.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {json}"));
    assert!(c.etcd.ctl(&["compact", &rev.to_string()]).status.success());
    n.exec(&["nft", "delete", "table", "inet", "twtest"]);

    let fresh = Ipv4Addr::new(10, 244, 201, 0);
    assert!(
        wait_until(Duration::from_secs(15), || n.has_peer(
            fresh,
            24,
            "0a:00:00:00:02:01",
            Ipv4Addr::new(10, 250, 0, 201)
        ) && !n
            .has_any_trace_of(gone, &gone_mac)),
        "node 1 did not catch up after the compaction\n{}",
        c.dump()
    );
    assert!(
        std::fs::read_to_string(n.log_file())
            .unwrap_or_default()
            .contains("re-listing"),
        "{}",
        c.dump()
    );
}

#[test]
fn etcd_down_at_start_is_waited_for_and_readyz_says_why() {
    let switch = Switch::new();
    let mut etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    etcd.stop();
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: vec!["--healthz-port=8471".into()],
    };
    let n = switch.add_node(1);
    let mut d = n.start_twilld(&args);
    assert!(wait_until(Duration::from_secs(5), || curl(
        &n, 8471, "/readyz"
    )
    .0 == "503"));
    let (_, why) = curl(&n, 8471, "/readyz");
    assert!(
        why.contains("etcd unreachable") && why.contains("no subnet lease"),
        "{why}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        d.is_running(),
        "twilld gave up while etcd was down:\n{}",
        d.log_text()
    );
    etcd.restart();
    assert!(
        wait_until(READY, || n.subnet().is_some()),
        "{}",
        d.log_text()
    );
    assert!(wait_until(Duration::from_secs(5), || curl(
        &n, 8471, "/readyz"
    )
    .0 == "200"));
}

#[test]
fn short_lease_is_renewed_before_it_expires() {
    let (_switch, etcd, _args, n, d) = one_leased_node(vec!["--subnet-lease-ttl=6".into()]);
    let (net, _) = n.subnet().unwrap_or_else(|| unreachable!());
    let key = format!("{SUBNETS}{net}-24");
    // Three TTLs later the key is still there: it was renewed in time, every time.
    let until = Instant::now() + Duration::from_secs(18);
    while Instant::now() < until {
        assert!(etcd.get(&key).is_some(), "lease expired:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn subnet_taken_by_another_node_is_reported_and_taken_back_once_free() {
    let (_switch, etcd, _args, n, d) = one_leased_node(vec!["--healthz-port=8471".into()]);
    assert!(wait_until(Duration::from_secs(5), || curl(
        &n, 8471, "/readyz"
    )
    .0 == "200"));
    let (net, _) = n.subnet().unwrap_or_else(|| unreachable!());
    let key = format!("{SUBNETS}{net}-24");
    let ours = etcd.get(&key).unwrap_or_default();

    etcd.put(&key, &flannel_lease("10.250.0.9", "0a:00:00:00:09:09"));
    assert!(
        wait_until(Duration::from_secs(5), || curl(&n, 8471, "/readyz").0
            == "503"),
        "{}",
        d.log_text()
    );
    let (_, why) = curl(&n, 8471, "/readyz");
    assert!(why.contains("subnet lease lost"), "{why}");
    assert!(curl(&n, 8471, "/metrics")
        .1
        .contains("\ntwilld_lease_lost 1\n"));
    assert!(d.log_text().contains("no longer ours"), "{}", d.log_text());

    etcd.del(&key);
    assert!(
        wait_until(Duration::from_secs(5), || etcd.get(&key).as_deref()
            == Some(ours.as_str())),
        "subnet not taken back:\n{}",
        d.log_text()
    );
    assert!(wait_until(Duration::from_secs(5), || curl(
        &n, 8471, "/readyz"
    )
    .0 == "200"));
}

#[test]
fn etcd_username_and_password_are_used() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    let admin = |args: &[&str]| {
        let mut all = vec!["--user", "root:s3cret"];
        all.extend_from_slice(args);
        let out = etcd.ctl(&all);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let out = etcd.ctl(&[
        "user",
        "add",
        "root",
        "--new-user-password=s3cret",
        "--interactive=false",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(etcd.ctl(&["auth", "enable"]).status.success());
    admin(&["put", CONFIG_KEY, NET_CONFIG]);
    let n = switch.add_node(1);
    let mut args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: Vec::new(),
    };
    // Without credentials nothing can be read: the daemon waits, writes nothing.
    let mut anonymous = n.start_twilld(&args);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        n.subnet().is_none() && anonymous.is_running(),
        "{}",
        anonymous.log_text()
    );
    anonymous.terminate();
    args.extra = vec![
        "--etcd-username=root".into(),
        "--etcd-password=s3cret".into(),
    ];
    let d = n.start_twilld(&args);
    assert!(
        wait_until(READY, || n.subnet().is_some()),
        "{}",
        d.log_text()
    );
}

#[test]
fn etcd_over_tls_with_client_certificates() {
    use twill_tests::cluster::SWITCH_IP;
    use twill_tests::etcd::EtcdTls;
    let certs = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let tls = EtcdTls::generate(certs.path(), &[SWITCH_IP]);
    let switch = Switch::new();
    let etcd = Etcd::start_in_tls(&switch.ns, SWITCH_IP, tls.clone());
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let n = switch.add_node(1);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: vec![
            format!("--etcd-cafile={}", tls.ca.display()),
            format!("--etcd-certfile={}", tls.client_cert.display()),
            format!("--etcd-keyfile={}", tls.client_key.display()),
        ],
    };
    assert!(args.etcd.starts_with("https://"));
    let d = n.start_twilld(&args);
    assert!(
        wait_until(READY, || n.subnet().is_some()),
        "{}",
        d.log_text()
    );
    assert_eq!(etcd.get_prefix(SUBNETS).len(), 1);
}

#[test]
fn simultaneous_joins_never_share_a_subnet_and_the_range_can_run_out() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    // Exactly 6 subnets: 10.244.1.0 .. 10.244.6.0.
    etcd.put(
        CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.6.0"}"#,
    );
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 2.0,
        extra: Vec::new(),
    };
    let nodes: Vec<Node> = (1..=7).map(|i| switch.add_node(i)).collect();
    // All seven race for six subnets at the same moment.
    let daemons: Vec<Twilld> = nodes.iter().map(|n| n.start_twilld(&args)).collect();
    assert!(
        wait_until(READY, || nodes
            .iter()
            .filter(|n| n.subnet().is_some())
            .count()
            == 6),
        "six nodes did not get subnets"
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut subnets: Vec<_> = nodes.iter().filter_map(|n| n.subnet()).collect();
    assert_eq!(
        subnets.len(),
        6,
        "a seventh node got a subnet out of a range of six"
    );
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 6, "two nodes share a subnet");
    assert_eq!(etcd.get_prefix(SUBNETS).len(), 6);
    let loser = nodes
        .iter()
        .position(|n| n.subnet().is_none())
        .unwrap_or_else(|| unreachable!());
    let log = daemons[loser].log_text();
    assert!(log.contains("out of subnets"), "{log}");
}

#[test]
fn after_the_lease_expired_a_restart_takes_the_subnet_from_subnet_env() {
    let (_switch, etcd, args, n, mut d) = one_leased_node(vec!["--subnet-lease-ttl=5".into()]);
    let before = n.subnet();
    let (net, _) = before.unwrap_or_else(|| unreachable!());
    let key = format!("{SUBNETS}{net}-24");
    d.terminate();
    // The node stays down past its TTL: etcd expires the lease (docs/architecture.md, flannel contracts, etcd layout).
    assert!(
        wait_until(Duration::from_secs(15), || etcd.get(&key).is_none()),
        "lease did not expire"
    );
    // Nothing in etcd names this node any more: only subnet.env remembers its subnet (flanneld reads the previous
    // subnet from it, docs/architecture.md, flannel contracts).
    let d2 = n.start_twilld(&args);
    assert!(
        wait_until(READY, || etcd.get(&key).is_some()),
        "previous subnet not re-leased:\n{}",
        d2.log_text()
    );
    assert_eq!(n.subnet(), before);
}
