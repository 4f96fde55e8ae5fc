//! Shared fixtures of the bridge tests (tests/tests/bridge*.rs): a test "node" namespace the plugin runs in
//! (so bridges, sysctls and firewall state are isolated and vanish with it), pods, host-local state in a
//! temporary directory, and normalised snapshots of kernel state for the differential test.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use twill_tests::bins;
use twill_tests::exec::{Invocation, Outcome};
use twill_tests::netns::Netns;

pub fn ours() -> PathBuf {
    bins::bin("bridge")
}

pub fn reference() -> PathBuf {
    bins::ref_bin("bridge")
}

/// `CNI_PATH` for the delegates: our binaries first (so our `host-local` serves IPAM), then the reference
/// plugins. `TWILL_BRIDGE_CNI_PATH` overrides it (e.g. `/usr/lib/cni` to isolate a host-local bug).
pub fn cni_path() -> String {
    match std::env::var("TWILL_BRIDGE_CNI_PATH") {
        Ok(p) if !p.is_empty() => p,
        _ => format!("{}:{}", bins::bin_dir().display(), bins::REFERENCE_DIR),
    }
}

/// A simulated node: its namespace and its host-local data directory.
pub struct Node {
    pub ns: Netns,
    pub ipam_dir: tempfile::TempDir,
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    pub fn new() -> Node {
        let ns = Netns::new("brn");
        let ipam_dir = tempfile::Builder::new()
            .prefix("twill-bridge-ipam-")
            .tempdir()
            .expect("create host-local data dir");
        Node { ns, ipam_dir }
    }

    /// A host-local `ipam` section over `ranges` (range sets), storing leases in this node's directory.
    pub fn ipam(&self, ranges: Value) -> Value {
        json!({"type": "host-local", "dataDir": self.ipam_dir.path(), "ranges": ranges})
    }

    /// A bridge config with IPv4 `10.88.0.0/24` IPAM, `extra` merged on top (null removes a key).
    pub fn conf(&self, name: &str, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": name,
            "type": "bridge",
            "bridge": "cni0",
            "ipam": self.ipam(json!([[{"subnet": "10.88.0.0/24"}]])),
        });
        merge(&mut c, extra);
        c
    }

    /// [`Node::run`] with an explicit `CNI_PATH`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_with_path(
        &self,
        plugin: &Path,
        command: &str,
        pod: Option<&Path>,
        container_id: &str,
        ifname: &str,
        conf: &Value,
        cni_path: &str,
    ) -> Outcome {
        Invocation::new(plugin, command)
            .libcni_style()
            .container_id(Some(container_id))
            .ifname(Some(ifname))
            .netns(pod)
            .cni_path(Some(cni_path))
            .stdin_json(conf)
            .in_netns(self.ns.path())
            .run()
    }

    /// Run `plugin` for `command` inside the node, runtime-style.
    pub fn run(
        &self,
        plugin: &Path,
        command: &str,
        pod: Option<&Path>,
        container_id: &str,
        ifname: &str,
        conf: &Value,
    ) -> Outcome {
        Invocation::new(plugin, command)
            .libcni_style()
            .container_id(Some(container_id))
            .ifname(Some(ifname))
            .netns(pod)
            .cni_path(Some(&cni_path()))
            .stdin_json(conf)
            .in_netns(self.ns.path())
            .run()
    }

    /// `command` of `plugin` for each of `pods` in turn (container ids `<id_prefix><i>`), each required to
    /// succeed: what each printed (ADD's results).
    pub fn run_each(
        &self,
        plugin: &Path,
        command: &str,
        pods: &[Netns],
        id_prefix: &str,
        ifname: &str,
        conf: &Value,
    ) -> Vec<Value> {
        pods.iter()
            .enumerate()
            .map(|(i, pod)| {
                let id = format!("{id_prefix}{i}");
                self.run(plugin, command, Some(pod.path()), &id, ifname, conf)
                    .assert_success()
            })
            .collect()
    }

    /// [`Node::run_each`] with every pod's `command` at once, each on its own thread.
    pub fn run_parallel(
        &self,
        plugin: &Path,
        command: &str,
        pods: &[Netns],
        id_prefix: &str,
        ifname: &str,
        conf: &Value,
    ) -> Vec<Value> {
        std::thread::scope(|s| {
            let jobs: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, pod)| {
                    s.spawn(move || {
                        let id = format!("{id_prefix}{i}");
                        self.run(plugin, command, Some(pod.path()), &id, ifname, conf)
                            .assert_success()
                    })
                })
                .collect();
            jobs.into_iter()
                .map(|j| j.join().expect("plugin thread"))
                .collect()
        })
    }

    /// The masquerade rules that name one of `result`'s addresses.
    pub fn masquerade_of(&self, result: &Value) -> Vec<String> {
        let ips = result_addrs(result);
        self.masquerade_lines()
            .into_iter()
            .filter(|l| ips.iter().any(|ip| l.contains(ip.as_str())))
            .collect()
    }

    /// Leases of `network` in the host-local directory (file names that are IP addresses).
    pub fn leases(&self, network: &str) -> Vec<String> {
        twill_tests::leases::held(&self.ipam_dir.path().join(network))
    }

    /// Names of the veth devices in the node.
    pub fn veths(&self) -> Vec<String> {
        links(&self.ns, &["type", "veth"])
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// The node's nftables ruleset.
    pub fn nft(&self) -> String {
        self.ns.exec_ok(&["nft", "list", "ruleset"])
    }

    /// The node's iptables and ip6tables nat tables.
    pub fn iptables_nat(&self) -> String {
        let mut s = self.ns.exec_ok(&["iptables-save", "-t", "nat"]);
        s.push_str(&self.ns.exec_ok(&["ip6tables-save", "-t", "nat"]));
        s
    }

    /// Masquerade rules of the node, whichever backend: lines mentioning masquerade or a CNI chain.
    pub fn masquerade_lines(&self) -> Vec<String> {
        let nft = self.nft();
        let ipt = self.iptables_nat();
        nft.lines()
            .chain(ipt.lines())
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                (l.contains("masquerade") || l.contains("cni-") || l.contains("saddr"))
                    && !l.starts_with('#')
            })
            .map(|l| l.trim().to_string())
            .collect()
    }
}

