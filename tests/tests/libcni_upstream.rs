//! Conformance through the real upstream runtime library: the upstream `cnitool` (add, check, del, gc,
//! status) and, where cnitool cannot say what a runtime says (a cache directory, the attachments a GC
//! keeps), our small driver on the same upstream libcni (`tests/upstream/cni`). Spec 1.1 as runtimes
//! speak it: GC with `cni.dev/valid-attachments` (and the older `cni.dev/attachments`, which libcni sends
//! beside it), STATUS, `cniVersions` and `disableGC`, for bridge + host-local + portmap, loopback and
//! flannel, each run in a test-created node namespace. The reference plugins v1.10.0 run the same
//! sequence as a control. The "older runtime" path (Debian's libcni 1.1.2, results down-converted to
//! 0.4.0/0.3.1) is `twill_tests::libcni` with `Driver::Debian`, used by the other test files.

use std::path::PathBuf;

use serde_json::{json, Value};
use twill_tests::bins::{bin, link_plugin_dir, require_root, Reference};
use twill_tests::libcni::{unique_name, Driver, LibCni, CNITOOL_CACHE_DIR};
use twill_tests::netns::Netns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plugins {
    Ours,
    Reference(Reference),
}

/// A simulated node: its namespace, a plugin directory, host-local's and flannel's files.
struct Node {
    ns: Netns,
    dir: tempfile::TempDir,
    plugins: Plugins,
    /// Networks whose results the real cnitool may have cached in /var/lib/cni (removed on drop).
    nets: std::cell::RefCell<Vec<String>>,
}

impl Node {
    fn new(plugins: Plugins) -> Node {
        require_root();
        let ns = Netns::node("lcnode");
        let dir = tempfile::Builder::new()
            .prefix("twill-libcni-up-")
            .tempdir()
            .expect("node temp dir");
        let node = Node {
            ns,
            dir,
            plugins,
            nets: Default::default(),
        };
        if plugins == Plugins::Ours {
            link_plugin_dir(
                &node.bin_dir(),
                ["bridge", "host-local", "portmap", "loopback", "flannel"]
                    .map(|name| (name, bin(name))),
            );
        }
        node
    }

