//! `CNI_NETNS` is judged only by the plugins that enter it. host-local never does, so, as the reference
//! host-local, it takes any value (callers run IPAM with placeholder paths), and ours and the reference share
//! one dataDir under such a path. The bridge and loopback enter it on ADD and CHECK and keep their clear
//! code-4 error for a path that is no namespace; their DEL, and flannel's delegation, succeed when it is gone.

mod host_local_common;

use host_local_common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use twill_tests::bins::{bin, link_plugin_dir, ref_bin, require_root};
use twill_tests::exec::{Invocation, Outcome};
use twill_tests::netns::Netns;

/// Values of `CNI_NETNS` that are no network namespace: missing paths, a file, a directory, not a path.
const PLACEHOLDERS: [&str; 5] = [
    "/x",
    "/run/netns/twill-no-such-namespace",
    "/proc/self/status",
    "/run",
    "placeholder",
];

fn run_with_netns(plugin: &Path, command: &str, id: &str, netns: &str, conf: &Value) -> Outcome {
    Invocation::new(plugin, command)
        .libcni_style()
        .container_id(Some(id))
        .netns_str(Some(netns))
        .stdin_json(conf)
        .run()
}

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

#[test]
fn host_local_accepts_any_netns_value_as_the_reference_does() {
    let net = TestNet::new(json!({"subnet": "10.74.0.0/24"}));
    let ref_conf = net.conf_v("1.0.0");
    for (i, netns) in PLACEHOLDERS.iter().enumerate() {
        for (who, plugin, conf) in [
            ("reference", reference(), &ref_conf),
            ("ours", ours(), &net.conf),
        ] {
            let id = format!("{who}-{i}");
            let add = run_with_netns(&plugin, "ADD", &id, netns, conf);
            let result = add.assert_success();
            assert_eq!(addresses(&result).len(), 1, "{who} ADD with {netns:?}");
            run_with_netns(&plugin, "CHECK", &id, netns, &with_prev(conf, &result))
                .assert_success();
            run_with_netns(&plugin, "DEL", &id, netns, conf).assert_success();
        }
    }
    assert!(net.leases().is_empty(), "{:?}", net.leases());
}

#[test]
fn reference_and_ours_share_leases_under_a_placeholder_netns() {
    let net =
        TestNet::new(json!({"ranges": [[{"subnet": "10.75.0.0/24"}], [{"subnet": "fd75::/64"}]]}));
    let ref_conf = net.conf_v("1.0.0");
    let placeholder = "/x";
    // The reference allocates; ours sees the lease (CHECK), never hands it out again and releases it.
    let r =
        run_with_netns(&reference(), "ADD", "from-ref", placeholder, &ref_conf).assert_success();
    let o = run_with_netns(&ours(), "ADD", "from-ours", placeholder, &net.conf).assert_success();
    let (ra, oa): (BTreeSet<String>, BTreeSet<String>) = (
        addresses(&r).into_iter().collect(),
        addresses(&o).into_iter().collect(),
    );
    assert!(
        ra.is_disjoint(&oa),
        "one address handed out twice: {ra:?} {oa:?}"
    );
    assert_eq!(
        net.leases().values().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "from-ref\r\neth0".to_string(),
            "from-ours\r\neth0".to_string()
        ])
    );
    run_with_netns(
        &ours(),
        "CHECK",
        "from-ref",
        placeholder,
        &with_prev(&net.conf, &r),
    )
    .assert_success();
    // And the other way round: the reference checks and releases what ours allocated.
    run_with_netns(
        &reference(),
        "CHECK",
        "from-ours",
        placeholder,
        &with_prev(&ref_conf, &o),
    )
    .assert_success();
    run_with_netns(&ours(), "DEL", "from-ref", placeholder, &net.conf).assert_success();
    run_with_netns(&reference(), "DEL", "from-ours", placeholder, &ref_conf).assert_success();
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    // Both DELs are idempotent under the placeholder too.
    run_with_netns(&ours(), "DEL", "from-ours", placeholder, &net.conf).assert_success();
    run_with_netns(&reference(), "DEL", "from-ref", placeholder, &ref_conf).assert_success();
}

#[test]
fn portmap_takes_a_placeholder_netns_as_the_reference_does() {
    require_root();
    let node = Netns::new("nsnode");
    let conf = json!({"cniVersion": "1.0.0", "name": "twill-netns", "type": "portmap",
        "capabilities": {"portMappings": true},
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
                       "ips": [{"address": "10.76.0.2/24", "interface": 0}]}});
    for plugin in [ref_bin("portmap"), bin("portmap")] {
        for command in ["ADD", "CHECK", "DEL"] {
            Invocation::new(&plugin, command)
                .libcni_style()
                .netns_str(Some("/x"))
                .stdin_json(&conf)
                .in_netns(node.path())
                .run()
                .assert_success();
        }
    }
}

