//! The dhcp IPAM plugin and its daemon against the reference builds (Debian's 1.1.1 and upstream
//! v1.10.0), each side with its own daemon and its own dnsmasq (Debian's `dnsmasq-base`) on a fresh
//! link: macvlan + dhcp, the realistic chain, must give the same result JSON (address, gateway, routes
//! from option 3 or 121, metrics), the same pod state, CHECK success and a DEL that leaves no lease in
//! dnsmasq. The pod's MAC is fixed so both dnsmasq instances pick the same address.
//!
//! Ours only: DEL without the daemon, STATUS and GC, parallel ADDs, a failing ADD without a server.

#[path = "diff_support/verbs.rs"]
mod diff_support;
#[path = "dhcp_support/mod.rs"]
mod support;

use diff_support::{add_check_del, Verbs};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::*;
use twill_tests::bins::{self, Reference};
use twill_tests::netns::Netns;

const MAC: &str = "02:42:0a:46:00:07";

fn ours() -> PathBuf {
    bins::bin("macvlan")
}

fn our_dhcp() -> PathBuf {
    bins::bin("dhcp")
}

fn pod_state(pod: &Netns) -> Value {
    json!({
        "addresses": pod.ip(&["-4", "-br", "addr", "show", "dev", "eth0"])
            .split_whitespace().skip(2).collect::<Vec<_>>(),
        "routes": pod.ip(&["-4", "route", "show"]).lines().map(str::to_string).collect::<Vec<_>>(),
    })
}

struct Side {
    verbs: Verbs,
    pod: Value,
    leased: Vec<String>,
    left_after_del: Vec<String>,
}

/// ADD, CHECK and DEL of one pod through `macvlan` (with its sibling `dhcp`) and `daemon_bin`.
fn run_side(
    macvlan: &std::path::Path,
    daemon_bin: &std::path::Path,
    dnsmasq: &[&str],
    extra: &Value,
) -> Side {
    let lab = Lab::new(dnsmasq);
    let daemon = Daemon::start(daemon_bin, &[]);
    let pod = Netns::new("dhp");
    let mut c = conf(&daemon, json!({"mac": MAC}));
    merge(&mut c, extra.clone());
    let run_verb =
        |verb: &str, c: &Value| run(&lab, macvlan, verb, Some(pod.path()), "dhcp-diff", c);
    let (verbs, attached) = add_check_del(&c, run_verb, |_| (pod_state(&pod), lab.settled(1)));
    let Some((pod_v, leased)) = attached else {
        panic!(
            "ADD failed: {}\ndaemon:\n{}\ndnsmasq:\n{}",
            verbs.add_out,
            daemon.log(),
            lab.log()
        );
    };
    assert!(verbs.del_ok, "DEL failed: {}", verbs.del_out);
    Side {
        verbs,
        pod: pod_v,
        leased,
        left_after_del: lab.settled(0),
    }
}

fn differential_with(dnsmasq: &[&str], extra: Value, refs: &[Reference]) -> Side {
    differential_checking(dnsmasq, extra, refs, true)
}

/// `check_must_pass`: whether CHECK right after ADD must pass (else both sides must just agree).
fn differential_checking(
    dnsmasq: &[&str],
    extra: Value,
    refs: &[Reference],
    check_must_pass: bool,
) -> Side {
    bins::require_root();
    let ours = run_side(&ours(), &our_dhcp(), dnsmasq, &extra);
    for &r in refs {
        let theirs = run_side(&r.bin("macvlan"), &r.bin("dhcp"), dnsmasq, &extra);
        let (o, t) = (&ours.verbs, &theirs.verbs);
        assert_eq!(
            o.result, t.result,
            "result differs from {r}\nours: {}\ntheirs: {}",
            o.add_out, t.add_out
        );
        assert_eq!(ours.pod, theirs.pod, "pod state differs from {r}");
        assert_eq!(ours.leased, theirs.leased, "dnsmasq leases differ from {r}");
        assert!(
            t.check_ok != Some(false) || !check_must_pass,
            "{r}: CHECK failed"
        );
        assert_eq!(
            o.check_ok, t.check_ok,
            "CHECK outcome differs from {r}: {}",
            o.check_out
        );
        assert!(
            theirs.left_after_del.is_empty(),
            "{r}: lease left after DEL"
        );
    }
    if check_must_pass {
        ours.verbs.assert_check_passed();
    }
    assert_eq!(ours.leased.len(), 1, "{:?}", ours.leased);
    assert!(
        ours.left_after_del.is_empty(),
        "DEL left the lease: {:?}",
        ours.left_after_del
    );
    ours
}

