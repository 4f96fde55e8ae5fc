//! Masquerade with iptables/ip6tables, shaped like the reference (docs/cni-spec-notes.md §10.4): table
//! `nat`, a `CNI-…` chain per owner entered from `POSTROUTING` by `-s <addr>`, holding an ACCEPT
//! for the container's own subnet and a MASQUERADE for non-multicast destinations.
//!
//! Differences from the reference, all for teardown without addresses: the chain name hashes
//! network + container id + ifname, and every rule carries the owner tag in its comment, so DEL
//! and GC find the `POSTROUTING` jumps from a listing. All ACCEPTs precede the single MASQUERADE
//! (the reference interleaves them per address, which masquerades intra-subnet traffic of a
//! second address of the same family).

use std::collections::{BTreeSet, HashSet};

use ipnet::IpNet;

use super::owner::{find_tag, network_tag, Owner};
use crate::error::{Error, Result};
use crate::iptables::{declared_chain, delete_line, rule_chain, Iptables, RestoreBatch};
use crate::nft::IpFamily;

const TABLE: &str = "nat";
/// iptables caps comments at 256 bytes.
const MAX_COMMENT: usize = 200;
/// Rounds of list + restore when a concurrent change makes a delete batch stale.
const DELETE_ROUNDS: usize = 3;

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

fn multicast(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "224.0.0.0/4",
        IpFamily::V6 => "ff00::/8",
    }
}

fn of_family(addrs: &[IpNet], family: IpFamily) -> Vec<IpNet> {
    addrs
        .iter()
        .filter(|a| IpFamily::of(&a.addr()) == family)
        .copied()
        .collect()
}

/// Whether the kernel has the family at all (booted with `ipv6.disable=1` it has no IPv6, and
/// every `ip6tables` call fails; DEL and GC must still succeed there).
fn family_enabled(family: IpFamily) -> bool {
    match family {
        IpFamily::V4 => true,
        IpFamily::V6 => std::path::Path::new("/proc/sys/net/ipv6").exists(),
    }
}

fn host(addr: &IpNet) -> IpNet {
    IpNet::from(addr.addr())
}

pub(crate) fn add(owner: &Owner, addrs: &[IpNet]) -> Result<()> {
    let chain = owner.chain();
    let comment = owner.comment(MAX_COMMENT);
    for family in FAMILIES {
        let mine = of_family(addrs, family);
        if mine.is_empty() {
            continue;
        }
        let mut batch = RestoreBatch::new();
        // In --noflush mode a chain declaration creates the chain, or flushes it if it exists,
        // so the chain's content is the same however often ADD runs.
        batch.line(TABLE, format!(":{chain} - [0:0]"));
        for a in &mine {
            batch.line(
                TABLE,
                format!(
                    "-A {chain} -d {} -m comment --comment \"{comment}\" -j ACCEPT",
                    a.trunc()
                ),
            );
        }
        batch.line(
            TABLE,
            format!(
                "-A {chain} ! -d {} -m comment --comment \"{comment}\" -j MASQUERADE",
                multicast(family)
            ),
        );
        for a in &mine {
            batch.line(
                TABLE,
                format!(
                    "-A POSTROUTING -s {} -m comment --comment \"{comment}\" -j {chain}",
                    host(a)
                ),
            );
        }
        if let Err(e) = Iptables::new(family).restore(&batch) {
            // Leave nothing half-installed (the other family may have succeeded).
            let _ = del(owner);
            return Err(Error::Protocol(format!(
                "masquerade add for {}/{}/{}: {e}",
                owner.network, owner.container_id, owner.ifname
            )));
        }
    }
    Ok(())
}

/// Lines removing the owners with `tags` from a `-S` listing of table nat: their POSTROUTING
/// jumps first, then their chains (flushed and deleted).
fn removal(lines: &[String], tags: &HashSet<String>, batch: &mut RestoreBatch) {
    let chains: Vec<&str> = lines.iter().filter_map(|l| declared_chain(l)).collect();
    for line in lines {
        if rule_chain(line) == Some("POSTROUTING") && tags.iter().any(|t| line.contains(t.as_str()))
        {
            if let Some(d) = delete_line(line) {
                batch.line(TABLE, d);
            }
        }
    }
    for tag in tags {
        // The chain name's hash starts with the tag's second half (Owner::chain).
        let Some((_, inst)) = tag.split_once('-') else {
            continue;
        };
        let prefix = format!("CNI-{inst}");
        for chain in chains
            .iter()
            .filter(|c| c.starts_with(&prefix) && c.len() == 28)
        {
            batch.line(TABLE, format!("-F {chain}"));
            batch.line(TABLE, format!("-X {chain}"));
        }
    }
}

