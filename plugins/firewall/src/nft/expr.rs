//! nf_tables expressions: the kernel's rule "bytecode". Each builder emits exactly the expression
//! `nft` itself emits for the same statement, so `nft list ruleset` renders our rules as the
//! intended nft syntax (checked by the crate's tests).

use super::attr::{self, AttrWriter};
use super::sys::*;
use crate::error::{Error, Result};

/// A data register. `R1`..`R4` are the 16-byte registers `nft` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(pub u32);

impl Reg {
    pub const VERDICT: Reg = Reg(NFT_REG_VERDICT);
    pub const R1: Reg = Reg(NFT_REG_1);
    pub const R2: Reg = Reg(NFT_REG_2);
    pub const R3: Reg = Reg(3);
    pub const R4: Reg = Reg(4);
}

/// Comparison operator of a `cmp` expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
}

impl CmpOp {
    fn code(self) -> u32 {
        match self {
            CmpOp::Eq => NFT_CMP_EQ,
            CmpOp::Neq => NFT_CMP_NEQ,
        }
    }
}

/// Packet metadata keys (`meta <key>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// `meta mark`, a host-endian u32.
    Mark,
    /// `iifname`, 16 bytes (IFNAMSIZ), NUL padded.
    IifName,
    /// `oifname`, 16 bytes (IFNAMSIZ), NUL padded.
    OifName,
    /// `meta nfproto`, one byte (`NFPROTO_IPV4` / `NFPROTO_IPV6`).
    NfProto,
    /// `meta l4proto`, one byte (IP protocol number).
    L4Proto,
}

impl MetaKey {
    fn code(self) -> u32 {
        match self {
            MetaKey::Mark => NFT_META_MARK,
            MetaKey::IifName => NFT_META_IIFNAME,
            MetaKey::OifName => NFT_META_OIFNAME,
            MetaKey::NfProto => NFT_META_NFPROTO,
            MetaKey::L4Proto => NFT_META_L4PROTO,
        }
    }
}

/// Which header a `payload` expression reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    LinkLayer,
    Network,
    Transport,
}

impl PayloadBase {
    fn code(self) -> u32 {
        match self {
            PayloadBase::LinkLayer => NFT_PAYLOAD_LL_HEADER,
            PayloadBase::Network => NFT_PAYLOAD_NETWORK_HEADER,
            PayloadBase::Transport => NFT_PAYLOAD_TRANSPORT_HEADER,
        }
    }
}

/// A verdict: what an `immediate` to the verdict register does to the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Continue,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
            Verdict::Continue => NFT_CONTINUE,
            Verdict::Return => NFT_RETURN,
            Verdict::Jump(_) => NFT_JUMP,
            Verdict::Goto(_) => NFT_GOTO,
        }
    }
}

/// The IP family a NAT statement or an address match is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: &std::net::IpAddr) -> IpFamily {
        match addr {
            std::net::IpAddr::V4(_) => IpFamily::V4,
            std::net::IpAddr::V6(_) => IpFamily::V6,
        }
    }

    pub(crate) fn nfproto(self) -> u8 {
        match self {
            IpFamily::V4 => NFPROTO_IPV4,
            IpFamily::V6 => NFPROTO_IPV6,
        }
    }
}

/// The kind of a `nat` expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    Snat,
    Dnat,
}

/// One expression, encoded: its name (`"cmp"`, `"payload"`...) and the attributes inside its
/// `NFTA_EXPR_DATA`. Expressions listed from the kernel use the same type, so callers can inspect
/// them with [`Expr::cmp_data`], [`Expr::verdict`], ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    name: String,
    data: Vec<u8>,
}

impl Expr {
    fn build(name: &str, f: impl FnOnce(&mut AttrWriter)) -> Expr {
        let mut w = AttrWriter::new();
        f(&mut w);
        Expr {
            name: name.to_string(),
            data: w.buf,
        }
    }

    pub(crate) fn from_raw(name: String, data: Vec<u8>) -> Expr {
        Expr { name, data }
    }

    /// The expression type name (`"meta"`, `"cmp"`, `"immediate"`...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The encoded attributes inside `NFTA_EXPR_DATA`.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// `meta <key>` loaded into `dreg`.
    pub fn meta_load(key: MetaKey, dreg: Reg) -> Expr {
        Expr::build("meta", |w| {
            w.be32(NFTA_META_KEY, key.code())
                .be32(NFTA_META_DREG, dreg.0);
        })
    }