/// A node namespace with a CNI bin dir of our plugins (so the bridge runs host-local in-process) and a scratch
/// dataDir for host-local and flannel.
struct Node {
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        require_root();
        let ns = Netns::node("nsnode");
        let dir = tempfile::tempdir().expect("node dir");
        let node = Node { ns, dir };
        link_plugin_dir(
            &node.bin_dir(),
            ["bridge", "host-local", "loopback", "flannel"].map(|name| (name, bin(name))),
        );
        node
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn bridge_conf(&self) -> Value {
        json!({"cniVersion": "1.0.0", "name": "twns", "type": "bridge", "bridge": "twns0",
               "isGateway": true,
               "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": self.ipam_dir()}})
    }

    fn exec(&self, plugin: &str, command: &str, netns: &str, conf: &Value) -> Outcome {
        Invocation::new(self.bin_dir().join(plugin), command)
            .libcni_style()
            .container_id(Some("twill-netns"))
            .netns_str(Some(netns))
            .cni_path(Some(&self.bin_dir().display().to_string()))
            .stdin_json(conf)
            .in_netns(self.ns.path())
            .run()
    }

    fn leases(&self, net: &str) -> Vec<String> {
        twill_tests::leases::held(&self.ipam_dir().join(net))
    }
}

/// A code-4 error that names the variable and the path.
fn assert_netns_error(outcome: &Outcome, netns: &str) {
    let err = outcome.assert_error(4);
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("CNI_NETNS") && msg.contains(netns),
        "unclear error: {err}"
    );
}

#[test]
fn bridge_and_loopback_refuse_a_netns_that_is_no_namespace() {
    let node = Node::new();
    let before = node.ns.state();
    let bridge = node.bridge_conf();
    let lo = json!({"cniVersion": "1.0.0", "name": "twns-lo", "type": "loopback"});
    for netns in PLACEHOLDERS.iter().filter(|p| p.starts_with('/')) {
        assert_netns_error(&node.exec("bridge", "ADD", netns, &bridge), netns);
        assert_netns_error(&node.exec("loopback", "ADD", netns, &lo), netns);
        assert_netns_error(&node.exec("loopback", "CHECK", netns, &lo), netns);
    }
    // Refused before anything was touched: no bridge, no lease.
    node.ns.state().assert_nothing_added_since(&before);
    assert!(node.leases("twns").is_empty());
}

#[test]
fn bridge_check_refuses_a_missing_netns_after_a_real_add() {
    let node = Node::new();
    let pod = Netns::new("nspod");
    let conf = node.bridge_conf();
    let result = node
        .exec("bridge", "ADD", &pod.path_str(), &conf)
        .assert_success();
    let check = with_prev(&conf, &result);
    node.exec("bridge", "CHECK", &pod.path_str(), &check)
        .assert_success();
    assert_netns_error(&node.exec("bridge", "CHECK", "/x", &check), "/x");
    node.exec("bridge", "DEL", &pod.path_str(), &conf)
        .assert_success();
    assert!(node.leases("twns").is_empty());
}

#[test]
fn del_succeeds_and_releases_the_address_when_the_netns_is_gone() {
    let node = Node::new();
    let conf = node.bridge_conf();
    let lo = json!({"cniVersion": "1.0.0", "name": "twns-lo", "type": "loopback"});
    let pod = Netns::new("nspod");
    let path = pod.path_str();
    node.exec("bridge", "ADD", &path, &conf).assert_success();
    node.exec("loopback", "ADD", &path, &lo).assert_success();
    assert_eq!(node.leases("twns").len(), 1);
    drop(pod);
    // The in-process host-local releases the lease although the namespace is gone.
    node.exec("bridge", "DEL", &path, &conf).assert_success();
    node.exec("loopback", "DEL", &path, &lo).assert_success();
    assert!(node.leases("twns").is_empty());
    // And again, idempotent, also with a placeholder.
    node.exec("bridge", "DEL", "/x", &conf).assert_success();
    node.exec("loopback", "DEL", "/x", &lo).assert_success();
}

#[test]
fn flannel_passes_the_netns_to_its_bridge_which_refuses_a_missing_one() {
    let node = Node::new();
    let run = node.dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("subnet.env"),
        "FLANNEL_NETWORK=10.78.0.0/16\nFLANNEL_SUBNET=10.78.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "twns-fl", "type": "flannel",
        "subnetFile": run.join("subnet.env"), "dataDir": node.dir.path().join("flannel"),
        "delegate": {"bridge": "twnsfl0"}, "ipam": {"dataDir": node.ipam_dir()}});
    assert_netns_error(&node.exec("flannel", "ADD", "/x", &conf), "/x");
    assert!(
        node.leases("twns-fl").is_empty(),
        "a refused ADD left a lease"
    );
    // A real ADD, then DEL after the namespace is gone: success, address released.
    let pod = Netns::new("nspod");
    let path = pod.path_str();
    node.exec("flannel", "ADD", &path, &conf).assert_success();
    assert_eq!(node.leases("twns-fl").len(), 1);
    drop(pod);
    node.exec("flannel", "DEL", &path, &conf).assert_success();
    assert!(node.leases("twns-fl").is_empty());
}
