//! The nftables backend (default), programmed over netlink with twill-firewall's nf_tables client: one dump
//! per chain to read, one atomic batch to change, no `nft` process (5-6 ms per exec here).
//!
//! Per family (`ip` / `ip6`) a table `twill_portmap`: base chains `prerouting` and `output` (nat, dstnat)
//! jump to `hostports` for `fib daddr type local` — the reference iptables backend's `--dst-type LOCAL` —
//! and `postrouting` (nat, srcnat) masquerades packets carrying the mark bit. `hostports` holds the
//! per-attachment rules, each commented with its owner (see `owner`). When the last attachment goes, the
//! whole table goes, so an idle node has no portmap ruleset at all.

use crate::config::{MarkWith, Protocol};
use crate::owner::Tag;
use crate::rules::{Backend, Family, Listed, Locator, MappingRules, Plan};
use twill_cni::{Error, Result};
use twill_firewall::nft::{
    self as fw, priority, BaseChain, Batch, CmpOp, Hook, L4Proto, Nft, Rule,
};

pub const TABLE: &str = "twill_portmap";
const HOSTPORTS: &str = "hostports";
const PREROUTING: &str = "prerouting";
const OUTPUT: &str = "output";
const POSTROUTING: &str = "postrouting";
/// Comment on the shared rules: not an owner tag, so never deleted per attachment.
const BASE_COMMENT: &str = "twill-portmap";

fn masq_comment(bit: u32) -> String {
    format!("{BASE_COMMENT} masquerade mark bit {bit}")
}

fn nft_family(f: Family) -> fw::Family {
    match f {
        Family::V4 => fw::Family::Ip,
        Family::V6 => fw::Family::Ip6,
    }
}

fn l4(p: Protocol) -> L4Proto {
    match p {
        Protocol::Tcp => L4Proto::Tcp,
        Protocol::Udp => L4Proto::Udp,
        Protocol::Sctp => L4Proto::Sctp,
    }
}

fn err(e: twill_firewall::Error) -> Error {
    Error::failed(format!("nftables: {e}"))
}

/// What exists of the shared structure, as last listed.
#[derive(Debug, Default, Clone)]
struct Shared {
    prerouting_jump: bool,
    output_jump: bool,
    masq_bits: Vec<u32>,
}

#[derive(Default)]
pub struct Nftables {
    conn: Option<Nft>,
    shared: [Option<Shared>; 2],
}

fn idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

impl Nftables {
    fn conn(&mut self) -> Result<&Nft> {
        if self.conn.is_none() {
            self.conn = Some(Nft::open().map_err(err)?);
        }
        self.conn
            .as_ref()
            .ok_or_else(|| Error::failed("nftables: no socket"))
    }

    fn rules(&mut self, family: Family, chain: &str) -> Result<Vec<fw::RuleInfo>> {
        let fam = nft_family(family);
        self.conn()?.list_rules(fam, TABLE, chain).map_err(err)
    }

    fn read_shared(&mut self, family: Family) -> Result<Shared> {
        let has_base = |rules: &[fw::RuleInfo]| {
            rules
                .iter()
                .any(|r| r.comment.as_deref() == Some(BASE_COMMENT))
        };
        let pre = self.rules(family, PREROUTING)?;
        let out = self.rules(family, OUTPUT)?;
        let post = self.rules(family, POSTROUTING)?;
        let shared = Shared {
            prerouting_jump: has_base(&pre),
            output_jump: has_base(&out),
            masq_bits: (0..32)
                .filter(|b| {
                    post.iter()
                        .any(|r| r.comment.as_deref() == Some(masq_comment(*b).as_str()))
                })
                .collect(),
        };
        self.shared[idx(family)] = Some(shared.clone());
        Ok(shared)
    }
}

