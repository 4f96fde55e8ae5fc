//! The `flannel` meta plugin (docs/architecture.md, flannel contracts, the flannel CNI plugin) on a simulated node:
//! each test gets a "node" network namespace where the plugin, its delegates (`bridge` -> `host-local`) and `portmap`
//! run, a private directory holding `subnet.env` (written by the test in the daemon's format), the saved delegate
//! configs and host-local's leases, and pod namespaces. Nothing touches the machine's own bridges, files or rules.
//!
//! Build first: `cargo build -p twill-flannel -p twill-bridge -p twill-ipam -p twill-portmap`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};
use twill_tests::bins::{bin, link_plugin_dir, ref_bin, require_root};
use twill_tests::exec::{Invocation, Outcome};
use twill_tests::libcni::LibCni;
use twill_tests::netns::Netns;

/// The delegates and the chained portmap: ours unless `TWILL_FLANNEL_REFERENCE_DELEGATES` names them
/// (comma list, e.g. `bridge,host-local,portmap`), which runs Debian's reference plugins in their place.
const DELEGATES: [&str; 3] = ["bridge", "host-local", "portmap"];

fn delegate_binary(name: &str) -> PathBuf {
    let reference = std::env::var("TWILL_FLANNEL_REFERENCE_DELEGATES").unwrap_or_default();
    if reference.split(',').any(|n| n.trim() == name) {
        ref_bin(name)
    } else {
        bin(name)
    }
}

const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
                          FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One simulated node: its namespace and its private files.
