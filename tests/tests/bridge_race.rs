//! ADDs and DELs of one attachment racing each other (a retried runtime operation overlapping the next one):
//! whatever the interleaving, the attachment ends up whole (interface, exactly one lease, its masquerade
//! rule once) or absent (none of them).

mod bridge_support;

use bridge_support::*;
use serde_json::{json, Value};
use twill_tests::bins::require_root;
use twill_tests::netns::Netns;

const ID: &str = "racer";
const NET: &str = "brrace";

/// The attachment's address when it has one in the pod.
fn pod_address(pod: &Netns) -> Option<String> {
    let out = pod.exec(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(|a| a.split('/').next().unwrap_or_default().to_string())
}

fn masquerade_of(node: &Node, ip: &str) -> Vec<String> {
    node.masquerade_lines()
        .into_iter()
        .filter(|l| {
            l.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .any(|w| w == ip)
        })
        .collect()
}

/// "attached with exactly one lease and one masquerade rule" or "nothing".
fn assert_whole_or_absent(node: &Node, pod: &Netns, per_pod: usize, what: &str) {
    let leases = node.leases(NET);
    let all_masq: Vec<String> = node
        .masquerade_lines()
        .into_iter()
        .filter(|l| l.contains("10.88.0."))
        .collect();
    match pod_address(pod) {
        Some(ip) => {
            assert_eq!(
                leases,
                vec![ip.clone()],
                "{what}: eth0 has {ip}, leases {leases:?}"
            );
            let masq = masquerade_of(node, &ip);
            assert_eq!(masq.len(), per_pod, "{what}: masquerade of {ip}: {masq:#?}");
            assert_eq!(all_masq.len(), per_pod, "{what}: {all_masq:#?}");
            assert_eq!(node.veths().len(), 1, "{what}: veths {:?}", node.veths());
        }
        None => {
            assert!(leases.is_empty(), "{what}: no eth0 but leases {leases:?}");
            assert!(all_masq.is_empty(), "{what}: no eth0 but {all_masq:#?}");
            assert!(
                node.veths().is_empty(),
                "{what}: no eth0 but veths {:?}",
                node.veths()
            );
        }
    }
}

#[test]
fn racing_adds_and_dels_of_one_attachment_leave_it_whole_or_absent() {
    require_root();
    let node = Node::new();
    let conf: Value = node.conf(NET, json!({"isGateway": true, "ipMasq": true}));
    let pod = Netns::new("brrace");
    // How many masquerade lines one attachment has, from a quiet ADD.
    node.run(&ours(), "ADD", Some(pod.path()), ID, "eth0", &conf)
        .assert_success();
    let ip = pod_address(&pod).expect("eth0 after ADD");
    let per_pod = masquerade_of(&node, &ip).len();
    assert!(per_pod > 0, "no masquerade rule after ADD");
    node.run(&ours(), "DEL", Some(pod.path()), ID, "eth0", &conf)
        .assert_success();
    assert_whole_or_absent(&node, &pod, per_pod, "after a quiet DEL");

    for round in 0..5 {
        let outcomes: Vec<(String, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..30)
                .map(|i| {
                    let (node, conf, pod) = (&node, &conf, &pod);
                    // Interleaved, and shifted per round so ADD and DEL both get to go first.
                    let command = if (i + round) % 2 == 0 { "ADD" } else { "DEL" };
                    s.spawn(move || {
                        let out = node.run(&ours(), command, Some(pod.path()), ID, "eth0", conf);
                        out.assert_no_panic();
                        (command.to_string(), out.success())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("racer"))
                .collect()
        });
        let dels_failed = outcomes.iter().filter(|(c, ok)| c == "DEL" && !ok).count();
        assert_eq!(dels_failed, 0, "round {round}: DEL must always succeed");
        assert_whole_or_absent(&node, &pod, per_pod, &format!("round {round}"));
    }
    node.run(&ours(), "DEL", Some(pod.path()), ID, "eth0", &conf)
        .assert_success();
    assert_whole_or_absent(&node, &pod, per_pod, "after the final DEL");
    assert!(pod_address(&pod).is_none());
}