fn mapping_rules(fam: fw::Family, plan: &Plan, r: &MappingRules) -> Result<Vec<Rule>> {
    let base = || -> Result<Rule> {
        let rule = Rule::new(fam);
        let rule = match r.mapping.host_ip {
            Some(ip) => rule.match_daddr(CmpOp::Eq, ip).map_err(err)?,
            None => rule,
        };
        Ok(rule.match_dport(l4(r.mapping.protocol), CmpOp::Eq, r.mapping.host_port))
    };
    let mut out = Vec::new();
    if let MarkWith::Bit(bit) = plan.mark {
        for src in &r.mark_sources {
            let rule = match src {
                Some(s) => base()?.match_saddr(CmpOp::Eq, *s).map_err(err)?,
                None => base()?,
            };
            out.push(rule.set_mark_or(1 << bit).comment(r.mark_tag.comment()));
        }
    }
    out.push(
        base()?
            .dnat(r.container_ip, Some(r.mapping.container_port))
            .map_err(err)?
            .comment(r.dnat_tag.comment()),
    );
    Ok(out)
}

impl Backend for Nftables {
    fn list(&mut self, family: Family) -> Result<Vec<Listed>> {
        let rules = self.rules(family, HOSTPORTS)?;
        // Cheap (three more dumps) and keeps apply from adding the shared rules twice.
        self.read_shared(family)?;
        Ok(rules
            .into_iter()
            .filter_map(|r| {
                let tag = Tag::parse(r.comment.as_deref()?)?;
                Some(Listed {
                    tag,
                    locator: Locator::Nft {
                        chain: r.chain,
                        handle: r.handle,
                    },
                })
            })
            .collect())
    }

    fn apply(
        &mut self,
        family: Family,
        delete: &[Listed],
        add: Option<&Plan>,
        teardown: bool,
    ) -> Result<()> {
        let fam = nft_family(family);
        let shared = match self.shared[idx(family)].take() {
            Some(s) => s,
            None => self.read_shared(family)?,
        };
        let mut batch = Batch::new();
        if teardown {
            batch.delete_table(fam, TABLE);
        } else {
            for l in delete {
                if let Locator::Nft { chain, handle } = &l.locator {
                    batch.delete_rule(fam, TABLE, chain, *handle);
                }
            }
        }
        if let Some(plan) = add {
            // The structure is created and deleted whole, in one batch, under the portmap lock: both jumps
            // present means every chain exists. Re-adding an existing chain is not free — the kernel
            // records it as a chain update whose release waits for an RCU grace period, and closing our
            // socket would then wait for it (5-20 ms) — so only a missing structure is added.
            let exists = !teardown && shared.prerouting_jump && shared.output_jump;
            if !exists {
                batch
                    .add_table(fam, TABLE)
                    .add_chain(fam, TABLE, HOSTPORTS)
                    .add_base_chain(
                        fam,
                        TABLE,
                        PREROUTING,
                        &BaseChain::nat(Hook::Prerouting, priority::DSTNAT),
                    )
                    .add_base_chain(
                        fam,
                        TABLE,
                        OUTPUT,
                        &BaseChain::nat(Hook::Output, priority::DSTNAT),
                    )
                    .add_base_chain(
                        fam,
                        TABLE,
                        POSTROUTING,
                        &BaseChain::nat(Hook::Postrouting, priority::SRCNAT),
                    );
            }
            let jump = || {
                Rule::new(fam)
                    .match_fib_daddr_local()
                    .jump(HOSTPORTS)
                    .comment(BASE_COMMENT)
            };
            if teardown || !shared.prerouting_jump {
                batch.add_rule(TABLE, PREROUTING, &jump()).map_err(err)?;
            }
            if teardown || !shared.output_jump {
                batch.add_rule(TABLE, OUTPUT, &jump()).map_err(err)?;
            }
            if let (true, MarkWith::Bit(bit)) = (plan.masquerade, &plan.mark) {
                if teardown || !shared.masq_bits.contains(bit) {
                    let rule = Rule::new(fam)
                        .match_mark(CmpOp::Eq, 1 << bit, 1 << bit)
                        .masquerade()
                        .comment(masq_comment(*bit));
                    batch.add_rule(TABLE, POSTROUTING, &rule).map_err(err)?;
                }
            }
            for r in &plan.rules {
                for rule in mapping_rules(fam, plan, r)? {
                    batch.add_rule(TABLE, HOSTPORTS, &rule).map_err(err)?;
                }
            }
        }
        self.conn()?.commit(&batch).map_err(err)
    }
}