struct Node {
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        require_root();
        let ns = Netns::node("flnode");
        let dir = tempfile::Builder::new()
            .prefix("twill-flannel-")
            .tempdir()
            .expect("node temp dir");
        let node = Node { ns, dir };
        link_plugin_dir(
            &node.bin_dir(),
            std::iter::once(("flannel", bin("flannel")))
                .chain(DELEGATES.iter().map(|name| (*name, delegate_binary(name)))),
        );
        node.write_subnet_env(SUBNET_ENV);
        node
    }

    fn subnet_env(&self) -> PathBuf {
        self.dir.path().join("run/subnet.env")
    }
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("flannel")
    }
    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("networks")
    }
    fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// As the daemon does: temporary file, then rename.
    fn write_subnet_env(&self, text: &str) {
        let path = self.subnet_env();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    fn remove_subnet_env(&self) {
        std::fs::remove_file(self.subnet_env()).unwrap();
    }

    /// The stock Kubernetes conflist pointed at this node's files (name, version and delegate unchanged).
    fn stock_conflist(&self, version: &str, name: &str) -> Value {
        let stock: Value = serde_json::from_str(
            &std::fs::read_to_string(
                twill_tests::bins::workspace_dir().join("conf/10-flannel.conflist"),
            )
            .expect("conf/10-flannel.conflist"),
        )
        .expect("stock conflist is JSON");
        let mut list = stock.clone();
        list["cniVersion"] = json!(version);
        list["name"] = json!(name);
        self.point_at_node(&mut list["plugins"][0]);
        assert_eq!(
            list["plugins"][0]["delegate"],
            json!({"hairpinMode": true, "isDefaultGateway": true})
        );
        assert_eq!(list["plugins"][1]["type"], "portmap");
        list
    }

    fn point_at_node(&self, plugin: &mut Value) {
        plugin["subnetFile"] = json!(self.subnet_env());
        plugin["dataDir"] = json!(self.data_dir());
        plugin["ipam"] = json!({"dataDir": self.ipam_dir()});
    }

    /// A single flannel config as a runtime passes it to the plugin.
    fn conf(&self, version: &str, name: &str) -> Value {
        let mut c = json!({"cniVersion": version, "name": name, "type": "flannel",
                           "delegate": {"hairpinMode": true, "isDefaultGateway": true}});
        self.point_at_node(&mut c);
        c
    }

    fn libcni(&self) -> LibCni {
        LibCni::scratch(vec![self.bin_dir()]).in_netns(self.ns.path())
    }

    /// Runs the plugin in the node namespace like a runtime (libcni-style environment).
    fn exec(
        &self,
        command: &str,
        id: &str,
        ifname: &str,
        pod: Option<&Netns>,
        conf: &Value,
    ) -> Outcome {
        self.exec_with_path(command, id, ifname, pod, conf, &self.bin_dir())
    }

    fn exec_with_path(
        &self,
        command: &str,
        id: &str,
        ifname: &str,
        pod: Option<&Netns>,
        conf: &Value,
        cni_path: &Path,
    ) -> Outcome {
        let inv = Invocation::new(bin("flannel"), command)
            .libcni_style()
            .container_id(Some(id))
            .ifname(Some(ifname))
            .netns(pod.map(|p| p.path()))
            .cni_path(Some(&cni_path.display().to_string()))
            .stdin_json(conf)
            .in_netns(self.ns.path());
        inv.run()
    }

    /// STATUS and GC take no attachment.
    fn exec_network(&self, command: &str, conf: &Value) -> Outcome {
        Invocation::new(bin("flannel"), command)
            .libcni_style()
            .container_id(None)
            .ifname(None)
            .cni_path(Some(&self.bin_dir().display().to_string()))
            .stdin_json(conf)
            .in_netns(self.ns.path())
            .run()
    }

    fn saved(&self, id: &str, ifname: &str) -> PathBuf {
        self.data_dir().join(format!("{id}:{ifname}"))
    }

    fn saved_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// host-local's leases of network `net`: the addresses handed out.
    fn leases(&self, net: &str) -> Vec<String> {
        twill_tests::leases::held(&self.ipam_dir().join(net))
    }

    /// A pod `container_id` (its `eth0`) ADDed on a fresh 1.0.0 network named after `prefix`: the network's
    /// name, its config, the pod's namespace and the ADD result.
    fn pod_added(&self, prefix: &str, container_id: &str) -> (String, Value, Netns, Value) {
        let net = unique(prefix);
        let conf = self.conf("1.0.0", &net);
        let pod = Netns::new("flpod");
        let result = self
            .exec("ADD", container_id, "eth0", Some(&pod), &conf)
            .assert_success();
        (net, conf, pod, result)
    }

    /// A CNI bin dir whose `bridge` is a shell script (failure injection), the rest as on the node.
    fn bin_dir_with_bridge_script(&self, script: &str) -> PathBuf {
        let dir = self.dir.path().join(unique("scriptbin"));
        link_plugin_dir(
            &dir,
            std::iter::once(("flannel", bin("flannel")))
                .chain(["host-local", "portmap"].map(|name| (name, delegate_binary(name)))),
        );
        let path = dir.join("bridge");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }
}

/// The pod's IPv4 address (with prefix) from a result.
fn result_ip(result: &Value) -> String {
    result["ips"]
        .as_array()
        .and_then(|ips| ips.iter().find_map(|i| i["address"].as_str()))
        .unwrap_or_else(|| panic!("result without an address: {result}"))
        .to_string()
}

fn host_part(cidr: &str) -> String {
    cidr.split('/').next().unwrap().to_string()
}

