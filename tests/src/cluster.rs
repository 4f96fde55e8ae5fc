//! A multi-node cluster on one machine (docs/testing.md, topologies): a "switch" namespace holding an
//! underlay bridge (and usually etcd), "node" namespaces each joined to it by a veth (`eth0`, 10.250.0.<n>/24),
//! "pods" as namespaces wired to a node, and `twilld` running inside a node. Every namespace, link and
//! process is owned by a guard and removed on drop, even when the test panics.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::Etcd;
use crate::netns::Netns;

/// The switch's own underlay address (where etcd listens for the nodes).
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 254);
/// Underlay prefix length.
pub const UNDERLAY_PREFIX: u8 = 24;

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns whether it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The underlay: a namespace with bridge `br0` carrying `SWITCH_IP`.
pub struct Switch {
    pub ns: Netns,
    /// Prefix of every namespace name of this cluster (`tw-<prefix>sw-...`, `tw-<prefix>node<N>-...`), so a
    /// cluster that outlives its process (the demo) can be swept by name.
    prefix: String,
}

impl Switch {
    pub fn new() -> Switch {
        Self::with_prefix("")
    }

    /// A switch whose namespaces, and those of its nodes, are named `tw-<prefix>sw-...`/`tw-<prefix>node<N>-...`.
    pub fn with_prefix(prefix: &str) -> Switch {
        let ns = Netns::new(&format!("{prefix}sw"));
        ns.ip(&["link", "set", "lo", "up"]);
        // A fixed MAC: by default a bridge takes the lowest MAC of its ports, so it would change as nodes join
        // and leave the nodes' ARP entries for etcd's address (SWITCH_IP) pointing at a MAC that moved.
        ns.ip(&[
            "link",
            "add",
            "br0",
            "address",
            "02:74:77:00:00:fe",
            "type",
            "bridge",
        ]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{SWITCH_IP}/{UNDERLAY_PREFIX}"),
            "dev",
            "br0",
        ]);
        ns.ip(&["link", "set", "br0", "up"]);
        Switch {
            ns,
            prefix: prefix.to_string(),
        }
    }

    /// etcd inside the switch namespace, reachable from nodes at `SWITCH_IP`.
    pub fn start_etcd(&self) -> Etcd {
        Etcd::start_in(&self.ns, SWITCH_IP)
    }

    /// A node namespace with `eth0` = 10.250.0.<index>/24 on the switch, forwarding enabled.
    pub fn add_node(&self, index: u8) -> Node {
        assert!(
            (1..254).contains(&index),
            "node index {index} outside 1..254"
        );
        let ns = Netns::new(&format!("{}node{index}", self.prefix));
        let port = format!("p{index}");
        self.ns.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"]);
        let ip = Ipv4Addr::new(10, 250, 0, index);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("{ip}/{UNDERLAY_PREFIX}"),
            "dev",
            "eth0",
        ]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        Node {
            ns,
            index,
            underlay_ip: ip,
            port,
            switch: self.ns.name().to_string(),
        }
    }
}

impl Default for Switch {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Node {
    pub ns: Netns,
    pub index: u8,
    pub underlay_ip: Ipv4Addr,
    port: String,
    switch: String,
}

/// Options for one `twilld` run.
#[derive(Debug, Clone)]
pub struct TwilldArgs {
    pub etcd: String,
    pub resync_secs: f64,
    pub extra: Vec<String>,
}

impl Node {
    pub fn name(&self) -> String {
        format!("node{}", self.index)
    }

    /// Where this node's twilld writes subnet.env (inside the node's own temp dir, see `start_twilld`).
    pub fn subnet_file(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-subnet.env", self.ns.name()))
    }

    /// twilld's log (stdout + stderr of every run on this node, appended).
    pub fn log_file(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-twilld.log", self.ns.name()))
    }

    /// Starts `twilld` inside the node, identity `node<index>`, underlay `eth0`.
    pub fn start_twilld(&self, args: &TwilldArgs) -> Twilld {
        self.start_twilld_limited(args, None)
    }

    /// Like `start_twilld`, with `RLIMIT_NOFILE` set to `nofile` (soft and hard) when given.
    pub fn start_twilld_limited(&self, args: &TwilldArgs, nofile: Option<u64>) -> Twilld {
        let mut cmd = self.twilld_command(nofile);
        cmd.arg(format!("--node-name={}", self.name()));
        self.spawn_twilld(cmd, args)
    }

    /// Like `start_twilld`, without `--node-name` (nor NODE_NAME) and with these environment variables: the
    /// daemon learns its node's name as it does in a pod (e.g. from POD_NAME and POD_NAMESPACE).
    pub fn start_twilld_env(&self, args: &TwilldArgs, env: &[(&str, &str)]) -> Twilld {
        let mut cmd = self.twilld_command(None);
        cmd.env_remove("NODE_NAME").env_remove("FLANNELD_NODE_NAME");
        cmd.envs(env.iter().copied());
        self.spawn_twilld(cmd, args)
    }

