//! The VXLAN backend (docs/architecture.md, "VXLAN programming"): one `flannel.<VNI>` device, and per peer a
//! neighbour, an FDB entry and an onlink route, or with DirectRouting a plain route via the peer when it shares our
//! L2 segment.

pub mod mac_guard;
pub mod netlink;
pub mod plan;
pub mod vtep_mac;

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net};
use tokio::task::yield_now;

pub use self::netlink::{DeviceSpec, KernelView, Peer, Vxlan};
use super::{Backend, Repairs};
use crate::subnet::lease::{Lease, VtepMac};
pub use twill_kernel::Error as NetlinkError;

pub struct VxlanBackend {
    nl: Vxlan,
    spec: DeviceSpec,
    own: Ipv4Net,
    subnet_len: u8,
    direct_routing: bool,
    /// Our underlay's connected networks: a peer in one of them is on our L2 segment.
    underlay_networks: Vec<Ipv4Net>,
}

pub struct VxlanConfig {
    pub spec: DeviceSpec,
    pub own: Ipv4Net,
    pub subnet_len: u8,
    pub direct_routing: bool,
    pub underlay_networks: Vec<Ipv4Net>,
}

impl VxlanBackend {
    pub fn new(nl: Vxlan, c: VxlanConfig) -> Self {
        VxlanBackend {
            nl,
            spec: c.spec,
            own: c.own,
            subnet_len: c.subnet_len,
            direct_routing: c.direct_routing,
            underlay_networks: c.underlay_networks,
        }
    }

    /// A new VTEP MAC for our device; the next `ensure_device` sets it.
    pub fn set_mac(&mut self, mac: VtepMac) {
        self.spec.mac = mac;
    }
}

impl Backend for VxlanBackend {
    type Peer = Peer;
    type View = KernelView;
    type Error = NetlinkError;

    fn device_name(&self) -> &str {
        &self.spec.name
    }

    fn peer_of(&self, lease: &Lease) -> Option<Peer> {
        let mac = lease.attrs.vtep_mac()?;
        let ip = lease.attrs.public_ip;
        // DirectRouting applies when the peer's underlay address is on one of our connected networks
        // (docs/architecture.md, "Network config": the route lookup for it has no gateway).
        let direct = self.direct_routing && self.underlay_networks.iter().any(|n| n.contains(&ip));
        Some(Peer {
            public_ip: ip,
            mac,
            direct,
        })
    }

    async fn ensure_device(&mut self) -> Result<(u32, bool), NetlinkError> {
        self.nl.ensure_device(&self.spec)
    }

    async fn add_peer(&self, dev: u32, subnet: Ipv4Net, peer: &Peer) -> Result<(), NetlinkError> {
        self.nl.add_peer(dev, subnet.into(), peer)
    }

    async fn update_peer(
        &self,
        dev: u32,
        subnet: Ipv4Net,
        old: &Peer,
        new: &Peer,
    ) -> Vec<NetlinkError> {
        // Neighbour, FDB and route are replaced in place; then whatever of the old peer is left. Re-programmed
        // even when unchanged: replace is idempotent and repairs damage.
        let mut errors: Vec<NetlinkError> = self
            .nl
            .add_peer(dev, subnet.into(), new)
            .err()
            .into_iter()
            .collect();
        if !old.direct && (new.direct || old.mac != new.mac) {
            // FDB entries are keyed by MAC: a changed MAC leaves the old one (docs/architecture.md, "VXLAN
            // programming").
            errors.extend(
                self.nl
                    .del_fdb(dev, old.mac, Some(old.public_ip.into()))
                    .err(),
            );
            if new.direct {
                errors.extend(self.nl.del_neighbour(dev, subnet.network().into()).err());
            }
        }
        errors
    }

    async fn remove_peer(
        &self,
        dev: u32,
        subnet: Ipv4Net,
        peer: &Peer,
    ) -> Result<(), NetlinkError> {
        self.nl.remove_peer(dev, subnet.into(), peer)
    }

    async fn view(&self, dev: u32) -> Result<KernelView, NetlinkError> {
        self.nl.view(dev, self.spec.network)
    }

    async fn repair(
        &self,
        dev: u32,
        peers: &BTreeMap<Ipv4Net, Peer>,
        view: &KernelView,
    ) -> Repairs<NetlinkError> {
        let plan = plan::plan(peers, view, self.own, self.subnet_len, self.direct_routing);
        // The kernel calls are synchronous: yielding between them lets the daemon's other tasks (lease
        // watch, health endpoint) run during a long pass.
        let mut errors = Vec::new();
        for ip in &plan.stale_neighbours {
            errors.extend(self.nl.del_neighbour(dev, *ip).err());
            yield_now().await;
        }
        for (mac, dst) in &plan.stale_fdb {
            errors.extend(self.nl.del_fdb(dev, *mac, *dst).err());
            yield_now().await;
        }
        for net in &plan.stale_device_routes {
            errors.extend(self.nl.del_route(*net, Some(dev)).err());
            yield_now().await;
        }
        for net in &plan.stale_direct_routes {
            errors.extend(self.nl.del_route(*net, None).err());
            yield_now().await;
        }
        for subnet in &plan.missing_peers {
            if let Some(peer) = peers.get(subnet) {
                errors.extend(self.nl.add_peer(dev, IpNet::V4(*subnet), peer).err());
                yield_now().await;
            }
        }
        Repairs {
            count: plan.len() as u64,
            errors,
        }
    }
}