    fn bin_dir(&self) -> PathBuf {
        match self.plugins {
            Plugins::Ours => self.dir.path().join("bin"),
            Plugins::Reference(r) => r.dir(),
        }
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn subnet_env(&self) -> PathBuf {
        self.dir.path().join("run/subnet.env")
    }

    fn lib(&self, driver: Driver) -> LibCni {
        LibCni::scratch(vec![self.bin_dir()])
            .in_netns(self.ns.path())
            .with_driver(driver)
    }

    /// Writes `list` (named uniquely) into `lib`'s config directory; returns the network name.
    fn write(&self, lib: &LibCni, mut list: Value) -> String {
        let name = unique_name("lcn");
        list["name"] = json!(name);
        self.nets.borrow_mut().push(name.clone());
        lib.write_conflist(&list)
    }

    /// bridge (gateway, masquerade) with host-local over `subnet`, then portmap.
    fn bridge_list(&self, subnet: &str) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "placeholder",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                 "ipam": {"type": "host-local", "dataDir": self.ipam_dir(),
                          "ranges": [[{"subnet": subnet}]]}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    fn leases(&self, net: &str) -> Vec<String> {
        twill_tests::leases::held(&self.ipam_dir().join(net))
    }

    /// Netfilter lines of the node (nftables and iptables nat) that name `ip`.
    fn rules_naming(&self, ip: &str) -> Vec<String> {
        let nft = self.ns.exec_ok(&["nft", "list", "ruleset"]);
        let ipt = self.ns.exec_ok(&["iptables-save", "-t", "nat"]);
        nft.lines()
            .chain(ipt.lines())
            .filter(|l| names_ip(l, ip))
            .map(|l| l.trim().to_string())
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let results = PathBuf::from(CNITOOL_CACHE_DIR).join("results");
        let Ok(entries) = std::fs::read_dir(&results) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if self
                .nets
                .borrow()
                .iter()
                .any(|n| name.starts_with(&format!("{n}-")))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// `line` names `ip` as a whole address (10.66.0.2 is not named by a line holding 10.66.0.20).
fn names_ip(line: &str, ip: &str) -> bool {
    line.match_indices(ip).any(|(i, _)| {
        let next = line[i + ip.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_digit())
    })
}

fn first_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("result without an address: {result}"))
        .to_string()
}

fn port_mapping(host_port: u16) -> Value {
    json!({"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]})
}

/// The real cnitool runs a whole attachment's life on bridge + host-local + portmap at spec 1.1.
fn cnitool_lifecycle(plugins: Plugins) {
    let node = Node::new(plugins);
    let lib = node.lib(Driver::Cnitool);
    let net = node.write(&lib, node.bridge_list("10.66.0.0/24"));
    let pod = Netns::new("lcpod");
    let lib = lib.with_cap_args(port_mapping(18080));
    lib.status(&net).assert_success();
    let result = lib.add(&net, pod.path()).assert_success();
    assert_eq!(result["cniVersion"], "1.1.0", "{plugins:?}: {result}");
    let ip = first_ip(&result);
    assert!(ip.starts_with("10.66.0."), "{plugins:?}: {result}");
    assert!(pod.ip(&["-4", "addr", "show", "eth0"]).contains(&ip));
    assert_eq!(node.leases(&net), vec![ip.clone()]);
    let rules = node.rules_naming(&ip);
    assert!(
        rules.iter().any(|l| l.contains("18080")),
        "{plugins:?}: no host port rule for {ip}: {rules:#?}"
    );
    lib.check(&net, pod.path()).assert_success();
    lib.status(&net).assert_success();
    lib.del(&net, pod.path()).assert_success();
    assert!(node.leases(&net).is_empty(), "{plugins:?}: lease left");
    assert!(
        pod.exec(&["ip", "link", "show", "eth0"]).stdout.is_empty(),
        "{plugins:?}: eth0 left in the pod"
    );
    if plugins == Plugins::Ours {
        assert!(
            node.rules_naming(&ip).is_empty(),
            "rules left: {:#?}",
            node.rules_naming(&ip)
        );
    }
    // DEL again (the runtime retries): nothing cached, still success.
    lib.del(&net, pod.path()).assert_success();
}

#[test]
fn cnitool_add_check_status_del_on_bridge_host_local_portmap() {
    cnitool_lifecycle(Plugins::Ours);
}

#[test]
fn cnitool_add_check_status_del_on_the_reference_as_control() {
    cnitool_lifecycle(Plugins::Reference(Reference::Current));
}

#[test]
fn cnitool_gc_deletes_every_cached_attachment_of_the_network() {
    let node = Node::new(Plugins::Ours);
    let lib = node.lib(Driver::Cnitool);
    let net = node.write(&lib, node.bridge_list("10.66.0.0/24"));
    let (a, b) = (Netns::new("lcpod"), Netns::new("lcpod"));
    let ip_a = first_ip(
        &lib.with_cap_args(port_mapping(18081))
            .add(&net, a.path())
            .assert_success(),
    );
    let ip_b = first_ip(
        &lib.with_cap_args(port_mapping(18082))
            .add(&net, b.path())
            .assert_success(),
    );
    assert_eq!(node.leases(&net).len(), 2);
    // cnitool's gc keeps nothing: libcni DELs both cached attachments, then GCs every plugin.
    lib.gc(&net).assert_success();
    assert!(node.leases(&net).is_empty(), "{:?}", node.leases(&net));
    for ip in [&ip_a, &ip_b] {
        assert!(
            node.rules_naming(ip).is_empty(),
            "{:#?}",
            node.rules_naming(ip)
        );
    }
    for pod in [&a, &b] {
        assert!(pod.exec(&["ip", "link", "show", "eth0"]).stdout.is_empty());
    }
}

#[test]
fn gc_with_valid_attachments_makes_every_plugin_release_the_others() {
    let node = Node::new(Plugins::Ours);
    let lib = node.lib(Driver::Upstream);
    let net = node.write(&lib, node.bridge_list("10.66.0.0/24"));
    let (a, b) = (Netns::new("lcpod"), Netns::new("lcpod"));
    let lib_a = lib
        .with_container_id("pod-a")
        .with_cap_args(port_mapping(18083));
    let lib_b = lib
        .with_container_id("pod-b")
        .with_cap_args(port_mapping(18084));
    let ip_a = first_ip(&lib_a.add(&net, a.path()).assert_success());
    let ip_b = first_ip(&lib_b.add(&net, b.path()).assert_success());
    // The runtime lost pod-b (no cached result): libcni cannot DEL it, so only the plugins' own GC,
    // told which attachments are valid, can release its address and rules.
    std::fs::remove_file(lib.cached_result_path(&net, "pod-b", "eth0")).expect("remove cache");
    lib.with_valid_attachments(&[("pod-a", "eth0")])
        .gc(&net)
        .assert_success();
    assert_eq!(node.leases(&net), vec![ip_a.clone()], "host-local GC");
    assert!(
        node.rules_naming(&ip_b).is_empty(),
        "bridge/portmap GC left pod-b's rules: {:#?}",
        node.rules_naming(&ip_b)
    );
    let kept = node.rules_naming(&ip_a);
    assert!(
        kept.iter().any(|l| l.contains("18083")),
        "pod-a's host port rule must stay: {kept:#?}"
    );
    lib_a.check(&net, a.path()).assert_success();
    lib_a.del(&net, a.path()).assert_success();
    assert!(node.leases(&net).is_empty());
}

#[test]
fn disable_gc_leaves_everything_alone() {
    let node = Node::new(Plugins::Ours);
    let lib = node.lib(Driver::Upstream);
    let mut list = node.bridge_list("10.66.0.0/24");
    list["disableGC"] = json!(true);
    let net = node.write(&lib, list);
    let pod = Netns::new("lcpod");
    let lib = lib
        .with_container_id("pod-a")
        .with_cap_args(port_mapping(18085));
    let ip = first_ip(&lib.add(&net, pod.path()).assert_success());
    lib.with_valid_attachments(&[]).gc(&net).assert_success();
    assert_eq!(node.leases(&net), vec![ip.clone()]);
    assert!(!node.rules_naming(&ip).is_empty());
    lib.check(&net, pod.path()).assert_success();
    lib.del(&net, pod.path()).assert_success();
    assert!(node.leases(&net).is_empty());
}

#[test]
fn cni_versions_picks_the_newest_version_each_libcni_speaks() {
    let node = Node::new(Plugins::Ours);
    let lib = node.lib(Driver::Upstream);
    let mut list = json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["0.4.0", "1.0.0", "1.1.0"],
        "name": "placeholder",
        "plugins": [{"type": "loopback"}]
    });
    let net = node.write(&lib, list.clone());
    let versions = lib.version(&net).assert_success();
    assert_eq!(versions["cniVersion"], "1.1.0", "{versions}");
    let pod = Netns::new("lcpod");
    let result = lib.add(&net, pod.path()).assert_success();
    assert_eq!(result["cniVersion"], "1.1.0");
    lib.status(&net).assert_success();
    lib.check(&net, pod.path()).assert_success();
    lib.del(&net, pod.path()).assert_success();
    // The older runtime ignores cniVersions and runs the list at its cniVersion.
    let old = node.lib(Driver::Debian);
    list["name"] = json!(net);
    old.write_conflist(&list);
    let result = old.add(&net, pod.path()).assert_success();
    assert_eq!(result["cniVersion"], "1.0.0");
    old.del(&net, pod.path()).assert_success();
    // A list that tops out below 1.1.0 gets no STATUS and no plugin GC from libcni.
    let capped = node.write(
        &lib,
        json!({"cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.0.0"], "name": "x",
               "plugins": [{"type": "loopback"}]}),
    );
    assert_eq!(lib.version(&capped).assert_success()["cniVersion"], "1.0.0");
    lib.status(&capped).assert_success();
    lib.with_valid_attachments(&[]).gc(&capped).assert_success();
}

