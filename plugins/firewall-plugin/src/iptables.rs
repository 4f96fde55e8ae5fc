//! The reference's iptables backend: in table `filter`, `FORWARD` jumps first to `CNI-FORWARD`,
//! which jumps first to the admin chain (`CNI-ADMIN`, left to the administrator's own rules) and
//! then accepts, per container address, replies to connections (`-d <ip> -m conntrack --ctstate
//! RELATED,ESTABLISHED`) and everything the container sends (`-s <ip>`).
//!
//! Our per-address rules carry the owner's comment (see [`crate::owner`]); the reference's rules
//! have none. DEL removes ours by owner, and the reference's shape for the addresses of
//! `prevResult`, so containers added by the reference are cleaned up as well.

use std::collections::HashSet;
use std::net::IpAddr;

use twill_cni::{Error, Result};
use twill_firewall::iptables::{declared_chain, delete_line, rule_chain, Iptables, RestoreBatch};
use twill_firewall::nft::IpFamily;

use crate::owner::{tag_in, tag_of_network, Owner};

pub const TABLE: &str = "filter";
pub const PRIV_CHAIN: &str = "CNI-FORWARD";
const FORWARD_COMMENT: &str = "CNI firewall plugin rules";
const ADMIN_COMMENT: &str = "CNI firewall plugin admin overrides";
/// Rounds of list + restore when another writer changed the table in between.
const ROUNDS: usize = 3;

