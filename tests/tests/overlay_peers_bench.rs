//! twilld at many peers; ignored in normal runs, run by `scripts/bench/overlay.sh` (release binaries,
//! `TWILL_BIN_DIR=target/release`). One node, `TWILL_BENCH_PEERS` (default 10,000) peer leases written to etcd
//! in transactions of 128 while the daemon runs:
//!
//! * programming: from the first write until the last peer's route is on `flannel.1`;
//! * idle resyncs: CPU time of twilld (utime + stime from /proc/<pid>/stat) over `TWILL_BENCH_RESYNCS`
//!   (default 20) periods of `--resync=TWILL_BENCH_RESYNC_SECS` (default 1) with nothing changing, per resync;
//!   `TWILL_BENCH_FULL_EVERY` is passed as `--resync-full-every` when set (1 = every resync a full pass);
//! * removal: from one delete-range of all peer leases until no route is left on `flannel.1`.
//!
//! Everything runs in namespaces the benchmark creates; the peers' public IPs are never sent a packet.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use twill_tests::cluster::{wait_until, Switch, TwilldArgs};
use twill_tests::overlay_bench::{base64, cpu_ticks, etcd_http};

const SUBNETS: &str = "/coreos.com/network/subnets/";
// Nodes allocate from 10.1.0.0-10.1.255.0; peers are 10.200.0.0/24 upwards (keys "…/10.2…", apart from ours).
const CONFIG: &str =
    r#"{"Network":"10.0.0.0/8","SubnetLen":24,"SubnetMin":"10.1.0.0","SubnetMax":"10.1.255.0"}"#;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peer_lease(k: u32) -> (String, String) {
    let subnet = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + (k << 8));
    let key = format!("{SUBNETS}{subnet}-24");
    // Nothing is ever sent to these public IPs: the benchmark sends no traffic through the overlay.
    let public = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + k);
    let value = format!(
        r#"{{"PublicIP":"{public}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:bb:00:{:02x}:{:02x}:{:02x}"}}}}"#,
        (k >> 16) & 0xff,
        (k >> 8) & 0xff,
        k & 0xff
    );
    (key, value)
}

#[test]
#[ignore = "benchmark: run scripts/bench/overlay.sh"]
fn many_peers_benchmark() {
    let peers: u32 = env_or("TWILL_BENCH_PEERS", 10_000);
    let resync: f64 = env_or("TWILL_BENCH_RESYNC_SECS", 1.0);
    let resyncs: u32 = env_or("TWILL_BENCH_RESYNCS", 20);
    let full_every: Option<u32> = std::env::var("TWILL_BENCH_FULL_EVERY")
        .ok()
        .and_then(|v| v.parse().ok());

    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put("/coreos.com/network/config", CONFIG);
    let args = TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: resync,
        extra: full_every
            .map(|n| format!("--resync-full-every={n}"))
            .into_iter()
            .collect(),
    };
    let node = switch.add_node(1);
    let mut daemon = node.start_twilld(&args);
    node.wait_ready(Duration::from_secs(60));
    let pid = daemon.pid().unwrap_or_else(|| unreachable!());
    let routes = || {
        node.ip(&["route", "show", "dev", "flannel.1"])
            .lines()
            .count()
    };

    let (t0, p0) = (Instant::now(), cpu_ticks(pid));
    for batch in (0..peers).collect::<Vec<_>>().chunks(128) {
        let ops: Vec<String> = batch
            .iter()
            .map(|&k| {
                let (key, value) = peer_lease(k);
                format!(
                    r#"{{"requestPut":{{"key":"{}","value":"{}"}}}}"#,
                    base64(key.as_bytes()),
                    base64(value.as_bytes())
                )
            })
            .collect();
        etcd_http(
            &switch.ns,
            "/v3/kv/txn",
            &format!(r#"{{"success":[{}]}}"#, ops.join(",")),
        );
    }
    let written = t0.elapsed();
    assert!(
        wait_until(Duration::from_secs(300), || routes() == peers as usize),
        "{peers} peers not programmed: {} routes\n{}",
        routes(),
        daemon.log_text()
    );
    let (programmed, program_cpu) = (t0.elapsed(), (cpu_ticks(pid) - p0) as f64 / 100.0);

    // Let the notifications of the programming settle (they make the next resync or two full ones).
    std::thread::sleep(Duration::from_secs_f64(resync * 3.0));
    let c0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs_f64(resync * f64::from(resyncs)));
    let idle_cpu = (cpu_ticks(pid) - c0) as f64 / 100.0;

    let (t1, r0) = (Instant::now(), cpu_ticks(pid));
    etcd_http(
        &switch.ns,
        "/v3/kv/deleterange",
        &format!(
            r#"{{"key":"{}","range_end":"{}"}}"#,
            base64(format!("{SUBNETS}10.2").as_bytes()),
            base64(format!("{SUBNETS}10.3").as_bytes())
        ),
    );
    assert!(
        wait_until(Duration::from_secs(300), || routes() == 0),
        "peers not removed: {} routes left",
        routes()
    );
    let (removed, remove_cpu) = (t1.elapsed(), (cpu_ticks(pid) - r0) as f64 / 100.0);
    let text = format!(
        "twilld at {peers} peers: programmed in {:.2} s ({program_cpu:.2} s CPU; etcd writes took {:.2} s), \
         removed in {:.2} s ({remove_cpu:.2} s CPU); idle: {idle_cpu:.2} s CPU over {resyncs} resyncs of {resync} s = {:.1} ms per resync (--resync-full-every={})",
        programmed.as_secs_f64(),
        written.as_secs_f64(),
        removed.as_secs_f64(),
        idle_cpu * 1e3 / f64::from(resyncs),
        full_every.map_or("default".to_string(), |n| n.to_string())
    );
    println!("\n{text}");
    if let Ok(path) = std::env::var("TWILL_BENCH_OUT") {
        let _ = std::fs::write(path, format!("{text}\n"));
    }
    daemon.terminate();
}