#[test]
fn status_reports_an_exhausted_range_through_libcni() {
    let node = Node::new(Plugins::Ours);
    let lib = node.lib(Driver::Upstream);
    // A /30: the gateway takes .1, one address is left for pods.
    let net = node.write(&lib, node.bridge_list("10.66.9.0/30"));
    lib.status(&net).assert_success();
    let pod = Netns::new("lcpod");
    let lib = lib
        .with_container_id("only")
        .with_cap_args(port_mapping(18086));
    lib.add(&net, pod.path()).assert_success();
    lib.status(&net).assert_error(50);
    lib.del(&net, pod.path()).assert_success();
    lib.status(&net).assert_success();
}

#[test]
fn loopback_through_cnitool_at_spec_1_1() {
    let node = Node::new(Plugins::Ours);
    let lib = node.lib(Driver::Cnitool);
    let net = node.write(
        &lib,
        json!({"cniVersion": "1.1.0", "name": "x", "plugins": [{"type": "loopback"}]}),
    );
    let pod = Netns::new("lcpod");
    lib.status(&net).assert_success();
    let result = lib.add(&net, pod.path()).assert_success();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert!(pod.link_is_up("lo"));
    lib.check(&net, pod.path()).assert_success();
    lib.gc(&net).assert_success();
    assert!(
        !pod.link_is_up("lo"),
        "cnitool gc DELs the cached attachment"
    );
    lib.del(&net, pod.path()).assert_success();
}

