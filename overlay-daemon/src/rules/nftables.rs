//! nftables mode over netlink: table `flannel-ipv4` / `flannel-ipv6` with base chains `postrtg` (nat,
//! postrouting, srcnat) and `forward` (filter, forward, filter), as flanneld's nftables mode.
//!
//! ```text
//! table ip flannel-ipv4 {
//!     chain postrtg {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         meta mark & 0x00004000 == 0x00004000 return comment "flanneld masq"
//!         ip saddr <S> ip daddr <N> return comment "flanneld masq"
//!         ip saddr <N> ip daddr <S> return comment "flanneld masq"
//!         ip saddr != <N> ip daddr <S> return comment "flanneld masq"
//!         ip saddr <N> ip daddr != 224.0.0.0/4 masquerade fully-random comment "flanneld masq"
//!         ip saddr != <N> ip daddr <N> masquerade fully-random comment "flanneld masq"
//!     }
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         ip saddr <N> accept comment "flanneld forward"
//!         ip daddr <N> accept comment "flanneld forward"
//!     }
//! }
//! ```

use ipnet::IpNet;
use twill_firewall::nft::{priority, BaseChain, Batch, CmpOp, Family, Hook, IpFamily, Nft, Rule};

use super::{
    chain_view, ChainView, RulesError, TrafficRules, FWD_COMMENT, KUBE_PROXY_MARK, MASQ_COMMENT,
};

const POSTRTG: &str = "postrtg";
const FORWARD: &str = "forward";

pub(super) fn table(family: IpFamily) -> (Family, &'static str) {
    match family {
        IpFamily::V4 => (Family::Ip, "flannel-ipv4"),
        IpFamily::V6 => (Family::Ip6, "flannel-ipv6"),
    }
}

fn err(context: String) -> impl FnOnce(twill_firewall::Error) -> RulesError {
    move |source| RulesError::Nftables { context, source }
}

fn masq_rules(r: &TrafficRules, family: Family) -> Result<Vec<Rule>, twill_firewall::Error> {
    let (n, s) = (r.network, r.subnet);
    let masquerade = |rule: Rule| {
        if r.options.fully_random {
            rule.masquerade_fully_random()
        } else {
            rule.masquerade()
        }
    };
    let pair =
        |sop: CmpOp, src: IpNet, dop: CmpOp, dst: IpNet| -> Result<Rule, twill_firewall::Error> {
            Rule::new(family)
                .match_saddr(sop, src)?
                .match_daddr(dop, dst)
        };
    use CmpOp::{Eq, Neq};
    Ok(vec![
        Rule::new(family)
            .match_mark(Eq, KUBE_PROXY_MARK, KUBE_PROXY_MARK)
            .return_(),
        pair(Eq, s, Eq, n)?.return_(),
        pair(Eq, n, Eq, s)?.return_(),
        pair(Neq, n, Eq, s)?.return_(),
        masquerade(pair(Eq, n, Neq, r.multicast())?),
        masquerade(pair(Neq, n, Eq, n)?),
    ]
    .into_iter()
    .map(|rule| rule.comment(MASQ_COMMENT))
    .collect())
}

fn forward_rules(r: &TrafficRules, family: Family) -> Result<Vec<Rule>, twill_firewall::Error> {
    Ok(vec![
        Rule::new(family)
            .match_saddr(CmpOp::Eq, r.network)?
            .accept(),
        Rule::new(family)
            .match_daddr(CmpOp::Eq, r.network)?
            .accept(),
    ]
    .into_iter()
    .map(|rule| rule.comment(FWD_COMMENT))
    .collect())
}

/// The transaction replacing our table: "add + delete + add" makes it atomic whether or not the table existed
/// (flanneld's or ours), so there is never a moment without the rules nor a leftover rule from other values.
fn batch(r: &TrafficRules) -> Result<Batch, twill_firewall::Error> {
    let (family, name) = table(r.family());
    let mut b = Batch::new();
    b.add_table(family, name)
        .delete_table(family, name)
        .add_table(family, name);
    if r.options.masquerade {
        b.add_base_chain(
            family,
            name,
            POSTRTG,
            &BaseChain::nat(Hook::Postrouting, priority::SRCNAT),
        );
        for rule in masq_rules(r, family)? {
            b.add_rule(name, POSTRTG, &rule)?;
        }
    }
    if r.options.forward {
        b.add_base_chain(
            family,
            name,
            FORWARD,
            &BaseChain::filter(Hook::Forward, priority::FILTER),
        );
        for rule in forward_rules(r, family)? {
            b.add_rule(name, FORWARD, &rule)?;
        }
    }
    Ok(b)
}

pub(super) fn apply(r: &TrafficRules) -> Result<(), RulesError> {
    let (family, name) = table(r.family());
    let context = format!("nftables: installing table {family} {name}");
    let b = batch(r).map_err(err(context.clone()))?;
    Nft::open()
        .and_then(|nft| nft.commit(&b))
        .map_err(err(context))
}

/// Our two chains as the kernel holds them now (empty when the table or a chain is missing).
pub(super) fn read(family: IpFamily) -> Result<Vec<ChainView>, RulesError> {
    let (family, name) = table(family);
    let nft = Nft::open().map_err(err("nftables: open netlink socket".into()))?;
    [POSTRTG, FORWARD]
        .into_iter()
        .map(|chain| {
            nft.list_rules(family, name, chain)
                .map(chain_view)
                .map_err(err(format!("nftables: listing {family} {name} {chain}")))
        })
        .collect()
}

/// Deletes our table of `family`, if there is one.
pub(super) fn remove(family: IpFamily) {
    let (family, name) = table(family);
    let mut b = Batch::new();
    b.delete_table(family, name);
    // ENOENT (never installed) and a missing nf_tables alike mean there is nothing to remove.
    let _ = Nft::open().and_then(|nft| nft.commit(&b));
}