/// nftables and iptables NAT rules of the node (portmap may use either backend).
fn firewall_rules(ns: &Netns) -> String {
    let nft = ns.exec_ok(&["nft", "list", "ruleset"]);
    let ipt =
        String::from_utf8_lossy(&ns.exec(&["iptables-save", "-t", "nat"]).stdout).into_owned();
    format!("{nft}\n{ipt}")
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

#[test]
fn stock_conflist_add_del_through_libcni() {
    let node = Node::new();
    // The runtime asks for a host port: portmap, chained after flannel, maps it to the pod flannel wired.
    let lib = node
        .libcni()
        .with_container_id("stockpod")
        .with_cap_args(json!({"portMappings": [
            {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}));
    let net = lib.write_conflist(&node.stock_conflist("0.3.1", "cbr0"));
    let pod = Netns::new("flpod");

    let result = lib.add(&net, pod.path()).assert_success();
    assert_eq!(result["cniVersion"], "0.3.1", "{result}");
    let ip = result_ip(&result);
    assert!(
        ip.starts_with("10.244.1.") && ip.ends_with("/24"),
        "{result}"
    );
    assert_eq!(node.leases("cbr0"), vec![host_part(&ip)]);

    // The bridge gets the node subnet's gateway and the overlay MTU; the pod routes the cluster network and
    // the default route through it.
    assert!(node
        .ns
        .ip(&["-4", "addr", "show", "dev", "cni0"])
        .contains("inet 10.244.1.1/24"));
    assert!(node
        .ns
        .ip(&["link", "show", "dev", "cni0"])
        .contains("mtu 1450"));
    let pod_addr = pod.ip(&["-4", "addr", "show", "dev", "eth0"]);
    assert!(pod_addr.contains(&ip), "{pod_addr}");
    assert!(pod
        .ip(&["link", "show", "dev", "eth0"])
        .contains("mtu 1450"));
    let routes = pod.ip(&["-4", "route", "show"]);
    assert!(routes.contains("default via 10.244.1.1"), "{routes}");
    assert!(routes.contains("10.244.0.0/16 via 10.244.1.1"), "{routes}");

    // The rendered delegate is the reference's (docs/architecture.md, flannel contracts, the flannel CNI plugin), saved
    // privately and atomically.
    let saved = node.saved("stockpod", "eth0");
    assert_eq!(std::fs::metadata(&saved).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(node.data_dir()).unwrap().mode() & 0o777,
        0o700
    );
    assert_eq!(
        json_file(&saved),
        json!({"cniVersion":"0.3.1","name":"cbr0","type":"bridge","hairpinMode":true,
               "isDefaultGateway":true,"isGateway":true,"ipMasq":false,"mtu":1450,
               "ipam":{"type":"host-local","dataDir": node.ipam_dir(),
                       "ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}]}})
    );
    assert_eq!(node.saved_files(), vec!["stockpod:eth0"]);
    let rules = firewall_rules(&node.ns);
    assert!(
        rules.contains("18080") && rules.contains(&host_part(&ip)),
        "no DNAT of host port 18080 to {ip}:\n{rules}"
    );

    lib.del(&net, pod.path()).assert_success();
    assert!(
        !firewall_rules(&node.ns).contains("18080"),
        "port mapping left behind"
    );
    assert!(node.leases("cbr0").is_empty(), "DEL released the address");
    assert!(
        node.saved_files().is_empty(),
        "DEL removed the saved config"
    );
    assert!(
        pod.link_flags("eth0").is_none(),
        "DEL removed the pod interface"
    );
    // A second DEL (runtime retry) is a no-op success.
    lib.del(&net, pod.path()).assert_success();
}

#[test]
fn check_delegates_to_bridge_with_the_saved_config() {
    let node = Node::new();
    let lib = node.libcni().with_container_id("checkpod");
    let net = lib.write_conflist(&node.stock_conflist("1.0.0", &unique("chk")));
    let pod = Netns::new("flpod");
    let ip = result_ip(&lib.add(&net, pod.path()).assert_success());

    lib.check(&net, pod.path()).assert_success();
    // Works from the saved config while the daemon is down.
    node.remove_subnet_env();
    lib.check(&net, pod.path()).assert_success();
    node.write_subnet_env(SUBNET_ENV);

    // The bridge's CHECK sees a pod that lost its address.
    pod.ip(&["addr", "del", &ip, "dev", "eth0"]);
    let err = lib.check(&net, pod.path()).assert_any_error();
    assert!(
        err["msg"].as_str().unwrap().contains("eth0")
            || err["msg"].as_str().unwrap().contains(&host_part(&ip)),
        "{err}"
    );

    lib.del(&net, pod.path()).assert_success();
    assert!(node.leases(&net).is_empty());
}

#[test]
fn check_without_saved_config_fails() {
    let node = Node::new();
    let pod = Netns::new("flpod");
    let mut conf = node.conf("1.0.0", &unique("chk"));
    conf["prevResult"] = json!({"cniVersion":"1.0.0","interfaces":[],"ips":[]});
    let err = node
        .exec("CHECK", "nosuch", "eth0", Some(&pod), &conf)
        .assert_any_error();
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("no saved delegate config"),
        "{err}"
    );
}

#[test]
fn del_releases_the_address_when_subnet_env_is_gone() {
    let node = Node::new();
    let lib = node.libcni().with_container_id("gonepod");
    let net = lib.write_conflist(&node.stock_conflist("0.3.1", &unique("gone")));
    let pod = Netns::new("flpod");
    lib.add(&net, pod.path()).assert_success();
    assert_eq!(node.leases(&net).len(), 1);

    // The daemon is stopped (there is none in this test) and its file removed.
    node.remove_subnet_env();
    lib.del(&net, pod.path()).assert_success();
    assert!(
        node.leases(&net).is_empty(),
        "address released from the saved config"
    );
    assert!(node.saved_files().is_empty());
    assert!(pod.link_flags("eth0").is_none());
}

#[test]
fn del_after_subnet_change_uses_the_old_subnet() {
    let node = Node::new();
    let (net, conf, pod, _) = node.pod_added("chg", "oldpod");
    node.write_subnet_env(&SUBNET_ENV.replace("10.244.1.1/24", "10.244.9.1/24"));
    node.exec("DEL", "oldpod", "eth0", Some(&pod), &conf)
        .assert_success();
    assert!(node.leases(&net).is_empty());
}

#[test]
fn failed_delegate_del_keeps_the_saved_config_and_a_retry_releases() {
    let node = Node::new();
    let (net, conf, pod, _) = node.pod_added("fdel", "delpod");
    let saved = node.saved("delpod", "eth0");
    let before = std::fs::read(&saved).unwrap();

    let failing = node.bin_dir_with_bridge_script(
        r#"echo '{"cniVersion":"1.0.0","code":999,"msg":"injected DEL failure"}'; exit 1"#,
    );
    let err = node
        .exec_with_path("DEL", "delpod", "eth0", Some(&pod), &conf, &failing)
        .assert_error(999);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("injected DEL failure"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        before,
        "saved config kept for the retry"
    );
    assert_eq!(node.leases(&net).len(), 1, "nothing released yet");

    // The runtime retries (the delegate works again, even with the daemon gone).
    node.remove_subnet_env();
    node.exec("DEL", "delpod", "eth0", Some(&pod), &conf)
        .assert_success();
    assert!(
        node.leases(&net).is_empty(),
        "the retry released the address"
    );
    assert!(!saved.exists());
}

#[test]
fn two_interfaces_of_one_container_keep_separate_saved_configs() {
    let node = Node::new();
    let (net, conf, pod, r0) = node.pod_added("two", "twopod");
    let r1 = node
        .exec("ADD", "twopod", "net1", Some(&pod), &conf)
        .assert_success();
    assert_ne!(result_ip(&r0), result_ip(&r1));
    assert_eq!(node.saved_files(), vec!["twopod:eth0", "twopod:net1"]);
    assert_eq!(node.leases(&net).len(), 2);

    node.exec("DEL", "twopod", "net1", Some(&pod), &conf)
        .assert_success();
    assert_eq!(node.saved_files(), vec!["twopod:eth0"]);
    assert_eq!(node.leases(&net), vec![host_part(&result_ip(&r0))]);
    assert!(pod.link_flags("eth0").is_some() && pod.link_flags("net1").is_none());

    node.exec("DEL", "twopod", "eth0", Some(&pod), &conf)
        .assert_success();
    assert!(node.saved_files().is_empty() && node.leases(&net).is_empty());
}

#[test]
fn del_without_saved_config_succeeds() {
    let node = Node::new();
    let conf = node.conf("1.0.0", &unique("nodel"));
    node.exec("DEL", "neveradded", "eth0", None, &conf)
        .assert_success();
    node.remove_subnet_env();
    node.exec("DEL", "neveradded", "eth0", None, &conf)
        .assert_success();
}

#[test]
fn failed_delegate_add_rolls_back_and_drops_the_saved_config() {
    let node = Node::new();
    let net = unique("fadd");
    let conf = node.conf("1.0.0", &net);
    let pod = Netns::new("flpod");
    let log = node.dir.path().join("bridge.log");
    let saved = node.saved("addpod", "eth0");
    // The delegate sees its config already saved when it runs, then fails; its DEL (the rollback) works.
    let script = format!(
        r#"echo "$CNI_COMMAND $(test -f '{saved}' && echo saved)" >> '{log}'
case "$CNI_COMMAND" in
  ADD) echo '{{"cniVersion":"1.0.0","code":999,"msg":"injected ADD failure"}}'; exit 1;;
  *) exit 0;;
esac"#,
        saved = saved.display(),
        log = log.display()
    );
    let failing = node.bin_dir_with_bridge_script(&script);
    let err = node
        .exec_with_path("ADD", "addpod", "eth0", Some(&pod), &conf, &failing)
        .assert_error(999);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("injected ADD failure"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "ADD saved\nDEL saved\n"
    );
    assert!(
        node.saved_files().is_empty(),
        "rolled back: {:?}",
        node.saved_files()
    );
}

#[test]
fn status_is_50_until_subnet_env_is_valid_then_the_delegates() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &unique("st"));
    node.exec_network("STATUS", &conf).assert_success();

    node.remove_subnet_env();
    let err = node.exec_network("STATUS", &conf).assert_error(50);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains(&node.subnet_env().display().to_string()),
        "{err}"
    );

    node.write_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n");
    let err = node.exec_network("STATUS", &conf).assert_error(50);
    assert!(
        err["msg"].as_str().unwrap().contains("FLANNEL_MTU"),
        "{err}"
    );

    node.write_subnet_env(
        &SUBNET_ENV.replace("FLANNEL_SUBNET=10.244.1.1/24", "FLANNEL_SUBNET=garbage"),
    );
    node.exec_network("STATUS", &conf).assert_error(50);

    node.write_subnet_env(SUBNET_ENV);
    node.exec_network("STATUS", &conf).assert_success();
}

