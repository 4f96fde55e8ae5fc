//! The bridge device and the gateway addresses on it (docs/cni-spec-notes.md §10.2 steps 2 and 9).
//!
//! Many plugin processes race to create the same bridge and put the same gateway address on it: both
//! creations tolerate "already exists" (the kernel serialises them), so every racer succeeds.

use crate::config::BridgeConf;
use crate::naming;
use crate::port::{self, PortConfig};
use ipnet::IpNet;
use twill_cni::{Context, Error, Result};
use twill_kernel::{sysctl, BridgeSpec, Family, Handle, Link, MacAddr, VethSpec};

/// Create the bridge if missing (with the configured MTU and VLAN filtering), or use the existing one
/// (never re-MTU'd, as the reference); promiscuous mode if asked; `accept_ra=0` because we own its routes;
/// up.
pub fn ensure(host: &Handle, conf: &BridgeConf) -> Result<Link> {
    let spec = BridgeSpec {
        name: conf.bridge.clone(),
        mtu: conf.mtu,
        vlan_filtering: conf.vlan_filtering(),
        mac: None,
        up: true,
    };
    // Every ADD but a node's first finds the bridge: look it up first (one round trip) and create it only
    // when missing (creation tolerates a concurrent creator).
    let mut br = match host.link_by_name(&conf.bridge) {
        Ok(l) if l.kind.as_deref() == Some("bridge") => l,
        Ok(l) => {
            return Err(Error::failed(format!(
                "failed to create bridge {:?}: {:?} already exists but is not a bridge ({})",
                conf.bridge,
                conf.bridge,
                l.kind.as_deref().unwrap_or("no kind")
            )))
        }
        Err(e) if e.is_not_found() => host
            .create_bridge(&spec)
            .with_context(|| format!("failed to create bridge {:?}", conf.bridge))?,
        Err(e) => {
            return Err(Error::failed(format!(
                "failed to look up bridge {:?}: {e}",
                conf.bridge
            )))
        }
    };
    if conf.promisc && !br.promisc {
        host.set_link_promisc(br.index, true)
            .with_context(|| format!("could not set promiscuous mode on {:?}", conf.bridge))?;
        br.promisc = true;
    }
    // Best effort, as the reference: IPv6 may be disabled on this host. The link message carries the
    // current value, so the usual case (already 0) costs no path walk under /proc/sys/net/ipv6, which
    // grows with the number of network namespaces on the host.
    if br.ipv6_accept_ra != Some(0) {
        let _ = sysctl::write(&format!("net/ipv6/conf/{}/accept_ra", conf.bridge), "0");
    }
    if !br.up {
        host.set_link_up(br.index)
            .with_context(|| format!("could not set bridge {:?} up", conf.bridge))?;
        br.up = true;
    }
    Ok(br)
}

/// The reference's `ensureAddr`: `gw` on `link` unless already there. Another address of the family (for
/// IPv6 only an overlapping one) is replaced with `forceAddress` and an error otherwise. After adding, the
/// device's MAC is set to `pin_mac` (its MAC before ports joined): a bridge whose MAC was set explicitly keeps
/// it, instead of taking the lowest port MAC and changing as pods come and go.
pub fn ensure_addr(
    host: &Handle,
    link: &Link,
    gw: IpNet,
    force: bool,
    pin_mac: Option<MacAddr>,
) -> Result<()> {
    let family = Family::of(&gw.addr());
    let existing = host
        .addresses(Some(link.index), Some(family))
        .context("could not get list of IP addresses")?;
    for a in &existing {
        if a.net == gw {
            return Ok(());
        }
        let conflicts =
            family == Family::V4 || a.net.contains(&gw.addr()) || gw.contains(&a.net.addr());
        if conflicts {
            if force {
                match host.delete_address(link.index, a.net) {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        return Err(Error::failed(format!(
                            "could not remove IP address from {:?}: {e}",
                            link.name
                        )))
                    }
                }
            } else {
                return Err(Error::failed(format!(
                    "{:?} already has an IP address different from {gw}",
                    link.name
                )));
            }
        }
    }
    match host.add_address(link.index, gw) {
        Ok(()) => {}
        // A concurrent ADD put it there first (plugins PR #366).
        Err(e) if e.is_exists() => return Ok(()),
        Err(e) => {
            return Err(Error::failed(format!(
                "could not add IP address to {:?}: {e}",
                link.name
            )))
        }
    }
    // A bridge that never had a port may report an all-zero MAC, which cannot be set: pin what it has now.
    let mac = match pin_mac.filter(|m| !m.is_zero()) {
        Some(m) => Some(m),
        None => host
            .link_by_index(link.index)
            .with_context(|| format!("could not lookup {:?}", link.name))?
            .mac
            .filter(|m| !m.is_zero()),
    };
    if let Some(mac) = mac {
        host.set_link_mac(link.index, mac)
            .with_context(|| format!("could not set {:?}'s mac", link.name))?;
    }
    Ok(())
}

/// With `vlan` and `isGateway` the gateway lives on `<bridge>.<vlan>`: one end of a veth pair in the host
/// namespace whose other end is a bridge port in that VLAN (the reference's `ensureVlanInterface`).
pub fn ensure_vlan_interface(
    host: &Handle,
    br: &Link,
    vlan: u16,
    conf: &BridgeConf,
) -> Result<Link> {
    let name = format!("{}.{vlan}", br.name);
    match host.link_by_name(&name) {
        Ok(l) => return Ok(l),
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            return Err(Error::failed(format!(
                "failed to find interface {name:?}: {e}"
            )))
        }
    }
    let mut last_err = None;
    for attempt in 0..naming::VETH_NAME_ATTEMPTS {
        let port_name = naming::host_veth_name(&name, &br.name, attempt);
        let spec = VethSpec {
            name: port_name.clone(),
            peer_name: name.clone(),
            peer_netns: None,
            mtu: Some(br.mtu).filter(|m| *m > 0),
            up: true,
            ..Default::default()
        };
        match host.create_veth(&spec) {
            Ok(port) => {
                let port_conf = PortConfig {
                    hairpin: false,
                    isolated: false,
                    vlan: Some(vlan),
                    trunk: &[],
                    preserve_default_vlan: conf.preserve_default_vlan,
                };
                port::attach(host, br, &port, &port_conf)
                    .with_context(|| format!("failed to create vlan gateway {name:?}"))?;
                let gw_link = host
                    .link_by_name(&name)
                    .with_context(|| format!("failed to lookup {name:?}"))?;
                host.set_link_up(gw_link.index)
                    .with_context(|| format!("failed to up {name:?}"))?;
                return Ok(gw_link);
            }
            Err(e) if e.is_exists() => {
                // Either a concurrent ADD created the gateway interface, or the port name is taken.
                if let Ok(l) = host.link_by_name(&name) {
                    return Ok(l);
                }
                last_err = Some(e);
            }
            Err(e) => {
                return Err(Error::failed(format!(
                    "failed to create vlan gateway {name:?}: {e}"
                )))
            }
        }
    }
    Err(Error::failed(format!(
        "failed to create vlan gateway {name:?}: no free port name: {}",
        last_err.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// Enable forwarding for a family (written only when not already on).
pub fn enable_forwarding(family: Family) -> Result<()> {
    let key = match family {
        Family::V4 => "net/ipv4/ip_forward",
        Family::V6 => "net/ipv6/conf/all/forwarding",
    };
    sysctl::write(key, "1")
        .map(|_| ())
        .context("failed to enable forwarding")
}
