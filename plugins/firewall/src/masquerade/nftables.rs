//! Masquerade with native nf_tables, laid out like the reference's nftables backend
//! (docs/cni-spec-notes.md §10.4) so both can share a node:
//!
//! ```text
//! table inet cni_plugins_masquerade {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip daddr 224.0.0.0/4 return
//!         ip6 daddr ff00::/8 return
//!         goto masq_checks
//!     }
//!     chain masq_checks {
//!         ip saddr 10.244.1.5 ip daddr != 10.244.1.0/24 masquerade comment "<tag> net: .. if: .. id: .."
//!     }
//! }
//! ```
//!
//! ADD is a dump of the three-rule `postrouting` chain plus one transaction: only the owner's
//! rules once the node is set up; table, chains and `postrouting` re-filled as well on the first
//! ADD or when `postrouting` was damaged. DEL is one dump of `masq_checks` plus one transaction
//! deleting the owner's rules by handle.

use std::collections::HashSet;

use ipnet::IpNet;

use super::owner::{comment_has_tag, find_tag, network_tag, Owner};
use crate::error::{Error, Result};
use crate::nft::{
    ip_bytes, priority, BaseChain, Batch, CmpOp, Family, Hook, Nft, Rule, RuleInfo, Verdict,
    MAX_COMMENT_LEN,
};

pub(crate) const TABLE: &str = "cni_plugins_masquerade";
pub(crate) const POSTROUTING: &str = "postrouting";
pub(crate) const CHECKS: &str = "masq_checks";

/// A concurrent DEL/GC may delete one of the rules we listed between our dump and our commit;
/// the transaction then fails with ENOENT as a whole and we list again.
const DELETE_ATTEMPTS: usize = 5;

fn multicast() -> [IpNet; 2] {
    [
        IpNet::new(std::net::Ipv4Addr::new(224, 0, 0, 0).into(), 4).expect("valid prefix"),
        IpNet::new(
            std::net::Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0).into(),
            8,
        )
        .expect("valid prefix"),
    ]
}

fn masq_rule(owner: &Owner, addr: &IpNet) -> Result<Rule> {
    Ok(Rule::new(Family::Inet)
        .match_saddr(CmpOp::Eq, addr.addr())?
        .match_daddr(CmpOp::Neq, addr.trunc())?
        .masquerade()
        .comment(owner.comment(MAX_COMMENT_LEN)))
}

fn postrouting_rules() -> Result<Vec<Rule>> {
    let mut rules = Vec::new();
    for net in multicast() {
        rules.push(
            Rule::new(Family::Inet)
                .match_daddr(CmpOp::Eq, net)?
                .return_(),
        );
    }
    rules.push(Rule::new(Family::Inet).goto(CHECKS));
    Ok(rules)
}

/// Whether `postrouting` holds exactly the multicast returns and the goto, in order.
fn postrouting_intact(listed: &[RuleInfo]) -> bool {
    let mcast: Vec<Vec<u8>> = multicast().iter().map(|n| ip_bytes(&n.network())).collect();
    listed.len() == 3
        && listed[..2].iter().zip(&mcast).all(|(r, net)| {
            r.exprs.last().and_then(|e| e.verdict_of()) == Some(Verdict::Return)
                && r.exprs.iter().any(|e| e.cmp_data().as_ref() == Some(net))
        })
        && listed[2].exprs.last().and_then(|e| e.verdict_of())
            == Some(Verdict::Goto(CHECKS.to_string()))
}

pub(crate) fn add(owner: &Owner, addrs: &[IpNet]) -> Result<()> {
    let nft = Nft::open()?;
    let mut batch = Batch::new();
    // Hot path: when `postrouting` already holds exactly the multicast returns and the goto,
    // the table and both chains exist (a chain cannot be deleted while a goto targets it), so
    // the transaction only adds the owner's rules. Re-sending "add table/chain" or flushing
    // would be correct too, but base chain updates and rule deletions are released after an
    // RCU grace period, and closing the socket then waits for it (see `Nft`): ~10–15 ms, more
    // than the whole rest of the ADD. The reference flushes and re-fills on every ADD.
    if !postrouting_intact(&nft.list_rules(Family::Inet, TABLE, POSTROUTING)?) {
        // First ADD on this node (or a damaged chain): create everything and re-fill
        // `postrouting`. Concurrent first ADDs may all do this; each transaction is atomic and
        // creation without NLM_F_EXCL tolerates existing objects, so the chain still ends with
        // exactly these three rules.
        batch
            .add_table(Family::Inet, TABLE)
            .add_base_chain(
                Family::Inet,
                TABLE,
                POSTROUTING,
                &BaseChain::nat(Hook::Postrouting, priority::SRCNAT),
            )
            .add_chain(Family::Inet, TABLE, CHECKS)
            .flush_chain(Family::Inet, TABLE, POSTROUTING);
        for rule in postrouting_rules()? {
            batch.add_rule(TABLE, POSTROUTING, &rule)?;
        }
    }
    for addr in addrs {
        batch.add_rule(TABLE, CHECKS, &masq_rule(owner, addr)?)?;
    }
    nft.commit(&batch).map_err(|e| context(e, "add", owner))
}

