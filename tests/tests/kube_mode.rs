//! twilld in Kubernetes mode (`--kube-subnet-mgr`) against a real control plane (etcd, kube-apiserver with RBAC,
//! kube-controller-manager allocating podCIDRs; `twill_tests::kube`): node namespaces registered as Node objects,
//! twilld on each with the token of the manifest's ServiceAccount (conf/kubernetes/kube-twill.yml, its
//! least-privilege ClusterRole), pods added through the real libcni with the manifest's conflist, and the real
//! flanneld `--kube-subnet-mgr` as the reference for the annotations and as a peer.
//!
//! Build first: `cargo build --workspace --bins` and `scripts/build-upstream.sh kubernetes flannel`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use twill_tests::bins::{bin, workspace_dir};
use twill_tests::cluster::{
    assert_pods_reach, http_get, wait_until, Node, Pod, Switch, Twilld, TwilldArgs,
};
use twill_tests::flanneld;
use twill_tests::kube::{ControlPlane, Credentials, NodeSpec, Options};
use twill_tests::libcni::LibCni;
use twill_tests::netns::Netns;

const PREFIX: &str = "flannel.alpha.coreos.com/";
const HEALTH_PORT: u16 = 8471;
const READY: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "kube-twill";
const SERVICE_ACCOUNT: &str = "twill";
const CONFIG_MAP: &str = "kube-twill-cfg";

fn manifest() -> String {
    std::fs::read_to_string(workspace_dir().join("conf/kubernetes/kube-twill.yml"))
        .expect("conf/kubernetes/kube-twill.yml")
}

/// A control plane with the manifest applied (its ServiceAccount, ClusterRole, binding and ConfigMap).
struct Cluster {
    cp: ControlPlane,
    /// The ServiceAccount's token, as the DaemonSet's pods get it.
    token: String,
    /// net-conf.json and the conflist, from the manifest's ConfigMap.
    net_conf: String,
    conflist: Value,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(switch: &Switch, opts: Options) -> Cluster {
        let cp = ControlPlane::start(switch, opts);
        cp.apply(&manifest());
        let data = |key: &str| {
            let path = format!("jsonpath={{.data.{}}}", key.replace('.', "\\."));
            cp.kubectl_ok(&["get", "configmap", "-n", NAMESPACE, CONFIG_MAP, "-o", &path])
        };
        let net_conf = data("net-conf.json");
        let conflist: Value = serde_json::from_str(&data("cni-conf.json")).expect("cni-conf.json");
        let token = cp.token(NAMESPACE, SERVICE_ACCOUNT);
        let dir = tempfile::Builder::new()
            .prefix("twill-kube-mode-")
            .tempdir()
            .expect("temp dir");
        Cluster {
            cp,
            token,
            net_conf,
            conflist,
            dir,
        }
    }

    /// The ServiceAccount's kubeconfig for `node` (one file per node, as each pod has its own).
    fn kubeconfig(&self, node: &Node) -> PathBuf {
        self.cp.kubeconfig_at(
            &self.dir.path().join(format!("{}.kubeconfig", node.name())),
            &Credentials::Token(self.token.clone()),
        )
    }

    /// The network config file, optionally with changes (e.g. EnableNFTables for flanneld).
    fn net_conf_file(&self, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let mut v: Value = serde_json::from_str(&self.net_conf).expect("net-conf.json");
        edit(&mut v);
        let path = self.dir.path().join(name);
        std::fs::write(&path, v.to_string()).unwrap();
        path
    }

    fn start_twilld(&self, node: &Node) -> Twilld {
        self.start_twilld_with(node, &[])
    }

    fn start_twilld_with(&self, node: &Node, extra: &[String]) -> Twilld {
        node.start_twilld(&self.twilld_args(node, extra))
    }

    /// twilld's flags in Kubernetes mode on `node` (the node's name is added by the caller, or learnt).
    fn twilld_args(&self, node: &Node, extra: &[String]) -> TwilldArgs {
        let mut args = vec![
            "--kube-subnet-mgr".to_string(),
            format!("--kubeconfig-file={}", self.kubeconfig(node).display()),
            format!(
                "--net-config-path={}",
                self.net_conf_file("net-conf.json", |_| {}).display()
            ),
            format!("--healthz-port={HEALTH_PORT}"),
            "--ip-masq".to_string(),
        ];
        args.extend_from_slice(extra);
        TwilldArgs {
            // Not used in Kubernetes mode: nothing listens there.
            etcd: "http://127.0.0.1:1".into(),
            resync_secs: 2.0,
            extra: args,
        }
    }

