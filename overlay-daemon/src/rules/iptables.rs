//! iptables mode, rule for rule as flanneld's: chains `FLANNEL-POSTRTG` (nat) and `FLANNEL-FWD` (filter), each
//! entered by one commented jump appended to POSTROUTING / FORWARD.
//!
//! Installing costs three execs per family: one `-S` listing per table (to find the jumps an earlier run or
//! flanneld left) and one `iptables-restore --noflush` applying both tables atomically, so the rules are
//! contiguous and ordered and no packet sees half a set. Checking reads the chains over netlink when iptables is
//! iptables-nft (its chains are nf_tables chains in tables `ip nat` / `ip filter`); legacy x_tables are invisible
//! there, and then each check is one `iptables-save`.

use std::process::{Command, Stdio};

use twill_firewall::iptables::{delete_line, Iptables, RestoreBatch};
use twill_firewall::nft::{Family, IpFamily, Nft, Verdict};

use super::{chain_view, ChainView, RulesError, Snapshot, TrafficRules, FWD_COMMENT, MASQ_COMMENT};

const POSTRTG: &str = "FLANNEL-POSTRTG";
const FWD: &str = "FLANNEL-FWD";

/// (table, built-in chain jumping to ours, our chain, comment).
const CHAINS: [(&str, &str, &str, &str); 2] = [
    ("nat", "POSTROUTING", POSTRTG, MASQ_COMMENT),
    ("filter", "FORWARD", FWD, FWD_COMMENT),
];

fn err(context: impl Into<String>) -> impl FnOnce(twill_firewall::Error) -> RulesError {
    let context = context.into();
    move |source| RulesError::Iptables { context, source }
}

/// The rules of our chain in `-S` / restore form, jump first.
fn rules(r: &TrafficRules, chain: &str) -> Vec<String> {
    let (n, s, mc) = (r.network, r.subnet, r.multicast());
    let masq = if r.options.fully_random {
        "MASQUERADE --random-fully"
    } else {
        "MASQUERADE"
    };
    let c = |comment: &str| format!("-m comment --comment \"{comment}\"");
    let (m, f) = (c(MASQ_COMMENT), c(FWD_COMMENT));
    match chain {
        POSTRTG => vec![
            format!("-A POSTROUTING {m} -j {POSTRTG}"),
            format!("-A {POSTRTG} -m mark --mark 0x4000/0x4000 {m} -j RETURN"),
            format!("-A {POSTRTG} -s {s} -d {n} {m} -j RETURN"),
            format!("-A {POSTRTG} -s {n} -d {s} {m} -j RETURN"),
            format!("-A {POSTRTG} ! -s {n} -d {s} {m} -j RETURN"),
            format!("-A {POSTRTG} -s {n} ! -d {mc} {m} -j {masq}"),
            format!("-A {POSTRTG} ! -s {n} -d {n} {m} -j {masq}"),
        ],
        _ => vec![
            format!("-A FORWARD {f} -j {FWD}"),
            format!("-A {FWD} -s {n} {f} -j ACCEPT"),
            format!("-A {FWD} -d {n} {f} -j ACCEPT"),
        ],
    }
}

fn enabled(r: &TrafficRules, chain: &str) -> bool {
    if chain == POSTRTG {
        r.options.masquerade
    } else {
        r.options.forward
    }
}

/// The batch that empties our chains, drops the jumps into them and, for the enabled groups, appends the rules
/// and the jump again; `None` when nothing is there and nothing is wanted.
fn batch(ipt: &Iptables, r: Option<&TrafficRules>) -> Result<Option<RestoreBatch>, RulesError> {
    let mut b = RestoreBatch::new();
    let mut needed = false;
    for (table, builtin, chain, _) in CHAINS {
        let listing = ipt
            .list(table, None)
            .map_err(err(format!("listing the {table} table")))?;
        let jump = format!(" -j {chain}");
        let jumps: Vec<String> = listing
            .iter()
            .filter(|l| l.starts_with(&format!("-A {builtin} ")) && l.ends_with(&jump))
            .filter_map(|l| delete_line(l))
            .collect();
        let exists = listing.iter().any(|l| l == &format!("-N {chain}"));
        let wanted = r.is_some_and(|r| enabled(r, chain));
        if !(exists || wanted || !jumps.is_empty()) {
            continue;
        }
        needed = true;
        // `:CHAIN` creates the chain or empties an existing one.
        b.line(table, format!(":{chain} - [0:0]"));
        for d in jumps {
            b.line(table, d);
        }
        match r.filter(|r| enabled(r, chain)) {
            Some(r) => {
                let mut lines = rules(r, chain);
                // The jump goes last, once the chain it enters is complete.
                lines.rotate_left(1);
                for l in lines {
                    b.line(table, l);
                }
            }
            None => {
                b.line(table, format!("-X {chain}"));
            }
        }
    }
    Ok(needed.then_some(b))
}

