//! twilld benchmark; ignored in normal runs, driven by `scripts/bench/overlay.sh`
//! against release binaries (`TWILL_BIN_DIR=target/release`). Everything runs in test-created namespaces.
//!
//! * convergence: time from a new node's lease write in etcd to its route (programmed last, after the
//!   neighbour and FDB entries, docs/architecture.md, flannel contracts, VXLAN programming) being present on
//!   every node, seen through `ip monitor route` in each node; p50/p99 for each cluster size in
//!   `TWILL_BENCH_SIZES` (default "10,30");
//! * idle cost of one daemon over `TWILL_BENCH_IDLE_SECS` (default 60): RSS, CPU time, wake-ups;
//! * pod-to-pod iperf3 over twilld's overlay vs a hand-built VXLAN path with the same MTU vs the raw underlay,
//!   and the IP fragment counters (must stay 0).

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use twill_tests::cluster::{wait_until, Node, Pod, Switch, Twilld, TwilldArgs};
use twill_tests::dual_stack::underlay_ip6;
use twill_tests::etcd::Etcd;
use twill_tests::hand_wired::HandVxlan;
use twill_tests::netns::Netns;
use twill_tests::overlay_bench::{
    abba_medians, add_and_delete_keyed, add_and_delete_lease_value, append_bench_out,
    bench_samples, cpu_ticks, dual_stack_lease, env_or, iperf_gbps, iperf_pinning, percentile,
    proc_field, vxlan_lease, RouteMonitors, ABBA_ROUNDS,
};

// Nodes allocate from 10.244.1-100; benchmark leases use 10.244.200+ (inside Network, never allocated).
const CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.100.0"}"#;

struct Cluster {
    daemons: Vec<Twilld>,
    nodes: Vec<Node>,
    _etcd: Etcd,
    switch: Switch,
}

fn cluster(size: u8, resync: f64) -> Cluster {
    cluster_with(size, resync, CONFIG)
}

/// Peer routes on a node: on `flannel.1` for VXLAN, via the peers on `eth0` for host-gw.
fn peer_routes(n: &Node, host_gw: bool) -> usize {
    if host_gw {
        n.ip(&["route", "show", "dev", "eth0"])
            .lines()
            .filter(|l| l.starts_with("10.244.") && l.contains(" via "))
            .count()
    } else {
        n.ip(&["route", "show", "dev", "flannel.1"]).lines().count()
    }
}

fn cluster_with(size: u8, resync: f64, config: &str) -> Cluster {
    let host_gw = config.contains("host-gw");
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put("/coreos.com/network/config", config);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: resync,
        extra: Vec::new(),
    };
    let nodes: Vec<Node> = (1..=size).map(|i| switch.add_node(i)).collect();
    let daemons: Vec<Twilld> = nodes.iter().map(|n| n.start_twilld(&args)).collect();
    let all_ready = wait_until(Duration::from_secs(60), || {
        nodes.iter().all(|n| n.subnet().is_some())
    });
    assert!(all_ready, "cluster of {size} not ready");
    let peers = usize::from(size) - 1;
    let meshed = wait_until(Duration::from_secs(60), || {
        nodes.iter().all(|n| peer_routes(n, host_gw) == peers)
    });
    assert!(meshed, "cluster of {size} did not converge");
    Cluster {
        daemons,
        nodes,
        _etcd: etcd,
        switch,
    }
}

/// Lease add and delete convergence, plus how long etcd itself took to acknowledge each put (its WAL fsync
/// is part of the end-to-end time, and on a shared disk it is where the tail comes from).
fn convergence(c: &Cluster, samples: u32) -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    convergence_of(c, samples, vxlan_lease)
}

/// Convergence with the lease value `lease(k)` for the k-th benchmark lease.
fn convergence_of(
    c: &Cluster,
    samples: u32,
    lease: impl Fn(u32) -> String,
) -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let mon = RouteMonitors::start(c.nodes.iter().map(|n| &n.ns));
    let (mut add, mut del, mut put) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..samples {
        let t = add_and_delete_lease_value(&c.switch.ns, &mon, k, &lease(k));
        put.push(t.put_ack);
        add.push(t.add);
        del.push(t.delete);
    }
    add.sort();
    del.sort();
    put.sort();
    (add, del, put)
}

