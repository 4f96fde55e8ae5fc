//! Owner-identified masquerade on both backends, both families, in fresh namespaces: rules as
//! the reference lays them out, DEL without addresses, GC keeping exactly the kept owners,
//! concurrency, and real traffic being source-NATed.

mod common;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::TestNetns;
use ipnet::IpNet;
use twill_firewall::masquerade::{self, Backend, Owner};

const BACKENDS: [Backend; 2] = [Backend::Nftables, Backend::Iptables];

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn owner(network: &str, id: &str, ifname: &str) -> Owner {
    Owner::new(network, id, ifname)
}

/// Every rule line of our masquerade state in the namespace, for "nothing left" assertions.
fn masq_state(ns: &TestNetns, backend: Backend) -> Vec<String> {
    match backend {
        Backend::Nftables => {
            let (ok, out, _) = ns.try_sh("nft list chain inet cni_plugins_masquerade masq_checks");
            if !ok {
                return Vec::new();
            }
            out.lines()
                .map(str::trim)
                .filter(|l| l.contains("masquerade comment"))
                .map(str::to_string)
                .collect()
        }
        Backend::Iptables => {
            let mut v = Vec::new();
            for bin in ["iptables", "ip6tables"] {
                let out = ns.sh(&format!("{bin} -w -t nat -S"));
                v.extend(
                    out.lines()
                        .filter(|l| l.contains("CNI-"))
                        .map(|l| format!("{bin}: {l}")),
                );
            }
            v
        }
    }
}

#[test]
fn backend_parses_from_ip_masq_backend() {
    assert_eq!(Backend::from_config(None).unwrap(), Backend::Nftables);
    assert_eq!(
        Backend::from_config(Some("iptables")).unwrap(),
        Backend::Iptables
    );
    assert_eq!(
        Backend::from_config(Some("nftables")).unwrap(),
        Backend::Nftables
    );
    let err = Backend::from_config(Some("ipchains")).unwrap_err();
    assert!(err.to_string().contains("ipMasqBackend"), "{err}");
}

#[test]
fn nftables_add_installs_reference_layout_for_both_families() {
    let ns = TestNetns::new("nftadd");
    let a = owner("mynet", "c0ffee", "eth0");
    let addrs = [net("10.88.0.5/24"), net("fd88::5/64")];
    ns.run(|| masquerade::add(Backend::Nftables, &a, &addrs).unwrap());
    let listing = ns.nft_list();
    let lines: Vec<&str> = listing.lines().map(str::trim).collect();
    for expected in [
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip daddr 224.0.0.0/4 return",
        "ip6 daddr ff00::/8 return",
        "goto masq_checks",
    ] {
        assert!(
            lines.contains(&expected),
            "missing `{expected}`:\n{listing}"
        );
    }
    let v4 = lines
        .iter()
        .find(|l| l.starts_with("ip saddr 10.88.0.5 ip daddr != 10.88.0.0/24 masquerade comment"))
        .unwrap_or_else(|| panic!("no v4 masquerade rule:\n{listing}"));
    assert!(v4.contains("net: mynet if: eth0 id: c0ffee"), "{v4}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ip6 saddr fd88::5 ip6 daddr != fd88::/64 masquerade comment")),
        "no v6 masquerade rule:\n{listing}"
    );
    // JSON view: exactly one table, two chains, postrouting is the nat base chain.
    let json = ns.nft_json();
    let items = json["nftables"].as_array().unwrap();
    let chains: Vec<_> = items.iter().filter_map(|o| o.get("chain")).collect();
    assert_eq!(chains.len(), 2, "{json}");
    let post = chains.iter().find(|c| c["name"] == "postrouting").unwrap();
    assert_eq!(post["table"], "cni_plugins_masquerade");
    assert_eq!(post["type"], "nat");
    assert_eq!(post["hook"], "postrouting");
    assert_eq!(post["prio"], 100);

    ns.run(|| masquerade::check(Backend::Nftables, &a, &addrs).unwrap());
    // A second ADD of another owner leaves postrouting untouched (same rules, same handles: the
    // hot path only adds the owner's rules).
    let before = ns.sh("nft -a list chain inet cni_plugins_masquerade postrouting");
    let b = owner("mynet", "beef", "eth0");
    ns.run(|| masquerade::add(Backend::Nftables, &b, &[net("10.88.0.6/24")]).unwrap());
    let after = ns.sh("nft -a list chain inet cni_plugins_masquerade postrouting");
    assert_eq!(before, after);
    assert_eq!(
        after
            .lines()
            .filter(|l| l.contains("return") || l.contains("goto"))
            .count(),
        3,
        "{after}"
    );
}