#[test]
fn status_forwards_the_delegates_answer() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &unique("st"));
    let failing = node.bin_dir_with_bridge_script(
        r#"test "$CNI_COMMAND" = STATUS && grep -q '"10.244.1.0/24"' && echo '{"cniVersion":"1.1.0","code":50,"msg":"delegate not ready"}' && exit 1; exit 0"#,
    );
    let out = Invocation::new(bin("flannel"), "STATUS")
        .libcni_style()
        .container_id(None)
        .ifname(None)
        .cni_path(Some(&failing.display().to_string()))
        .stdin_json(&conf)
        .in_netns(node.ns.path())
        .run();
    let err = out.assert_error(50);
    assert_eq!(err["msg"], "delegate not ready");
}

#[test]
fn gc_forwards_to_the_delegate_and_drops_saved_configs_of_gone_attachments() {
    let node = Node::new();
    let net = unique("gc");
    let conf = node.conf("1.1.0", &net);
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("flpod")).collect();
    let mut ips = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let r = node
            .exec("ADD", &format!("gcpod{i}"), "eth0", Some(pod), &conf)
            .assert_success();
        ips.push(host_part(&result_ip(&r)));
    }
    // A saved config of another flannel network sharing the data dir must survive this network's GC.
    let other = node.data_dir().join("otherpod:eth0");
    std::fs::write(&other, json!({"name":"other","type":"bridge"}).to_string()).unwrap();

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID":"gcpod0","ifname":"eth0"}]);
    node.exec_network("GC", &gc).assert_success();
    assert_eq!(node.saved_files(), vec!["gcpod0:eth0", "otherpod:eth0"]);
    assert_eq!(
        node.leases(&net),
        vec![ips[0].clone()],
        "the delegate's GC released the others"
    );

    // With the daemon down, GC still forwards (from a saved config); the empty list releases everything.
    node.remove_subnet_env();
    gc["cni.dev/valid-attachments"] = json!([]);
    node.exec_network("GC", &gc).assert_success();
    assert_eq!(node.saved_files(), vec!["otherpod:eth0"]);
    assert!(node.leases(&net).is_empty());
}