fn context(e: Error, op: &str, owner: &Owner) -> Error {
    match e {
        Error::Kernel {
            context,
            errno,
            message,
        } => Error::Kernel {
            context: format!(
                "masquerade {op} for {}/{}/{}: {context}",
                owner.network, owner.container_id, owner.ifname
            ),
            errno,
            message,
        },
        other => other,
    }
}

/// Deletes the listed rules selected by `doomed`, re-listing when a concurrent change removed one
/// first.
fn delete_matching(nft: &Nft, doomed: impl Fn(&RuleInfo) -> bool) -> Result<usize> {
    let mut last_err = None;
    for _ in 0..DELETE_ATTEMPTS {
        let rules = nft.list_rules(Family::Inet, TABLE, CHECKS)?;
        let mut batch = Batch::new();
        let mut n = 0;
        for r in rules.iter().filter(|r| doomed(r)) {
            batch.delete_rule(Family::Inet, TABLE, CHECKS, r.handle);
            n += 1;
        }
        match nft.commit(&batch) {
            Ok(()) => return Ok(n),
            Err(e) if e.is_not_found() => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| Error::Protocol("masquerade delete never ran".into())))
}

pub(crate) fn del(owner: &Owner) -> Result<()> {
    let tag = owner.tag();
    let nft = Nft::open()?;
    delete_matching(&nft, |r| {
        r.comment
            .as_deref()
            .is_some_and(|c| comment_has_tag(c, &tag))
    })
    .map(|_| ())
    .map_err(|e| context(e, "del", owner))
}

pub(crate) fn gc(network: &str, keep: &[Owner]) -> Result<usize> {
    let net_tag = network_tag(network);
    let keep: HashSet<String> = keep.iter().map(Owner::tag).collect();
    let nft = Nft::open()?;
    let owner_of = |r: &RuleInfo| -> Option<String> {
        let c = r.comment.as_deref()?;
        // The tag is the comment's first word.
        let first = c.split(' ').next()?;
        find_tag(first, &net_tag).filter(|t| t == first)
    };
    let doomed_owners: HashSet<String> = nft
        .list_rules(Family::Inet, TABLE, CHECKS)?
        .iter()
        .filter_map(owner_of)
        .filter(|t| !keep.contains(t))
        .collect();
    if doomed_owners.is_empty() {
        return Ok(0);
    }
    delete_matching(&nft, |r| {
        owner_of(r).is_some_and(|t| doomed_owners.contains(&t))
    })
    .map_err(|e| Error::Protocol(format!("masquerade gc for network {network}: {e}")))?;
    Ok(doomed_owners.len())
}

pub(crate) fn check(owner: &Owner, addrs: &[IpNet]) -> Result<()> {
    let tag = owner.tag();
    let nft = Nft::open()?;
    let who = format!(
        "masquerade check for {}/{}/{}",
        owner.network, owner.container_id, owner.ifname
    );
    let post = nft.list_rules(Family::Inet, TABLE, POSTROUTING)?;
    let enters_checks = post.iter().any(|r| {
        r.exprs
            .iter()
            .any(|e| e.verdict_of() == Some(Verdict::Goto(CHECKS.to_string())))
    });
    if !enters_checks {
        return Err(Error::Missing(format!(
            "{who}: inet {TABLE} {POSTROUTING} does not send packets to {CHECKS}"
        )));
    }
    let rules: Vec<RuleInfo> = nft
        .list_rules(Family::Inet, TABLE, CHECKS)?
        .into_iter()
        .filter(|r| {
            r.comment
                .as_deref()
                .is_some_and(|c| comment_has_tag(c, &tag))
        })
        .collect();
    for addr in addrs {
        let saddr = ip_bytes(&addr.addr());
        let subnet = ip_bytes(&addr.network());
        let present = rules.iter().any(|r| {
            let cmps: Vec<(Option<CmpOp>, Vec<u8>)> = r
                .exprs
                .iter()
                .filter_map(|e| e.cmp_data().map(|d| (e.cmp_op(), d)))
                .collect();
            cmps.contains(&(Some(CmpOp::Eq), saddr.clone()))
                && cmps.contains(&(Some(CmpOp::Neq), subnet.clone()))
                && r.exprs.iter().any(|e| e.name() == "masq")
        });
        if !present {
            return Err(Error::Missing(format!(
                "{who}: no masquerade rule for {addr} in inet {TABLE} {CHECKS}"
            )));
        }
    }
    Ok(())
}
