//! What one attachment needs in one address family, independent of how a backend spells it (docs/cni-spec-notes.md §12
//! portmap): per mapping, mark-for-masquerade rules for hairpin and localhost traffic (or all traffic with
//! `masqAll`), then the DNAT rule; plus the shared structure (hooks, masquerading of marked packets).

use crate::config::{MarkWith, PortMapConf, PortMapping};
use crate::owner::{Claim, Owner, Tag};
use std::net::{IpAddr, Ipv4Addr};
use twill_cni::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Rules of one mapping for one container address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingRules {
    pub mapping: PortMapping,
    pub container_ip: IpAddr,
    /// Sources whose connections are marked for masquerading; `None` = every source (`masqAll`).
    pub mark_sources: Vec<Option<IpAddr>>,
    /// Comment of the mark rules (owner only).
    pub mark_tag: Tag,
    /// Comment of the DNAT rule (owner and claim).
    pub dnat_tag: Tag,
}

/// Everything one attachment adds in one family.
#[derive(Debug, Clone)]
pub struct Plan {
    pub family: Family,
    pub owner: Owner,
    pub mark: MarkWith,
    /// Whether our masquerade rule for `mark` must exist (snat on, and not an external mark chain).
    pub masquerade: bool,
    pub conditions: Vec<String>,
    pub rules: Vec<MappingRules>,
}

impl Plan {
    pub fn new(conf: &PortMapConf, owner: &Owner, container_ip: IpAddr) -> Plan {
        let v6 = container_ip.is_ipv6();
        let family = if v6 { Family::V6 } else { Family::V4 };
        let mark_sources: Vec<Option<IpAddr>> = if !conf.snat {
            vec![]
        } else if conf.masq_all {
            vec![None]
        } else if v6 {
            // route_localnet exists for IPv4 only: ::1 can never be DNAT'd off the host, so only hairpin.
            vec![Some(container_ip)]
        } else {
            vec![Some(container_ip), Some(IpAddr::V4(Ipv4Addr::LOCALHOST))]
        };
        let rules = conf
            .mappings
            .iter()
            .filter(|m| m.applies_to(v6))
            .map(|m| MappingRules {
                mapping: *m,
                container_ip,
                mark_sources: mark_sources.clone(),
                mark_tag: Tag {
                    owner: owner.clone(),
                    claim: None,
                },
                dnat_tag: Tag {
                    owner: owner.clone(),
                    claim: Some(Claim::of(m)),
                },
            })
            .collect();
        Plan {
            family,
            owner: owner.clone(),
            mark: conf.mark.clone(),
            masquerade: conf.snat && matches!(conf.mark, MarkWith::Bit(_)),
            conditions: if v6 {
                conf.conditions_v6.clone()
            } else {
                conf.conditions_v4.clone()
            },
            rules,
        }
    }

    /// Number of mark rules this plan adds (CHECK expects at least that many).
    pub fn mark_rule_count(&self) -> usize {
        self.rules.iter().map(|r| r.mark_sources.len()).sum()
    }
}

/// One of our per-attachment rules as found in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub tag: Tag,
    /// How the backend deletes it (nft: chain + handle; iptables: the saved `-A` line).
    pub locator: Locator,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    Nft { chain: String, handle: u64 },
    Iptables { line: String },
}

/// A firewall implementation. Callers hold the portmap lock around list + apply, so what `list` returned is
/// still true when `apply` runs.
pub trait Backend {
    /// Our per-attachment rules in `family` (empty when the structure does not exist).
    fn list(&mut self, family: Family) -> Result<Vec<Listed>>;

    /// One atomic change in `family`: delete `delete`; then add `add` (creating the shared structure when
    /// needed); or, with `teardown`, remove the whole shared structure because no attachment is left.
    fn apply(
        &mut self,
        family: Family,
        delete: &[Listed],
        add: Option<&Plan>,
        teardown: bool,
    ) -> Result<()>;
}
