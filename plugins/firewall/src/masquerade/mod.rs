//! The bridge (and ptp) plugin's `ipMasq`: source NAT for traffic from a container address to
//! anything outside its subnet and not multicast (docs/cni-spec-notes.md §10.4).
//!
//! Unlike the reference, every rule is identified by its *owner* — network name, container id
//! and interface name — written into rule comments (and, for iptables, the chain name). So
//! [`del`] needs neither the addresses nor the container's namespace, and [`gc`] can remove the
//! rules of attachments the runtime no longer knows (the reference leaks them, plugins#810).
//!
//! Cost (nftables, measured with `examples/masq_timing.rs`, 50 other owners present): ADD is one
//! dump of the small `postrouting` chain plus one add-only transaction, ~0.1–0.3 ms; DEL is one
//! dump of `masq_checks` plus one transaction, ~0.5 ms. Deleting rules leaves the kernel an RCU
//! grace period of clean-up that closing the netlink socket would wait for (5–20 ms); the socket
//! is therefore parked and closed at process exit (see [`crate::nft::Nft`]). A plugin should call
//! [`del`] *before* (or concurrently with) slow kernel work such as deleting the veth, so the
//! grace period has passed by the time it exits.

mod iptables;
mod nftables;
mod owner;
mod reference;

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

use crate::error::{Error, Result};

pub use owner::Owner;

/// Which firewall the rules go to (`ipMasqBackend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Native nf_tables, table `inet cni_plugins_masquerade`. Our default: one netlink
    /// transaction per ADD instead of several process execs.
    #[default]
    Nftables,
    /// `iptables`/`ip6tables`, table `nat`, one `CNI-…` chain per owner.
    Iptables,
}

impl Backend {
    /// Parses the `ipMasqBackend` config value; unset means nftables (twill's documented default;
    /// the reference picks iptables unless only nftables is available).
    pub fn from_config(value: Option<&str>) -> Result<Backend> {
        match value {
            None => Ok(Backend::Nftables),
            Some(v) => v.parse(),
        }
    }
}

impl FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Backend> {
        match s {
            "nftables" => Ok(Backend::Nftables),
            "iptables" => Ok(Backend::Iptables),
            other => Err(Error::Invalid(format!(
                "ipMasqBackend must be \"nftables\" or \"iptables\", not {other:?}"
            ))),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        })
    }
}

/// Installs masquerade for every address of `owner` (each `IpNet` is the container address with
/// its subnet's prefix length, as IPAM returns it). No-op for an empty list.
pub fn add(backend: Backend, owner: &Owner, addrs: &[IpNet]) -> Result<()> {
    owner.validate()?;
    if addrs.is_empty() {
        return Ok(());
    }
    match backend {
        Backend::Nftables => nftables::add(owner, addrs),
        Backend::Iptables => iptables::add(owner, addrs),
    }
}

/// Removes every masquerade rule of `owner`, ours and any the reference plugin installed for the same
/// attachment before the node was upgraded; succeeds when there is nothing to remove.
pub fn del(backend: Backend, owner: &Owner) -> Result<()> {
    owner.validate()?;
    // Both are always attempted: teardown never stops half way. The reference's first: its check opens
    // and closes a netlink socket, and a close after our rule deletions would wait for their grace period.
    let reference = reference::del(&owner.network, &owner.container_id);
    let ours = match backend {
        Backend::Nftables => nftables::del(owner),
        Backend::Iptables => iptables::del(owner),
    };
    match (ours, reference) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(Error::Protocol(format!("{a}; also: {b}"))),
    }
}

/// Removes the rules of `network`'s owners whose `(container_id, ifname)` is not in `keep`
/// (CNI GC, docs/cni-spec-notes.md §4). Returns how many owners were removed.
pub fn gc<C: AsRef<str>, I: AsRef<str>>(
    backend: Backend,
    network: &str,
    keep: &[(C, I)],
) -> Result<usize> {
    let keep_ids: std::collections::HashSet<&str> = keep.iter().map(|(c, _)| c.as_ref()).collect();
    let reference = reference::gc(network, &keep_ids);
    let keep: Vec<Owner> = keep
        .iter()
        .map(|(c, i)| Owner::new(network, c.as_ref(), i.as_ref()))
        .collect();
    let ours = match backend {
        Backend::Nftables => nftables::gc(network, &keep),
        Backend::Iptables => iptables::gc(network, &keep),
    };
    match (ours, reference) {
        (Ok(a), Ok(b)) => Ok(a + b),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(Error::Protocol(format!("{a}; also: {b}"))),
    }
}

/// Verifies that the rules for every address of `owner` are present (CNI CHECK).
pub fn check(backend: Backend, owner: &Owner, addrs: &[IpNet]) -> Result<()> {
    owner.validate()?;
    match backend {
        Backend::Nftables => nftables::check(owner, addrs),
        Backend::Iptables => iptables::check(owner, addrs),
    }
}
