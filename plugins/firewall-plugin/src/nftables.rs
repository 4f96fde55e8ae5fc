//! `"backend": "nftables"` (twill's addition; the reference has iptables and firewalld only): the
//! iptables backend's structure in an nftables table of our own, `inet twill_firewall`. Its base
//! chain `forward` (filter hook, priority 0) jumps to `CNI-FORWARD`, which first jumps to the
//! admin chain (left to the administrator) and then holds, per container address, `ip daddr <ip>
//! ct state established,related accept` and `ip saddr <ip> accept`, each with the owner's comment.
//!
//! An accept in one nftables table does not overrule a drop in another table at the same hook: this
//! backend is for hosts whose own forward filtering jumps to (or is written in) this table, or that
//! want the rules for accounting; hosts with an iptables `FORWARD` policy of DROP need `iptables`.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use twill_cni::{Error, Result};
use twill_firewall::nft::{
    priority, BaseChain, Batch, CmpOp, Family, Hook, Nft, Rule, RuleInfo, Verdict,
};

use crate::owner::{tag_in, tag_of_network, Owner};

pub const TABLE: &str = "twill_firewall";
const BASE: &str = "forward";
pub const PRIV_CHAIN: &str = "CNI-FORWARD";

fn fw(e: twill_firewall::Error) -> Error {
    Error::failed(format!("nftables: {e}"))
}

fn jumps_to(rule: &RuleInfo, chain: &str) -> bool {
    rule.exprs
        .iter()
        .any(|e| e.verdict_of() == Some(Verdict::Jump(chain.to_string())))
}

fn owned_rules(ip: IpAddr, owner: &Owner) -> Result<[Rule; 2]> {
    let net = IpNet::from(ip);
    let c = owner.comment();
    Ok([
        Rule::new(Family::Inet)
            .match_daddr(CmpOp::Eq, net)
            .map_err(fw)?
            .match_ct_established_related()
            .accept()
            .comment(c.clone()),
        Rule::new(Family::Inet)
            .match_saddr(CmpOp::Eq, net)
            .map_err(fw)?
            .accept()
            .comment(c),
    ])
}

pub fn add(owner: &Owner, admin: &str, ips: &[IpAddr]) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let nft = Nft::open().map_err(fw)?;
    let base_rules = nft.list_rules(Family::Inet, TABLE, BASE).map_err(fw)?;
    let priv_rules = nft
        .list_rules(Family::Inet, TABLE, PRIV_CHAIN)
        .map_err(fw)?;
    let mut b = Batch::new();
    b.add_table(Family::Inet, TABLE)
        .add_base_chain(
            Family::Inet,
            TABLE,
            BASE,
            &BaseChain::filter(Hook::Forward, priority::FILTER),
        )
        .add_chain(Family::Inet, TABLE, PRIV_CHAIN)
        .add_chain(Family::Inet, TABLE, admin);
    if !base_rules.iter().any(|r| jumps_to(r, PRIV_CHAIN)) {
        b.add_rule(TABLE, BASE, &Rule::new(Family::Inet).jump(PRIV_CHAIN))
            .map_err(fw)?;
    }
    if !priv_rules.iter().any(|r| jumps_to(r, admin)) {
        b.insert_rule(TABLE, PRIV_CHAIN, &Rule::new(Family::Inet).jump(admin))
            .map_err(fw)?;
    }
    let mine = priv_rules
        .iter()
        .filter(|r| r.comment.as_deref().and_then(tag_in) == Some(owner.tag()))
        .count();
    // A repeated ADD finds its rules in place.
    if mine < 2 * ips.len() {
        for ip in ips {
            for r in owned_rules(*ip, owner)? {
                b.add_rule(TABLE, PRIV_CHAIN, &r).map_err(fw)?;
            }
        }
    }
    nft.commit(&b).map_err(fw)
}

fn delete_where(select: impl Fn(&str) -> bool) -> Result<()> {
    let nft = Nft::open().map_err(fw)?;
    let rules = nft
        .list_rules(Family::Inet, TABLE, PRIV_CHAIN)
        .map_err(fw)?;
    let mut b = Batch::new();
    for r in &rules {
        if r.comment.as_deref().and_then(tag_in).is_some_and(&select) {
            b.delete_rule(Family::Inet, TABLE, PRIV_CHAIN, r.handle);
        }
    }
    if b.is_empty() {
        return Ok(());
    }
    nft.commit(&b).map_err(fw)
}

pub fn del(owner: &Owner) -> Result<()> {
    delete_where(|t| t == owner.tag())
}

pub fn gc(network: &str, keep: &HashSet<String>) -> Result<()> {
    delete_where(|t| tag_of_network(t, network) && !keep.contains(t))
}

pub fn check(owner: &Owner, admin: &str, ips: &[IpAddr]) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let nft = Nft::open().map_err(fw)?;
    let base_rules = nft.list_rules(Family::Inet, TABLE, BASE).map_err(fw)?;
    if !base_rules.iter().any(|r| jumps_to(r, PRIV_CHAIN)) {
        return Err(Error::failed(format!(
            "nftables: inet {TABLE} {BASE} does not jump to {PRIV_CHAIN}"
        )));
    }
    let priv_rules = nft
        .list_rules(Family::Inet, TABLE, PRIV_CHAIN)
        .map_err(fw)?;
    if !priv_rules.iter().any(|r| jumps_to(r, admin)) {
        return Err(Error::failed(format!(
            "nftables: inet {TABLE} {PRIV_CHAIN} does not jump to {admin}"
        )));
    }
    let mine = priv_rules
        .iter()
        .filter(|r| r.comment.as_deref().and_then(tag_in) == Some(owner.tag()))
        .count();
    if mine < 2 * ips.len() {
        return Err(Error::failed(format!(
            "nftables: {mine} of this container's {} rules found in inet {TABLE} {PRIV_CHAIN}",
            2 * ips.len()
        )));
    }
    Ok(())
}