fn idle_cost(pid: u32, secs: u64) -> String {
    let ticks = 100.0; // USER_HZ
    let (c0, v0, n0) = (
        cpu_ticks(pid),
        proc_field(pid, "status", "voluntary_ctxt_switches:"),
        proc_field(pid, "status", "nonvoluntary_ctxt_switches:"),
    );
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, v1, n1) = (
        cpu_ticks(pid),
        proc_field(pid, "status", "voluntary_ctxt_switches:"),
        proc_field(pid, "status", "nonvoluntary_ctxt_switches:"),
    );
    let rss = proc_field(pid, "status", "VmRSS:");
    let hwm = proc_field(pid, "status", "VmHWM:");
    format!(
        "idle {secs} s: RSS {:.1} MB (peak {:.1} MB), CPU {:.2} s, {:.2} wake-ups/s",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        (c1 - c0) as f64 / ticks,
        ((v1 + n1) - (v0 + n0)) as f64 / secs as f64
    )
}

fn frag_counters(ns: &Netns) -> u64 {
    let snmp = String::from_utf8_lossy(&ns.exec(&["cat", "/proc/net/snmp"]).stdout).into_owned();
    let ip: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Ip:")).collect();
    if ip.len() < 2 {
        return 0;
    }
    let names: Vec<&str> = ip[0].split_whitespace().collect();
    let vals: Vec<&str> = ip[1].split_whitespace().collect();
    names
        .iter()
        .zip(vals)
        .filter(|(n, _)| matches!(**n, "FragCreates" | "ReasmReqds" | "FragOKs"))
        .map(|(_, v)| v.parse::<u64>().unwrap_or(0))
        .sum()
}

/// Two nodes wired by hand exactly like flannel's scheme (vxlan, .0/32, neighbour, FDB, onlink route).
fn hand_built_pair(switch: &Switch, mtu: u32) -> (Node, Node, Pod, Pod) {
    let a = switch.add_node(101);
    let b = switch.add_node(102);
    let macs = ["0a:cc:00:00:00:01", "0a:cc:00:00:00:02"];
    let subnet = |i: usize| -> IpNet {
        IpNet::from(
            Ipv4Net::new(Ipv4Addr::new(10, 99, i as u8 + 1, 0), 24)
                .unwrap_or_else(|_| unreachable!()),
        )
    };
    for (i, n) in [&a, &b].into_iter().enumerate() {
        let peer = if i == 0 { &b } else { &a };
        n.wire_vxlan_by_hand(&HandVxlan {
            dev: "vx0",
            mac: macs[i],
            mtu,
            local: n.underlay_ip.into(),
            subnet: subnet(i),
            peer_subnet: subnet(1 - i),
            peer_mac: macs[1 - i],
            peer_underlay: peer.underlay_ip.into(),
        });
        std::fs::write(
            n.subnet_file(),
            format!("FLANNEL_NETWORK=10.99.0.0/16\nFLANNEL_SUBNET=10.99.{}.1/24\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n", i + 1),
        )
        .unwrap_or_else(|e| panic!("writing subnet file: {e}"));
    }
    let pa = a.add_pod(2);
    let pb = b.add_pod(2);
    (a, b, pa, pb)
}

