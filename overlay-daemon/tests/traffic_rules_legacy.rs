//! iptables mode on legacy x_tables, which netlink cannot see: rules are installed and checked through the
//! commands (`iptables-save` per check) and never appear in nf_tables. `iptables` resolves to the legacy
//! multi-call binary through PATH, set before any thread exists (this file holds one test: its own process).

use std::process::Command;

use twilld::rules::{RuleOptions, RulesBackend, TrafficRules};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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

    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare affects only this short-lived thread.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            let mut r = TrafficRules::new(
                RulesBackend::Iptables,
                "10.244.0.0/16".parse().unwrap(),
                "10.244.3.0/24".parse().unwrap(),
                RuleOptions {
                    masquerade: true,
                    forward: true,
                    fully_random: true,
                },
            )
            .unwrap();
            r.apply().unwrap();
            let saved = sh("iptables-save");
            assert_eq!(saved.matches("flanneld masq").count(), 7, "{saved}");
            assert_eq!(saved.matches("flanneld forward").count(), 3, "{saved}");
            let ruleset = sh("nft list ruleset");
            assert!(!ruleset.contains("FLANNEL-"), "legacy rules in nf_tables:\n{ruleset}");
            assert!(r.intact().unwrap());
            sh("iptables -w -t nat -D FLANNEL-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16 -m comment --comment 'flanneld masq' -j RETURN");
            assert!(!r.intact().unwrap());
            assert!(r.ensure().unwrap());
            assert!(r.intact().unwrap());
            let saved = sh("iptables-save");
            assert_eq!(saved.matches("flanneld masq").count(), 7, "{saved}");
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
}
