//! iptables mode on legacy x_tables, which netlink cannot see: rules are installed and checked through the
//! commands (`iptables-save` per check) and never appear in nf_tables. `iptables` resolves to the legacy
//! multi-call binary through PATH, set before any thread exists (this file holds one test: its own process).

#[path = "rules_support/mod.rs"]
mod support;

use support::{applied, in_fresh_netns, options, sh};
use twilld::rules::RulesBackend;

#[test]
fn legacy_iptables_rules_are_installed_checked_and_repaired_through_the_commands() {
    let multi = "/usr/sbin/xtables-legacy-multi";
    assert!(
        std::path::Path::new(multi).exists(),
        "{multi} missing: install Debian's iptables"
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for name in ["iptables", "iptables-save", "iptables-restore"] {
        std::os::unix::fs::symlink(multi, dir.path().join(name)).unwrap_or_else(|e| panic!("{e}"));
    }
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The only test of this binary, before it starts any thread: nothing reads the environment concurrently.
    std::env::set_var("PATH", path);

    in_fresh_netns(|| {
        let mut r = applied(
            RulesBackend::Iptables,
            "10.244.0.0/16",
            "10.244.3.0/24",
            options(true, true, true),
        );
        let saved = sh("iptables-save");
        assert_eq!(saved.matches("flanneld masq").count(), 7, "{saved}");
        assert_eq!(saved.matches("flanneld forward").count(), 3, "{saved}");
        let ruleset = sh("nft list ruleset");
        assert!(
            !ruleset.contains("FLANNEL-"),
            "legacy rules in nf_tables:\n{ruleset}"
        );
        assert!(r.intact().unwrap());
        sh("iptables -w -t nat -D FLANNEL-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16 -m comment --comment 'flanneld masq' -j RETURN");
        assert!(!r.intact().unwrap());
        assert!(r.ensure().unwrap());
        assert!(r.intact().unwrap());
        let saved = sh("iptables-save");
        assert_eq!(saved.matches("flanneld masq").count(), 7, "{saved}");
    });
}