#[test]
fn same_as_reference_router_and_subnet_mask() {
    let s = differential_with(&[], json!({}), &Reference::ALL);
    assert_eq!(s.verbs.result["ips"][0]["gateway"], SERVER_IP);
    assert_eq!(
        s.verbs.result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": SERVER_IP}])
    );
}

#[test]
fn same_as_reference_classless_static_routes_when_requested() {
    // Option 121 replaces option 3's default route (RFC 3442); dnsmasq sends it only when asked.
    let routes =
        "--dhcp-option=option:classless-static-route,10.80.0.0/16,10.70.0.254,0.0.0.0/0,10.70.0.1";
    let s = differential_with(
        &[routes],
        json!({"ipam": {"request": [{"option": "121"}]}}),
        &Reference::ALL,
    );
    assert_eq!(
        s.verbs.result["routes"],
        json!([{"dst": "10.80.0.0/16", "gw": "10.70.0.254"}, {"dst": "0.0.0.0/0", "gw": SERVER_IP}])
    );
    // Not asked for: the router's default route only.
    let s = differential_with(&[routes], json!({}), &[Reference::Current]);
    assert_eq!(
        s.verbs.result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": SERVER_IP}])
    );
}

#[test]
fn same_as_reference_classless_route_without_router_is_link_scope() {
    // 1.1.1 predates route scopes in results. CHECK fails on both sides: macvlan's route check looks for
    // a route via 0.0.0.0, while the kernel holds the link-scope route without a gateway.
    let s = differential_checking(
        &["--dhcp-option=option:classless-static-route,10.70.8.0/24,0.0.0.0,0.0.0.0/0,10.70.0.1"],
        json!({"ipam": {"request": [{"option": "121"}]}}),
        &[Reference::Current],
        false,
    );
    assert_eq!(
        s.verbs.result["routes"][0]["scope"], 253,
        "{:#}",
        s.verbs.result
    );
}

#[test]
fn same_as_reference_static_routes_and_priority() {
    let s = differential_with(
        &["--dhcp-option=option:static-route,172.16.0.0,10.70.0.254"],
        json!({"ipam": {"request": [{"option": "33"}], "priority": 300}}),
        &[Reference::Current],
    );
    assert_eq!(
        s.verbs.result["routes"],
        json!([{"dst": "172.16.0.0/16", "gw": "10.70.0.254", "priority": 300},
            {"dst": "0.0.0.0/0", "gw": SERVER_IP, "priority": 300}])
    );
}

#[test]
fn same_as_reference_old_versions() {
    differential_with(&[], json!({"cniVersion": "0.3.1"}), &Reference::ALL);
    differential_with(&[], json!({"cniVersion": "0.4.0"}), &[Reference::Current]);
}

/// Lease expiry in dnsmasq's file for the pod's lease.
fn expiry(lab: &Lab) -> u64 {
    lab.leases().first().map(|l| l.0).unwrap_or(0)
}

/// ADD, then wait for the daemon to renew in the background: dnsmasq's shortest lease is 2 minutes and it
/// replaces a configured T1 below a minute with its own, so T1 is 60 s; the renewal shows as a second
/// DHCPACK and a later expiry in dnsmasq's lease file.
fn renews_at_t1(macvlan: &std::path::Path, daemon_bin: &std::path::Path) {
    let lab = Lab::new(&[]);
    let daemon = Daemon::start(daemon_bin, &[]);
    let pod = Netns::new("dhp");
    let c = conf(&daemon, json!({}));
    run(&lab, macvlan, "ADD", Some(pod.path()), "renew", &c).assert_success();
    lab.settled(1);
    let (acks, first) = (lab.requests(), expiry(&lab));
    assert!(first > 0, "no lease: {}", lab.log());
    let deadline = Instant::now() + Duration::from_secs(80);
    while (lab.requests() <= acks || expiry(&lab) <= first) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        lab.requests() > acks && expiry(&lab) > first,
        "no renewal within 80 s ({} ACKs, expiry {first} -> {})\ndaemon:\n{}\ndnsmasq:\n{}",
        lab.requests(),
        expiry(&lab),
        daemon.log(),
        lab.log()
    );
    run(&lab, macvlan, "DEL", Some(pod.path()), "renew", &c).assert_success();
    assert!(lab.settled(0).is_empty(), "{:?}", lab.leases());
}

/// Slow (about a minute): ours and the reference wait for T1 side by side.
#[test]
fn lease_is_renewed_at_t1_like_the_reference() {
    bins::require_root();
    std::thread::scope(|s| {
        s.spawn(|| renews_at_t1(&ours(), &our_dhcp()));
        s.spawn(|| {
            renews_at_t1(
                &Reference::Current.bin("macvlan"),
                &Reference::Current.bin("dhcp"),
            )
        });
    });
}