#[test]
fn nftables_add_heals_a_damaged_postrouting_chain() {
    let ns = TestNetns::new("heal");
    let a = owner("mynet", "aaaa", "eth0");
    ns.run(|| masquerade::add(Backend::Nftables, &a, &[net("10.88.0.5/24")]).unwrap());
    ns.sh("nft flush chain inet cni_plugins_masquerade postrouting");
    ns.sh("nft add rule inet cni_plugins_masquerade postrouting accept");
    let err = ns
        .run(|| masquerade::check(Backend::Nftables, &a, &[net("10.88.0.5/24")]))
        .unwrap_err();
    assert!(err.to_string().contains("masq_checks"), "{err}");
    let b = owner("mynet", "bbbb", "eth0");
    ns.run(|| masquerade::add(Backend::Nftables, &b, &[net("10.88.0.6/24")]).unwrap());
    let post = ns.sh("nft list chain inet cni_plugins_masquerade postrouting");
    let rules: Vec<&str> = post
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with("return") || l.starts_with("goto") || l == &"accept")
        .collect();
    assert_eq!(
        rules,
        vec![
            "ip daddr 224.0.0.0/4 return",
            "ip6 daddr ff00::/8 return",
            "goto masq_checks"
        ],
        "{post}"
    );
    ns.run(|| masquerade::check(Backend::Nftables, &a, &[net("10.88.0.5/24")]).unwrap());
}

#[test]
fn iptables_add_installs_chain_jump_and_masquerade_for_both_families() {
    let ns = TestNetns::new("iptadd");
    let a = owner("mynet", "c0ffee", "eth0");
    let addrs = [net("10.88.0.5/24"), net("fd88::5/64")];
    ns.run(|| masquerade::add(Backend::Iptables, &a, &addrs).unwrap());
    let v4 = ns.sh("iptables -w -t nat -S");
    let chain = v4
        .lines()
        .find_map(|l| l.strip_prefix("-N "))
        .unwrap_or_else(|| panic!("no chain:\n{v4}"))
        .to_string();
    assert!(chain.starts_with("CNI-") && chain.len() == 28, "{chain}");
    let has =
        |text: &str, parts: &[&str]| text.lines().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(
        has(
            &v4,
            &["-A POSTROUTING -s 10.88.0.5/32", &format!("-j {chain}")]
        ),
        "{v4}"
    );
    assert!(
        has(&v4, &[&format!("-A {chain} -d 10.88.0.0/24"), "-j ACCEPT"]),
        "{v4}"
    );
    assert!(
        has(
            &v4,
            &[&format!("-A {chain} ! -d 224.0.0.0/4"), "-j MASQUERADE"]
        ),
        "{v4}"
    );
    assert!(has(&v4, &["net: mynet if: eth0 id: c0ffee"]), "{v4}");
    let v6 = ns.sh("ip6tables -w -t nat -S");
    assert!(
        has(
            &v6,
            &["-A POSTROUTING -s fd88::5/128", &format!("-j {chain}")]
        ),
        "{v6}"
    );
    assert!(
        has(&v6, &[&format!("-A {chain} -d fd88::/64"), "-j ACCEPT"]),
        "{v6}"
    );
    assert!(
        has(
            &v6,
            &[&format!("-A {chain} ! -d ff00::/8"), "-j MASQUERADE"]
        ),
        "{v6}"
    );
    ns.run(|| masquerade::check(Backend::Iptables, &a, &addrs).unwrap());
}

