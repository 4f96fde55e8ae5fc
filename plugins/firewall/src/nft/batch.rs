//! A transaction: messages between `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END`, which the
//! kernel applies all or nothing under its commit mutex. That atomicity is what makes concurrent
//! plugin processes safe: "add table/chain" without `NLM_F_EXCL` succeeds whether or not another
//! process created the object first.

use super::attr::AttrWriter;
use super::rule::Rule;
use super::sys::*;
use super::{BaseChain, Family, Policy};
use crate::error::{Error, Result};

/// Largest comment `nft` accepts (`NFT_USERDATA_MAXLEN` is 256, but the `nft` parser stops at
/// 128 and we want every rule to be re-creatable from `nft list` output).
pub const MAX_COMMENT_LEN: usize = 128;

#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) kind: u16,
    pub(crate) flags: u16,
    pub(crate) family: u8,
    pub(crate) attrs: Vec<u8>,
    /// What this message does, for error messages ("add rule to inet t/c").
    pub(crate) what: String,
}

impl Message {
    /// Whether committing this frees kernel objects after an RCU grace period.
    pub(crate) fn deletes(&self) -> bool {
        matches!(
            self.kind,
            NFT_MSG_DELRULE | NFT_MSG_DELCHAIN | NFT_MSG_DELTABLE
        )
    }
}

/// A list of nf_tables changes committed atomically by [`super::Nft::commit`].
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub(crate) messages: Vec<Message>,
}

/// A chain-wide operation: its message type, flags, the attributes naming table and chain (rule
/// messages name them with NFTA_RULE_*), and the verb errors use.
struct ChainOp {
    kind: u16,
    flags: u16,
    table_attr: u16,
    chain_attr: u16,
    verb: &'static str,
}

