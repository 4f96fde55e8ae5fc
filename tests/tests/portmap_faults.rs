//! portmap killed part-way through ADD: the DEL that follows (and returns success) must leave no rule of the
//! attachment, even though the killed plugin's helpers (`iptables-restore`) may have been mid-commit.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use twill_tests::bins::{bin, require_root};
use twill_tests::exec::Invocation;
use twill_tests::netns::Netns;
use twill_tests::rng::Rng;

const POD_IP: &str = "10.99.0.10";

fn request(net: &str, mappings: &Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": net,
        "type": "portmap",
        "backend": "iptables",
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "veth0"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"address": format!("{POD_IP}/24"), "gateway": "10.99.0.1", "interface": 2}]
        }
    })
}

fn invocation(node: &Netns, pod: &Netns, command: &str, conf: &Value) -> Invocation {
    Invocation::new(bin("portmap"), command)
        .libcni_style()
        .container_id(Some("killed-pod"))
        .ifname(Some("eth0"))
        .netns(Some(pod.path()))
        .stdin_json(conf)
        .in_netns(node.path())
}

/// Lines of the node's iptables rules that mention the pod (its DNAT targets and hairpin marks).
fn rules_of_pod(node: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["nat", "filter", "mangle"] {
        out.extend(
            node.exec_ok(&["iptables-save", "-t", table])
                .lines()
                .filter(|l| l.contains(POD_IP))
                .map(str::to_string),
        );
    }
    out
}

#[test]
fn del_right_after_a_killed_iptables_add_leaves_no_rule() {
    require_root();
    let node = Netns::new("pmkill");
    let pod = Netns::new("pmkpod");
    node.ip(&["link", "set", "lo", "up"]);
    node.ip(&[
        "link", "add", "cni0", "type", "veth", "peer", "name", "cni0peer",
    ]);
    node.ip(&["addr", "add", "10.99.0.1/24", "dev", "cni0"]);
    node.ip(&["link", "set", "cni0", "up"]);
    let mappings: Vec<Value> = (0..40)
        .map(|i| json!({"hostPort": 20000 + i, "containerPort": 8000 + i, "protocol": "tcp"}))
        .collect();
    let conf = request(&format!("pmkill-{}", std::process::id()), &json!(mappings));
    let mut rng = Rng::from_env_or_time("killed_iptables_add");
    let started = Instant::now();
    let mut killed = 0;
    for round in 0..50 {
        let after = Duration::from_micros(1000 + rng.below(7000));
        let add = invocation(&node, &pod, "ADD", &conf).timeout(after).run();
        if add.signal.is_some() {
            killed += 1;
        }
        invocation(&node, &pod, "DEL", &conf).run().assert_success();
        // Give a helper that survived its plugin the time to commit what it was given.
        std::thread::sleep(Duration::from_millis(30));
        let left = rules_of_pod(&node);
        assert!(
            left.is_empty(),
            "round {round} (ADD killed after {after:?}): DEL returned success but left:\n  {}",
            left.join("\n  ")
        );
        assert!(started.elapsed() < Duration::from_secs(240), "too slow");
    }
    eprintln!("{killed} of 50 ADDs were killed part-way");
    assert!(
        killed > 0,
        "no ADD was killed: the test did not test anything"
    );
}
