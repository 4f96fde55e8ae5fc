//! Neighbour (ARP/NDP) entries and forwarding-database (FDB) entries.
//!
//! The VXLAN overlay programs both per peer (docs/architecture.md, flannel contracts, VXLAN programming): a permanent
//! neighbour `S.0 -> VTEP MAC` on `flannel.<VNI>`, and an FDB entry `VTEP MAC -> underlay IP` on the same device.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::address::Family;
use crate::error::Result;
use crate::handle::Handle;
use crate::mac::MacAddr;

/// A neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
    /// Permanent (static) rather than learned.
    pub permanent: bool,
}

/// A forwarding-database entry on a device (for VXLAN: which underlay IP a MAC lives behind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: MacAddr,
    /// Remote underlay IP (VXLAN `dst`).
    pub dst: Option<IpAddr>,
    pub permanent: bool,
    /// NTF_SELF: the entry is in the device's own table (VXLAN), not its master bridge's.
    pub on_self: bool,
}

fn neighbour_message(index: u32, ip: IpAddr, mac: Option<MacAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = Family::of(&ip).to_af();
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unspec;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    if let Some(mac) = mac {
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    }
    msg
}

fn fdb_message(index: u32, mac: MacAddr, dst: Option<IpAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.kind = RouteType::Unspec;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    if let Some(ip) = dst {
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    }
    msg
}

/// NDA_DST of an AF_BRIDGE message arrives unparsed: its length says the family.
fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(b) if b.len() == 4 => {
            Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        }
        NeighbourAddress::Other(b) if b.len() == 16 => {
            let octets: [u8; 16] = b.as_slice().try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

fn fdb_object(index: u32, mac: MacAddr, dst: Option<IpAddr>) -> String {
    match dst {
        Some(d) => format!("{mac} dst {d} on index {index}"),
        None => format!("{mac} on index {index}"),
    }
}

impl Handle {
    /// Adds a permanent neighbour `ip -> mac` on the device; an existing entry for `ip` is
    /// [`Error::is_exists`](crate::Error::is_exists).
    pub fn add_neighbour(&self, index: u32, ip: IpAddr, mac: MacAddr) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewNeighbour(neighbour_message(index, ip, Some(mac))),
            NLM_F_CREATE | NLM_F_EXCL,
            "add neighbour",
            || format!("{ip} lladdr {mac} on index {index}"),
        )
        .map(|_| ())
    }

    /// Adds or replaces the permanent neighbour for `ip` on the device (`ip neigh replace`).
    pub fn replace_neighbour(&self, index: u32, ip: IpAddr, mac: MacAddr) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewNeighbour(neighbour_message(index, ip, Some(mac))),
            NLM_F_CREATE | NLM_F_REPLACE,
            "replace neighbour",
            || format!("{ip} lladdr {mac} on index {index}"),
        )
        .map(|_| ())
    }

    /// Deletes the neighbour for `ip` on the device; not found is
    /// [`Error::is_not_found`](crate::Error::is_not_found).
    pub fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<()> {
        self.request(
            RouteNetlinkMessage::DelNeighbour(neighbour_message(index, ip, None)),
            0,
            "delete neighbour",
            || format!("{ip} on index {index}"),
        )
        .map(|_| ())
    }

    /// Neighbour entries, optionally of one device and/or family.
    pub fn neighbours(&self, index: Option<u32>, family: Option<Family>) -> Result<Vec<Neighbour>> {
        let families = match family {
            Some(f) => vec![f],
            None => vec![Family::V4, Family::V6],
        };
        let mut out = Vec::new();
        for f in families {
            let mut msg = NeighbourMessage::default();
            msg.header.family = f.to_af();
            if let Some(i) = index {
                msg.attributes.push(NeighbourAttribute::IfIndex(i));
            }
            let entries = self.neighbour_dump(msg, "list neighbours", index, || {
                index.map(|i| format!("of index {i}")).unwrap_or_default()
            })?;
            for n in entries {
                let (ip, mac) = ip_and_mac(&n);
                let Some(ip) = ip else { continue };
                out.push(Neighbour {
                    index: n.header.ifindex,
                    ip,
                    mac,
                    permanent: n.header.state == NeighbourState::Permanent,
                });
            }
        }
        Ok(out)
    }

    /// Adds a permanent FDB entry `mac -> dst` in the device's own table (`bridge fdb add ... self
    /// permanent`); an existing entry is [`Error::is_exists`](crate::Error::is_exists).
    pub fn add_fdb(&self, index: u32, mac: MacAddr, dst: Option<IpAddr>) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, dst)),
            NLM_F_CREATE | NLM_F_EXCL,
            "add fdb entry",
            || fdb_object(index, mac, dst),
        )
        .map(|_| ())
    }

    /// Adds or replaces the permanent FDB entry for `mac` (`bridge fdb replace`).
    pub fn replace_fdb(&self, index: u32, mac: MacAddr, dst: Option<IpAddr>) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, dst)),
            NLM_F_CREATE | NLM_F_REPLACE,
            "replace fdb entry",
            || fdb_object(index, mac, dst),
        )
        .map(|_| ())
    }

    /// Deletes an FDB entry (with `dst`, only the entry pointing there); not found is
    /// [`Error::is_not_found`](crate::Error::is_not_found).
    pub fn delete_fdb(&self, index: u32, mac: MacAddr, dst: Option<IpAddr>) -> Result<()> {
        self.request(
            RouteNetlinkMessage::DelNeighbour(fdb_message(index, mac, dst)),
            0,
            "delete fdb entry",
            || fdb_object(index, mac, dst),
        )
        .map(|_| ())
    }

    /// FDB entries of one device.
    pub fn fdb_entries(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        // rtnl_fdb_dump filters on ndm_ifindex (the port) itself.
        msg.header.ifindex = index;
        let entries = self.neighbour_dump(msg, "list fdb entries", Some(index), || {
            format!("of index {index}")
        })?;
        let mut out = Vec::new();
        for n in entries {
            let (dst, mac) = ip_and_mac(&n);
            let Some(mac) = mac else { continue };
            out.push(FdbEntry {
                index,
                mac,
                dst,
                permanent: n.header.state == NeighbourState::Permanent,
                on_self: n.header.flags.contains(NeighbourFlags::Own),
            });
        }
        Ok(out)
    }

    /// Dumps neighbour-table entries (ARP/NDP or FDB by the message's family), keeping those of
    /// device `index` when given: older kernels ignore the ifindex filter of the request.
    fn neighbour_dump(
        &self,
        msg: NeighbourMessage,
        op: &'static str,
        index: Option<u32>,
        object: impl Fn() -> String,
    ) -> Result<Vec<NeighbourMessage>> {
        let msgs = self.dump(RouteNetlinkMessage::GetNeighbour(msg), op, object)?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if index.is_none_or(|i| i == n.header.ifindex) =>
                {
                    Some(n)
                }
                _ => None,
            })
            .collect())
    }
}

/// The protocol address (IP) and link-layer address (MAC) of a neighbour or FDB entry.
fn ip_and_mac(n: &NeighbourMessage) -> (Option<IpAddr>, Option<MacAddr>) {
    let mut ip = None;
    let mut mac = None;
    for attr in &n.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => ip = neighbour_ip(a),
            NeighbourAttribute::LinkLayerAddress(l) => mac = MacAddr::from_slice(l),
            _ => {}
        }
    }
    (ip, mac)
}
