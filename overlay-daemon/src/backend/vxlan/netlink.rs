//! The VXLAN backend's kernel objects (docs/architecture.md, "VXLAN programming"): the `flannel.<VNI>` device and,
//! per remote node, a permanent neighbour `S.0 -> MAC`, an FDB entry `MAC -> public IP` and a route `S via S.0 dev
//! flannel.<VNI> onlink`, or with DirectRouting a plain route `S via P`. It also reads back what the kernel has, so a
//! full pass can diff.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::subnet::lease::VtepMac;

/// A netlink failure with what we were doing.
#[derive(Debug)]
pub struct NetlinkError {
    pub what: String,
    pub source: rtnetlink::Error,
}

impl std::fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            rtnetlink::Error::NetlinkError(m) => write!(f, "{}: {}", self.what, m.to_io()),
            other => write!(f, "{}: {other}", self.what),
        }
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

fn ctx<T>(r: std::result::Result<T, rtnetlink::Error>, what: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|source| NetlinkError {
        what: what(),
        source,
    })
}

fn errno(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => -m.raw_code(),
        _ => 0,
    }
}

/// Deletions are idempotent: "already gone" is success.
fn gone_ok(
    r: std::result::Result<(), rtnetlink::Error>,
    what: impl FnOnce() -> String,
) -> Result<()> {
    match r {
        Err(e)
            if matches!(
                errno(&e),
                libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL
            ) =>
        {
            Ok(())
        }
        other => ctx(other, what),
    }
}

/// What the device must look like (docs/architecture.md, "VXLAN programming").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub learning: bool,
    pub gbp: bool,
    pub local: Ipv4Addr,
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: VtepMac,
    /// The own subnet's network address as /32.
    pub address: Ipv4Addr,
    /// Other addresses on the device inside this network are removed.
    pub network: Ipv4Net,
}

/// One remote node as the data plane needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub public_ip: Ipv4Addr,
    pub mac: VtepMac,
    /// DirectRouting and the peer is on our L2 segment: plain route via the peer, no encapsulation.
    pub direct: bool,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.public_ip)
    }
}

/// What the kernel currently has on (or for) the device.
#[derive(Debug, Default)]
pub struct KernelView {
    pub neighbours: BTreeMap<Ipv4Addr, Option<VtepMac>>,
    pub fdb: Vec<(VtepMac, Option<Ipv4Addr>)>,
    /// Main-table routes out of the device: destination -> (gateway, onlink).
    pub device_routes: BTreeMap<Ipv4Net, (Option<Ipv4Addr>, bool)>,
    /// Main-table routes inside the flannel network with a gateway, not via the device (DirectRouting).
    pub direct_routes: BTreeMap<Ipv4Net, Option<Ipv4Addr>>,
}

pub struct Vxlan {
    handle: Handle,
}

fn vxlan_info(m: &LinkMessage) -> Option<&Vec<InfoVxlan>> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
            _ => None,
        }),
        _ => None,
    })
}

fn is_vxlan(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan))),
        _ => false,
    })
}

fn link_mac(m: &LinkMessage) -> Option<VtepMac> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            Some(VtepMac([b[0], b[1], b[2], b[3], b[4], b[5]]))
        }
        _ => None,
    })
}

fn link_mtu(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(v) => Some(*v),
        _ => None,
    })
}

