//! Policy routing rules (`ip rule`): which table a packet is looked up in, chosen by its source or
//! destination. Only the "look up a table" action is modelled; other rules are listed with their table
//! and selectors so callers can tell them apart and delete them.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::RouteNetlinkMessage;

use crate::address::Family;
use crate::error::Result;
use crate::handle::Handle;

/// A policy rule: `from <src> to <dst> lookup <table> [pref <priority>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub table: u32,
    /// `None` when adding: the kernel picks one just below the lowest existing non-zero priority.
    pub priority: Option<u32>,
    /// The action is a table lookup (other actions are listed but never created here).
    pub lookup: bool,
}

impl Rule {
    /// `from <src> lookup <table>`, `src` being a single address (/32 or /128).
    pub fn from_source(src: IpAddr, table: u32) -> Rule {
        Rule {
            family: Family::of(&src),
            src: Some(IpNet::from(src)),
            dst: None,
            table,
            priority: None,
            lookup: true,
        }
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(p) = self.priority {
            s.push_str(&format!("pref {p} "));
        }
        match self.src {
            Some(src) => s.push_str(&format!("from {src}")),
            None => s.push_str("from all"),
        }
        if let Some(dst) = self.dst {
            s.push_str(&format!(" to {dst}"));
        }
        s.push_str(&format!(" lookup {}", self.table));
        s
    }

    fn to_message(&self, deleting: bool) -> RuleMessage {
        let mut msg = RuleMessage::default();
        let h = &mut msg.header;
        h.family = self.family.to_af();
        h.action = if self.lookup || !deleting {
            RuleAction::ToTable
        } else {
            RuleAction::Unspec
        };
        if self.table < 256 {
            h.table = self.table as u8;
        }
        msg.attributes.push(RuleAttribute::Table(self.table));
        if let Some(src) = self.src {
            msg.header.src_len = src.prefix_len();
            msg.attributes.push(RuleAttribute::Source(src.addr()));
        }
        if let Some(dst) = self.dst {
            msg.header.dst_len = dst.prefix_len();
            msg.attributes.push(RuleAttribute::Destination(dst.addr()));
        }
        if let Some(p) = self.priority {
            msg.attributes.push(RuleAttribute::Priority(p));
        }
        msg
    }

    fn from_message(msg: &RuleMessage) -> Option<Rule> {
        let h = &msg.header;
        let family = match h.family {
            netlink_packet_route::AddressFamily::Inet => Family::V4,
            netlink_packet_route::AddressFamily::Inet6 => Family::V6,
            _ => return None,
        };
        let mut rule = Rule {
            family,
            src: None,
            dst: None,
            table: u32::from(h.table),
            priority: None,
            lookup: h.action == RuleAction::ToTable,
        };
        for attr in &msg.attributes {
            match attr {
                RuleAttribute::Source(ip) => rule.src = IpNet::new(*ip, h.src_len).ok(),
                RuleAttribute::Destination(ip) => rule.dst = IpNet::new(*ip, h.dst_len).ok(),
                RuleAttribute::Table(t) => rule.table = *t,
                RuleAttribute::Priority(p) => rule.priority = Some(*p),
                _ => {}
            }
        }
        Some(rule)
    }
}

impl Handle {
    /// Adds a rule; an identical one already present is [`Error::is_exists`](crate::Error::is_exists).
    pub fn add_rule(&self, rule: &Rule) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewRule(rule.to_message(false)),
            NLM_F_CREATE | NLM_F_EXCL,
            "add rule",
            || rule.describe(),
        )
        .map(|_| ())
    }

    /// Deletes the first rule matching `rule` (its priority, when unset, matches any). Not found is
    /// [`Error::is_not_found`](crate::Error::is_not_found).
    pub fn delete_rule(&self, rule: &Rule) -> Result<()> {
        self.request(
            RouteNetlinkMessage::DelRule(rule.to_message(true)),
            0,
            "delete rule",
            || rule.describe(),
        )
        .map(|_| ())
    }

    /// The rules of one family, or of both; the kernel's default rules included.
    pub fn rules(&self, family: Option<Family>) -> Result<Vec<Rule>> {
        let mut msg = RuleMessage::default();
        // Unspecified, the kernel dumps the rules of every family in one answer (IPv4's, then IPv6's, and
        // the multicast routing families', which `from_message` leaves out): one round trip, not two.
        if let Some(f) = family {
            msg.header.family = f.to_af();
        }
        let msgs = self.dump(RouteNetlinkMessage::GetRule(msg), "list rules", String::new)?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Rule::from_message(r),
                _ => None,
            })
            .collect())
    }
}