    fn spawn_twilld(&self, mut cmd: Command, args: &TwilldArgs) -> Twilld {
        cmd.arg(format!("--etcd-endpoints={}", args.etcd))
            .arg("--iface=eth0")
            .arg(format!("--subnet-file={}", self.subnet_file().display()))
            .arg(format!("--resync={}", args.resync_secs))
            .args(&args.extra);
        DaemonProcess::spawn(cmd, self.log_file())
    }

    /// `ip netns exec <node> twilld`, its flags to be appended.
    fn twilld_command(&self, nofile: Option<u64>) -> Command {
        use std::os::unix::process::CommandExt;
        let bin = crate::bins::bin("twilld");
        let mut cmd = Command::new("ip");
        if let Some(n) = nofile {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe and only reads `limit`, copied into the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(["netns", "exec", self.ns.name()]).arg(&bin);
        cmd
    }

    /// The node's subnet from subnet.env (`FLANNEL_SUBNET`, e.g. 10.244.7.1/24 -> (10.244.7.0, 24)).
    pub fn subnet(&self) -> Option<(Ipv4Addr, u8)> {
        let text = std::fs::read_to_string(self.subnet_file()).ok()?;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?;
        let (ip, len) = v.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Some((Ipv4Addr::from(u32::from(ip) & mask), len))
    }

    /// `FLANNEL_MTU` from subnet.env.
    pub fn mtu(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.subnet_file()).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("FLANNEL_MTU="))?
            .trim()
            .parse()
            .ok()
    }

    /// Waits until subnet.env exists (twilld is ready).
    pub fn wait_ready(&self, timeout: Duration) -> (Ipv4Addr, u8) {
        let mut got = None;
        wait_until(timeout, || {
            got = self.subnet();
            got.is_some()
        });
        got.unwrap_or_else(|| {
            panic!(
                "{} did not write {} within {timeout:?}",
                self.name(),
                self.subnet_file().display()
            )
        })
    }

    /// A pod namespace behind bridge `cni0` on this node: gateway = subnet .1, pod = subnet .<host>, MTU from
    /// subnet.env, default route via the gateway. Built by hand (no CNI plugin) so overlay tests stand alone.
    pub fn add_pod(&self, host: u8) -> Pod {
        let (net, len) = self
            .subnet()
            .unwrap_or_else(|| panic!("{} has no subnet.env yet", self.name()));
        let subnet = Ipv4Net::new(net, len).unwrap_or_else(|e| panic!("{net}/{len}: {e}"));
        let (ns, ip) = self.add_bridged_pod(subnet.into(), self.mtu().unwrap_or(1450), host.into());
        match ip {
            IpAddr::V4(ip) => Pod { ns, ip },
            IpAddr::V6(_) => unreachable!("an IPv4 subnet gave {ip}"),
        }
    }

    /// `ip -n <node> <args>` output.
    pub fn ip(&self, args: &[&str]) -> String {
        self.ns.ip(args)
    }