#[test]
#[ignore = "benchmark: run scripts/bench/overlay.sh"]
fn overlay_benchmark() {
    let sizes: Vec<u8> = env_or("TWILL_BENCH_SIZES", "10,30")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let samples = bench_samples();
    let idle_secs: u64 = env_or("TWILL_BENCH_IDLE_SECS", "60").parse().unwrap_or(60);
    let iperf_secs: u32 = env_or("TWILL_BENCH_IPERF_SECS", "5").parse().unwrap_or(5);
    let mut report = Vec::new();

    for (si, &size) in sizes.iter().enumerate() {
        let c = cluster(size, 10.0);
        let (add, del, put) = convergence(&c, samples);
        report.push(format!(
            "convergence {size} nodes ({samples} leases): add p50 {:.1} ms p99 {:.1} ms max {:.1} ms | delete p50 {:.1} ms p99 {:.1} ms | etcd put ack p50 {:.1} ms p99 {:.1} ms",
            percentile(&add, 0.5).as_secs_f64() * 1e3,
            percentile(&add, 0.99).as_secs_f64() * 1e3,
            add.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            percentile(&del, 0.5).as_secs_f64() * 1e3,
            percentile(&del, 0.99).as_secs_f64() * 1e3,
            percentile(&put, 0.5).as_secs_f64() * 1e3,
            percentile(&put, 0.99).as_secs_f64() * 1e3,
        ));
        eprintln!("{}", report.last().unwrap_or(&String::new()));
        if si == 0 && idle_secs > 0 {
            let pid = c.daemons[0].pid().unwrap_or_else(|| unreachable!());
            report.push(format!(
                "twilld ({size}-node cluster, --resync=10) {}",
                idle_cost(pid, idle_secs)
            ));
            eprintln!("{}", report.last().unwrap_or(&String::new()));
        }
    }

    if iperf_secs > 0 {
        let c = cluster(2, 10.0);
        let pa = c.nodes[0].add_pod(2);
        let pb = c.nodes[1].add_pod(2);
        assert!(wait_until(Duration::from_secs(5), || pa.can_reach(pb.ip)));
        let mtu = c.nodes[0].mtu().unwrap_or(1450);
        let (ha, hb, hpa, hpb) = hand_built_pair(&c.switch, mtu);
        assert!(
            wait_until(Duration::from_secs(5), || hpa.can_reach(hpb.ip)),
            "hand-built path broken"
        );
        let all: Vec<&Netns> = vec![
            &c.nodes[0].ns,
            &c.nodes[1].ns,
            &pa.ns,
            &pb.ns,
            &ha.ns,
            &hb.ns,
        ];
        let frags0: u64 = all.iter().map(|n| frag_counters(n)).sum();
        // Alternate the two paths (ABBA) and compare medians: the machine is shared, and a single
        // back-to-back pair mostly measures whoever else was busy at the time.
        let (twill, hand) = abba_medians(
            || iperf_gbps(&pb.ns, &pa.ns, pb.ip.into(), iperf_secs),
            || iperf_gbps(&hpb.ns, &hpa.ns, hpb.ip.into(), iperf_secs),
        );
        let raw = iperf_gbps(
            &c.nodes[1].ns,
            &c.nodes[0].ns,
            c.nodes[1].underlay_ip.into(),
            iperf_secs,
        );
        let frags: u64 = all.iter().map(|n| frag_counters(n)).sum::<u64>() - frags0;
        report.push(format!(
            "iperf3 {iperf_secs} s x{ABBA_ROUNDS} ABBA (medians, {}), pod MTU {mtu}: twilld overlay {twill:.2} Gbit/s, hand-built VXLAN {hand:.2} Gbit/s \
             (ratio {:.3}), raw underlay {raw:.2} Gbit/s; IP fragments created/reassembled: {frags}",
            iperf_pinning(),
            twill / hand
        ));
        eprintln!("{}", report.last().unwrap_or(&String::new()));
        drop((ha, hb, hpa, hpb));
    }
    write_report(&report);
}

/// Prints the report and appends it to `TWILL_BENCH_OUT` (the script empties it first: two benchmarks write).
fn write_report(report: &[String]) {
    let text = report.join("\n") + "\n";
    println!("\n{text}");
    append_bench_out(&text);
}

/// The host-gw backend: lease-to-route convergence, and pod-to-pod throughput against the raw underlay
/// (host-gw adds no encapsulation, so the pods' path should be the underlay's).
#[test]
#[ignore = "benchmark: run scripts/bench/overlay.sh"]
fn host_gw_benchmark() {
    const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.100.0","Backend":{"Type":"host-gw"}}"#;
    let sizes: Vec<u8> = env_or("TWILL_BENCH_SIZES", "10,30")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let samples = bench_samples();
    let iperf_secs: u32 = env_or("TWILL_BENCH_IPERF_SECS", "5").parse().unwrap_or(5);
    let mut report = Vec::new();
    for &size in &sizes {
        let c = cluster_with(size, 10.0, HOST_GW);
        // Peers on the nodes' segment (10.250.0.101-200: no node uses them; a route's gateway need not answer).
        let (add, del, put) = convergence_of(&c, samples, |k| {
            format!(
                r#"{{"PublicIP":"10.250.0.{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
                k % 100 + 101
            )
        });
        report.push(format!(
            "host-gw convergence {size} nodes ({samples} leases): add p50 {:.1} ms p99 {:.1} ms | delete p50 {:.1} ms p99 {:.1} ms | etcd put ack p50 {:.1} ms p99 {:.1} ms",
            percentile(&add, 0.5).as_secs_f64() * 1e3,
            percentile(&add, 0.99).as_secs_f64() * 1e3,
            percentile(&del, 0.5).as_secs_f64() * 1e3,
            percentile(&del, 0.99).as_secs_f64() * 1e3,
            percentile(&put, 0.5).as_secs_f64() * 1e3,
            percentile(&put, 0.99).as_secs_f64() * 1e3,
        ));
        eprintln!("{}", report.last().unwrap_or(&String::new()));
    }
    if iperf_secs > 0 {
        let c = cluster_with(2, 10.0, HOST_GW);
        let pa = c.nodes[0].add_pod(2);
        let pb = c.nodes[1].add_pod(2);
        assert!(wait_until(Duration::from_secs(5), || pa.can_reach(pb.ip)));
        let (na, nb) = (&c.nodes[0], &c.nodes[1]);
        let (pods, raw) = abba_medians(
            || iperf_gbps(&pb.ns, &pa.ns, pb.ip.into(), iperf_secs),
            || iperf_gbps(&nb.ns, &na.ns, nb.underlay_ip.into(), iperf_secs),
        );
        report.push(format!(
            "host-gw iperf3 {iperf_secs} s x{ABBA_ROUNDS} ABBA (medians, {}), pod MTU {}: pod to pod {pods:.2} Gbit/s, raw underlay {raw:.2} Gbit/s (ratio {:.3})",
            iperf_pinning(),
            c.nodes[0].mtu().unwrap_or(0),
            pods / raw
        ));
        eprintln!("{}", report.last().unwrap_or(&String::new()));
    }
    write_report(&report);
}