#[test]
fn del_without_addresses_removes_only_that_owner() {
    for backend in BACKENDS {
        let ns = TestNetns::new("del");
        let a = owner("mynet", "aaaa", "eth0");
        let a_eth1 = owner("mynet", "aaaa", "eth1");
        let b = owner("mynet", "bbbb", "eth0");
        let a_addrs = [net("10.88.0.5/24"), net("fd88::5/64")];
        let a1_addrs = [net("10.89.0.5/24")];
        let b_addrs = [net("10.88.0.6/24"), net("fd88::6/64")];
        ns.run(|| {
            masquerade::add(backend, &a, &a_addrs).unwrap();
            masquerade::add(backend, &a_eth1, &a1_addrs).unwrap();
            masquerade::add(backend, &b, &b_addrs).unwrap();
            masquerade::del(backend, &a).unwrap();
            let err = masquerade::check(backend, &a, &a_addrs).unwrap_err();
            assert!(err.to_string().contains("aaaa"), "{backend}: {err}");
            masquerade::check(backend, &a_eth1, &a1_addrs).unwrap();
            masquerade::check(backend, &b, &b_addrs).unwrap();
            // Idempotent.
            masquerade::del(backend, &a).unwrap();
            masquerade::del(backend, &a_eth1).unwrap();
            masquerade::del(backend, &b).unwrap();
            masquerade::del(backend, &b).unwrap();
        });
        assert_eq!(masq_state(&ns, backend), Vec::<String>::new(), "{backend}");
    }
}

#[test]
fn del_succeeds_when_nothing_was_ever_installed() {
    for backend in BACKENDS {
        let ns = TestNetns::new("delnone");
        ns.run(|| masquerade::del(backend, &owner("n", "never", "eth0")).unwrap());
        assert_eq!(
            ns.run(|| masquerade::gc(backend, "n", &[] as &[(&str, &str)]).unwrap()),
            0
        );
    }
}

#[test]
fn gc_keeps_exactly_the_kept_owners() {
    for backend in BACKENDS {
        let ns = TestNetns::new("gc");
        let owners = [
            (
                owner("net1", "c1", "eth0"),
                [net("10.1.0.1/24"), net("fd01::1/64")],
            ),
            (
                owner("net1", "c2", "eth0"),
                [net("10.1.0.2/24"), net("fd01::2/64")],
            ),
            (
                owner("net1", "c3", "eth0"),
                [net("10.1.0.3/24"), net("fd01::3/64")],
            ),
            (
                owner("net1", "c2", "eth1"),
                [net("10.2.0.2/24"), net("fd02::2/64")],
            ),
            (
                owner("net2", "c1", "eth0"),
                [net("10.3.0.1/24"), net("fd03::1/64")],
            ),
        ];
        ns.run(|| {
            for (o, addrs) in &owners {
                masquerade::add(backend, o, addrs).unwrap();
            }
            let removed =
                masquerade::gc(backend, "net1", &[("c2".to_string(), "eth0".to_string())]).unwrap();
            assert_eq!(removed, 3, "{backend}");
            for (o, addrs) in &owners {
                let kept = o.network == "net2" || (o.container_id == "c2" && o.ifname == "eth0");
                let present = masquerade::check(backend, o, addrs).is_ok();
                assert_eq!(present, kept, "{backend}: {o:?}");
            }
            assert_eq!(
                masquerade::gc(backend, "net1", &[("c2", "eth0")]).unwrap(),
                0,
                "second gc has nothing to do"
            );
            assert_eq!(
                masquerade::gc(backend, "net1", &[] as &[(&str, &str)]).unwrap(),
                1
            );
            assert_eq!(
                masquerade::gc(backend, "net2", &[] as &[(&str, &str)]).unwrap(),
                1
            );
        });
        assert_eq!(masq_state(&ns, backend), Vec::<String>::new(), "{backend}");
    }
}

