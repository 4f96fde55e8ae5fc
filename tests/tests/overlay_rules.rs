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

/// Starts a node's twilld with `extra` flags and returns its log once it is ready.
fn ready_log(switch: &Switch, etcd_endpoint: String, index: u8, extra: &[&str]) -> String {
    let n = switch.add_node(index);
    let d = n.start_twilld(&TwilldArgs {
        etcd: etcd_endpoint,
        resync_secs: 1.0,
        extra: extra.iter().map(|s| s.to_string()).collect(),
    });
    assert!(
        wait_until(READY, || n.subnet().is_some()),
        "{}",
        d.log_text()
    );
    // The "ready" line follows subnet.env; give it a moment to reach the file.
    std::thread::sleep(std::time::Duration::from_millis(300));
    d.log_text()
}

#[test]
fn json_log_format_writes_one_object_per_line_with_level_target_and_message() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let log = ready_log(&switch, etcd.underlay_endpoint(), 1, &["--log-format=json"]);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["level", "target", "message", "timestamp"] {
            assert!(v[field].is_string(), "no {field} in {line}");
        }
        assert!(
            v["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("twilld")),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"level\":\"INFO\"") && l.contains("acquired subnet")),
        "{log}"
    );
}

#[test]
fn log_level_warn_hides_info_lines_and_glog_verbosity_shows_debug_lines() {
    let switch = Switch::new();
    let etcd = switch.start_etcd();
    etcd.put(CONFIG_KEY, NET_CONFIG);
    let quiet = ready_log(&switch, etcd.underlay_endpoint(), 1, &["--log-level=warn"]);
    assert!(
        !quiet.contains(" INFO ") && !quiet.contains("acquired subnet"),
        "info lines at --log-level=warn:\n{quiet}"
    );
    let normal = ready_log(&switch, etcd.underlay_endpoint(), 2, &[]);
    assert!(
        normal.contains(" INFO ") && normal.contains("acquired subnet"),
        "{normal}"
    );
    assert!(!normal.contains(" DEBUG "), "{normal}");
    // flanneld's `-v=2`: debug lines, e.g. the periodic traffic-rules check (every second here).
    let n = switch.add_node(3);
    let d = n.start_twilld(&TwilldArgs {
        etcd: etcd.underlay_endpoint(),
        resync_secs: 1.0,
        extra: vec!["-v=2".into()],
    });
    assert!(
        wait_until(READY, || d.log_text().contains("traffic rules intact")),
        "{}",
        d.log_text()
    );
    assert!(d.log_text().contains(" DEBUG "), "{}", d.log_text());
}