#[test]
fn del_succeeds_when_the_daemon_is_gone() {
    bins::require_root();
    let lab = Lab::new(&[]);
    let mut daemon = Daemon::start(&our_dhcp(), &[]);
    let pod = Netns::new("dhp");
    let c = conf(&daemon, json!({}));
    run(&lab, &ours(), "ADD", Some(pod.path()), "gone", &c).assert_success();
    daemon.kill();
    run(&lab, &ours(), "DEL", Some(pod.path()), "gone", &c).assert_success();
    run(&lab, &our_dhcp(), "DEL", Some(pod.path()), "gone", &c).assert_success();
    // Nothing answers: STATUS says the plugin cannot serve ADD.
    let s = conf(&daemon, json!({"cniVersion": "1.1.0"}));
    run(&lab, &our_dhcp(), "STATUS", None, "", &s).assert_error(50);
}

#[test]
fn del_succeeds_and_releases_when_the_netns_is_gone() {
    bins::require_root();
    let lab = Lab::new(&[]);
    let daemon = Daemon::start(&our_dhcp(), &[]);
    let pod = Netns::new("dhp");
    let c = conf(&daemon, json!({}));
    run(&lab, &ours(), "ADD", Some(pod.path()), "nsgone", &c).assert_success();
    assert_eq!(lab.settled(1).len(), 1);
    let path = pod.path().to_path_buf();
    drop(pod);
    run(&lab, &ours(), "DEL", Some(&path), "nsgone", &c).assert_success();
    run(&lab, &ours(), "DEL", None, "nsgone", &c).assert_success();
    // The daemon kept the namespace open while it held the lease, so the release still went out.
    assert!(lab.settled(0).is_empty(), "{:?}", lab.leases());
}

#[test]
fn add_without_a_server_fails_and_leaves_nothing() {
    bins::require_root();
    let lab = Lab::new(&[]);
    lab.server.ip(&["link", "set", "srv0", "down"]);
    let daemon = Daemon::start(&our_dhcp(), &["-timeout", "500ms", "-resendtimeout", "2s"]);
    let pod = Netns::new("dhp");
    let c = conf(&daemon, json!({}));
    let err = run(&lab, &ours(), "ADD", Some(pod.path()), "noserver", &c).assert_any_error();
    assert!(
        err["msg"]
            .as_str()
            .is_some_and(|m| m.contains("no reply from a DHCP server")),
        "{err}"
    );
    assert_eq!(
        pod.ip(&["-br", "link"]).lines().count(),
        1,
        "pod kept a link"
    );
    // The daemon is still serving.
    let s = conf(&daemon, json!({"cniVersion": "1.1.0"}));
    run(&lab, &our_dhcp(), "STATUS", None, "", &s).assert_success();
}

#[test]
fn parallel_adds_get_distinct_leases_and_dels_release_them_all() {
    bins::require_root();
    let lab = Lab::new(&[]);
    let daemon = Daemon::start(&our_dhcp(), &[]);
    let c = conf(&daemon, json!({}));
    let pods: Vec<Netns> = (0..6).map(|_| Netns::new("dhp")).collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let jobs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (lab, c) = (&lab, &c);
                s.spawn(move || {
                    let r = run(lab, &ours(), "ADD", Some(pod.path()), &format!("par{i}"), c)
                        .assert_success();
                    r["ips"][0]["address"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().expect("ADD thread"))
            .collect()
    });
    let mut unique: Vec<String> = ips
        .iter()
        .map(|a| a.split('/').next().unwrap_or_default().to_string())
        .collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), pods.len(), "{ips:?}");
    assert_eq!(lab.settled(unique.len()), unique, "dnsmasq's leases");
    std::thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let (lab, c) = (&lab, &c);
            s.spawn(move || {
                run(lab, &ours(), "DEL", Some(pod.path()), &format!("par{i}"), c).assert_success();
            });
        }
    });
    assert!(lab.settled(0).is_empty(), "{:?}", lab.leases());
}

#[test]
fn gc_releases_leases_of_attachments_that_are_gone() {
    bins::require_root();
    let lab = Lab::new(&[]);
    let daemon = Daemon::start(&our_dhcp(), &[]);
    let c = conf(&daemon, json!({"cniVersion": "1.1.0"}));
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("dhp")).collect();
    let mut ips = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let r = run(
            &lab,
            &ours(),
            "ADD",
            Some(pod.path()),
            &format!("gc{i}"),
            &c,
        )
        .assert_success();
        ips.push(
            r["ips"][0]["address"]
                .as_str()
                .unwrap_or_default()
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let mut g = c.clone();
    g["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": "eth0"}]);
    run(&lab, &our_dhcp(), "GC", None, "", &g).assert_success();
    assert_eq!(
        lab.settled(1),
        vec![ips[0].clone()],
        "daemon:\n{}\ndnsmasq:\n{}",
        daemon.log(),
        lab.log()
    );
    run(&lab, &ours(), "DEL", Some(pods[0].path()), "gc0", &c).assert_success();
}

