//! The dhcp tests' lab: a node namespace with an uplink `up0` (the macvlan master), a server namespace
//! on the other end of that link running Debian's dnsmasq as the DHCP server, and a `dhcp daemon` (ours
//! or a reference build) on its own socket. Everything is killed and removed on drop.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use twill_tests::exec::{Invocation, Outcome};
use twill_tests::netns::Netns;

pub const SERVER_IP: &str = "10.70.0.1";

/// A child process killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One DHCP server on its own link.
pub struct Lab {
    pub node: Netns,
    pub server: Netns,
    pub dir: tempfile::TempDir,
    dnsmasq: Option<Proc>,
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Lab {
    /// A lab whose dnsmasq runs with `extra` options (e.g. `--dhcp-option=...`), leases of 2 minutes.
    pub fn new(extra: &[&str]) -> Lab {
        let node = Netns::node("dhn");
        let server = Netns::node("dhs");
        node.ip(&[
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "srv0",
            "netns",
            &server.path_str(),
        ]);
        node.ip(&["link", "set", "up0", "up"]);
        server.ip(&["link", "set", "srv0", "up"]);
        server.ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", "srv0"]);
        let dir = tempfile::Builder::new()
            .prefix("twill-dhcp-")
            .tempdir()
            .expect("temp dir");
        let mut lab = Lab {
            node,
            server,
            dir,
            dnsmasq: None,
        };
        lab.start_dnsmasq(extra);
        lab
    }

    fn start_dnsmasq(&mut self, extra: &[&str]) {
        let d = self.dir.path();
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.server.name().into(),
            "dnsmasq".into(),
            // Nothing from /etc/dnsmasq.conf, no DNS service, only the test link.
            "--conf-file=/dev/null".into(),
            "--keep-in-foreground".into(),
            "--port=0".into(),
            "--interface=srv0".into(),
            "--bind-interfaces".into(),
            "--user=root".into(),
            "--dhcp-authoritative".into(),
            // No ICMP probe of an address before offering it: the link is ours alone.
            "--no-ping".into(),
            // Its own pid file: the default /run/dnsmasq.pid is the host's, and two labs would race on it.
            format!("--pid-file={}", d.join("dnsmasq.pid").display()),
            "--dhcp-range=10.70.0.100,10.70.0.200,255.255.255.0,2m".into(),
            format!("--dhcp-option=option:router,{SERVER_IP}"),
            format!("--dhcp-leasefile={}", d.join("leases").display()),
            format!("--log-facility={}", d.join("dnsmasq.log").display()),
            "--log-dhcp".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("dnsmasq.err")).expect("dnsmasq stderr file"))
            .spawn()
            .expect("start dnsmasq (package dnsmasq-base)");
        self.dnsmasq = Some(Proc(child));
        let log = d.join("dnsmasq.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("DHCP, IP range")) {
            let exited = self
                .dnsmasq
                .as_mut()
                .and_then(|p| p.0.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "dnsmasq did not come up ({exited:?}):\n{}\n{}",
                    std::fs::read_to_string(d.join("dnsmasq.err")).unwrap_or_default(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// dnsmasq's leases: (expiry, mac, address, client id) per line of its lease file.
    pub fn leases(&self) -> Vec<(u64, String, String, String)> {
        std::fs::read_to_string(self.dir.path().join("leases"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.parse().ok()?,
                    f.get(1)?.to_string(),
                    f.get(2)?.to_string(),
                    f.get(4).unwrap_or(&"").to_string(),
                ))
            })
            .collect()
    }

    /// The leased addresses once dnsmasq's file holds `n` of them in three reads in a row (it rewrites the
    /// file in place, so one read can see it empty); after 5 s, whatever it holds.
    pub fn settled(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut streak = 0;
        while Instant::now() < deadline {
            if self.lease_addresses().len() == n {
                streak += 1;
                if streak == 3 {
                    break;
                }
            } else {
                streak = 0;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.lease_addresses()
    }

    pub fn lease_addresses(&self) -> Vec<String> {
        let mut v: Vec<String> = self.leases().into_iter().map(|l| l.2).collect();
        v.sort();
        v
    }

    /// How many DHCPREQUESTs dnsmasq has answered so far.
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("DHCPACK("))
            .count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }
}

/// A running `dhcp daemon` listening on a socket in its own directory.
pub struct Daemon {
    pub socket: PathBuf,
    pub log: PathBuf,
    proc: Option<Proc>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start(bin: &Path, extra: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("twill-dhcpd-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("dhcp.sock");
        let log = dir.path().join("daemon.log");
        let mut args = vec![
            "daemon",
            "-socketpath",
            socket.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        let child = Command::new(bin)
            .args(&args)
            .env("TWILL_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("start dhcp daemon");
        let d = Daemon {
            socket,
            log,
            proc: Some(Proc(child)),
            _dir: dir,
        };
        wait_for("dhcp daemon", || d.socket.exists());
        d
    }

    /// Kills the daemon (SIGKILL: no chance to release anything).
    pub fn kill(&mut self) {
        self.proc.take();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A macvlan-over-dhcp config for `daemon`, `extra` merged into it (`ipam` keys merge into `ipam`).
pub fn conf(daemon: &Daemon, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "dhcpnet",
        "type": "macvlan",
        "master": "up0",
        "ipam": {"type": "dhcp", "daemonSocketPath": daemon.socket},
    });
    merge(&mut c, extra);
    c
}

/// Path-independent parts of a result (what diff_support compares): the sandbox path differs per pod; the
/// MAC is fixed, so it is kept.
pub fn normalize_result(result: &Value) -> Value {
    let mut r = result.clone();
    if let Some(ifs) = r["interfaces"].as_array_mut() {
        for i in ifs {
            i["sandbox"] = json!("<netns>");
        }
    }
    if r.get("dns")
        .is_some_and(|d| d.as_object().is_some_and(|o| o.is_empty()))
    {
        r.as_object_mut().map(|o| o.remove("dns"));
    }
    r
}

pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, e) => *b = e,
    }
}

/// Runs `plugin` (a macvlan or the dhcp plugin itself) inside the lab's node, runtime-style.
pub fn run(
    lab: &Lab,
    plugin: &Path,
    command: &str,
    pod: Option<&Path>,
    id: &str,
    conf: &Value,
) -> Outcome {
    let out = Invocation::new(plugin, command)
        .libcni_style()
        .container_id(Some(id))
        .ifname(Some("eth0"))
        .netns(pod)
        .cni_path(plugin.parent().and_then(Path::to_str))
        .stdin_json(conf)
        .in_netns(lab.node.path())
        .timeout(Duration::from_secs(60))
        .run();
    out.assert_no_panic();
    out
}
