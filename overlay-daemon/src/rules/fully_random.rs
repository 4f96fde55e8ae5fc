//! Whether `masquerade fully-random` can be used here, found out as flanneld does before it writes its rules:
//! in nftables mode by having the kernel check a throw-away rule that uses it (a kernel without the flag refuses
//! the rule), in iptables mode by the iptables version (`--random-fully` needs iptables 1.6.2). Without it the
//! masquerade rules fall back to plain `masquerade`, with a warning, rather than failing to install at all.

use std::process::{Command, Stdio};

use twill_firewall::nft::{
    priority, BaseChain, Batch, CmpOp, Expr, Family, Hook, IpFamily, Nft, Rule,
};

use super::RulesBackend;

/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
const RANDOM_FULLY: u32 = 16;
/// The probe's table: created, filled and deleted in one transaction, so it is never seen.
const PROBE_TABLE: &str = "flannel-masq-probe";

/// Whether the kernel accepts a masquerade rule with NAT `flags` in a table of `family`: the probe table, a nat
/// chain and the rule are added and the table deleted again in one batch, which the kernel validates whole
/// (and refuses whole) and whose net effect is nothing.
pub fn nft_accepts_masquerade(family: IpFamily, flags: u32) -> bool {
    let (fam, addr) = match family {
        IpFamily::V4 => (Family::Ip, "127.0.0.1/32"),
        IpFamily::V6 => (Family::Ip6, "::1/128"),
    };
    let rule = match addr
        .parse::<ipnet::IpNet>()
        .map_err(|e| e.to_string())
        .and_then(|n| {
            Rule::new(fam)
                .match_saddr(CmpOp::Neq, n)
                .map_err(|e| e.to_string())
        }) {
        Ok(r) => r.expr(Expr::masquerade(flags)),
        Err(_) => return false,
    };
    let mut b = Batch::new();
    b.add_table(fam, PROBE_TABLE).add_base_chain(
        fam,
        PROBE_TABLE,
        "postrtg",
        &BaseChain::nat(Hook::Postrouting, priority::SRCNAT),
    );
    if b.add_rule(PROBE_TABLE, "postrtg", &rule).is_err() {
        return false;
    }
    b.delete_table(fam, PROBE_TABLE);
    match Nft::open().and_then(|nft| nft.commit(&b)) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("masquerade probe (flags {flags:#x}) refused: {e}");
            false
        }
    }
}

/// Whether `iptables --version` output names a version with `--random-fully` (1.6.2 and later, as go-iptables'
/// `HasRandomFully`).
pub fn iptables_version_has_random_fully(version_output: &str) -> bool {
    let Some(v) = version_output
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
    else {
        return false;
    };
    let mut parts = v.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .unwrap_or(0)
    });
    let (a, b, c) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    (a, b, c) >= (1, 6, 2)
}

fn iptables_has_random_fully(family: IpFamily) -> bool {
    let bin = match family {
        IpFamily::V4 => "iptables",
        IpFamily::V6 => "ip6tables",
    };
    Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| iptables_version_has_random_fully(&String::from_utf8_lossy(&o.stdout)))
}

/// Whether masquerade rules of `family` may use fully-random with this rules backend; logs the fallback.
pub fn supported(backend: RulesBackend, family: IpFamily) -> bool {
    let ok = match backend {
        RulesBackend::Nftables => nft_accepts_masquerade(family, RANDOM_FULLY),
        RulesBackend::Iptables => iptables_has_random_fully(family),
    };
    if !ok {
        tracing::warn!(
            "{backend:?}: masquerade fully-random is not supported here ({family:?}): masquerading without it"
        );
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_versions_with_random_fully_as_go_iptables() {
        for (out, has) in [
            ("iptables v1.8.9 (nf_tables)", true),
            ("ip6tables v1.8.7 (legacy)", true),
            ("iptables v1.6.2", true),
            ("iptables v1.6.1", false),
            ("iptables v1.4.21", false),
            ("iptables v2.0.0", true),
            ("garbage", false),
            ("", false),
        ] {
            assert_eq!(iptables_version_has_random_fully(out), has, "{out}");
        }
    }

    /// Runs `f` on a thread in a namespace of its own (gone with the thread): nothing probed is seen elsewhere.
    fn in_fresh_netns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare on this short-lived thread only.
                let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "unshare (run as root): {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn tables() -> Vec<String> {
        let out = Command::new("nft").args(["list", "tables"]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_probe_accepts_fully_random_refuses_an_unknown_flag_and_leaves_nothing() {
        if unsafe { libc::geteuid() } != 0 && std::env::var_os("CI").is_none() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
        in_fresh_netns(|| {
            for family in [IpFamily::V4, IpFamily::V6] {
                assert!(nft_accepts_masquerade(family, RANDOM_FULLY), "{family:?}");
                // A flag this kernel does not know stands for a kernel without fully-random: refused, so the
                // rules would fall back.
                assert!(!nft_accepts_masquerade(family, 1 << 20), "{family:?}");
                assert!(supported(RulesBackend::Nftables, family), "{family:?}");
            }
            let left = tables();
            assert!(
                !left.iter().any(|t| t.contains(PROBE_TABLE)),
                "probe table left: {left:?}"
            );
        });
    }
}
