//! Masquerade and forward-accept rules with flanneld's semantics and names, so a node switched between flanneld
//! and twilld keeps working and each recognises and replaces the other's rules:
//!
//! * masquerade (`--ip-masq`): pod->pod traffic stays un-NATed, pods->outside and host->pods are masqueraded
//!   (`fully-random` unless `--ip-masq-fully-random-disable`, or where the kernel or iptables lacks it: see
//!   [`fully_random`]), packets kube-proxy already marked (0x4000) are left alone;
//! * forward (`--iptables-forward-rules`, on by default): FORWARD accepts the pod network.
//!
//! One [`TrafficRules`] per address family. nftables (default): table `flannel-ipv4` / `flannel-ipv6`, chains
//! `postrtg` and `forward`, programmed over netlink through `twill-firewall` (no `nft` process). iptables:
//! chains `FLANNEL-POSTRTG` (nat) and `FLANNEL-FWD` (filter) with jumps from POSTROUTING/FORWARD, installed with
//! one `iptables-restore` per family.
//!
//! The periodic check ([`TrafficRules::ensure`]) compares what the kernel holds with a snapshot taken right after
//! installing, and reinstalls everything when they differ (flanneld rebuilds all rules when one is missing). The
//! snapshot is read over netlink for nftables and for iptables-nft (whose chains are nf_tables chains), so the
//! steady state execs nothing; only legacy (x_tables) iptables, invisible to netlink, costs one `iptables-save`
//! per check.

pub mod fully_random;
mod iptables;
mod nftables;

use std::fmt;

use ipnet::IpNet;
use twill_firewall::nft::{Expr, IpFamily};

pub use crate::flags::RulesBackend;

const MASQ_COMMENT: &str = "flanneld masq";
const FWD_COMMENT: &str = "flanneld forward";
/// kube-proxy's masquerade mark: packets carrying it are NATed by kube-proxy, not by us.
const KUBE_PROXY_MARK: u32 = 0x4000;

/// Which rule groups are installed, from flanneld's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleOptions {
    /// `--ip-masq`.
    pub masquerade: bool,
    /// `--iptables-forward-rules` (flanneld's default: true).
    pub forward: bool,
    /// Not `--ip-masq-fully-random-disable`.
    pub fully_random: bool,
}

impl RuleOptions {
    /// Whether there is anything to install at all.
    pub fn any(&self) -> bool {
        self.masquerade || self.forward
    }
}

/// Why traffic rules could not be set up or read.
#[derive(Debug)]
pub enum RulesError {
    /// The network and subnet cannot make a rule set (different families, subnet outside the network).
    Invalid(String),
    /// A netlink transaction or dump failed.
    Nftables {
        context: String,
        source: twill_firewall::Error,
    },
    /// An `iptables`/`iptables-restore` run failed.
    Iptables {
        context: String,
        source: twill_firewall::Error,
    },
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RulesError::Invalid(m) => write!(f, "traffic rules: {m}"),
            RulesError::Nftables { context, source } => write!(f, "{context}: {source}"),
            RulesError::Iptables { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for RulesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RulesError::Invalid(_) => None,
            RulesError::Nftables { source, .. } | RulesError::Iptables { source, .. } => {
                Some(source)
            }
        }
    }
}

/// A chain's rules as the kernel lists them, without handles and counters: what "unchanged" means.
type ChainView = Vec<(Option<String>, Vec<Expr>)>;

/// What the kernel held right after our install.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Snapshot {
    /// Read over netlink (nftables, iptables-nft).
    Netlink(Vec<ChainView>),
    /// Lines of `iptables-save` about our chains (legacy iptables).
    Save(Vec<String>),
}

/// The rule set for one family: the flannel Network and the node's subnet of that family.
#[derive(Debug, Clone)]
pub struct TrafficRules {
    backend: RulesBackend,
    network: IpNet,
    subnet: IpNet,
    options: RuleOptions,
    installed: Option<Snapshot>,
}

impl TrafficRules {
    /// Rules for `network` (the cluster range) and `subnet` (this node's lease), both IPv4 or both IPv6.
    pub fn new(
        backend: RulesBackend,
        network: IpNet,
        subnet: IpNet,
        options: RuleOptions,
    ) -> Result<TrafficRules, RulesError> {
        if family_of(&network) != family_of(&subnet) || !network.contains(&subnet) {
            return Err(RulesError::Invalid(format!(
                "subnet {subnet} is not inside network {network}"
            )));
        }
        Ok(TrafficRules {
            backend,
            network: network.trunc(),
            subnet: subnet.trunc(),
            options,
            installed: None,
        })
    }

