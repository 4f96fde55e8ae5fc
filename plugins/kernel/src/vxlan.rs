//! VXLAN devices: creation, and their settings read back (to tell whether an existing device can be kept).
//! Either underlay family: the local address is IPv4 or IPv6.

use std::net::IpAddr;

use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};

use crate::error::Result;
use crate::handle::Handle;
use crate::link::{named_link_message, Link};
use crate::mac::MacAddr;

/// A VXLAN device to create.
#[derive(Debug, Clone, Default)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// UDP destination port (flannel: 8472; IANA: 4789).
    pub port: u16,
    /// Source address of the encapsulated packets; its family is the underlay's.
    pub local: Option<IpAddr>,
    /// Underlay device index.
    pub underlay: Option<u32>,
    pub learning: bool,
    /// Group Based Policy extension.
    pub gbp: bool,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    pub up: bool,
}

/// A VXLAN device's settings as the kernel reports them (`ip -d link show`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub gbp: bool,
    pub local: Option<IpAddr>,
    pub underlay: Option<u32>,
    pub learning: Option<bool>,
}

impl VxlanInfo {
    pub(crate) fn from_attributes(attrs: &[InfoVxlan]) -> VxlanInfo {
        let mut info = VxlanInfo::default();
        for a in attrs {
            match a {
                InfoVxlan::Id(v) => info.vni = Some(*v),
                InfoVxlan::Port(p) => info.port = Some(*p),
                InfoVxlan::Local(ip) => info.local = Some(IpAddr::V4(*ip)),
                InfoVxlan::Local6(ip) => info.local = Some(IpAddr::V6(*ip)),
                InfoVxlan::Link(i) if *i != 0 => info.underlay = Some(*i),
                InfoVxlan::Learning(l) => info.learning = Some(*l),
                InfoVxlan::Gbp => info.gbp = true,
                _ => {}
            }
        }
        info
    }

    /// Whether a device with these settings is what `spec` asks for (name, MTU, MAC and state aside).
    pub fn matches(&self, spec: &VxlanSpec) -> bool {
        self.vni == Some(spec.vni)
            && self.port == Some(spec.port)
            && self.local == spec.local
            && self.underlay == spec.underlay
            && self.learning == Some(spec.learning)
            && self.gbp == spec.gbp
    }
}

impl Handle {
    /// Creates a VXLAN device.
    pub fn create_vxlan(&self, spec: &VxlanSpec) -> Result<Link> {
        let mut msg = named_link_message(&spec.name, spec.mtu, spec.mac, spec.up);
        let mut data = vec![InfoVxlan::Id(spec.vni), InfoVxlan::Port(spec.port)];
        match spec.local {
            Some(IpAddr::V4(a)) => data.push(InfoVxlan::Local(a)),
            Some(IpAddr::V6(a)) => data.push(InfoVxlan::Local6(a)),
            None => {}
        }
        if let Some(dev) = spec.underlay {
            data.push(InfoVxlan::Link(dev));
        }
        data.push(InfoVxlan::Learning(spec.learning));
        if spec.gbp {
            data.push(InfoVxlan::Gbp);
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.create_link(msg, &spec.name, "create vxlan", || spec.name.clone())
    }
}
