//! flanneld's traffic rules through the daemon's API, against the real kernel, for both families and both
//! backends: which rules each flag installs, that damage is noticed and repaired, that switching backends
//! removes the other mode's rules, and that flanneld's own table is replaced. Each test runs on a thread with a
//! private network namespace (commands it runs inherit it), which vanishes with the thread.

#[path = "rules_support/mod.rs"]
mod support;

use support::{applied, in_fresh_netns, net, options, sh};
use twilld::rules::{RulesBackend, TrafficRules};

/// (network, subnet, nft family, nft table, iptables binary, multicast range)
const FAMILIES: [(&str, &str, &str, &str, &str, &str); 2] = [
    (
        "10.244.0.0/16",
        "10.244.3.0/24",
        "ip",
        "flannel-ipv4",
        "iptables",
        "224.0.0.0/4",
    ),
    (
        "fd42::/56",
        "fd42:0:0:3::/64",
        "ip6",
        "flannel-ipv6",
        "ip6tables",
        "ff00::/8",
    ),
];

#[test]
fn nftables_rules_follow_the_flags_in_both_families() {
    in_fresh_netns(|| {
        for (n, s, family, table, _, mc) in FAMILIES {
            let list = || {
                sh(&format!(
                    "nft list table {family} {table} 2>/dev/null || true"
                ))
            };
            for (masq, fwd, random) in [
                (true, true, true),
                (true, false, false),
                (false, true, true),
            ] {
                let mut r = applied(RulesBackend::Nftables, n, s, options(masq, fwd, random));
                let text = list();
                let case = format!("{family} masq={masq} forward={fwd} random={random}:\n{text}");
                assert_eq!(
                    text.matches("flanneld masq").count(),
                    if masq { 6 } else { 0 },
                    "{case}"
                );
                assert_eq!(
                    text.matches("flanneld forward").count(),
                    if fwd { 2 } else { 0 },
                    "{case}"
                );
                assert_eq!(text.contains("hook postrouting"), masq, "{case}");
                assert_eq!(text.contains("hook forward"), fwd, "{case}");
                if masq {
                    assert!(
                        text.contains("meta mark & 0x00004000 == 0x00004000 return"),
                        "{case}"
                    );
                    assert!(
                        text.contains(&format!(
                            "{family} saddr {n} {family} daddr != {mc} masquerade"
                        )),
                        "{case}"
                    );
                    assert!(
                        text.contains(&format!("{family} saddr != {n} {family} daddr {s} return")),
                        "{case}"
                    );
                    assert_eq!(text.contains("fully-random"), random, "{case}");
                }
                assert!(r.intact().unwrap(), "{case}");
                assert!(
                    !r.ensure().unwrap(),
                    "intact rules were reinstalled: {case}"
                );
            }
            // Damage is noticed and repaired: one rule gone, then the whole table.
            let mut r = applied(RulesBackend::Nftables, n, s, options(true, true, true));
            let handle = sh(&format!("nft -a list chain {family} {table} postrtg"))
                .lines()
                .find(|l| l.contains("masquerade"))
                .and_then(|l| l.rsplit("# handle ").next())
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|| panic!("no masquerade rule in {}", list()));
            sh(&format!(
                "nft delete rule {family} {table} postrtg handle {handle}"
            ));
            assert!(!r.intact().unwrap());
            assert!(r.ensure().unwrap());
            assert_eq!(list().matches("flanneld masq").count(), 6, "{}", list());
            sh(&format!("nft delete table {family} {table}"));
            assert!(r.ensure().unwrap());
            assert!(r.intact().unwrap());
            assert_eq!(list().matches("flanneld forward").count(), 2, "{}", list());
        }
    });
}