    /// `bridge fdb show dev <dev>` inside the node.
    pub fn fdb(&self, dev: &str) -> String {
        let out = Command::new("bridge")
            .args(["-n", self.ns.name(), "fdb", "show", "dev", dev])
            .output()
            .unwrap_or_else(|e| panic!("running bridge: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether this node has the three entries for a peer (route, permanent neighbour, FDB) on `flannel.1`.
    pub fn has_peer(&self, subnet: Ipv4Addr, len: u8, mac: &str, public_ip: Ipv4Addr) -> bool {
        if self.ns.link_flags("flannel.1").is_none() {
            return false;
        }
        let routes = self.ip(&["route", "show", "dev", "flannel.1"]);
        let neigh = self.ip(&["neigh", "show", "dev", "flannel.1"]);
        let fdb = self.fdb("flannel.1");
        routes.contains(&format!("{subnet}/{len} via {subnet} "))
            && routes.contains("onlink")
            && neigh.contains(&format!("{subnet} lladdr {mac} PERMANENT"))
            && fdb.contains(&format!("{mac} dst {public_ip} self permanent"))
    }

    /// Whether this node has any entry for the peer.
    pub fn has_any_trace_of(&self, subnet: Ipv4Addr, mac: &str) -> bool {
        if self.ns.link_flags("flannel.1").is_none() {
            return false;
        }
        self.ip(&["route", "show", "dev", "flannel.1"])
            .contains(&format!("{subnet}/"))
            || self
                .ip(&["neigh", "show", "dev", "flannel.1"])
                .contains(&format!("{subnet} "))
            || self.fdb("flannel.1").contains(mac)
    }

    /// MAC of a link in the node.
    pub fn link_mac(&self, dev: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["-n", self.ns.name(), "-o", "link", "show", dev])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let pos = text.find("link/ether ")?;
        Some(text[pos + 11..].split_whitespace().next()?.to_string())
    }

    /// Runs a command in the node (e.g. curl against twilld's health port).
    pub fn exec(&self, cmd: &[&str]) -> std::process::Output {
        self.ns.exec(cmd)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The veth goes with the namespace; remove the switch side explicitly in case the node ns lingers.
        let _ = Command::new("ip")
            .args(["-n", &self.switch, "link", "del", &self.port])
            .output();
        let _ = std::fs::remove_file(self.subnet_file());
        let _ = std::fs::remove_file(self.log_file());
        let _ = std::fs::remove_file(crate::flanneld::log_file(self));
    }
}

pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

impl Pod {
    /// The pod a CNI ADD made in `ns`: its first IPv4 address of `result`.
    pub fn from_result(ns: Netns, result: &serde_json::Value) -> Pod {
        let ip = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str())
            .filter_map(|a| a.split('/').next())
            .find_map(|a| a.parse::<Ipv4Addr>().ok())
            .unwrap_or_else(|| panic!("no IPv4 address in {result}"));
        Pod { ns, ip }
    }

    /// `ping -c <count> -i <interval> -W 1 <ip>`; returns (sent, received).
    pub fn ping(&self, ip: Ipv4Addr, count: u32, interval: f64) -> (u32, u32) {
        let out = self.ns.exec(&[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            &interval.to_string(),
            "-W",
            "1",
            &ip.to_string(),
        ]);
        parse_ping(&String::from_utf8_lossy(&out.stdout))
    }

    /// One ping that must be answered.
    pub fn can_reach(&self, ip: Ipv4Addr) -> bool {
        self.ping(ip, 1, 0.2).1 == 1
    }

    /// Starts a background `ping` (for "no lost pings while ..." checks); `finish` returns (sent, received).
    pub fn ping_in_background(&self, ip: Ipv4Addr, count: u32, interval: f64) -> BackgroundPing {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.ns.name(),
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
            ])
            .args(["-i", &interval.to_string(), "-W", "1", &ip.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting ping: {e}"));
        BackgroundPing { child: Some(child) }
    }
}

/// Every pod pings every other pod within `timeout` each; a failure shows the last ping and `context()` (the
/// cluster's state or logs).
pub fn assert_pods_reach(pods: &[&Pod], timeout: Duration, context: impl Fn() -> String) {
    for a in pods {
        for b in pods {
            if a.ip == b.ip {
                continue;
            }
            assert!(
                wait_until(timeout, || a.can_reach(b.ip)),
                "pod {} cannot ping pod {}\nlast ping: {}\n{}",
                a.ip,
                b.ip,
                String::from_utf8_lossy(
                    &a.ns
                        .exec(&["ping", "-c", "1", "-W", "1", &b.ip.to_string()])
                        .stdout
                ),
                context()
            );
        }
    }
}

/// GET `path` from a daemon's HTTP port (twilld's health server) inside `node`, the socket opened in the
/// node's namespace; returns (status code, body), or ("000", "") when nothing answers.
pub fn http_get(node: &Node, port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let Ok(mut sock) = node
        .ns
        .run_in(|| std::net::TcpStream::connect(("127.0.0.1", port)))
    else {
        return ("000".into(), String::new());
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = sock.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes());
    let mut resp = String::new();
    let _ = sock.read_to_string(&mut resp);
    let code = resp.split_whitespace().nth(1).unwrap_or("000").to_string();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn parse_ping(out: &str) -> (u32, u32) {
    // "5 packets transmitted, 5 received, 0% packet loss, time 803ms"
    for line in out.lines() {
        if let Some((sent, rest)) = line.split_once(" packets transmitted, ") {
            let recv = rest
                .split_whitespace()
                .next()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            return (sent.trim().parse().unwrap_or(0), recv);
        }
    }
    (0, 0)
}

pub struct BackgroundPing {
    child: Option<Child>,
}

impl BackgroundPing {
    pub fn finish(mut self) -> (u32, u32) {
        let child = self
            .child
            .take()
            .unwrap_or_else(|| unreachable!("finish called twice"));
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for ping: {e}"));
        parse_ping(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for BackgroundPing {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A daemon's log file opened for appending, as its stdout and its stderr.
fn append_log(log: &Path) -> (std::fs::File, std::fs::File) {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| panic!("cloning log handle: {e}"));
    (out, err)
}

/// SIGTERM to a daemon and wait up to 10 s for its exit code; SIGKILL (and None) when it does not exit.
fn terminate_child(mut child: Child) -> Option<i32> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running daemon (twilld or flanneld) with its log; SIGKILLed on drop (kernel state stays in the node
/// namespace, which goes with the node).
pub struct DaemonProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

/// A running twilld.
pub type Twilld = DaemonProcess;

impl DaemonProcess {
    /// Starts `cmd` (the daemon, under `ip netns exec`) with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> DaemonProcess {
        // The daemon's binary follows `netns exec <ns>`.
        let bin = cmd
            .get_args()
            .nth(3)
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (out, err) = append_log(&log);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        DaemonProcess {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends SIGTERM and waits for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        terminate_child(self.child.take()?)
    }

    /// Waits up to `timeout` for the daemon to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