#[test]
fn gc_keeps_saved_configs_when_the_delegate_fails() {
    let node = Node::new();
    // Added under an older version; GC comes once the network config was upgraded to 1.1.0.
    let (net, conf, pod, _) = node.pod_added("gcf", "gcfpod");
    let failing = node.bin_dir_with_bridge_script(
        r#"echo '{"cniVersion":"1.1.0","code":999,"msg":"injected GC failure"}'; exit 1"#,
    );
    let mut gc = node.conf("1.1.0", &net);
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = Invocation::new(bin("flannel"), "GC")
        .libcni_style()
        .container_id(None)
        .ifname(None)
        .cni_path(Some(&failing.display().to_string()))
        .stdin_json(&gc)
        .in_netns(node.ns.path())
        .run();
    out.assert_error(999);
    assert_eq!(node.saved_files(), vec!["gcfpod:eth0"]);
    node.exec("DEL", "gcfpod", "eth0", Some(&pod), &conf)
        .assert_success();
}

#[test]
fn add_after_a_subnet_change_says_the_subnet_changed() {
    let node = Node::new();
    let (_, conf, old_pod, _) = node.pod_added("sub", "oldpod");

    // The daemon came back with another subnet.
    node.write_subnet_env(&SUBNET_ENV.replace("10.244.1.1/24", "10.244.7.1/24"));
    let new_pod = Netns::new("flpod");
    let err = node
        .exec("ADD", "newpod", "eth0", Some(&new_pod), &conf)
        .assert_any_error();
    let msg = err["msg"].as_str().unwrap();
    for part in [
        "subnet changed",
        "10.244.1.1/24",
        "10.244.7.0/24",
        "ip link delete cni0",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(
        !node.saved("newpod", "eth0").exists(),
        "nothing saved for the refused ADD"
    );
    assert!(
        new_pod.link_flags("eth0").is_none(),
        "nothing created in the pod"
    );

    // CHECK of the old pod says the same; its DEL works from the saved config.
    let mut check = conf.clone();
    check["prevResult"] = json!({"cniVersion":"1.0.0","interfaces":[],"ips":[]});
    let err = node
        .exec("CHECK", "oldpod", "eth0", Some(&old_pod), &check)
        .assert_any_error();
    assert!(
        err["msg"].as_str().unwrap().contains("subnet changed"),
        "{err}"
    );
    node.exec("DEL", "oldpod", "eth0", Some(&old_pod), &conf)
        .assert_success();

    // Doing what the message says fixes it.
    node.ns.ip(&["link", "delete", "cni0"]);
    let r = node
        .exec("ADD", "newpod", "eth0", Some(&new_pod), &conf)
        .assert_success();
    assert!(result_ip(&r).starts_with("10.244.7."), "{r}");
    node.exec("DEL", "newpod", "eth0", Some(&new_pod), &conf)
        .assert_success();
}

#[test]
fn delegate_conflict_message_is_explained_too() {
    let node = Node::new();
    let conf = node.conf("1.0.0", &unique("cfl"));
    let pod = Netns::new("flpod");
    let failing = node.bin_dir_with_bridge_script(
        r#"test "$CNI_COMMAND" = ADD && echo '{"cniVersion":"1.0.0","code":999,"msg":"\"cni0\" already has an IP address different from 10.244.1.1/24"}' && exit 1; exit 0"#,
    );
    let err = node
        .exec_with_path("ADD", "cflpod", "eth0", Some(&pod), &conf, &failing)
        .assert_error(999);
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("subnet probably changed"), "{err}");
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("already has an IP address"),
        "{err}"
    );
    assert!(node.saved_files().is_empty());
}