const ADD_CHAIN: ChainOp = ChainOp {
    kind: NFT_MSG_NEWCHAIN,
    flags: NLM_F_CREATE,
    table_attr: NFTA_CHAIN_TABLE,
    chain_attr: NFTA_CHAIN_NAME,
    verb: "add chain",
};
/// `nft flush chain`: deleting rules by chain alone removes them all.
const FLUSH_CHAIN: ChainOp = ChainOp {
    kind: NFT_MSG_DELRULE,
    flags: 0,
    table_attr: NFTA_RULE_TABLE,
    chain_attr: NFTA_RULE_CHAIN,
    verb: "flush chain",
};
const DELETE_CHAIN: ChainOp = ChainOp {
    kind: NFT_MSG_DELCHAIN,
    flags: 0,
    table_attr: NFTA_CHAIN_TABLE,
    chain_attr: NFTA_CHAIN_NAME,
    verb: "delete chain",
};

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    fn push(&mut self, kind: u16, flags: u16, family: Family, w: AttrWriter, what: String) {
        self.messages.push(Message {
            kind,
            flags,
            family: family.nfproto(),
            attrs: w.buf,
            what,
        });
    }

    /// Adds the table unless it exists (`nft add table`).
    pub fn add_table(&mut self, family: Family, table: &str) -> &mut Batch {
        let mut w = AttrWriter::new();
        w.str(NFTA_TABLE_NAME, table).be32(NFTA_TABLE_FLAGS, 0);
        self.push(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            family,
            w,
            format!("add table {family} {table}"),
        );
        self
    }

    /// Deletes the table and everything in it; fails with ENOENT when it does not exist.
    pub fn delete_table(&mut self, family: Family, table: &str) -> &mut Batch {
        let mut w = AttrWriter::new();
        w.str(NFTA_TABLE_NAME, table);
        self.push(
            NFT_MSG_DELTABLE,
            0,
            family,
            w,
            format!("delete table {family} {table}"),
        );
        self
    }

    /// Adds a base chain unless it exists (`nft add chain ... { type .. hook .. priority ..; }`).
    /// An existing chain with the same hook and priority is left as is.
    pub fn add_base_chain(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        base: &BaseChain,
    ) -> &mut Batch {
        let mut w = AttrWriter::new();
        w.str(NFTA_CHAIN_TABLE, table)
            .str(NFTA_CHAIN_NAME, chain)
            .nested(NFTA_CHAIN_HOOK, |w| {
                w.be32(NFTA_HOOK_HOOKNUM, base.hook.number())
                    .be32(NFTA_HOOK_PRIORITY, base.priority as u32);
            });
        if let Some(policy) = base.policy {
            let code = match policy {
                Policy::Accept => NF_ACCEPT,
                Policy::Drop => NF_DROP,
            };
            w.be32(NFTA_CHAIN_POLICY, code as u32);
        }
        w.str(NFTA_CHAIN_TYPE, base.chain_type.name());
        self.push(
            ADD_CHAIN.kind,
            ADD_CHAIN.flags,
            family,
            w,
            format!("{} {family} {table} {chain}", ADD_CHAIN.verb),
        );
        self
    }

    /// Adds a regular chain (target of jump/goto) unless it exists.
    pub fn add_chain(&mut self, family: Family, table: &str, chain: &str) -> &mut Batch {
        self.chain_op(&ADD_CHAIN, family, table, chain)
    }

    /// Removes every rule of the chain (`nft flush chain`); ENOENT when the chain is missing.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) -> &mut Batch {
        self.chain_op(&FLUSH_CHAIN, family, table, chain)
    }

    /// Deletes an empty, unreferenced chain (ENOENT when missing, EBUSY when still used).
    pub fn delete_chain(&mut self, family: Family, table: &str, chain: &str) -> &mut Batch {
        self.chain_op(&DELETE_CHAIN, family, table, chain)
    }

    /// A message that names one chain and carries nothing else.
    fn chain_op(&mut self, op: &ChainOp, family: Family, table: &str, chain: &str) -> &mut Batch {
        let mut w = AttrWriter::new();
        w.str(op.table_attr, table).str(op.chain_attr, chain);
        self.push(
            op.kind,
            op.flags,
            family,
            w,
            format!("{} {family} {table} {chain}", op.verb),
        );
        self
    }

    fn rule_message(
        &mut self,
        table: &str,
        chain: &str,
        rule: &Rule,
        flags: u16,
        verb: &str,
    ) -> Result<&mut Batch> {
        let family = rule.family();
        let mut w = AttrWriter::new();
        w.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
        w.nested(NFTA_RULE_EXPRESSIONS, |w| {
            for e in rule.exprs() {
                w.nested(NFTA_LIST_ELEM, |w| {
                    w.str(NFTA_EXPR_NAME, e.name());
                    w.nested_raw(NFTA_EXPR_DATA, e.data());
                });
            }
        });
        if let Some(comment) = rule.comment_text() {
            w.bytes(NFTA_RULE_USERDATA, &comment_userdata(comment)?);
        }
        self.push(
            NFT_MSG_NEWRULE,
            flags,
            family,
            w,
            format!("{verb} rule to {family} {table} {chain}"),
        );
        Ok(self)
    }

    /// Appends a rule at the end of the chain (`nft add rule`).
    pub fn add_rule(&mut self, table: &str, chain: &str, rule: &Rule) -> Result<&mut Batch> {
        self.rule_message(table, chain, rule, NLM_F_CREATE | NLM_F_APPEND, "add")
    }

    /// Prepends a rule at the start of the chain (`nft insert rule`).
    pub fn insert_rule(&mut self, table: &str, chain: &str, rule: &Rule) -> Result<&mut Batch> {
        self.rule_message(table, chain, rule, NLM_F_CREATE, "insert")
    }

    /// Deletes the rule with `handle` (from [`super::Nft::list_rules`]); ENOENT when it is gone.
    pub fn delete_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        handle: u64,
    ) -> &mut Batch {
        let mut w = AttrWriter::new();
        w.str(NFTA_RULE_TABLE, table)
            .str(NFTA_RULE_CHAIN, chain)
            .be64(NFTA_RULE_HANDLE, handle);
        self.push(
            NFT_MSG_DELRULE,
            0,
            family,
            w,
            format!("delete rule handle {handle} from {family} {table} {chain}"),
        );
        self
    }
}

/// libnftnl's userdata TLVs holding a comment: type `NFTNL_UDATA_RULE_COMMENT`, length including
/// the terminating NUL, the text. `nft list` prints it as `comment "<text>"`.
fn comment_userdata(comment: &str) -> Result<Vec<u8>> {
    if comment.len() > MAX_COMMENT_LEN || comment.contains('\0') || comment.contains('"') {
        return Err(Error::Invalid(format!(
            "rule comment {comment:?} must be at most {MAX_COMMENT_LEN} bytes without NUL or '\"'"
        )));
    }
    let mut v = Vec::with_capacity(comment.len() + 3);
    v.push(NFTNL_UDATA_RULE_COMMENT);
    v.push((comment.len() + 1) as u8);
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    Ok(v)
}

/// The comment inside rule userdata, if any.
pub(crate) fn comment_from_userdata(mut data: &[u8]) -> Option<String> {
    while data.len() >= 2 {
        let (kind, len) = (data[0], data[1] as usize);
        let value = data.get(2..2 + len)?;
        if kind == NFTNL_UDATA_RULE_COMMENT {
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        data = &data[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_userdata_round_trips() {
        let ud = comment_userdata("abc-123").unwrap();
        assert_eq!(ud[0], NFTNL_UDATA_RULE_COMMENT);
        assert_eq!(ud[1], 8);
        assert_eq!(comment_from_userdata(&ud).as_deref(), Some("abc-123"));
    }

    #[test]
    fn overlong_comment_is_rejected() {
        assert!(comment_userdata(&"x".repeat(MAX_COMMENT_LEN + 1)).is_err());
        assert!(comment_userdata("quote\"inside").is_err());
    }
}
