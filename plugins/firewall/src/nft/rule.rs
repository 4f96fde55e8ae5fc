//! A rule under construction: matches and statements in `nft` order, plus an optional comment.
//!
//! The builder adds the same protocol dependencies `nft` adds (`meta nfproto ipv4` before
//! `ip saddr` in an `inet` table, `meta l4proto tcp` before `tcp dport`), so `nft list` prints
//! the rule in its short form (`ip saddr 10.0.0.5 tcp dport 80 ...`).

use std::net::IpAddr;

use ipnet::IpNet;

use super::expr::{
    ifname_bytes, CmpOp, Expr, IpFamily, MetaKey, NatKind, PayloadBase, Reg, Verdict,
};
use super::sys::{
    NF_CT_STATE_ESTABLISHED, NF_CT_STATE_RELATED, NF_NAT_RANGE_PROTO_RANDOM_FULLY, RTN_LOCAL,
};
use super::Family;
use crate::error::{Error, Result};

/// Transport protocols a port match can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Proto {
    Tcp,
    Udp,
    Sctp,
}

impl L4Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => libc::IPPROTO_TCP as u8,
            L4Proto::Udp => libc::IPPROTO_UDP as u8,
            L4Proto::Sctp => libc::IPPROTO_SCTP as u8,
        }
    }
}

/// A rule for a table of `family`: build it with the `match_*` and statement methods, then add it
/// with [`super::Batch::add_rule`] / [`super::Batch::insert_rule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    family: Family,
    exprs: Vec<Expr>,
    comment: Option<String>,
    nfproto_dep: Option<IpFamily>,
    l4proto_dep: Option<u8>,
}

