//! The veth pair and the bridge port (docs/cni-spec-notes.md §10.2 step 4).
//!
//! Unlike the reference, which creates the pair inside the pod namespace and moves the host end out, the
//! pair is created from the host in one request with the container end placed directly in the pod namespace
//! (IFLA_NET_NS_FD on the peer): no device is ever moved, no thread has to enter the pod namespace, and the
//! host end keeps its ifindex.

use crate::config::BridgeConf;
use crate::naming;
use twill_cni::{Context, Error, Result};
use twill_kernel::{sysctl, BridgePortFlags, BridgeVlan, Handle, Link, MacAddr, NetNs, VlanOn};

pub use twill_veth::Pair;
use twill_veth::{PairError, PairSpec};

/// Bridge-port settings of one port.
pub struct PortConfig<'a> {
    pub hairpin: bool,
    pub isolated: bool,
    pub vlan: Option<u16>,
    pub trunk: &'a [u16],
    pub preserve_default_vlan: bool,
}

impl<'a> PortConfig<'a> {
    pub fn of(conf: &'a BridgeConf) -> Self {
        PortConfig {
            hairpin: conf.hairpin,
            isolated: conf.port_isolation,
            vlan: conf.vlan,
            trunk: &conf.vlan_trunk,
            preserve_default_vlan: conf.preserve_default_vlan,
        }
    }
}

/// Create the pair: the host end (up, already a port of `bridge`) under a stable per-attachment name, the
/// container end `ifname` (down until its addresses are on, so `arp_notify` announces them) directly inside
/// `pod`. `ifname` already in the pod is an error (docs/cni-spec-notes.md §4 ADD); a taken host name moves on to the
/// next candidate. Finish the port with [`configure_port`].
#[allow(clippy::too_many_arguments)]
pub fn create_pair(
    host: &Handle,
    pod: &NetNs,
    pod_handle: &Handle,
    bridge: &Link,
    container_id: &str,
    ifname: &str,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
) -> Result<Pair> {
    let spec = PairSpec {
        pod,
        ifname,
        mtu,
        container_mac: mac,
        master: Some(bridge.index),
    };
    let names = |attempt| Ok(naming::host_veth_name(container_id, ifname, attempt));
    twill_veth::create_pair(host, pod_handle, &spec, naming::VETH_NAME_ATTEMPTS, names).map_err(
        |e| match e {
            PairError::ContainerNameTaken => Error::failed(format!(
                "container veth name provided ({ifname}) already exists"
            )),
            PairError::Lookup(le) => {
                Error::failed(format!("failed to look up {ifname:?} in the pod: {le}"))
            }
            PairError::Create(e) => Error::failed(format!("failed to create veth pair: {e}")),
            PairError::NoFreeName(last) => Error::failed(format!(
                "failed to create veth pair: no free host-side name after {} attempts: {}",
                naming::VETH_NAME_ATTEMPTS,
                last.map(|e| e.to_string()).unwrap_or_default()
            )),
            PairError::Name(e) => e,
        },
    )
}

/// Enslave `port` to the bridge and apply its flags and VLANs (the reference's `setupVeth` tail).
pub fn attach(host: &Handle, br: &Link, port: &Link, pc: &PortConfig<'_>) -> Result<()> {
    host.set_link_master(port.index, Some(br.index))
        .with_context(|| format!("failed to connect {:?} to bridge {:?}", port.name, br.name))?;
    configure_port(host, port, pc)
}

/// The rest of [`attach`] for a port already enslaved: `accept_ra`, flags and VLANs.
pub fn configure_port(host: &Handle, port: &Link, pc: &PortConfig<'_>) -> Result<()> {
    // Best effort, as the reference: we own this interface's routes. The port was just created, so it holds
    // the namespace default: written without reading it first.
    let _ = sysctl::set(&format!("net/ipv6/conf/{}/accept_ra", port.name), "0");
    // A new port has both flags off: only turning one on costs a request.
    let flags = BridgePortFlags {
        hairpin: pc.hairpin.then_some(true),
        isolated: pc.isolated.then_some(true),
    };
    if flags.hairpin.is_some() || flags.isolated.is_some() {
        host.set_bridge_port_flags(port.index, flags)
            .with_context(|| format!("failed to set hairpin/isolation on {:?}", port.name))?;
    }
    let any_vlan = pc.vlan.is_some() || !pc.trunk.is_empty();
    if any_vlan && !pc.preserve_default_vlan {
        let existing = host
            .bridge_vlans(port.index)
            .with_context(|| format!("failed to list vlans of {:?}", port.name))?;
        for v in existing {
            host.delete_bridge_vlan(port.index, v.vid, VlanOn::Port)
                .with_context(|| {
                    format!("failed to remove default vlan on interface {:?}", port.name)
                })?;
        }
    }
    // Access port: the VLAN is PVID and untagged. Trunk port without access VLAN: VLAN 1 native
    // (docs/cni-spec-notes.md §10.1).
    let access = pc.vlan.or((!pc.trunk.is_empty()).then_some(1));
    if let Some(vid) = access {
        let v = BridgeVlan {
            vid,
            pvid: true,
            untagged: true,
        };
        host.add_bridge_vlan(port.index, v, VlanOn::Port)
            .with_context(|| format!("failed to setup vlan tag on interface {:?}", port.name))?;
    }
    for &vid in pc.trunk {
        let v = BridgeVlan {
            vid,
            pvid: false,
            untagged: false,
        };
        host.add_bridge_vlan(port.index, v, VlanOn::Port)
            .with_context(|| format!("failed to setup vlan tag on interface {:?}", port.name))?;
    }
    Ok(())
}
