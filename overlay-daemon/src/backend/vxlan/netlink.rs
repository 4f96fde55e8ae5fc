//! The VXLAN backend's kernel objects (docs/architecture.md, "VXLAN programming"): the `flannel.<VNI>` device and,
//! per remote node, a permanent neighbour `S.0 -> MAC`, an FDB entry `MAC -> public IP` and a route `S via S.0 dev
//! flannel.<VNI> onlink`, or with DirectRouting a plain route `S via P`. It also reads back what the kernel has, so a
//! full pass can diff. Every message is built and parsed by `twill-kernel`; the calls are synchronous and each takes
//! well under a millisecond, so they run on the daemon's thread (a full pass yields between peers, see the backend).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use twill_kernel::{
    AddressOptions, Error, Family, Handle, Link, LinkChange, MacAddr, Route, RouteFilter,
    RouteProtocol, RouteScope, RouteType, VxlanSpec, TABLE_MAIN,
};

use crate::subnet::lease::VtepMac;

pub type Result<T> = std::result::Result<T, Error>;

/// Deletions are idempotent: "already gone" is success.
fn gone_ok(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if e.is_not_found() || e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        other => other,
    }
}

fn mac(m: VtepMac) -> MacAddr {
    m.into()
}

/// Our routes carry protocol `static`, as they always have: hand-made (`proto boot`) ones are told apart in
/// `ip route`, and a node upgraded in place keeps matching what it programmed before.
fn route(dst: IpNet) -> Route {
    Route::new(dst).protocol(RouteProtocol::Static)
}

/// What the device must look like (docs/architecture.md, "VXLAN programming").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub learning: bool,
    pub gbp: bool,
    /// The underlay address: its family is the tunnel's outer family.
    pub local: IpAddr,
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: VtepMac,
    /// The own subnet's network address, put on the device as a host address (/32 or /128).
    pub address: IpAddr,
    /// Other addresses on the device inside this network are removed.
    pub network: IpNet,
}

impl DeviceSpec {
    fn vxlan(&self) -> VxlanSpec {
        VxlanSpec {
            name: self.name.clone(),
            vni: self.vni,
            port: self.port,
            local: Some(self.local),
            underlay: Some(self.underlay_index),
            learning: self.learning,
            gbp: self.gbp,
            mtu: Some(self.mtu),
            mac: Some(mac(self.mac)),
            up: false,
        }
    }

    fn host_address(&self) -> IpNet {
        IpNet::from(self.address)
    }

    /// Whether an existing link can be reused as is (docs/architecture.md, "VXLAN programming": type, VNI, underlay
    /// dev, local IP, port and the options we set must match; otherwise it is deleted and recreated).
    fn compatible(&self, link: &Link) -> bool {
        link.kind.as_deref() == Some("vxlan")
            && link
                .vxlan
                .as_ref()
                .is_some_and(|v| v.matches(&self.vxlan()))
    }
}

/// One remote node as the data plane needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The peer's underlay address, of the device's family.
    pub public_ip: IpAddr,
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
    pub neighbours: BTreeMap<IpAddr, Option<VtepMac>>,
    pub fdb: Vec<(VtepMac, Option<IpAddr>)>,
    /// Main-table routes out of the device: destination -> (gateway, onlink).
    pub device_routes: BTreeMap<IpNet, (Option<IpAddr>, bool)>,
    /// Main-table routes inside the flannel network with a gateway, not via the device (DirectRouting).
    pub direct_routes: BTreeMap<IpNet, Option<IpAddr>>,
}

pub struct Vxlan {
    handle: Handle,
}

impl Vxlan {
    pub fn new(handle: Handle) -> Self {
        Vxlan { handle }
    }

    fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        match self.handle.link_by_name(name) {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Index and MAC of an existing device that [`Vxlan::ensure_device`] would keep rather than recreate (the
    /// MAC and address of `spec` are not looked at).
    pub fn compatible_device_mac(&self, spec: &DeviceSpec) -> Result<Option<(u32, VtepMac)>> {
        let link = self.link_by_name(&spec.name)?;
        Ok(link
            .filter(|l| spec.compatible(l))
            .and_then(|l| Some((l.index, l.mac?.into()))))
    }

    pub fn set_link_mac(&self, index: u32, m: VtepMac) -> Result<()> {
        self.handle.set_link_mac(index, mac(m))
    }

    /// Brings the device to `spec`. Returns its index and whether it was (re)created, in which case every
    /// peer must be replayed: the kernel dropped their routes, neighbours and FDB entries with the old device.
    pub fn ensure_device(&self, spec: &DeviceSpec) -> Result<(u32, bool)> {
        let (link, created) = match self.link_by_name(&spec.name)? {
            Some(l) if spec.compatible(&l) => (l, false),
            other => {
                if let Some(l) = other {
                    tracing::info!("{} exists with other settings: recreating it", spec.name);
                    gone_ok(self.handle.delete_link(l.index))?;
                }
                let link = self.handle.create_vxlan(&spec.vxlan())?;
                // As flannel (docs/architecture.md, "VXLAN programming"): no router advertisements on the tunnel
                // device. Best effort: the key is absent when IPv6 is disabled.
                let _ = twill_kernel::sysctl::set(
                    &format!("net/ipv6/conf/{}/accept_ra", spec.name),
                    "0",
                );
                (link, true)
            }
        };
        let change = LinkChange {
            mtu: (link.mtu != spec.mtu).then_some(spec.mtu),
            mac: (link.mac != Some(mac(spec.mac))).then_some(mac(spec.mac)),
            up: (!link.up).then_some(true),
            ..Default::default()
        };
        self.handle.change_link(link.index, &change)?;
        self.ensure_address(link.index, spec)?;
        Ok((link.index, created))
    }

    fn ensure_address(&self, index: u32, spec: &DeviceSpec) -> Result<()> {
        let want = spec.host_address();
        let family = Family::of(&spec.address);
        let mut present = false;
        for a in self.handle.addresses(Some(index), Some(family))? {
            if a.net == want {
                present = true;
            } else if spec.network.contains(&a.net.addr()) {
                gone_ok(self.handle.delete_address(index, a.net))?;
            }
        }
        if !present {
            // No duplicate address detection: the address is the source of host-to-pod traffic at once.
            let opts = AddressOptions {
                nodad: want.addr().is_ipv6(),
                no_prefix_route: false,
            };
            self.handle.add_address_with(index, want, opts)?;
        }
        Ok(())
    }

    /// Programs one peer, in flannel's order (neighbour, FDB, route) so the kernel never has to resolve the
    /// next hop; a later step's failure rolls back the earlier ones (docs/architecture.md, "VXLAN programming").
    pub fn add_peer(&self, dev: u32, subnet: IpNet, peer: &Peer) -> Result<()> {
        let public = peer.public_ip;
        if peer.direct {
            return self.handle.replace_route(&route(subnet).via(public));
        }
        let gw = subnet.network();
        self.handle.replace_neighbour(dev, gw, mac(peer.mac))?;
        if let Err(e) = self.handle.replace_fdb(dev, mac(peer.mac), Some(public)) {
            let _ = self.del_neighbour(dev, gw);
            return Err(e);
        }
        let r = route(subnet).via(gw).dev(dev).onlink();
        if let Err(e) = self.handle.replace_route(&r) {
            let _ = self.del_neighbour(dev, gw);
            let _ = self.del_fdb(dev, peer.mac, Some(public));
            return Err(e);
        }
        Ok(())
    }

    /// Removes a peer's entries; best effort for each, all attempted, first error returned.
    pub fn remove_peer(&self, dev: u32, subnet: IpNet, peer: &Peer) -> Result<()> {
        let r1 = self.del_route(subnet, if peer.direct { None } else { Some(dev) });
        let (r2, r3) = if peer.direct {
            (Ok(()), Ok(()))
        } else {
            (
                self.del_neighbour(dev, subnet.network()),
                self.del_fdb(dev, peer.mac, Some(peer.public_ip)),
            )
        };
        r1.and(r2).and(r3)
    }

    pub fn del_neighbour(&self, dev: u32, ip: IpAddr) -> Result<()> {
        gone_ok(self.handle.delete_neighbour(dev, ip))
    }

    pub fn del_fdb(&self, dev: u32, m: VtepMac, dst: Option<IpAddr>) -> Result<()> {
        gone_ok(self.handle.delete_fdb(dev, mac(m), dst))
    }

    /// Deletes the route to `subnet` (out of `dev` when given) whatever its protocol, scope and type, so a
    /// hand-made route to the prefix is removed too.
    pub fn del_route(&self, subnet: IpNet, dev: Option<u32>) -> Result<()> {
        let r = Route::new(subnet);
        gone_ok(self.handle.delete_route(&match dev {
            Some(d) => r.dev(d),
            None => r,
        }))
    }

    /// Reads the kernel's neighbours, FDB entries and routes for the device, and direct routes in `network` (of
    /// `network`'s family).
    pub fn view(&self, dev: u32, network: IpNet) -> Result<KernelView> {
        let family = Family::of(&network.addr());
        let mut v = KernelView::default();
        for n in self.handle.neighbours(Some(dev), Some(family))? {
            // Ours are the peers' subnet addresses; IPv6 link-local neighbours are the kernel's business.
            if network.contains(&n.ip) {
                v.neighbours.insert(n.ip, n.mac.map(VtepMac::from));
            }
        }
        for e in self.handle.fdb_entries(dev)? {
            v.fdb.push((e.mac.into(), e.dst));
        }
        let filter = RouteFilter {
            family: Some(family),
            table: Some(TABLE_MAIN),
            oif: None,
        };
        for r in self.handle.routes(filter)? {
            // The kernel's own routes for the device's addresses (IPv6 adds link-local and host routes to
            // the main table) are not peers'.
            if r.kind != RouteType::Unicast || r.protocol == RouteProtocol::Kernel {
                continue;
            }
            if r.oif == Some(dev) {
                v.device_routes.insert(r.dst, (r.gateway, r.onlink));
            } else if r.gateway.is_some()
                && r.scope == Some(RouteScope::Universe)
                && network.contains(&r.dst)
            {
                v.direct_routes.insert(r.dst, r.gateway);
            }
        }
        Ok(v)
    }
}