#[test]
fn provided_host_name_from_cni_args_reaches_the_server() {
    bins::require_root();
    let lab = Lab::new(&[]);
    let daemon = Daemon::start(&our_dhcp(), &[]);
    let pod = Netns::new("dhp");
    let c = conf(
        &daemon,
        json!({"ipam": {"provide": [{"option": "host-name", "fromArg": "K8S_POD_NAME"}]}}),
    );
    let out = twill_tests::exec::Invocation::new(ours(), "ADD")
        .libcni_style()
        .container_id(Some("named"))
        .netns(Some(pod.path()))
        .cni_path(ours().parent().and_then(std::path::Path::to_str))
        .cni_args(Some("IgnoreUnknown=1;K8S_POD_NAME=web-1"))
        .stdin_json(&c)
        .in_netns(lab.node.path())
        .run();
    out.assert_success();
    let file = std::fs::read_to_string(lab.dir.path().join("leases")).unwrap_or_default();
    assert!(file.contains(" web-1 "), "{file}");
    run(&lab, &ours(), "DEL", Some(pod.path()), "named", &c).assert_success();
}

#[test]
fn sigterm_removes_the_socket_and_pidfile() {
    bins::require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let (socket, pidfile) = (dir.path().join("d/dhcp.sock"), dir.path().join("dhcp.pid"));
    let mut child = std::process::Command::new(our_dhcp())
        .args([
            "daemon",
            "--socketpath",
            socket.to_str().unwrap_or_default(),
            "-pidfile",
        ])
        .arg(&pidfile)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start daemon");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(socket.exists() && pidfile.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap_or_default(),
        child.id().to_string()
    );
    // A second daemon on the same socket refuses to start.
    let second = std::process::Command::new(our_dhcp())
        .args(["daemon", "-socketpath", socket.to_str().unwrap_or_default()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("second daemon");
    assert!(!second.success());
    terminate(child.id());
    let status = child.wait().expect("daemon exit");
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists() && !pidfile.exists());
}

fn terminate(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

#[test]
fn mixing_halves_with_the_reference_fails_clearly() {
    bins::require_root();
    let lab = Lab::new(&[]);
    let pod = Netns::new("dhp");
    let theirs = Daemon::start(&Reference::Current.bin("dhcp"), &[]);
    let c = conf(&theirs, json!({}));
    let err = run(&lab, &ours(), "ADD", Some(pod.path()), "mixed", &c).assert_any_error();
    assert!(
        err["msg"]
            .as_str()
            .is_some_and(|m| m.contains("does not speak twill's protocol")),
        "{err}"
    );
    assert_eq!(
        pod.ip(&["-br", "link"]).lines().count(),
        1,
        "pod kept a link"
    );
    // The reference's macvlan leaves its device in the pod when IPAM fails; only the outcome is compared.
    let pod = Netns::new("dhp");
    let ours_daemon = Daemon::start(&our_dhcp(), &[]);
    let c = conf(&ours_daemon, json!({}));
    run(
        &lab,
        &Reference::Current.bin("macvlan"),
        "ADD",
        Some(pod.path()),
        "mixed",
        &c,
    )
    .assert_any_error();
    assert!(lab.settled(0).is_empty());
}

/// As under `cni-dhcp.socket`: systemd-socket-activate holds the socket and starts the daemon on the first
/// connection, handing it over as fd 3; the daemon serves it and leaves the socket file to its owner.
#[test]
fn daemon_takes_the_socket_systemd_passes() {
    bins::require_root();
    let lab = Lab::new(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("dhcp.sock");
    let child = std::process::Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(our_dhcp())
        .arg("daemon")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let mut activator = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = json!({"cniVersion": "1.1.0", "name": "dhcpnet", "type": "macvlan", "master": "up0",
        "ipam": {"type": "dhcp", "daemonSocketPath": socket}});
    run(&lab, &our_dhcp(), "STATUS", None, "", &c).assert_success();
    let pod = Netns::new("dhp");
    run(&lab, &ours(), "ADD", Some(pod.path()), "activated", &c).assert_success();
    run(&lab, &ours(), "DEL", Some(pod.path()), "activated", &c).assert_success();
    assert!(lab.settled(0).is_empty());
    // systemd-socket-activate execs the daemon: this SIGTERM reaches it.
    terminate(activator.0.id());
    let status = activator.0.wait().expect("daemon exit");
    assert!(status.success(), "{status:?}");
    assert!(
        socket.exists(),
        "the daemon removed a socket it did not create"
    );
}