#[test]
fn sixteen_concurrent_owners_add_check_and_del() {
    for backend in BACKENDS {
        let ns = TestNetns::new("conc");
        let path = ns.path();
        std::thread::scope(|s| {
            for i in 0..16u8 {
                let path = path.clone();
                s.spawn(move || {
                    use std::os::fd::AsRawFd;
                    let f = std::fs::File::open(&path).unwrap();
                    // SAFETY: setns on this test-owned thread only.
                    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
                    let o = owner("conc", &format!("container{i}"), "eth0");
                    let addrs = [
                        net(&format!("10.77.0.{}/24", i + 2)),
                        net(&format!("fd77::{:x}/64", i + 2)),
                    ];
                    masquerade::add(backend, &o, &addrs)
                        .unwrap_or_else(|e| panic!("{backend} add {i}: {e}"));
                    masquerade::check(backend, &o, &addrs)
                        .unwrap_or_else(|e| panic!("{backend} check {i}: {e}"));
                    masquerade::del(backend, &o)
                        .unwrap_or_else(|e| panic!("{backend} del {i}: {e}"));
                    assert!(masquerade::check(backend, &o, &addrs).is_err());
                });
            }
        });
        assert_eq!(masq_state(&ns, backend), Vec::<String>::new(), "{backend}");
        if backend == Backend::Nftables {
            let post = ns.sh("nft list chain inet cni_plugins_masquerade postrouting");
            assert_eq!(
                post.lines()
                    .filter(|l| l.contains("goto masq_checks"))
                    .count(),
                1
            );
        }
    }
}

/// Environment of a child process started by `sixteen_concurrent_processes_add_check_and_del`.
const CHILD_ENV: &str = "TWFW_MASQ_CHILD";

/// Not a test on its own: the body of one of the concurrent processes (the test binary re-runs
/// itself with `--ignored --exact` and this variable set).
#[test]
#[ignore]
fn concurrent_process_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split(',');
    let (Some(path), Some(backend), Some(i)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad {CHILD_ENV}={spec}");
    };
    let backend: Backend = backend.parse().unwrap();
    let i: u32 = i.parse().unwrap();
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: setns on this test thread; the process exists only for this.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
    let o = owner("procs", &format!("proc{i}"), "eth0");
    let addrs = [
        net(&format!("10.78.0.{}/24", i + 2)),
        net(&format!("fd78::{:x}/64", i + 2)),
    ];
    for round in 0..3 {
        masquerade::add(backend, &o, &addrs)
            .unwrap_or_else(|e| panic!("{backend} add {i}/{round}: {e}"));
        masquerade::check(backend, &o, &addrs)
            .unwrap_or_else(|e| panic!("{backend} check {i}/{round}: {e}"));
        masquerade::del(backend, &o).unwrap_or_else(|e| panic!("{backend} del {i}/{round}: {e}"));
    }
    // Leave one owner in place for the parent to verify.
    masquerade::add(backend, &o, &addrs).unwrap();
}