impl Rule {
    pub fn new(family: Family) -> Rule {
        Rule {
            family,
            exprs: Vec::new(),
            comment: None,
            nfproto_dep: None,
            l4proto_dep: None,
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn exprs(&self) -> &[Expr] {
        &self.exprs
    }

    pub fn comment_text(&self) -> Option<&str> {
        self.comment.as_deref()
    }

    /// Sets the rule comment (stored as libnftnl userdata, shown by `nft list`). At most 128
    /// bytes, the limit `nft` itself enforces.
    pub fn comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }

    /// Appends a raw expression.
    pub fn expr(mut self, e: Expr) -> Rule {
        self.exprs.push(e);
        self
    }

    /// `meta nfproto ipv4|ipv6`.
    pub fn match_nfproto(mut self, family: IpFamily) -> Rule {
        self.exprs.push(Expr::meta_load(MetaKey::NfProto, Reg::R1));
        self.exprs
            .push(Expr::cmp(CmpOp::Eq, Reg::R1, &[family.nfproto()]));
        self.nfproto_dep = Some(family);
        self
    }

    /// `meta l4proto <proto>`.
    pub fn match_l4proto(mut self, proto: u8) -> Rule {
        self.exprs.push(Expr::meta_load(MetaKey::L4Proto, Reg::R1));
        self.exprs.push(Expr::cmp(CmpOp::Eq, Reg::R1, &[proto]));
        self.l4proto_dep = Some(proto);
        self
    }

    fn need_nfproto(self, family: IpFamily) -> Result<Rule> {
        match (self.family, family) {
            (Family::Ip, IpFamily::V6) | (Family::Ip6, IpFamily::V4) | (Family::Bridge, _) => {
                Err(Error::Invalid(format!(
                    "cannot match an {family:?} address in a {} table",
                    self.family
                )))
            }
            (Family::Inet, _) if self.nfproto_dep != Some(family) => Ok(self.match_nfproto(family)),
            _ => Ok(self),
        }
    }

    fn match_addr(self, offset_v4: u32, offset_v6: u32, op: CmpOp, net: IpNet) -> Result<Rule> {
        let family = IpFamily::of(&net.addr());
        let mut rule = self.need_nfproto(family)?;
        let (offset, len) = match family {
            IpFamily::V4 => (offset_v4, 4),
            IpFamily::V6 => (offset_v6, 16),
        };
        rule.exprs
            .push(Expr::payload(PayloadBase::Network, offset, len, Reg::R1));
        if net.prefix_len() < net.max_prefix_len() {
            let mask = ip_bytes(&net.netmask());
            rule.exprs
                .push(Expr::bitwise(Reg::R1, Reg::R1, &mask, &vec![0; mask.len()]));
        }
        rule.exprs
            .push(Expr::cmp(op, Reg::R1, &ip_bytes(&net.network())));
        Ok(rule)
    }

    /// `ip saddr` / `ip6 saddr` `[!=] <addr or prefix>`; an `IpAddr` converts to a full-length
    /// prefix (`IpNet::from(addr)`).
    pub fn match_saddr(self, op: CmpOp, net: impl Into<IpNet>) -> Result<Rule> {
        self.match_addr(12, 8, op, net.into())
    }

    /// `ip daddr` / `ip6 daddr` `[!=] <addr or prefix>`.
    pub fn match_daddr(self, op: CmpOp, net: impl Into<IpNet>) -> Result<Rule> {
        self.match_addr(16, 24, op, net.into())
    }

    fn match_port(mut self, offset: u32, proto: L4Proto, op: CmpOp, port: u16) -> Rule {
        if self.l4proto_dep != Some(proto.number()) {
            self = self.match_l4proto(proto.number());
        }
        self.exprs
            .push(Expr::payload(PayloadBase::Transport, offset, 2, Reg::R1));
        self.exprs.push(Expr::cmp(op, Reg::R1, &port.to_be_bytes()));
        self
    }

    /// `tcp|udp|sctp dport [!=] <port>`.
    pub fn match_dport(self, proto: L4Proto, op: CmpOp, port: u16) -> Rule {
        self.match_port(2, proto, op, port)
    }

    /// `th dport [!=] <port>`: the destination port of whatever transport header follows,
    /// without a protocol match (combine with [`Rule::match_l4proto`] when it matters).
    pub fn match_th_dport(mut self, op: CmpOp, port: u16) -> Rule {
        self.exprs
            .push(Expr::payload(PayloadBase::Transport, 2, 2, Reg::R1));
        self.exprs.push(Expr::cmp(op, Reg::R1, &port.to_be_bytes()));
        self
    }

    /// `tcp|udp|sctp sport [!=] <port>`.
    pub fn match_sport(self, proto: L4Proto, op: CmpOp, port: u16) -> Rule {
        self.match_port(0, proto, op, port)
    }

    /// `iifname [!=] "<name>"`.
    pub fn match_iifname(mut self, op: CmpOp, name: &str) -> Result<Rule> {
        let b = ifname_bytes(name)?;
        self.exprs.push(Expr::meta_load(MetaKey::IifName, Reg::R1));
        self.exprs.push(Expr::cmp(op, Reg::R1, &b));
        Ok(self)
    }

    /// `oifname [!=] "<name>"`.
    pub fn match_oifname(mut self, op: CmpOp, name: &str) -> Result<Rule> {
        let b = ifname_bytes(name)?;
        self.exprs.push(Expr::meta_load(MetaKey::OifName, Reg::R1));
        self.exprs.push(Expr::cmp(op, Reg::R1, &b));
        Ok(self)
    }

    /// `ether saddr <mac>` in a `bridge` table (the frame's source MAC; `nft` adds no dependency
    /// there because every frame on a bridge port is Ethernet).
    pub fn match_ether_saddr(mut self, op: CmpOp, mac: [u8; 6]) -> Result<Rule> {
        if self.family != Family::Bridge {
            return Err(Error::Invalid(format!(
                "ether saddr is matched in bridge tables, not in a {} table",
                self.family
            )));
        }
        self.exprs
            .push(Expr::payload(PayloadBase::LinkLayer, 6, 6, Reg::R1));
        self.exprs.push(Expr::cmp(op, Reg::R1, &mac));
        Ok(self)
    }

    /// `meta mark & <mask> [!=] <value>` (`meta mark <value>` when `mask` is all ones).
    pub fn match_mark(mut self, op: CmpOp, mask: u32, value: u32) -> Rule {
        self.exprs.push(Expr::meta_load(MetaKey::Mark, Reg::R1));
        if mask != u32::MAX {
            self.exprs.push(Expr::bitwise(
                Reg::R1,
                Reg::R1,
                &mask.to_ne_bytes(),
                &0u32.to_ne_bytes(),
            ));
        }
        self.exprs
            .push(Expr::cmp(op, Reg::R1, &(value & mask).to_ne_bytes()));
        self
    }

    /// `ct state established,related`: the packet belongs to (or is related to) a connection
    /// already seen in both directions.
    pub fn match_ct_established_related(mut self) -> Rule {
        let bits = NF_CT_STATE_ESTABLISHED | NF_CT_STATE_RELATED;
        self.exprs.push(Expr::ct_state_load(Reg::R1));
        self.exprs.push(Expr::bitwise(
            Reg::R1,
            Reg::R1,
            &bits.to_ne_bytes(),
            &0u32.to_ne_bytes(),
        ));
        self.exprs
            .push(Expr::cmp(CmpOp::Neq, Reg::R1, &0u32.to_ne_bytes()));
        self
    }

    /// `fib daddr type local`: the destination is an address of this host (portmap's
    /// `--dst-type LOCAL`, docs/cni-spec-notes.md §12).
    pub fn match_fib_daddr_local(mut self) -> Rule {
        self.exprs.push(Expr::fib_daddr_type(Reg::R1));
        self.exprs
            .push(Expr::cmp(CmpOp::Eq, Reg::R1, &RTN_LOCAL.to_ne_bytes()));
        self
    }

    /// `meta mark set mark or <bits>` (portmap's SETMARK chain, docs/cni-spec-notes.md §12).
    pub fn set_mark_or(mut self, bits: u32) -> Rule {
        self.exprs.push(Expr::meta_load(MetaKey::Mark, Reg::R1));
        self.exprs.push(Expr::bitwise(
            Reg::R1,
            Reg::R1,
            &(!bits).to_ne_bytes(),
            &bits.to_ne_bytes(),
        ));
        self.exprs.push(Expr::meta_set(MetaKey::Mark, Reg::R1));
        self
    }

    /// `meta mark set <value>`.
    pub fn set_mark(mut self, value: u32) -> Rule {
        self.exprs
            .push(Expr::immediate_data(Reg::R1, &value.to_ne_bytes()));
        self.exprs.push(Expr::meta_set(MetaKey::Mark, Reg::R1));
        self
    }

    /// `counter`.
    pub fn counter(mut self) -> Rule {
        self.exprs.push(Expr::counter());
        self
    }

    fn nat_to(mut self, kind: NatKind, addr: IpAddr, port: Option<u16>) -> Result<Rule> {
        let family = IpFamily::of(&addr);
        match (self.family, family) {
            (Family::Ip, IpFamily::V6) | (Family::Ip6, IpFamily::V4) | (Family::Bridge, _) => {
                return Err(Error::Invalid(format!(
                    "cannot NAT to {addr} in a {} table",
                    self.family
                )))
            }
            _ => {}
        }
        self.exprs
            .push(Expr::immediate_data(Reg::R1, &ip_bytes(&addr)));
        let port_reg = port.map(|p| {
            self.exprs
                .push(Expr::immediate_data(Reg::R2, &p.to_be_bytes()));
            Reg::R2
        });
        self.exprs
            .push(Expr::nat(kind, family, Some(Reg::R1), port_reg, 0));
        Ok(self)
    }

    /// `dnat ip|ip6 to <addr>[:<port>]`.
    pub fn dnat(self, addr: IpAddr, port: Option<u16>) -> Result<Rule> {
        self.nat_to(NatKind::Dnat, addr, port)
    }

    /// `snat ip|ip6 to <addr>[:<port>]`.
    pub fn snat(self, addr: IpAddr, port: Option<u16>) -> Result<Rule> {
        self.nat_to(NatKind::Snat, addr, port)
    }

    /// `masquerade`.
    pub fn masquerade(mut self) -> Rule {
        self.exprs.push(Expr::masquerade(0));
        self
    }

    /// `masquerade fully-random`.
    pub fn masquerade_fully_random(mut self) -> Rule {
        self.exprs
            .push(Expr::masquerade(NF_NAT_RANGE_PROTO_RANDOM_FULLY));
        self
    }

    /// A verdict statement; it ends the rule.
    pub fn verdict(mut self, verdict: Verdict) -> Rule {
        self.exprs.push(Expr::verdict(&verdict));
        self
    }

    pub fn accept(self) -> Rule {
        self.verdict(Verdict::Accept)
    }

    pub fn drop_packet(self) -> Rule {
        self.verdict(Verdict::Drop)
    }

    pub fn return_(self) -> Rule {
        self.verdict(Verdict::Return)
    }

    pub fn jump(self, chain: &str) -> Rule {
        self.verdict(Verdict::Jump(chain.to_string()))
    }

    pub fn goto(self, chain: &str) -> Rule {
        self.verdict(Verdict::Goto(chain.to_string()))
    }
}

/// Network-order bytes of an address (what payload loads and NAT registers hold).
pub fn ip_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}