    /// `meta <key> set` from `sreg` (only `Mark` is settable among our keys).
    pub fn meta_set(key: MetaKey, sreg: Reg) -> Expr {
        Expr::build("meta", |w| {
            w.be32(NFTA_META_KEY, key.code())
                .be32(NFTA_META_SREG, sreg.0);
        })
    }

    /// Loads the connection-tracking state bits (`ct state`) into `dreg`, a host-endian u32.
    pub fn ct_state_load(dreg: Reg) -> Expr {
        Expr::build("ct", |w| {
            w.be32(NFTA_CT_DREG, dreg.0).be32(NFTA_CT_KEY, NFT_CT_STATE);
        })
    }

    /// Loads `len` bytes at `offset` of the `base` header into `dreg`.
    pub fn payload(base: PayloadBase, offset: u32, len: u32, dreg: Reg) -> Expr {
        Expr::build("payload", |w| {
            w.be32(NFTA_PAYLOAD_DREG, dreg.0)
                .be32(NFTA_PAYLOAD_BASE, base.code())
                .be32(NFTA_PAYLOAD_OFFSET, offset)
                .be32(NFTA_PAYLOAD_LEN, len);
        })
    }

    /// Compares `sreg` with `data`; the rule stops matching when the comparison is false.
    pub fn cmp(op: CmpOp, sreg: Reg, data: &[u8]) -> Expr {
        Expr::build("cmp", |w| {
            w.be32(NFTA_CMP_SREG, sreg.0)
                .be32(NFTA_CMP_OP, op.code())
                .nested(NFTA_CMP_DATA, |w| {
                    w.bytes(NFTA_DATA_VALUE, data);
                });
        })
    }

    /// `dreg = (sreg & mask) ^ xor`; `mask` and `xor` must have the same length.
    pub fn bitwise(sreg: Reg, dreg: Reg, mask: &[u8], xor: &[u8]) -> Expr {
        Expr::build("bitwise", |w| {
            w.be32(NFTA_BITWISE_SREG, sreg.0)
                .be32(NFTA_BITWISE_DREG, dreg.0)
                .be32(NFTA_BITWISE_LEN, mask.len() as u32)
                .nested(NFTA_BITWISE_MASK, |w| {
                    w.bytes(NFTA_DATA_VALUE, mask);
                })
                .nested(NFTA_BITWISE_XOR, |w| {
                    w.bytes(NFTA_DATA_VALUE, xor);
                });
        })
    }

    /// Loads constant `data` into `dreg`.
    pub fn immediate_data(dreg: Reg, data: &[u8]) -> Expr {
        Expr::build("immediate", |w| {
            w.be32(NFTA_IMMEDIATE_DREG, dreg.0)
                .nested(NFTA_IMMEDIATE_DATA, |w| {
                    w.bytes(NFTA_DATA_VALUE, data);
                });
        })
    }

    /// A verdict statement (`accept`, `return`, `jump <chain>`, `goto <chain>`...).
    pub fn verdict(verdict: &Verdict) -> Expr {
        Expr::build("immediate", |w| {
            w.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
                .nested(NFTA_IMMEDIATE_DATA, |w| {
                    w.nested(NFTA_DATA_VERDICT, |w| {
                        w.be32(NFTA_VERDICT_CODE, verdict.code() as u32);
                        if let Verdict::Jump(chain) | Verdict::Goto(chain) = verdict {
                            w.str(NFTA_VERDICT_CHAIN, chain);
                        }
                    });
                });
        })
    }

    /// `fib daddr type` into `dreg` (a host-endian u32 route type, `RTN_LOCAL` = 2 for local).
    pub fn fib_daddr_type(dreg: Reg) -> Expr {
        Expr::build("fib", |w| {
            w.be32(NFTA_FIB_DREG, dreg.0)
                .be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
                .be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
        })
    }