#[test]
fn sixteen_concurrent_processes_add_check_and_del() {
    let exe = std::env::current_exe().unwrap();
    for backend in BACKENDS {
        let ns = TestNetns::new("procs");
        let children: Vec<_> = (0..16)
            .map(|i| {
                std::process::Command::new(&exe)
                    .args([
                        "--ignored",
                        "--exact",
                        "concurrent_process_child",
                        "--nocapture",
                    ])
                    .env(CHILD_ENV, format!("{},{backend},{i}", ns.path()))
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (i, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "{backend} child {i}: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let state = masq_state(&ns, backend);
        let expected_rules = match backend {
            Backend::Nftables => 32,         // one rule per address
            Backend::Iptables => 16 * 2 * 4, // per family: chain decl, accept, masquerade, jump
        };
        assert_eq!(state.len(), expected_rules, "{backend}: {state:#?}");
        ns.run(|| {
            for i in 0..16u32 {
                let addrs = [
                    net(&format!("10.78.0.{}/24", i + 2)),
                    net(&format!("fd78::{:x}/64", i + 2)),
                ];
                masquerade::check(
                    backend,
                    &owner("procs", &format!("proc{i}"), "eth0"),
                    &addrs,
                )
                .unwrap();
            }
            assert_eq!(
                masquerade::gc(backend, "procs", &[] as &[(&str, &str)]).unwrap(),
                16
            );
        });
        assert_eq!(masq_state(&ns, backend), Vec::<String>::new(), "{backend}");
    }
}

#[test]
fn invalid_owner_is_rejected_before_touching_the_firewall() {
    let ns = TestNetns::new("inval");
    ns.run(|| {
        let err = masquerade::add(
            Backend::Nftables,
            &owner("", "c", "eth0"),
            &[net("10.0.0.2/24")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("network name"), "{err}");
        let err = masquerade::del(Backend::Iptables, &owner("n", "", "eth0")).unwrap_err();
        assert!(err.to_string().contains("container id"), "{err}");
    });
    assert_eq!(ns.nft_list().trim(), "");
}

/// pod (10.66.0.2, fd66::2) -- node (forwarding, masquerade) -- remote (172.31.9.2, fd99::2).
/// The remote has no route back to the pod networks, so a connection only succeeds when the node
/// rewrote the source to its own address, which is what the remote then sees.
struct Topology {
    pod: TestNetns,
    node: TestNetns,
    remote: TestNetns,
}

impl Topology {
    fn new() -> Topology {
        let t = Topology {
            pod: TestNetns::new("pod"),
            node: TestNetns::new("node"),
            remote: TestNetns::new("remote"),
        };
        let id = t.node.name.rsplit('-').next().unwrap().to_string();
        let (p, r) = (format!("twp{id}"), format!("twr{id}"));
        t.node.sh(&format!(
            "ip link add {p} type veth peer name eth0 netns {pod} && \
             ip link add {r} type veth peer name eth0 netns {remote} && \
             ip addr add 10.66.0.1/24 dev {p} && ip addr add fd66::1/64 dev {p} nodad && \
             ip addr add 172.31.9.1/24 dev {r} && ip addr add fd99::1/64 dev {r} nodad && \
             ip link set {p} up && ip link set {r} up && \
             sysctl -qw net.ipv4.ip_forward=1 && sysctl -qw net.ipv6.conf.all.forwarding=1",
            pod = t.pod.name,
            remote = t.remote.name,
        ));
        t.pod.sh(
            "ip addr add 10.66.0.2/24 dev eth0 && ip addr add fd66::2/64 dev eth0 nodad && \
             ip link set eth0 up && ip route add default via 10.66.0.1 && \
             ip -6 route add default via fd66::1",
        );
        t.remote.sh(
            "ip addr add 172.31.9.2/24 dev eth0 && ip addr add fd99::2/64 dev eth0 nodad && \
             ip link set eth0 up",
        );
        t
    }

    /// Connects over TCP from the pod to a listener in the remote namespace and returns the
    /// source address the remote saw, or `None` when the connection could not be made.
    fn source_seen_by_remote(&self, remote_ip: &str) -> Option<IpAddr> {
        let ip: IpAddr = remote_ip.parse().unwrap();
        let listener = self
            .remote
            .run(|| TcpListener::bind(SocketAddr::new(ip, 0)).unwrap());
        listener.set_nonblocking(true).unwrap();
        let dst = listener.local_addr().unwrap();
        let connected = self
            .pod
            .run(|| TcpStream::connect_timeout(&dst, Duration::from_millis(800)).ok());
        connected?;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match listener.accept() {
                Ok((_, peer)) => return Some(peer.ip()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "connected but never accepted");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }
}

#[test]
fn pod_traffic_leaving_its_subnet_is_source_natted() {
    for backend in BACKENDS {
        let t = Topology::new();
        assert_eq!(
            t.source_seen_by_remote("172.31.9.2"),
            None,
            "{backend}: the remote has no route to the pod, so it must be unreachable unNATed"
        );
        let o = owner("traffic", "pod1", "eth0");
        let addrs = [net("10.66.0.2/24"), net("fd66::2/64")];
        t.node.run(|| masquerade::add(backend, &o, &addrs).unwrap());
        assert_eq!(
            t.source_seen_by_remote("172.31.9.2"),
            Some("172.31.9.1".parse().unwrap()),
            "{backend}: v4 not masqueraded to the node address"
        );
        assert_eq!(
            t.source_seen_by_remote("fd99::2"),
            Some("fd99::1".parse().unwrap()),
            "{backend}: v6 not masqueraded to the node address"
        );
        t.node.run(|| masquerade::del(backend, &o).unwrap());
        assert_eq!(
            t.source_seen_by_remote("172.31.9.2"),
            None,
            "{backend}: still masqueraded after del"
        );
    }
}