/// IPv6 over the dual-stack VXLAN backend: lease-to-route convergence of the IPv6 half of dual-stack leases
/// (route on `flannel-v6.1` of every node), for each cluster size in `TWILL_BENCH_SIZES`.
#[test]
#[ignore = "benchmark: run scripts/bench/overlay.sh"]
fn ipv6_benchmark() {
    const DUAL: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.100.0","EnableIPv6":true,"IPv6Network":"fd00:42::/56","IPv6SubnetMin":"fd00:42:0:1::","IPv6SubnetMax":"fd00:42:0:64::"}"#;
    let sizes: Vec<u8> = env_or("TWILL_BENCH_SIZES", "10,30")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let samples = bench_samples();
    let mut report = Vec::new();
    for &size in &sizes {
        let switch = Switch::new();
        let etcd = switch.start_etcd();
        etcd.put("/coreos.com/network/config", DUAL);
        let args = TwilldArgs {
            etcd: etcd.underlay_endpoint(),
            resync_secs: 10.0,
            extra: Vec::new(),
        };
        let nodes: Vec<Node> = (1..=size)
            .map(|i| {
                let n = switch.add_node(i);
                let a = format!("{}/64", underlay_ip6(i));
                n.ip(&["addr", "add", &a, "dev", "eth0", "nodad"]);
                n
            })
            .collect();
        let _daemons: Vec<Twilld> = nodes.iter().map(|n| n.start_twilld(&args)).collect();
        let peers = usize::from(size) - 1;
        // The device appears only once the node has its lease: until then, no routes.
        let v6_routes = |n: &Node| {
            String::from_utf8_lossy(
                &n.ns
                    .exec(&["ip", "-6", "route", "show", "dev", "flannel-v6.1"])
                    .stdout,
            )
            .lines()
            .filter(|l| l.contains(" via "))
            .count()
        };
        assert!(
            wait_until(Duration::from_secs(60), || nodes
                .iter()
                .all(|n| v6_routes(n) == peers)),
            "dual-stack cluster of {size} did not converge; node1:\n{}\n{}\n{}\n{:?}\n{}",
            nodes[0].ip(&["-6", "route"]),
            nodes[0].ip(&["-6", "neigh", "show", "dev", "flannel-v6.1"]),
            String::from_utf8_lossy(
                &nodes[0]
                    .ns
                    .exec(&["bridge", "fdb", "show", "dev", "flannel-v6.1"])
                    .stdout
            ),
            etcd.get_prefix("/coreos.com/network/subnets/")
                .iter()
                .map(|(k, _)| k.rsplit('/').next().unwrap_or_default().to_string())
                .collect::<Vec<_>>(),
            _daemons[0].log_text()
        );
        let mon = RouteMonitors::start(nodes.iter().map(|n| &n.ns));
        let (mut add, mut del) = (Vec::new(), Vec::new());
        for k in 0..samples {
            let (key, value, prefix) = dual_stack_lease(k);
            let t = add_and_delete_keyed(&switch.ns, &mon, &key, &value, &prefix);
            add.push(t.add);
            del.push(t.delete);
        }
        add.sort();
        del.sort();
        report.push(format!(
            "IPv6 (dual-stack VXLAN) convergence {size} nodes ({samples} leases): add p50 {:.1} ms p99 {:.1} ms | delete p50 {:.1} ms p99 {:.1} ms",
            percentile(&add, 0.5).as_secs_f64() * 1e3,
            percentile(&add, 0.99).as_secs_f64() * 1e3,
            percentile(&del, 0.5).as_secs_f64() * 1e3,
            percentile(&del, 0.99).as_secs_f64() * 1e3,
        ));
        eprintln!("{}", report.last().unwrap_or(&String::new()));
    }
    write_report(&report);
}
