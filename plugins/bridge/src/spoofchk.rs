//! `macspoofchk` (docs/cni-spec-notes.md §10.1): bridge-family nftables rules that drop frames entering the bridge from
//! the pod's port unless their source MAC is the container's. Programmed through twill-firewall's netlink client:
//! one atomic transaction per operation, no `nft` process.
//!
//! Layout as the reference: table `bridge nat`, base chain `PREROUTING` (filter, prerouting, priority -300)
//! with one jump per port, identified by the comment `macspoofchk-<attachment id>`, into per-port chains
//! `cni-br-iface-<id>` → `cni-br-iface-<id>-mac`.

use crate::naming::attachment_id;
use twill_cni::{Error, Result};
use twill_firewall::nft::{BaseChain, Batch, ChainType, CmpOp, Family, Hook, Nft, Policy, Rule};
use twill_kernel::MacAddr;

const TABLE: &str = "nat";
const PREROUTING: &str = "PREROUTING";
/// The reference's priority (`nft` names it `dstnat` in the bridge family): ahead of bridge filtering.
const PRIORITY: i32 = -300;

fn failed(op: &str) -> impl FnOnce(twill_firewall::Error) -> Error + '_ {
    move |e| Error::failed(format!("macspoofchk: {op}: {e}"))
}

fn names(container_id: &str, ifname: &str) -> (String, String, String) {
    let id = attachment_id(container_id, ifname);
    let chain = format!("cni-br-iface-{id}");
    let mac_chain = format!("{chain}-mac");
    let comment = format!("macspoofchk-{id}");
    (chain, mac_chain, comment)
}

fn setup_batch(
    chain: &str,
    mac_chain: &str,
    comment: &str,
    host_veth: &str,
    mac: MacAddr,
) -> twill_firewall::Result<Batch> {
    let f = Family::Bridge;
    let mut b = Batch::new();
    b.add_table(f, TABLE)
        .add_base_chain(
            f,
            TABLE,
            PREROUTING,
            &BaseChain {
                chain_type: ChainType::Filter,
                hook: Hook::Prerouting,
                priority: PRIORITY,
                policy: Some(Policy::Accept),
            },
        )
        .add_chain(f, TABLE, chain)
        .flush_chain(f, TABLE, chain)
        .add_chain(f, TABLE, mac_chain)
        .flush_chain(f, TABLE, mac_chain);
    b.add_rule(TABLE, chain, &Rule::new(f).jump(mac_chain).comment(comment))?;
    b.add_rule(
        TABLE,
        mac_chain,
        &Rule::new(f)
            .match_ether_saddr(CmpOp::Eq, mac.octets())?
            .return_()
            .comment(comment),
    )?;
    b.add_rule(
        TABLE,
        mac_chain,
        &Rule::new(f).drop_packet().comment(comment),
    )?;
    b.add_rule(
        TABLE,
        PREROUTING,
        &Rule::new(f)
            .match_iifname(CmpOp::Eq, host_veth)?
            .jump(chain)
            .comment(comment),
    )?;
    Ok(b)
}

/// Install the check for the port `host_veth` whose pod uses `mac`.
pub fn setup(container_id: &str, ifname: &str, host_veth: &str, mac: MacAddr) -> Result<()> {
    let (chain, mac_chain, comment) = names(container_id, ifname);
    let batch =
        setup_batch(&chain, &mac_chain, &comment, host_veth, mac).map_err(failed("build rules"))?;
    Nft::open()
        .and_then(|nft| nft.commit(&batch))
        .map_err(failed("install rules"))
}

/// Remove the check of the attachment; nothing there is success.
pub fn teardown(container_id: &str, ifname: &str) -> Result<()> {
    let (chain, mac_chain, comment) = names(container_id, ifname);
    let f = Family::Bridge;
    let nft = Nft::open().map_err(failed("open netlink socket"))?;
    // A missing table or chain lists as empty: nothing was ever installed.
    let jumps = nft
        .list_rules(f, TABLE, PREROUTING)
        .map_err(failed("list PREROUTING"))?;
    let chains = match nft.list_chains(f, Some(TABLE)) {
        Ok(c) => c,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(failed("list chains")(e)),
    };
    let mut batch = Batch::new();
    for r in jumps
        .iter()
        .filter(|r| r.comment.as_deref() == Some(comment.as_str()))
    {
        batch.delete_rule(f, TABLE, PREROUTING, r.handle);
    }
    let ours: Vec<&String> = [&chain, &mac_chain]
        .into_iter()
        .filter(|c| chains.iter().any(|i| &&i.name == c))
        .collect();
    // Flush both before deleting either: the per-port chain's jump references the `-mac` chain.
    for c in &ours {
        batch.flush_chain(f, TABLE, c);
    }
    for c in &ours {
        batch.delete_chain(f, TABLE, c);
    }
    nft.commit(&batch).map_err(failed("remove rules"))
}