/// One row of the bad-input table: the node's `subnet.env` (`None`: no file), the config, the expected
/// code and words the message must contain.
struct BadInput {
    name: &'static str,
    subnet_env: Option<String>,
    conf: Value,
    code: u64,
    words: Vec<String>,
}

fn bad(
    name: &'static str,
    subnet_env: Option<String>,
    conf: &Value,
    code: u64,
    words: &[&str],
) -> BadInput {
    BadInput {
        name,
        subnet_env,
        conf: conf.clone(),
        code,
        words: words.iter().map(|w| w.to_string()).collect(),
    }
}

#[test]
fn bad_input_gets_the_right_code_and_leaves_nothing() {
    let node = Node::new();
    let net = unique("bad");
    let good = node.conf("1.0.0", &net);
    let with_delegate = |d: Value| {
        let mut c = good.clone();
        c["delegate"] = d;
        c
    };
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let file = node.subnet_env().display().to_string();
    let env = Some(SUBNET_ENV.to_string());
    let cases = vec![
        bad("no subnet.env", None, &good, 11, &[&file]),
        bad(
            "subnet.env without FLANNEL_MTU",
            Some(SUBNET_ENV.replace("FLANNEL_MTU=1450\n", "")),
            &good,
            11,
            &[&file, "FLANNEL_MTU"],
        ),
        bad(
            "subnet.env without subnets",
            Some(SUBNET_ENV.replace("FLANNEL_SUBNET=10.244.1.1/24\n", "")),
            &good,
            11,
            &["FLANNEL_SUBNET"],
        ),
        bad(
            "subnet.env with a bad network",
            Some(SUBNET_ENV.replace("10.244.0.0/16", "10.244.0.0/16,nonsense")),
            &good,
            11,
            &["FLANNEL_NETWORK"],
        ),
        bad(
            "empty subnet.env",
            Some(String::new()),
            &good,
            11,
            &["FLANNEL_IPMASQ"],
        ),
        bad(
            "delegate with name",
            env.clone(),
            &with_delegate(json!({"name":"x"})),
            7,
            &["delegate.name"],
        ),
        bad(
            "delegate with ipam",
            env.clone(),
            &with_delegate(json!({"ipam":{"type":"host-local"}})),
            7,
            &["delegate.ipam"],
        ),
        bad(
            "delegate type not a string",
            env.clone(),
            &with_delegate(json!({"type":5})),
            7,
            &["delegate.type"],
        ),
        bad(
            "delegate not an object",
            env.clone(),
            &with("delegate", json!("bridge")),
            7,
            &["delegate"],
        ),
        bad(
            "subnetFile not a string",
            env.clone(),
            &with("subnetFile", json!(5)),
            7,
            &["subnetFile"],
        ),
        bad(
            "dataDir not a string",
            env.clone(),
            &with("dataDir", json!({})),
            7,
            &["dataDir"],
        ),
        bad(
            "ipam routes without dst",
            env.clone(),
            &with("ipam", json!({"routes":[{"gw":"10.244.1.1"}]})),
            7,
            &["ipam.routes[0].dst"],
        ),
    ];
    let before = node.ns.state();
    for BadInput {
        name,
        subnet_env,
        conf,
        code,
        words,
    } in cases
    {
        match &subnet_env {
            Some(text) => node.write_subnet_env(text),
            None => {
                let _ = std::fs::remove_file(node.subnet_env());
            }
        }
        let pod = Netns::new("flpod");
        let out = node.exec("ADD", "badpod", "eth0", Some(&pod), &conf);
        let err = out.assert_error(code);
        let msg = err["msg"].as_str().unwrap();
        for w in &words {
            assert!(
                msg.contains(w.as_str()),
                "{name}: {w:?} missing from {msg:?}"
            );
        }
        assert!(
            node.saved_files().is_empty(),
            "{name}: saved config left behind"
        );
        assert!(pod.link_flags("eth0").is_none(), "{name}: pod touched");
        assert!(node.leases(&net).is_empty(), "{name}: address leased");
        node.ns.state().assert_nothing_added_since(&before);
    }
}

