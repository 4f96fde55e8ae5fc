//! Network devices: lookup, state, and creation of the kinds CNI needs (bridge, veth, vxlan).

use std::os::fd::AsRawFd;

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, InetDevConf, InfoBridge, InfoBridgePort, InfoData,
    InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
    LinkMessage, LinkProtoInfoBridge,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

pub use netlink_packet_route::link::State as OperState;

use crate::error::{Error, Result};
use crate::handle::Handle;
use crate::mac::MacAddr;
use crate::netns::NetNs;
use crate::vxlan::VxlanInfo;

/// `IFLA_BRPORT_MODE` (hairpin) and `IFLA_BRPORT_ISOLATED` from linux/if_link.h.
const IFLA_BRPORT_MODE: u16 = 4;
const IFLA_BRPORT_ISOLATED: u16 = 33;

/// A network device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "bridge", "veth", "vxlan", ...; `None` for devices without one (loopback).
    pub kind: Option<String>,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    pub oper_state: OperState,
    /// Index of the bridge (or other master) this device is enslaved to.
    pub master: Option<u32>,
    pub promisc: bool,
    /// Receives all multicast (IFF_ALLMULTI).
    pub allmulti: bool,
    /// `IFLA_TXQLEN`: the transmit queue length.
    pub txqlen: u32,
    /// `IFLA_LINK`: for a veth, the peer's ifindex, in the namespace named by `link_netnsid` when set.
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer namespace's id as seen from this namespace.
    pub link_netnsid: Option<i32>,
    /// For a bridge: whether VLAN filtering is on.
    pub vlan_filtering: Option<bool>,
    /// For a bridge port: its port flags.
    pub bridge_port: Option<BridgePort>,
    /// The device's IPv6 `accept_ra` (from `IFLA_AF_SPEC`); `None` when IPv6 is off or not reported.
    /// Reading it here spares a path walk under `/proc/sys/net/ipv6`, which costs time in proportion to
    /// the network namespaces on the host (their sysctl directories share the same dentry names).
    pub ipv6_accept_ra: Option<i32>,
    /// For a VXLAN device: its settings as the kernel reports them.
    pub vxlan: Option<VxlanInfo>,
}

/// Flags of a device enslaved to a bridge, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgePort {
    pub hairpin: bool,
    pub isolated: bool,
}

/// Bridge-port flags to change; `None` leaves a flag as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgePortFlags {
    pub hairpin: Option<bool>,
    pub isolated: Option<bool>,
}

/// A bridge to create.
#[derive(Debug, Clone, Default)]
pub struct BridgeSpec {
    pub name: String,
    pub mtu: Option<u32>,
    pub vlan_filtering: bool,
    pub mac: Option<MacAddr>,
    /// Bring it up in the same request.
    pub up: bool,
}

/// A veth pair to create: `name` in the handle's namespace, `peer_name` in `peer_netns` (or the
/// same namespace when `None`).
#[derive(Debug, Default)]
pub struct VethSpec<'a> {
    pub name: String,
    pub peer_name: String,
    pub peer_netns: Option<&'a NetNs>,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    pub peer_mac: Option<MacAddr>,
    /// Bring this end up in the same request. (The peer cannot be: the kernel opens it before
    /// the pair is linked, and veth_open refuses with ENOTCONN; set it up from its namespace.)
    pub up: bool,
}

/// Request-level choices for [`Handle::create_veth_with`] (kept apart from [`VethSpec`], whose literals are
/// spelled out field by field in many places).
#[derive(Debug, Clone, Default)]
pub struct VethOptions {
    /// Enslave the first end to this master (a bridge) in the creating request: the kernel sets the master
    /// right after registering the device (IFLA_MASTER in RTM_NEWLINK) and unregisters the pair again if
    /// that fails, so the pair never exists half-attached and one round trip through the RTNL lock is
    /// saved.
    pub master: Option<u32>,
    /// Allocate one TX and one RX queue per end (IFLA_NUM_TX/RX_QUEUES). A veth uses one of each anyway
    /// (`real_num_tx_queues` is 1), but without these attributes the kernel allocates one per possible CPU
    /// and then shrinks the real count on the registered device, which waits for an expedited RCU grace
    /// period per end while holding the RTNL lock (`veth_init_queues` → `synchronize_net`): ~1 ms per pair
    /// on a 2-vCPU VM, and every other netlink writer on the host waits behind it.
    pub single_queue: bool,
}