/// Merge `extra` into `base` (objects recursively; `null` deletes).
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(slot) = b.get_mut(&k) {
                    merge(slot, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, e) => *b = e,
    }
}

fn ip_json(ns: &Netns, args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = Command::new("ip")
        .args(["-n", ns.name()])
        .args(&full)
        .output()
        .expect("run ip");
    if !out.status.success() {
        return Value::Array(vec![]);
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]))
}

/// `ip -j -d link show <filter>` in `ns`.
pub fn links(ns: &Netns, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["-d", "link", "show"];
    args.extend_from_slice(filter);
    ip_json(ns, &args).as_array().cloned().unwrap_or_default()
}

/// A sysctl inside `ns` ("-" when it does not exist).
pub fn sysctl(ns: &Netns, key: &str) -> String {
    let out = ns.exec(&["cat", &format!("/proc/sys/{key}")]);
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        "-".into()
    }
}

fn sorted_flags(l: &Value) -> Vec<String> {
    let mut f: Vec<String> = l["flags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    f.sort();
    f
}

/// Global (non link-local) addresses of a device.
pub fn addresses(ns: &Netns, dev: &str) -> Vec<String> {
    let v = ip_json(ns, &["addr", "show", "dev", dev]);
    let mut out = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "link" {
                continue;
            }
            out.push(format!(
                "{}/{}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            ));
        }
    }
    out.sort();
    out
}

/// Unicast routes of the main and custom tables, link-local ones left out.
pub fn routes(ns: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let v = ip_json(ns, &[fam, "route", "show", "table", "all"]);
        for r in v.as_array().into_iter().flatten() {
            let dst = r["dst"].as_str().unwrap_or_default();
            if r["table"] == "local"
                || r["type"] == "multicast"
                || dst.starts_with("fe80")
                || dst.starts_with("ff00")
            {
                continue;
            }
            out.push(format!(
                "{dst} via {} dev {} proto {} scope {} metric {} table {}",
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap_or("-"),
                r["protocol"].as_str().unwrap_or("-"),
                r["scope"].as_str().unwrap_or("-"),
                r["metric"],
                r["table"].as_str().unwrap_or("main"),
            ));
        }
    }
    out.sort();
    out
}