    fn annotations(&self, name: &str) -> BTreeMap<String, String> {
        let node = self
            .cp
            .node(name)
            .unwrap_or_else(|| panic!("no node {name}"));
        node["metadata"]["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.starts_with(PREFIX))
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn network_unavailable(&self, name: &str) -> Option<String> {
        let node = self.cp.node(name)?;
        node["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "NetworkUnavailable")
            .and_then(|c| {
                Some(format!(
                    "{} {}",
                    c["status"].as_str()?,
                    c["reason"].as_str()?
                ))
            })
    }
}

/// GET `path` from the daemon's health port inside the node: (status code, body).
fn curl(node: &Node, path: &str) -> (String, String) {
    http_get(node, HEALTH_PORT, path)
}

/// One node's CNI side: the manifest's conflist with paths of this node, driven through libcni in the node.
struct CniSite {
    lib: LibCni,
    net: String,
    _dir: tempfile::TempDir,
}

impl CniSite {
    fn new(node: &Node, conflist: &Value) -> CniSite {
        let dir = tempfile::Builder::new()
            .prefix("twill-kube-cni-")
            .tempdir()
            .expect("temp dir");
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        for name in ["flannel", "bridge", "host-local", "portmap", "loopback"] {
            symlink(bin(name), bin_dir.join(name)).unwrap();
        }
        let mut list = conflist.clone();
        list["plugins"][0]["subnetFile"] = json!(node.subnet_file());
        list["plugins"][0]["dataDir"] = json!(dir.path().join("flannel"));
        list["plugins"][0]["ipam"] = json!({"dataDir": dir.path().join("networks")});
        let lib = LibCni::scratch(vec![bin_dir]).in_netns(node.ns.path());
        let net = lib.write_conflist(&list);
        CniSite {
            lib,
            net,
            _dir: dir,
        }
    }

    /// A pod added through libcni: its namespace and address.
    fn add_pod(&self, id: &str) -> Pod {
        let ns = Netns::new("kpod");
        let result = self
            .lib
            .with_container_id(id)
            .add(&self.net, ns.path())
            .assert_success();
        Pod::from_result(ns, &result)
    }
}

/// Every pod reaches every other pod (each pair retried for a few seconds).
fn assert_all_reach(pods: &[&Pod], logs: impl Fn() -> String) {
    assert_pods_reach(pods, Duration::from_secs(15), logs);
}

fn subnet_of(node: &Node) -> (Ipv4Addr, u8) {
    node.subnet()
        .unwrap_or_else(|| panic!("{} has no subnet.env", node.name()))
}

fn pod_cidr(cidrs: &[String]) -> (Ipv4Addr, u8) {
    let v4 = cidrs
        .iter()
        .find(|c| !c.contains(':'))
        .expect("an IPv4 podCIDR");
    let (a, l) = v4.split_once('/').unwrap();
    (a.parse().unwrap(), l.parse().unwrap())
}

fn logs(c: &Cluster, nodes: &[&Node]) -> String {
    let mut s = c.cp.logs();
    for n in nodes {
        s.push_str(&format!(
            "--- twilld on {} ---\n{}\n",
            n.name(),
            std::fs::read_to_string(n.log_file()).unwrap_or_default()
        ));
    }
    s
}

/// Registers `nodes` as a kubelet does, with an annotation of its own: flanneld needs some annotation there (on a
/// Node without any it panics, "assignment to entry in nil map"), where twilld just adds its own.
fn join_as_kubelet(c: &Cluster, nodes: &[Node]) {
    for n in nodes {
        c.cp.join(n);
        c.cp.kubectl_ok(&[
            "annotate",
            "node",
            &n.name(),
            "volumes.kubernetes.io/controller-managed-attach-detach=true",
        ]);
    }
}

/// [`logs`], then flanneld's on `flanneld_node`.
fn logs_with_flanneld(c: &Cluster, nodes: &[&Node], flanneld_node: &Node) -> String {
    format!(
        "{}\n--- flanneld ---\n{}",
        logs(c, nodes),
        std::fs::read_to_string(flanneld::log_file(flanneld_node)).unwrap_or_default()
    )
}

/// Every node of `nodes` writes its subnet.env within [`READY`].
fn assert_subnets_written(nodes: &[Node], logs: impl Fn() -> String) {
    for n in nodes {
        assert!(
            wait_until(READY, || n.subnet().is_some()),
            "{} wrote no subnet.env\n{}",
            n.name(),
            logs()
        );
    }
}

/// node1's annotations (flanneld's), whose keys twilld on node2 publishes too.
fn flanneld_annotations_matched_by_twilld(c: &Cluster) -> BTreeMap<String, String> {
    let flanneld_annotations = c.annotations("node1");
    assert_eq!(
        flanneld_annotations.keys().collect::<Vec<_>>(),
        c.annotations("node2").keys().collect::<Vec<_>>(),
        "flanneld and twilld publish different annotations"
    );
    flanneld_annotations
}

/// twilld (with `extra`) takes `node` over from flanneld `fl`, ready within [`READY`].
fn twilld_takes_over(
    c: &Cluster,
    fl: &mut flanneld::Flanneld,
    node: &Node,
    extra: &[String],
    all: &[&Node],
) -> Twilld {
    fl.terminate();
    let twilld = c.start_twilld_with(node, extra);
    assert!(
        wait_until(READY, || curl(node, "/readyz").0 == "200"),
        "{:?}\n{}",
        curl(node, "/readyz"),
        logs(c, all)
    );
    twilld
}

/// The peer entries `node` holds for `peer` (route, neighbour, FDB), read from the peer's annotations.
fn has_peer(c: &Cluster, node: &Node, peer: &Node) -> bool {
    let a = c.annotations(&peer.name());
    let Some(data) = a.get(&format!("{PREFIX}backend-data")) else {
        return false;
    };
    let mac = serde_json::from_str::<Value>(data).unwrap_or_default()["VtepMAC"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (subnet, len) = pod_cidr(&c.cp.pod_cidrs(&peer.name()));
    node.has_peer(subnet, len, &mac, peer.underlay_ip)
}

#[test]
fn twilld_nodes_take_podcidrs_publish_flannel_annotations_and_pods_reach_each_other() {
    let switch = Switch::new();
    let c = Cluster::start(&switch, Options::ipv4());
    let nodes: Vec<Node> = (1..=3).map(|i| switch.add_node(i)).collect();
    let cidrs: Vec<Vec<String>> = nodes.iter().map(|n| c.cp.join(n)).collect();
    let mut daemons: Vec<Twilld> = nodes.iter().map(|n| c.start_twilld(n)).collect();
    let all: Vec<&Node> = nodes.iter().collect();
    for (n, cidr) in nodes.iter().zip(&cidrs) {
        assert_eq!(
            n.wait_ready(READY),
            pod_cidr(cidr),
            "{}: subnet.env is not the podCIDR\n{}",
            n.name(),
            logs(&c, &all)
        );
    }
    for n in &nodes {
        assert!(
            wait_until(READY, || curl(n, "/readyz").0 == "200"),
            "{} not ready: {:?}\n{}",
            n.name(),
            curl(n, "/readyz"),
            logs(&c, &all)
        );
        let a = c.annotations(&n.name());
        let mac = n.link_mac("flannel.1").expect("flannel.1");
        assert_eq!(
            a,
            BTreeMap::from([
                (
                    format!("{PREFIX}backend-data"),
                    format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)
                ),
                (format!("{PREFIX}backend-type"), "vxlan".to_string()),
                (format!("{PREFIX}kube-subnet-manager"), "true".to_string()),
                (format!("{PREFIX}public-ip"), n.underlay_ip.to_string()),
            ]),
            "{}",
            n.name()
        );
        assert!(
            wait_until(Duration::from_secs(20), || c
                .network_unavailable(&n.name())
                .as_deref()
                == Some("False FlannelIsUp")),
            "{}: NetworkUnavailable {:?}",
            n.name(),
            c.network_unavailable(&n.name())
        );
    }

    let sites: Vec<CniSite> = nodes.iter().map(|n| CniSite::new(n, &c.conflist)).collect();
    let pods: Vec<Pod> = sites
        .iter()
        .enumerate()
        .map(|(i, s)| s.add_pod(&format!("kpod{i}")))
        .collect();
    for (p, n) in pods.iter().zip(&nodes) {
        let (net, len) = subnet_of(n);
        let mask = u32::MAX << (32 - len);
        assert_eq!(
            u32::from(p.ip) & mask,
            u32::from(net),
            "pod outside its node's podCIDR"
        );
    }
    assert_all_reach(&pods.iter().collect::<Vec<_>>(), || logs(&c, &all));

    // twilld restart: same subnet, same VTEP MAC, same annotations; peers keep their entries.
    let before = c.annotations("node1");
    let mac = nodes[0].link_mac("flannel.1");
    daemons[0].terminate();
    daemons[0] = c.start_twilld(&nodes[0]);
    assert!(wait_until(READY, || curl(&nodes[0], "/readyz").0 == "200"));
    assert_eq!(c.annotations("node1"), before);
    assert_eq!(nodes[0].link_mac("flannel.1"), mac);
    assert_eq!(subnet_of(&nodes[0]), pod_cidr(&cidrs[0]));
    assert_all_reach(&[&pods[0], &pods[1]], || logs(&c, &all));

    // A node joins: every peer programs it, and its pod reaches the others.
    let n4 = switch.add_node(4);
    c.cp.join(&n4);
    let d4 = c.start_twilld(&n4);
    n4.wait_ready(READY);
    for n in &nodes {
        assert!(
            wait_until(Duration::from_secs(20), || has_peer(&c, n, &n4)),
            "{} did not program node4\n{}",
            n.name(),
            logs(&c, &all)
        );
    }
    let site4 = CniSite::new(&n4, &c.conflist);
    let p4 = site4.add_pod("kpod4");
    assert_all_reach(&[&p4, &pods[0], &pods[2]], || logs(&c, &all));

    // The node is deleted: its entries go from every peer.
    let (s4, _) = subnet_of(&n4);
    let mac4 = n4.link_mac("flannel.1").unwrap();
    drop(d4);
    c.cp.delete_node("node4");
    for n in &nodes {
        assert!(
            wait_until(Duration::from_secs(20), || !n.has_any_trace_of(s4, &mac4)),
            "{} kept node4's entries\n{}",
            n.name(),
            logs(&c, &all)
        );
    }
    drop(daemons);
}

#[test]
fn api_server_restart_loses_no_route_and_readyz_says_why_meanwhile() {
    let switch = Switch::new();
    let mut c = Cluster::start(&switch, Options::ipv4());
    let nodes: Vec<Node> = (1..=2).map(|i| switch.add_node(i)).collect();
    for n in &nodes {
        c.cp.join(n);
    }
    let mut daemons: Vec<Twilld> = nodes.iter().map(|n| c.start_twilld(n)).collect();
    for n in &nodes {
        n.wait_ready(READY);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let sites: Vec<CniSite> = nodes.iter().map(|n| CniSite::new(n, &c.conflist)).collect();
    let pods: Vec<Pod> = sites
        .iter()
        .enumerate()
        .map(|(i, s)| s.add_pod(&format!("apod{i}")))
        .collect();
    assert_all_reach(&[&pods[0], &pods[1]], || logs(&c, &all));
    let routes = nodes[0].ip(&["route", "show", "dev", "flannel.1"]);

    c.cp.stop_apiserver();
    let ping = pods[0].ping_in_background(pods[1].ip, 40, 0.1);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (code, body) = curl(&nodes[0], "/readyz");
            code == "200" && body.contains("warning: the Kubernetes API server unreachable")
        }),
        "/readyz does not say the API server is unreachable: {:?}",
        curl(&nodes[0], "/readyz")
    );
    let (sent, received) = ping.finish();
    assert_eq!(sent, received, "pings lost while the API server was down");
    assert_eq!(nodes[0].ip(&["route", "show", "dev", "flannel.1"]), routes);

    // node2's twilld restarts meanwhile (a node rebooting during the outage): it waits, says why, and its
    // pods keep talking on the kernel state it left.
    daemons[1].terminate();
    daemons[1] = c.start_twilld(&nodes[1]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (code, body) = curl(&nodes[1], "/readyz");
            code == "503" && body.contains("the Kubernetes API server unreachable")
        }),
        "/readyz of a twilld started without API server: {:?}",
        curl(&nodes[1], "/readyz")
    );
    assert!(pods[1].can_reach(pods[0].ip));

    c.cp.start_apiserver();
    assert!(
        wait_until(READY, || curl(&nodes[1], "/readyz").0 == "200"),
        "node2's twilld did not get ready once the API server was back: {:?}\n{}",
        curl(&nodes[1], "/readyz"),
        logs(&c, &all)
    );
    assert!(
        wait_until(Duration::from_secs(60), || !curl(&nodes[0], "/readyz")
            .1
            .contains("unreachable")),
        "the warning stays after the API server is back: {:?}\n{}",
        curl(&nodes[0], "/readyz"),
        logs(&c, &all)
    );
    assert_eq!(nodes[0].ip(&["route", "show", "dev", "flannel.1"]), routes);
    // The watch is live again: a node joining now is programmed.
    let n3 = switch.add_node(3);
    c.cp.join(&n3);
    let _d3 = c.start_twilld(&n3);
    n3.wait_ready(READY);
    assert!(
        wait_until(Duration::from_secs(30), || has_peer(&c, &nodes[0], &n3)),
        "node1 did not program node3 after the API server restart\n{}",
        logs(&c, &all)
    );
    assert_all_reach(&[&pods[0], &pods[1]], || logs(&c, &all));
}