/// Settings of an existing device to change in one request; `None` leaves a setting as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    /// Administratively up or down.
    pub up: Option<bool>,
    /// Promiscuous mode on or off.
    pub promisc: Option<bool>,
    /// All-multicast mode on or off.
    pub allmulti: Option<bool>,
    /// Transmit queue length.
    pub txqlen: Option<u32>,
}

pub(crate) fn new_link_message(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

fn up_flags(msg: &mut LinkMessage, up: bool) {
    if up {
        msg.header.flags |= LinkFlags::Up;
        msg.header.change_mask |= LinkFlags::Up;
    }
}

/// The part every new link's request shares: name, optional MTU and MAC, optionally up at once.
pub(crate) fn named_link_message(
    name: &str,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
    up: bool,
) -> LinkMessage {
    let mut msg = new_link_message(0);
    up_flags(&mut msg, up);
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = mac {
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    msg
}

impl Link {
    pub(crate) fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            oper_state: OperState::Unknown,
            master: None,
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            allmulti: msg.header.flags.contains(LinkFlags::Allmulti),
            txqlen: 0,
            peer_index: None,
            link_netnsid: None,
            vlan_filtering: None,
            bridge_port: None,
            ipv6_accept_ra: None,
            vxlan: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = MacAddr::from_slice(a),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::TxQueueLen(q) => link.txqlen = *q,
                LinkAttribute::OperState(s) => link.oper_state = *s,
                LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
                LinkAttribute::Link(l) if *l != 0 => link.peer_index = Some(*l),
                LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
                LinkAttribute::AfSpecUnspec(specs) => {
                    for spec in specs {
                        if let AfSpecUnspec::Inet6(v6) = spec {
                            for a in v6 {
                                if let AfSpecInet6::DevConf(c) = a {
                                    link.ipv6_accept_ra = Some(c.accept_ra);
                                }
                            }
                        }
                    }
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Bridge(opts)) => {
                                for opt in opts {
                                    if let InfoBridge::VlanFiltering(v) = opt {
                                        link.vlan_filtering = Some(*v);
                                    }
                                }
                            }
                            LinkInfo::Data(InfoData::Vxlan(opts)) => {
                                link.vxlan = Some(VxlanInfo::from_attributes(opts));
                            }
                            LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                                let mut port = BridgePort::default();
                                for opt in opts {
                                    match opt {
                                        InfoBridgePort::HairpinMode(v) => port.hairpin = *v,
                                        InfoBridgePort::Isolated(v) => port.isolated = *v,
                                        _ => {}
                                    }
                                }
                                link.bridge_port = Some(port);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn first_link(msgs: Vec<RouteNetlinkMessage>) -> Option<Link> {
    msgs.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(&l)),
        _ => None,
    })
}

