//! twilld's traffic-rule flags in node namespaces, as flanneld's: `--ip-masq` installs the masquerade rules,
//! `--iptables-forward-rules` (on by default, with or without `--ip-masq`) the FORWARD accepts,
//! `--ip-masq-fully-random-disable` drops fully-random port allocation; in nftables and iptables modes.

mod overlay_support;

use overlay_support::*;
use twill_tests::cluster::{wait_until, Node, Switch, TwilldArgs};

/// The node's rules as the backend's tool lists them.
fn listing(n: &Node, backend: &str) -> String {
    let out = if backend == "nftables" {
        n.exec(&["nft", "list", "table", "ip", "flannel-ipv4"])
    } else {
        n.exec(&["iptables-save"])
    };
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rule_flags_choose_which_rules_twilld_installs_with_nftables_and_iptables() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    // (masq rules, forward rules) each backend lists for a full set: iptables counts the jumps too.
    for (i, backend, masq_lines, fwd_lines) in [(1u8, "nftables", 6, 2), (2, "iptables", 7, 3)] {
        let cases: [(&[&str], bool, bool); 2] = [
            // Masquerade without fully-random, no forward rules.
            (
                &[
                    "--ip-masq",
                    "--iptables-forward-rules=false",
                    "--ip-masq-fully-random-disable",
                ],
                true,
                false,
            ),
            // flanneld's defaults without --ip-masq: forward rules only.
            (&[], false, true),
        ];
        for (k, (flags, masq, fwd)) in cases.into_iter().enumerate() {
            let mut extra: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
            extra.push(format!("--ip-masq-backend={backend}"));
            let args = TwilldArgs {
                etcd: etcd.underlay_endpoint(),
                resync_secs: 1.0,
                extra,
            };
            let n = switch.add_node(i + 2 * k as u8);
            let d = n.start_twilld(&args);
            // subnet.env is written once the rules are in place.
            assert!(
                wait_until(READY, || n.subnet().is_some()),
                "{}",
                d.log_text()
            );
            let text = listing(&n, backend);
            let case = format!("{backend} {flags:?}:\n{text}");
            assert_eq!(
                text.matches("flanneld masq").count(),
                if masq { masq_lines } else { 0 },
                "{case}"
            );
            assert_eq!(
                text.matches("flanneld forward").count(),
                if fwd { fwd_lines } else { 0 },
                "{case}"
            );
            assert!(
                !text.contains("fully-random") && !text.contains("--random-fully"),
                "{case}"
            );
            let env = std::fs::read_to_string(n.subnet_file()).unwrap_or_default();
            assert!(env.contains(&format!("FLANNEL_IPMASQ={masq}")), "{env}");
        }
    }
}