#[test]
fn a_node_without_podcidr_waits_reports_it_and_starts_once_assigned_honouring_public_ip_overwrite()
{
    let switch = Switch::new();
    let mut opts = Options::ipv4();
    opts.allocate_node_cidrs = false;
    let c = Cluster::start(&switch, opts);
    let n = switch.add_node(1);
    c.cp.register_node(&NodeSpec::of(&n));
    // An administrator's address to advertise instead of ours (this node has no peers: nothing is sent there).
    c.cp.kubectl_ok(&[
        "annotate",
        "node",
        "node1",
        &format!("{PREFIX}public-ip-overwrite=192.0.2.10"),
    ]);
    let _d = c.start_twilld(&n);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (code, body) = curl(&n, "/readyz");
            code == "503" && body.contains("has no podCIDR assigned")
        }),
        "/readyz does not report the missing podCIDR: {:?}\n{}",
        curl(&n, "/readyz"),
        logs(&c, &[&n])
    );
    let body = curl(&n, "/readyz").1;
    assert!(
        body.contains("--allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16"),
        "{body}"
    );
    let log = std::fs::read_to_string(n.log_file()).unwrap_or_default();
    assert!(log.contains("has no podCIDR assigned"), "{log}");
    assert!(n.subnet().is_none(), "subnet.env written without a podCIDR");

    c.cp.kubectl_ok(&[
        "patch",
        "node",
        "node1",
        "-p",
        r#"{"spec":{"podCIDR":"10.244.42.0/24","podCIDRs":["10.244.42.0/24"]}}"#,
    ]);
    assert_eq!(n.wait_ready(READY), ("10.244.42.0".parse().unwrap(), 24));
    assert!(wait_until(READY, || curl(&n, "/readyz").0 == "200"));
    let a = c.annotations("node1");
    assert_eq!(a[&format!("{PREFIX}public-ip")], "192.0.2.10", "{a:?}");
    // The tunnel itself still starts at the node's own address.
    assert!(n
        .ip(&["-d", "link", "show", "flannel.1"])
        .contains(&format!("local {}", n.underlay_ip)));
}