pub fn host_net(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn forward_jump() -> String {
    format!("-A FORWARD -m comment --comment \"{FORWARD_COMMENT}\" -j {PRIV_CHAIN}")
}

fn admin_jump(admin: &str) -> String {
    format!("-A {PRIV_CHAIN} -m comment --comment \"{ADMIN_COMMENT}\" -j {admin}")
}

/// Our two rules for `ip`, as `iptables -S` prints them.
fn owned_rules(ip: IpAddr, owner: &Owner) -> [String; 2] {
    let net = host_net(ip);
    let c = owner.comment();
    [
        format!(
            "-A {PRIV_CHAIN} -d {net} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"{c}\" -j ACCEPT"
        ),
        format!("-A {PRIV_CHAIN} -s {net} -m comment --comment \"{c}\" -j ACCEPT"),
    ]
}

/// The reference's two rules for `ip`.
fn reference_rules(ip: IpAddr) -> [String; 2] {
    let net = host_net(ip);
    [
        format!("-A {PRIV_CHAIN} -d {net} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!("-A {PRIV_CHAIN} -s {net} -j ACCEPT"),
    ]
}

pub fn family_of(ip: &IpAddr) -> IpFamily {
    match ip {
        IpAddr::V4(_) => IpFamily::V4,
        IpAddr::V6(_) => IpFamily::V6,
    }
}

/// Whether the kernel has the family (with `ipv6.disable=1` every ip6tables call fails, and DEL and
/// GC must still succeed).
pub fn family_enabled(family: IpFamily) -> bool {
    match family {
        IpFamily::V4 => true,
        IpFamily::V6 => std::path::Path::new("/proc/sys/net/ipv6").exists(),
    }
}

fn fw(e: twill_firewall::Error) -> Error {
    Error::failed(e.to_string())
}

/// Lines of `chain` (or the whole table); a missing chain lists as empty.
fn list(ipt: &Iptables, chain: Option<&str>) -> Result<Vec<String>> {
    match ipt.list(TABLE, chain) {
        Ok(l) => Ok(l),
        Err(_) if chain.is_some() => Ok(Vec::new()),
        Err(e) => Err(fw(e)),
    }
}

/// Creates the chains and jumps if missing and appends the rules of `ips` for `owner`.
pub fn add(owner: &Owner, admin: &str, ips: &[IpAddr]) -> Result<()> {
    let Some(first) = ips.first() else {
        return Ok(());
    };
    let ipt = Iptables::new(family_of(first));
    let mut last = None;
    for _ in 0..ROUNDS {
        let lines = list(&ipt, None)?;
        let has = |l: &str| lines.iter().any(|x| x == l);
        let declared: HashSet<&str> = lines.iter().filter_map(|l| declared_chain(l)).collect();
        let mut batch = RestoreBatch::new();
        for chain in [PRIV_CHAIN, admin] {
            if !declared.contains(chain) {
                batch.line(TABLE, format!("-N {chain}"));
            }
        }
        if !has(&forward_jump()) {
            batch.line(
                TABLE,
                forward_jump().replacen("-A FORWARD", "-I FORWARD 1", 1),
            );
        }
        if !has(&admin_jump(admin)) {
            batch.line(
                TABLE,
                admin_jump(admin).replacen(
                    &format!("-A {PRIV_CHAIN}"),
                    &format!("-I {PRIV_CHAIN} 1"),
                    1,
                ),
            );
        }
        for ip in ips {
            for r in owned_rules(*ip, owner) {
                if !has(&r) {
                    batch.line(TABLE, r);
                }
            }
        }
        match ipt.restore(&batch) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(fw(last.expect("at least one round ran"))
        .context(format!("{}: add rules to {PRIV_CHAIN}", ipt.binary())))
}

/// Deletes the lines of `CNI-FORWARD` that `select` picks, re-listing when a concurrent change made
/// the batch stale.
fn delete_where(ipt: &Iptables, select: impl Fn(&str) -> bool) -> Result<()> {
    let mut last = None;
    for _ in 0..ROUNDS {
        let lines = list(ipt, Some(PRIV_CHAIN))?;
        let mut batch = RestoreBatch::new();
        for l in lines.iter().filter(|l| rule_chain(l) == Some(PRIV_CHAIN)) {
            if select(l) {
                if let Some(d) = delete_line(l) {
                    batch.line(TABLE, d);
                }
            }
        }
        match ipt.restore(&batch) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(fw(last.expect("at least one round ran"))
        .context(format!("{}: delete rules from {PRIV_CHAIN}", ipt.binary())))
}

/// Removes `owner`'s rules, and the reference's rules for `ips`, in one family. With `from_result`
/// (the addresses come from the cached ADD result) a family without addresses is skipped, and our
/// rules for the addresses are deleted by their exact text in one exec; only when that fails (some
/// rule is not there, e.g. the reference made them) is the chain listed.
pub fn del(family: IpFamily, owner: &Owner, ips: &[IpAddr], from_result: bool) -> Result<()> {
    if !family_enabled(family) {
        return Ok(());
    }
    let ipt = Iptables::new(family);
    let mine: Vec<IpAddr> = ips
        .iter()
        .copied()
        .filter(|ip| family_of(ip) == family)
        .collect();
    if from_result {
        if mine.is_empty() {
            return Ok(());
        }
        let mut batch = RestoreBatch::new();
        for ip in &mine {
            for r in owned_rules(*ip, owner) {
                if let Some(d) = delete_line(&r) {
                    batch.line(TABLE, d);
                }
            }
        }
        if ipt.try_restore(&batch).is_ok() {
            return Ok(());
        }
    }
    let theirs: HashSet<String> = mine.iter().flat_map(|ip| reference_rules(*ip)).collect();
    delete_where(&ipt, |l| {
        tag_in(l) == Some(owner.tag()) || theirs.contains(l)
    })
}

/// Removes the rules of `network` whose tags are not in `keep`, in one family.
pub fn gc(family: IpFamily, network: &str, keep: &HashSet<String>) -> Result<()> {
    if !family_enabled(family) {
        return Ok(());
    }
    let ipt = Iptables::new(family);
    delete_where(&ipt, |l| {
        tag_in(l).is_some_and(|t| tag_of_network(t, network) && !keep.contains(t))
    })
}

/// Checks the chains, jumps and the rules of `ips` (ours for `owner`, or the reference's).
pub fn check(owner: &Owner, admin: &str, ips: &[IpAddr]) -> Result<()> {
    let Some(first) = ips.first() else {
        return Ok(());
    };
    let ipt = Iptables::new(family_of(first));
    let lines = list(&ipt, None)?;
    let has = |l: &str| lines.iter().any(|x| x == l);
    let declared: HashSet<&str> = lines.iter().filter_map(|l| declared_chain(l)).collect();
    for chain in [PRIV_CHAIN, admin] {
        if !declared.contains(chain) {
            return Err(Error::failed(format!(
                "{}: chain {chain} not found",
                ipt.binary()
            )));
        }
    }
    for want in [forward_jump(), admin_jump(admin)] {
        if !has(&want) {
            return Err(Error::failed(format!("expected rule {want:?} not found")));
        }
    }
    for ip in ips {
        let ours = owned_rules(*ip, owner);
        let theirs = reference_rules(*ip);
        for i in 0..2 {
            if !has(&ours[i]) && !has(&theirs[i]) {
                return Err(Error::failed(format!(
                    "expected rule {:?} not found",
                    ours[i]
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_written_as_iptables_lists_them() {
        let o = Owner::new("n", "c", "eth0");
        let ip: IpAddr = "10.88.0.2".parse().unwrap();
        let r = owned_rules(ip, &o);
        assert!(r[0].starts_with(
            "-A CNI-FORWARD -d 10.88.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -m comment"
        ));
        assert_eq!(
            reference_rules("fd00::2".parse().unwrap())[1],
            "-A CNI-FORWARD -s fd00::2/128 -j ACCEPT"
        );
        assert_eq!(
            admin_jump("CNI-ADMIN"),
            "-A CNI-FORWARD -m comment --comment \"CNI firewall plugin admin overrides\" -j CNI-ADMIN"
        );
    }
}