pub(super) fn apply(r: &TrafficRules) -> Result<(), RulesError> {
    let ipt = Iptables::new(r.family());
    if let Some(b) = batch(&ipt, Some(r))? {
        ipt.restore(&b).map_err(err(format!(
            "installing rules with {}",
            ipt.restore_binary()
        )))?;
    }
    Ok(())
}

/// Removes our chains and the jumps into them (start-up clean-up in nftables mode). Best effort.
pub(super) fn remove(family: IpFamily) {
    let ipt = Iptables::new(family);
    if let Ok(Some(b)) = batch(&ipt, None) {
        let _ = ipt.restore(&b);
    }
}

/// What the kernel holds of our rules now. Over netlink when `previous` was (or, right after installing, when
/// our chains show up there: iptables-nft); otherwise from `iptables-save`.
pub(super) fn read(r: &TrafficRules, previous: Option<&Snapshot>) -> Result<Snapshot, RulesError> {
    match previous {
        Some(Snapshot::Netlink(_)) => return read_netlink(r.family()).map(Snapshot::Netlink),
        Some(Snapshot::Save(_)) => {}
        // Right after installing: a host without nf_tables cannot even be asked, so an error means legacy too.
        None => {
            if let Ok(view) = read_netlink(r.family()) {
                let visible = CHAINS
                    .iter()
                    .zip(view.chunks(2))
                    .any(|((_, _, chain, _), v)| enabled(r, chain) && !v[1].is_empty());
                if visible {
                    return Ok(Snapshot::Netlink(view));
                }
            }
        }
    }
    read_save(r.family()).map(Snapshot::Save)
}

/// Per table: the jumps into our chain from the built-in chain, then our chain's rules.
fn read_netlink(family: IpFamily) -> Result<Vec<ChainView>, RulesError> {
    let nf = match family {
        IpFamily::V4 => Family::Ip,
        IpFamily::V6 => Family::Ip6,
    };
    let nft = Nft::open().map_err(|source| RulesError::Iptables {
        context: "opening a netfilter netlink socket".into(),
        source,
    })?;
    let mut out = Vec::new();
    for (table, builtin, chain, _) in CHAINS {
        let list = |c: &str| {
            nft.list_rules(nf, table, c)
                .map_err(|source| RulesError::Iptables {
                    context: format!("listing {nf} {table} {c} over netlink"),
                    source,
                })
        };
        let target = Verdict::Jump(chain.to_string());
        let jumps = list(builtin)?
            .into_iter()
            .filter(|rule| {
                rule.exprs
                    .iter()
                    .any(|x| x.verdict_of().as_ref() == Some(&target))
            })
            .collect();
        out.push(chain_view(jumps));
        out.push(chain_view(list(chain)?));
    }
    Ok(out)
}

/// The `-A` lines of `iptables-save` that mention our chains.
fn read_save(family: IpFamily) -> Result<Vec<String>, RulesError> {
    let ipt = Iptables::new(family);
    let binary = format!("{}-save", ipt.binary());
    let out = Command::new(&binary)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| RulesError::Iptables {
            context: format!("running {binary}"),
            source: twill_firewall::Error::Io {
                context: binary.clone(),
                source: e,
            },
        })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A ") && (l.contains(POSTRTG) || l.contains(FWD)))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{RuleOptions, RulesBackend};

    #[test]
    fn rules_read_as_flanneld_writes_them() {
        let r = TrafficRules::new(
            RulesBackend::Iptables,
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
            RuleOptions {
                masquerade: true,
                forward: true,
                fully_random: false,
            },
        )
        .unwrap();
        let masq = rules(&r, POSTRTG);
        assert_eq!(masq.len(), 7);
        assert_eq!(
            masq[0],
            "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"
        );
        assert_eq!(
            masq[4],
            "-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment \"flanneld masq\" -j RETURN"
        );
        assert!(masq[5]
            .ends_with("! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE"));
        assert_eq!(
            rules(&r, FWD)[2],
            "-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT"
        );
    }
}