impl Vxlan {
    pub fn new(handle: Handle) -> Self {
        Vxlan { handle }
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) if errno(&e) == libc::ENODEV => Ok(None),
            Err(e) => ctx(Err(e), || format!("looking up link {name}")),
        }
    }

    /// Whether an existing link can be reused as is (docs/architecture.md, "VXLAN programming": type, VNI, underlay
    /// dev, local IP, port and the options we set must match; otherwise it is deleted and recreated).
    fn compatible(m: &LinkMessage, spec: &DeviceSpec) -> bool {
        let Some(info) = vxlan_info(m).filter(|_| is_vxlan(m)) else {
            return false;
        };
        let has = |want: &InfoVxlan| info.iter().any(|i| i == want);
        let gbp = info.iter().any(|i| matches!(i, InfoVxlan::Gbp));
        has(&InfoVxlan::Id(spec.vni))
            && has(&InfoVxlan::Link(spec.underlay_index))
            && has(&InfoVxlan::Local(spec.local))
            && has(&InfoVxlan::Port(spec.port))
            && has(&InfoVxlan::Learning(spec.learning))
            && gbp == spec.gbp
    }

    /// Index and MAC of an existing device that [`Vxlan::ensure_device`] would keep rather than recreate (the
    /// MAC and address of `spec` are not looked at).
    pub async fn compatible_device_mac(&self, spec: &DeviceSpec) -> Result<Option<(u32, VtepMac)>> {
        let link = self.link_by_name(&spec.name).await?;
        Ok(link
            .filter(|m| Self::compatible(m, spec))
            .and_then(|m| Some((m.header.index, link_mac(&m)?))))
    }

    pub async fn set_link_mac(&self, index: u32, mac: VtepMac) -> Result<()> {
        let set = LinkUnspec::new_with_index(index).address(mac.0.to_vec());
        ctx(self.handle.link().set(set.build()).execute().await, || {
            format!("setting MAC {mac} on link {index}")
        })
    }

    /// Brings the device to `spec`. Returns its index and whether it was (re)created, in which case every
    /// peer must be replayed: the kernel dropped their routes, neighbours and FDB entries with the old device.
    pub async fn ensure_device(&self, spec: &DeviceSpec) -> Result<(u32, bool)> {
        let mut created = false;
        let existing = self.link_by_name(&spec.name).await?;
        let link = match existing {
            Some(m) if Self::compatible(&m, spec) => m,
            other => {
                if let Some(m) = other {
                    tracing::info!("{} exists with other settings: recreating it", spec.name);
                    gone_ok(
                        self.handle.link().del(m.header.index).execute().await,
                        || format!("deleting incompatible {}", spec.name),
                    )?;
                }
                let mut b = LinkVxlan::new(&spec.name, spec.vni)
                    .dev(spec.underlay_index)
                    .local(spec.local)
                    .port(spec.port)
                    .learning(spec.learning)
                    .mtu(spec.mtu)
                    .address(spec.mac.0.to_vec());
                if spec.gbp {
                    b = b.append_info_data(InfoVxlan::Gbp);
                }
                ctx(self.handle.link().add(b.build()).execute().await, || {
                    format!("creating vxlan device {}", spec.name)
                })?;
                created = true;
                self.link_by_name(&spec.name)
                    .await?
                    .ok_or_else(|| NetlinkError {
                        what: format!("{} vanished right after creation", spec.name),
                        source: rtnetlink::Error::RequestFailed,
                    })?
            }
        };
        let index = link.header.index;
        if created {
            // As flannel (docs/architecture.md, "VXLAN programming"): no router advertisements on the tunnel device.
            // Best effort: the file is absent when IPv6 is disabled.
            let _ = std::fs::write(
                format!("/proc/sys/net/ipv6/conf/{}/accept_ra", spec.name),
                "0",
            );
        }
        let mut set = LinkUnspec::new_with_index(index);
        let mut change = false;
        if link_mtu(&link) != Some(spec.mtu) {
            set = set.mtu(spec.mtu);
            change = true;
        }
        if link_mac(&link) != Some(spec.mac) {
            set = set.address(spec.mac.0.to_vec());
            change = true;
        }
        if !link.header.flags.contains(LinkFlags::Up) {
            set = set.up();
            change = true;
        }
        if change {
            ctx(self.handle.link().set(set.build()).execute().await, || {
                format!("configuring {}", spec.name)
            })?;
        }
        self.ensure_address(index, spec).await?;
        Ok((index, created))
    }

    async fn ensure_address(&self, index: u32, spec: &DeviceSpec) -> Result<()> {
        let addrs: Vec<_> = ctx(
            self.handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await,
            || format!("listing addresses of {}", spec.name),
        )?;
        let mut present = false;
        for a in addrs {
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(IpAddr::V4(v))
                | AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            let Some(ip) = ip else { continue };
            if ip == spec.address && a.header.prefix_len == 32 {
                present = true;
            } else if spec.network.contains(&ip) {
                gone_ok(self.handle.address().del(a).execute().await, || {
                    format!("removing stale address {ip} from {}", spec.name)
                })?;
            }
        }
        if !present {
            ctx(
                self.handle
                    .address()
                    .add(index, IpAddr::V4(spec.address), 32)
                    .execute()
                    .await,
                || format!("adding {}/32 to {}", spec.address, spec.name),
            )?;
        }
        Ok(())
    }

    /// Programs one peer, in flannel's order (neighbour, FDB, route) so the kernel never has to resolve the
    /// next hop; a later step's failure rolls back the earlier ones (docs/architecture.md, "VXLAN programming").
    pub async fn add_peer(&self, dev: u32, subnet: Ipv4Net, peer: &Peer) -> Result<()> {
        if peer.direct {
            let r = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(subnet.network(), subnet.prefix_len())
                .gateway(peer.public_ip)
                .build();
            return ctx(self.handle.route().add(r).replace().execute().await, || {
                format!("adding direct route {subnet} via {}", peer.public_ip)
            });
        }
        let gw = subnet.network();
        ctx(
            self.handle
                .neighbours()
                .add(dev, IpAddr::V4(gw))
                .link_layer_address(&peer.mac.0)
                .replace()
                .execute()
                .await,
            || format!("adding neighbour {gw} lladdr {}", peer.mac),
        )?;
        let fdb = self
            .handle
            .neighbours()
            .add_bridge(dev, &peer.mac.0)
            .destination(IpAddr::V4(peer.public_ip))
            .flags(NeighbourFlags::Own)
            .replace()
            .execute()
            .await;
        if let Err(e) = fdb {
            let _ = self.del_neighbour(dev, gw).await;
            return ctx(Err(e), || {
                format!("adding fdb {} dst {}", peer.mac, peer.public_ip)
            });
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .gateway(gw)
            .output_interface(dev)
            .onlink()
            .build();
        if let Err(e) = self.handle.route().add(route).replace().execute().await {
            let _ = self.del_neighbour(dev, gw).await;
            let _ = self.del_fdb(dev, peer.mac, Some(peer.public_ip)).await;
            return ctx(Err(e), || format!("adding route {subnet} via {gw} onlink"));
        }
        Ok(())
    }

    /// Removes a peer's entries; best effort for each, all attempted, first error returned.
    pub async fn remove_peer(&self, dev: u32, subnet: Ipv4Net, peer: &Peer) -> Result<()> {
        let r1 = self
            .del_route(subnet, if peer.direct { None } else { Some(dev) })
            .await;
        let (r2, r3) = if peer.direct {
            (Ok(()), Ok(()))
        } else {
            (
                self.del_neighbour(dev, subnet.network()).await,
                self.del_fdb(dev, peer.mac, Some(peer.public_ip)).await,
            )
        };
        r1.and(r2).and(r3)
    }

    pub async fn del_neighbour(&self, dev: u32, ip: Ipv4Addr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = dev;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        gone_ok(self.handle.neighbours().del(m).execute().await, || {
            format!("deleting neighbour {ip}")
        })
    }

    pub async fn del_fdb(&self, dev: u32, mac: VtepMac, dst: Option<Ipv4Addr>) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = dev;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        if let Some(d) = dst {
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(d)));
        }
        gone_ok(self.handle.neighbours().del(m).execute().await, || {
            format!("deleting fdb entry {mac}")
        })
    }

    pub async fn del_route(&self, subnet: Ipv4Net, dev: Option<u32>) -> Result<()> {
        // Unspecified protocol, scope and type match any route to the prefix (the kernel's fib_table_delete
        // treats them as wildcards), so a hand-made route with `proto boot` is removed too.
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .protocol(RouteProtocol::Unspec)
            .scope(RouteScope::NoWhere)
            .kind(RouteType::Unspec);
        if let Some(d) = dev {
            b = b.output_interface(d);
        }
        gone_ok(self.handle.route().del(b.build()).execute().await, || {
            format!("deleting route {subnet}")
        })
    }

    /// Reads the kernel's neighbours, FDB entries and routes for the device, and direct routes in `network`.
    pub async fn view(&self, dev: u32, network: Ipv4Net) -> Result<KernelView> {
        let mut v = KernelView::default();
        let neigh: Vec<NeighbourMessage> = ctx(
            self.handle
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Inet)
                .execute()
                .try_collect()
                .await,
            || "listing neighbours".into(),
        )?;
        for n in neigh.into_iter().filter(|n| n.header.ifindex == dev) {
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(*i),
                    NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                        mac = Some(VtepMac([b[0], b[1], b[2], b[3], b[4], b[5]]))
                    }
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                v.neighbours.insert(ip, mac);
            }
        }
        let fdb: Vec<NeighbourMessage> = ctx(
            self.handle
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge)
                .execute()
                .try_collect()
                .await,
            || "listing fdb".into(),
        )?;
        for n in fdb.into_iter().filter(|n| n.header.ifindex == dev) {
            let mut dst = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => dst = Some(*i),
                    // In AF_BRIDGE messages the parser cannot know NDA_DST's family: raw 4 bytes = IPv4.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                        dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                    }
                    NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                        mac = Some(VtepMac([b[0], b[1], b[2], b[3], b[4], b[5]]))
                    }
                    _ => {}
                }
            }
            if let Some(mac) = mac {
                v.fdb.push((mac, dst));
            }
        }
        let routes: Vec<RouteMessage> = ctx(
            self.handle
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute()
                .try_collect()
                .await,
            || "listing routes".into(),
        )?;
        for r in routes {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gw = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    _ => {}
                }
            }
            let Ok(net) = Ipv4Net::new(dst, r.header.destination_prefix_length) else {
                continue;
            };
            if oif == Some(dev) {
                v.device_routes
                    .insert(net, (gw, r.header.flags.contains(RouteFlags::Onlink)));
            } else if gw.is_some()
                && r.header.scope == RouteScope::Universe
                && network.contains(&net)
            {
                v.direct_routes.insert(net, gw);
            }
        }
        Ok(v)
    }
}