/// Lists, removes the owners chosen by `select` from the listing, and retries with a fresh
/// listing when the batch was made stale by a concurrent change. Returns the removed tags.
fn remove_owners(
    family: IpFamily,
    select: impl Fn(&[String]) -> HashSet<String>,
) -> Result<HashSet<String>> {
    if !family_enabled(family) {
        // Nothing of that family can have been installed, and ip6tables fails without IPv6.
        return Ok(HashSet::new());
    }
    let ipt = Iptables::new(family);
    let mut last_err = None;
    for _ in 0..DELETE_ROUNDS {
        let lines = ipt.list(TABLE, None)?;
        let tags = select(&lines);
        if tags.is_empty() {
            return Ok(tags);
        }
        let mut batch = RestoreBatch::new();
        removal(&lines, &tags, &mut batch);
        if batch.is_empty() {
            return Ok(tags);
        }
        match ipt.restore(&batch) {
            Ok(()) => return Ok(tags),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| Error::Protocol("iptables removal never ran".into())))
}

pub(crate) fn del(owner: &Owner) -> Result<()> {
    let tag = owner.tag();
    let chain = owner.chain();
    let mut errors = Vec::new();
    // Both families are always attempted: teardown never stops half way.
    for family in FAMILIES {
        let res = remove_owners(family, |lines| {
            let present = lines
                .iter()
                .any(|l| l.contains(tag.as_str()) || declared_chain(l) == Some(chain.as_str()));
            if present {
                HashSet::from([tag.clone()])
            } else {
                HashSet::new()
            }
        });
        if let Err(e) = res {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Protocol(format!(
            "masquerade del for {}/{}/{}: {}",
            owner.network,
            owner.container_id,
            owner.ifname,
            errors.join("; ")
        )))
    }
}

pub(crate) fn gc(network: &str, keep: &[Owner]) -> Result<usize> {
    let net_tag = network_tag(network);
    let keep: HashSet<String> = keep.iter().map(Owner::tag).collect();
    let mut removed = BTreeSet::new();
    let mut errors = Vec::new();
    for family in FAMILIES {
        let res = remove_owners(family, |lines| {
            lines
                .iter()
                .filter_map(|l| find_tag(l, &net_tag))
                .filter(|t| !keep.contains(t))
                .collect()
        });
        match res {
            Ok(tags) => removed.extend(tags),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(removed.len())
    } else {
        Err(Error::Protocol(format!(
            "masquerade gc for network {network}: {}",
            errors.join("; ")
        )))
    }
}

pub(crate) fn check(owner: &Owner, addrs: &[IpNet]) -> Result<()> {
    let tag = owner.tag();
    let chain = owner.chain();
    let who = format!(
        "masquerade check for {}/{}/{}",
        owner.network, owner.container_id, owner.ifname
    );
    for family in FAMILIES {
        let mine = of_family(addrs, family);
        if mine.is_empty() {
            continue;
        }
        let ipt = Iptables::new(family);
        let lines = ipt.list(TABLE, None)?;
        let chain_rules: Vec<&String> = lines
            .iter()
            .filter(|l| rule_chain(l) == Some(chain.as_str()))
            .collect();
        if !chain_rules.iter().any(|l| {
            l.contains(&format!("! -d {}", multicast(family))) && l.ends_with("-j MASQUERADE")
        }) {
            return Err(Error::Missing(format!(
                "{who}: {} chain {chain} has no MASQUERADE rule",
                ipt.binary()
            )));
        }
        for a in &mine {
            let jump = lines.iter().any(|l| {
                rule_chain(l) == Some("POSTROUTING")
                    && l.contains(tag.as_str())
                    && l.contains(&format!("-s {} ", host(a)))
                    && l.ends_with(&format!("-j {chain}"))
            });
            let accept = chain_rules
                .iter()
                .any(|l| l.contains(&format!("-d {} ", a.trunc())) && l.ends_with("-j ACCEPT"));
            if !jump || !accept {
                return Err(Error::Missing(format!(
                    "{who}: {} rules for {a} missing (POSTROUTING jump: {jump}, subnet accept: {accept})",
                    ipt.binary()
                )));
            }
        }
    }
    Ok(())
}