#[test]
fn flannel_through_cnitool_with_status_and_gc() {
    let node = Node::new(Plugins::Ours);
    let env = node.subnet_env();
    std::fs::create_dir_all(env.parent().expect("parent")).expect("mkdir run");
    std::fs::write(
        &env,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .expect("write subnet.env");
    let list = json!({
        "cniVersion": "1.1.0",
        "name": "placeholder",
        "plugins": [
            {"type": "flannel", "subnetFile": env, "dataDir": node.dir.path().join("flannel"),
             "ipam": {"dataDir": node.ipam_dir()},
             "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    let cnitool = node.lib(Driver::Cnitool);
    let net = node.write(&cnitool, list);
    let lib = cnitool.with_cap_args(port_mapping(18087));
    lib.status(&net).assert_success();
    let (a, b) = (Netns::new("lcpod"), Netns::new("lcpod"));
    let ip_a = first_ip(&lib.add(&net, a.path()).assert_success());
    assert!(ip_a.starts_with("10.244.1."), "{ip_a}");
    lib.check(&net, a.path()).assert_success();
    lib.del(&net, a.path()).assert_success();
    assert!(node.leases(&net).is_empty());
    first_ip(&lib.add(&net, b.path()).assert_success());
    lib.gc(&net).assert_success();
    assert!(node.leases(&net).is_empty(), "gc released pod b");
    // STATUS goes through libcni to the plugin, which reports the missing subnet.env.
    std::fs::remove_file(&env).expect("remove subnet.env");
    let upstream = node.lib(Driver::Upstream);
    upstream.write_conflist(
        &serde_json::from_str::<Value>(
            &std::fs::read_to_string(cnitool.netconf_dir.join(format!("{net}.conflist")))
                .expect("read conflist"),
        )
        .expect("conflist JSON"),
    );
    upstream.status(&net).assert_error(50);
}