    /// A `nat` expression taking the address from `addr_reg` and, when given, the port from
    /// `port_reg`. `flags` are `NF_NAT_RANGE_*` bits beyond the ones the kernel derives itself.
    pub fn nat(
        kind: NatKind,
        family: IpFamily,
        addr_reg: Option<Reg>,
        port_reg: Option<Reg>,
        flags: u32,
    ) -> Expr {
        Expr::build("nat", |w| {
            let kind = match kind {
                NatKind::Snat => NFT_NAT_SNAT,
                NatKind::Dnat => NFT_NAT_DNAT,
            };
            w.be32(NFTA_NAT_TYPE, kind)
                .be32(NFTA_NAT_FAMILY, u32::from(family.nfproto()));
            if let Some(r) = addr_reg {
                w.be32(NFTA_NAT_REG_ADDR_MIN, r.0);
            }
            if let Some(r) = port_reg {
                w.be32(NFTA_NAT_REG_PROTO_MIN, r.0);
            }
            if flags != 0 {
                w.be32(NFTA_NAT_FLAGS, flags);
            }
        })
    }

    /// `masquerade`, optionally with `NF_NAT_RANGE_*` flags (e.g. fully-random).
    pub fn masquerade(flags: u32) -> Expr {
        Expr::build("masq", |w| {
            if flags != 0 {
                w.be32(NFTA_MASQ_FLAGS, flags);
            }
        })
    }

    /// `counter` (packets and bytes, starting at zero).
    pub fn counter() -> Expr {
        Expr::build("counter", |_| {})
    }

    fn attrs(&self) -> Vec<attr::Attr<'_>> {
        attr::parse(&self.data).unwrap_or_default()
    }

    /// For a `cmp`: the compared data.
    pub fn cmp_data(&self) -> Option<Vec<u8>> {
        if self.name != "cmp" {
            return None;
        }
        let data = attr::find(&self.attrs(), NFTA_CMP_DATA)?;
        let value = attr::find(&data.nested().ok()?, NFTA_DATA_VALUE)?;
        Some(value.value.to_vec())
    }

    /// For a `cmp`: the operator.
    pub fn cmp_op(&self) -> Option<CmpOp> {
        if self.name != "cmp" {
            return None;
        }
        match attr::find(&self.attrs(), NFTA_CMP_OP)?.be32().ok()? {
            NFT_CMP_EQ => Some(CmpOp::Eq),
            NFT_CMP_NEQ => Some(CmpOp::Neq),
            _ => None,
        }
    }

    /// For an `immediate` to the verdict register: the verdict.
    pub fn verdict_of(&self) -> Option<Verdict> {
        if self.name != "immediate" {
            return None;
        }
        let data = attr::find(&self.attrs(), NFTA_IMMEDIATE_DATA)?;
        let verdict = attr::find(&data.nested().ok()?, NFTA_DATA_VERDICT)?;
        let inner = verdict.nested().ok()?;
        let code = attr::find(&inner, NFTA_VERDICT_CODE)?.be32().ok()? as i32;
        let chain = attr::find(&inner, NFTA_VERDICT_CHAIN).map(|a| a.string());
        match (code, chain) {
            (NF_ACCEPT, _) => Some(Verdict::Accept),
            (NF_DROP, _) => Some(Verdict::Drop),
            (NFT_CONTINUE, _) => Some(Verdict::Continue),
            (NFT_RETURN, _) => Some(Verdict::Return),
            (NFT_JUMP, Some(c)) => Some(Verdict::Jump(c)),
            (NFT_GOTO, Some(c)) => Some(Verdict::Goto(c)),
            _ => None,
        }
    }

    /// For an `immediate` to a data register: the loaded data.
    pub fn immediate_value(&self) -> Option<Vec<u8>> {
        if self.name != "immediate" {
            return None;
        }
        let data = attr::find(&self.attrs(), NFTA_IMMEDIATE_DATA)?;
        let value = attr::find(&data.nested().ok()?, NFTA_DATA_VALUE)?;
        Some(value.value.to_vec())
    }
}

/// NUL-padded interface name as `iifname`/`oifname` compare it.
pub(crate) fn ifname_bytes(name: &str) -> Result<[u8; IFNAMSIZ]> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(Error::Invalid(format!(
            "interface name {name:?} must be 1 to {} bytes",
            IFNAMSIZ - 1
        )));
    }
    let mut b = [0u8; IFNAMSIZ];
    b[..name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}