    pub fn family(&self) -> IpFamily {
        family_of(&self.network)
    }

    pub fn backend(&self) -> RulesBackend {
        self.backend
    }

    pub fn options(&self) -> RuleOptions {
        self.options
    }

    /// `224.0.0.0/4` or `ff00::/8`: never masqueraded.
    fn multicast(&self) -> IpNet {
        match self.family() {
            IpFamily::V4 => "224.0.0.0/4".parse().expect("valid prefix"),
            IpFamily::V6 => "ff00::/8".parse().expect("valid prefix"),
        }
    }

    /// Removes what the other backend may have left from an earlier run of this family (flanneld cleans up the
    /// other mode's tables/chains at start-up). Best effort: the other tool may not even be installed.
    pub fn remove_other_backend(&self) {
        match self.backend {
            RulesBackend::Nftables => iptables::remove(self.family()),
            RulesBackend::Iptables => nftables::remove(self.family()),
        }
    }

    /// Installs the whole set, replacing whatever of ours (or flanneld's) was there, and remembers what the kernel
    /// then holds.
    pub fn apply(&mut self) -> Result<(), RulesError> {
        self.installed = None;
        let snapshot = match self.backend {
            RulesBackend::Nftables => {
                nftables::apply(self)?;
                Snapshot::Netlink(nftables::read(self.family())?)
            }
            RulesBackend::Iptables => {
                iptables::apply(self)?;
                iptables::read(self, None)?
            }
        };
        self.installed = Some(snapshot);
        Ok(())
    }

    /// Whether the kernel still holds exactly what [`TrafficRules::apply`] installed.
    pub fn intact(&self) -> Result<bool, RulesError> {
        let Some(installed) = &self.installed else {
            return Ok(false);
        };
        let now = match self.backend {
            RulesBackend::Nftables => Snapshot::Netlink(nftables::read(self.family())?),
            RulesBackend::Iptables => iptables::read(self, Some(installed))?,
        };
        Ok(&now == installed)
    }

    /// Checks and repairs; returns whether a repair was needed.
    pub fn ensure(&mut self) -> Result<bool, RulesError> {
        if self.intact()? {
            return Ok(false);
        }
        self.apply()?;
        Ok(true)
    }
}

fn family_of(net: &IpNet) -> IpFamily {
    match net {
        IpNet::V4(_) => IpFamily::V4,
        IpNet::V6(_) => IpFamily::V6,
    }
}

/// A listed chain without handles and counters (iptables-nft gives every rule a counter that moves with
/// traffic).
fn chain_view(rules: Vec<twill_firewall::nft::RuleInfo>) -> ChainView {
    rules
        .into_iter()
        .map(|r| {
            let exprs = r
                .exprs
                .into_iter()
                .filter(|e| e.name() != "counter")
                .collect();
            (r.comment, exprs)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(masquerade: bool, forward: bool) -> RuleOptions {
        RuleOptions {
            masquerade,
            forward,
            fully_random: true,
        }
    }

    #[test]
    fn network_and_subnet_must_be_one_family_and_nested() {
        let n4: IpNet = "10.244.0.0/16".parse().unwrap();
        let s4: IpNet = "10.244.3.0/24".parse().unwrap();
        let s6: IpNet = "fd42:0:0:3::/64".parse().unwrap();
        assert!(TrafficRules::new(RulesBackend::Nftables, n4, s4, opts(true, true)).is_ok());
        assert!(TrafficRules::new(RulesBackend::Nftables, n4, s6, opts(true, true)).is_err());
        let outside: IpNet = "10.245.3.0/24".parse().unwrap();
        assert!(TrafficRules::new(RulesBackend::Iptables, n4, outside, opts(true, true)).is_err());
        let r = TrafficRules::new(
            RulesBackend::Iptables,
            "fd42::/56".parse().unwrap(),
            s6,
            opts(false, true),
        )
        .unwrap();
        assert_eq!(r.family(), IpFamily::V6);
        assert_eq!(r.multicast().to_string(), "ff00::/8");
    }
}
