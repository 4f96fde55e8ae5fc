//! VLANs on bridge ports and on the bridge itself (`bridge vlan`), for VLAN-filtering bridges.

use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, LinkAttribute, LinkExtentMask,
    LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::handle::Handle;
use crate::link::new_link_message;

/// A VLAN on a bridge port (or on the bridge itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeVlan {
    pub vid: u16,
    /// Untagged ingress frames are assigned this VLAN.
    pub pvid: bool,
    /// Frames leave untagged.
    pub untagged: bool,
}

/// Where a bridge VLAN entry lives: on a port (the usual case) or on the bridge device itself
/// (`bridge vlan add ... self`, needed for the gateway address on a VLAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VlanOn {
    Port,
    BridgeItself,
}

impl Handle {
    fn bridge_vlan_message(index: u32, vlan: BridgeVlan, on: VlanOn) -> LinkMessage {
        let mut flags = BridgeVlanInfoFlags::empty();
        if vlan.pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if vlan.untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        let mut spec = Vec::new();
        if on == VlanOn::BridgeItself {
            spec.push(AfSpecBridge::Flags(BridgeFlag::LowerDev));
        }
        spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo {
            flags,
            vid: vlan.vid,
        }));
        let mut msg = new_link_message(index);
        msg.header.interface_family = AddressFamily::Bridge;
        msg.attributes.push(LinkAttribute::AfSpecBridge(spec));
        msg
    }

    /// Adds (or updates the flags of) a VLAN on a bridge port or the bridge itself.
    pub fn add_bridge_vlan(&self, index: u32, vlan: BridgeVlan, on: VlanOn) -> Result<()> {
        let msg = Self::bridge_vlan_message(index, vlan, on);
        self.set_link(msg, "add bridge vlan", || {
            format!("{} to index {index}", vlan.vid)
        })
    }

    /// Removes a VLAN from a bridge port or the bridge itself.
    pub fn delete_bridge_vlan(&self, index: u32, vid: u16, on: VlanOn) -> Result<()> {
        let vlan = BridgeVlan {
            vid,
            pvid: false,
            untagged: false,
        };
        let msg = Self::bridge_vlan_message(index, vlan, on);
        self.request(
            RouteNetlinkMessage::DelLink(msg),
            0,
            "delete bridge vlan",
            || format!("{vid} from index {index}"),
        )
        .map(|_| ())
    }

    /// The VLANs configured on a bridge port (or on the bridge itself, for the bridge's index).
    pub fn bridge_vlans(&self, index: u32) -> Result<Vec<BridgeVlan>> {
        let mut msg = new_link_message(0);
        msg.header.interface_family = AddressFamily::Bridge;
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
        let msgs = self.dump(
            RouteNetlinkMessage::GetLink(msg),
            "list bridge vlans of",
            || format!("index {index}"),
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewLink(l) = m else {
                continue;
            };
            if l.header.index != index {
                continue;
            }
            for attr in &l.attributes {
                if let LinkAttribute::AfSpecBridge(spec) = attr {
                    for s in spec {
                        if let AfSpecBridge::VlanInfo(info) = s {
                            out.push(BridgeVlan {
                                vid: info.vid,
                                pvid: info.flags.contains(BridgeVlanInfoFlags::Pvid),
                                untagged: info.flags.contains(BridgeVlanInfoFlags::Untagged),
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}
