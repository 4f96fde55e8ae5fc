//! host-local under concurrency and crashes: many ADD processes at once on a small pool, and
//! SIGKILL at random moments during ADD and DEL followed by GC with the true set of live attachments.

mod host_local_common;

use host_local_common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use twill_tests::rng::Rng;

#[test]
fn sixty_four_concurrent_adds_on_a_slash_26_get_distinct_addresses() {
    let net = TestNet::new(json!({"subnet": "10.60.0.0/26"}));
    let conf = Arc::new(net.conf.clone());
    let barrier = Arc::new(Barrier::new(64));
    let run_all = |command: &'static str| {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let (conf, barrier) = (conf.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    run_ours(command, &format!("pod{i}"), "eth0", &conf)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    };
    let outcomes = run_all("ADD");
    let mut got = BTreeSet::new();
    let mut failures = 0;
    for o in &outcomes {
        if o.success() {
            let r = o.assert_success();
            let addr = addresses(&r)[0].clone();
            assert!(got.insert(addr.clone()), "{addr} handed out twice");
        } else {
            let e = o.assert_any_error();
            assert!(
                e["msg"]
                    .as_str()
                    .unwrap()
                    .contains("no IP addresses available in range set 0"),
                "overflow must fail clearly: {e}"
            );
            failures += 1;
        }
    }
    // A /26 has 62 host addresses; .1 is the gateway.
    assert_eq!(got.len(), 61, "{got:?}");
    assert_eq!(failures, 3);
    assert!(!got.contains("10.60.0.1/26"));
    assert_eq!(net.leases().len(), 61);
    for o in run_all("DEL") {
        o.assert_success();
    }
    assert_eq!(net.names(), ["last_reserved_ip.0", "lock"]);
}

/// Starts `command` for `id` and SIGKILLs it after `delay` unless it finished; true when it was killed.
fn run_and_kill(command: &str, id: &str, conf: &Value, delay: Duration) -> bool {
    let mut child = Command::new(ours())
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn host-local");
    if let Some(mut stdin) = child.stdin.take() {
        // Killed before reading: EPIPE is expected.
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    std::thread::sleep(delay);
    // kill(2) on our unreaped child: never hits another process even if it already exited.
    let _ = child.kill();
    let status = child.wait().expect("wait host-local");
    std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL)
}

/// Lease invariants that must hold after any crash: every lease names a known attachment in full (never
/// empty, never partial), each attachment holds at most one address per range set, and the network directory
/// holds nothing but leases, `lock` and `last_reserved_ip.*`.
fn assert_consistent(net: &TestNet, ids: &[String], round: usize) {
    let mut per_owner: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (ip, content) in net.leases() {
        let id = content.strip_suffix("\r\neth0").unwrap_or_else(|| {
            panic!("round {round}: lease {ip} has content {content:?}, not <id>\\r\\neth0")
        });
        assert!(
            ids.iter().any(|i| i == id),
            "round {round}: lease {ip} names unknown owner {id:?}"
        );
        per_owner.entry(id.to_string()).or_default().push(ip);
    }
    for (id, ips) in &per_owner {
        let v4 = ips.iter().filter(|i| !i.contains(':')).count();
        let v6 = ips.len() - v4;
        assert!(v4 <= 1 && v6 <= 1, "round {round}: {id} holds {ips:?}");
    }
    for name in net.names() {
        assert!(
            name == "lock"
                || name.starts_with("last_reserved_ip.")
                || name.parse::<std::net::IpAddr>().is_ok(),
            "round {round}: unexpected file {name} in the network directory"
        );
    }
}

#[test]
fn sigkill_at_random_moments_never_double_allocates_and_gc_restores_the_live_set() {
    let net =
        TestNet::new(json!({"ranges": [[{"subnet": "10.61.0.0/24"}], [{"subnet": "fd61::/64"}]]}));
    let ids: Vec<String> = (0..24).map(|i| format!("crash{i}")).collect();
    let mut rng = Rng::from_env_or_time("sigkill");
    // Calibrate: the fastest of a few unkilled ADDs and DELs, so kill delays land inside operations even
    // when the machine is busy (a slow outlier would make most kills arrive after the exit).
    let span = (0..5)
        .map(|_| {
            let t = Instant::now();
            run_ours("ADD", "calibrate", "eth0", &net.conf).assert_success();
            run_ours("DEL", "calibrate", "eth0", &net.conf).assert_success();
            t.elapsed().as_micros() as u64 / 2
        })
        .min()
        .unwrap_or(1000)
        .clamp(300, 20_000);

    let started = Instant::now();
    // 400 rounds normally (a few seconds); on a machine so loaded that they would take more than 40 s, stop
    // after at least 200 so the test stays well under a minute.
    let mut rounds = 0;
    let mut killed = 0;
    while rounds < 400 && !(rounds >= 200 && started.elapsed() > Duration::from_secs(40)) {
        let id = &ids[rng.below(ids.len() as u64) as usize];
        let command = if rng.below(10) < 6 { "ADD" } else { "DEL" };
        let delay = Duration::from_micros(rng.below(span + span / 2));
        killed += usize::from(run_and_kill(command, id, &net.conf, delay));
        rounds += 1;
        if rounds % 50 == 0 {
            assert_consistent(&net, &ids, rounds);
        }
    }
    assert_consistent(&net, &ids, rounds);
    eprintln!("{rounds} rounds, {killed} killed mid-operation, kill window {span} µs");
    assert!(
        killed >= rounds / 20,
        "too few kills landed ({killed}/{rounds}): the test proves little"
    );

    // The runtime's truth: a random half is alive; each live one re-ADDs (idempotent or fresh).
    let live: Vec<&String> = ids.iter().filter(|_| rng.below(2) == 0).collect();
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for id in &live {
        let r = run_ours("ADD", id, "eth0", &net.conf).assert_success();
        for addr in addresses(&r) {
            let ip = addr.split('/').next().unwrap().to_string();
            assert!(
                expected
                    .insert(ip.clone(), format!("{id}\r\neth0"))
                    .is_none(),
                "{ip} held by two live attachments"
            );
        }
    }
    let valid: Vec<Value> = live
        .iter()
        .map(|id| json!({"containerID": id, "ifname": "eth0"}))
        .collect();
    gc(&net, Some(Value::Array(valid))).assert_success();
    assert_eq!(
        net.leases(),
        expected,
        "after GC exactly the live attachments' leases remain"
    );
    let tmp = net
        .dir
        .path()
        .join("data/.twill")
        .join(net.name())
        .join("tmp");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "GC removes temporary files of killed writers: {leftovers:?}"
    );

    // The index agrees with the disk afterwards: DEL of every live attachment leaves nothing.
    for id in &live {
        run_ours("DEL", id, "eth0", &net.conf).assert_success();
    }
    assert_eq!(
        net.names(),
        ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    );
}