impl Handle {
    /// The device named `name`; not found is [`Error::is_not_found`].
    pub fn link_by_name(&self, name: &str) -> Result<Link> {
        let mut msg = new_link_message(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let msgs = self.request(RouteNetlinkMessage::GetLink(msg), 0, "get link", || {
            name.to_string()
        })?;
        first_link(msgs).ok_or_else(|| self.missing_reply("get link", name.to_string()))
    }

    /// The device with index `index`; not found is [`Error::is_not_found`].
    pub fn link_by_index(&self, index: u32) -> Result<Link> {
        let mut msg = new_link_message(index);
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let msgs = self.request(RouteNetlinkMessage::GetLink(msg), 0, "get link", || {
            format!("index {index}")
        })?;
        first_link(msgs).ok_or_else(|| self.missing_reply("get link", format!("index {index}")))
    }

    /// Every device in the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        let mut msg = new_link_message(0);
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let msgs = self.dump(RouteNetlinkMessage::GetLink(msg), "list links", String::new)?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(&l)),
                _ => None,
            })
            .collect())
    }

    fn missing_reply(&self, op: &'static str, object: String) -> Error {
        Error::new(
            op,
            object,
            self.netns(),
            std::io::Error::new(std::io::ErrorKind::InvalidData, "kernel sent no link"),
        )
    }

    pub(crate) fn set_link(
        &self,
        msg: LinkMessage,
        op: &'static str,
        object: impl FnOnce() -> String,
    ) -> Result<()> {
        self.request(RouteNetlinkMessage::SetLink(msg), 0, op, object)
            .map(|_| ())
    }

    /// Sets the device administratively up.
    pub fn set_link_up(&self, index: u32) -> Result<()> {
        let mut msg = new_link_message(index);
        up_flags(&mut msg, true);
        self.set_link(msg, "set link up", || format!("index {index}"))
    }

    /// Turns the device's IPv4 `arp_notify` on (a gratuitous ARP when it comes up or changes address), over
    /// netlink (`IFLA_INET_CONF`) rather than `/proc/sys/net/ipv4/conf/<dev>/arp_notify`, whose path walk
    /// grows with the number of network namespaces on the host.
    pub fn enable_arp_notify(&self, index: u32) -> Result<()> {
        let mut msg = new_link_message(index);
        let mut conf = InetDevConf::default();
        conf.arp_notify = 1;
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]));
        self.set_link(msg, "enable arp_notify", || format!("index {index}"))
    }

    /// Sets the device administratively down.
    pub fn set_link_down(&self, index: u32) -> Result<()> {
        let mut msg = new_link_message(index);
        msg.header.change_mask |= LinkFlags::Up;
        self.set_link(msg, "set link down", || format!("index {index}"))
    }

    /// Enslaves the device to `master` (a bridge index), or releases it with `None`.
    pub fn set_link_master(&self, index: u32, master: Option<u32>) -> Result<()> {
        let mut msg = new_link_message(index);
        msg.attributes
            .push(LinkAttribute::Controller(master.unwrap_or(0)));
        self.set_link(msg, "set master of link", || match master {
            Some(m) => format!("index {index} to index {m}"),
            None => format!("index {index} to none"),
        })
    }

    /// Sets the MTU.
    pub fn set_link_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = new_link_message(index);
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(msg, "set mtu of link", || format!("index {index} to {mtu}"))
    }

    /// Sets the MAC address.
    pub fn set_link_mac(&self, index: u32, mac: MacAddr) -> Result<()> {
        let mut msg = new_link_message(index);
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        self.set_link(msg, "set mac of link", || format!("index {index} to {mac}"))
    }

    /// Turns promiscuous mode on or off (the bridge plugin's `promiscMode`).
    pub fn set_link_promisc(&self, index: u32, on: bool) -> Result<()> {
        let mut msg = new_link_message(index);
        msg.header.change_mask |= LinkFlags::Promisc;
        if on {
            msg.header.flags |= LinkFlags::Promisc;
        }
        self.set_link(msg, "set promisc of link", || {
            format!("index {index} to {on}")
        })
    }

    /// Applies several settings in one request (one trip through the RTNL lock); `None` fields are left as
    /// they are, and an empty change sends nothing. The kernel stops at the first setting it refuses, so on
    /// error some may have been applied: a caller that must undo restores every setting it asked to change.
    pub fn change_link(&self, index: u32, change: &LinkChange) -> Result<()> {
        if *change == LinkChange::default() {
            return Ok(());
        }
        let mut msg = new_link_message(index);
        if let Some(up) = change.up {
            msg.header.change_mask |= LinkFlags::Up;
            up_flags(&mut msg, up);
        }
        for (flag, on) in [
            (LinkFlags::Promisc, change.promisc),
            (LinkFlags::Allmulti, change.allmulti),
        ] {
            if let Some(on) = on {
                msg.header.change_mask |= flag;
                if on {
                    msg.header.flags |= flag;
                }
            }
        }
        if let Some(q) = change.txqlen {
            msg.attributes.push(LinkAttribute::TxQueueLen(q));
        }
        if let Some(mtu) = change.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = change.mac {
            msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        self.set_link(msg, "change link", || format!("index {index} ({change:?})"))
    }

    /// Deletes the device (a veth takes its peer with it). Not found is [`Error::is_not_found`].
    pub fn delete_link(&self, index: u32) -> Result<()> {
        let msg = new_link_message(index);
        self.request(RouteNetlinkMessage::DelLink(msg), 0, "delete link", || {
            format!("index {index}")
        })
        .map(|_| ())
    }

    /// Deletes the device named `name` in one round trip. Not found is [`Error::is_not_found`].
    pub fn delete_link_by_name(&self, name: &str) -> Result<()> {
        let mut msg = new_link_message(0);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.request(RouteNetlinkMessage::DelLink(msg), 0, "delete link", || {
            name.to_string()
        })
        .map(|_| ())
    }

    /// Creates a link (with NLM_F_ECHO, so the kernel returns it in the same round trip on kernels
    /// that honour echo for RTM_NEWLINK, 6.1+; older ones cost one lookup).
    pub(crate) fn create_link(
        &self,
        msg: LinkMessage,
        name: &str,
        op: &'static str,
        object: impl FnOnce() -> String,
    ) -> Result<Link> {
        let msgs = self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
            op,
            object,
        )?;
        match first_link(msgs) {
            Some(link) if link.name == name => Ok(link),
            _ => self.link_by_name(name),
        }
    }

    /// Creates a bridge, or returns the existing one when a bridge of that name already exists
    /// (several plugin processes race to create `cni0`). An existing non-bridge device of that name
    /// is an error.
    pub fn create_bridge(&self, spec: &BridgeSpec) -> Result<Link> {
        let mut msg = named_link_message(&spec.name, spec.mtu, spec.mac, spec.up);
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if spec.vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        match self.create_link(msg, &spec.name, "create bridge", || spec.name.clone()) {
            Err(e) if e.is_exists() => {
                let existing = self.link_by_name(&spec.name)?;
                if existing.kind.as_deref() == Some("bridge") {
                    Ok(existing)
                } else {
                    Err(e.with_detail(Some(format!(
                        "existing device is a {}, not a bridge",
                        existing.kind.as_deref().unwrap_or("device without kind")
                    ))))
                }
            }
            other => other,
        }
    }

    /// Turns VLAN filtering on or off on an existing bridge.
    pub fn set_bridge_vlan_filtering(&self, index: u32, on: bool) -> Result<()> {
        let mut msg = new_link_message(index);
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(on)])),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            0,
            "set vlan_filtering of bridge",
            || format!("index {index} to {on}"),
        )
        .map(|_| ())
    }

    /// Creates a veth pair in one request: `spec.name` here, `spec.peer_name` directly inside
    /// `spec.peer_netns` (IFLA_NET_NS_FD in the peer message), so no device ever has to be moved.
    /// Returns this end; its `peer_index` is the peer's ifindex in the peer namespace.
    pub fn create_veth(&self, spec: &VethSpec<'_>) -> Result<Link> {
        self.create_veth_with(spec, &VethOptions::default())
    }

    /// [`Handle::create_veth`] with the request-level [`VethOptions`].
    pub fn create_veth_with(&self, spec: &VethSpec<'_>, opts: &VethOptions) -> Result<Link> {
        let master = opts.master;
        let queues = |attrs: &mut Vec<LinkAttribute>| {
            if opts.single_queue {
                attrs.push(LinkAttribute::NumTxQueues(1));
                attrs.push(LinkAttribute::NumRxQueues(1));
            }
        };
        let mut peer = named_link_message(&spec.peer_name, spec.mtu, spec.peer_mac, false);
        if let Some(ns) = spec.peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        }
        queues(&mut peer.attributes);
        let mut msg = named_link_message(&spec.name, spec.mtu, spec.mac, spec.up);
        if let Some(m) = master {
            msg.attributes.push(LinkAttribute::Controller(m));
        }
        queues(&mut msg.attributes);
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let peer_where = match spec.peer_netns {
            Some(ns) => format!(" in {}", ns.path().display()),
            None => String::new(),
        };
        let master_where = match master {
            Some(m) => format!(" on master index {m}"),
            None => String::new(),
        };
        let object = format!(
            "{} with peer {}{}{}",
            spec.name, spec.peer_name, peer_where, master_where
        );
        self.create_link(msg, &spec.name, "create veth", || object)
    }

    /// Sets bridge-port flags (hairpin, isolated) on a bridge port, via IFLA_PROTINFO in an
    /// AF_BRIDGE RTM_SETLINK, as `bridge link set` does.
    pub fn set_bridge_port_flags(&self, index: u32, flags: BridgePortFlags) -> Result<()> {
        let mut protinfo = Vec::new();
        if let Some(h) = flags.hairpin {
            protinfo.push(LinkProtoInfoBridge::Other(DefaultNla::new(
                IFLA_BRPORT_MODE,
                vec![h as u8],
            )));
        }
        if let Some(i) = flags.isolated {
            protinfo.push(LinkProtoInfoBridge::Other(DefaultNla::new(
                IFLA_BRPORT_ISOLATED,
                vec![i as u8],
            )));
        }
        if protinfo.is_empty() {
            return Ok(());
        }
        let mut msg = new_link_message(index);
        msg.header.interface_family = AddressFamily::Bridge;
        msg.attributes
            .push(LinkAttribute::ProtoInfoBridge(protinfo));
        self.set_link(msg, "set bridge port flags of link", || {
            format!("index {index} ({flags:?})")
        })
    }
}
