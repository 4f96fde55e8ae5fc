//! macvlan devices: a second MAC address on a parent device, created directly in the pod's namespace.

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, LinkAttribute, LinkExtentMask, LinkInfo, MacVlanMode,
};
use netlink_packet_route::RouteNetlinkMessage;
use std::os::fd::AsRawFd;

use crate::error::Result;
use crate::handle::Handle;
use crate::link::{named_link_message, new_link_message};
use crate::mac::MacAddr;
use crate::netns::NetNs;

/// The macvlan modes of the reference plugin (the kernel's `source` mode needs a MAC list the
/// reference never configures, so it is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    Bridge,
    Private,
    Vepa,
    Passthru,
}

impl MacvlanMode {
    /// The configuration's spelling; empty is the default, `bridge`.
    pub fn parse(s: &str) -> Option<MacvlanMode> {
        match s {
            "" | "bridge" => Some(MacvlanMode::Bridge),
            "private" => Some(MacvlanMode::Private),
            "vepa" => Some(MacvlanMode::Vepa),
            "passthru" => Some(MacvlanMode::Passthru),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Passthru => "passthru",
        }
    }

    fn to_netlink(self) -> MacVlanMode {
        match self {
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
        }
    }

    fn from_netlink(m: MacVlanMode) -> Option<MacvlanMode> {
        match m {
            MacVlanMode::Bridge => Some(MacvlanMode::Bridge),
            MacVlanMode::Private => Some(MacvlanMode::Private),
            MacVlanMode::Vepa => Some(MacvlanMode::Vepa),
            MacVlanMode::Passthrough => Some(MacvlanMode::Passthru),
            _ => None,
        }
    }
}

/// A macvlan to create on `parent` (an ifindex in the handle's namespace).
#[derive(Debug, Clone)]
pub struct MacvlanSpec<'a> {
    pub name: String,
    pub parent: u32,
    pub mode: MacvlanMode,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    /// Where the device is created (its name is taken in that namespace); `None`: here.
    pub netns: Option<&'a NetNs>,
    /// `IFLA_MACVLAN_BC_QUEUE_LEN`; `None`: the kernel's default.
    pub bc_queue_len: Option<u32>,
}

/// What [`Handle::macvlan_info`] reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvlanInfo {
    /// `None` for a mode the reference does not know (`source`).
    pub mode: Option<MacvlanMode>,
}

impl Handle {
    /// Creates a macvlan, down. The device is looked up afterwards in its own namespace, so nothing is
    /// returned.
    pub fn create_macvlan(&self, spec: &MacvlanSpec<'_>) -> Result<()> {
        let mut msg = named_link_message(&spec.name, spec.mtu, spec.mac, false);
        msg.attributes.push(LinkAttribute::Link(spec.parent));
        if let Some(ns) = spec.netns {
            msg.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        }
        let mut data = vec![InfoMacVlan::Mode(spec.mode.to_netlink())];
        if let Some(q) = spec.bc_queue_len {
            data.push(InfoMacVlan::BcQueueLen(q));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVlan),
            LinkInfo::Data(InfoData::MacVlan(data)),
        ]));
        let object = || format!("{} on parent index {}", spec.name, spec.parent);
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL,
            "create macvlan",
            object,
        )
        .map(|_| ())
    }

    /// The macvlan attributes of device `index`, `None` when it is not a macvlan.
    pub fn macvlan_info(&self, index: u32) -> Result<Option<MacvlanInfo>> {
        let mut msg = new_link_message(index);
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let msgs = self.request(RouteNetlinkMessage::GetLink(msg), 0, "get link", || {
            format!("index {index}")
        })?;
        for m in msgs {
            let RouteNetlinkMessage::NewLink(l) = m else {
                continue;
            };
            let mut is_macvlan = false;
            let mut mode = None;
            for attr in &l.attributes {
                if let LinkAttribute::LinkInfo(infos) = attr {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(InfoKind::MacVlan) => is_macvlan = true,
                            LinkInfo::Data(InfoData::MacVlan(data)) => {
                                for d in data {
                                    if let InfoMacVlan::Mode(m) = d {
                                        mode = MacvlanMode::from_netlink(*m);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            return Ok(is_macvlan.then_some(MacvlanInfo { mode }));
        }
        Ok(None)
    }
}
