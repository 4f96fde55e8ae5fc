//! A native nf_tables client: batched transactions and dumps over `NETLINK_NETFILTER`, no `nft`
//! process. Exec'ing `nft` costs 5–6 ms per call, more than the bridge plugin's whole ADD budget.
//!
//! ```no_run
//! use twill_firewall::nft::{Batch, BaseChain, ChainType, CmpOp, Family, Hook, Nft, Rule};
//! # fn main() -> twill_firewall::Result<()> {
//! let mut batch = Batch::new();
//! batch
//!     .add_table(Family::Inet, "example")
//!     .add_base_chain(Family::Inet, "example", "post", &BaseChain::nat(Hook::Postrouting, 100))
//!     .add_rule("example", "post", &Rule::new(Family::Inet)
//!         .match_saddr(CmpOp::Eq, "10.0.0.5".parse::<std::net::IpAddr>().unwrap())?
//!         .masquerade()
//!         .comment("owner-id"))?;
//! let nft = Nft::open()?;
//! nft.commit(&batch)?;
//! for rule in nft.list_rules(Family::Inet, "example", "post")? {
//!     println!("{} {:?}", rule.handle, rule.comment);
//! }
//! # Ok(()) }
//! ```

mod attr;
mod batch;
mod conn;
mod expr;
mod park;
mod rule;
mod sys;

use std::fmt;

pub use batch::Batch;
pub use batch::MAX_COMMENT_LEN;
pub use conn::{commit, ChainInfo, Nft, RuleInfo, TableInfo};
pub use expr::{CmpOp, Expr, IpFamily, MetaKey, NatKind, PayloadBase, Reg, Verdict};
pub use park::close_parked_sockets;
pub use rule::{ip_bytes, L4Proto, Rule};

/// Address family of a table (`nft add table <family> <name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Ip,
    Ip6,
    /// Frames crossing a Linux bridge (`nft add table bridge ...`).
    Bridge,
}

impl Family {
    pub(crate) fn nfproto(self) -> u8 {
        match self {
            Family::Inet => sys::NFPROTO_INET,
            Family::Ip => sys::NFPROTO_IPV4,
            Family::Ip6 => sys::NFPROTO_IPV6,
            Family::Bridge => sys::NFPROTO_BRIDGE,
        }
    }

    pub(crate) fn from_nfproto(v: u8) -> Option<Family> {
        match v {
            sys::NFPROTO_INET => Some(Family::Inet),
            sys::NFPROTO_IPV4 => Some(Family::Ip),
            sys::NFPROTO_IPV6 => Some(Family::Ip6),
            sys::NFPROTO_BRIDGE => Some(Family::Bridge),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Bridge => "bridge",
        })
    }
}

/// Netfilter hook a base chain attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub(crate) fn number(self) -> u32 {
        match self {
            Hook::Prerouting => sys::NF_INET_PRE_ROUTING,
            Hook::Input => sys::NF_INET_LOCAL_IN,
            Hook::Forward => sys::NF_INET_FORWARD,
            Hook::Output => sys::NF_INET_LOCAL_OUT,
            Hook::Postrouting => sys::NF_INET_POST_ROUTING,
        }
    }

    pub(crate) fn from_number(n: u32) -> Option<Hook> {
        [
            Hook::Prerouting,
            Hook::Input,
            Hook::Forward,
            Hook::Output,
            Hook::Postrouting,
        ]
        .into_iter()
        .find(|h| h.number() == n)
    }
}

/// Base chain type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
    Route,
}

impl ChainType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
}

/// Well-known priorities (`nft` names them): `dstnat` -100, `filter` 0, `srcnat` 100.
pub mod priority {
    pub const DSTNAT: i32 = -100;
    pub const FILTER: i32 = 0;
    pub const SRCNAT: i32 = 100;
}

/// Chain policy of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

/// What makes a chain a base chain: type, hook, priority and policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
    /// `None` leaves the kernel default (accept).
    pub policy: Option<Policy>,
}

impl BaseChain {
    /// `type nat hook <hook> priority <priority>`.
    pub fn nat(hook: Hook, priority: i32) -> BaseChain {
        BaseChain {
            chain_type: ChainType::Nat,
            hook,
            priority,
            policy: None,
        }
    }

    /// `type filter hook <hook> priority <priority>`.
    pub fn filter(hook: Hook, priority: i32) -> BaseChain {
        BaseChain {
            chain_type: ChainType::Filter,
            hook,
            priority,
            policy: None,
        }
    }
}