#[test]
fn parallel_adds_get_distinct_addresses_and_separate_saved_configs() {
    const PODS: usize = 8;
    let node = Node::new();
    let net = unique("par");
    let conf = node.conf("1.0.0", &net);
    let pods: Vec<Netns> = (0..PODS).map(|_| Netns::new("flpod")).collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || {
                    result_ip(
                        &node
                            .exec("ADD", &format!("par{i}"), "eth0", Some(pod), conf)
                            .assert_success(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), PODS, "{ips:?}");
    assert_eq!(node.saved_files().len(), PODS);
    std::thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || {
                node.exec("DEL", &format!("par{i}"), "eth0", Some(pod), conf)
                    .assert_success();
            });
        }
    });
    assert!(node.saved_files().is_empty());
    assert!(node.leases(&net).is_empty());
}

#[test]
fn dual_stack_subnet_env_gives_the_pod_both_families() {
    let node = Node::new();
    node.write_subnet_env(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
         FLANNEL_IPV6_NETWORK=fd00:42::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:1::1/64\n\
         FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    );
    let (net, conf, pod, r) = node.pod_added("ds", "dspod");
    let addrs: Vec<&str> = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["address"].as_str())
        .collect();
    assert!(
        addrs.iter().any(|a| a.starts_with("10.244.1."))
            && addrs.iter().any(|a| a.starts_with("fd00:42:0:1::")),
        "{r}"
    );
    let bridge = node.ns.ip(&["addr", "show", "dev", "cni0"]);
    assert!(
        bridge.contains("10.244.1.1/24") && bridge.contains("fd00:42:0:1::1/64"),
        "{bridge}"
    );
    let routes6 = pod.ip(&["-6", "route", "show"]);
    assert!(
        routes6.contains("fd00:42::/56 via fd00:42:0:1::1"),
        "{routes6}"
    );
    node.exec("DEL", "dspod", "eth0", Some(&pod), &conf)
        .assert_success();
    assert!(node.leases(&net).is_empty());
}