/// What the differential test compares in the pod: the interface's kind, MTU, flags and state, its
/// addresses, the pod's routes, and the sysctls the plugin sets.
pub fn pod_state(pod: &Netns, ifname: &str) -> Value {
    let l = links(pod, &["dev", ifname])
        .into_iter()
        .next()
        .unwrap_or(Value::Null);
    json!({
        "kind": l["linkinfo"]["info_kind"],
        "mtu": l["mtu"],
        "flags": sorted_flags(&l),
        "operstate": l["operstate"],
        "addresses": addresses(pod, ifname),
        "routes": routes(pod),
        "arp_notify": sysctl(pod, &format!("net/ipv4/conf/{ifname}/arp_notify")),
        "accept_dad": sysctl(pod, &format!("net/ipv6/conf/{ifname}/accept_dad")),
        "disable_ipv6": sysctl(pod, &format!("net/ipv6/conf/{ifname}/disable_ipv6")),
        "lo_disable_ipv6": sysctl(pod, "net/ipv6/conf/lo/disable_ipv6"),
    })
}

/// What the differential test compares in the node: the bridge (MTU, flags, promiscuity, VLAN filtering,
/// addresses, accept_ra), every port (kind, MTU, flags, hairpin, isolation), forwarding, routes.
pub fn node_state(node: &Netns, bridge: &str) -> Value {
    let br = links(node, &["dev", bridge])
        .into_iter()
        .next()
        .unwrap_or(Value::Null);
    let mut ports: Vec<Value> = links(node, &["master", bridge])
        .iter()
        .map(|p| {
            json!({
                "kind": p["linkinfo"]["info_kind"],
                "mtu": p["mtu"],
                "flags": sorted_flags(p),
                "hairpin": p["linkinfo"]["info_slave_data"]["hairpin"],
                "isolated": p["linkinfo"]["info_slave_data"]["isolated"],
                "accept_ra": sysctl(node, &format!("net/ipv6/conf/{}/accept_ra", p["ifname"].as_str().unwrap_or("-"))),
            })
        })
        .collect();
    ports.sort_by_key(|p| p.to_string());
    json!({
        "bridge": {
            "kind": br["linkinfo"]["info_kind"],
            "mtu": br["mtu"],
            "flags": sorted_flags(&br),
            "promiscuity": br["promiscuity"],
            "vlan_filtering": br["linkinfo"]["info_data"]["vlan_filtering"],
            "addresses": addresses(node, bridge),
            "accept_ra": sysctl(node, &format!("net/ipv6/conf/{bridge}/accept_ra")),
        },
        "ports": ports,
        "ip_forward": sysctl(node, "net/ipv4/ip_forward"),
        "ipv6_forwarding": sysctl(node, "net/ipv6/conf/all/forwarding"),
        "routes": routes(node),
    })
}

/// A result with everything random replaced: MACs, the host veth's name, the sandbox path.
pub fn normalize_result(v: &Value) -> Value {
    let mut v = v.clone();
    // An empty `dns` object: the reference 1.1.1 (and ours) print it, libcni >= 1.2 results (reference
    // v1.10) leave it out; both mean "no DNS settings".
    if v.get("dns")
        .is_some_and(|d| d.as_object().is_some_and(|o| o.is_empty()))
    {
        if let Some(obj) = v.as_object_mut() {
            obj.remove("dns");
        }
    }
    if let Some(ifs) = v.get_mut("interfaces").and_then(Value::as_array_mut) {
        for i in ifs {
            if let Some(obj) = i.as_object_mut() {
                if obj.contains_key("mac") {
                    obj.insert("mac".into(), json!("<mac>"));
                }
                if obj
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.starts_with("veth"))
                {
                    obj.insert("name".into(), json!("<veth>"));
                }
                if obj.contains_key("sandbox") {
                    obj.insert("sandbox".into(), json!("<netns>"));
                }
            }
        }
    }
    v
}

/// Ping `addr` once from inside `ns` (ICMP for v4, ICMPv6 for v6); true when answered.
pub fn ping(ns: &Netns, addr: &str) -> bool {
    let fam = if addr.contains(':') { "-6" } else { "-4" };
    (0..3).any(|_| {
        ns.exec(&["ping", fam, "-c", "1", "-W", "1", addr])
            .status
            .success()
    })
}

/// The addresses (without prefix) of a CNI result's `ips`.
pub fn result_addrs(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str())
        .filter_map(|a| a.split('/').next().map(str::to_string))
        .collect()
}

/// The first address of the result's `ips` of the given family, without prefix.
pub fn result_ip(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["address"].as_str())
        .find(|a| a.contains(':') == v6)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| {
            panic!(
                "no {} address in {result}",
                if v6 { "IPv6" } else { "IPv4" }
            )
        })
        .to_string()
}