#[test]
fn iptables_rules_follow_the_flags_in_both_families() {
    in_fresh_netns(|| {
        for (n, s, _, _, ipt, mc) in FAMILIES {
            let save = || sh(&format!("{ipt}-save"));
            for (masq, fwd, random) in [
                (true, true, true),
                (false, true, false),
                (true, false, false),
            ] {
                let mut r = applied(RulesBackend::Iptables, n, s, options(masq, fwd, random));
                let text = save();
                let case = format!("{ipt} masq={masq} forward={fwd} random={random}:\n{text}");
                // Six rules in FLANNEL-POSTRTG plus the jump, two in FLANNEL-FWD plus the jump.
                assert_eq!(
                    text.matches("flanneld masq").count(),
                    if masq { 7 } else { 0 },
                    "{case}"
                );
                assert_eq!(
                    text.matches("flanneld forward").count(),
                    if fwd { 3 } else { 0 },
                    "{case}"
                );
                assert_eq!(text.contains(":FLANNEL-POSTRTG"), masq, "{case}");
                assert_eq!(text.contains(":FLANNEL-FWD"), fwd, "{case}");
                if masq {
                    assert!(text.contains(&format!("! -d {mc}")), "{case}");
                    assert_eq!(text.contains("--random-fully"), random, "{case}");
                }
                assert!(r.intact().unwrap(), "{case}");
                assert!(
                    !r.ensure().unwrap(),
                    "intact rules were reinstalled: {case}"
                );
            }
            let mut r = applied(RulesBackend::Iptables, n, s, options(true, true, true));
            sh(&format!("{ipt} -w -t nat -F FLANNEL-POSTRTG"));
            assert!(!r.intact().unwrap());
            assert!(r.ensure().unwrap());
            sh(&format!("{ipt} -w -t filter -D FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD"));
            assert!(r.ensure().unwrap());
            let text = save();
            assert_eq!(text.matches("flanneld masq").count(), 7, "{text}");
            assert_eq!(text.matches("-j FLANNEL-FWD").count(), 1, "{text}");
        }
    });
}

#[test]
fn switching_backend_removes_the_other_modes_rules() {
    in_fresh_netns(|| {
        for (n, s, family, table, ipt, _) in FAMILIES {
            let all = options(true, true, true);
            let ipt_rules = applied(RulesBackend::Iptables, n, s, all);
            let mut nft_rules =
                TrafficRules::new(RulesBackend::Nftables, net(n), net(s), all).unwrap();
            nft_rules.remove_other_backend();
            nft_rules.apply().unwrap();
            let text = sh(&format!("{ipt}-save"));
            assert!(!text.contains("FLANNEL-"), "{text}");
            ipt_rules.remove_other_backend();
            let tables = sh(&format!("nft list tables {family}"));
            assert!(!tables.contains(table), "{tables}");
        }
    });
}

#[test]
fn flanneld_nftables_table_is_replaced_not_duplicated() {
    in_fresh_netns(|| {
        // What flanneld's nftables mode leaves: its table with other values and no comments.
        sh("nft -f - <<'EOF'
table ip flannel-ipv4 {
    comment \"rules for flannel-ipv4\"
    chain postrtg {
        type nat hook postrouting priority srcnat; policy accept;
        meta mark 0x00004000 return
        ip saddr 10.5.7.0/24 ip daddr 10.5.0.0/16 return
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        ip saddr 10.5.0.0/16 accept
    }
}
EOF");
        let _rules = applied(
            RulesBackend::Nftables,
            "10.244.0.0/16",
            "10.244.3.0/24",
            options(true, true, true),
        );
        let text = sh("nft list table ip flannel-ipv4");
        assert!(!text.contains("10.5."), "{text}");
        assert_eq!(text.matches("flanneld masq").count(), 6, "{text}");
        assert_eq!(text.matches("flanneld forward").count(), 2, "{text}");
    });
}

#[test]
fn flanneld_iptables_rules_for_another_subnet_are_replaced_not_duplicated() {
    in_fresh_netns(|| {
        // What flanneld's iptables mode leaves after a run with another subnet (its rules, its order).
        for cmd in [
            "iptables -w -t nat -N FLANNEL-POSTRTG",
            "iptables -w -t nat -A POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG",
            "iptables -w -t nat -A FLANNEL-POSTRTG -s 10.244.9.0/24 -d 10.244.0.0/16 -m comment --comment 'flanneld masq' -j RETURN",
            "iptables -w -t filter -N FLANNEL-FWD",
            "iptables -w -t filter -A FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD",
            "iptables -w -t filter -A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment 'flanneld forward' -j ACCEPT",
        ] {
            sh(cmd);
        }
        let r = applied(
            RulesBackend::Iptables,
            "10.244.0.0/16",
            "10.244.3.0/24",
            options(true, true, true),
        );
        let text = sh("iptables-save");
        assert!(!text.contains("10.244.9.0"), "{text}");
        assert_eq!(text.matches("-j FLANNEL-POSTRTG").count(), 1, "{text}");
        assert_eq!(text.matches("-j FLANNEL-FWD").count(), 1, "{text}");
        assert_eq!(text.matches("flanneld masq").count(), 7, "{text}");
        assert_eq!(text.matches("flanneld forward").count(), 3, "{text}");
        assert!(r.intact().unwrap());
    });
}