#[test]
fn del_uses_a_config_saved_by_the_reference_plugin() {
    let node = Node::new();
    let (net, conf, pod, _) = node.pod_added("ref", "refpod");
    // The reference keys its file by container id only: a node switching plugins has such files.
    std::fs::rename(node.saved("refpod", "eth0"), node.data_dir().join("refpod")).unwrap();
    node.exec("DEL", "refpod", "eth0", Some(&pod), &conf)
        .assert_success();
    assert!(
        node.leases(&net).is_empty(),
        "released from the reference's file"
    );
    assert!(node.saved_files().is_empty());
}

#[test]
fn del_with_a_corrupt_saved_config_fails_naming_the_file() {
    let node = Node::new();
    let conf = node.conf("1.0.0", &unique("cor"));
    std::fs::create_dir_all(node.data_dir()).unwrap();
    let path = node.saved("corpod", "eth0");
    std::fs::write(&path, "{\"name\":").unwrap();
    let err = node
        .exec("DEL", "corpod", "eth0", None, &conf)
        .assert_any_error();
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains(&path.display().to_string()),
        "{err}"
    );
    assert!(path.exists(), "kept for the operator");
}

#[test]
fn gc_without_a_valid_list_releases_nothing() {
    let node = Node::new();
    let net = unique("gcn");
    let conf = node.conf("1.1.0", &net);
    let pod = Netns::new("flpod");
    node.exec("ADD", "gcnpod", "eth0", Some(&pod), &conf)
        .assert_success();
    node.exec_network("GC", &conf).assert_success();
    assert_eq!(node.saved_files(), vec!["gcnpod:eth0"]);
    assert_eq!(node.leases(&net).len(), 1);
    node.exec("DEL", "gcnpod", "eth0", Some(&pod), &conf)
        .assert_success();
}