#[test]
fn flanneld_and_twilld_nodes_are_peers_and_twilld_publishes_flanneld_bytes() {
    let switch = Switch::new();
    let c = Cluster::start(&switch, Options::ipv4());
    // flanneld needs br_netfilter in iptables mode; nftables mode needs nothing from the host.
    let flannel_conf = c.net_conf_file("flanneld-net-conf.json", |v| {
        v["EnableNFTables"] = json!(true)
    });
    let nodes: Vec<Node> = (1..=3).map(|i| switch.add_node(i)).collect();
    join_as_kubelet(&c, &nodes);
    let all: Vec<&Node> = nodes.iter().collect();
    // node1 runs flanneld, the others twilld.
    let mut fl = flanneld::start_kube(&nodes[0], &c.kubeconfig(&nodes[0]), &flannel_conf);
    let twillds: Vec<Twilld> = nodes[1..].iter().map(|n| c.start_twilld(n)).collect();
    let flanneld_log = || logs_with_flanneld(&c, &all, &nodes[0]);
    assert_subnets_written(&nodes, flanneld_log);
    let flanneld_annotations = flanneld_annotations_matched_by_twilld(&c);
    let sites: Vec<CniSite> = nodes.iter().map(|n| CniSite::new(n, &c.conflist)).collect();
    let pods: Vec<Pod> = sites
        .iter()
        .enumerate()
        .map(|(i, s)| s.add_pod(&format!("mpod{i}")))
        .collect();
    assert_all_reach(&pods.iter().collect::<Vec<_>>(), flanneld_log);

    // twilld takes over node1 from flanneld: it keeps the device's MAC, so what it publishes must be
    // flanneld's bytes exactly; nothing is patched, and the pods keep talking.
    let _t1 = twilld_takes_over(&c, &mut fl, &nodes[0], &[], &all);
    assert_eq!(c.annotations("node1"), flanneld_annotations);
    assert_all_reach(&pods.iter().collect::<Vec<_>>(), || logs(&c, &all));
    drop(twillds);
}

#[path = "kube_mode_support/dual_stack.rs"]
mod dual_stack;
#[path = "kube_mode_support/pod_name.rs"]
mod pod_name;
